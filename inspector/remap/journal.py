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

Steps belong to a kernel instance: the session record names it (``kernel``,
from :func:`kernel_identity`: the boot nonce the agent's ``hello`` reports,
else CR3 and the kernel's build id). A journal scoped to a kernel
(:attr:`Journal.kernel`) shows and undoes that kernel's steps only, and only
its crashed sessions block new changes; steps of other kernels (and of
sessions written before kernels were recorded) appear with ``all_kernels``
(``remap journal --all``).

Appends hold an exclusive ``flock`` on the file and first read what other
processes appended since, so two inspectors never take the same step number.
A line that is not a journal record is an error naming the line; only a line
torn by a crash mid-write (a record's beginning, ``{"kind"...``) is skipped.

A step is open while it is pending or applied and neither undone nor kept:
``undo`` restores it. Open steps of a session that has no end record and
whose process is gone were left by a crash (a kill, a lost link): the next
``kinspect remap`` finds them and applies nothing new until they are undone
or kept (``journal --keep``).
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import InspectorError

__all__ = [
    "DEFAULT_JOURNAL",
    "Journal",
    "JournalStep",
    "default_journal_path",
    "kernel_identity",
]

DEFAULT_JOURNAL = "~/.local/state/kinspect/remap-journal.jsonl"


def default_journal_path() -> Path:
    """``$KINSPECT_REMAP_JOURNAL``, else ``~/.local/state/kinspect/remap-journal.jsonl``."""
    return Path(os.environ.get("KINSPECT_REMAP_JOURNAL") or DEFAULT_JOURNAL).expanduser()


def kernel_identity(
    hello: Mapping[str, Any], regs: Mapping[str, Any] | None = None, build_id: str | None = None
) -> str:
    """Which kernel instance an agent speaks for: ``boot 0x...`` (the nonce its port
    supplies, different on every boot), else ``cr3 0x..., build ...`` (CR3 and the
    kernel's build id, ``unknown`` without one: the same kernel booted twice looks alike)."""
    nonce = hello.get("boot_nonce")
    if isinstance(nonce, int) and not isinstance(nonce, bool) and nonce:
        return f"boot {nonce:#018x}"
    cr3 = (regs or {}).get("cr3")
    where = f"cr3 {cr3:#x}" if isinstance(cr3, int) else "cr3 unknown"
    return f"{where}, build {build_id or 'unknown'}"


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
    #: The kernel instance this journal is scoped to (None: every kernel, as before).
    kernel: str | None = None
    _offset: int = 0  # bytes of the file read so far
    _line: int = 0  # lines of the file read so far

    @classmethod
    def open(cls, path: Path | str | None = None, *, kernel: str | None = None) -> Journal:
        journal = cls(Path(path) if path else default_journal_path(), kernel=kernel)
        journal._load()
        return journal

    def _load(self) -> None:
        if self.path.is_dir():
            raise InspectorError(f"journal {self.path}: cannot read it: Is a directory")
        if not self.path.exists():
            return
        try:
            with open(self.path, "rb") as f:
                self._read_new(f)
        except OSError as exc:
            raise InspectorError(f"journal {self.path}: cannot read it: {exc.strerror}") from exc

    def _read_new(self, f: IO[bytes]) -> None:
        """Take in the records appended since the last read (whole lines only)."""
        f.seek(self._offset)
        data = f.read()
        end = data.rfind(b"\n") + 1
        # A last line without its newline: torn, unless nothing will follow it (then whole).
        chunk = data[:end] if end else b""
        tail = data[end:]
        if tail:
            try:
                json.loads(tail)
                chunk, end = data, len(data)
            except (ValueError, UnicodeDecodeError):
                pass  # a torn last line: read again once it has its newline
        try:
            text = chunk.decode()
        except UnicodeDecodeError as exc:
            bad = self._line + chunk[: exc.start].count(b"\n") + 1
            raise InspectorError(
                f"journal {self.path}: cannot read it: not UTF-8 text (line {bad})"
            ) from exc
        for line in text.splitlines():
            self._line += 1
            self._load_line(line, self._line)
        self._offset += end

    def _load_line(self, line: str, number: int) -> None:
        if not line.strip():
            return
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            if line.lstrip().startswith('{"kind"'):
                return  # a line torn by a crash mid-write: the step before it is whole
            raise InspectorError(
                f"journal {self.path}: line {number} is damaged (not JSON: {exc.msg}); "
                "move the file away or remove that line"
            ) from exc
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

    @contextmanager
    def _locked(self) -> Iterator[IO[bytes]]:
        """The file open for appending under an exclusive flock, caught up with other writers."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            f = open(self.path, "a+b")
        except OSError as exc:
            raise InspectorError(f"journal {self.path}: cannot write it: {exc.strerror}") from exc
        with f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                self._read_new(f)
                size = f.seek(0, os.SEEK_END)
                if size:
                    f.seek(size - 1)
                    last = f.read(1)
                    f.seek(0, os.SEEK_END)
                    if last != b"\n":  # start ours on a line of its own
                        torn = size > self._offset  # not taken in: a line torn by a crash
                        f.write(b"\n")
                        f.flush()
                        self._offset = f.tell()
                        self._line += 1 if torn else 0
                yield f
            except OSError as exc:
                raise InspectorError(
                    f"journal {self.path}: cannot write it: {exc.strerror}"
                ) from exc
            finally:
                try:
                    fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                except OSError:
                    pass

    def _append(self, rec: dict[str, Any], f: IO[bytes] | None = None) -> None:
        if f is None:
            with self._locked() as locked:
                self._append(rec, locked)
            return
        f.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())
        self._offset = f.tell()
        self._line += 1

    def start_session(self, target: str, *, kernel: str | None = None) -> str:
        """A new session of this process on ``target``; ``kernel`` (its identity) scopes the
        journal to that kernel from now on."""
        if kernel is not None:
            self.kernel = kernel
        self.session = f"{os.getpid()}-{time.time_ns()}"
        rec = {
            "kind": "session",
            "session": self.session,
            "pid": os.getpid(),
            "target": target,
            "time": time.time(),
        }
        if self.kernel is not None:
            rec["kernel"] = self.kernel
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
        with self._locked() as f:  # the number is taken under the lock: no one else has it
            step = JournalStep(
                self._next,
                self.session,
                method,
                list(params),
                before,
                description,
                time=time.time(),
            )
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
                },
                f,
            )
            self._next += 1
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

    def kernel_of(self, step: JournalStep) -> str | None:
        """The kernel instance ``step`` was applied to (None: not recorded)."""
        kernel = self.sessions.get(step.session, {}).get("kernel")
        return kernel if isinstance(kernel, str) else None

    def in_scope(self, step: JournalStep) -> bool:
        """Whether ``step`` belongs to the kernel this journal is scoped to (always, unscoped)."""
        return self.kernel is None or self.kernel_of(step) == self.kernel

    def open_steps(self, *, all_kernels: bool = False) -> list[JournalStep]:
        """Open steps of this kernel (of every kernel with ``all_kernels``), oldest first."""
        return [
            s
            for s in sorted(self.steps.values(), key=lambda s: s.seq)
            if s.open and (all_kernels or self.in_scope(s))
        ]

    def all_steps(self, *, all_kernels: bool = False) -> list[JournalStep]:
        """Every step of this kernel (of every kernel with ``all_kernels``), whatever its state."""
        return [
            s
            for s in sorted(self.steps.values(), key=lambda s: s.seq)
            if all_kernels or self.in_scope(s)
        ]

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
