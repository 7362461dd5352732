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
from typing import Any

from ..errors import InspectorError, TargetError, TargetLost
from ..targets.agent import AgentAssistedTarget, AgentTarget
from ..x86.paging import Range
from .apply import Remapper
from .journal import Journal

__all__ = ["StubAssistedRemapper"]

#: The Remapper methods that talk to the kernel: each runs in one agent turn.
_TURNS = frozenset(
    {
        "apply",
        "plan_efi_runtime",
        "plan_higher_half",
        "plan_map",
        "plan_move",
        "plan_protect",
        "plan_unmap",
        "ranges",
        "registers",
        "run_step",
        "undo",
    }
)


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
                self._agent = AgentTarget(
                    self.spec, timeout=self.target.agent_timeout, retries=self.target.agent_retries
                )
            if self._remapper is None:
                # holds the kernel in the agent's loop, opens the journal session
                self._remapper = Remapper(self._agent, self.journal, verify_walk=self._stub_walk)
            else:
                self._agent.stop()
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
            self._agent.close(resume=False)
            self._agent = None
            if self._remapper is not None:
                self._remapper.target = None  # type: ignore[assignment]

    def __getattr__(self, name: str) -> Any:
        if name not in _TURNS:
            raise AttributeError(name)

        def in_turn(*args: Any, **kwargs: Any) -> Any:
            with self._turn() as remapper:
                if remapper.target is not self._agent:
                    remapper.target = self._agent  # type: ignore[assignment]
                return getattr(remapper, name)(*args, **kwargs)

        in_turn.__name__ = name
        return in_turn

    def close(self) -> None:
        """Hang up on the agent (the kernel is not held by it between turns)."""
        if self._agent is not None:
            self._agent.close(resume=True)
            self._agent = None
