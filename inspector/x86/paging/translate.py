"""One virtual address translated the way the CPU walks it, step by step (SDM Vol. 3A, 4.5.4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kinspect.inspector.errors import FaultError
from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging.address import is_canonical, level_index, virtual_address_bits
from kinspect.inspector.x86.paging.entry import (
    _U64,
    LEVEL_NAMES,
    PageTableEntry,
    Permissions,
    ReadPhysical,
    _check_mode,
    _entry_text,
    _permissions,
    _repr,
    decode_entry,
    format_size,
)

__all__ = ["Translation", "WalkStep", "translate"]


@dataclass(frozen=True, slots=True)
class WalkStep:
    """One level of a translation: which entry of which table was used."""

    level: int
    table_address: int
    index: int
    entry_address: int
    entry: PageTableEntry

    @property
    def level_name(self) -> str:
        """SDM name of the table (``PML4``, ``PDPT``...)."""
        return LEVEL_NAMES[self.level]

    def __str__(self) -> str:
        return f"{self.level_name}[{self.index}] at {self.entry_address:#x}: {self.entry}"

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "level": self.level,
            "level_name": self.level_name,
            "table_address": self.table_address,
            "index": self.index,
            "entry_address": self.entry_address,
            "entry": self.entry.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class Translation:
    """A virtual address translated, step by step, or where and why it fails.

    On success ``pa`` is the physical address, ``page_size`` the leaf size
    and ``permissions`` the effective rights; ``fault`` is None. On failure
    ``pa`` and ``permissions`` are None and ``fault`` says which entry
    stopped the walk and why; ``steps`` holds every entry read, including
    the failing one when it could be read.
    """

    va: int
    steps: tuple[WalkStep, ...]
    pa: int | None
    page_size: int
    permissions: Permissions | None
    fault: str | None

    @property
    def ok(self) -> bool:
        """Whether the address translates."""
        return self.fault is None

    def __str__(self) -> str:
        if self.fault is not None:
            return f"{self.va:#x}: {self.fault}"
        return (
            f"{self.va:#x} -> {self.pa:#x} ({format_size(self.page_size)} page, {self.permissions})"
        )

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "va": self.va,
            "steps": [step.to_dict() for step in self.steps],
            "pa": self.pa,
            "page_size": self.page_size,
            "permissions": None if self.permissions is None else self.permissions.to_dict(),
            "fault": self.fault,
        }


def translate(read_physical: ReadPhysical, cr3: int, mode: PagingMode, va: int) -> Translation:
    """Translate ``va`` the way the CPU walks it (SDM Vol. 3A, 4.5.4).

    Never raises for a bad address or bad tables: a non-canonical address,
    a non-present entry, reserved bits or an unreadable table end the walk
    with ``fault`` set. Raises :class:`InspectorError` only if ``mode`` is
    not long mode.
    """
    _check_mode(mode)
    levels = mode.levels
    steps: list[WalkStep] = []

    def failed(reason: str) -> Translation:
        return Translation(va, tuple(steps), None, 0, None, reason)

    if not 0 <= va <= _U64:
        return failed(f"{va:#x} is not a 64-bit address")
    if not is_canonical(va, levels):
        return failed(
            f"{va:#x} is not canonical for {levels}-level paging"
            f" (bits 63..{virtual_address_bits(levels) - 1} must all be equal)"
        )
    table = cr3 & ((1 << mode.maxphyaddr) - 1) & ~0xFFF
    writable, user, nx = True, True, False
    for level in range(levels, 0, -1):
        index = level_index(va, level)
        entry_address = table + 8 * index
        try:
            data = read_physical(entry_address, 8)
        except FaultError as error:
            return failed(f"cannot read {_entry_text(level, index, entry_address)}: {error.reason}")
        if len(data) != 8:
            return failed(
                f"reading {_entry_text(level, index, entry_address)} gave {len(data)} bytes"
            )
        entry = decode_entry(
            int.from_bytes(data, "little"), level, maxphyaddr=mode.maxphyaddr, nxe=mode.nxe
        )
        steps.append(WalkStep(level, table, index, entry_address, entry))
        where = _entry_text(level, index, entry_address)
        if not entry.present:
            return failed(f"{where} is not present")
        if entry.reserved:
            return failed(
                f"{where} has reserved bits {entry.reserved:#x} set"
                " (the CPU would raise #PF with RSVD=1)"
            )
        writable = writable and entry.rw
        user = user and entry.us
        nx = nx or (mode.nxe and entry.nx)
        if entry.is_leaf:
            size = entry.page_size
            return Translation(
                va,
                tuple(steps),
                entry.address | (va & (size - 1)),
                size,
                _permissions(int(writable), int(user), int(not nx)),
                None,
            )
        table = entry.address
    raise AssertionError("unreachable: a PT entry is always a leaf")  # pragma: no cover
