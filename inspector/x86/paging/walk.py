"""The page walk: every leaf mapping reachable from CR3, and every table on the way.

The walker must survive anything a live or a broken kernel holds: tables
shared many times (Linux's espfix maps one page 65,536 times, and each one
is a real mapping we report), self-referencing entries, garbage CR3 values,
tables past the end of RAM. It never skips repeated tables (that would lose
real mappings); depth bounds every path and a budget bounds the total, and
whatever goes wrong is reported as a :class:`WalkProblem`, not raised.

Arrays, not entry by entry (issue 16): a table page at a level is decoded
once per walk, all 512 entries at a time (present, leaf, reserved bits,
addresses, rights; numpy), and tables are read and decoded a level at a
time. The leaves of a subtree become arrays once and are placed, offset by
VA, at every entry that reaches it. The walk keeps its leaves as arrays
(:class:`LeafArrays`) and makes the records (:class:`Leaf`) when they are
asked for: :class:`LeafSequence` reads like the tuple of records it stands
for. The order of everything and the budget are those of the entry-by-entry
walk it replaced (tests/unit/paging_reference.py keeps that one, as the
oracle). numpy is imported when a walk runs, not with this module, so that a
command that walks nothing starts without it.
"""

from __future__ import annotations

import functools
import gc
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeAlias, overload

from kinspect.inspector.errors import FaultError
from kinspect.inspector.x86.control import PagingMode
from kinspect.inspector.x86.paging.address import level_index, virtual_address_bits
from kinspect.inspector.x86.paging.entry import (
    _NX,
    _P,
    _PERMISSIONS,
    _PS,
    _U64,
    ENTRIES_PER_TABLE,
    ENTRY_FIELDS,
    LEVEL_NAMES,
    LEVEL_SHIFT,
    PAGE_SIZE,
    PageTableEntry,
    Permissions,
    ReadPhysical,
    _address_mask,
    _check_mode,
    _entry_text,
    _repr,
    _reserved_mask,
    decode_entry,
    format_size,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    U64: TypeAlias = npt.NDArray[np.uint64]
    U8: TypeAlias = npt.NDArray[np.uint8]

__all__ = [
    "AddressSpace",
    "Leaf",
    "LeafArrays",
    "LeafSequence",
    "WalkCache",
    "WalkProblem",
    "collect_address_space",
    "walk_page_tables",
    "walk_tables",
]


@dataclass(frozen=True, slots=True)
class Leaf:
    """One mapping found by a walk: a page of ``size`` bytes at ``va`` -> ``pa``.

    ``entry`` is the leaf entry itself (its own bits, as ``info tlb`` shows
    them); ``permissions`` are the effective rights over the whole path.
    ``table_path`` holds the physical address of each table walked, top
    level first, ending with the table that holds ``entry``.
    """

    va: int
    pa: int
    size: int
    level: int
    entry: PageTableEntry
    permissions: Permissions
    table_path: tuple[int, ...]

    @property
    def end(self) -> int:
        """First virtual address after the page."""
        return self.va + self.size

    @property
    def entry_address(self) -> int:
        """Physical address of the leaf entry."""
        return self.table_path[-1] + 8 * level_index(self.va, self.level)

    def __str__(self) -> str:
        return (
            f"{self.va:#018x} -> {self.pa:#x} {format_size(self.size)} "
            f"{self.permissions} [{self.entry.describe()}]"
        )

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "va": self.va,
            "pa": self.pa,
            "size": self.size,
            "level": self.level,
            "entry": self.entry.to_dict(),
            "permissions": self.permissions.to_dict(),
            "table_path": list(self.table_path),
        }


_new = object.__new__
_set_va, _set_pa, _set_size, _set_level, _set_entry, _set_permissions, _set_path = (
    getattr(Leaf, name).__set__
    for name in ("va", "pa", "size", "level", "entry", "permissions", "table_path")
)


def _leaf(
    va: int,
    pa: int,
    size: int,
    level: int,
    entry: PageTableEntry,
    permissions: Permissions,
    table_path: tuple[int, ...],
) -> Leaf:
    """``Leaf(...)``, three times faster: the walk makes one per mapped page.

    A frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``; setting the slots directly gives the same record
    (Leaf has no ``__post_init__``), and half a million of them (OVMF's map)
    cost a second less.
    """
    leaf: Leaf = _new(Leaf)
    _set_va(leaf, va)
    _set_pa(leaf, pa)
    _set_size(leaf, size)
    _set_level(leaf, level)
    _set_entry(leaf, entry)
    _set_permissions(leaf, permissions)
    _set_path(leaf, table_path)
    return leaf


@dataclass(frozen=True, slots=True)
class WalkProblem:
    """Something the walk could not follow, and why.

    ``kind`` is ``"reserved"`` (an entry with reserved bits set: the CPU
    would fault with RSVD=1, so the walk does not follow it), ``"fault"``
    (the table an entry points to cannot be read, e.g. past the end of RAM,
    or returned fewer than 4096 bytes) or ``"truncated"`` (the budget ran
    out; the walk stopped at ``va``). ``level``, ``table_address`` and
    ``index`` locate the entry concerned and ``entry`` is that entry; for a
    CR3 that cannot be read they name the top table and ``entry`` is None.
    ``va`` is the first address the entry would map.
    """

    kind: str
    va: int
    level: int
    table_address: int
    index: int
    entry: PageTableEntry | None
    reason: str

    @property
    def entry_address(self) -> int:
        """Physical address of the entry concerned."""
        return self.table_address + 8 * self.index

    def __str__(self) -> str:
        return f"{self.va:#018x}: {self.reason}"

    def __repr__(self) -> str:
        return _repr(self)

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "kind": self.kind,
            "va": self.va,
            "level": self.level,
            "table_address": self.table_address,
            "index": self.index,
            "entry": None if self.entry is None else self.entry.to_dict(),
            "reason": self.reason,
        }


_CODE_PERMISSIONS = tuple(_PERMISSIONS[(c & 1, c >> 1 & 1, c >> 2 & 1)] for c in range(8))
""":class:`Permissions` by rights code (W=1, U=2, X=4, :attr:`LeafArrays.rights`)."""


class WalkCache:
    """Decoded tables kept from one walk to the next (incremental refresh, issue 16).

    A walk given a cache reads every table page it needs as usual (the
    session reads the previous walk's pages in one bulk first), and compares
    each page's bytes with the bytes it was decoded from last time: a page
    whose bytes are equal, and whose child tables are all unchanged too
    (checked the same way, bottom up), keeps its decoded node, and with it
    the leaf arrays already made for its whole subtree. Equal bytes are the
    proof that a table is unchanged: no hash, so no collision to argue
    about. Only changed tables (and the tables above them, cheaply: their
    own entries are decoded again, their unchanged subtrees are not) are
    decoded again. A cache is for one paging mode (MAXPHYADDR and NXE
    change what the bits mean); given another, it starts over.
    """

    __slots__ = ("_key", "_read", "nodes")

    #: Nodes kept at most; past this, only the last walk's are kept.
    LIMIT = 1 << 14

    def __init__(self) -> None:
        self.nodes: dict[tuple[int, int], _Node] = {}
        self._key: tuple[int, bool] | None = None
        self._read: dict[int, list[int]] = {}

    def pages(self, cr3: int) -> list[int]:
        """The table pages the last walk from ``cr3``'s root read (to read them in bulk
        before the next), ascending."""
        return self._read.get(cr3 & ~0xFFF & ((1 << 52) - 1), [])

    def _for_mode(self, mode: PagingMode) -> dict[tuple[int, int], _Node]:
        key = (mode.maxphyaddr, mode.nxe)
        if key != self._key:
            self.nodes = {}
            self._key = key
        return self.nodes

    def _keep(self, nodes: dict[tuple[int, int], _Node]) -> None:
        if len(self.nodes) + len(nodes) > self.LIMIT:
            self.nodes = {}
            self._read = {}
        self.nodes.update(nodes)


class LeafArrays:
    """A walk's leaves as a struct of arrays, in VA order (numpy, one element a leaf).

    ``va`` (canonical), ``pa``, ``size``, ``raw`` (the leaf entry), ``level`` and
    ``rights`` (effective permissions over the whole path: W=1, U=2, X=4). The
    records (:class:`Leaf`) are made from these when asked for; analyses that
    look at every leaf (ranges, aliases) read the arrays.
    """

    __slots__ = (
        "_entries",
        "_levels",
        "_paths",
        "_root",
        "level",
        "memo",
        "pa",
        "raw",
        "rights",
        "size",
        "va",
    )

    def __init__(
        self,
        va: U64,
        pa: U64,
        raw: U64,
        level: U8,
        rights: U8,
        *,
        root: _Node | None = None,
        levels: int = 4,
    ) -> None:
        import numpy as np

        self.va = va
        self.pa = pa
        self.raw = raw
        self.level = level
        self.rights = rights

        # 4 KiB << 9 per level above 1: 12, 21, 30 bits
        self.size: U64 = np.uint64(1) << (level * np.uint8(9) + np.uint8(3)).astype(np.uint64)
        self._root = root
        self._levels = levels
        self._entries: dict[int, PageTableEntry] = {}
        self._paths: dict[tuple[int, int], tuple[int, ...]] = {}
        #: what analyses derived from these leaves keep (the ranges), to be asked once
        self.memo: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.va)

    def _path(self, va: int, level: int) -> tuple[int, ...]:
        """The tables walked down to the leaf at ``va``: found again from the indices."""
        key = (va >> (LEVEL_SHIFT[level] + 9), level)
        path = self._paths.get(key)
        if path is None:
            node = self._root
            assert node is not None
            tables = [node.table]
            for lv in range(self._levels, level, -1):
                kid = node.kids[(va >> LEVEL_SHIFT[lv]) & (ENTRIES_PER_TABLE - 1)]
                assert not isinstance(kid, str)
                node = kid
                tables.append(node.table)
            path = tuple(tables)
            if len(self._paths) > 1 << 16:
                self._paths.clear()
            self._paths[key] = path
        return path

    def entry_bits(self, start: int = 0, stop: int | None = None) -> U64:
        """The leaf entries ``start:stop`` without their address field (bits 12 or 13 to
        51): with the level and the rights, all a leaf's text and dict say besides its
        numbers (VA, PA, the entry, its table path)."""
        import numpy as np

        cut = slice(start, stop)
        large = np.uint64(_U64 & ~_ADDRESS_FIELD[True])
        small = np.uint64(_U64 & ~_ADDRESS_FIELD[False])
        bits: U64 = self.raw[cut] & np.where(self.level[cut] == 1, small, large)
        return bits

    def table_paths(
        self, start: int = 0, stop: int | None = None
    ) -> tuple[list[tuple[int, ...]], Any]:
        """The table paths (:attr:`Leaf.table_path`) of the leaves ``start:stop``, each
        once, and for each leaf the index of its own in that list (an array)."""
        import numpy as np

        cut = slice(start, stop)
        level = self.level[cut]
        if self._root is None:
            return [()], np.zeros(len(level), dtype=np.intp)
        va = self.va[cut] & np.uint64(_VA_MASK[self._levels])
        shift = np.array(_TABLE_SHIFT, dtype=np.uint64)[level]
        key = va >> shift | level.astype(np.uint64) << np.uint64(60)
        _, first, index = np.unique(key, return_index=True, return_inverse=True)
        paths = [self._path(int(va[i]), int(level[i])) for i in first.tolist()]
        return paths, index.reshape(-1)

    def records(self, start: int = 0, stop: int | None = None) -> list[Leaf]:
        """The leaves ``start:stop`` as records (neighbours share their entry and path
        records: a leaf's table path is found again from its VA's indices)."""
        cut = slice(start, stop)
        out: list[Leaf] = []
        append = out.append
        permissions = _CODE_PERMISSIONS
        entries = self._entries
        if len(entries) > 1 << 16:
            entries.clear()
        rows = zip(
            self.va[cut].tolist(),
            self.pa[cut].tolist(),
            self.size[cut].tolist(),
            self.level[cut].tolist(),
            self.raw[cut].tolist(),
            self.rights[cut].tolist(),
            strict=True,
        )
        mask = _VA_MASK[self._levels]
        rooted = self._root is not None
        new = _new
        set_va, set_pa, set_size, set_level = _set_va, _set_pa, _set_size, _set_level
        set_entry, set_permissions, set_path = _set_entry, _set_permissions, _set_path
        last_table = -1
        path: tuple[int, ...] = ()
        for va, pa, size, level, raw, rights in rows:
            table = (va & mask) >> _TABLE_SHIFT[level] | level << 60
            if table != last_table:
                last_table = table
                if rooted:
                    path = self._path(va & mask, level)
            key = raw << 3 | level
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = PageTableEntry(raw, level, pa, 0)
            leaf = new(Leaf)
            set_va(leaf, va)
            set_pa(leaf, pa)
            set_size(leaf, size)
            set_level(leaf, level)
            set_entry(leaf, entry)
            set_permissions(leaf, permissions[rights])
            set_path(leaf, path)
            append(leaf)
        return out

    @classmethod
    def from_leaves(cls, leaves: Iterable[object]) -> LeafArrays:
        """Arrays of leaf records (anything else in ``leaves``, a problem, is skipped)."""
        import numpy as np

        rows = [
            (
                leaf.va,
                leaf.pa,
                leaf.entry.raw,
                leaf.level,
                leaf.permissions.writable
                | leaf.permissions.user << 1
                | leaf.permissions.executable << 2,
                leaf.size,
            )
            for leaf in leaves
            if isinstance(leaf, Leaf)
        ]
        if not rows:
            empty = np.zeros(0, dtype=np.uint64)
            return cls(empty, empty, empty, empty.astype(np.uint8), empty.astype(np.uint8))
        va, pa, raw, level, rights, size = zip(*rows, strict=True)
        made = cls(
            np.array(va, dtype=np.uint64),
            np.array(pa, dtype=np.uint64),
            np.array(raw, dtype=np.uint64),
            np.array(level, dtype=np.uint8),
            np.array(rights, dtype=np.uint8),
        )
        made.size = np.array(size, dtype=np.uint64)
        return made


_VA_MASK = {4: (1 << 48) - 1, 5: (1 << 57) - 1}
_ADDRESS_FIELD = {
    large: next(f.mask for f in ENTRY_FIELDS[large] if f.name == "ADDR") for large in (False, True)
}
"""The ADDR field of a 4 KiB leaf (bits 12-51) and of a larger one (13-51), by "is large"."""
_TABLE_SHIFT = (0, 21, 30, 39)
"""By leaf level: the VA bits above those that index the leaf's own table."""


class LeafSequence(Sequence[Leaf]):
    """The leaves of a walk as records, made from :class:`LeafArrays` as they are asked for.

    Behaves as the tuple of :class:`Leaf` it replaces (``len``, indexing,
    slicing, iteration, equality); ``arrays`` is the data itself.
    """

    __slots__ = ("arrays",)

    def __init__(self, arrays: LeafArrays) -> None:
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays)

    @overload
    def __getitem__(self, index: int) -> Leaf: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[Leaf, ...]: ...

    def __getitem__(self, index: int | slice) -> Leaf | tuple[Leaf, ...]:
        n = len(self.arrays)
        if isinstance(index, slice):
            start, stop, step = index.indices(n)
            if step == 1:
                return tuple(self.arrays.records(start, max(start, stop)))
            return tuple(self[i] for i in range(start, stop, step))
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError("leaf index out of range")
        return self.arrays.records(index, index + 1)[0]

    def __iter__(self) -> Iterator[Leaf]:
        n = len(self.arrays)
        for start in range(0, n, _CHUNK):
            yield from self.arrays.records(start, min(n, start + _CHUNK))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, LeafSequence | tuple | list):
            return len(self) == len(other) and all(a == b for a, b in zip(self, other, strict=True))
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<{len(self)} leaves>"


_CHUNK = 8192
"""Leaf records made at a time when iterating."""


@dataclass(frozen=True, slots=True)
class AddressSpace:
    """Everything one walk found: leaves and problems in VA order, and whether it was cut.

    ``leaves`` reads like a tuple of :class:`Leaf`; the data is its
    :class:`LeafArrays` (``arrays``), from which each record is made when asked for.
    """

    cr3: int
    mode: PagingMode
    leaves: LeafSequence
    problems: tuple[WalkProblem, ...]
    truncated: bool

    @property
    def arrays(self) -> LeafArrays:
        """The leaves as arrays (VA, PA, size, entry, level, rights)."""
        return self.leaves.arrays

    def to_dict(self) -> dict[str, Any]:
        """JSON shape, see ``docs/json.md``."""
        return {
            "cr3": self.cr3,
            "mode": self.mode.to_dict(),
            "leaves": [leaf.to_dict() for leaf in self.leaves],
            "problems": [problem.to_dict() for problem in self.problems],
            "truncated": self.truncated,
        }


_LEAVES, _CHILD, _BAD = 0, 1, 2
"""Kinds of a table's segments: a run of its own clean leaves, a table entry, a reserved one."""

_W, _U, _NXC = 1, 2, 4
"""Rights codes during a walk: RW and US ANDed along the path, NX ORed."""

_X = 4
"""Rights codes of a finished walk (:attr:`LeafArrays.rights`): W=1, U=2, X=4."""


@functools.cache
def _empty() -> tuple[U64, U8]:
    """Empty arrays of leaves' two types (numpy is imported when a walk runs)."""
    import numpy as np

    return np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.uint8)


class _Node:
    """One table page decoded at one level, all 512 entries at once (numpy).

    ``segments`` are its present entries in index order: runs of clean leaves
    (``(_LEAVES, first, end)`` into the ``leaf_*`` arrays), table entries
    (``(_CHILD, index, raw, table)``) and entries with reserved bits
    (``(_BAD, index, problem)``, the problem's ``va`` relative to the table).
    ``kids`` are the child nodes by index once resolved; ``leaves`` and
    ``entries`` count the whole subtree once :meth:`_Walker.subtree` has seen it,
    and ``full`` is the subtree's leaves as arrays, made once however many
    places reach it.
    """

    __slots__ = (
        "data",
        "entries",
        "full",
        "kids",
        "leaf_code",
        "leaf_level",
        "leaf_pa",
        "leaf_raw",
        "leaf_va",
        "leaves",
        "level",
        "root",
        "segments",
        "table",
    )

    def __init__(self, table: int, level: int, data: bytes) -> None:
        self.table = table
        self.level = level
        self.data = data
        self.kids: dict[int, _Node | str] = {}
        self.leaves = -1  # not counted yet
        self.entries = -1
        self.full: _Full | None = None
        self.root: tuple[LeafArrays, list[WalkProblem]] | None = None
        self.segments: list[tuple[Any, ...]] = []
        self.leaf_va = self.leaf_pa = self.leaf_raw = _empty()[0]
        self.leaf_code = self.leaf_level = _empty()[1]

    def shallow_copy(self) -> _Node:
        """The same decoded entries, for a subtree that changed below (counts, kids and
        arrays made again; the original stays as an earlier walk left it)."""
        copy = _Node(self.table, self.level, self.data)
        copy.segments = self.segments
        copy.leaf_va, copy.leaf_pa = self.leaf_va, self.leaf_pa
        copy.leaf_raw, copy.leaf_code = self.leaf_raw, self.leaf_code
        copy.leaf_level = self.leaf_level
        return copy


@dataclass(slots=True)
class _Full:
    """A subtree's leaves as arrays, VAs relative to the subtree (raw, not sign-extended),
    rights codes relative to it; ``problems`` as (relative VA, problem) pairs."""

    va: U64
    pa: U64
    raw: U64
    level: U8
    code: U8
    problems: list[tuple[int, WalkProblem]]


@dataclass(slots=True)
class _Budget:
    max_leaves: int
    max_entries: int
    leaves: int = 0
    entries: int = 0
    stopped: bool = False


class _Walker:
    """One walk: table pages read once, each (table, level) decoded once."""

    def __init__(
        self,
        read_physical: ReadPhysical,
        mode: PagingMode,
        cache: WalkCache | None,
        prefetch: Callable[[list[int]], object] | None = None,
    ) -> None:
        _check_mode(mode)
        self.read_physical = read_physical
        self.prefetch = prefetch
        self.levels = levels = mode.levels
        maxphyaddr = mode.maxphyaddr
        nxe = mode.nxe
        self.maxphyaddr = maxphyaddr
        self.nxe = nxe
        self.address_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
        va_bits = virtual_address_bits(levels)
        self.sign = _U64 & ~((1 << va_bits) - 1)
        self.sign_bit = 1 << (va_bits - 1)
        self.rsvd_table = {
            lv: _reserved_mask(lv, False, nxe=nxe, maxphyaddr=maxphyaddr) for lv in LEVEL_NAMES
        }
        self.rsvd_leaf = {
            lv: _reserved_mask(lv, True, nxe=nxe, maxphyaddr=maxphyaddr) for lv in (1, 2, 3)
        }
        self.addr_leaf = {lv: _address_mask(lv, True, maxphyaddr) for lv in (1, 2, 3)}
        self.nx_shift = 61 if nxe else 64  # NX (bit 63) to the rights code's bit 2
        self.pages: dict[int, bytes | str] = {}
        self.nodes: dict[tuple[int, int], _Node] = {}
        self.counted: set[tuple[int, int]] = set()
        self.cache = cache
        self.previous = cache._for_mode(mode) if cache is not None else {}

    def canonical(self, va: int) -> int:
        return va | self.sign if va & self.sign_bit else va

    def load(self, table: int) -> bytes | str:
        """The table page's 4096 bytes, or why it cannot be read; read once per walk."""
        got = self.pages.get(table)
        if got is None:
            try:
                data = self.read_physical(table, PAGE_SIZE)
            except FaultError as error:
                got = error.reason
            else:
                if len(data) == PAGE_SIZE:
                    got = bytes(data)
                else:
                    got = f"the read gave {len(data)} bytes, not {PAGE_SIZE}"
            self.pages[table] = got
        return got

    def node(self, table: int, level: int) -> _Node | str:
        """The table at ``level`` decoded (its own entries), or why it cannot be read."""
        key = (table, level)
        node = self.nodes.get(key)
        if node is not None:
            return node
        data = self.load(table)
        if isinstance(data, str):
            return data
        (node,) = self.decode(level, [table], [data])
        self.nodes[key] = node
        return node

    def decode(self, level: int, tables: list[int], datas: list[bytes]) -> list[_Node]:
        """Table pages at ``level``, all their entries at once (one array of k x 512):
        present, leaf, reserved bits, addresses, rights."""
        import numpy as np

        k = len(tables)
        raw = np.frombuffer(b"".join(datas), dtype="<u8").reshape(k, ENTRIES_PER_TABLE)
        present = (raw & np.uint64(_P)) != 0
        table_rsvd = self.rsvd_table[level]
        bad = present & ((raw & np.uint64(table_rsvd)) != 0) if table_rsvd else None
        if level == 1:
            leaf = present
            leaf_rsvd = self.rsvd_leaf[1] & ~table_rsvd
        elif level <= 3:
            leaf = present & ((raw & np.uint64(_PS)) != 0)
            leaf_rsvd = self.rsvd_leaf[level] & ~table_rsvd  # the rest is checked above
        else:
            leaf = None
            leaf_rsvd = 0
        if leaf is not None and leaf_rsvd:
            bad_leaf = leaf & ((raw & np.uint64(leaf_rsvd)) != 0)
            bad = bad_leaf if bad is None else bad | bad_leaf
        if leaf is None:
            clean = np.zeros_like(present)
        else:
            clean = leaf if bad is None else leaf & ~bad
        shift = LEVEL_SHIFT[level]
        flat = np.flatnonzero(clean)
        r = raw.reshape(-1)[flat]
        leaf_va = ((flat & (ENTRIES_PER_TABLE - 1)) << shift).astype(np.uint64)
        leaf_pa = r & np.uint64(self.addr_leaf[level]) if level <= 3 else r
        code = (r >> np.uint64(1)) & np.uint64(_W | _U)
        if self.nxe:
            code |= (r >> np.uint64(61)) & np.uint64(_NXC)
        leaf_code = code.astype(np.uint8)
        leaf_level = np.full(len(flat), level, dtype=np.uint8)
        bounds = np.searchsorted(flat, np.arange(k + 1) * ENTRIES_PER_TABLE).tolist()
        nodes = []
        for n, table in enumerate(tables):
            node = _Node(table, level, datas[n])
            a, b = bounds[n], bounds[n + 1]
            if b > a:
                node.leaf_va = leaf_va[a:b]
                node.leaf_pa = leaf_pa[a:b]
                node.leaf_raw = r[a:b]
                node.leaf_code = leaf_code[a:b]
                node.leaf_level = leaf_level[a:b]
            nodes.append(node)
        special = np.flatnonzero(present & ~clean)
        done = [0] * k
        if len(special):
            before = np.searchsorted(flat, special).tolist()
            rows = zip(special.tolist(), before, raw.reshape(-1)[special].tolist(), strict=True)
            for at, count, value in rows:
                n, i = divmod(at, ENTRIES_PER_TABLE)
                is_leaf = level == 1 or (level <= 3 and value & _PS)
                reserved = value & (self.rsvd_leaf[level] if is_leaf else table_rsvd)
                node = nodes[n]
                count -= bounds[n]
                if count > done[n]:
                    node.segments.append((_LEAVES, done[n], count))
                    done[n] = count
                if reserved:
                    node.segments.append((_BAD, i, self.reserved_problem(node, i, value, reserved)))
                else:
                    node.segments.append((_CHILD, i, value, value & self.address_mask))
        for n, node in enumerate(nodes):
            total = bounds[n + 1] - bounds[n]
            if total > done[n]:
                node.segments.append((_LEAVES, done[n], total))
        return nodes

    def reserved_problem(self, node: _Node, i: int, raw: int, reserved: int) -> WalkProblem:
        level, table = node.level, node.table
        return WalkProblem(
            kind="reserved",
            va=i << LEVEL_SHIFT[level],  # relative: placed where the table is reached
            level=level,
            table_address=table,
            index=i,
            entry=decode_entry(raw, level, maxphyaddr=self.maxphyaddr, nxe=self.nxe),
            reason=f"{_entry_text(level, i, table + 8 * i)}: reserved bits"
            f" {reserved:#x} set in {raw:#018x} (the CPU would raise #PF with RSVD=1)",
        )

    def fault_problem(self, node: _Node, i: int, raw: int, reason: str) -> WalkProblem:
        level, table = node.level, node.table
        return WalkProblem(
            kind="fault",
            va=i << LEVEL_SHIFT[level],
            level=level,
            table_address=table,
            index=i,
            entry=decode_entry(raw, level, maxphyaddr=self.maxphyaddr, nxe=self.nxe),
            reason=f"{_entry_text(level, i, table + 8 * i)} points to a"
            f" {LEVEL_NAMES[level - 1]} at {raw & self.address_mask:#x} that cannot be read:"
            f" {reason}",
        )

    def subtree(self, table: int, level: int) -> _Node | str:
        """The table with every table below it resolved and its leaves and entries counted.

        Tables are read and decoded a level at a time (one array for all the
        tables of a level). A table cached from an earlier walk is taken as it
        was when its bytes are the same and so is every table below it
        (compared the same way, bottom up); one whose bytes are the same but
        whose subtree changed keeps its decoded entries only.
        """
        key = (table, level)
        if key in self.counted:
            return self.nodes[key]
        found: dict[int, list[_Node]] = {}
        frontier = [table]
        for lv in range(level, 0, -1):
            fresh_tables: list[int] = []
            fresh_datas: list[bytes] = []
            here: list[_Node] = []
            below: set[int] = set()
            if self.prefetch is not None:
                unread = [t for t in frontier if t not in self.pages]
                if len(unread) > 1:
                    self.prefetch(unread)
            for t in frontier:
                k = (t, lv)
                if k in self.counted:
                    continue
                node = self.nodes.get(k)
                if node is None:
                    data = self.load(t)
                    if isinstance(data, str):
                        continue
                    old = self.previous.get(k)
                    if old is not None and old.data == data:
                        node = self.nodes[k] = old
                    else:
                        fresh_tables.append(t)
                        fresh_datas.append(data)
                        continue
                here.append(node)
            if fresh_tables:
                for node in self.decode(lv, fresh_tables, fresh_datas):
                    self.nodes[(node.table, lv)] = node
                    here.append(node)
            for node in here:
                for segment in node.segments:
                    if segment[0] == _CHILD:
                        below.add(segment[3])
            found[lv] = here
            frontier = list(below)
            if not frontier:
                break
        for lv in sorted(found):
            for node in found[lv]:
                self.count(node)
        return self.nodes[key] if key in self.nodes else self.pages[table]  # type: ignore[return-value]

    def count(self, node: _Node) -> None:
        """Resolve the node's children (counted already: bottom up) and count its subtree;
        an unchanged node from the cache with unchanged children is kept whole."""
        level = node.level
        key = (node.table, level)
        kids: dict[int, _Node | str] = {}
        for segment in node.segments:
            if segment[0] == _CHILD:
                child = self.nodes.get((segment[3], level - 1))
                kids[segment[1]] = child if child is not None else str(self.pages[segment[3]])
        if node.leaves >= 0:  # from an earlier walk
            if all(
                kid is node.kids.get(i) or (isinstance(kid, str) and kid == node.kids.get(i))
                for i, kid in kids.items()
            ):
                self.counted.add(key)
                return
            node = self.nodes[key] = node.shallow_copy()
        node.kids = kids
        leaves = len(node.leaf_va)
        entries = leaves
        for segment in node.segments:
            if segment[0] != _LEAVES:
                entries += 1
        for kid in kids.values():
            if not isinstance(kid, str):
                leaves += kid.leaves
                entries += kid.entries
        node.leaves, node.entries = leaves, entries
        self.counted.add(key)

    def full(self, node: _Node) -> _Full:
        """Every leaf of a counted subtree as arrays, each shared subtree's made once and
        placed at every entry that reaches it."""
        import numpy as np

        if node.full is not None:
            return node.full
        shift = LEVEL_SHIFT[node.level]
        vas: list[U64] = []
        pas: list[U64] = []
        raws: list[U64] = []
        levels: list[U8] = []
        codes: list[U8] = []
        offsets: list[int] = []
        keeps: list[int] = []
        adds: list[int] = []
        counts: list[int] = []
        problems: list[tuple[int, WalkProblem]] = []
        for segment in node.segments:
            kind = segment[0]
            if kind == _LEAVES:
                first, end = segment[1], segment[2]
                vas.append(node.leaf_va[first:end])
                pas.append(node.leaf_pa[first:end])
                raws.append(node.leaf_raw[first:end])
                levels.append(node.leaf_level[first:end])
                codes.append(node.leaf_code[first:end])
                offsets.append(0)
                keeps.append(7)
                adds.append(0)
                counts.append(end - first)
                continue
            i = segment[1]
            if kind == _BAD:
                problems.append((i << shift, segment[2]))
                continue
            child = node.kids[i]
            entry = segment[2]
            if isinstance(child, str):
                problems.append((i << shift, self.fault_problem(node, i, entry, child)))
                continue
            sub = self.full(child)
            base = i << shift
            if len(sub.va):
                vas.append(sub.va)
                pas.append(sub.pa)
                raws.append(sub.raw)
                levels.append(sub.level)
                codes.append(sub.code)
                offsets.append(base)
                keep, add = self.masks(entry)
                keeps.append(keep)
                adds.append(add)
                counts.append(len(sub.va))
            if sub.problems:
                problems += [(rel + base, p) for rel, p in sub.problems]
        if not vas:
            e64, e8 = _empty()
            node.full = _Full(e64, e64, e64, e8, e8, problems)
        elif len(vas) == 1 and offsets[0] == 0 and keeps[0] == 7 and adds[0] == 0:
            node.full = _Full(vas[0], pas[0], raws[0], levels[0], codes[0], problems)
        else:
            narrow = any(keep != 7 for keep in keeps) or any(adds)
            if len(vas) * 64 > node.leaves:  # many small pieces: offsets repeated, at once
                va = np.concatenate(vas)
                va += np.repeat(np.array(offsets, dtype=np.uint64), counts)
                code = np.concatenate(codes)
                if narrow:
                    code &= np.repeat(np.array(keeps, dtype=np.uint8), counts)
                    code |= np.repeat(np.array(adds, dtype=np.uint8), counts)
            else:  # few large pieces (OVMF's PDs): each offset where it is
                va = np.concatenate(
                    [v + np.uint64(o) if o else v for v, o in zip(vas, offsets, strict=True)]
                )
                if narrow:
                    codes = [
                        (c & np.uint8(k)) | np.uint8(a) if k != 7 or a else c
                        for c, k, a in zip(codes, keeps, adds, strict=True)
                    ]
                code = np.concatenate(codes)
            node.full = _Full(
                va,
                np.concatenate(pas),
                np.concatenate(raws),
                np.concatenate(levels),
                code,
                problems,
            )
        return node.full

    def masks(self, entry: int) -> tuple[int, int]:
        """What a table entry does to the rights codes of the leaves below it."""
        keep = (entry >> 1) & (_W | _U) | _NXC
        add = _NXC if self.nxe and entry & _NX else 0
        return keep, add

    def place(self, sub: _Full, base: int, keep: int, add: int) -> Iterator[_Item]:
        """A subtree's leaves and problems at ``base``, in VA order."""
        import numpy as np

        va = sub.va + np.uint64(base) if base else sub.va
        code = (sub.code & np.uint8(keep)) | np.uint8(add) if keep != 7 or add else sub.code
        done = 0
        for rel, problem in sub.problems:
            at = int(np.searchsorted(sub.va, np.uint64(rel)))
            if at > done:
                yield _Piece(va[done:at], sub.pa[done:at], sub.raw[done:at],
                             sub.level[done:at], code[done:at])  # fmt: skip
                done = at
            yield replace(problem, va=self.canonical(base + rel))
        if len(va) > done:
            yield _Piece(va[done:], sub.pa[done:], sub.raw[done:], sub.level[done:], code[done:])

    def emit(
        self, node: _Node, base: int, keep: int, add: int, budget: _Budget, deep: int
    ) -> Iterator[_Item]:
        """The subtree at ``base`` entry by entry in VA order, counting the budget as the
        entry-by-entry walk does; whole subtrees that fit go at once (levels <= ``deep``)."""
        import numpy as np

        level = node.level
        shift = LEVEL_SHIFT[level]
        for segment in node.segments:
            kind = segment[0]
            if kind == _LEAVES:
                first, end = segment[1], segment[2]
                k = end - first
                fits = min(
                    k, budget.max_entries - budget.entries, budget.max_leaves - budget.leaves
                )
                fits = max(fits, 0)
                if fits:
                    cut = slice(first, first + fits)
                    code = node.leaf_code[cut]
                    yield _Piece(
                        node.leaf_va[cut] + np.uint64(base),
                        node.leaf_pa[cut],
                        node.leaf_raw[cut],
                        np.full(fits, level, dtype=np.uint8),
                        (code & np.uint8(keep)) | np.uint8(add),
                    )
                    budget.entries += fits
                    budget.leaves += fits
                if fits < k:
                    budget.entries += 1
                    i = int(node.leaf_va[first + fits] >> np.uint64(shift))
                    yield self.truncated(node, i, base, budget)
                    budget.stopped = True
                    return
                continue
            i = segment[1]
            budget.entries += 1
            if budget.entries > budget.max_entries or budget.leaves >= budget.max_leaves:
                yield self.truncated(node, i, base, budget)
                budget.stopped = True
                return
            va = base | (i << shift)
            if kind == _BAD:
                yield replace(segment[2], va=self.canonical(va))
                continue
            entry, table = segment[2], segment[3]
            child = node.kids.get(i) or self.node(table, level - 1)
            if isinstance(child, str):
                yield replace(self.fault_problem(node, i, entry, child), va=self.canonical(va))
                continue
            child_keep, child_add = self.masks(entry)
            ckeep, cadd = keep & int(child_keep), add | int(child_add)
            if level - 1 <= deep:
                counted = self.subtree(table, level - 1)
                assert not isinstance(counted, str)
                child = counted
                if (
                    budget.entries + child.entries <= budget.max_entries
                    and budget.leaves + child.leaves < budget.max_leaves
                ):
                    node.kids[i] = child
                    budget.entries += child.entries
                    budget.leaves += child.leaves
                    yield from self.place(self.full(child), va, ckeep, cadd)
                    continue
            node.kids[i] = child
            yield from self.emit(child, va, ckeep, cadd, budget, deep)
            if budget.stopped:
                return

    def truncated(self, node: _Node, i: int, base: int, budget: _Budget) -> WalkProblem:
        va = self.canonical(base | (i << LEVEL_SHIFT[node.level]))
        return WalkProblem(
            kind="truncated",
            va=va,
            level=node.level,
            table_address=node.table,
            index=i,
            entry=None,
            reason=f"walk stopped at {va:#x}: budget of {budget.max_leaves} leaves /"
            f" {budget.max_entries} entries exhausted (looping or shared tables?)",
        )

    def as_root(self, node: _Node) -> tuple[LeafArrays, list[WalkProblem]]:
        """The whole map below ``node`` as the top table: its arrays made once, kept on it."""
        if node.root is None:
            full = self.full(node)
            piece = _Piece(full.va, full.pa, full.raw, full.level, full.code)
            problems = [replace(p, va=self.canonical(rel)) for rel, p in full.problems]
            node.root = (_arrays(self, [piece], node), problems)
        return node.root

    def walk(self, cr3: int, budget: _Budget, *, deep: int) -> Iterator[_Item]:
        """Everything reachable from ``cr3``, in VA order (``deep``: the level up to which
        whole subtrees are counted and placed at once; the top level: all of it)."""
        root = cr3 & self.address_mask
        levels = self.levels
        top = self.subtree(root, levels) if deep >= levels else self.node(root, levels)
        if isinstance(top, str):
            yield WalkProblem(
                kind="fault",
                va=0,
                level=levels,
                table_address=root,
                index=0,
                entry=None,
                reason=f"cannot read the {LEVEL_NAMES[levels]} at {root:#x} (from CR3): {top}",
            )
            return
        if deep >= levels and top.entries <= budget.max_entries and top.leaves < budget.max_leaves:
            yield _Root(top)
            return
        yield from self.emit(top, 0, 7, 0, budget, deep)

    def finish(self, root: int) -> None:
        """Hand this walk's counted tables to the cache, for the next walk from ``root``."""
        if self.cache is not None:
            self.cache._keep({key: self.nodes[key] for key in self.counted})
            self.cache._read[root] = sorted(
                t for t, got in self.pages.items() if not isinstance(got, str)
            )


@dataclass(slots=True)
class _Piece:
    """Leaves the walk hands on: raw VAs (not sign-extended) and rights codes (NX form)."""

    va: U64
    pa: U64
    raw: U64
    level: U8
    code: U8


@dataclass(slots=True)
class _Root:
    """The whole walk at once: the top table's subtree, within the budget."""

    node: _Node


_Item = _Piece | _Root | WalkProblem


def _arrays(walker: _Walker, pieces: list[_Piece], root: _Node | None) -> LeafArrays:
    """The pieces of a walk joined, VAs made canonical and rights turned to W/U/X."""
    import numpy as np

    if not pieces:
        return LeafArrays(*(_empty()[0],) * 3, *(_empty()[1],) * 2, root=root, levels=walker.levels)
    if len(pieces) == 1:
        p = pieces[0]
        va, pa, raw, level, code = p.va, p.pa, p.raw, p.level, p.code
    else:
        va = np.concatenate([p.va for p in pieces])
        pa = np.concatenate([p.pa for p in pieces])
        raw = np.concatenate([p.raw for p in pieces])
        level = np.concatenate([p.level for p in pieces])
        code = np.concatenate([p.code for p in pieces])
    high = (va & np.uint64(walker.sign_bit)) != 0
    if high.any():
        va = np.where(high, va | np.uint64(walker.sign), va)
    return LeafArrays(va, pa, raw, level, code ^ np.uint8(_NXC), root=root, levels=walker.levels)


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Hold off Python's cycle collector while a walk builds its records.

    A walk allocates no cycles; with the collector on, a walk that makes many
    records spends more time in collections than in walking. Collection
    resumes at the end, as it was.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def walk_page_tables(
    read_physical: ReadPhysical,
    cr3: int,
    mode: PagingMode,
    *,
    max_leaves: int = 1 << 20,
    max_entries: int = 1 << 22,
) -> Iterator[Leaf | WalkProblem]:
    """Yield every leaf mapping reachable from ``cr3``, in ascending VA order.

    Problems (reserved bits, unreadable tables) are yielded as
    :class:`WalkProblem` in VA order among the leaves. Each table page is
    read once (4096 bytes) and decoded once, all 512 entries at a time; a
    table referenced many times is reported at every place it is reached,
    because every reference is a real mapping, but its leaves are made once
    and placed at each (Linux's espfix: one page 65,536 times). Termination
    on any input: depth is bounded by the number of levels, and once
    ``max_leaves`` leaves or ``max_entries`` present entries have been seen,
    counted in VA order, a final ``"truncated"`` problem is yielded and the
    walk stops. The walk stays lazy down to page directories: the first leaf
    comes before the whole map is read.

    ``cr3`` may hold flag or PCID bits; only the base (bits 12..MAXPHYADDR-1)
    is used. Raises :class:`InspectorError` only if ``mode`` is not long mode.
    """
    walker = _Walker(read_physical, mode, None)
    budget = _Budget(max_leaves, max_entries)
    root = cr3 & walker.address_mask
    for item in walker.walk(cr3, budget, deep=2):
        if isinstance(item, WalkProblem):
            yield item
        elif isinstance(item, _Piece):
            top = walker.nodes.get((root, mode.levels))
            yield from _arrays(walker, [item], top).records()


def collect_address_space(
    read_physical: ReadPhysical,
    cr3: int,
    mode: PagingMode,
    *,
    max_leaves: int = 1 << 20,
    max_entries: int = 1 << 22,
    cache: WalkCache | None = None,
    prefetch: Callable[[list[int]], object] | None = None,
) -> AddressSpace:
    """Walk everything reachable from ``cr3`` (as :func:`walk_page_tables`) into arrays.

    ``cache``: the decoded tables of earlier walks, kept and compared page by
    page (:class:`WalkCache`): what is unchanged is not decoded again, and an
    unchanged map gives back the very same arrays. ``prefetch``, when given, is
    called with the addresses of each level's tables before they are read, so
    that the caller can read them in one go (``read_physical`` then finds them).
    """
    walker = _Walker(read_physical, mode, cache, prefetch)
    budget = _Budget(max_leaves, max_entries)
    root = cr3 & walker.address_mask
    pieces: list[_Piece] = []
    problems: list[WalkProblem] = []
    arrays: LeafArrays | None = None
    with _gc_paused():
        for item in walker.walk(cr3, budget, deep=mode.levels):
            if isinstance(item, _Root):
                arrays, found = walker.as_root(item.node)
                problems += found
            elif isinstance(item, _Piece):
                pieces.append(item)
            else:
                problems.append(item)
        if arrays is None:
            arrays = _arrays(walker, pieces, walker.nodes.get((root, mode.levels)))
    walker.finish(root)
    truncated = any(p.kind == "truncated" for p in problems)
    return AddressSpace(cr3, mode, LeafSequence(arrays), tuple(problems), truncated)


def walk_tables(
    read_physical: ReadPhysical, cr3: int, mode: PagingMode
) -> Iterator[tuple[int, int]]:
    """Yield ``(level, address)`` of every page table reachable from ``cr3``, the top one first.

    This is which pages hold paging structures (what a remap must not take
    away), not what they map: each (level, table) pair is yielded and read
    once however many entries point to it, so shared and self-referencing
    tables end the walk. Entries with reserved bits are not followed (the
    CPU faults on them, as the agent's own table census skips them); a
    table that cannot be read is yielded, and not descended into. Raises
    :class:`InspectorError` only if ``mode`` is not long mode.
    """
    _check_mode(mode)
    maxphyaddr = mode.maxphyaddr
    address_mask = ((1 << maxphyaddr) - 1) & ~0xFFF
    rsvd = {
        lv: _reserved_mask(lv, False, nxe=mode.nxe, maxphyaddr=maxphyaddr) for lv in LEVEL_NAMES
    }
    pages: dict[int, tuple[int, ...] | None] = {}
    seen: set[tuple[int, int]] = set()
    stack = [(mode.levels, cr3 & address_mask)]
    while stack:
        level, table = stack.pop()
        if (level, table) in seen:
            continue
        seen.add((level, table))
        yield level, table
        if level == 1:
            continue
        if table not in pages:
            try:
                data = read_physical(table, PAGE_SIZE)
            except FaultError:
                data = b""
            pages[table] = struct.unpack("<512Q", data) if len(data) == PAGE_SIZE else None
        raws = pages[table]
        if raws is None:
            continue
        below = level - 1
        for raw in reversed(raws):  # popped in ascending order
            if raw & _P and not (level <= 3 and raw & _PS) and not raw & rsvd[level]:
                stack.append((below, raw & address_mask))
