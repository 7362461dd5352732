"""Build x86_64 page tables in a dict of 4 KiB pages, for walker tests.

``PhysicalMemory`` is the fake RAM (pages created on write, a read past
``ram_size`` raises FaultError like a real target would); ``PageTables``
allocates tables in it and maps pages, so a test states the mappings it
wants and the bytes follow.
"""

from __future__ import annotations

import struct

from kinspect.inspector.errors import FaultError

P, RW, US, PWT, PCD, A, D, PS, G = (1 << n for n in (0, 1, 2, 3, 4, 5, 6, 7, 8))
PAT_PTE = 1 << 7
PAT_LARGE = 1 << 12
NX = 1 << 63
SHIFT = {5: 48, 4: 39, 3: 30, 2: 21, 1: 12}
LEVEL_FOR_SIZE = {1 << 12: 1, 1 << 21: 2, 1 << 30: 3}


class PhysicalMemory:
    """Sparse RAM: missing pages read as zeros below ``ram_size``, fault above it."""

    def __init__(self, ram_size: int = 1 << 32) -> None:
        self.ram_size = ram_size
        self.pages: dict[int, bytearray] = {}
        self.reads: list[tuple[int, int]] = []

    def page(self, address: int) -> bytearray:
        base = address & ~0xFFF
        return self.pages.setdefault(base, bytearray(4096))

    def write_u64(self, address: int, value: int) -> None:
        struct.pack_into("<Q", self.page(address), address & 0xFFF, value)

    def read_u64(self, address: int) -> int:
        return struct.unpack_from("<Q", self.page(address), address & 0xFFF)[0]

    def read_physical(self, address: int, size: int) -> bytes:
        self.reads.append((address, size))
        if address + size > self.ram_size:
            raise FaultError(address, "beyond the end of RAM")
        out = bytearray()
        while size:
            chunk = min(size, 4096 - (address & 0xFFF))
            page = self.pages.get(address & ~0xFFF, bytes(4096))
            out += page[address & 0xFFF : (address & 0xFFF) + chunk]
            address += chunk
            size -= chunk
        return bytes(out)


class PageTables:
    """A tree of tables rooted at ``root``, with tables allocated from ``next_table``."""

    def __init__(
        self,
        levels: int = 4,
        memory: PhysicalMemory | None = None,
        *,
        root: int = 0x100000,
        table_flags: int = P | RW | US,
    ) -> None:
        self.levels = levels
        self.memory = memory or PhysicalMemory()
        self.root = root
        self.next_table = root + 0x1000
        self.table_flags = table_flags
        self.memory.page(root)

    def alloc(self) -> int:
        address = self.next_table
        self.next_table += 0x1000
        self.memory.page(address)
        return address

    def entry_address(self, va: int, level: int) -> int:
        """Physical address of the entry for ``va`` at ``level`` (tables must exist)."""
        table = self.root
        for lv in range(self.levels, level, -1):
            raw = self.memory.read_u64(table + 8 * ((va >> SHIFT[lv]) & 0x1FF))
            assert raw & P, f"no table at level {lv - 1} for {va:#x}"
            table = raw & 0x000F_FFFF_FFFF_F000
        return table + 8 * ((va >> SHIFT[level]) & 0x1FF)

    def map(self, va: int, pa: int, size: int = 4096, flags: int = P | RW) -> int:
        """Map one page; return the physical address of its leaf entry."""
        leaf_level = LEVEL_FOR_SIZE[size]
        table = self.root
        for level in range(self.levels, leaf_level, -1):
            slot = table + 8 * ((va >> SHIFT[level]) & 0x1FF)
            raw = self.memory.read_u64(slot)
            if not raw & P:
                child = self.alloc()
                self.memory.write_u64(slot, child | self.table_flags)
                raw = child | self.table_flags
            table = raw & 0x000F_FFFF_FFFF_F000
        slot = table + 8 * ((va >> SHIFT[leaf_level]) & 0x1FF)
        self.memory.write_u64(slot, pa | flags | (PS if leaf_level > 1 else 0))
        return slot

    def set_flags(self, va: int, level: int, *, set_: int = 0, clear: int = 0) -> None:
        """Change flag bits of the entry for ``va`` at ``level`` (e.g. NX on a PML4E)."""
        slot = self.entry_address(va, level)
        self.memory.write_u64(slot, (self.memory.read_u64(slot) | set_) & ~clear)
