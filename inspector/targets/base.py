"""The Target interface: what every way of reaching a kernel provides.

A target hands out raw bytes and register values and nothing decoded; the
decoders and the session turn those into records. Targets: the GDB remote
stub (QEMU's or any other, gdb.py) and the in-kernel agent over serial
(agent.py).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ..errors import TargetError

__all__ = [
    "Breakpoint",
    "DescriptorTableRegister",
    "SegmentRegister",
    "SystemRegisters",
    "Target",
]


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


class Target(ABC):
    """A live kernel we can read. Reads need the target stopped."""

    #: a short human description, e.g. "gdb remote stub /tmp/x/gdb.sock (QEMU)"
    description: str = "target"

    @abstractmethod
    def read_virtual(self, address: int, size: int) -> bytes:
        """Read guest virtual memory through the CPU's current page tables."""

    @abstractmethod
    def read_physical(self, address: int, size: int) -> bytes:
        """Read guest physical memory. Raises FaultError past RAM."""

    @abstractmethod
    def registers(self) -> Mapping[str, int]:
        """General, segment and control registers by lower-case name (rip, cr3, efer, ...)."""

    @abstractmethod
    def system_registers(self) -> SystemRegisters:
        """GDTR/IDTR/TR/LDTR, or TargetError when this target cannot see them."""

    @property
    @abstractmethod
    def state(self) -> str:
        """ "stopped", "running" or "exited"."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the target (no-op when already stopped)."""

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

    @property
    def maxphyaddr(self) -> int | None:
        """The physical address width (CPUID 0x80000008 EAX[7:0]) when the target can tell:
        address bits above it are reserved in page-table entries. None: unknown (52 assumed)."""
        return None

    # -- run control a debugger stub offers: stops it reports, stepping, breakpoints ------
    # The defaults are a target that stops only when asked (the agent): it never reports
    # a stop by itself, and it cannot step or break.

    #: The record of the last stop (``reason``, ``frame``...), empty when unknown.
    last_stop: Mapping[str, Any] = MappingProxyType({})

    def wait_for_stop(self, timeout: float) -> Mapping[str, Any] | None:
        """Wait up to ``timeout`` s for the running target to stop by itself (a breakpoint).

        The stop record; None when it cannot stop by itself (the default);
        TargetError when it did not stop in time or has gone away.
        """
        return None

    def step_instruction(self) -> Mapping[str, Any]:
        """Execute one instruction; the stop record."""
        raise TargetError(f"{self.description} cannot single-step")

    def break_insert(self, location: str) -> int:
        """A breakpoint at a symbol or ``*address``; its number."""
        raise TargetError(f"{self.description} cannot set breakpoints")

    def breakpoints(self) -> list[Breakpoint]:
        """The breakpoints set, in number order, with their hit counts; none by default."""
        return []

    def break_delete(self, number: int) -> None:
        """Delete breakpoint ``number``; TargetError when there is none by that number."""
        raise TargetError(f"{self.description} cannot set breakpoints")

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
