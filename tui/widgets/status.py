"""The status line: target, run state, why it stopped, the CPU, paging mode, connection health."""

from __future__ import annotations

from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

__all__ = ["CPU_LETTERS", "StatusLine", "format_cpus"]

_STATE_STYLE = {
    "stopped": "bold black on yellow",
    "running": "bold black on green",
    "exited": "bold white on red",
    "connecting": "bold black on cyan",
}


#: One letter per CPU state (:class:`~kinspect.inspector.cpus.CpuState`): halted in HLT,
#: stopped while executing, running; ``?`` a CPU that could not be read.
CPU_LETTERS = {"halted": "H", "stopped": "S", "running": "R"}

#: Past this many CPUs the states are counted, not listed.
_LISTED_CPUS = 8


def format_cpus(
    cpu: int | None, cpus: tuple[tuple[int, str], ...], stop_cpu: int | None, *, states: bool
) -> Text:
    """``CPU 1/4 (H S H H)``: the selected CPU, how many, each one's state (the
    selected one's letter bold). Empty with fewer than two CPUs. ``stop_cpu``: the
    CPU that stopped, named when another is selected."""
    text = Text()
    if cpu is None or len(cpus) < 2:
        return text
    text.append(f"CPU {cpu}/{len(cpus)}", "bold magenta")
    if states:
        letters = [(index, CPU_LETTERS.get(state, "?")) for index, state in cpus]
        text.append(" (")
        if len(letters) <= _LISTED_CPUS:
            for n, (index, letter) in enumerate(letters):
                text.append(" " if n else "")
                text.append(letter, "bold reverse" if index == cpu else "")
        else:
            counts: dict[str, int] = {}
            for _index, letter in letters:
                counts[letter] = counts.get(letter, 0) + 1
            text.append(", ".join(f"{counts[k]} {k}" for k in sorted(counts)))
        text.append(")")
    if stop_cpu is not None and stop_cpu != cpu:
        text.append(f" stopped on CPU {stop_cpu}", "magenta")
    return text


class StatusLine(Widget):
    """One line; the app sets its attributes, it only draws them."""

    target: reactive[str] = reactive("no target")
    state: reactive[str] = reactive("connecting")
    reason: reactive[str] = reactive("")
    mode: reactive[str] = reactive("")
    health: reactive[str] = reactive("ok")
    busy: reactive[str] = reactive("")  # what the target thread is reading, "" when idle
    cpu: reactive[int | None] = reactive(None)  # the selected CPU
    stop_cpu: reactive[int | None] = reactive(None)  # the CPU that stopped last
    cpus: reactive[tuple[tuple[int, str], ...]] = reactive(())  # (index, state), read at a stop

    def render(self) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(f" {self.state.upper()} ", _STATE_STYLE.get(self.state, "reverse"))
        if self.reason:
            text.append(f" {self.reason}", "bold")
        selector = format_cpus(self.cpu, self.cpus, self.stop_cpu, states=self.state == "stopped")
        if selector:
            text.append("  ")
            text.append_text(selector)
        text.append(f"  {self.target}")
        if self.mode:
            text.append(f"  | {self.mode}", "cyan")
        if self.health != "ok":
            text.append(f"  | {self.health}", "bold red")
        else:
            text.append("  | link ok", "green")
        if self.busy:
            text.append(f"  | reading {self.busy}...", "italic")
        return text

    def export_text(self) -> str:
        return self.render().plain
