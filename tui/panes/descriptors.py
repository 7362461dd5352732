"""GDT IDT TSS [6]: the descriptor tables as ``kinspect gdt/idt/tss`` print them."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.message import Message

from kinspect.inspector.errors import InspectorError
from kinspect.inspector.session import Session

from ..widgets.descriptors import DescriptorsView
from .base import Pane

__all__ = ["DescriptorsPane"]


def read_descriptor_tables(session: Session) -> tuple[dict[str, str], dict[str, str]]:
    """Each table's text, or why it could not be read: one unreadable table hides no other."""
    tables: dict[str, str] = {}
    errors: dict[str, str] = {}
    readers = {"GDT": session.gdt, "LDT": session.ldt, "IDT": session.idt, "TSS": session.tss}
    for name, read in readers.items():
        try:
            value = read()
        except InspectorError as exc:
            errors[name] = str(exc)
        else:
            tables[name] = str(value) if value is not None else "none (LDTR is null)"
    return tables, errors


class DescriptorsPane(Pane):
    NAME = "descriptors"
    TITLE = "GDT IDT TSS [6]"
    KEY = "6"
    KEY_HELP = "Descriptors"
    HELP = (
        "GDT, LDT, IDT and TSS as kinspect gdt/idt/tss print them; the slots the selectors "
        "use marked, IDT handlers symbolized"
    )
    PALETTE = ("Descriptor tables", "GDT, LDT, IDT and TSS (6)")
    FOCUS = "#descriptors-view"
    REFRESH = "shown"
    STOP_ORDER = 60

    class Read(Message, bubble=False):
        def __init__(self, stop: int, tables: dict[str, str], errors: dict[str, str]) -> None:
            super().__init__()
            self.at_stop = stop
            self.tables = tables
            self.errors = errors

    def compose(self) -> ComposeResult:
        yield DescriptorsView(id="descriptors-view")

    def load(self) -> None:
        stop = self.last_stop.number if self.last_stop is not None else 0
        self.read("descriptors", read_descriptor_tables, lambda result: self.Read(stop, *result))

    def on_descriptors_pane_read(self, message: Read) -> None:
        self.read_at = message.at_stop
        self.query_one(DescriptorsView).show(message.tables, message.errors)

    def export_text(self) -> str:
        return self.query_one(DescriptorsView).export_text()
