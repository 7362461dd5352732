"""Every CPU of a stopped machine, side by side: what ``kinspect cpus`` shows.

Each CPU has its own registers, CR3, GDT, IDT and TSS; a record here holds one
CPU's, read with that CPU selected (the session gathers, this module only
describes). On Linux the CPU's current task is found through the per-CPU
areas: ``__per_cpu_offset[cpu]`` plus the per-CPU variable ``current_task``
(``pcpu_hot``, whose first member it is, since 6.2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import InspectorError
from .targets.base import DescriptorTableRegister

__all__ = [
    "CURRENT_TASK_SYMBOLS",
    "CpuState",
    "PerCpuArea",
    "find_current_task",
    "format_cpus",
    "per_cpu_offset",
    "per_cpu_symbol",
]

#: Per-CPU variables whose first 8 bytes are the CPU's current ``task_struct *``.
CURRENT_TASK_SYMBOLS = ("pcpu_hot", "current_task")

#: x86_64 per-CPU symbols are offsets into each CPU's area (zero-based), far below this.
_PER_CPU_LIMIT = 1 << 32


@dataclass(frozen=True, slots=True)
class PerCpuArea:
    """A Linux CPU's per-CPU area and what the CPU runs on (``cpus --detail``).

    ``offset`` is ``__per_cpu_offset[cpu]``: the CPU's copy of a per-CPU variable
    is at the variable's (zero-based) symbol plus this. ``gdt_page`` and
    ``tss`` are the CPU's ``gdt_page`` and ``cpu_tss_rw``; the CPU itself uses
    their aliases in its ``cpu_entry_area`` (GDTR's base is that area's first
    page, its GDT). ``gdt_shared``/``tss_shared``: whether GDTR's GDT and TR's
    TSS are the same physical pages as ``gdt_page``/``cpu_tss_rw`` (None: a
    side did not translate). ``stacks``: the TSS's IST stacks, name to top.
    """

    offset: int
    gdt_page: int | None
    tss: int | None
    entry_area: int | None
    gdt_shared: bool | None
    tss_shared: bool | None
    stacks: tuple[tuple[str, int], ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "per_cpu_offset": self.offset,
            "gdt_page": self.gdt_page,
            "cpu_tss_rw": self.tss,
            "cpu_entry_area": self.entry_area,
            "gdt_shared": self.gdt_shared,
            "tss_shared": self.tss_shared,
            "ist": {name: value for name, value in self.stacks},
        }

    def describe(self, cpu: int) -> list[str]:
        def shared(flag: bool | None) -> str:
            return {True: "same page", False: "NOT the same page", None: "unknown"}[flag]

        lines = [f"CPU {cpu}: per-CPU area at {self.offset:#018x} (__per_cpu_offset[{cpu}])"]
        if self.entry_area is not None:
            lines.append(f"  cpu_entry_area  {self.entry_area:#018x}")
        if self.gdt_page is not None:
            lines.append(
                f"  gdt_page        {self.gdt_page:#018x}  GDTR's GDT: {shared(self.gdt_shared)}"
            )
        if self.tss is not None:
            lines.append(f"  cpu_tss_rw      {self.tss:#018x}  TR's TSS: {shared(self.tss_shared)}")
        for name, value in self.stacks:
            lines.append(f"  {name:<15} {value:#018x}")
        return lines


@dataclass(frozen=True, slots=True)
class CpuState:
    """One CPU as it was when the machine stopped.

    ``state``: ``"halted"`` (in HLT, waiting for an interrupt), ``"stopped"``
    (stopped while executing) or ``"running"`` (the machine runs: nothing read).
    ``selected``: the CPU the other views read. ``error``: what could not be
    read of this CPU, in one line.
    """

    index: int
    state: str
    selected: bool = False
    rip: int | None = None
    symbol: str | None = None
    cr3: int | None = None
    paging: str | None = None
    gdtr: DescriptorTableRegister | None = None
    idtr: DescriptorTableRegister | None = None
    tr_selector: int | None = None
    tr_base: int | None = None
    current_task: int | None = None
    current_task_symbol: str | None = None
    error: str | None = None
    area: PerCpuArea | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "index": self.index,
            "state": self.state,
            "selected": self.selected,
            "rip": self.rip,
            "symbol": self.symbol,
            "cr3": self.cr3,
            "paging": self.paging,
            "gdtr": self.gdtr.to_dict() if self.gdtr else None,
            "idtr": self.idtr.to_dict() if self.idtr else None,
            "tr": None
            if self.tr_base is None
            else {"selector": self.tr_selector, "base": self.tr_base},
            "current_task": None
            if self.current_task is None
            else {"address": self.current_task, "symbol": self.current_task_symbol},
            "error": self.error,
            "area": self.area.to_dict() if self.area else None,
        }


def per_cpu_offset(
    read_u64: Callable[[int], int], lookup: Callable[[str], int | None], cpu: int
) -> int | None:
    """``__per_cpu_offset[cpu]``, None without the symbol or when it cannot be read."""
    offsets = lookup("__per_cpu_offset")
    if offsets is None:
        return None
    try:
        return read_u64(offsets + 8 * cpu)
    except InspectorError:
        return None


def per_cpu_symbol(lookup: Callable[[str], int | None], name: str) -> int | None:
    """A per-CPU variable's offset in every CPU's area (None: not a per-CPU symbol)."""
    variable = lookup(name)
    return variable if variable is not None and 0 <= variable < _PER_CPU_LIMIT else None


def find_current_task(
    read_u64: Callable[[int], int], lookup: Callable[[str], int | None], cpu: int
) -> int | None:
    """CPU ``cpu``'s current ``task_struct *`` on Linux, None when the symbols do not
    name the per-CPU areas (not Linux, or a uniprocessor build)."""
    for name in CURRENT_TASK_SYMBOLS:
        variable = per_cpu_symbol(lookup, name)
        if variable is not None:
            break
    else:
        return None
    base = per_cpu_offset(read_u64, lookup, cpu)
    if base is None:
        return None
    try:
        return read_u64(base + variable)
    except InspectorError:
        return None


def _hex(value: int | None, width: int = 16) -> str:
    return "-" if value is None else f"{value:0{width}x}"


def format_cpus(cpus: list[CpuState]) -> str:
    """One line per CPU (``*`` marks the selected one), then what could not be read."""
    rows = [
        f"  CPU  {'state':<8} {'RIP':<16} {'CR3':<16} {'paging':<8} {'GDTR base':<16} "
        f"{'IDTR base':<16} {'TR base':<16}  symbol"
    ]
    notes: list[str] = []
    for cpu in cpus:
        mark = "*" if cpu.selected else " "
        rows.append(
            f"{mark} {cpu.index:>3}  {cpu.state:<8} {_hex(cpu.rip)} {_hex(cpu.cr3)} "
            f"{cpu.paging or '-':<8} {_hex(cpu.gdtr.base if cpu.gdtr else None)} "
            f"{_hex(cpu.idtr.base if cpu.idtr else None)} {_hex(cpu.tr_base)}  "
            f"{cpu.symbol or ''}".rstrip()
        )
        if cpu.current_task is not None:
            task = f" ({cpu.current_task_symbol})" if cpu.current_task_symbol else ""
            notes.append(f"CPU {cpu.index}: current task {cpu.current_task:#018x}{task}")
        if cpu.error:
            notes.append(f"CPU {cpu.index}: {cpu.error}")
        if cpu.area is not None:
            notes.extend(cpu.area.describe(cpu.index))
    return "\n".join(rows + notes)
