"""Capabilities are declared on the target and asked for by name.

A target without a feature (physical reads, system registers, run control,
breakpoints, the agent's requests, UEFI calls, remaps) answers a clear
MissingCapability, a TargetError that names what is missing, never an
AttributeError; what a target declares it implements. Agent error codes are
the protocol document's table; a dead link is TargetLost.
"""

from __future__ import annotations

import inspect
import re
import socket
import threading
import uuid
from pathlib import Path

import pytest

from kinspect.inspector import api
from kinspect.inspector.errors import (
    AgentError,
    InspectorError,
    MissingCapability,
    TargetError,
    TargetLost,
)
from kinspect.inspector.remap.apply import Remapper
from kinspect.inspector.remap.assisted import StubAssistedRemapper
from kinspect.inspector.remap.service import Remaps
from kinspect.inspector.session import Session
from kinspect.inspector.targets.agent import AgentAssistedTarget, AgentTarget
from kinspect.inspector.targets.base import (
    REMAPS_NEED_AGENT,
    Capability,
    DescriptorTableRegister,
    SystemRegisters,
    Target,
)
from kinspect.inspector.targets.gdb import GdbTarget
from kinspect.protocols.agent_wire import (
    ERROR_NAMES,
    ErrorCode,
    decode_request,
    encode_frame,
    encode_reply,
)
from kinspect.protocols.transports import SocketTransport
from tests.fake_agent_line import frame_bodies
from tests.tui.fakes import MemoryTarget

PROTOCOL_DOC = Path(__file__).parents[2] / "protocols" / "AGENT_PROTOCOL.md"


class Bare(Target):
    """Reads virtual memory and registers, and nothing else: the least a target is."""

    description = "bare target"

    def __init__(self) -> None:
        self._state = "stopped"

    def read_virtual(self, address, size):
        return bytes(size)

    def registers(self):
        return {"rip": 0x1000}

    @property
    def state(self):
        return self._state

    def stop(self):
        self._state = "stopped"

    def resume(self):
        self._state = "running"

    def close(self, *, resume=True):
        pass


#: Each optional feature, reached through the Target and through the Session, and the
#: words the error must hold.
MISSING = [
    (Capability.PHYSICAL_READS, lambda t: t.read_physical(0, 8), "read physical memory"),
    (Capability.SYSTEM_REGISTERS, lambda t: t.system_registers(), "GDTR/IDTR/TR/LDTR"),
    (Capability.RUN_CONTROL, lambda t: t.step_instruction(), "cannot single-step"),
    (Capability.BREAKPOINTS, lambda t: t.break_insert("*0x1000"), "cannot set breakpoints"),
    (Capability.BREAKPOINTS, lambda t: t.break_delete(1), "cannot set breakpoints"),
    (Capability.AGENT, lambda t: t.agent(), "in-kernel agent"),
    (Capability.UEFI_CALLS, lambda t: t.uefi(), "UEFI runtime services"),
    (Capability.REMAPS, lambda t: t.open_remaps(None, list), "remaps need the in-kernel agent"),
]

SESSION_MISSING = [
    (Capability.PHYSICAL_READS, lambda s: s.read_physical(0, 8), "read physical memory"),
    (Capability.SYSTEM_REGISTERS, lambda s: s.system_registers(), "GDTR/IDTR/TR/LDTR"),
    (Capability.SYSTEM_REGISTERS, lambda s: s.gdt(), "GDTR/IDTR/TR/LDTR"),
    (Capability.RUN_CONTROL, lambda s: s.step_instruction(), "cannot single-step"),
    (Capability.BREAKPOINTS, lambda s: s.break_insert("0x1000"), "cannot set breakpoints"),
    (Capability.BREAKPOINTS, lambda s: s.break_delete(1), "cannot set breakpoints"),
    (Capability.UEFI_CALLS, lambda s: s.efi_time(), "GetTime is a call into the firmware"),
    (Capability.UEFI_CALLS, lambda s: s.efi_variable_names(), "GetNextVariableName is a call"),
    (
        Capability.UEFI_CALLS,
        lambda s: s.efi_variable("Boot0000", uuid.UUID(int=0)),
        "GetVariable is a call",
    ),
    (Capability.REMAPS, lambda s: s.remapper(), REMAPS_NEED_AGENT),
    (Capability.AGENT, lambda s: api.remapper(s), "attach with api.attach_agent"),
]


@pytest.mark.parametrize(("capability", "use", "words"), MISSING)
def test_a_target_without_a_feature_names_what_is_missing(capability, use, words):
    target = Bare()
    assert not target.has(capability)
    with pytest.raises(MissingCapability) as error:
        use(target)
    assert error.value.capability is capability
    assert isinstance(error.value, TargetError) and isinstance(error.value, InspectorError)
    assert words in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(("capability", "use", "words"), SESSION_MISSING)
def test_a_session_on_such_a_target_says_the_same(capability, use, words):
    session = Session(Bare())
    with pytest.raises(MissingCapability) as error:
        use(session)
    assert error.value.capability is capability
    assert words in str(error.value)


def test_what_a_target_without_features_still_answers():
    session = Session(Bare())
    assert session.breakpoints() == []
    assert session.wait_for_stop(0.01) == {}  # stopped: the last (empty) record
    assert session.remap_unavailable == REMAPS_NEED_AGENT
    assert session.last_stop == {}


def test_require_and_has():
    target = Bare()
    with pytest.raises(MissingCapability, match=r"^bare target cannot remap; try again$"):
        target.require(Capability.REMAPS, "try again")
    target.capabilities = frozenset({Capability.REMAPS})
    assert target.has(Capability.REMAPS)
    target.require(Capability.REMAPS)
    assert Session(target).remap_unavailable is None


#: The methods behind each capability: a target declaring one implements them all.
METHODS = {
    Capability.PHYSICAL_READS: ("read_physical",),
    Capability.SYSTEM_REGISTERS: ("system_registers",),
    Capability.RUN_CONTROL: ("step_instruction", "wait_for_stop", "start_next", "start_finish"),
    Capability.BREAKPOINTS: ("break_insert", "breakpoints", "break_delete", "start_until"),
    Capability.AGENT: ("agent",),
    Capability.UEFI_CALLS: ("uefi",),
    Capability.REMAPS: ("open_remaps",),
    Capability.WATCHPOINTS: ("watch_insert",),
    Capability.MEMORY_WRITES: ("write_virtual", "write_physical"),
    Capability.REGISTER_WRITES: ("set_register",),
}


def test_every_capability_has_its_methods():
    assert set(METHODS) == set(Capability)


def _declared_are_implemented(cls, declared):
    for capability in declared:
        for name in METHODS[capability]:
            assert getattr(cls, name) is not getattr(Target, name), (cls.__name__, name)


@pytest.mark.parametrize("cls", [AgentTarget, MemoryTarget])
def test_what_a_target_class_declares_it_implements(cls):
    assert cls.capabilities
    _declared_are_implemented(cls, cls.capabilities)


def test_a_gdb_stub_may_declare_everything_a_stub_does():
    # GdbTarget declares per connection (system registers only on QEMU's stub).
    _declared_are_implemented(
        GdbTarget,
        {
            Capability.PHYSICAL_READS,
            Capability.SYSTEM_REGISTERS,
            Capability.RUN_CONTROL,
            Capability.BREAKPOINTS,
            Capability.WATCHPOINTS,
            Capability.MEMORY_WRITES,
            Capability.REGISTER_WRITES,
        },
    )


def test_agent_target_hands_itself_out():
    target = AgentTarget.__new__(AgentTarget)  # no line: only what the class declares
    assert target.agent() is target and target.uefi() is target
    assert not target.has(Capability.RUN_CONTROL)
    with pytest.raises(MissingCapability, match="cannot single-step"):
        target.step_instruction()


# -- the remappers: one explicit interface, no __getattr__ ------------------------------------


def _public(cls) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(getattr(cls, name))
        for name in dir(cls)
        if not name.startswith("_") and callable(getattr(cls, name))
    }


@pytest.mark.parametrize("cls", [Remapper, StubAssistedRemapper])
def test_both_remappers_are_remaps(cls):
    wanted = {n: s for n, s in _public(Remaps).items()}
    got = _public(cls)
    for name, signature in wanted.items():
        assert name in got, name
        assert list(signature.parameters) == list(got[name].parameters), name
    assert "__getattr__" not in vars(cls)


def test_the_stub_assisted_remapper_has_nothing_more_to_find():
    remapper = StubAssistedRemapper.__new__(StubAssistedRemapper)
    with pytest.raises(AttributeError):
        remapper.plan_everything  # noqa: B018 - an unknown name is not forwarded


def test_a_session_takes_its_remapper_from_the_target(tmp_path):
    made = []

    class Remapping(Bare):
        capabilities = frozenset({Capability.REMAPS})

        def open_remaps(self, journal, walk):
            made.append((journal.path, walk))
            return FakeRemaps(journal)

    class FakeRemaps:
        spec = "fake"

        def __init__(self, journal):
            self.journal = journal
            self.closed = False

        def close(self):
            self.closed = True

    session = Session(Remapping())
    remapper = session.remapper(journal=tmp_path / "j.jsonl")
    assert session.remapper() is remapper
    assert made[0][0] == tmp_path / "j.jsonl" and made[0][1] == session._fresh_ranges
    session.close()
    assert remapper.closed


# -- the agent beside a stub ------------------------------------------------------------------


class RegsAgent(threading.Thread):
    """Answers hello and regs on a socket; anything else is unknown-method."""

    REGS = {
        "cr0": 0x80010011,
        "gdtr_base": 0x1000,
        "gdtr_limit": 0x37,
        "idtr_base": 0x2000,
        "idtr_limit": 0xFFF,
        "tr": 0,
        "ldtr": 0,
        "pat": 0x0007040600070406,
        "maxphyaddr": 40,
    }

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.start()

    def run(self) -> None:
        for body in frame_bodies(self.sock):
            request = decode_request(body)
            if request.method == "hello":
                reply = encode_reply(request.id, {"protocol": 1, "agent": "regs", "max_read": 64})
            elif request.method == "regs":
                reply = encode_reply(request.id, self.REGS)
            else:
                reply = encode_reply(
                    request.id, None, (int(ErrorCode.UNKNOWN_METHOD), "unknown method")
                )
            try:
                self.sock.sendall(encode_frame(reply))
            except OSError:
                return


def agent_line() -> SocketTransport:
    ours, theirs = socket.socketpair()
    RegsAgent(theirs)
    return SocketTransport(ours, "pair")


@pytest.mark.parametrize("sees_system", [True, False])
def test_an_assisted_target_takes_system_registers_from_a_stub_that_has_them(sees_system):
    class Stub(Bare):
        description = "stub"
        capabilities = frozenset(
            {Capability.PHYSICAL_READS, Capability.BREAKPOINTS}
            | ({Capability.SYSTEM_REGISTERS} if sees_system else set())
        )

        def system_registers(self):
            return SystemRegisters(
                DescriptorTableRegister(0x5000, 0x7F), DescriptorTableRegister(0, 0), None, None
            )

    target = AgentAssistedTarget(agent_line(), Stub, timeout=1.0)
    assert target.system_from == ("stub" if sees_system else "agent")
    assert target.system_registers().gdtr.base == (0x5000 if sees_system else 0x1000)
    assert target.agent_registers["pat"] == 0x0007040600070406
    assert target.maxphyaddr == 40
    # The stub's features, the agent's system registers; a transport has no name to
    # open again, so no remaps; the agent itself is not kept (the stub stops it).
    assert target.capabilities == {
        Capability.PHYSICAL_READS,
        Capability.BREAKPOINTS,
        Capability.SYSTEM_REGISTERS,
    }
    for capability, use, _words in MISSING:
        if capability not in target.capabilities and capability is not Capability.REMAPS:
            with pytest.raises(MissingCapability):
                use(target)
    session = Session(target)
    with pytest.raises(MissingCapability, match="remaps need the in-kernel agent"):
        session.remapper()
    with pytest.raises(AttributeError):
        target.is_qemu  # noqa: B018 - what the stub offers is target.stub's, not forwarded


# -- agent error codes ------------------------------------------------------------------------


def test_error_codes_are_the_protocol_documents_table():
    table = dict(
        (int(code), name)
        for code, name in re.findall(r"^\| (\d+) \| ([a-z-]+) \|", PROTOCOL_DOC.read_text(), re.M)
    )
    assert table == {int(code): code.wire_name for code in ErrorCode} == ERROR_NAMES
    assert ErrorCode(9) is ErrorCode.REFUSED and ErrorCode.REFUSED == 9


def test_an_agent_error_carries_the_code_and_reads_as_a_number():
    error = AgentError(ErrorCode.UNSUPPORTED, "efi_info: unsupported")
    assert error.code == 6 and error.code is ErrorCode.UNSUPPORTED
    assert str(error) == "agent error 6: efi_info: unsupported"


def test_an_unknown_method_is_an_agent_error_with_its_code():
    target = AgentTarget(agent_line(), timeout=1.0)
    with pytest.raises(AgentError) as error:
        target.efi_info()
    assert error.value.code == ErrorCode.UNKNOWN_METHOD
    assert "(unknown-method)" in str(error.value)
    target.close(resume=False)


# -- a dead link ------------------------------------------------------------------------------


def test_an_agent_whose_line_closes_is_lost():
    ours, theirs = socket.socketpair()
    RegsAgent(theirs)
    target = AgentTarget(SocketTransport(ours, "pair"), timeout=1.0)
    theirs.shutdown(socket.SHUT_RDWR)
    theirs.close()
    with pytest.raises(TargetLost, match="agent on pair: pair: (write failed|.*closed)"):
        target.agent_registers()
    target.close(resume=False)
    with pytest.raises(TargetLost, match="closed"):
        target.read_physical(0, 8)


def test_an_agent_that_falls_silent_is_lost():
    from tests.unit.test_agent_transports import FakeAgent

    ours, theirs = socket.socketpair()
    fake = FakeAgent(theirs)
    target = AgentTarget(SocketTransport(ours, "pair"), timeout=0.05, retries=1)
    fake.silent = 100
    with pytest.raises(TargetLost, match="did not answer"):
        target.read_physical(0, 8)
    target.close(resume=False)


def test_a_session_whose_target_exited_says_it_is_lost():
    class Gone(Bare):
        capabilities = frozenset({Capability.RUN_CONTROL})

        @property
        def state(self):
            return "exited"

        def wait_for_stop(self, timeout):
            raise TargetError("lost the connection to gdb: gdb exited")

    with pytest.raises(TargetLost, match="gone away"):
        Session(Gone()).wait_for_stop(0.01)


def test_the_client_names_the_codes_it_knows_and_keeps_the_others():
    from kinspect.protocols.agent_client import AgentRemoteError

    known = AgentRemoteError(4, "not mapped", 0x1000)
    assert known.code is ErrorCode.FAULT and str(known) == "agent error 4: not mapped"
    unknown = AgentRemoteError(8, "from a newer agent")
    assert unknown.code == 8 and not isinstance(unknown.code, ErrorCode)
