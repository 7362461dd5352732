"""The one thread that owns the session: a job queue, and a watch for stops.

GDB/MI is one conversation; two threads talking over each other would mix
up its records. So every read, every run-control request and the wait for
the next stop go through one loop (:meth:`Link.run`), which the app runs in
a single thread worker. The UI thread only submits jobs; each job's result
or error comes back through ``deliver`` (the app's ``call_from_thread``).

Pure Python, no Textual: the loop can be driven without an app.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kinspect.inspector.errors import TargetError
from kinspect.inspector.session import Session

__all__ = ["Job", "Link", "RegisterSnapshot", "take_register_snapshot"]

RUNNING = "the kernel is running: stop it first (p)"

POLL_RUNNING = 0.02
"""Seconds the loop waits for a stop before it looks at the job queue again."""


@dataclass(frozen=True, slots=True)
class RegisterSnapshot:
    """Registers as read at one stop: raw values, decoded control registers."""

    values: Mapping[str, int]
    control: Any  # inspector.session.ControlState, or None when the stub hides CRs
    control_error: str | None
    taken: float  # time.perf_counter() when the read finished


def take_register_snapshot(session: Session) -> RegisterSnapshot:
    values = dict(session.registers())
    try:
        control = session.control_registers()
        error = None
    except Exception as exc:  # noqa: BLE001 - shown in the view, not fatal
        control, error = None, str(exc)
    return RegisterSnapshot(values, control, error, time.perf_counter())


@dataclass
class Job:
    """One piece of target I/O: ``work(session)`` runs in the owner thread."""

    name: str
    work: Callable[[Session], Any]
    done: Callable[[Any], None] | None = None
    failed: Callable[[BaseException], None] | None = None
    watch: bool = False  # after it, the target runs: watch for the next stop
    # While the kernel runs, a read would stop it (the session stops the target
    # to read): "run" anyway (run control, refresh), "skip" quietly (views that
    # the next stop refreshes), or "fail" with a message (what the user asked).
    while_running: str = "fail"
    extra: dict[str, Any] = field(default_factory=dict)


class Link:
    """The owner of one session (and of its replacements, on reconnect).

    ``deliver(fn, *args)`` must run ``fn(*args)`` in the UI thread; the
    app passes its ``call_from_thread``. ``on_stop(record, snapshot)`` is
    called (in the UI thread) for every stop the watch sees, with the
    registers already read, so the registers view refreshes first.
    ``on_error(exc)`` is the app's one failure handler.
    """

    def __init__(
        self,
        session: Session,
        *,
        deliver: Callable[..., Any],
        on_stop: Callable[[Mapping[str, Any], RegisterSnapshot | None], None],
        on_error: Callable[[BaseException], None],
        on_idle: Callable[[], None] | None = None,
        on_answer: Callable[[Job], None] | None = None,
    ) -> None:
        self.session = session
        self._deliver = deliver
        self._on_stop = on_stop
        self._on_error = on_error
        self._on_idle = on_idle
        self._on_answer = on_answer
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._closing = threading.Event()
        self.finished = threading.Event()
        self.watching = False
        self.pending = 0  # jobs submitted and not yet answered (UI thread only)
        self.stop_seen_at = 0.0  # perf_counter() when the last stop was seen

    # -- UI thread -------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        self.pending += 1
        self._jobs.put(job)

    def close(self) -> None:
        self._closing.set()
        self._jobs.put(None)

    # -- owner thread ------------------------------------------------------------------

    def run(self, *, resume_on_exit: bool = True) -> None:
        """The loop: jobs in order, and between them, the watch for a stop."""
        try:
            while not self._closing.is_set():
                try:
                    job = self._jobs.get(timeout=POLL_RUNNING if self.watching else 0.25)
                except queue.Empty:
                    job = None
                if job is not None:
                    self._execute(job)
                if self.watching and not self._closing.is_set():
                    self._watch_once()
        finally:
            try:
                self.session.close(resume=resume_on_exit)
            except Exception:  # noqa: BLE001 - the app is going away
                pass
            self.finished.set()

    def _execute(self, job: Job) -> None:
        if self.watching and job.while_running != "run":
            if job.while_running == "skip":
                self._send(self._skipped, job)
            else:
                self._send(self._answer, job, None, TargetError(RUNNING))
            return
        try:
            result = job.work(self.session)
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the user
            if job.watch:  # e.g. a step that timed out: follow the target if it still runs
                try:
                    self.watching = self.session.state == "running"
                except Exception:  # noqa: BLE001
                    self.watching = False
            self._send(self._answer, job, None, exc)
            return
        if job.watch:
            self.watching = True
        self._send(self._answer, job, result, None)

    def _watch_once(self) -> None:
        try:
            record = self.session.wait_for_stop(POLL_RUNNING)
        except BaseException as exc:  # noqa: BLE001
            self.watching = False
            self._send(self._on_error, exc)
            return
        if record is None:
            return
        self.watching = False
        self.stop_seen_at = time.perf_counter()
        try:
            snapshot = take_register_snapshot(self.session)
        except BaseException as exc:  # noqa: BLE001
            self._send(self._on_error, exc)
            snapshot = None
        self._send(self._on_stop, record, snapshot)

    def _send(self, fn: Callable[..., Any], *args: Any) -> None:
        if self._closing.is_set():
            return
        try:
            self._deliver(fn, *args)
        except Exception:  # noqa: BLE001 - the app has stopped: nobody to tell
            self._closing.set()

    # -- back in the UI thread ---------------------------------------------------------

    def _skipped(self, job: Job) -> None:
        self.pending -= 1
        if self._on_answer is not None:
            self._on_answer(job)
        if self.pending == 0 and self._on_idle is not None:
            self._on_idle()

    def _answer(self, job: Job, result: Any, error: BaseException | None) -> None:
        self.pending -= 1
        if self._on_answer is not None:
            self._on_answer(job)
        try:
            if error is not None:
                (job.failed or self._on_error)(error)
            elif job.done is not None:
                job.done(result)
        finally:
            if self.pending == 0 and self._on_idle is not None:
                self._on_idle()
