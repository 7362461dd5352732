"""The status line: target, run state, why it stopped, the CPU, paging mode, connection health."""

from __future__ import annotations

import re

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
        return self.line(self.size.width or None)

    def line(self, width: int | None = None) -> Text:
        """The line in ``width`` columns (None: all of it). What gives way, in order: the
        target's description (cut in the middle), the CPUs' states, the busy note, the paging
        mode's bits, the stop's reason (cut short); the run state, the CPU mode and paging
        mode and the link's health stay to the last."""
        state = Text(f" {self.state.upper()} ", _STATE_STYLE.get(self.state, "reverse"))
        reason = Text(f" {self.reason}", "bold") if self.reason else Text()
        stopped = self.state == "stopped"
        selector = format_cpus(self.cpu, self.cpus, self.stop_cpu, states=stopped)
        short_selector = format_cpus(self.cpu, self.cpus, self.stop_cpu, states=False)
        target = Text(f"  {self.target}")
        mode = Text(f"  | {self.mode}", "cyan") if self.mode else Text()
        if self.health != "ok":
            health = Text(f"  | {self.health}", "bold red")
        else:
            health = Text("  | link ok", "green")
        busy = Text(f"  | reading {self.busy}...", "italic") if self.busy else Text()

        def cpus(selector: Text) -> Text:
            return Text("  ").append_text(selector) if selector else Text()

        def join(*parts: Text) -> Text:
            text = Text(no_wrap=True, overflow="ellipsis")
            for part in parts:
                text.append_text(part)
            return text

        full = join(state, reason, cpus(selector), target, mode, health, busy)
        if width is None or full.cell_len <= width:
            return full
        # the target's description is the first to give way: cut to what is left
        rest = join(state, reason, cpus(selector), mode, health, busy).cell_len
        if width - rest >= 16:
            # the paths' folders go first (gdb.sock), then the middle: the kind of target
            # and its end, "(QEMU)", stay
            room = width - rest - 2
            described = re.sub(r"/(?:[^\s/]+/)+", "…/", self.target)
            if len(described) > room:
                head = room // 2
                described = described[:head] + "…" + described[len(described) - (room - head - 1) :]
            target = Text(f"  {described}")
            return join(state, reason, cpus(selector), target, mode, health, busy)
        short_mode = Text(f"  | {self.mode.split(' [')[0]}", "cyan") if self.mode else Text()
        short = cpus(short_selector)
        for parts in (
            (state, reason, short, mode, health, busy),
            (state, reason, short, mode, health),
            (state, reason, short, short_mode, health),
        ):
            line = join(*parts)
            if line.cell_len <= width:
                return line
        # last, the stop's reason is cut short: the state, the modes and the link stay
        keep = join(state, short, short_mode, health).cell_len
        reason.truncate(max(width - keep, 0), overflow="ellipsis")
        return join(state, reason, short, short_mode, health)

    def export_text(self) -> str:
        return self.line().plain
