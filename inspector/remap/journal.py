"""The remap journal: every step on disk before it is acknowledged.

One JSON object per line, appended and fsync'ed:

- ``{"kind": "session", "session": S, "pid": P, "target": T, "time": ...}``
  when a process starts remapping;
- ``{"kind": "step", "seq": N, "session": S, "state": "pending", "method": M,
  "params": [...], "before": ...}`` before the request is sent (``before``:
  what undo needs if the reply never made it to disk: the raw entries on the
  way to each page, or the registers a stack or descriptor move changes);
- ``{"kind": "step", "seq": N, "state": "applied", "result": R}`` once the
  agent answered, before the user is told (``result`` holds the entries the
  agent replaced, exactly);
- ``{"kind": "undone", "seq": N}`` and ``{"kind": "kept", "seqs": [...]}``;
- ``{"kind": "end", "session": S}`` when a process finished with no step pending.

A step is open while it is pending or applied and neither undone nor kept:
``undo`` restores it. Open steps of a session that has no end record and
whose process is gone were left by a crash (a kill, a lost link): the next
``kinspect remap`` finds them and applies nothing new until they are undone
or kept (``journal --keep``).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InspectorError

__all__ = ["DEFAULT_JOURNAL", "Journal", "JournalStep", "default_journal_path"]

DEFAULT_JOURNAL = "~/.local/state/kinspect/remap-journal.jsonl"


def default_journal_path() -> Path:
    """``$KINSPECT_REMAP_JOURNAL``, else ``~/.local/state/kinspect/remap-journal.jsonl``."""
    return Path(os.environ.get("KINSPECT_REMAP_JOURNAL") or DEFAULT_JOURNAL).expanduser()


@dataclass(slots=True)
class JournalStep:
    seq: int
    session: str
    method: str
    params: list[Any]
    before: Any
    description: str
    state: str = "pending"  # pending, applied, undone, kept
    result: Any = None
    time: float = 0.0

    @property
    def open(self) -> bool:
        return self.state in ("pending", "applied")

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "session": self.session,
            "method": self.method,
            "params": self.params,
            "state": self.state,
            "description": self.description,
            "result": self.result,
            "time": self.time,
        }

    def __str__(self) -> str:
        return f"#{self.seq} {self.state:8} {self.method} {self.description}"


@dataclass(slots=True)
class Journal:
    path: Path
    session: str = ""
    steps: dict[int, JournalStep] = field(default_factory=dict)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    _next: int = 1

    @classmethod
    def open(cls, path: Path | str | None = None) -> Journal:
        journal = cls(Path(path) if path else default_journal_path())
        journal._load()
        return journal

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise InspectorError(f"journal {self.path}: cannot read it: {reason}") from exc
        for number, line in enumerate(text.splitlines(), 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash mid-write: the step before it is whole
            try:
                self._load_record(rec)
            except (AttributeError, KeyError, TypeError, ValueError) as exc:
                raise InspectorError(
                    f"journal {self.path}: line {number} is not a journal record "
                    f"({type(exc).__name__}: {exc})"
                ) from exc

    def _load_record(self, rec: Any) -> None:
        kind = rec.get("kind")
        if kind == "session":
            self.sessions[rec["session"]] = rec
        elif kind == "end" and rec.get("session") in self.sessions:
            self.sessions[rec["session"]]["ended"] = True
        elif kind == "step" and rec.get("state") == "pending":
            self.steps[rec["seq"]] = JournalStep(
                rec["seq"],
                rec["session"],
                rec["method"],
                rec["params"],
                rec.get("before"),
                rec.get("description", ""),
                "pending",
                None,
                rec.get("time", 0.0),
            )
            self._next = max(self._next, rec["seq"] + 1)
        elif kind == "step" and rec["seq"] in self.steps:
            self.steps[rec["seq"]].state = "applied"
            self.steps[rec["seq"]].result = rec.get("result")
        elif kind == "undone" and rec["seq"] in self.steps:
            self.steps[rec["seq"]].state = "undone"
        elif kind == "kept":
            for seq in rec.get("seqs", []):
                if seq in self.steps:
                    self.steps[seq].state = "kept"

    def _append(self, rec: dict[str, Any]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(rec, separators=(",", ":")) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise InspectorError(f"journal {self.path}: cannot write it: {exc.strerror}") from exc

    def start_session(self, target: str) -> str:
        self.session = f"{os.getpid()}-{time.time_ns()}"
        rec = {
            "kind": "session",
            "session": self.session,
            "pid": os.getpid(),
            "target": target,
            "time": time.time(),
        }
        self.sessions[self.session] = rec
        self._append(rec)
        return self.session

    def end_session(self) -> bool:
        """Mark this session finished, unless a step is still pending (then it looks crashed)."""
        if not self.session or any(
            s.session == self.session and s.state == "pending" for s in self.steps.values()
        ):
            return False
        self._append({"kind": "end", "session": self.session})
        self.sessions[self.session]["ended"] = True
        return True

    def begin(self, method: str, params: list[Any], before: Any, description: str) -> JournalStep:
        step = JournalStep(
            self._next, self.session, method, list(params), before, description, time=time.time()
        )
        self._next += 1
        self._append(
            {
                "kind": "step",
                "seq": step.seq,
                "session": step.session,
                "state": "pending",
                "method": method,
                "params": step.params,
                "before": before,
                "description": description,
                "time": step.time,
            }
        )
        self.steps[step.seq] = step
        return step

    def applied(self, step: JournalStep, result: Any) -> None:
        self._append({"kind": "step", "seq": step.seq, "state": "applied", "result": result})
        step.state = "applied"
        step.result = result

    def undone(self, step: JournalStep) -> None:
        self._append({"kind": "undone", "seq": step.seq})
        step.state = "undone"

    def keep(self, steps: list[JournalStep]) -> None:
        self._append({"kind": "kept", "seqs": [s.seq for s in steps]})
        for s in steps:
            s.state = "kept"

    def open_steps(self) -> list[JournalStep]:
        return [s for s in sorted(self.steps.values(), key=lambda s: s.seq) if s.open]

    def orphaned(self) -> list[JournalStep]:
        """Open steps of sessions that did not end and whose process is gone (a crash, a kill)."""
        return [
            s
            for s in self.open_steps()
            if s.session != self.session
            and not self.sessions.get(s.session, {}).get("ended")
            and not self._alive(s.session)
        ]

    def _alive(self, session: str) -> bool:
        pid = self.sessions.get(session, {}).get("pid")
        if not pid or pid == os.getpid():
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
