"""4- and 5-level (IA-32e) page tables: entries, walks, ranges, translations.

Pure: every function that needs memory takes ``read_physical(address, size)
-> bytes``, a plain callable, so tests hand it a dict of pages and the live
target hands it a GDB or agent read. Names follow the Intel SDM, Vol. 3A,
chapter 4 (4.5, Tables 4-15 to 4-20): levels 5=PML5, 4=PML4, 3=PDPT, 2=PD,
1=PT, and the entry bits P RW US PWT PCD A D PS G PAT NX.

One module a job: :mod:`.entry` decodes entries and their bits,
:mod:`.address` knows virtual addresses (the canonical check for either
mode, the index at each level), :mod:`.walk` walks whole trees (every leaf,
every table; table pages decoded as arrays, leaves kept as arrays and made
into records when asked for), :mod:`.ranges` merges leaves ptdump style (on
the arrays) and :mod:`.translate` follows one address down. Everything
public is here too.
"""

from kinspect.inspector.x86.paging.address import (
    canonicalize,
    check_canonical,
    entry_span,
    higher_half,
    is_canonical,
    level_index,
    virtual_address_bits,
)
from kinspect.inspector.x86.paging.entry import (
    ENTRIES_PER_TABLE,
    ENTRY_FIELDS,
    LEAF_SIZES,
    LEVEL_NAMES,
    LEVEL_SHIFT,
    PAGE_SIZE,
    PageTableEntry,
    Permissions,
    ReadPhysical,
    decode_entry,
    decode_table,
    format_size,
)
from kinspect.inspector.x86.paging.ranges import (
    CompactRange,
    Range,
    RangeList,
    coalesce_ranges,
    compact_ranges,
    find_alias_addresses,
    find_aliases,
)
from kinspect.inspector.x86.paging.translate import Translation, WalkStep, translate
from kinspect.inspector.x86.paging.walk import (
    AddressSpace,
    Leaf,
    LeafArrays,
    LeafSequence,
    WalkCache,
    WalkProblem,
    collect_address_space,
    walk_page_tables,
    walk_tables,
)

__all__ = [
    "ENTRIES_PER_TABLE",
    "ENTRY_FIELDS",
    "LEAF_SIZES",
    "LEVEL_NAMES",
    "LEVEL_SHIFT",
    "PAGE_SIZE",
    "AddressSpace",
    "CompactRange",
    "Leaf",
    "LeafArrays",
    "LeafSequence",
    "PageTableEntry",
    "Permissions",
    "Range",
    "RangeList",
    "ReadPhysical",
    "Translation",
    "WalkCache",
    "WalkProblem",
    "WalkStep",
    "canonicalize",
    "check_canonical",
    "coalesce_ranges",
    "compact_ranges",
    "collect_address_space",
    "decode_entry",
    "decode_table",
    "entry_span",
    "find_alias_addresses",
    "find_aliases",
    "format_size",
    "higher_half",
    "is_canonical",
    "level_index",
    "translate",
    "virtual_address_bits",
    "walk_page_tables",
    "walk_tables",
]
