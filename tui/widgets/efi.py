"""The UEFI memory map the kernel kept (``kinspect efi-map``): descriptors, runtime mappings.

The app hands the view the session's :class:`~inspector.efi.memmap.MemoryMap`
and memory attributes table at a stop; the view lists the descriptors
(runtime regions highlighted, with the virtual addresses that map them now),
marks the mappings that moved since it last showed the map, and filters
locally. A kernel that did not boot through UEFI gets one line saying so.
"""

from __future__ import annotations

from typing import Any

from rich.style import Style
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import Checkbox, DataTable, Static

from kinspect.inspector.efi.memmap import MemoryAttributesTable, MemoryMap, format_attributes
from kinspect.inspector.formatting import format_size

from ..model import (
    ADDED,
    CHANGED,
    NOT_MAPPED,
    REMOVED,
    EfiFilter,
    EfiRow,
    attribute_entries_in,
    efi_address_digits,
    efi_rows,
    efi_summary,
    filter_efi_rows,
    format_efi_range,
    format_efi_row,
    format_mapped_at,
)
from .listnav import NavTable

__all__ = ["EfiMapView"]

COLUMNS = ("", "#", "type", "physical", "pages", "attributes", "mapped at now (first page)")
SHOWN_MAPPINGS = 2  # in the table; the detail pane lists them all

EFI_MEMORY_XP = 1 << 14
EFI_MEMORY_RO = 1 << 17

_RUNTIME = Style(color="cyan", bold=True)
_NOT_MAPPED = Style(color="red", bold=True)
_MARK_STYLE = {
    ADDED: Style(color="green", bold=True),
    REMOVED: Style(color="red", bold=True),
    CHANGED: Style(color="yellow", bold=True),
}


class EfiMapView(Vertical):
    """Filters and a summary line, the descriptors, then the cursor's detail and the MAT."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.memory_map: MemoryMap | None = None
        self.attributes: MemoryAttributesTable | str | None = None
        self.rows: list[EfiRow] = []  # every descriptor, marked
        self.shown: list[EfiRow] = []  # the ones the filters keep
        self.error: str | None = None
        self.stop: int | None = None  # the stop the map was read at
        self.since: int | None = None  # the stop the marks compare with
        self.summary = "no UEFI memory map yet"
        self._digits = 8

    def compose(self) -> ComposeResult:
        with Horizontal(id="efi-filters"):
            yield Checkbox("runtime only", id="efi-runtime")
            yield Checkbox("mapping changed", id="efi-changed")
        yield Static("no UEFI memory map yet", id="efi-summary")
        with Vertical(id="efi-body"):
            table = NavTable(id="efi-table", cursor_type="row")
            table.add_columns(*COLUMNS)
            yield table
            with Horizontal(id="efi-bottom"):
                with VerticalScroll(classes="efi-pane", id="efi-detail-pane"):
                    yield Static("", id="efi-detail")
                with VerticalScroll(classes="efi-pane", id="efi-attributes-pane"):
                    yield Static("", id="efi-attributes")

    def on_mount(self) -> None:
        self.query_one("#efi-detail-pane").border_title = "descriptor"
        self.query_one("#efi-attributes-pane").border_title = "memory attributes table"

    # -- attributes down ----------------------------------------------------------------

    def show(
        self,
        memory_map: MemoryMap,
        attributes: MemoryAttributesTable | str | None,
        *,
        stop: int | None = None,
    ) -> None:
        """The map read at ``stop``; ``attributes`` is the MAT, None, or why it was not read."""
        previous = self.memory_map
        self.since = self.stop if previous is not None else None
        self.rows = efi_rows(memory_map, previous)
        self.memory_map = memory_map
        self.attributes = attributes
        self.stop = stop
        self.error = None
        self._digits = efi_address_digits(memory_map.descriptors)
        self.remove_class("-unavailable")
        self.query_one("#efi-attributes", Static).update(self._attributes_text())
        self._refilter()

    def show_error(self, message: str) -> None:
        """No map: one line saying why (a kernel that did not boot through UEFI)."""
        self.memory_map = None
        self.attributes = None
        self.rows = []
        self.shown = []
        self.error = message
        self.since = None
        self.add_class("-unavailable")
        self.query_one(DataTable).clear()
        self.query_one("#efi-detail", Static).update("")
        self.query_one("#efi-attributes", Static).update("")
        self.summary = f"no UEFI memory map: {message}"
        self.query_one("#efi-summary", Static).update(
            Text(self.summary, style="bold red", no_wrap=True, overflow="ellipsis")
        )

    # -- filters -------------------------------------------------------------------------

    @property
    def filter(self) -> EfiFilter:
        return EfiFilter(
            runtime=self.query_one("#efi-runtime", Checkbox).value,
            changed=self.query_one("#efi-changed", Checkbox).value,
        )

    @on(Checkbox.Changed)
    def _filter_changed(self, event: Checkbox.Changed) -> None:
        event.stop()  # ours, not the range map's
        self._refilter()

    def _refilter(self) -> None:
        if self.memory_map is None:
            return
        table = self.query_one(DataTable)
        keep = self.current.descriptor.index if self.current is not None else None
        self.shown = filter_efi_rows(self.rows, self.filter)
        table.clear()
        for row in self.shown:
            table.add_row(*self._cells(row), key=str(row.descriptor.index))
        summary = efi_summary(self.memory_map, self.attributes, self.rows, self.since)
        if len(self.shown) != len(self.rows):
            summary = f"{len(self.shown)} of {len(self.rows)} shown | {summary}"
        self.summary = summary
        self.query_one("#efi-summary", Static).update(Text(summary))
        at = next((i for i, r in enumerate(self.shown) if r.descriptor.index == keep), 0)
        if self.shown:
            table.move_cursor(row=at, scroll=True)
        self._show_detail(self.shown[at] if self.shown else None)

    def _cells(self, row: EfiRow) -> tuple[Text, ...]:
        d = row.descriptor
        style = _RUNTIME if row.runtime else Style()
        mark = Text(row.mark, style=_MARK_STYLE.get(row.mark, Style()))
        if not row.runtime:
            mapped = Text("")
        elif row.mapped_at:
            mapped = Text(format_mapped_at(row.mapped_at, SHOWN_MAPPINGS), style=style)
        else:
            mapped = Text(NOT_MAPPED, style=_NOT_MAPPED)
        return (
            mark,
            Text(str(d.index), style=style, justify="right"),
            Text(d.type_name, style=style),
            Text(format_efi_range(d, self._digits), style=style),
            Text(str(d.number_of_pages), style=style, justify="right"),
            Text(format_attributes(d.attribute), style=style),
            mapped,
        )

    # -- the cursor's descriptor ----------------------------------------------------------

    @property
    def current(self) -> EfiRow | None:
        table = self.query_one(DataTable)
        if not self.shown or not 0 <= table.cursor_row < len(self.shown):
            return None
        return self.shown[table.cursor_row]

    @on(DataTable.RowHighlighted)
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if 0 <= event.cursor_row < len(self.shown):
            self._show_detail(self.shown[event.cursor_row])

    def _show_detail(self, row: EfiRow | None) -> None:
        self.query_one("#efi-detail", Static).update(self.detail_text(row))

    def detail_text(self, row: EfiRow | None) -> Text:
        """Every field of ``row``'s descriptor, all its mappings, its MAT entries."""
        text = Text()
        if row is None:
            return text
        d = row.descriptor
        style = _RUNTIME if row.runtime else Style(bold=True)
        text.append(f"#{d.index} {d.type_name}", style=style)
        text.append(f" (type {d.type})\n")
        text.append(
            f"physical  {format_efi_range(d, self._digits)}"
            f"  {d.number_of_pages} pages, {format_size(d.size)}\n"
        )
        text.append(f"attribute {d.attribute:#x} {format_attributes(d.attribute)}\n")
        text.append(f"VirtualStart {d.virtual_start:#x}\n")
        if not row.runtime:
            text.append("not a runtime region (RUNTIME clear)\n", style="dim")
            return text
        if row.mapped_at:
            text.append(f"mapped now at ({len(row.mapped_at)}):\n")
            for va in row.mapped_at:
                text.append(f"  {va:#018x}\n")
        else:
            text.append(f"{NOT_MAPPED}: no virtual address maps its first page\n", _NOT_MAPPED)
        if row.mark and self.since is not None:
            text.append(f"mapping changed since stop {self.since}\n", _MARK_STYLE[row.mark])
        entries = attribute_entries_in(
            self.attributes if isinstance(self.attributes, MemoryAttributesTable) else None, d
        )
        if entries:
            text.append(f"memory attributes table entries in it ({len(entries)}):\n")
            for e in entries:
                text.append(
                    f"  {e.index:3} {format_efi_range(e, self._digits)} "
                    f"{format_attributes(e.attribute)}\n"
                )
        return text

    def _attributes_text(self) -> Text:
        attributes = self.attributes
        if attributes is None:
            return Text("the kernel kept no memory attributes table", style="dim")
        if isinstance(attributes, str):
            return Text(f"cannot read the memory attributes table: {attributes}", style="red")
        text = Text(
            f"v{attributes.version}: {len(attributes.entries)} entries, "
            f"{attributes.descriptor_size} bytes apart, flags {attributes.flags:#x}",
            style="bold",
        )
        for e in attributes.entries:
            text.append(f"\n{e.index:3} {format_efi_range(e, self._digits)} {e.type_name:<19} ")
            text.append(format_attributes(e.attribute), style=_permission_style(e.attribute))
        return text

    # -- export ----------------------------------------------------------------------------

    def export_text(self) -> str:
        if self.memory_map is None:
            return self.summary + "\n"
        lines = [self.summary]
        lines += [format_efi_row(row, self._digits) for row in self.shown]
        lines.append("")
        attributes = self.attributes
        if isinstance(attributes, MemoryAttributesTable):
            lines.append(str(attributes))
        else:
            lines.append(self._attributes_text().plain)
        return "\n".join(lines) + "\n"


def _permission_style(attribute: int) -> Style:
    """XP (not executable) green, RO yellow: the split a runtime region is mapped with."""
    if attribute & EFI_MEMORY_RO:
        return Style(color="yellow")
    if attribute & EFI_MEMORY_XP:
        return Style(color="green")
    return Style(color="magenta", bold=True)  # neither: writable and executable
