"""BTF, the kernel's own type data (``CONFIG_DEBUG_INFO_BTF``), decoded into struct layouts.

A kernel built with BTF keeps it in its image between ``__start_BTF`` and ``__stop_BTF``:
a header, a type section and a string section (the format of the kernel's
``include/uapi/linux/btf.h``). :func:`decode_btf` turns those bytes into :class:`Btf`, whose
:meth:`Btf.field` gives a member's offset by path (``thread.sp``), looking through anonymous
structs and unions and typedef/const/volatile chains, so no offset is ever hard-coded per
kernel version; :func:`format_layout` prints a layout as pahole does. Pure: bytes in,
records out.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import DecodeError, InspectorError

__all__ = [
    "BTF_MAGIC",
    "KINDS",
    "Btf",
    "BtfMember",
    "BtfType",
    "FieldLocation",
    "decode_btf",
    "format_layout",
]

BTF_MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")

#: BTF kinds by number (btf.h's ``BTF_KIND_*``)
KINDS = (
    "unknown", "int", "ptr", "array", "struct", "union", "enum", "fwd", "typedef",
    "volatile", "const", "restrict", "func", "func_proto", "var", "datasec", "float",
    "decl_tag", "type_tag", "enum64",
)  # fmt: skip

#: kinds that only qualify or rename another type
_QUALIFIERS = frozenset({"typedef", "volatile", "const", "restrict", "type_tag"})
#: kinds whose third word is a size (the others: a type id)
_SIZED = frozenset({"int", "enum", "struct", "union", "datasec", "float", "enum64"})


@dataclass(frozen=True, slots=True)
class BtfMember:
    """One member of a struct or union: its bit offset and, for a bitfield, its width."""

    name: str
    type: int
    bit_offset: int
    #: bits of a bitfield, 0 for a whole member
    bitfield_size: int = 0


@dataclass(frozen=True, slots=True)
class BtfType:
    """One BTF type (``id`` 0 is ``void``). Only the fields of its kind are set."""

    id: int
    kind: str
    name: str
    #: bytes, for int/enum/struct/union/float/datasec/enum64
    size: int = 0
    #: the type referred to: ptr, typedef, const, volatile, restrict, func, var, type_tag,
    #: the element of an array, the return type of a func_proto
    ref: int = 0
    members: tuple[BtfMember, ...] = ()
    #: array elements
    nelems: int = 0
    #: int: signed, bits, bit offset (BTF_INT_SIGNED, BTF_INT_BITS, BTF_INT_OFFSET)
    signed: bool = False
    bits: int = 0
    #: enum/enum64 values; func_proto parameter types as (name, type id)
    values: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True, slots=True)
class FieldLocation:
    """Where a member path lands: bytes from the start of the outer struct, its type."""

    path: str
    offset: int
    type: int
    #: bits within the byte at ``offset`` and width, for a bitfield (else 0, 0)
    bit_offset: int = 0
    bitfield_size: int = 0


class Btf:
    """Decoded BTF: types by id and by name.

    The DWARF of an ELF (``--elf vmlinux``) decodes into the same records
    (:mod:`.dwarf_types`, as pahole turns DWARF into the kernel's BTF), so
    ``origin`` says in messages where the types came from.
    """

    def __init__(self, types: list[BtfType], *, origin: str = "the kernel's BTF") -> None:
        self.types = types
        self.origin = origin
        self._by_name: dict[str, list[int]] = {}
        for btf_type in types:
            if btf_type.name:
                self._by_name.setdefault(btf_type.name, []).append(btf_type.id)

    def __len__(self) -> int:
        return len(self.types)

    def __getitem__(self, type_id: int) -> BtfType:
        if not 0 <= type_id < len(self.types):
            raise InspectorError(
                f"{self.origin} has no type id {type_id} (it has {len(self.types)})"
            )
        return self.types[type_id]

    def named(self, name: str, *kinds: str) -> BtfType | None:
        """The type called ``name`` (``struct task_struct`` or ``task_struct``) of one of
        ``kinds`` (any kind when none given); a complete struct before a forward one."""
        words = name.split()
        if len(words) == 2 and words[0] in ("struct", "union", "enum"):
            kinds, name = (words[0],) if not kinds else kinds, words[1]
        found = [self.types[i] for i in self._by_name.get(name, ())]
        found = [t for t in found if not kinds or t.kind in kinds]
        found.sort(key=lambda t: (t.kind == "fwd", t.kind not in ("struct", "union")))
        return found[0] if found else None

    def struct(self, name: str) -> BtfType:
        """The struct or union ``name``, or an InspectorError that says BTF lacks it."""
        found = self.named(name, "struct", "union")
        if found is None:
            raise InspectorError(f"{self.origin} has no struct {name}")
        return found

    def strip(self, type_id: int) -> BtfType:
        """The type under its typedef/const/volatile/restrict/type_tag chain."""
        btf_type = self[type_id]
        for _ in range(64):
            if btf_type.kind not in _QUALIFIERS:
                return btf_type
            btf_type = self[btf_type.ref]
        raise InspectorError(f"BTF type {type_id}: a qualifier chain that does not end")

    def sizeof(self, type_id: int) -> int:
        """Bytes of a type (a pointer is 8: x86_64)."""
        btf_type = self.strip(type_id)
        if btf_type.kind == "ptr":
            return 8
        if btf_type.kind == "array":
            return btf_type.nelems * self.sizeof(btf_type.ref)
        return btf_type.size

    def _member(self, container: BtfType, name: str) -> tuple[int, BtfMember] | None:
        """``name`` in ``container`` or in its anonymous members: (bit offset, member)."""
        for member in container.members:
            if member.name == name:
                return member.bit_offset, member
        for member in container.members:
            if not member.name:
                inner = self.strip(member.type)
                if inner.kind in ("struct", "union"):
                    found = self._member(inner, name)
                    if found is not None:
                        return member.bit_offset + found[0], found[1]
        return None

    def field(self, struct_name: str, path: str) -> FieldLocation:
        """Where ``path`` (``thread.sp``, ``tasks``, ``comm[0]``...) lies in ``struct_name``."""
        container = self.struct(struct_name)
        bits = 0
        member: BtfMember | None = None
        type_id = container.id
        for part in path.split("."):
            name, _, index_text = part.partition("[")
            current = self.strip(type_id)
            if current.kind not in ("struct", "union"):
                raise InspectorError(
                    f"{struct_name}.{path}: {self.type_name(type_id)} has no members"
                )
            found = self._member(current, name)
            if found is None:
                raise InspectorError(
                    f"{self.origin} has no {struct_name}.{path} "
                    f"({self.type_name(current.id)} has no member {name!r})"
                )
            bits += found[0]
            member = found[1]
            type_id = member.type
            if index_text:
                array = self.strip(type_id)
                if array.kind != "array" or not index_text.endswith("]"):
                    raise InspectorError(f"{struct_name}.{path}: {name} is not an array")
                bits += int(index_text[:-1], 0) * self.sizeof(array.ref) * 8
                type_id = array.ref
                member = None
        width = member.bitfield_size if member is not None else 0
        if width:
            return FieldLocation(path, bits // 8, type_id, bits % 8, width)
        return FieldLocation(path, bits // 8, type_id)

    def offset(self, struct_name: str, path: str) -> int:
        return self.field(struct_name, path).offset

    def has_field(self, struct_name: str, path: str) -> bool:
        try:
            self.field(struct_name, path)
        except InspectorError:
            return False
        return True

    def enum_value(self, name: str) -> int | None:
        """The value of enumerator ``name`` in any enum (None: no such enumerator)."""
        for btf_type in self.types:
            if btf_type.kind in ("enum", "enum64"):
                for enumerator, value in btf_type.values:
                    if enumerator == name:
                        return value
        return None

    def type_name(self, type_id: int) -> str:
        """A type as C writes it without a declarator name (``struct list_head``, ``char[16]``)."""
        return self.declaration(type_id, "").strip()

    def declaration(self, type_id: int, name: str) -> str:
        """``type name`` as C declares it: ``char comm[16]``, ``struct mm_struct * mm``."""
        suffix = ""
        prefix = ""
        #: qualifiers of what comes next in the chain: the pointer below them (``* const``)
        #: or the base type (``const char``)
        pending: list[str] = []
        for _ in range(64):
            btf_type = self[type_id]
            kind = btf_type.kind
            if kind == "ptr":
                qualifiers = "".join(f" {q}" for q in pending)
                prefix = f"*{qualifiers} {prefix}" if qualifiers else "*" + prefix
                pending = []
            elif kind == "array":
                if prefix:  # a pointer to an array: C's (*name)[n]
                    name, prefix = f"({prefix}{name})", ""
                suffix += f"[{btf_type.nelems}]"
            elif kind in ("const", "volatile", "restrict"):
                pending.append(kind)
            elif kind == "type_tag":
                pass
            elif kind == "func_proto":
                params = ", ".join(self.type_name(t) for _, t in btf_type.values) or "void"
                inner = f"({prefix}{name}{suffix})" if prefix else f"{name}{suffix}"
                return f"{self.type_name(btf_type.ref)} {inner}({params})"
            else:
                base = " ".join([*pending, _base_name(btf_type)])
                pointer = f" {prefix}" if prefix else " "
                return f"{base}{pointer}{name}{suffix}".rstrip()
            type_id = btf_type.ref
        return f"? {name}"

    def to_dict(self, btf_type: BtfType) -> dict[str, Any]:
        """A struct/union layout as the ``type`` command's JSON gives it (docs/json.md)."""
        members = []
        for member in btf_type.members:
            members.append(
                {
                    "name": member.name,
                    "type": self.type_name(member.type),
                    "offset": member.bit_offset // 8,
                    "size": self.sizeof(member.type),
                    "bit_offset": member.bit_offset % 8 if member.bitfield_size else None,
                    "bit_size": member.bitfield_size or None,
                }
            )
        return {
            "id": btf_type.id,
            "kind": btf_type.kind,
            "name": btf_type.name,
            "size": self.sizeof(btf_type.id),
            "members": members,
        }


def _base_name(btf_type: BtfType) -> str:
    if btf_type.kind == "unknown":
        return "void"
    if btf_type.kind in ("struct", "union", "enum", "enum64"):
        keyword = "enum" if btf_type.kind == "enum64" else btf_type.kind
        return f"{keyword} {btf_type.name or '{...}'}"
    if btf_type.kind == "fwd":
        return f"struct {btf_type.name}"
    return btf_type.name or f"<{btf_type.kind}>"


def _string(strings: bytes, offset: int) -> str:
    end = strings.find(b"\0", offset)
    return strings[offset : end if end >= 0 else len(strings)].decode("utf-8", "replace")


def _words(data: bytes, offset: int, count: int) -> tuple[int, ...]:
    return struct.unpack_from(f"<{count}I", data, offset)


def decode_btf(data: bytes) -> Btf:
    """The types of a BTF blob (the bytes from ``__start_BTF`` to ``__stop_BTF``)."""
    if len(data) < _HEADER.size:
        raise DecodeError(0, f"BTF is {len(data)} bytes: shorter than its header")
    magic, version, _flags, hdr_len, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
        data
    )
    if magic != BTF_MAGIC:
        raise DecodeError(0, f"not BTF: magic {magic:#06x}, expected {BTF_MAGIC:#06x}")
    if version != 1:
        raise DecodeError(2, f"BTF version {version}: kinspect reads version 1")
    types_at = hdr_len + type_off
    strings_at = hdr_len + str_off
    if types_at + type_len > len(data) or strings_at + str_len > len(data):
        raise DecodeError(
            hdr_len, f"BTF sections end past its {len(data)} bytes (header says otherwise)"
        )
    strings = data[strings_at : strings_at + str_len]
    names: dict[int, str] = {}

    def name_at(offset: int) -> str:
        found = names.get(offset)
        if found is None:
            if offset >= len(strings):
                raise DecodeError(strings_at + offset, "a BTF name past the string section")
            found = names[offset] = _string(strings, offset)
        return found

    types = [BtfType(0, "unknown", "void")]
    for btf_type in _walk_types(data, types_at, types_at + type_len, name_at):
        types.append(btf_type)
    return Btf(types)


def _walk_types(data: bytes, at: int, end: int, name_at: Any) -> Iterator[BtfType]:
    type_id = 1
    while at < end:
        if at + 12 > end:
            raise DecodeError(at, "a BTF type cut short by the end of the type section")
        name_off, info, size_or_type = _words(data, at, 3)
        vlen = info & 0xFFFF
        kind_number = (info >> 24) & 0x1F
        kind_flag = info >> 31
        if kind_number >= len(KINDS) or kind_number == 0:
            raise DecodeError(at, f"BTF type {type_id}: unknown kind {kind_number}")
        kind = KINDS[kind_number]
        name = name_at(name_off)
        at += 12
        sized = size_or_type if kind in _SIZED else 0
        ref = 0 if kind in _SIZED else size_or_type
        record: BtfType
        if kind == "int":
            (encoding,) = _words(data, at, 1)
            at += 4
            record = BtfType(
                type_id, kind, name, size=sized, signed=bool((encoding >> 24) & 1),
                bits=encoding & 0xFF,
            )  # fmt: skip
        elif kind == "array":
            element, _index, nelems = _words(data, at, 3)
            at += 12
            record = BtfType(type_id, kind, name, ref=element, nelems=nelems)
        elif kind in ("struct", "union"):
            words = _words(data, at, 3 * vlen) if vlen else ()
            at += 12 * vlen
            members = []
            for i in range(vlen):
                member_name, member_type, offset = words[3 * i : 3 * i + 3]
                if kind_flag:
                    bits, width = offset & 0xFFFFFF, offset >> 24
                else:
                    bits, width = offset, 0
                members.append(BtfMember(name_at(member_name), member_type, bits, width))
            record = BtfType(type_id, kind, name, size=sized, members=tuple(members))
        elif kind == "enum":
            words = _words(data, at, 2 * vlen) if vlen else ()
            at += 8 * vlen
            values = []
            for i in range(vlen):
                value = words[2 * i + 1]
                if kind_flag == 0 and value & 0x80000000:  # signed (kind_flag 1: unsigned)
                    value -= 1 << 32
                values.append((name_at(words[2 * i]), value))
            record = BtfType(type_id, kind, name, size=sized, values=tuple(values))
        elif kind == "enum64":
            words = _words(data, at, 3 * vlen) if vlen else ()
            at += 12 * vlen
            values = [
                (name_at(words[3 * i]), words[3 * i + 1] | words[3 * i + 2] << 32)
                for i in range(vlen)
            ]
            record = BtfType(type_id, kind, name, size=sized, values=tuple(values))
        elif kind == "func_proto":
            words = _words(data, at, 2 * vlen) if vlen else ()
            at += 8 * vlen
            params = tuple((name_at(words[2 * i]), words[2 * i + 1]) for i in range(vlen))
            record = BtfType(type_id, kind, name, ref=ref, values=params)
        elif kind == "var":
            at += 4  # linkage
            record = BtfType(type_id, kind, name, ref=ref)
        elif kind == "datasec":
            at += 12 * vlen  # btf_var_secinfo: type, offset, size
            record = BtfType(type_id, kind, name, size=sized)
        elif kind == "decl_tag":
            at += 4  # component_idx
            record = BtfType(type_id, kind, name, ref=ref)
        else:  # ptr, fwd, typedef, volatile, const, restrict, func, float, type_tag
            record = BtfType(type_id, kind, name, size=sized, ref=ref)
        if at > end:
            raise DecodeError(at, f"BTF type {type_id} ({kind}) runs past the type section")
        yield record
        type_id += 1


def format_layout(btf: Btf, btf_type: BtfType) -> str:
    """A struct or union as pahole prints it: each member with its offset and size."""
    if btf_type.kind not in ("struct", "union"):
        target = btf.strip(btf_type.id)
        if target.kind in ("struct", "union") and target.id != btf_type.id:
            return f"{btf_type.kind} {btf_type.name} = {btf.type_name(target.id)}\n" + (
                format_layout(btf, target)
            )
        if btf_type.kind in ("enum", "enum64"):
            lines = [f"enum {btf_type.name} {{"]
            lines += [f"\t{name} = {value}," for name, value in btf_type.values]
            return "\n".join([*lines, f"}};\t/* size: {btf_type.size} */"])
        return f"{btf_type.kind} {btf_type.name or btf.type_name(btf_type.id)}: " + (
            f"{btf.type_name(btf_type.id)}, {btf.sizeof(btf_type.id)} bytes"
        )
    lines = [f"{_base_name(btf_type)} {{"]
    for member in btf_type.members:
        declaration = btf.declaration(member.type, member.name)
        offset = member.bit_offset // 8
        if member.bitfield_size:
            declaration += f":{member.bitfield_size}"
            where = f"/* {offset:5d}: {member.bit_offset % 8:d} {btf.sizeof(member.type):4d} */"
        else:
            where = f"/* {offset:5d} {btf.sizeof(member.type):6d} */"
        lines.append(f"\t{declaration + ';':<48} {where}")
    lines.append(f"}};\t/* size: {btf.sizeof(btf_type.id)}, members: {len(btf_type.members)} */")
    return "\n".join(lines)
