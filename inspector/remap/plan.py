"""Remap plans: what a change writes, what it allocates, what it takes away.

Pure: a plan is computed from the current map (coalesced ranges, as the
agent's ``walk`` gives them), the registers and the page tables' addresses,
and nothing is read or written here. The agent checks the same safety rules
again when it applies a step (AGENT_PROTOCOL.md, "Refusals"); checking them
here lets the user see a refusal before anything is sent.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..x86.paging import Range, entry_span, is_canonical
from .flags import PTE_FLAG_BITS, Permission, escalation, format_flags, parse_flags

__all__ = [
    "FLAG_BITS",
    "LEVEL_OF_SIZE",
    "MAX_PAGES_PER_STEP",
    "Expectation",
    "Plan",
    "Protected",
    "Refusal",
    "Step",
    "check_change",
    "format_flags",
    "parse_flags",
    "plan_map",
    "plan_move",
    "plan_protect",
    "plan_unmap",
    "protected_areas",
    "verify_expectations",
]

PAGE = 0x1000
#: Leaf entry bits a map or protect may set (P is always set). SDM names (flags.py).
FLAG_BITS = PTE_FLAG_BITS
LEVEL_OF_SIZE = {1 << 12: 1, 1 << 21: 2, 1 << 30: 3, 1 << 39: 4}
#: Stack the agent's own frames take below the kernel's RSP (kernel-agent/README.md, "Size").
AGENT_FRAMES = 0x800
#: The agent changes at most 64 leaves per request (AGENT_EDIT_LEAVES).
MAX_PAGES_PER_STEP = 64
#: Refusal reasons, as the agent names them.
REASONS = (
    "running-code",
    "own-stack",
    "descriptor-tables",
    "page-tables",
    "non-canonical",
    "misaligned",
    "not-an-alias",
    "no-guard-page",
    "efi-runtime",
)


@dataclass(frozen=True, slots=True)
class Protected:
    """A virtual range that must stay mapped as it is (``kind`` names the refusal)."""

    kind: str
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end}


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: str
    address: int
    message: str

    def __str__(self) -> str:
        return f"refused ({self.reason}) at {self.address:#x}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "address": self.address, "message": self.message}


@dataclass(frozen=True, slots=True)
class Expectation:
    """After a step: [start, end) maps phys.. with these effective permissions, or nothing."""

    start: int
    end: int
    phys: int | None  # None: unmapped
    writable: bool | None = None
    executable: bool | None = None

    def __str__(self) -> str:
        if self.phys is None:
            return f"{self.start:#018x}-{self.end:#018x} unmapped"
        perm = ("RW" if self.writable else "ro") + (" x" if self.executable else " NX")
        return f"{self.start:#018x}-{self.end:#018x} -> {self.phys:#x} {perm}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "phys": self.phys,
            "writable": self.writable,
            "executable": self.executable,
        }


@dataclass(frozen=True, slots=True)
class Step:
    """One agent request: ``method`` with ``params`` (force is added when applying)."""

    method: str
    params: tuple[int, ...]
    description: str
    writes: tuple[tuple[int, int, str], ...] = ()  # (va, level, new entry described)
    expect: tuple[Expectation, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "params": list(self.params),
            "description": self.description,
            "writes": [{"va": va, "level": lvl, "entry": text} for va, lvl, text in self.writes],
            "expect": [e.to_dict() for e in self.expect],
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """What a change does, step by step, before anything is written."""

    title: str
    steps: tuple[Step, ...]
    tables_to_allocate: int = 0
    unreachable: tuple[Range, ...] = ()
    refusals: tuple[Refusal, ...] = ()
    notes: tuple[str, ...] = field(default=())
    #: What the change adds (write, execute, W+X): the faces ask again before applying it.
    warnings: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [f"plan: {self.title}"]
        shown = 8 if len(self.steps) <= 8 else 2  # a long plan: its steps, not every entry
        for i, step in enumerate(self.steps, 1):
            lines.append(f"  step {i}: {step.method} {_params_text(step.params)}")
            lines.append(f"          {step.description}")
            for va, level, text in step.writes[:shown]:
                lines.append(f"          write L{level} entry of {va:#018x}: {text}")
            if len(step.writes) > shown:
                lines.append(f"          ... {len(step.writes) - shown} more entries")
            for e in step.expect:
                lines.append(f"          expect {e}")
        lines.append(f"  page tables to allocate: {self.tables_to_allocate} (at most)")
        if self.unreachable:
            lines.append("  becomes unreachable:")
            lines.extend(f"    {r}" for r in self.unreachable)
        else:
            lines.append("  becomes unreachable: nothing")
        lines.extend(f"  note: {n}" for n in self.notes)
        lines.extend(f"  WARNING: {w}" for w in self.warnings)
        lines.extend(f"  {r}" for r in self.refusals)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "steps": [s.to_dict() for s in self.steps],
            "tables_to_allocate": self.tables_to_allocate,
            "unreachable": [r.to_dict() for r in self.unreachable],
            "refusals": [r.to_dict() for r in self.refusals],
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }


def _params_text(params: Sequence[Any]) -> str:
    def one(p: Any) -> str:
        if isinstance(p, int):
            return hex(p)
        if isinstance(p, list | tuple) and p and all(isinstance(x, list | tuple) for x in p):
            return f"[{len(p)} pairs]"
        return str(p)

    return " ".join(one(p) for p in params)


def protected_areas(
    regs: dict[str, int],
    *,
    tss_base: int | None,
    frames_top: int | None,
    table_aliases: Iterable[int] = (),
    ldt: tuple[int, int] | None = None,
) -> list[Protected]:
    """The areas the agent protects, from its registers (``regs``: the agent's ``regs``;
    ``ldt``: the base and limit of the LDT that LDTR selects)."""
    areas = [Protected("running-code", regs["rip"] & ~0xFFF, (regs["rip"] & ~0xFFF) + PAGE)]
    rsp = regs["rsp"]
    # While stopped, RSP is the kernel's; the agent's own frames (under 2 KiB) lie below it.
    areas.append(
        Protected("own-stack", (rsp - AGENT_FRAMES) & ~0xFFF, max(rsp + 8, frames_top or 0))
    )
    areas.append(
        Protected(
            "descriptor-tables",
            regs["gdtr_base"] & ~0xFFF,
            regs["gdtr_base"] + regs["gdtr_limit"] + 1,
        )
    )
    areas.append(
        Protected(
            "descriptor-tables",
            regs["idtr_base"] & ~0xFFF,
            regs["idtr_base"] + regs["idtr_limit"] + 1,
        )
    )
    if tss_base is not None:
        areas.append(Protected("descriptor-tables", tss_base & ~0xFFF, tss_base + 0x68))
    if ldt is not None:
        areas.append(Protected("descriptor-tables", ldt[0] & ~0xFFF, ldt[0] + ldt[1] + 1))
    areas.extend(Protected("page-tables", va, va + PAGE) for va in table_aliases)
    return areas


def check_change(
    areas: Iterable[Protected],
    start: int,
    end: int,
    *,
    unmaps: bool,
    removes_x: bool = False,
    removes_w: bool = False,
) -> list[Refusal]:
    """The agent's rule: a protected area may not lose its mapping, X (code) or W (the rest)."""
    out = []
    for a in areas:
        if a.end <= start or a.start >= end:
            continue
        if (
            unmaps
            or (a.kind == "running-code" and removes_x)
            or (a.kind not in ("running-code", "efi-runtime") and removes_w)
        ):
            out.append(Refusal(a.kind, max(a.start, start), _MESSAGES[a.kind]))
    return out


_MESSAGES = {
    "running-code": "would unmap, move or make non-executable the code the agent runs",
    "own-stack": "would unmap, move or make read-only the stack the agent runs on",
    "descriptor-tables": "would unmap, move or make read-only the GDT, IDT, TSS or LDT in use",
    "page-tables": "would unmap, move or make read-only a mapping of the page tables",
    "efi-runtime": "would unmap or move a UEFI runtime region: after SetVirtualAddressMap the "
    "firmware reaches it only there, and cannot be told another address",
}


def _shape_refusals(
    va: int, size: int, page_size: int, pa: int = 0, *, levels: int = 4
) -> list[Refusal]:
    out = []
    if (
        size <= 0
        or not is_canonical(va, levels)
        or not is_canonical(va + size - 1, levels)
        or (va >> 63) != ((va + size - 1) >> 63)
    ):
        out.append(Refusal("non-canonical", va, "the range is not canonical or crosses the hole"))
    if (va | pa | size) % page_size:
        out.append(Refusal("misaligned", va, f"address or size not a multiple of {page_size:#x}"))
    return out


class RangeIndex:
    """Coalesced ranges sorted by start, for overlap queries in O(log n + k).

    A map's ranges never overlap (a virtual address maps once), so the only
    range that starts before a query and may reach into it is the one just
    before. Planning on a big kernel (65,000 ranges in the Linux capture)
    asks thousands of such queries.
    """

    def __init__(self, ranges: Iterable[Range]) -> None:
        self.ranges = sorted(ranges, key=lambda r: r.start)
        self._starts = [r.start for r in self.ranges]

    def __iter__(self) -> Iterator[Range]:
        return iter(self.ranges)

    def __len__(self) -> int:
        return len(self.ranges)

    def overlapping(self, start: int, end: int) -> Iterator[Range]:
        """The ranges that share an address with [start, end), ascending."""
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        for r in self.ranges[i:]:
            if r.start >= end:
                return
            if r.end > start:
                yield r


def indexed(ranges: Iterable[Range]) -> RangeIndex:
    """``ranges`` as a RangeIndex (itself when it is one)."""
    return ranges if isinstance(ranges, RangeIndex) else RangeIndex(ranges)


def _overlap(ranges: Iterable[Range], start: int, end: int) -> list[Range]:
    out = []
    for r in indexed(ranges).overlapping(start, end):
        lo, hi = max(r.start, start), min(r.end, end)
        out.append(Range(lo, hi, r.phys + (lo - r.start), r.page_size, r.permissions, r.attributes))
    return out


def _tables_needed(ranges: Iterable[Range], va: int, size: int, level: int, levels: int = 4) -> int:
    """Tables a map must create: levels above the leaf with nothing mapped yet (upper bound)."""
    return len(tables_needed(ranges, va, size, level, levels=levels))


def tables_needed(
    ranges: Iterable[Range], va: int, size: int, level: int, *, levels: int = 4
) -> set[tuple[int, int]]:
    """(level, base) of each table a map must create (several maps: the union of these).

    An entry at ``upper`` level (above the leaf's, below the top table that CR3
    holds with ``levels`` of paging) needs a new table under it when nothing in
    the span it covers is mapped by a page smaller than that span.
    """
    index = indexed(ranges)
    needed = set()
    for upper in range(level + 1, levels + 1):
        span = entry_span(upper)
        for base in range(va & ~(span - 1), va + size, span):
            if not any(r.page_size < span for r in index.overlapping(base, base + span)):
                needed.add((upper, base))
    return needed


def _chunks(va: int, size: int, page_size: int) -> Iterator[tuple[int, int, int]]:
    step = page_size * MAX_PAGES_PER_STEP
    for off in range(0, size, step):
        yield va + off, min(step, size - off), off


def plan_map(
    ranges: Iterable[Range],
    areas: Sequence[Protected],
    va: int,
    pa: int,
    size: int,
    page_size: int,
    flags: int,
    *,
    levels: int = 4,
) -> Plan:
    """Map ``size`` bytes at ``va`` to ``pa`` in ``page_size`` pages, under ``levels`` of paging."""
    level = LEVEL_OF_SIZE.get(page_size)
    refusals = _shape_refusals(va, size, page_size, pa, levels=levels)
    if level is None or level > 3:
        raise ValueError("page size must be 4 KiB, 2 MiB or 1 GiB")
    replaced = _overlap(ranges, va, va + size)
    if replaced:
        refusals += check_change(areas, va, va + size, unmaps=True)
    steps = []
    for start, length, off in _chunks(va, size, page_size):
        steps.append(
            Step(
                "map",
                (start, pa + off, length, page_size, flags),
                f"map {length:#x} bytes at {start:#x} -> {pa + off:#x} in {page_size:#x} pages",
                tuple(
                    (start + i, level, f"{pa + off + i:#x} {format_flags(flags)}")
                    for i in range(0, length, page_size)
                ),
                (
                    Expectation(
                        start,
                        start + length,
                        pa + off,
                        bool(flags & FLAG_BITS["RW"]),
                        not flags & FLAG_BITS["NX"],
                    ),
                ),
            )
        )
    before: list[Permission | None] = [_permission(r) for r in replaced]
    if sum(r.size for r in replaced) < size:
        before.append(None)  # some of it is mapped for the first time
    warnings = escalation(flags, before) + _alias_warnings(ranges, pa, size, flags)
    return Plan(
        f"map {va:#x}-{va + size:#x} -> {pa:#x} ({format_flags(flags)})",
        tuple(steps),
        _tables_needed(ranges, va, size, level, levels),
        tuple(replaced),
        tuple(refusals),
        ("replaces existing mappings (their entries are journaled)",) if replaced else (),
        tuple(warnings),
    )


def plan_unmap(
    ranges: Sequence[Range],
    areas: Sequence[Protected],
    va: int,
    size: int,
    page_size: int,
    *,
    levels: int = 4,
) -> Plan:
    level = LEVEL_OF_SIZE.get(page_size)
    if level is None:
        raise ValueError("page size must be 4 KiB, 2 MiB, 1 GiB or 512 GiB")
    refusals = _shape_refusals(va, size, page_size, levels=levels)
    refusals += check_change(areas, va, va + size, unmaps=True)
    gone = _overlap(ranges, va, va + size)
    steps = tuple(
        Step(
            "unmap",
            (start, length, page_size),
            f"clear the level-{level} entries of {start:#x}-{start + length:#x}",
            tuple((start + i, level, "0 (not present)") for i in range(0, length, page_size)),
            (Expectation(start, start + length, None),),
        )
        for start, length, _ in _chunks(va, size, page_size)
    )
    return Plan(f"unmap {va:#x}-{va + size:#x}", steps, 0, tuple(gone), tuple(refusals))


def plan_protect(
    ranges: Sequence[Range],
    areas: Sequence[Protected],
    va: int,
    size: int,
    page_size: int,
    flags: int,
    *,
    levels: int = 4,
) -> Plan:
    level = LEVEL_OF_SIZE.get(page_size)
    if level is None or level > 3:
        raise ValueError("page size must be 4 KiB, 2 MiB or 1 GiB")
    refusals = _shape_refusals(va, size, page_size, levels=levels)
    covered = _overlap(ranges, va, va + size)
    if sum(r.size for r in covered) != size:
        refusals.append(Refusal("not-mapped", va, "protect needs every page mapped"))
    refusals += check_change(
        areas,
        va,
        va + size,
        unmaps=False,
        removes_x=bool(flags & FLAG_BITS["NX"]),
        removes_w=not flags & FLAG_BITS["RW"],
    )
    steps = []
    for start, length, _ in _chunks(va, size, page_size):
        expect = tuple(
            Expectation(
                r.start, r.end, r.phys, bool(flags & FLAG_BITS["RW"]), not flags & FLAG_BITS["NX"]
            )
            for r in _overlap(covered, start, start + length)
        )
        steps.append(
            Step(
                "protect",
                (start, length, page_size, flags),
                f"flags of {start:#x}-{start + length:#x} := {format_flags(flags)}",
                tuple(
                    (start + i, level, f"same address, {format_flags(flags)}")
                    for i in range(0, length, page_size)
                ),
                expect,
            )
        )
    return Plan(
        f"protect {va:#x}-{va + size:#x} ({format_flags(flags)})",
        tuple(steps),
        0,
        (),
        tuple(refusals),
        warnings=tuple(escalation(flags, [_permission(r) for r in covered])),
    )


def _permission(r: Range) -> Permission:
    return Permission(r.permissions.writable, r.permissions.executable)


def _alias_warnings(ranges: Iterable[Range], pa: int, size: int, flags: int) -> list[str]:
    """W^X across aliases: a writable view of pages that are executable and read-only
    elsewhere (code), or an executable view of writable, non-executable ones (data). A page
    already W+X where it is mapped is not made worse by another view of it."""
    after = Permission(bool(flags & FLAG_BITS["RW"]), not flags & FLAG_BITS["NX"])
    out = []
    for r in indexed(ranges):
        if r.phys >= pa + size or r.phys + r.size <= pa:
            continue
        w, x = r.permissions.writable, r.permissions.executable
        if after.writable and x and not w:
            out.append(f"makes a writable alias of executable pages mapped at {r.start:#x}")
        elif after.executable and w and not x:
            out.append(f"makes an executable alias of writable pages mapped at {r.start:#x}")
        if out:
            break
    return out


def _leaf_flags(r: Range) -> int:
    flags = 0 if r.permissions.executable else FLAG_BITS["NX"]
    flags |= FLAG_BITS["RW"] if r.permissions.writable else 0
    flags |= FLAG_BITS["US"] if r.permissions.user else 0
    for name in ("G", "PWT", "PCD"):
        flags |= FLAG_BITS[name] if name in r.attributes else 0
    return flags


def plan_move(
    ranges: Sequence[Range],
    areas: Sequence[Protected],
    va: int,
    size: int,
    new_va: int,
    *,
    drop_old: bool = False,
    levels: int = 4,
) -> Plan:
    """Map the same physical pages at ``new_va`` (same page sizes and flags), then drop the old."""
    moved = _overlap(ranges, va, va + size)
    refusals = _shape_refusals(new_va, size, PAGE, levels=levels)
    if not moved:
        refusals.append(Refusal("not-mapped", va, "nothing is mapped there to move"))
    if any(r.attributes and "PAT" in r.attributes for r in moved):
        refusals.append(Refusal("misaligned", va, "a page with the PAT bit: not moved"))
    steps: list[Step] = []
    delta = new_va - va
    for r in moved:
        if (r.start + delta) % r.page_size:
            refusals.append(
                Refusal(
                    "misaligned", r.start + delta, f"the new base breaks {r.page_size:#x} pages"
                )
            )
            continue
        sub = plan_map(
            (), (), r.start + delta, r.phys, r.size, r.page_size, _leaf_flags(r), levels=levels
        )
        steps.extend(sub.steps)
    if _overlap(ranges, new_va, new_va + size):
        refusals.append(Refusal("not-mapped", new_va, "the new range is already mapped"))
    unreachable: tuple[Range, ...] = ()
    if drop_old:
        for r in moved:
            steps.extend(plan_unmap((), (), r.start, r.size, r.page_size, levels=levels).steps)
        refusals += check_change(areas, va, va + size, unmaps=True)
        unreachable = tuple(moved)
    return Plan(
        f"move {va:#x}-{va + size:#x} to {new_va:#x}" + (" and drop the old" if drop_old else ""),
        tuple(steps),
        _tables_needed(ranges, new_va, size, 1, levels),
        unreachable,
        tuple(refusals),
        ("the new alias is mapped and verified before the old one is dropped",) if drop_old else (),
    )


def verify_expectations(expect: Iterable[Expectation], ranges: Sequence[Range]) -> list[str]:
    """What differs between the expectations and a fresh walk (empty: as planned)."""
    problems = []
    for e in expect:
        found = _overlap(ranges, e.start, e.end)
        if e.phys is None:
            if found:
                problems.append(f"{e}: still mapped: {found[0]}")
            continue
        if sum(r.size for r in found) != e.end - e.start:
            problems.append(f"{e}: not all mapped")
            continue
        for r in found:
            if r.phys != e.phys + (r.start - e.start):
                problems.append(f"{e}: maps {r.phys:#x} at {r.start:#x}")
            elif e.writable is not None and r.permissions.writable != e.writable:
                problems.append(f"{e}: writable is {r.permissions.writable}")
            elif e.executable is not None and r.permissions.executable != e.executable:
                problems.append(f"{e}: executable is {r.permissions.executable}")
    return problems
