"""A target reached through the in-kernel agent over a serial line alone.

The agent runs inside the kernel (its idle loop or UART interrupt), so it sees
what a gdb stub often cannot: GDTR/IDTR/TR/LDTR, EFER and IA32_PAT by rdmsr.
"Stopped" here means the agent holds the CPU in its request loop with
interrupts off (the ``stop`` request) until ``resume``: the kernel makes no
progress, so several reads see one consistent state.

Memory reads never fault the kernel: the agent walks the page tables before
touching a virtual address and reads physical memory only where its host
says it may; anything else is an error reply, raised here as FaultError.
"""

from __future__ import annotations

import os
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kinspect.protocols.agent_client import (
    AgentClient,
    AgentClientError,
    AgentProtocolError,
    AgentRemoteError,
    AgentTimeout,
)
from kinspect.protocols.agent_wire import ERROR_NAMES, ErrorCode
from kinspect.protocols.probe import looks_like_gdb
from kinspect.protocols.qmp import QmpClient, QmpError
from kinspect.protocols.transports import Transport, TransportError, open_transport

from ..efi.runtime import EfiTime
from ..errors import AgentError, FaultError, ProtocolError, TargetError, TargetLost
from ..x86.descriptors import SEGMENT_REGISTERS
from ..x86.paging import Permissions, Range
from .base import (
    REMAPS_READ_ONLY,
    Breakpoint,
    Capability,
    CpuThread,
    DescriptorTableRegister,
    SegmentRegister,
    StopRecord,
    SystemRegisters,
    Target,
    UefiCalls,
)

if TYPE_CHECKING:
    from ..remap.journal import Journal
    from ..remap.service import Remaps

__all__ = [
    "RANGE_FLAGS",
    "AgentAssistedTarget",
    "AgentTarget",
    "AgentTranslation",
    "decode_walk_range",
]

#: How long the first hello waits before the silence is explained (in use, a stopped kernel):
#: as long as the gdb target's look. A live agent's first bytes come within milliseconds
#: (the first chunk of its hello reply is 128 bytes: 11 ms at 115,200 baud), and any byte
#: at all (console text, a damaged frame) sends the handshake on with its whole timeout.
QUICK_LOOK = 0.5
#: ... on a pty: QEMU's pty backend looks for a reader once a second and drops what the
#: guest writes until it has seen one, so a live agent may say nothing for up to 1 s.
PTY_LOOK = 1.5

#: Bits of a walk range's flags (AGENT_PROTOCOL.md, "walk").
RANGE_FLAGS = {"W": 1, "U": 2, "X": 4, "G": 8, "PWT": 16, "PCD": 32, "PAT": 64}

#: Registers named as GdbTarget names them (what Session and the CLI expect).
_GDB_NAMES = (
    *("rbp", "rsp", "rip", "rflags"),
    *(name.lower() for name in SEGMENT_REGISTERS),
    *("cr0", "cr2", "cr3", "cr4", "cr8", "efer"),
)


@dataclass(frozen=True, slots=True)
class AgentTranslation:
    """The agent's own translation of one virtual address."""

    va: int
    pa: int
    page_size: int
    flags: int
    entries: tuple[int, ...]


def decode_walk_range(item: list[int]) -> Range:
    """One ``[start, size, phys, page_size, flags]`` of a walk reply as a Range."""
    if not isinstance(item, list) or len(item) != 5 or not all(isinstance(x, int) for x in item):
        raise ProtocolError(f"walk range is not 5 integers: {item!r}")
    start, size, phys, page_size, flags = item
    if page_size not in (1 << 12, 1 << 21, 1 << 30) or size <= 0 or size % page_size:
        raise ProtocolError(f"walk range has page size {page_size:#x} and size {size:#x}")
    permissions = Permissions(bool(flags & 1), bool(flags & 2), bool(flags & 4))
    attributes = tuple(n for n in ("G", "PWT", "PCD", "PAT") if flags & RANGE_FLAGS[n])
    return Range(start, start + size, phys, page_size, permissions, attributes)


def _qemu_status_beside(spec: str) -> str | None:
    """QEMU's run state from the QMP socket beside a ``unix:`` line (the launcher's layout:
    serial.sock and qmp.sock in one directory); None when there is none to ask."""
    if not spec.startswith("unix:"):
        return None
    qmp = os.path.join(os.path.dirname(spec[len("unix:") :]), "qmp.sock")
    if not os.path.exists(qmp):
        return None
    try:
        with QmpClient(qmp, timeout=0.5) as client:
            reply = client.execute("query-status")
    except (QmpError, OSError):
        return None
    status = reply.get("status") if isinstance(reply, dict) else None
    return status if isinstance(status, str) else None


class AgentTarget(Target):
    """A kernel that embeds the kinspect agent, on a serial line (or socket, or pty)."""

    capabilities = frozenset(
        {
            Capability.PHYSICAL_READS,
            Capability.SYSTEM_REGISTERS,
            Capability.AGENT,
            Capability.UEFI_CALLS,
            Capability.REMAPS,
        }
    )

    def __init__(
        self,
        spec: str | Transport,
        *,
        timeout: float = 2.0,
        retries: int = 3,
        baudrate: int = 115200,
        on_console: Callable[[bytes], None] | None = None,
    ) -> None:
        try:
            transport = (
                spec
                if isinstance(spec, Transport)
                else open_transport(spec, baudrate=baudrate, timeout=timeout)
            )
        except TransportError as exc:
            raise TargetError(str(exc)) from exc
        self.spec = spec if isinstance(spec, str) else transport.description
        self.client = AgentClient(
            transport,
            timeout=timeout,
            retries=retries,
            on_console=on_console,
        )
        self._closed = False
        self._maxphyaddr: int | None = None
        self._stopped_by_us = False
        # Console text is held back until the line is known to be the agent's: a gdb stub's
        # packets are not the kernel's console.
        self.client.on_console = None
        try:
            self.info = self._hello(timeout)
        except Exception:
            self.client.close()
            raise
        self.client.on_console = on_console
        if on_console is not None and self.client.console:
            on_console(bytes(self.client.console))
        if not isinstance(self.info, dict) or self.info.get("protocol") != 1:
            self.client.close()
            raise ProtocolError(f"{self.spec} does not speak agent protocol 1: {self.info!r}")
        if self.info.get("readonly"):  # no mutating methods compiled in: no remaps
            self.capabilities = type(self).capabilities - {Capability.REMAPS}
            self.missing_reasons = {Capability.REMAPS: REMAPS_READ_ONLY}
        methods = self.info.get("methods")
        if isinstance(methods, list) and "write_phys" in methods and not self.info.get("readonly"):
            # an agent built with AGENT_ENABLE_MEMORY_WRITES (the demo kernel's is not)
            self.capabilities = self.capabilities | {Capability.MEMORY_WRITES}
        else:
            self.missing_reasons = {
                **self.missing_reasons,
                Capability.MEMORY_WRITES: "this agent has no write_phys method (the host "
                "kernel builds it with -DAGENT_ENABLE_MEMORY_WRITES to have one): write "
                "through a gdb stub (--target)",
            }
        self.max_read = int(self.info.get("max_read", 1024))
        #: what the last walk_ranges took: leaves, problems (entries skipped), requests
        self.walk_stats: dict[str, int] = {}
        self._state = "stopped" if self.info.get("stopped") else "running"
        self.description = f"kinspect agent {self.info.get('agent', '?')} on {self.spec}"

    # -- plumbing --------------------------------------------------------------

    def _hello(self, timeout: float) -> Any:
        """The handshake, with a quick first look: a line where nothing at all comes back
        within :data:`QUICK_LOOK` is explained at once, not after every retry."""
        look = PTY_LOOK if self.client.transport.description.startswith("pty:") else QUICK_LOOK
        self._look = min(timeout, look)
        try:
            return self.client.hello(timeout=self._look, retries=0)
        except AgentTimeout:
            pass
        except (AgentRemoteError, AgentProtocolError, AgentClientError):
            return self._handshake()  # the same error again, in the target's words
        seen = bytes(self.client.console)
        if looks_like_gdb(seen):
            raise TargetError(
                f"{self.spec} is a gdb stub, not the agent (it answered in GDB remote packets): "
                "give it to --target; --agent takes the kernel's serial line"
            )
        if self.client.stats.bytes_received:
            return self._handshake()  # the line is alive (console text, damaged frames)
        raise TargetError(self._silence())

    def _handshake(self) -> Any:
        """``hello`` with the whole timeout and its retries, errors in the target's words."""
        return self._call("hello", handshake=True)

    def _silence(self) -> str:
        """Why nothing came back: QEMU's status when its QMP socket is beside the line's."""
        status = _qemu_status_beside(self.spec)
        if status is not None and status not in ("running", "prelaunch"):
            return (
                f"the kernel is stopped by a debugger (QEMU's status is {status!r}: a gdb stub "
                "holds the CPU, e.g. after --no-resume), so its agent cannot answer on "
                f"{self.spec}; let it run (gdb's continue, or QEMU's cont)"
            )
        return (
            f"{self.spec} is in use by another client (the connection was accepted, but "
            f"nothing answered within {self._look:g} s: QEMU gives a socket to one client at "
            "a time), or the kernel is not running its agent"
        )

    def _call(self, method: str, *params: Any, handshake: bool = False) -> Any:
        if self._closed:
            raise TargetLost("the agent connection is closed")
        try:
            if handshake:
                return self.client.hello()
            return self.client.call(method, *params)
        except AgentRemoteError as exc:
            if exc.code == ErrorCode.FAULT and exc.address is not None:
                raise FaultError(exc.address, exc.message) from exc
            name = ERROR_NAMES.get(exc.code, "error")
            raise AgentError(exc.code, f"{method}: {exc.message} ({name})") from exc
        except AgentTimeout as exc:
            raise TargetLost(f"the agent on {self.spec} did not answer: {exc}") from exc
        except AgentProtocolError as exc:
            raise ProtocolError(str(exc)) from exc
        except AgentClientError as exc:  # the transport failed: the line is closed or gone
            raise TargetLost(f"agent on {self.spec}: {exc}") from exc

    # -- what the agent offers (Capability.AGENT, UEFI_CALLS, REMAPS) -----------------

    def agent(self) -> AgentTarget:
        return self

    def uefi(self) -> UefiCalls:
        return self

    def open_remaps(self, journal: Journal, walk: Callable[[], list[Range]]) -> Remaps:
        """A Remapper on this agent (its own walk verifies each step; ``walk`` is unused)."""
        from ..remap.apply import Remapper

        return Remapper(self, journal)

    # -- memory ------------------------------------------------------------------

    def _read(self, method: str, address: int, size: int) -> bytes:
        if address < 0 or size < 0 or address + size > 1 << 64:
            raise FaultError(address, "address out of range")
        out = bytearray()
        while len(out) < size:
            chunk = min(self.max_read, size - len(out))
            data = self._call(method, address + len(out), chunk)
            if not isinstance(data, bytes) or len(data) != chunk:
                raise ProtocolError(f"{method} returned {type(data).__name__}, not {chunk} bytes")
            out += data
        return bytes(out)

    @property
    def physical_source(self) -> str | None:
        return "the in-kernel agent"

    @property
    def system_registers_source(self) -> str | None:
        return "the in-kernel agent"

    def read_physical(self, address: int, size: int) -> bytes:
        if address + size > 1 << 52:
            raise FaultError(address, "physical address out of range (above 2^52)")
        return self._read("read_phys", address, size)

    def read_virtual(self, address: int, size: int) -> bytes:
        return self._read("read_virt", address, size)

    def write_physical(self, address: int, data: bytes) -> None:
        """``write_phys``, ``max_read`` bytes a request (Capability.MEMORY_WRITES)."""
        if not self.has(Capability.MEMORY_WRITES):
            raise self.missing(
                Capability.MEMORY_WRITES, self.missing_reasons.get(Capability.MEMORY_WRITES, "")
            )
        if address < 0 or address + len(data) > 1 << 52:
            raise FaultError(address, "physical address out of range (above 2^52)")
        for at in range(0, len(data), self.max_read):
            self._call("write_phys", address + at, data[at : at + self.max_read])

    def write_virtual(self, address: int, data: bytes) -> None:
        """Each page's part through ``translate`` then ``write_phys``; nothing is written
        unless every page translates."""
        pieces: list[tuple[int, bytes]] = []
        at = 0
        while at < len(data):
            va = address + at
            size = min(len(data) - at, 4096 - (va & 0xFFF))
            try:
                found = self.translate(va)
            except AgentError as exc:
                raise FaultError(va, f"cannot write virtual memory ({exc})") from exc
            pieces.append((found.pa, data[at : at + size]))
            at += size
        for pa, piece in pieces:
            self.write_physical(pa, piece)

    # -- registers -----------------------------------------------------------------

    def agent_registers(self) -> dict[str, int]:
        """Everything the agent's ``regs`` reports (PAT, GDTR, IDTR, TR, LDTR included)."""
        regs = self._call("regs")
        if not isinstance(regs, dict) or not all(isinstance(v, int) for v in regs.values()):
            raise ProtocolError(f"regs reply is not a map of integers: {regs!r}")
        return regs

    @property
    def maxphyaddr(self) -> int | None:
        """CPUID's physical address width, as the agent reads it (asked once: it never changes)."""
        if self._maxphyaddr is None:
            self._maxphyaddr = int(self.agent_registers().get("maxphyaddr") or 52)
        return self._maxphyaddr

    def registers(self) -> Mapping[str, int]:
        regs = self.agent_registers()
        return {name: regs[name] for name in _GDB_NAMES if name in regs}

    def system_registers(self) -> SystemRegisters:
        """GDTR/IDTR from sgdt/sidt; TR/LDTR from their selector and GDT descriptor.

        The hidden part of TR and LDTR is rebuilt from the descriptor in the
        GDT (base, limit scaled by G, and the attribute bits as QEMU shows
        them: the descriptor's high dword masked with 0x00ffff00, so flags,
        limit 19:16 and the access byte, as
        :attr:`~inspector.x86.descriptors.SegmentDescriptor.attributes`).
        """
        regs = self.agent_registers()
        gdtr = DescriptorTableRegister(regs["gdtr_base"], regs["gdtr_limit"])
        idtr = DescriptorTableRegister(regs["idtr_base"], regs["idtr_limit"])
        return SystemRegisters(
            gdtr,
            idtr,
            self._system_segment(gdtr, regs["tr"]),
            self._system_segment(gdtr, regs["ldtr"]),
        )

    def _system_segment(
        self, gdtr: DescriptorTableRegister, selector: int
    ) -> SegmentRegister | None:
        index = selector & ~7
        if index == 0 or index + 15 > gdtr.limit:
            return None
        raw = self.read_virtual(gdtr.base + index, 16)
        low, high, upper = struct.unpack_from("<IIQ", raw)
        base = (
            (low >> 16) | ((high & 0xFF) << 16) | (high & 0xFF000000) | ((upper & 0xFFFFFFFF) << 32)
        )
        limit = (low & 0xFFFF) | (high & 0x000F0000)
        if high & (1 << 23):  # G: 4 KiB granularity
            limit = (limit << 12) | 0xFFF
        return SegmentRegister(selector, base, limit, high & 0x00FFFF00)

    # -- the agent's own walk ----------------------------------------------------------

    def walk_ranges(self, *, start: int = 0, max_ranges: int | None = None) -> list[Range]:
        """The coalesced map from the agent's in-kernel walk (a few hundred bytes)."""
        ranges: list[Range] = []
        self.walk_stats = {"leaves": 0, "problems": 0, "requests": 0}
        cursor: int | None = start
        while cursor is not None:
            params = (cursor,) if max_ranges is None else (cursor, max_ranges)
            reply = self._call("walk", *params)
            if not isinstance(reply, list) or len(reply) != 5 or not isinstance(reply[0], list):
                raise ProtocolError(
                    f"walk reply is not [ranges, next, leaves, problems, root]: {reply!r}"
                )
            items, following, leaves, problems, _root = reply
            ranges.extend(decode_walk_range(item) for item in items)
            self.walk_stats["leaves"] += leaves
            self.walk_stats["problems"] += problems
            self.walk_stats["requests"] += 1
            if following is not None and (following <= cursor or not items):
                raise ProtocolError(f"walk did not advance past {cursor:#x}")
            cursor = following
        return ranges

    def translate(self, va: int) -> AgentTranslation:
        pa, page_size, flags, entries = self._call("translate", va)
        return AgentTranslation(va, pa, page_size, flags, tuple(entries))

    # -- UEFI runtime services (a kernel booted through UEFI) --------------------------

    def efi_info(self) -> dict[str, Any]:
        """The system table, the kept memory map and whether SetVirtualAddressMap was called."""
        info = self._call("efi_info")
        if not isinstance(info, dict) or "system_table" not in info:
            raise ProtocolError(f"efi_info reply is not the map AGENT_PROTOCOL.md names: {info!r}")
        return info

    def efi_kept_map(self) -> dict[str, int]:
        """Where the kernel keeps the UEFI memory map and attributes table, from ``efi_info``."""
        try:
            info = self.efi_info()
        except AgentError as exc:
            if exc.code == ErrorCode.UNSUPPORTED:  # no UEFI information in the kernel
                raise TargetError(
                    "the kernel did not boot through UEFI: the agent has no UEFI memory map"
                ) from exc
            raise
        keys = ("memmap", "memmap_size", "desc_size", "desc_version", "memattr", "memattr_size")
        return {k: int(info.get(k) or 0) for k in keys}

    def efi_get_time(self) -> EfiTime:
        """GetTime, called by the agent where the firmware is mapped now."""
        return EfiTime.from_reply(self._call("efi_get_time"))

    def efi_get_variable(self, name: str, guid: uuid.UUID) -> tuple[int, bytes]:
        """GetVariable: (attributes, data)."""
        reply = self._call("efi_get_variable", name, guid.bytes_le)
        if not isinstance(reply, list) or len(reply) != 2 or not isinstance(reply[1], bytes):
            raise ProtocolError(f"efi_get_variable reply is not [attributes, data]: {reply!r}")
        return int(reply[0]), reply[1]

    def efi_next_variable_name(
        self, name: str = "", guid: uuid.UUID | None = None
    ) -> tuple[str, uuid.UUID] | None:
        """GetNextVariableName after (name, guid): the first from ("", None), None after the
        last."""
        raw = guid.bytes_le if guid is not None else bytes(16)
        reply = self._call("efi_next_variable_name", name, raw)
        if reply is None:
            return None
        if not isinstance(reply, list) or len(reply) != 2 or len(reply[1]) != 16:
            raise ProtocolError(f"efi_next_variable_name reply is not [name, guid]: {reply!r}")
        return reply[0], uuid.UUID(bytes_le=bytes(reply[1]))

    def efi_variable_names(self, limit: int = 512) -> list[tuple[str, uuid.UUID]]:
        """The variables GetNextVariableName gives (the runtime-visible ones), in its order,
        at most ``limit`` of them."""
        out: list[tuple[str, uuid.UUID]] = []
        following = self.efi_next_variable_name()
        while following is not None and len(out) < limit:
            out.append(following)
            following = self.efi_next_variable_name(*following)
        return out

    # -- run control -------------------------------------------------------------------

    @property
    def state(self) -> str:
        return "exited" if self._closed else self._state

    def stop(self) -> None:
        if self._state != "stopped":
            self._call("stop")
            self._state = "stopped"
            self._stopped_by_us = True

    def resume(self) -> None:
        self._call("resume")
        self._state = "running"
        self._stopped_by_us = False

    def close(self, *, resume: bool = True) -> None:
        """Let the kernel run again (when we stopped it and ``resume``), then hang up."""
        if self._closed:
            return
        try:
            if resume and self._state == "stopped":
                self.resume()
        except (TargetError, AgentError, ProtocolError, FaultError):
            pass
        finally:
            self._closed = True
            self.client.close()

    @property
    def console(self) -> bytes:
        """Console text seen on the line since we attached."""
        return bytes(self.client.console)


class AgentAssistedTarget(Target):
    """A gdb stub for memory, registers and run control; the agent for what it cannot see.

    A stub that stops the CPU stops the agent with it, so the agent is asked
    first, while the kernel still runs: its registers (IA32_PAT among them)
    and GDTR/IDTR/TR/LDTR are kept from that moment, just before the stub
    attached. They are the ones kernels set once at boot. ``system_from``:
    ``"auto"`` takes GDTR/IDTR/TR from the stub when it is QEMU's (whose
    monitor shows the CPU's cached copies) and from the agent otherwise;
    ``"agent"`` and ``"stub"`` force one.
    """

    def __init__(
        self,
        agent_spec: str | Transport,
        make_stub: Callable[[], Target],
        *,
        timeout: float = 2.0,
        retries: int = 3,
        system_from: str = "auto",
    ) -> None:
        if system_from not in ("auto", "agent", "stub"):
            raise TargetError(f"system_from must be auto, agent or stub, not {system_from!r}")
        #: the agent's line, for what needs the agent again later (remaps); None for a transport
        self.agent_spec = agent_spec if isinstance(agent_spec, str) else None
        self.agent_timeout, self.agent_retries = timeout, retries
        agent = AgentTarget(agent_spec, timeout=timeout, retries=retries)
        try:
            if agent.state == "stopped":
                raise TargetError(
                    "the agent holds the kernel stopped (an earlier --no-resume?); "
                    "resume it before attaching a stub as well"
                )
            #: every register the agent reported (``pat``, ``gdtr_base``, ...)
            self.agent_registers = agent.agent_registers()
            self._agent_system = agent.system_registers()
            #: the CPU the agent answered on (its registers are that CPU's)
            self._agent_cpu = int(agent.info.get("cpu", 0)) if isinstance(agent.info, dict) else 0
            self.agent_info = agent.info
        finally:
            agent.close(resume=False)
        #: the gdb stub: memory, registers, run control (what else it offers: ``.stub``)
        self.stub = make_stub()
        # The stub's GDTR/IDTR/TR when it sees them itself (QEMU's, through its monitor).
        use_agent = system_from == "agent" or (
            system_from == "auto" and not self.stub.has(Capability.SYSTEM_REGISTERS)
        )
        self.system_from = "agent" if use_agent else "stub"
        self.description = f"{self.stub.description} with {agent.description}"
        # The stub's reads and run control, the agent's system registers, and remaps when
        # the agent's line can be opened again by name. The agent's own requests and its UEFI
        # calls are not offered: it answers only while the kernel runs, and the stub stops it.
        from_stub = {
            Capability.PHYSICAL_READS,
            Capability.RUN_CONTROL,
            Capability.BREAKPOINTS,
            Capability.WATCHPOINTS,
            Capability.MEMORY_WRITES,
            Capability.REGISTER_WRITES,
        }
        readonly = bool(self.agent_info.get("readonly"))
        self.capabilities = frozenset(
            (self.stub.capabilities & from_stub)
            | {Capability.SYSTEM_REGISTERS}
            | ({Capability.REMAPS} if self.agent_spec and not readonly else set())
        )
        if readonly:
            self.missing_reasons = {Capability.REMAPS: REMAPS_READ_ONLY}

    def open_agent(self) -> AgentTarget:
        """A fresh connection to the agent on its named line (remaps open one per turn)."""
        self.require(
            Capability.REMAPS, "remaps need the agent's line by name (unix:..., tcp:..., a path)"
        )
        assert self.agent_spec is not None
        return AgentTarget(self.agent_spec, timeout=self.agent_timeout, retries=self.agent_retries)

    def open_remaps(self, journal: Journal, walk: Callable[[], list[Range]]) -> Remaps:
        """Remaps in turns: the agent applies, the stub verifies through ``walk``."""
        self.require(
            Capability.REMAPS, "remaps need the agent's line by name (unix:..., tcp:..., a path)"
        )
        from ..remap.assisted import StubAssistedRemapper

        return StubAssistedRemapper(self, journal, walk)

    # Run control is the stub's: the agent answers only while the kernel runs.
    @property
    def last_stop(self) -> StopRecord:
        return self.stub.last_stop

    @last_stop.setter
    def last_stop(self, record: StopRecord) -> None:
        self.stub.last_stop = record

    def wait_for_stop(self, timeout: float) -> StopRecord | None:
        return self.stub.wait_for_stop(timeout)

    def step_instruction(self) -> StopRecord:
        return self.stub.step_instruction()

    def break_insert(self, location: str) -> int:
        return self.stub.break_insert(location)

    def breakpoints(self) -> list[Breakpoint]:
        return self.stub.breakpoints()

    def break_delete(self, number: int) -> None:
        self.stub.break_delete(number)

    def start_next(self, *, line: bool) -> None:
        self.stub.start_next(line=line)

    def start_finish(self) -> None:
        self.stub.start_finish()

    def start_until(self, address: int) -> int:
        return self.stub.start_until(address)

    def watch_insert(self, address: int, length: int, access: str) -> int:
        return self.stub.watch_insert(address, length, access)

    def write_virtual(self, address: int, data: bytes) -> None:
        self.stub.write_virtual(address, data)

    def write_physical(self, address: int, data: bytes) -> None:
        self.stub.write_physical(address, data)

    def set_register(self, name: str, value: int) -> None:
        self.stub.set_register(name, value)

    @property
    def maxphyaddr(self) -> int | None:
        """CPUID's physical address width, from the agent (asked before the stub attached)."""
        return self.agent_registers.get("maxphyaddr") or None

    def read_virtual(self, address: int, size: int) -> bytes:
        return self.stub.read_virtual(address, size)

    def read_physical(self, address: int, size: int) -> bytes:
        return self.stub.read_physical(address, size)

    @property
    def physical_source(self) -> str | None:
        return self.stub.physical_source

    @property
    def system_registers_source(self) -> str | None:
        if self.system_from == "agent":
            return "the in-kernel agent"
        return self.stub.system_registers_source

    def direct_map_wanted(self) -> bool:
        return self.stub.direct_map_wanted()

    def use_direct_map(self, base: int, source: str) -> None:
        self.stub.use_direct_map(base, source)

    def registers(self) -> Mapping[str, int]:
        return self.stub.registers()

    def system_registers(self) -> SystemRegisters:
        if self.system_from == "agent":
            if self.stub.cpu != self._agent_cpu:
                raise TargetError(
                    f"GDTR/IDTR/TR come from the agent here, which saw CPU {self._agent_cpu} "
                    f"only, not CPU {self.stub.cpu}"
                )
            return self._agent_system
        return self.stub.system_registers()

    # The stub's CPUs: one gdb thread each (QEMU's).
    @property
    def cpu(self) -> int:
        return self.stub.cpu

    def cpu_threads(self) -> list[CpuThread]:
        return self.stub.cpu_threads()

    def select_cpu(self, index: int) -> None:
        self.stub.select_cpu(index)

    @property
    def state(self) -> str:
        return self.stub.state

    def stop(self) -> None:
        self.stub.stop()

    def resume(self) -> None:
        self.stub.resume()

    def close(self, *, resume: bool = True) -> None:
        self.stub.close(resume=resume)

    @property
    def ram_size(self) -> int | None:
        return self.stub.ram_size
