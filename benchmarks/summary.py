"""Issue 16's targets as one table at the end of ``make bench``: each of kinspect's figures
beside the reference measured in the same run, the ratio and whether the target is met.

The benchmarks record what they measure (:func:`record`); benchmarks/conftest.py prints
:func:`table` in pytest's terminal summary. A target no benchmark measured in this run
is listed as such, with why when it is known: the table always names every target.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TARGETS", "Figure", "record", "skipped", "table"]


@dataclass(frozen=True, slots=True)
class Target:
    what: str
    #: the bound: of ours / reference when there is a reference, else of ours itself
    bound: float
    unit: str  # of ours (and of the reference): "s", "ms" or "MB"
    reference: str = ""  # what ours is compared with ("" for an absolute bound)


#: The issue's targets, in its order (its numbers before the dot).
TARGETS: dict[str, Target] = {
    "1.cli": Target("Linux: CLI `pt`, whole process", 1.5, "s", "QEMU `info mem` over QMP"),
    "1.rewalk": Target("Linux: fresh re-walk in an attached session", 0.5, "s", "QEMU `info mem`"),
    "1.linux": Target("Linux capture: walk + coalesce, in process", 20, "ms"),
    "1.ovmf": Target("OVMF capture: walk + coalesce, in process", 150, "ms"),
    "2.pt": Target("Linux: CLI `--json pt`", 1.3, "s", "`pt` (text)"),
    "2.leaves": Target("Linux: CLI `--json pt --leaves`", 1.3, "s", "`pt --leaves` (text)"),
    "3.api": Target("Linux: re-walk after a stop, nothing changed", 50, "ms"),
    "3.tui": Target("Linux: TUI ranges view refresh", 50, "ms"),
    "4.stub": Target("Linux: CLI `pt --leaves` through a plain stub", 2, "s", "QEMU's stub"),
    "4.kallsyms": Target("Linux: first kallsyms decode, plain stub", 2, "s", "QEMU's stub"),
    "5.regs": Target("cold start: CLI `regs`, whole process", 150, "ms"),
    "6.memory": Target("peak memory of any command measured", 200, "MB"),
    "7.first": Target("TUI: first screen after the walk (Linux capture)", 500, "ms"),
    "7.scroll": Target("TUI: slowest scroll step (Linux capture)", 50, "ms"),
    "8.pt": Target("OVMF: CLI `pt`, whole process", 0.5, "s"),
    "8.leaves": Target("OVMF: CLI `--json pt --leaves`", 3, "s", "QEMU `info tlb` over QMP"),
}


@dataclass(frozen=True, slots=True)
class Figure:
    ours: float
    reference: float | None = None
    note: str = ""

    def ratio(self) -> float | None:
        return None if self.reference is None else self.ours / self.reference


_FIGURES: dict[str, Figure] = {}
_SKIPPED: dict[str, str] = {}


def record(key: str, ours: float, reference: float | None = None, note: str = "") -> Figure:
    """Keep a figure for the table (in the target's unit); the last one recorded wins."""
    if key not in TARGETS:
        raise KeyError(f"no target {key!r} in benchmarks/summary.py")
    if (reference is None) != (TARGETS[key].reference == ""):
        raise ValueError(f"target {key!r}: a reference is wanted iff the target names one")
    figure = Figure(ours, reference, note)
    _FIGURES[key] = figure
    _SKIPPED.pop(key, None)
    return figure


def skipped(key: str, why: str) -> None:
    """Say why a target was not measured in this run."""
    if key not in _FIGURES:
        _SKIPPED[key] = why


def _number(value: float, unit: str) -> str:
    if unit == "s":
        return f"{value:.3f} s"
    return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"


def table() -> list[str]:
    """The summary: one line per target (met, not met, or not measured and why)."""
    head = ("target", "kinspect", "reference", "ratio", "bound", "met")
    rows = []
    met_count = 0
    for key, target in TARGETS.items():
        figure = _FIGURES.get(key)
        if figure is None:
            why = _SKIPPED.get(key, "no benchmark ran it")
            rows.append((f"{key} {target.what}", "-", "-", "-", "-", f"not measured: {why}"))
            continue
        ratio = figure.ratio()
        reference = "-" if figure.reference is None else _number(figure.reference, target.unit)
        if ratio is None:
            bound = f"<= {_number(target.bound, target.unit)}"
            met = figure.ours <= target.bound
        else:
            bound = f"<= {target.bound:g} x ({target.reference})"
            met = ratio <= target.bound
        met_count += met
        rows.append(
            (
                f"{key} {target.what}",
                _number(figure.ours, target.unit),
                reference,
                "-" if ratio is None else f"{ratio:.2f}",
                bound,
                ("yes" if met else "NO") + (f" ({figure.note})" if figure.note else ""),
            )
        )
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head) - 1)]
    lines = []
    for row in [head, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]))
    return [
        "issue 16: each target, measured in this run",
        *lines,
        f"{met_count} of {len(TARGETS)} targets met",
    ]
