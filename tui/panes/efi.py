"""EFI [8]: the UEFI memory map the kernel kept (``kinspect efi-map``), where it is mapped now.

The map does not change after ExitBootServices, the mappings do (a remap of
the runtime regions): read when the tab is shown and again at each stop while
it is. A kernel that did not boot through UEFI is a line in the view, not a
failure.
"""

from __future__ import annotations

from typing import Any

from textual.app import ComposeResult
from textual.message import Message

from kinspect.inspector.errors import InspectorError, TargetLost
from kinspect.inspector.session import Session

from ..widgets.efi import EfiMapView
from .base import Pane

__all__ = ["EfiPane"]


def read_efi_map(session: Session) -> tuple[Any, Any]:
    """The map and its memory attributes table (or why the table was not read)."""
    memory_map = session.efi_memory_map()
    attributes: object  # the table, None, or why it could not be read
    try:
        attributes = session.efi_memory_attributes()
    except InspectorError as exc:  # the map is still worth showing
        attributes = str(exc)
    return memory_map, attributes


class EfiPane(Pane):
    NAME = "efi"
    TITLE = "EFI [8]"
    KEY = "8"
    KEY_HELP = "EFI memory map"
    HELP = (
        "the UEFI memory map the kernel kept: runtime regions in cyan with the virtual "
        "addresses that map them now (red: not mapped; + - ~ moved since the view was last "
        "read); the memory attributes table's RO/XP splits"
    )
    PALETTE = (
        "EFI memory map",
        "The UEFI memory map; where its runtime regions are mapped now (8)",
    )
    FOCUS = "#efi-table"
    REFRESH = "shown"
    STOP_ORDER = 70
    COMMANDS = {"efi": "command_show"}

    class Read(Message, bubble=False):
        def __init__(self, stop: int, memory_map: Any, attributes: Any) -> None:
            super().__init__()
            self.at_stop = stop
            self.memory_map = memory_map
            self.attributes = attributes

    class Failed(Message, bubble=False):
        def __init__(self, stop: int, error: BaseException) -> None:
            super().__init__()
            self.at_stop = stop
            self.error = error

    def compose(self) -> ComposeResult:
        yield EfiMapView(id="efi-view")

    def load(self) -> None:
        stop = self.last_stop.number if self.last_stop is not None else 0
        self.read(
            "efi map",
            read_efi_map,
            lambda result: self.Read(stop, *result),
            failed=lambda error: self.Failed(stop, error),
        )

    def on_efi_pane_read(self, message: Read) -> None:
        self.read_at = message.at_stop
        self.query_one(EfiMapView).show(
            message.memory_map, message.attributes, stop=message.at_stop
        )

    def on_efi_pane_failed(self, message: Failed) -> None:
        self.read_at = message.at_stop
        error = message.error
        view = self.query_one(EfiMapView)
        if isinstance(error, InspectorError):
            view.show_error(str(error))  # no map (no UEFI boot) is what the view says
            if isinstance(error, TargetLost):
                self.kinspect.report_failure(error)  # the status line must say so too
        else:
            view.show_error(f"internal error: {type(error).__name__}: {error}")
            self.kinspect.report_failure(error)

    def command_show(self, argument: str) -> None:
        self.kinspect.action_tab(self.NAME)

    def export_text(self) -> str:
        return self.query_one(EfiMapView).export_text()
