"""The vmlinux ELF inside a compressed kernel image (a distribution's /boot/vmlinuz).

A bzImage carries the kernel as a compressed ELF after its setup code. The
kernel's scripts/extract-vmlinux looks for each compressor's magic and keeps
the first stream that decompresses to an ELF; :func:`extract_vmlinux` does
the same for what Python decompresses itself (xz, gzip, bzip2) and, when the
``zstandard`` module is installed, zstd. A stripped vmlinux has no symbols but
keeps its sections: ``.orc_unwind_ip``, ``.orc_unwind``, ``.rodata`` (the
banner), which is what the ORC unwinder needs.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import Callable

from ..errors import InspectorError

__all__ = ["extract_vmlinux", "is_elf"]

_ELF = b"\x7fELF"


def is_elf(data: bytes) -> bool:
    return data[:4] == _ELF


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor().decompress(data)


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _zstd(data: bytes) -> bytes:
    try:
        import zstandard
    except ImportError as exc:
        raise InspectorError(
            "this kernel image is zstd-compressed: decompress it with "
            "the kernel's scripts/extract-vmlinux, or pip install zstandard"
        ) from exc
    return bytes(zstandard.ZstdDecompressor().decompressobj().decompress(data))


_FORMATS: tuple[tuple[str, bytes, Callable[[bytes], bytes]], ...] = (
    ("xz", b"\xfd7zXZ\x00", _xz),
    ("zstd", b"\x28\xb5\x2f\xfd", _zstd),
    ("gzip", b"\x1f\x8b\x08", _gzip),
    ("bzip2", b"BZh", _bzip2),
)


def extract_vmlinux(data: bytes) -> bytes:
    """The vmlinux ELF in a kernel image (returned as is when ``data`` is one)."""
    if is_elf(data):
        return data
    errors = []
    for name, magic, decompress in _FORMATS:
        start, tries = data.find(magic), 0
        while start >= 0 and tries < 16:
            tries += 1
            try:
                out = decompress(data[start:])
            except InspectorError:
                raise
            except Exception as exc:  # a magic by chance: look further
                errors.append(f"{name} at {start:#x}: {exc}")
            else:
                if is_elf(out):
                    return out
            start = data.find(magic, start + 1)
    raise InspectorError(
        "no compressed vmlinux ELF found in this kernel image"
        + (f" ({'; '.join(errors[:3])})" if errors else "")
    )
