"""Linux's x86_64 virtual memory map, named as its ptdump names it.

ptdump (``arch/x86/mm/dump_pagetables.c``) puts a heading at each address
marker; a region runs from its marker to the next one. The markers are the
kernel's constants (``arch/x86/include/asm/pgtable_64_types.h``, 4- and 5-level)
and the bases KASLR randomizes (``page_offset_base``, ``vmalloc_base``,
``vmemmap_base``), read from the kernel, with ``_text``/``_end`` from its symbols.

A stub without QEMU's physical mode reads page tables through the direct map,
whose base is what ``page_offset_base`` holds; before the symbols are known it is
guessed from the per-CPU area GS points at (:func:`direct_map_candidates`) and
checked by a walk, then confirmed from ``page_offset_base``.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..errors import InspectorError

__all__ = [
    "KERNEL_MAP",
    "MODULES_END",
    "MODULES_VADDR",
    "Region",
    "RegionMap",
    "check_direct_map",
    "direct_map_candidates",
    "linux_regions",
]

GiB = 1 << 30
P4D_SIZE = 1 << 39

#: ``__START_KERNEL_map``: the kernel image's window (its 1 GiB with KASLR)
KERNEL_MAP = 0xFFFFFFFF80000000
#: ``MODULES_VADDR`` (``__START_KERNEL_map + KERNEL_IMAGE_SIZE``) and ``MODULES_END``
MODULES_VADDR = 0xFFFFFFFFC0000000
MODULES_END = 0xFFFFFFFFFF000000
#: ``CPU_ENTRY_AREA_BASE``: ``CPU_ENTRY_AREA_PGD`` (-4) << ``P4D_SHIFT``, one P4D entry
CPU_ENTRY_AREA_BASE = 0xFFFFFE0000000000
#: ``ESPFIX_BASE_ADDR``: ``ESPFIX_PGD_ENTRY`` (-2) << ``P4D_SHIFT``, one P4D entry
ESPFIX_BASE = 0xFFFFFF0000000000
#: ``EFI_VA_END`` (-68 GiB): the EFI runtime region grows down from ``EFI_VA_START`` (-4 GiB)
EFI_VA_END = 0xFFFFFFEF00000000
EFI_VA_START = 0xFFFFFFFF00000000

#: Per paging mode (4, 5): the user half's end (``1 << __VIRTUAL_MASK_SHIFT``),
#: ``LDT_BASE_ADDR`` (``LDT_PGD_ENTRY`` << ``PGDIR_SHIFT``: -240 << 39, -112 << 48) and the
#: default bases (``__PAGE_OFFSET_BASE_L4/L5``, ``__VMALLOC_BASE_L4/L5``, ``__VMEMMAP_BASE_L4/L5``)
#: used when the kernel's variables cannot be read.
_MODE = {
    4: {
        "user_end": 1 << 47,
        "ldt": 0xFFFF880000000000,
        "ldt_size": 1 << 39,
        "page_offset_base": 0xFFFF888000000000,
        "vmalloc_base": 0xFFFFC90000000000,
        "vmemmap_base": 0xFFFFEA0000000000,
    },
    5: {
        "user_end": 1 << 56,
        "ldt": 0xFF90000000000000,
        "ldt_size": 1 << 48,
        "page_offset_base": 0xFF11000000000000,
        "vmalloc_base": 0xFFA0000000000000,
        "vmemmap_base": 0xFFD4000000000000,
    },
}


@dataclass(frozen=True, slots=True)
class Region:
    """A named stretch of the address space, ``end`` exclusive."""

    name: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.start:#018x}-{self.end:#018x} {self.name}"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "start": self.start, "end": self.end}


class RegionMap:
    """Regions sorted by start (no overlaps): the name of an address, the boundaries."""

    def __init__(self, regions: Sequence[Region]) -> None:
        self.regions = tuple(sorted(regions, key=lambda r: r.start))
        self._starts = [r.start for r in self.regions]

    def __iter__(self) -> Iterator[Region]:
        return iter(self.regions)

    def __len__(self) -> int:
        return len(self.regions)

    def name_of(self, address: int) -> str | None:
        """The region holding ``address``, None in none."""
        at = bisect.bisect_right(self._starts, address) - 1
        if at >= 0 and address < self.regions[at].end:
            return self.regions[at].name
        return None

    def boundaries(self) -> list[int]:
        """Every address where a region starts or ends (a compact range never crosses one)."""
        return sorted({r.start for r in self.regions} | {r.end for r in self.regions})


def linux_regions(
    *,
    levels: int,
    page_offset_base: int | None,
    vmalloc_base: int | None,
    vmemmap_base: int | None,
    text: int | None,
    end: int | None,
) -> RegionMap:
    """Linux's regions, ptdump's markers: each runs to the next marker.

    ``text``/``end`` are ``_text`` and ``_end`` (the kernel image); a base that is None
    takes the kernel's non-KASLR default for the mode.
    """
    mode = _MODE[5 if levels == 5 else 4]
    bases = {
        "page_offset_base": page_offset_base,
        "vmalloc_base": vmalloc_base,
        "vmemmap_base": vmemmap_base,
    }
    direct, vmalloc, vmemmap = (
        value if value is not None else mode[name] for name, value in bases.items()
    )
    # (start, name): a name of None ends the region before it without starting one
    markers: list[tuple[int, str | None]] = [
        (0, "user space"),
        (mode["user_end"], None),
        (mode["ldt"], "LDT remap"),
        (mode["ldt"] + mode["ldt_size"], None),
        (direct, "direct map"),
        (vmalloc, "vmalloc"),
        (vmemmap, "vmemmap"),
        (CPU_ENTRY_AREA_BASE, "cpu_entry_area"),
        (CPU_ENTRY_AREA_BASE + P4D_SIZE, None),
        (ESPFIX_BASE, "espfix"),
        (ESPFIX_BASE + P4D_SIZE, None),
        (EFI_VA_END, "EFI runtime"),
        (EFI_VA_START, None),
        (KERNEL_MAP, None),
        (MODULES_VADDR, "modules"),
        (MODULES_END, "fixmap"),
    ]
    if text is not None and end is not None and KERNEL_MAP <= text < end <= MODULES_VADDR:
        markers += [(text, "kernel text/data"), (end, None)]
    markers.sort(key=lambda m: m[0])
    regions = []
    for (start, name), (following, _) in zip(markers, [*markers[1:], (1 << 64, None)], strict=True):
        if name is not None and following > start:
            regions.append(Region(name, start, following))
    return RegionMap(regions)


def direct_map_candidates(
    registers: Mapping[str, int], *, ram_limit: int = 64 * GiB
) -> list[tuple[int, int]]:
    """Where the direct map may start, most likely first, each with the GS base it
    came from: ``(base, gs)``.

    In the kernel, GS holds this CPU's per-CPU offset, and the per-CPU areas
    are allocated from memblock, so they sit in the direct map: its base is a
    1 GiB boundary (KASLR moves it by ``PUD_SIZE``) at most ``ram_limit`` below.
    Each candidate must be checked (:func:`check_direct_map`).
    """
    found: list[tuple[int, int]] = []
    for name in ("gs_base", "k_gs_base"):
        gs = registers.get(name, 0)
        if gs >> 63 == 0:
            continue  # a user GS (or none)
        top = gs & ~(GiB - 1)
        for step in range(ram_limit // GiB):
            candidate = top - step * GiB
            if candidate >> 63 and all(candidate != base for base, _ in found):
                found.append((candidate, gs))
    return found


#: ``translate(va, read_physical) -> physical or None``: a walk for :func:`check_direct_map`
Translate = Callable[[int, Callable[[int, int], bytes]], "int | None"]


def check_direct_map(
    base: int, gs: int, read_virtual: Callable[[int, int], bytes], translate: Translate
) -> bool:
    """Whether tables read at ``base + physical`` map ``gs`` to ``gs - base`` (so the
    direct map really starts at ``base``)."""

    def read_physical(address: int, size: int) -> bytes:
        return read_virtual(base + address, size)

    try:
        physical = translate(gs, read_physical)
    except InspectorError:  # a wrong base reads garbage or nothing
        return False
    return physical is not None and base + physical == gs
