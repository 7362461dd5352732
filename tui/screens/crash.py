"""The crash screen: a triple fault's chain, exactly as ``kinspect fault --qemu-log`` prints it.

QEMU launched by kinspect pauses on a triple fault (``-action shutdown=pause``)
and its gdb stub reports the stop as SIGQUIT. At such a stop the app reads
``qemu-int.log`` beside the gdb socket (the instance's directory) and, when it
records a triple fault, shows this screen with ``str(Session.triple_fault(log))``.
The views stay as they were at the stop: the kernel cannot run again, so
continue and step refuse in one line (:data:`FROZEN`). ``:triple [LOG]`` opens
it by hand. Escape closes it and leaves the views.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.fault import TripleFaultReport

if TYPE_CHECKING:
    from kinspect.inspector.session import Session

    from ..app import KinspectApp

__all__ = ["FROZEN", "CrashScreen", "is_shutdown_stop", "log_beside", "open_crash", "stopped"]

#: What continue and step say once QEMU paused on the triple fault.
FROZEN = "the machine is paused on a triple fault: it cannot run again (:triple shows the chain)"
LOG_NAME = "qemu-int.log"


def is_shutdown_stop(record: Mapping[str, Any]) -> bool:
    """QEMU's gdb stub reports a shutdown (a triple fault paused by -action) as SIGQUIT."""
    return record.get("signal-name") == "SIGQUIT"


def log_beside(endpoint: object) -> Path | None:
    """``qemu-int.log`` in the directory of the gdb socket ``endpoint``, if it is a path."""
    if not isinstance(endpoint, str) or endpoint.startswith("|"):
        return None
    path = Path(endpoint.removeprefix("unix:"))
    if not path.is_absolute() and ":" in endpoint:  # host:port: no instance directory
        return None
    return path.parent / LOG_NAME


def _report(session: Session, path: Path) -> TripleFaultReport:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise InspectorError(f"cannot read {path}: {exc.strerror}") from None
    if "Triple fault" not in text:
        raise InspectorError(f"{path} records no triple fault")
    return session.triple_fault(text)


def open_crash(app: KinspectApp, log: str | Path | None = None) -> None:
    """Read the chain (in the owner thread) from ``log``, else the log beside the gdb socket,
    and show the crash screen; a log that cannot be read or has no triple fault is one line."""
    path = Path(log) if log else log_beside(getattr(app.session.target, "endpoint", None))
    if path is None:
        app.report_failure(
            InspectorError(f"no {LOG_NAME} beside the gdb socket: give it (:triple LOG)")
        )
        return

    def show(report: TripleFaultReport) -> None:
        app.push_screen(CrashScreen(report))

    app.submit("triple fault", lambda session: _report(session, path), show)


def stopped(app: KinspectApp, record: Mapping[str, Any]) -> bool:
    """At each stop: when it is QEMU's shutdown pause, show the crash screen (once, not again
    at a refresh of the same pause). True: frozen."""
    if not is_shutdown_stop(record):
        return False
    if app.frozen:
        return True
    path = log_beside(getattr(app.session.target, "endpoint", None))
    if path is not None and path.is_file():
        open_crash(app, path)
    else:
        app.notify(f"QEMU paused on a shutdown (a triple fault?): {FROZEN}", severity="warning")
    return True


class CrashScreen(ModalScreen[None]):
    """The triple fault's chain (``str(report)``); Escape closes it."""

    BINDINGS = [Binding("escape,q", "dismiss", "Close")]

    def __init__(self, report: TripleFaultReport) -> None:
        super().__init__()
        self.report = report
        self.text = str(report)

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="crash-body"):
            yield Static(Text("TRIPLE FAULT: QEMU paused the machine", style="bold red"))
            yield Static(Text(self.text), id="crash-text")
            yield Static(
                Text(
                    "The views show the state at the fault; the kernel cannot run again. "
                    "Escape closes this screen.",
                    style="dim",
                )
            )
