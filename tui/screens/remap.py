"""Remaps from the TUI: forms for map / unmap / protect / move, the plan, the journal.

The screen only presents and asks: it posts what the user wants
(:class:`RemapScreen.PreviewRequested`, ``ApplyRequested``, ``UndoRequested``,
``JournalRequested``) and the app runs it in the thread that owns the session
(``Session.remapper()``, the same Remapper the CLI's ``kinspect remap`` uses),
then hands the results back with :meth:`RemapScreen.show_plan`,
:meth:`RemapScreen.show_reports` and :meth:`RemapScreen.show_journal`.
Nothing is applied before its plan was shown, and a refused plan cannot be.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (
    Button,
    Checkbox,
    Footer,
    Input,
    Label,
    OptionList,
    Static,
    TabbedContent,
    TabPane,
)
from textual.widgets.option_list import Option

__all__ = ["FORMS", "RemapScreen", "format_reports"]

#: Each form's fields: (name, label, placeholder, default).
FORMS: Mapping[str, tuple[tuple[str, str, str, str], ...]] = {
    "map": (
        ("va", "VA", "virtual address or symbol", ""),
        ("pa", "PA", "physical address", ""),
        ("size", "size", "0x3000, 12k, 2m", "0x1000"),
        ("page_size", "page", "4k, 2m, 1g", "4k"),
        ("flags", "flags", "RW,US,PWT,PCD,G,NX or ro", "rw,nx"),
    ),
    "unmap": (
        ("va", "VA", "virtual address or symbol", ""),
        ("size", "size", "0x3000, 12k, 2m", "0x1000"),
        ("page_size", "page", "4k, 2m, 1g, 512g", "4k"),
    ),
    "protect": (
        ("va", "VA", "virtual address or symbol", ""),
        ("size", "size", "0x3000, 12k, 2m", "0x1000"),
        ("page_size", "page", "4k, 2m, 1g", "4k"),
        ("flags", "flags", "the new flags: RW,US,PWT,PCD,G,NX or ro", "ro,nx"),
    ),
    "move": (
        ("va", "VA", "virtual address or symbol", ""),
        ("size", "size", "0x3000, 12k, 2m", "0x1000"),
        ("new_va", "new VA", "the new virtual base", ""),
    ),
}


def format_reports(reports: Sequence[Any]) -> Text:
    """Each step's result, then its verification range by range (ok, or what differs)."""
    text = Text()
    for report in reports:
        step = report.step
        text.append(f"step #{report.seq} {step.method}: {step.description}\n", style="bold")
        if isinstance(report.result, list) and report.result and len(report.result[0]) == 5:
            text.append(f"  {len(report.result)} entries written (old values journaled)\n")
        for e in step.expect:
            problems = [p for p in report.problems if p.startswith(str(e))]
            if problems:
                for p in problems:
                    text.append(f"  NOT as planned: {p}\n", style="bold red")
            else:
                text.append("  verified ", style="green")
                text.append(f"{e}\n")
        for p in report.problems:
            if not any(p.startswith(str(e)) for e in step.expect):
                text.append(f"  NOT as planned: {p}\n", style="bold red")
        if not step.expect and report.verified:
            text.append("  verified: the registers are as planned\n", style="green")
    if reports:
        ok = all(r.verified for r in reports)
        text.append(
            f"{len(reports)} steps applied and journaled; "
            + ("all verified by a fresh walk" if ok else "SOME NOT AS PLANNED"),
            style="bold green" if ok else "bold red",
        )
    return text


class RemapScreen(Screen[None]):
    """Map / unmap / protect / move through the agent: plan first, then apply, verify, undo."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("f2", "apply", "Apply plan"),
        Binding("f3", "undo", "Undo step"),
        Binding("f5", "journal", "Reload journal"),
    ]

    class PreviewRequested(Message):
        """Plan ``action`` with the form's ``fields`` (text as typed)."""

        def __init__(self, action: str, fields: dict[str, Any]) -> None:
            super().__init__()
            self.action = action
            self.fields = fields

    class ApplyRequested(Message):
        def __init__(self, plan: Any) -> None:
            super().__init__()
            self.plan = plan

    class UndoRequested(Message):
        """Undo these journal steps (their ``seq``), or every open one when None."""

        def __init__(self, seqs: list[int] | None) -> None:
            super().__init__()
            self.seqs = seqs

    class JournalRequested(Message):
        pass

    def __init__(self, unavailable: str | None) -> None:
        super().__init__()
        self.unavailable = unavailable
        self.plan: Any = None
        self.steps: list[Any] = []  # the journal's open steps, as shown

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if self.unavailable and action in ("apply", "undo", "journal"):
            return False  # nothing to apply without an agent
        return True

    def compose(self) -> ComposeResult:
        if self.unavailable:
            yield Static(f"Remaps: not available. {self.unavailable}", id="remap-unavailable")
            yield Footer()
            return
        with Horizontal(id="remap-top"):
            with Vertical(id="remap-forms-pane"):
                with TabbedContent(initial="form-map", id="remap-forms"):
                    for action, fields in FORMS.items():
                        with TabPane(action, id=f"form-{action}"):
                            for name, label, placeholder, default in fields:
                                with Horizontal(classes="remap-field"):
                                    yield Label(label)
                                    yield Input(
                                        default,
                                        placeholder=placeholder,
                                        id=f"{action}-{name}",
                                    )
                            if action == "move":
                                yield Checkbox("drop the old range", id="move-drop_old")
                            yield Button("Preview", id=f"preview-{action}", variant="primary")
            with Vertical(id="remap-journal-pane"):
                yield Label("journal: open steps", id="remap-journal-title")
                yield OptionList(id="remap-journal")
                with Horizontal(classes="remap-buttons"):
                    yield Button("Undo step", id="undo-one")
                    yield Button("Undo all", id="undo-all")
        with Horizontal(id="remap-bottom"):
            with VerticalScroll(classes="remap-out"):
                yield Static("no plan yet: fill a form, Preview", id="remap-plan")
            with Vertical(classes="remap-out"):
                yield Button("Apply", id="apply", variant="warning", disabled=True)
                with VerticalScroll():
                    yield Static("", id="remap-result")
        yield Footer()

    def on_mount(self) -> None:
        if not self.unavailable:
            self.post_message(self.JournalRequested())
            self.set_focus(self.query_one("#map-va", Input))

    # -- what the app shows ---------------------------------------------------------------

    def show_plan(self, plan: Any) -> None:
        self.plan = plan
        text = Text(str(plan) + "\n")
        for refusal in plan.refusals:
            text.append(f"REFUSED ({refusal.reason}): {refusal.message}\n", style="bold red")
        if plan.refusals:
            text.append("not applicable: the plan is refused", style="bold red")
        elif not plan.steps:
            text.append("nothing to do")
        else:
            text.append("Apply (F2) writes it, journaled, and verifies it", style="bold")
        self.query_one("#remap-plan", Static).update(text)
        self.query_one("#apply", Button).disabled = bool(plan.refusals) or not plan.steps

    def show_plan_error(self, message: str) -> None:
        self.plan = None
        self.query_one("#remap-plan", Static).update(Text(f"no plan: {message}", style="red"))
        self.query_one("#apply", Button).disabled = True

    def show_reports(self, reports: Sequence[Any]) -> None:
        self.query_one("#remap-result", Static).update(format_reports(reports))

    def show_result(self, text: str) -> None:
        self.query_one("#remap-result", Static).update(text)

    def show_journal(self, path: str, steps: Sequence[Any]) -> None:
        self.steps = list(steps)
        journal = self.query_one("#remap-journal", OptionList)
        journal.clear_options()
        title = self.query_one("#remap-journal-title", Label)
        title.update(f"journal {Path(path).name}: {len(steps)} open steps")
        title.tooltip = path
        if not steps:
            journal.add_option(Option("no open steps: nothing to undo", disabled=True))
        for step in steps:
            journal.add_option(Option(str(step), id=str(step.seq)))
        if steps:
            journal.highlighted = len(steps) - 1

    # -- what the user asks -----------------------------------------------------------------

    def fields(self, action: str) -> dict[str, Any]:
        values: dict[str, Any] = {
            name: self.query_one(f"#{action}-{name}", Input).value.strip()
            for name, *_ in FORMS[action]
        }
        if action == "move":
            values["drop_old"] = self.query_one("#move-drop_old", Checkbox).value
        return values

    def preview(self, action: str) -> None:
        self.plan = None
        self.query_one("#apply", Button).disabled = True
        self.query_one("#remap-plan", Static).update(f"planning {action}...")
        self.post_message(self.PreviewRequested(action, self.fields(action)))

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        button = event.button.id or ""
        if button.startswith("preview-"):
            self.preview(button.removeprefix("preview-"))
        elif button == "apply":
            self.action_apply()
        elif button == "undo-one":
            self.action_undo()
        elif button == "undo-all":
            self.post_message(self.UndoRequested(None))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        action = (event.input.id or "").partition("-")[0]
        if action in FORMS:
            self.preview(action)

    def action_apply(self) -> None:
        if self.plan is None or self.plan.refusals or not self.plan.steps:
            self.notify("nothing to apply: preview a plan that is not refused", severity="warning")
            return
        plan, self.plan = self.plan, None  # applied once
        self.query_one("#apply", Button).disabled = True
        self.query_one("#remap-result", Static).update("applying...")
        self.post_message(self.ApplyRequested(plan))

    def action_undo(self) -> None:
        journal = self.query_one("#remap-journal", OptionList)
        if journal.highlighted is None or not self.steps:
            self.notify("no open step to undo", severity="warning")
            return
        option = journal.get_option_at_index(journal.highlighted)
        if option.id is not None:
            self.post_message(self.UndoRequested([int(option.id)]))

    def action_journal(self) -> None:
        self.post_message(self.JournalRequested())

    def action_close(self) -> None:
        self.dismiss()
