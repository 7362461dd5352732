"""What a session's remapper offers, whichever way it reaches the agent.

:class:`~inspector.remap.apply.Remapper` (the agent is the target) and
:class:`~inspector.remap.assisted.StubAssistedRemapper` (a gdb stub is the
target, the agent is on the serial line beside it) both are :class:`Remaps`;
``Session.remapper()`` hands out one or the other, as the target says
(``Target.open_remaps``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..x86.paging import Range
    from .apply import StepReport
    from .journal import Journal, JournalStep
    from .plan import Plan, Step

__all__ = ["Remaps"]


class Remaps(Protocol):
    """Plans, journaled and verified steps, and undo, on one kernel's agent."""

    #: where every step is written before it is reported
    journal: Journal

    @property
    def spec(self) -> str:
        """The agent's line, as the journal names the target (``unix:...``, a device)."""
        ...

    def registers(self) -> dict[str, int]:
        """The registers the agent reads (GDTR/IDTR bases and IA32_PAT too)."""
        ...

    def ranges(self) -> list[Range]:
        """The map as the agent walks it now."""
        ...

    def plan_map(
        self, va: int, pa: int, size: int, *, page_size: int = 0x1000, flags: int = 0
    ) -> Plan: ...

    def plan_unmap(self, va: int, size: int, *, page_size: int = 0x1000) -> Plan: ...

    def plan_protect(
        self, va: int, size: int, *, page_size: int = 0x1000, flags: int = 0
    ) -> Plan: ...

    def plan_move(self, va: int, size: int, new_va: int, *, drop_old: bool = False) -> Plan: ...

    def plan_higher_half(self) -> Plan: ...

    def plan_efi_runtime(self, *, base: int = ..., drop_identity: bool = True) -> Plan: ...

    def run_step(self, step: Step, *, force: bool = False) -> StepReport:
        """Journal, apply and verify one step."""
        ...

    def apply(self, plan: Plan, *, force: bool = False) -> list[StepReport]:
        """Every step of ``plan`` (RemapRefused when it has refusals and not ``force``)."""
        ...

    def undo(
        self, steps: list[JournalStep] | None = None, *, force: bool = False
    ) -> list[JournalStep]:
        """Restore what the open steps (or ``steps``) replaced, newest first."""
        ...

    def close(self) -> None:
        """Let go of what this remapper holds (the agent's line); the journal stays."""
        ...
