"""Build .eh_frame and .debug_frame bytes by hand, for the CFI and unwinder tests."""

from __future__ import annotations

import struct


def uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def sleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        done = (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40)
        out.append(byte | (0 if done else 0x80))
        if done:
            return bytes(out)


# A few CFA instructions (DWARF 5, 6.4.2), data alignment -8.
def def_cfa(reg: int, offset: int) -> bytes:
    return b"\x0c" + uleb(reg) + uleb(offset)


def def_cfa_offset(offset: int) -> bytes:
    return b"\x0e" + uleb(offset)


def def_cfa_register(reg: int) -> bytes:
    return b"\x0d" + uleb(reg)


def offset(reg: int, cfa_offset: int) -> bytes:
    """DW_CFA_offset: reg saved at CFA+cfa_offset (a multiple of -8)."""
    assert cfa_offset % -8 == 0
    return bytes([0x80 | reg]) + uleb(cfa_offset // -8)


def advance(delta: int) -> bytes:
    return bytes([0x40 | delta]) if delta < 0x40 else b"\x02" + bytes([delta])


def undefined(reg: int) -> bytes:
    return b"\x07" + uleb(reg)


REMEMBER, RESTORE_STATE = b"\x0a", b"\x0b"


def _pad(body: bytes) -> bytes:
    return body + b"\x00" * (-(len(body) + 4) % 8)


class EhFrame:
    """An .eh_frame at ``address``: CIEs with augmentation zR (pcrel sdata4) or zRS."""

    def __init__(self, address: int) -> None:
        self.address = address
        self.data = bytearray()

    def cie(self, initial: bytes, *, signal: bool = False) -> int:
        at = len(self.data)
        aug = b"zRS\x00" if signal else b"zR\x00"
        body = struct.pack("<I", 0) + b"\x01" + aug + uleb(1) + sleb(-8) + b"\x10"
        body += uleb(1) + b"\x1b" + initial
        body = _pad(body)
        self.data += struct.pack("<I", len(body)) + body
        return at

    def fde(self, cie: int, start: int, end: int, instructions: bytes = b"") -> None:
        at = len(self.data)
        pointer_pos = at + 4
        pc_pos = at + 8
        body = struct.pack("<I", pointer_pos - cie)
        body += struct.pack("<i", start - (self.address + pc_pos))
        body += struct.pack("<i", end - start) + uleb(0) + instructions
        body = _pad(body)
        self.data += struct.pack("<I", len(body)) + body

    def bytes(self) -> bytes:
        return bytes(self.data) + b"\x00\x00\x00\x00"


class DebugFrame:
    """A .debug_frame (version 4, 8-byte addresses, CIE pointers from the section start)."""

    def __init__(self) -> None:
        self.data = bytearray()

    def cie(self, initial: bytes) -> int:
        at = len(self.data)
        body = struct.pack("<I", 0xFFFFFFFF) + b"\x04" + b"\x00" + b"\x08\x00"
        body += uleb(1) + sleb(-8) + uleb(16) + initial
        body = _pad(body)
        self.data += struct.pack("<I", len(body)) + body
        return at

    def fde(self, cie: int, start: int, end: int, instructions: bytes = b"") -> None:
        body = struct.pack("<IQQ", cie, start, end - start) + instructions
        body = _pad(body)
        self.data += struct.pack("<I", len(body)) + body

    def bytes(self) -> bytes:
        return bytes(self.data)
