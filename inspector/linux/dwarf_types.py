"""Types from DWARF (``--elf vmlinux`` built with ``-g``), for a kernel without BTF.

A kernel built without ``CONFIG_DEBUG_INFO_BTF`` (or whose BTF cannot be read)
still has its types in the DWARF of its ELF. :func:`decode_dwarf_types` turns
the type entries of pyelftools' DWARF reader into the records of :mod:`.btf`
(the kernel's own BTF is made from this DWARF by pahole, the same way), so
tasks, modules and ``type`` use one struct-layout interface, :class:`~.btf.Btf`,
whichever the types came from: member offsets, bitfields (``DW_AT_data_bit_offset``,
or DWARF 2/3's ``DW_AT_bit_offset`` counted from the storage unit's top), sizes,
arrays (a ``T a[2][3]`` is an array of arrays, as BTF has it), unions and
anonymous members.

:func:`choose_types` picks the source: the kernel's BTF when it can be read,
else this DWARF, else one line saying why neither.

Pure: pyelftools' parsed DWARF in, records out; opening the file is the caller's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InspectorError
from .btf import Btf, BtfMember, BtfType

__all__ = ["choose_types", "decode_dwarf_types"]

#: DW_TAG_* that are types, and the BTF kind each becomes
_KINDS = {
    "DW_TAG_base_type": "int",
    "DW_TAG_pointer_type": "ptr",
    "DW_TAG_reference_type": "ptr",
    "DW_TAG_rvalue_reference_type": "ptr",
    "DW_TAG_structure_type": "struct",
    "DW_TAG_class_type": "struct",
    "DW_TAG_union_type": "union",
    "DW_TAG_enumeration_type": "enum",
    "DW_TAG_typedef": "typedef",
    "DW_TAG_const_type": "const",
    "DW_TAG_volatile_type": "volatile",
    "DW_TAG_restrict_type": "restrict",
    "DW_TAG_atomic_type": "type_tag",  # _Atomic: transparent, as a type tag is
    "DW_TAG_array_type": "array",
    "DW_TAG_subroutine_type": "func_proto",
    "DW_TAG_unspecified_type": "unknown",
}

#: DW_ATE_* (DWARF 5, 7.8)
_DW_ATE_FLOAT = 0x04
_DW_ATE_SIGNED = (0x05, 0x06)  # signed, signed_char
#: DW_OP_plus_uconst: a member location as DWARF 2/3 compilers wrote it
_DW_OP_PLUS_UCONST = 0x23
#: reference forms whose value counts from the start of the unit
_UNIT_REFERENCES = frozenset(
    {"DW_FORM_ref1", "DW_FORM_ref2", "DW_FORM_ref4", "DW_FORM_ref8", "DW_FORM_ref_udata"}
)


def _name(die: Any) -> str:
    attribute = die.attributes.get("DW_AT_name")
    if attribute is None:
        return ""
    value = attribute.value
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(die: Any, name: str, default: int = 0) -> int:
    attribute = die.attributes.get(name)
    if attribute is None or not isinstance(attribute.value, int):
        return default
    return int(attribute.value)


def _uleb128(data: list[int], at: int) -> int:
    value = shift = 0
    for byte in data[at:]:
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return value


def _location(die: Any) -> int:
    """``DW_AT_data_member_location`` in bytes: a constant, or ``DW_OP_plus_uconst N``."""
    attribute = die.attributes.get("DW_AT_data_member_location")
    if attribute is None:
        return 0  # a union's members, or the first member as some compilers leave it
    value = attribute.value
    if isinstance(value, int):
        return value
    if isinstance(value, list | tuple | bytes) and value and value[0] == _DW_OP_PLUS_UCONST:
        return _uleb128(list(value), 1)
    return 0  # an expression kinspect does not evaluate: C never needs one


class _Decoder:
    def __init__(self) -> None:
        self.ids: dict[int, int] = {}  # DIE offset -> type id
        self.dies: list[tuple[Any, Any]] = []  # (unit, DIE) by type id - 1
        self.extra: list[BtfType] = []  # the inner dimensions of multi-dimensional arrays

    def collect(self, dwarf: Any) -> None:
        for unit in dwarf.iter_CUs():
            for die in unit.iter_DIEs():
                if die.tag in _KINDS:
                    self.ids[die.offset] = len(self.dies) + 1
                    self.dies.append((unit, die))

    def ref(self, unit: Any, die: Any, name: str = "DW_AT_type") -> int:
        """The type id ``name`` refers to; 0 (void) when absent or not a type."""
        attribute = die.attributes.get(name)
        if attribute is None:
            return 0
        offset = attribute.value
        if attribute.form in _UNIT_REFERENCES:
            offset += unit.cu_offset
        elif attribute.form != "DW_FORM_ref_addr":
            return 0  # a type unit's signature (DW_FORM_ref_sig8): not followed
        return self.ids.get(offset, 0)

    def record(self, type_id: int, unit: Any, die: Any) -> BtfType:
        kind = _KINDS[die.tag]
        name = _name(die)
        size = _int(die, "DW_AT_byte_size")
        if kind == "int":
            encoding = _int(die, "DW_AT_encoding")
            if encoding == _DW_ATE_FLOAT:
                return BtfType(type_id, "float", name, size=size)
            return BtfType(
                type_id, "int", name, size=size, signed=encoding in _DW_ATE_SIGNED, bits=size * 8
            )
        if kind in ("struct", "union"):
            if "DW_AT_declaration" in die.attributes:
                return BtfType(type_id, "fwd", name)
            members = tuple(
                self.member(unit, child)
                for child in die.iter_children()
                if child.tag == "DW_TAG_member"
            )
            return BtfType(type_id, kind, name, size=size, members=members)
        if kind == "enum":
            values = tuple(
                (_name(child), _int(child, "DW_AT_const_value"))
                for child in die.iter_children()
                if child.tag == "DW_TAG_enumerator"
            )
            return BtfType(type_id, kind, name, size=size, values=values)
        if kind == "array":
            return self.array(type_id, unit, die)
        if kind == "func_proto":
            params = tuple(
                (_name(child), self.ref(unit, child))
                for child in die.iter_children()
                if child.tag in ("DW_TAG_formal_parameter", "DW_TAG_unspecified_parameters")
            )
            return BtfType(type_id, kind, name, ref=self.ref(unit, die), values=params)
        if kind == "unknown":
            return BtfType(type_id, kind, name)
        return BtfType(type_id, kind, name, ref=self.ref(unit, die))  # ptr, qualifiers, typedef

    def member(self, unit: Any, die: Any) -> BtfMember:
        type_id = self.ref(unit, die)
        bits = _int(die, "DW_AT_bit_size")
        if "DW_AT_data_bit_offset" in die.attributes:  # DWARF 4 on
            return BtfMember(_name(die), type_id, _int(die, "DW_AT_data_bit_offset"), bits)
        offset = _location(die) * 8
        if bits and "DW_AT_bit_offset" in die.attributes:
            # DWARF 2/3: bits from the most significant end of a storage unit of
            # DW_AT_byte_size bytes at the location (little-endian: count from the top)
            storage = _int(die, "DW_AT_byte_size") or self.sizeof_die(unit, die)
            offset += storage * 8 - _int(die, "DW_AT_bit_offset") - bits
        return BtfMember(_name(die), type_id, offset, bits)

    def sizeof_die(self, unit: Any, die: Any) -> int:
        """The byte size of a member's type, following typedefs and qualifiers."""
        for _ in range(64):
            type_id = self.ref(unit, die)
            if not type_id:
                return 0
            unit, die = self.dies[type_id - 1]
            if "DW_AT_byte_size" in die.attributes:
                return _int(die, "DW_AT_byte_size")
        return 0

    def array(self, type_id: int, unit: Any, die: Any) -> BtfType:
        counts = []
        for child in die.iter_children():
            if child.tag == "DW_TAG_subrange_type":
                if "DW_AT_count" in child.attributes:
                    counts.append(_int(child, "DW_AT_count"))
                elif "DW_AT_upper_bound" in child.attributes:
                    upper = _int(child, "DW_AT_upper_bound", -1)
                    counts.append(max(upper - _int(child, "DW_AT_lower_bound") + 1, 0))
                else:
                    counts.append(0)  # a flexible array member: no elements of its own
        element = self.ref(unit, die)
        counts = counts or [0]
        # T a[2][3]: an array of 2 arrays of 3 T; the inner ones get ids past the DIEs'
        for count in reversed(counts[1:]):
            inner = len(self.dies) + 1 + len(self.extra)
            self.extra.append(BtfType(inner, "array", "", ref=element, nelems=count))
            element = inner
        return BtfType(type_id, "array", _name(die), ref=element, nelems=counts[0])


def decode_dwarf_types(dwarf: Any, *, origin: str = "the ELF's DWARF") -> Btf:
    """Every type in ``dwarf`` (pyelftools' ``DWARFInfo``), as :class:`~.btf.Btf` records.

    Each unit keeps its own copy of a shared type (DWARF is per compilation unit):
    :meth:`Btf.named` gives the first complete one.
    """
    decoder = _Decoder()
    decoder.collect(dwarf)
    types = [BtfType(0, "unknown", "void")]
    for type_id, (unit, die) in enumerate(decoder.dies, 1):
        types.append(decoder.record(type_id, unit, die))
    types.extend(decoder.extra)
    if len(types) == 1:
        raise InspectorError(f"{origin} has no types (built without -g?)")
    return Btf(types, origin=origin)


def choose_types(btf: Callable[[], Btf], dwarf: Callable[[], Btf] | None) -> Btf:
    """The kernel's BTF when ``btf()`` reads it; else ``dwarf()`` (the ``--elf`` file's);
    else one line saying why neither (an :class:`InspectorError`)."""
    try:
        return btf()
    except InspectorError as exc:
        reason = str(exc)
    if dwarf is None:
        raise InspectorError(f"no types: {reason}; pass --elf with a vmlinux built with -g")
    try:
        return dwarf()
    except InspectorError as exc:
        raise InspectorError(f"no types: {reason}; and {exc}") from exc
