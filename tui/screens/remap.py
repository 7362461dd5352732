"""Remaps from the TUI: forms for map / unmap / protect / move, higher-half and
efi-runtime, the plan, the journal.

The screen only presents and asks: it posts what the user wants
(:class:`RemapScreen.PreviewRequested`, ``ApplyRequested``, ``UndoRequested``, ``KeepRequested``,
``JournalRequested``) and the app runs it in the thread that owns the session
(``Session.remapper()``, the same Remapper the CLI's ``kinspect remap`` uses),
then hands the results back with :meth:`RemapScreen.show_plan`,
:meth:`RemapScreen.show_reports` and :meth:`RemapScreen.show_journal`.
Nothing is applied before its plan was shown, and a refused plan cannot be.
A step that cannot be undone (SetVirtualAddressMap) is marked in the plan
before it is applied, and an undo the core refuses (``UndoRefused``) is
shown here with its reason (:meth:`RemapScreen.show_undo_refused`).
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

from kinspect.inspector.remap.efi import IRREVERSIBLE, SVAM

from ..widgets.listnav import NavOptionList

__all__ = ["CHECKBOXES", "FORMS", "RemapScreen", "format_plan", "format_reports"]

#: Why a step cannot be undone, by method (the methods are ``IRREVERSIBLE``'s).
WHY_IRREVERSIBLE: Mapping[str, str] = {
    SVAM: "SetVirtualAddressMap: UEFI allows one call per boot",
}

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
    # plans of a whole scenario, as `kinspect remap higher-half` / `efi-runtime` make them
    "higher-half": (),
    "efi-runtime": (("base", "base", "new VA = base + physical", "0xffffffef00000000"),),
}

#: Each form's checkbox: (name, label).
CHECKBOXES: Mapping[str, tuple[str, str]] = {
    "move": ("drop_old", "drop the old range"),
    "efi-runtime": ("keep_identity", "keep the identity map"),
}

#: What the forms without addresses do (shown above their Preview button).
ABOUT: Mapping[str, str] = {
    "higher-half": (
        "The seed scenario (kinspect remap higher-half): move the stack and the GDT, IDT "
        "and TSS to their higher-half aliases; on a kernel booted through UEFI, move the "
        "runtime services too (SetVirtualAddressMap: cannot be undone); then drop the "
        "identity map."
    ),
    "efi-runtime": (
        "kinspect remap efi-runtime: map each UEFI runtime region at base + physical, "
        "SetVirtualAddressMap (once per boot: cannot be undone), check GetTime and a "
        "variable through the new mapping, then drop the identity map (unless kept)."
    ),
}


def irreversible_steps(plan: Any) -> list[tuple[int, Any]]:
    """The plan's steps that cannot be undone, numbered from 1 as the plan prints them."""
    return [(i, step) for i, step in enumerate(plan.steps, 1) if step.method in IRREVERSIBLE]


def format_plan(plan: Any) -> Text:
    """The plan as ``kinspect remap --plan`` prints it, with what cannot be undone in red.

    A plan with such a step starts with a line that says so (the plan may be
    longer than the pane), and the step itself, its parameters and its
    description, is bold red on the step's own lines.
    """
    pinned = irreversible_steps(plan)
    text = Text()
    for i, step in pinned:
        text.append(
            f"CANNOT BE UNDONE: step {i} {step.method} ({WHY_IRREVERSIBLE.get(step.method, '')}); "
            "undo refuses it and every step before it\n",
            style="bold red reverse",
        )
    marked = {i for i, _ in pinned}
    current: int | None = None
    for line in str(plan).splitlines():
        head = line.removeprefix("  step ")
        if head != line and head.partition(":")[0].isdigit():
            current = int(head.partition(":")[0])
        elif not line.startswith("          "):
            current = None  # past the steps: tables, unreachable, notes, refusals
        text.append(line + "\n", style="bold red" if current in marked else "")
    for refusal in plan.refusals:
        text.append(f"REFUSED ({refusal.reason}): {refusal.message}\n", style="bold red")
    if plan.refusals:
        text.append("not applicable: the plan is refused", style="bold red")
    elif not plan.steps:
        text.append("nothing to do")
    else:
        text.append("Apply (F2) writes it, journaled, and verifies it", style="bold")
        if pinned:
            steps = ", ".join(str(i) for i, _ in pinned)
            text.append(f"; step {steps} cannot be undone", style="bold red")
    return text


def _entries_written(result: Any) -> bool:
    """A map/unmap/protect reply: [va, level, entry_pa, old, new] per entry."""
    return (
        isinstance(result, list)
        and bool(result)
        and isinstance(result[0], list)
        and len(result[0]) == 5
    )


def format_reports(reports: Sequence[Any]) -> Text:
    """Each step's result, then its verification range by range (ok, or what differs),
    then what else was checked (``StepReport.checks``: the runtime services answering)."""
    text = Text()
    for report in reports:
        step = report.step
        style = "bold red" if step.method in IRREVERSIBLE else "bold"
        text.append(f"step #{report.seq} {step.method}: {step.description}\n", style=style)
        if _entries_written(report.result):
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
            checked = (
                "the firmware answers through the new mapping"
                if step.method in IRREVERSIBLE
                else "the registers are as planned"
            )
            text.append(f"  verified: {checked}\n", style="green")
        for check in getattr(report, "checks", ()):
            text.append(f"    {check}\n", style="cyan")
    if reports:
        ok = all(r.verified for r in reports)
        answered = any(getattr(r, "checks", ()) for r in reports)
        text.append(
            f"{len(reports)} steps applied and journaled; "
            + (
                "all verified by a fresh walk"
                + (" and the runtime services' answers" if answered else "")
                if ok
                else "SOME NOT AS PLANNED"
            ),
            style="bold green" if ok else "bold red",
        )
    return text


class RemapScreen(Screen[None]):
    """Map / unmap / protect / move, higher-half, efi-runtime through the agent:
    plan first, then apply, verify, undo."""

    BINDINGS = [
        Binding("escape", "close", "Back"),
        Binding("ctrl+pagedown,f7", "form(1)", "Next form"),
        Binding("ctrl+pageup,f6", "form(-1)", "Previous form"),
        Binding("f2", "apply", "Apply plan"),
        Binding("f3", "undo", "Undo step"),
        Binding("f4", "keep", "Keep step"),
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

    class KeepRequested(Message):
        """Keep these journal steps (their ``seq``): close them without undoing."""

        def __init__(self, seqs: list[int]) -> None:
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
        if self.unavailable and action in ("apply", "undo", "keep", "journal"):
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
                        with (
                            TabPane(action, id=f"form-{action}"),
                            VerticalScroll(classes="remap-form"),
                        ):
                            if action in ABOUT:
                                yield Static(ABOUT[action], classes="remap-about")
                            for name, label, placeholder, default in fields:
                                with Horizontal(classes="remap-field"):
                                    yield Label(label)
                                    yield Input(
                                        default,
                                        placeholder=placeholder,
                                        id=f"{action}-{name}",
                                    )
                            if action in CHECKBOXES:
                                name, label = CHECKBOXES[action]
                                yield Checkbox(label, id=f"{action}-{name}")
                            yield Button("Preview", id=f"preview-{action}", variant="primary")
            with Vertical(id="remap-journal-pane"):
                yield Label("journal: open steps", id="remap-journal-title")
                yield NavOptionList(id="remap-journal")
                with Horizontal(classes="remap-buttons"):
                    yield Button("Undo step", id="undo-one")
                    yield Button("Undo all", id="undo-all")
                    yield Button("Keep step", id="keep-one")
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
        self.query_one("#remap-plan", Static).update(format_plan(plan))
        self._apply_button(
            disabled=bool(plan.refusals) or not plan.steps,
            irreversible=bool(irreversible_steps(plan)),
        )

    def show_plan_error(self, message: str) -> None:
        self.plan = None
        self.query_one("#remap-plan", Static).update(Text(f"no plan: {message}", style="red"))
        self._apply_button(disabled=True)

    def _apply_button(self, *, disabled: bool, irreversible: bool = False) -> None:
        """Apply; for a plan with a step that cannot be undone, the button says so."""
        button = self.query_one("#apply", Button)
        button.disabled = disabled
        button.label = "Apply: cannot be undone" if irreversible else "Apply"
        button.variant = "error" if irreversible else "warning"
        button.refresh(layout=True)  # a new label does not resize the button by itself

    def show_reports(self, reports: Sequence[Any]) -> None:
        self.query_one("#remap-result", Static).update(format_reports(reports))

    def show_result(self, text: str) -> None:
        self.query_one("#remap-result", Static).update(text)

    def show_undo_refused(self, message: str) -> None:
        """The core refused the undo (``UndoRefused``): nothing was undone, the journal stays."""
        text = Text()
        text.append("UNDO REFUSED: nothing was undone\n", style="bold red")
        text.append(message)
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
            style = "bold red" if step.method in IRREVERSIBLE else ""
            journal.add_option(Option(Text(str(step), style=style), id=str(step.seq)))
        if steps:
            journal.highlighted = len(steps) - 1

    # -- what the user asks -----------------------------------------------------------------

    def fields(self, action: str) -> dict[str, Any]:
        values: dict[str, Any] = {
            name: self.query_one(f"#{action}-{name}", Input).value.strip()
            for name, *_ in FORMS[action]
        }
        if action in CHECKBOXES:
            name, _label = CHECKBOXES[action]
            values[name] = self.query_one(f"#{action}-{name}", Checkbox).value
        return values

    def preview(self, action: str) -> None:
        self.plan = None
        self._apply_button(disabled=True)
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
        elif button == "keep-one":
            self.action_keep()

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        # ids are ACTION-FIELD; actions may hold a hyphen (efi-runtime), field names do not
        action = (event.input.id or "").rpartition("-")[0]
        if action in FORMS:
            self.preview(action)

    def action_apply(self) -> None:
        if self.plan is None or self.plan.refusals or not self.plan.steps:
            self.notify("nothing to apply: preview a plan that is not refused", severity="warning")
            return
        plan, self.plan = self.plan, None  # applied once
        self._apply_button(disabled=True)
        self.query_one("#remap-result", Static).update("applying...")
        self.post_message(self.ApplyRequested(plan))

    def _highlighted_step(self, verb: str) -> int | None:
        """The ``seq`` of the journal's highlighted step (a warning when there is none)."""
        journal = self.query_one("#remap-journal", OptionList)
        if journal.highlighted is None or not self.steps:
            self.notify(f"no open step to {verb}", severity="warning")
            return None
        option = journal.get_option_at_index(journal.highlighted)
        return int(option.id) if option.id is not None else None

    def action_undo(self) -> None:
        if (seq := self._highlighted_step("undo")) is not None:
            self.post_message(self.UndoRequested([seq]))

    def action_keep(self) -> None:
        """Keep the highlighted step: the change stays, the journal no longer offers its undo."""
        if (seq := self._highlighted_step("keep")) is not None:
            self.post_message(self.KeepRequested([seq]))

    def action_form(self, step: int) -> None:
        """The next (1) or previous (-1) form, its first field focused."""
        forms = self.query_one("#remap-forms", TabbedContent)
        names = list(FORMS)
        at = names.index(forms.active.removeprefix("form-")) if forms.active else 0
        action = names[(at + step) % len(names)]
        forms.active = f"form-{action}"
        fields = FORMS[action]
        if fields:
            self.set_focus(self.query_one(f"#{action}-{fields[0][0]}", Input))
        else:
            self.set_focus(self.query_one(f"#preview-{action}", Button))

    def action_journal(self) -> None:
        self.post_message(self.JournalRequested())

    def action_close(self) -> None:
        self.dismiss()
