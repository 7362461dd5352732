"""The BTF decoder on BTF built here, byte by byte, as btf.h lays it out."""

import struct

import pytest

from kinspect.inspector.errors import DecodeError, InspectorError
from kinspect.inspector.linux.btf import decode_btf, format_layout


class Builder:
    """BTF bytes: types appended one by one (ids from 1), names in a string section."""

    def __init__(self):
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def name(self, text):
        if not text:
            return 0
        offset = len(self.strings)
        self.strings += text.encode() + b"\0"
        return offset

    def add(self, kind, name, size_or_type, extra=b"", vlen=0, kind_flag=0):
        info = (kind_flag << 31) | (kind << 24) | vlen
        self.types += struct.pack("<III", self.name(name), info, size_or_type) + extra
        self.count += 1
        return self.count

    def int(self, name, size, signed=False):
        return self.add(1, name, size, struct.pack("<I", (int(signed) << 24) | size * 8))

    def ptr(self, target):
        return self.add(2, "", target)

    def array(self, element, index, n):
        return self.add(3, "", 0, struct.pack("<III", element, index, n))

    def struct(self, name, size, members, kind=4, bitfields=False):
        extra = b"".join(
            struct.pack("<III", self.name(n), t, (w << 24 | off) if bitfields else off)
            for n, t, off, w in members
        )
        return self.add(kind, name, size, extra, len(members), int(bitfields))

    def qualifier(self, kind, name, target):
        return self.add(kind, name, target)

    def bytes(self):
        header = struct.pack(
            "<HBBIIIII", 0xEB9F, 1, 0, 24, 0, len(self.types), len(self.types), len(self.strings)
        )
        return header + bytes(self.types) + bytes(self.strings)


def sample():
    b = Builder()
    u64 = b.int("unsigned long", 8)
    i32 = b.int("int", 4, signed=True)
    char = b.int("char", 1, signed=True)
    comm = b.array(char, i32, 16)
    fwd_lh = b.add(7, "list_head", 0)  # a forward declaration before the definition
    lh = b.count + 1  # its members point at the pointer type that follows it
    b.struct("list_head", 16, [("next", lh + 1, 0, 0), ("prev", lh + 1, 64, 0)])
    lh_ptr = b.ptr(lh)
    assert lh_ptr == lh + 1
    thread = b.struct("thread_struct", 16, [("sp", u64, 0, 0), ("fsbase", u64, 64, 0)])
    flags = b.struct(
        "",
        4,
        [("in_execve", u64, 0, 1), ("in_iowait", u64, 1, 1), ("kind", u64, 3, 5)],
        bitfields=True,
    )
    anon = b.struct("", 8, [("pid", i32, 0, 0), ("tgid", i32, 32, 0)], kind=5)  # a union
    volatile_u64 = b.qualifier(9, "", u64)
    const_v = b.qualifier(10, "", volatile_u64)
    typedef = b.qualifier(8, "pgd_t", const_v)
    task = b.struct(
        "task_struct",
        72,
        [
            ("__state", volatile_u64, 0, 0),
            ("tasks", lh, 64, 0),
            ("", anon, 192, 0),
            ("comm", comm, 256, 0),
            ("", flags, 384, 0),
            ("pgd", typedef, 416, 0),
            ("thread", thread, 448, 0),
        ],
    )
    return b, task, fwd_lh


def test_struct_layout_by_path():
    b, task, _ = sample()
    btf = decode_btf(b.bytes())
    assert btf.struct("task_struct").id == task
    assert btf.offset("task_struct", "tasks") == 8
    assert btf.offset("task_struct", "tasks.prev") == 16
    assert btf.offset("task_struct", "thread.sp") == 56
    assert btf.offset("task_struct", "thread.fsbase") == 64
    # anonymous union members are found through it
    assert btf.offset("task_struct", "tgid") == 28
    assert btf.offset("task_struct", "comm[3]") == 35
    assert btf.sizeof(btf.field("task_struct", "comm").type) == 16
    assert btf.sizeof(btf.struct("task_struct").id) == 72


def test_bitfields_in_anonymous_struct():
    btf = decode_btf(sample()[0].bytes())
    field = btf.field("task_struct", "kind")
    assert (field.offset, field.bit_offset, field.bitfield_size) == (48, 3, 5)
    field = btf.field("task_struct", "in_iowait")
    assert (field.offset, field.bit_offset, field.bitfield_size) == (48, 1, 1)


def test_typedef_const_volatile_chain():
    btf = decode_btf(sample()[0].bytes())
    field = btf.field("task_struct", "pgd")
    assert btf.strip(field.type).name == "unsigned long"
    assert btf.type_name(field.type) == "pgd_t"
    assert btf.sizeof(field.type) == 8


def test_complete_struct_preferred_over_forward():
    b, _, fwd = sample()
    btf = decode_btf(b.bytes())
    assert btf[fwd].kind == "fwd"
    assert btf.struct("list_head").kind == "struct"
    assert btf.named("struct list_head").size == 16


def test_layout_text_like_pahole():
    btf = decode_btf(sample()[0].bytes())
    text = format_layout(btf, btf.struct("task_struct"))
    assert "struct task_struct {" in text
    assert "char comm[16];" in text
    assert "struct list_head tasks;" in text
    assert "struct {...};" in text and "union {...};" in text
    anonymous = next(t for t in btf.types if t.kind == "struct" and not t.name)
    assert "unsigned long kind:5;" in format_layout(btf, anonymous)
    assert "size: 72" in text
    assert "struct list_head *next;" in format_layout(btf, btf.struct("list_head"))
    doc = btf.to_dict(btf.struct("task_struct"))
    assert doc["members"][1] == {
        "name": "tasks",
        "type": "struct list_head",
        "offset": 8,
        "size": 16,
        "bit_offset": None,
        "bit_size": None,
    }


def test_missing_member_is_one_clear_error():
    btf = decode_btf(sample()[0].bytes())
    with pytest.raises(InspectorError, match="no task_struct.thread.ip"):
        btf.field("task_struct", "thread.ip")
    with pytest.raises(InspectorError, match="no struct mm_struct"):
        btf.struct("mm_struct")
    assert not btf.has_field("task_struct", "cpu")


def test_bad_bytes():
    with pytest.raises(DecodeError, match="magic"):
        decode_btf(b"\0" * 32)
    with pytest.raises(DecodeError, match="shorter"):
        decode_btf(b"\x9f\xeb")
    data = bytearray(sample()[0].bytes())
    with pytest.raises(DecodeError):
        decode_btf(bytes(data[:-40]))
    data[24 + 7] = 0x1F  # kind 31 in the first type
    with pytest.raises(DecodeError, match="unknown kind"):
        decode_btf(bytes(data))


def test_enum_values():
    b = Builder()
    values = [("PIDTYPE_PID", 0), ("PIDTYPE_MAX", -1)]
    extra = b"".join(struct.pack("<Ii", b.name(n), v) for n, v in values)
    b.add(6, "pid_type", 4, extra, vlen=2)
    btf = decode_btf(b.bytes())
    assert btf.enum_value("PIDTYPE_MAX") == -1
    assert btf.enum_value("NOPE") is None


def test_declarations_put_each_qualifier_where_c_does():
    # a pointer to const and a const pointer are different declarations: the qualifier
    # after a pointer in the chain qualifies what it points to (const char *), before
    # a pointer the pointer itself (char * const)
    b = Builder()
    char = b.int("char", 1, signed=True)
    const_char = b.qualifier(10, "", char)
    to_const = b.ptr(const_char)
    ptr = b.ptr(char)
    const_ptr = b.qualifier(10, "", ptr)
    to_const_ptr = b.ptr(const_ptr)
    btf = decode_btf(b.bytes())
    assert btf.declaration(to_const, "s") == "const char *s"
    assert btf.declaration(const_ptr, "s") == "char * const s"
    assert btf.declaration(to_const_ptr, "argv") == "char * const *argv"
    assert btf.declaration(const_char, "c") == "const char c"
