"""Remaps on a session whose primary target is a gdb stub, with the agent on the serial line.

The agent answers only while the kernel runs, and the stub stops the whole
machine, agent included. So every remap operation takes a turn: the stub
lets the kernel run, the agent holds it in its own loop (the kernel's code
stays where it was, as with ``kinspect --agent`` alone), the plan is made
and the steps applied through the agent, and each step is verified by the
stub's walk (the stub stops the CPU inside the agent's loop, walks, lets it
go on). At the end of the turn the agent releases the kernel and, when it
was stopped before, the stub stops it again: breakpoints, stepping and
every read stay the stub's. ``kinspect --target ... --agent ... remap``
does the same, attaching the stub per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..efi.runtime import EFI_VA_BASE
from ..errors import InspectorError, TargetError, TargetLost
from ..x86.paging import Range
from .apply import PAGE, Remapper, StepReport
from .journal import Journal, JournalStep, kernel_identity
from .plan import Plan, Step

if TYPE_CHECKING:  # the targets open remappers: they are imported the other way round
    from ..targets.agent import AgentAssistedTarget, AgentTarget

__all__ = ["StubAssistedRemapper"]


class StubAssistedRemapper:
    """A :class:`~inspector.remap.apply.Remapper` driven from a stub-first session.

    ``walk`` reads the stub's map (called with the CPU stopped by the stub).
    The methods of the Remapper that reach the kernel (plans, ``run_step``,
    ``apply``, ``undo``) each run in one turn; ``journal`` needs none.
    """

    def __init__(
        self,
        target: AgentAssistedTarget,
        journal: Journal,
        walk: Callable[[], list[Range]],
    ) -> None:
        if target.agent_spec is None:
            raise TargetError("remaps need the agent's line by name (unix:..., tcp:..., a path)")
        self.target = target
        self.journal = journal
        self.spec = target.agent_spec
        self._walk = walk
        # The kernel the agent named when the session attached: the journal is scoped to it
        # now (the TUI lists it before any turn), and again by the Remapper of the first turn.
        journal.kernel = kernel_identity(target.agent_info, target.agent_registers)
        self._agent: AgentTarget | None = None
        self._remapper: Remapper | None = None
        self._in_turn = False

    def _stub_walk(self) -> list[Range]:
        """Verification: the stub stops the CPU (in the agent's loop), walks, lets it go on."""
        stub = self.target.stub
        stub.stop()
        try:
            return self._walk()
        finally:
            stub.resume()

    @contextmanager
    def _turn(self) -> Iterator[Remapper]:
        if self._in_turn:  # a Remapper method calling another one
            assert self._remapper is not None
            yield self._remapper
            return
        stub = self.target.stub
        was = stub.state
        if was == "exited":
            raise TargetLost("the target has gone away")
        if was == "stopped":
            stub.resume()  # the agent answers only while the kernel runs
        self._in_turn = True
        try:
            if self._agent is None or self._agent.state == "exited":
                self._agent = self.target.open_agent()
            if self._remapper is None:
                # holds the kernel in the agent's loop, opens the journal session
                self._remapper = Remapper(self._agent, self.journal, verify_walk=self._stub_walk)
            else:
                self._agent.stop()
                self._remapper.target = self._agent  # the line may have been opened again
            yield self._remapper
        finally:
            self._in_turn = False
            try:
                if self._agent is not None and self._agent.state == "stopped":
                    self._agent.resume()
            except InspectorError:
                self._drop_agent()
                raise
            finally:
                if was == "stopped" and stub.state == "running":
                    stub.stop()

    def _drop_agent(self) -> None:
        if self._agent is not None:
            self._agent.close(resume=False)  # the Remapper gets the next line in the next turn
            self._agent = None

    # -- the Remapper's methods that reach the kernel, each in one turn -------------------

    def registers(self) -> dict[str, int]:
        with self._turn() as remapper:
            return remapper.registers()

    def ranges(self) -> list[Range]:
        with self._turn() as remapper:
            return remapper.ranges()

    def plan_map(
        self, va: int, pa: int, size: int, *, page_size: int = PAGE, flags: int = 0
    ) -> Plan:
        with self._turn() as remapper:
            return remapper.plan_map(va, pa, size, page_size=page_size, flags=flags)

    def plan_unmap(self, va: int, size: int, *, page_size: int = PAGE) -> Plan:
        with self._turn() as remapper:
            return remapper.plan_unmap(va, size, page_size=page_size)

    def plan_protect(self, va: int, size: int, *, page_size: int = PAGE, flags: int = 0) -> Plan:
        with self._turn() as remapper:
            return remapper.plan_protect(va, size, page_size=page_size, flags=flags)

    def plan_move(self, va: int, size: int, new_va: int, *, drop_old: bool = False) -> Plan:
        with self._turn() as remapper:
            return remapper.plan_move(va, size, new_va, drop_old=drop_old)

    def plan_higher_half(self) -> Plan:
        with self._turn() as remapper:
            return remapper.plan_higher_half()

    def plan_efi_runtime(self, *, base: int = EFI_VA_BASE, drop_identity: bool = True) -> Plan:
        with self._turn() as remapper:
            return remapper.plan_efi_runtime(base=base, drop_identity=drop_identity)

    def run_step(self, step: Step, *, force: bool = False) -> StepReport:
        with self._turn() as remapper:
            return remapper.run_step(step, force=force)

    def apply(self, plan: Plan, *, force: bool = False) -> list[StepReport]:
        with self._turn() as remapper:
            return remapper.apply(plan, force=force)

    def undo(
        self, steps: list[JournalStep] | None = None, *, force: bool = False
    ) -> list[JournalStep]:
        with self._turn() as remapper:
            return remapper.undo(steps, force=force)

    def close(self) -> None:
        """Hang up on the agent (the kernel is not held by it between turns)."""
        if self._agent is not None:
            self._agent.close(resume=True)
            self._agent = None
