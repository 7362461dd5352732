"""The Target interface: what every way of reaching a kernel provides.

A target hands out raw bytes and register values and nothing decoded; the
decoders and the session turn those into records. Targets: the GDB remote
stub (QEMU's or any other, gdb.py) and the in-kernel agent over serial
(agent.py).

Every target reads virtual memory and registers and can be stopped and
resumed. The rest is optional, and a target declares what it offers in
:attr:`Target.capabilities` (a set of :class:`Capability`): physical reads,
GDTR/IDTR/TR/LDTR, run control, breakpoints, the agent's own requests, UEFI
calls, remaps. Whoever needs one asks by name (``target.has(Capability.X)``)
or takes its typed handle (:meth:`Target.agent`, :meth:`Target.uefi`,
:meth:`Target.open_remaps`); a target without it raises
:class:`~inspector.errors.MissingCapability` naming what is missing.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

from ..errors import FaultError, MissingCapability, TargetError

if TYPE_CHECKING:
    import uuid

    from ..efi.runtime import EfiTime
    from ..remap.journal import Journal
    from ..remap.service import Remaps
    from ..x86.paging import Range
    from .agent import AgentTarget

__all__ = [
    "REMAPS_NEED_AGENT",
    "Breakpoint",
    "Capability",
    "CpuThread",
    "DescriptorTableRegister",
    "SegmentRegister",
    "StopRecord",
    "SystemRegisters",
    "Target",
    "UefiCalls",
    "check_watch",
]

#: Why a target without Capability.REMAPS cannot remap, and what to attach instead.
REMAPS_NEED_AGENT = (
    "remaps need the in-kernel agent: attach with --agent (alone, or beside "
    "--target: the agent applies, the stub verifies)"
)
REMAPS_READ_ONLY = (
    "the agent is a read-only build (AGENT_READONLY, its hello says readonly): "
    "it has no methods that change the kernel, so no remaps"
)

#: A stop as the target's debugger reports it (gdb/MI's ``*stopped`` payload: ``reason``,
#: ``frame``, ``bkptno``...); empty when unknown.
StopRecord = Mapping[str, object]


class Capability(enum.Enum):
    """What a target may offer beyond reading virtual memory and registers.

    The value says what a target without it cannot do ("... cannot set breakpoints").
    """

    #: ``read_physical``: guest physical memory (QEMU's physical mode, a direct map, the agent)
    PHYSICAL_READS = "read physical memory"
    #: ``system_registers``: GDTR, IDTR, TR and LDTR
    SYSTEM_REGISTERS = "show GDTR/IDTR/TR/LDTR"
    #: ``wait_for_stop`` reports stops by itself; ``step_instruction`` single-steps
    RUN_CONTROL = "single-step"
    #: ``break_insert``, ``breakpoints``, ``break_delete``
    BREAKPOINTS = "set breakpoints"
    #: ``agent()``: the in-kernel agent answers here (its registers, its own walk, hello)
    AGENT = "answer the in-kernel agent's requests"
    #: ``uefi()``: the agent's UEFI requests (where the memory map is kept, GetTime, variables)
    UEFI_CALLS = "call the UEFI runtime services"
    #: ``open_remaps()``: change mappings, the stack and descriptor tables through the agent
    REMAPS = "remap"
    #: ``watch_insert``: hardware watchpoints (a gdb stub's Z2/Z3/Z4: the CPU's debug registers)
    WATCHPOINTS = "set hardware watchpoints"
    #: ``write_virtual``, ``write_physical``: change memory (a stub, the agent's ``write_phys``)
    MEMORY_WRITES = "write memory"
    #: ``set_register``: change a register of the stopped CPU (a gdb stub)
    REGISTER_WRITES = "set registers"


class UefiCalls(Protocol):
    """What the in-kernel agent answers of the firmware (a kernel booted through UEFI)."""

    def efi_kept_map(self) -> Mapping[str, int]:
        """Where the kernel keeps the UEFI memory map and attributes table, and their sizes
        (``memmap``, ``memmap_size``, ``desc_size``, ``desc_version``, ``memattr``,
        ``memattr_size``); TargetError when the kernel did not boot through UEFI."""
        ...

    def efi_get_time(self) -> EfiTime:
        """GetTime."""
        ...

    def efi_get_variable(self, name: str, guid: uuid.UUID) -> tuple[int, bytes]:
        """GetVariable: (attributes, data)."""
        ...

    def efi_variable_names(self, limit: int = 512) -> list[tuple[str, uuid.UUID]]:
        """(name, vendor GUID) of the variables GetNextVariableName lists."""
        ...


@dataclass(frozen=True, slots=True)
class DescriptorTableRegister:
    """GDTR or IDTR: a linear base and a limit."""

    base: int
    limit: int

    def to_dict(self) -> dict[str, int]:
        return {"base": self.base, "limit": self.limit}


@dataclass(frozen=True, slots=True)
class SegmentRegister:
    """A selector with its hidden (cached) part, as the CPU holds it."""

    selector: int
    base: int
    limit: int
    attributes: int

    def to_dict(self) -> dict[str, int]:
        return {
            "selector": self.selector,
            "base": self.base,
            "limit": self.limit,
            "attributes": self.attributes,
        }


@dataclass(frozen=True, slots=True)
class SystemRegisters:
    """The registers a gdb stub usually hides: GDTR, IDTR, TR, LDTR."""

    gdtr: DescriptorTableRegister
    idtr: DescriptorTableRegister
    tr: SegmentRegister | None
    ldtr: SegmentRegister | None

    def to_dict(self) -> dict[str, object]:
        return {
            "gdtr": self.gdtr.to_dict(),
            "idtr": self.idtr.to_dict(),
            "tr": self.tr.to_dict() if self.tr else None,
            "ldtr": self.ldtr.to_dict() if self.ldtr else None,
        }


@dataclass(frozen=True, slots=True)
class CpuThread:
    """One CPU as the target lists it: its index (QEMU's ``cpu N``, Linux's CPU number)
    and whether it sits in HLT waiting for an interrupt (None: the target cannot tell)."""

    index: int
    halted: bool | None = None


@dataclass(frozen=True, slots=True)
class Breakpoint:
    """One breakpoint (or watchpoint) as the target's debugger keeps it.

    ``address`` is None where there is no code address: a pending breakpoint
    or a watchpoint; ``location`` says where in words (``demo_level3 at
    demo/work.c:17``, a watched expression); ``hits`` is the debugger's count.
    """

    number: int
    address: int | None
    location: str
    hits: int
    enabled: bool
    kind: str = "breakpoint"  # gdb's type: "breakpoint", "hw watchpoint", ...

    def to_dict(self) -> dict[str, object]:
        return {
            "number": self.number,
            "address": self.address,
            "location": self.location,
            "hits": self.hits,
            "enabled": self.enabled,
            "kind": self.kind,
        }

    def __str__(self) -> str:
        where = f"{self.address:#018x}" if self.address is not None else "-"
        state = "" if self.enabled else " (disabled)"
        return f"{self.number}: {self.kind} at {where} {self.location}, hit {self.hits}{state}"


def check_watch(address: int, length: int, access: str) -> None:
    """TargetError unless one x86 debug register can watch it: LEN 1, 2, 4 or 8 bytes,
    the address aligned to LEN (SDM 18.2.5), access w, r or rw."""
    if access not in ("w", "r", "rw"):
        raise TargetError(f"watch access is w, r or rw, not {access!r}")
    if length not in (1, 2, 4, 8):
        raise TargetError(
            f"a hardware watchpoint covers 1, 2, 4 or 8 bytes (one debug register), not {length}"
        )
    if address % length:
        raise TargetError(
            f"{address:#x} is not {length}-byte aligned: a debug register watches an aligned "
            f"{length}-byte field (give a smaller length, or {address & ~(length - 1):#x})"
        )


class Target(ABC):
    """A live kernel we can read. Reads need the target stopped."""

    #: a short human description, e.g. "gdb remote stub /tmp/x/gdb.sock (QEMU)"
    description: str = "target"

    #: What this target offers beyond the abstract methods (see :class:`Capability`).
    capabilities: frozenset[Capability] = frozenset()
    #: Why a capability this kind of target usually offers is missing here (one line each).
    missing_reasons: dict[Capability, str] = {}  # noqa: RUF012 (read-only; set per instance)

    def has(self, capability: Capability) -> bool:
        """Whether this target offers ``capability``."""
        return capability in self.capabilities

    def missing(self, capability: Capability, hint: str = "") -> MissingCapability:
        """The error for ``capability`` missing here: "<target> cannot <what>[; hint]"."""
        text = f"{self.description} cannot {capability.value}"
        return MissingCapability(capability, f"{text}; {hint}" if hint else text)

    def require(self, capability: Capability, hint: str = "") -> None:
        """MissingCapability (a TargetError naming it) unless this target offers ``capability``."""
        if not self.has(capability):
            raise self.missing(capability, hint)

    @abstractmethod
    def read_virtual(self, address: int, size: int) -> bytes:
        """Read guest virtual memory through the CPU's current page tables."""

    def read_physical(self, address: int, size: int) -> bytes:
        """Read guest physical memory (Capability.PHYSICAL_READS). Raises FaultError past RAM."""
        raise self.missing(Capability.PHYSICAL_READS)

    def read_physical_many(self, requests: Sequence[tuple[int, int]]) -> list[bytes | FaultError]:
        """Several physical reads, ``(address, size)`` each: each one's bytes, or the
        FaultError that ended it (at the exact address that failed). A target that can
        batches them (GdbTarget: one request per contiguous run, several in flight); here
        they are read one after the other."""
        found: list[bytes | FaultError] = []
        for address, size in requests:
            try:
                found.append(self.read_physical(address, size))
            except FaultError as exc:
                found.append(exc)
        return found

    @property
    def physical_source(self) -> str | None:
        """Where physical reads come from, in words for the output (None: not known yet)."""
        return "the target" if self.has(Capability.PHYSICAL_READS) else None

    @property
    def system_registers_source(self) -> str | None:
        """Where GDTR/IDTR/TR come from, in words (None: this target cannot show them)."""
        return "the target" if self.has(Capability.SYSTEM_REGISTERS) else None

    def direct_map_wanted(self) -> bool:
        """Whether physical reads wait for the base of the kernel's direct map."""
        return False

    def use_direct_map(self, base: int, source: str) -> None:
        """Read physical memory through the direct map at ``base`` (``source``: how it
        was found, for the output), on a target that reads it so."""
        raise self.missing(Capability.PHYSICAL_READS, "it reads no direct map")

    @abstractmethod
    def registers(self) -> Mapping[str, int]:
        """General, segment and control registers by lower-case name (rip, cr3, efer, ...)."""

    def system_registers(self) -> SystemRegisters:
        """GDTR/IDTR/TR/LDTR (Capability.SYSTEM_REGISTERS)."""
        raise self.missing(
            Capability.SYSTEM_REGISTERS, "attach the in-kernel agent (--agent) to see them"
        )

    @property
    @abstractmethod
    def state(self) -> str:
        """ "stopped", "running" or "exited"."""

    @abstractmethod
    def stop(self) -> StopRecord | None:
        """Stop the target (no-op when already stopped); the stop record when it keeps one."""

    @abstractmethod
    def resume(self) -> None:
        """Let the target run."""

    @abstractmethod
    def close(self, *, resume: bool = True) -> None:
        """Let go of the target, running again when ``resume``."""

    @property
    def ram_size(self) -> int | None:
        """Bytes of guest RAM when known."""
        return None

    # -- CPUs: every read is of the selected CPU -----------------------------------------
    # The defaults are a target that shows one CPU (the agent answers on its own).

    @property
    def cpu(self) -> int:
        """The index of the CPU whose registers, system registers and address space
        the reads see (after a stop: the CPU that stopped)."""
        return 0

    def cpu_threads(self) -> list[CpuThread]:
        """Every CPU the target shows, by index."""
        return [CpuThread(0)]

    def select_cpu(self, index: int) -> None:
        """Read CPU ``index`` from now on; TargetError when there is no such CPU."""
        if index != 0:
            raise TargetError(f"{self.description} shows one CPU only: there is no CPU {index}")

    @property
    def maxphyaddr(self) -> int | None:
        """The physical address width (CPUID 0x80000008 EAX[7:0]) when the target can tell:
        address bits above it are reserved in page-table entries. None: unknown (52 assumed)."""
        return None

    # -- run control a debugger stub offers: stops it reports, stepping, breakpoints ------
    # The defaults are a target that stops only when asked (the agent): it never reports
    # a stop by itself, and it cannot step or break.

    _last_stop: StopRecord = MappingProxyType({})

    @property
    def last_stop(self) -> StopRecord:
        """The record of the last stop (``reason``, ``frame``...), empty when unknown."""
        return self._last_stop

    @last_stop.setter
    def last_stop(self, record: StopRecord) -> None:
        self._last_stop = record

    def wait_for_stop(self, timeout: float) -> StopRecord | None:
        """Wait up to ``timeout`` s for the running target to stop by itself (a breakpoint).

        The stop record; None when it cannot stop by itself (the default, without
        Capability.RUN_CONTROL); TargetError when it did not stop in time or has gone away.
        """
        return None

    def step_instruction(self) -> StopRecord:
        """Execute one instruction (Capability.RUN_CONTROL); the stop record."""
        raise self.missing(Capability.RUN_CONTROL)

    def break_insert(self, location: str) -> int:
        """A breakpoint at a symbol or ``*address`` (Capability.BREAKPOINTS); its number."""
        raise self.missing(Capability.BREAKPOINTS)

    def breakpoints(self) -> list[Breakpoint]:
        """The breakpoints set, in number order, with their hit counts; none by default."""
        return []

    def break_delete(self, number: int) -> None:
        """Delete breakpoint ``number``; TargetError when there is none by that number."""
        raise self.missing(Capability.BREAKPOINTS)

    # Stepping as debuggers do: each starts the kernel and returns; the stop comes later
    # (``wait_for_stop``), so a face can interrupt one that never gets there.

    def start_next(self, *, line: bool) -> None:
        """Step over calls: one source line (gdb's ``next``: needs the ELF's line table) or,
        ``line`` False, one instruction (``nexti``); Capability.RUN_CONTROL."""
        raise self.missing(Capability.RUN_CONTROL)

    def start_finish(self) -> None:
        """Run until the selected frame returns to its caller (gdb's ``finish``)."""
        raise self.missing(Capability.RUN_CONTROL)

    def start_until(self, address: int) -> int:
        """Run until ``address`` (a temporary breakpoint there, then continue); its number."""
        raise self.missing(Capability.BREAKPOINTS)

    def watch_insert(self, address: int, length: int, access: str) -> int:
        """A hardware watchpoint on ``length`` bytes at ``address`` (``access``: ``"w"``,
        ``"r"`` or ``"rw"``), listed with the breakpoints (Capability.WATCHPOINTS); its number."""
        raise self.missing(Capability.WATCHPOINTS)

    # -- changing the kernel: memory and registers -----------------------------------------

    def write_virtual(self, address: int, data: bytes) -> None:
        """Write ``data`` at a virtual address (Capability.MEMORY_WRITES)."""
        raise self.missing(Capability.MEMORY_WRITES)

    def write_physical(self, address: int, data: bytes) -> None:
        """Write ``data`` at a physical address (Capability.MEMORY_WRITES)."""
        raise self.missing(Capability.MEMORY_WRITES)

    def set_register(self, name: str, value: int) -> None:
        """Set register ``name`` (lower case, as :meth:`registers` names it) of the selected
        CPU (Capability.REGISTER_WRITES)."""
        raise self.missing(Capability.REGISTER_WRITES)

    # -- what only the in-kernel agent offers ---------------------------------------------

    def agent(self) -> AgentTarget:
        """The agent itself, answering on its line (Capability.AGENT): its hello, its
        registers (IA32_PAT...), its own page-table walk."""
        raise self.missing(Capability.AGENT, "attach with --agent")

    def uefi(self) -> UefiCalls:
        """The agent's UEFI requests (Capability.UEFI_CALLS)."""
        raise self.missing(
            Capability.UEFI_CALLS,
            "a call into the firmware is made by the in-kernel agent: attach with --agent",
        )

    def open_remaps(self, journal: Journal, walk: Callable[[], list[Range]]) -> Remaps:
        """Remaps journaled in ``journal`` (Capability.REMAPS). ``walk`` walks the map as
        the session sees it now, for targets that verify through another view (a stub's)."""
        raise self.missing(Capability.REMAPS, REMAPS_NEED_AGENT)

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
