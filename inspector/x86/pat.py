"""IA32_PAT (MSR 0x277) and the memory type a page-table leaf selects with it.

SDM Vol. 3A 13.12 (Page Attribute Table): eight 8-bit entries PA0..PA7, each
a memory type in bits 2:0 (bits 7:3 reserved); a leaf selects entry
``PAT*4 + PCD*2 + PWT``, where PAT is bit 7 of a 4 KiB PTE and bit 12 of a
2 MiB or 1 GiB leaf. Only the agent can read the MSR (rdmsr), so this is how
kinspect says which mappings are write-back, uncached or write-combining.
Reserved encodings (2, 3) and set reserved bits are kept, not rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["MEMORY_TYPES", "PatTable", "decode_pat"]

#: Memory-type encodings of a PAT entry (SDM Vol. 3A Table 13-10).
MEMORY_TYPES = {0: "UC", 1: "WC", 4: "WT", 5: "WP", 6: "WB", 7: "UC-"}

#: The value after reset: PA0..PA7 = WB WT UC- UC WB WT UC- UC.
POWER_ON_PAT = 0x0007040600070406


@dataclass(frozen=True, slots=True)
class PatTable:
    """The eight entries of IA32_PAT, decoded."""

    value: int

    def entry(self, index: int) -> int:
        """The raw byte of PA``index``."""
        if not 0 <= index < 8:
            raise ValueError(f"PAT index {index} is not 0..7")
        return (self.value >> (8 * index)) & 0xFF

    def type_name(self, index: int) -> str:
        """The memory type of PA``index`` by its SDM name; reserved ones as ``rsvd(N)``."""
        raw = self.entry(index)
        name = MEMORY_TYPES.get(raw & 7, f"rsvd({raw & 7})")
        return name if raw < 8 else f"{name}|0x{raw & ~7:x}"

    def memory_type(self, *, pwt: bool, pcd: bool, pat: bool) -> str:
        """The memory type a leaf with these PWT/PCD/PAT bits selects (MTRRs aside)."""
        return self.type_name((4 if pat else 0) + (2 if pcd else 0) + (1 if pwt else 0))

    def memory_type_of(self, attributes: tuple[str, ...]) -> str:
        """The same, from a Range's or Leaf's attribute names ("PWT", "PCD", "PAT")."""
        return self.memory_type(
            pwt="PWT" in attributes, pcd="PCD" in attributes, pat="PAT" in attributes
        )

    def __str__(self) -> str:
        entries = " ".join(f"PA{i}={self.type_name(i)}" for i in range(8))
        return f"IA32_PAT={self.value:#018x} [{entries}]"

    def __repr__(self) -> str:
        return f"PatTable(value={self.value:#x})"

    def to_dict(self) -> dict[str, Any]:
        """JSON shape: ``{"value": int, "entries": [name, ...]}`` (PA0 first)."""
        return {"value": self.value, "entries": [self.type_name(i) for i in range(8)]}


def decode_pat(value: int) -> PatTable:
    return PatTable(value & 0xFFFFFFFFFFFFFFFF)
