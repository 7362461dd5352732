"""The public Python API for scripted inspections.

from kinspect.inspector import api
with api.launch_demo() as qemu, api.attach(qemu.gdb_endpoint) as k:
    for r in k.ranges():
        print(r)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import (
    AgentError,
    DecodeError,
    FaultError,
    InspectorError,
    MissingCapability,
    ProtocolError,
    TargetError,
    TargetLost,
)
from .session import ControlState, Session
from .targets.base import Capability
from .targets.gdb import GdbTarget

if TYPE_CHECKING:
    from kinspect.protocols.gdbmi import MiSession

    from .remap.apply import Remapper
    from .targets.qemu import QemuInstance, launch_qemu

__all__ = [
    "DEMO_KERNEL",
    "AgentError",
    "Capability",
    "ControlState",
    "DecodeError",
    "FaultError",
    "InspectorError",
    "MissingCapability",
    "ProtocolError",
    "QemuInstance",
    "Session",
    "TargetError",
    "TargetLost",
    "attach",
    "attach_agent",
    "attach_with_agent",
    "launch_demo",
    "launch_qemu",
    "remapper",
]

#: What this module gives from QEMU's launcher (:mod:`.targets.qemu`), imported when first
#: asked for (:func:`__getattr__`): attaching to a stub, as every command does, needs none of it.
_LAUNCHER = ("QemuInstance", "launch_qemu")


def __getattr__(name: str) -> object:
    """``api.QemuInstance`` and ``api.launch_qemu``, from QEMU's launcher on first use."""
    if name not in _LAUNCHER:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from .targets import qemu

    value: object = getattr(qemu, name)
    globals()[name] = value
    return value


#: Where ``make kernel`` puts the demo kernel.
DEMO_KERNEL = Path(__file__).resolve().parent.parent / "kernel-agent" / "build" / "demo-kernel.elf"
#: Where ``make -C kernel-agent uefi`` puts the UEFI loader carrying that same kernel.
DEMO_UEFI = DEMO_KERNEL.parent / "BOOTX64.EFI"


def attach(
    endpoint: str,
    *,
    elf: str | Path | None = None,
    phys_base: int | None = None,
    physical: str | None = None,
    timeout: float = 10.0,
    kallsyms: str | Path | None = None,
    gdb: str | MiSession = "gdb",
) -> Session:
    """Attach to a GDB remote stub (``host:port`` or a unix socket path).

    Attaching stops the kernel; closing the session lets it run again
    (``session.close(resume=False)`` leaves it stopped). ``physical`` picks
    how physical memory is read: ``"qemu"`` (QEMU's physical mode),
    ``"direct-map"`` (through the kernel's direct map at ``phys_base`` or
    found from the ELF's symbols) or ``None`` (QEMU's mode when available,
    the direct map when ``phys_base`` is given or the stub is not QEMU's).
    Without ``elf``, a Linux kernel is recognized on first use and its symbols read
    from its own kallsyms tables (``session.kernel()``), or from ``kallsyms``, a
    /proc/kallsyms copy or System.map. ``gdb``: the gdb to run, or one already
    started (a :class:`~kinspect.protocols.gdbmi.MiSession`, which the target then owns).
    """
    if physical is None:
        physical = "direct-map" if phys_base is not None else "auto"
    target = GdbTarget(
        endpoint,
        elf=str(elf) if elf else None,
        phys_base=phys_base,
        physical=physical,
        timeout=timeout,
        gdb=gdb,
    )
    return Session(
        target, elf=str(elf) if elf else None, kallsyms=str(kallsyms) if kallsyms else None
    )


def attach_agent(
    spec: str,
    *,
    elf: str | Path | None = None,
    timeout: float = 10.0,
    retries: int = 3,
    baudrate: int = 115200,
    on_console: Callable[[bytes], None] | None = None,
    kallsyms: str | Path | None = None,
) -> Session:
    """Attach to the in-kernel agent on a serial line, with no gdb stub.

    ``spec`` is a device path, ``tcp:HOST:PORT``, ``unix:PATH``, ``pty:PATH``
    or a pyserial URL. ``timeout`` bounds each request, retries included.
    Reading stops the kernel (the agent holds it in its request loop);
    closing the session lets it run again. The kernel's console text on the
    same line goes to ``on_console`` as it arrives (and is kept in
    ``session.target.console``).
    """
    from .targets.agent import AgentTarget

    target = AgentTarget(
        spec,
        timeout=timeout / (retries + 1),
        retries=retries,
        baudrate=baudrate,
        on_console=on_console,
    )
    return Session(
        target, elf=str(elf) if elf else None, kallsyms=str(kallsyms) if kallsyms else None
    )


def attach_with_agent(
    endpoint: str,
    agent: str,
    *,
    elf: str | Path | None = None,
    phys_base: int | None = None,
    timeout: float = 10.0,
    system_from: str = "auto",
    kallsyms: str | Path | None = None,
) -> Session:
    """A gdb stub, helped by the agent with what the stub cannot see.

    The agent is asked first, while the kernel runs (the stub stops it):
    GDTR/IDTR/TR/LDTR come from it on stubs other than QEMU's, and its
    registers (IA32_PAT too) are ``session.target.agent_registers``.
    """
    from .targets.agent import AgentAssistedTarget

    def make_stub() -> GdbTarget:
        return GdbTarget(
            endpoint,
            elf=str(elf) if elf else None,
            phys_base=phys_base,
            physical="direct-map" if phys_base is not None else "auto",
            timeout=timeout,
        )

    target = AgentAssistedTarget(agent, make_stub, timeout=timeout / 4, system_from=system_from)
    return Session(
        target, elf=str(elf) if elf else None, kallsyms=str(kallsyms) if kallsyms else None
    )


def launch_demo(
    *,
    memory: str = "128M",
    timeout: float = 30.0,
    serial: str = "unix",
    append: str | None = None,
    uefi: bool = False,
    cpu_flags: Sequence[str] = (),
    exception_log: bool = False,
    stopped: bool = False,
    smp: int = 1,
) -> QemuInstance:
    """Boot the demo kernel in QEMU and wait until it says it is ready.

    ``serial`` puts COM1 (console and agent) on a unix socket, on TCP at
    127.0.0.1 or on a pty; ``instance.agent_endpoint`` is what ``--agent`` takes.
    ``append`` is the kernel command line: ``"lowhalf"`` leaves the stack and
    GDT/IDT/TSS at their identity-mapped addresses (the seed scenario).
    ``uefi`` boots the same kernel through OVMF on q35 (``DEMO_UEFI``, built by
    ``make -C kernel-agent uefi``; symbols still come from ``DEMO_KERNEL``);
    the firmware takes 5-6 s under TCG, so give ``timeout`` room.
    ``cpu_flags`` add to QEMU's ``-cpu qemu64,+pdpe1gb``: with ``("+la57",)`` and
    ``append="la57"`` the kernel runs with 5-level paging; ``append="fault=pf-nx"`` (and
    the other ``fault=`` options of ``kernel-agent/demo/fault_demo.h``) makes it fail on
    purpose. A triple fault pauses QEMU (``instance.status()`` says ``shutdown``) instead of
    resetting it. ``exception_log`` has QEMU log every delivered exception to
    ``instance.int_log`` (~270 KB/s while the demo idles); ``stopped`` starts the CPU
    halted (``-S``), waiting for no line, so a debugger can set breakpoints first.
    ``smp`` CPUs: the demo kernel brings up each AP with a GDT, TSS and stacks of its own.
    """
    from .targets.qemu import launch_qemu

    if uefi:
        if not DEMO_UEFI.is_file():
            raise TargetError(
                f"the UEFI demo kernel is not built ({DEMO_UEFI}); run `make -C kernel-agent uefi`"
            )
        if append:
            raise TargetError("the UEFI demo kernel takes no command line")
        return launch_qemu(
            DEMO_UEFI,
            memory=memory,
            timeout=timeout,
            serial=serial,
            uefi=True,
            cpu_flags=cpu_flags,
            exception_log=exception_log,
            stopped=stopped,
            smp=smp,
        )
    if not DEMO_KERNEL.is_file():
        raise TargetError(f"the demo kernel is not built ({DEMO_KERNEL}); run `make kernel`")
    extra = ("-append", append) if append else ()
    return launch_qemu(
        DEMO_KERNEL,
        memory=memory,
        timeout=timeout,
        serial=serial,
        extra_args=extra,
        cpu_flags=cpu_flags,
        exception_log=exception_log,
        stopped=stopped,
        smp=smp,
    )


def remapper(session: Session, *, journal: str | Path | None = None) -> Remapper:
    """Remaps on a kernel attached with :func:`attach_agent` (``inspector.remap.apply.Remapper``).

    ``r.plan_map/plan_unmap/plan_protect/plan_higher_half`` give a
    :class:`~inspector.remap.plan.Plan` (``str()`` is the CLI's text);
    ``r.apply(plan)`` journals, applies and verifies each step; ``r.undo()``
    restores what the open steps replaced. ``journal`` defaults to
    ``$KINSPECT_REMAP_JOURNAL`` or ``~/.local/state/kinspect/remap-journal.jsonl``.
    """
    from .remap.apply import Remapper
    from .remap.journal import Journal

    if not session.target.has(Capability.AGENT):
        raise MissingCapability(
            Capability.AGENT, "remaps need the in-kernel agent: attach with api.attach_agent(spec)"
        )
    return Remapper(session.target.agent(), Journal.open(journal))
