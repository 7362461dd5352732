"""Recognize a running Linux kernel from outside, with no files.

The kernel image is mapped in the top 1 GiB window (``__START_KERNEL_map``
0xffffffff80000000 up to the modules at 0xffffffffc0000000): its first executable
mapping starts at ``_text``, its read-only data begins with the version banner
(``Linux version ...``) and holds the kallsyms tables. From those symbols come the
layout variables KASLR randomizes (``page_offset_base``, ``vmalloc_base``,
``vmemmap_base``). The KASLR slide is ``_text`` less its link address
0xffffffff81000000 (``__START_KERNEL``), as the kernel's own ``kaslr_offset()``.

Decoding kallsyms reads ~1.7 MB through the stub; the result is kept in the user's
cache directory (``$XDG_CACHE_HOME/kinspect``), keyed by the banner and ``_text``,
and checked against the kernel's ``kallsyms_relative_base`` and count when used. Its
header holds the few symbols recognition and the region map need (KNOWN_SYMBOLS): the
~100,000 others become a symbol table only when a command looks one up (``pt`` never).
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import io
import json
import os
import struct
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FaultError, InspectorError, TargetError
from ..symbols import SymbolTable
from ..x86.paging import Range
from .kallsyms import (
    KERNEL_MAP_END,
    KERNEL_MAP_START,
    KallsymsEntry,
    KallsymsLayout,
    deferred_symbol_table,
    find_kallsyms,
    known_addresses,
    parse_kallsyms_text,
    symbol_table,
)

__all__ = [
    "LINK_TEXT",
    "LinuxKernel",
    "cache_directory",
    "kernel_image",
    "recognize_linux",
]

ReadVirtual = Callable[[int, int], bytes]

#: ``__START_KERNEL``: where x86_64 links ``_text`` (CONFIG_PHYSICAL_START 16 MiB)
LINK_TEXT = 0xFFFFFFFF81000000
BANNER = b"Linux version "
#: how far into the read-only data the banner is looked for before kallsyms
BANNER_SEARCH = 64 * 1024
#: 2: the header holds KNOWN_SYMBOLS' addresses (1 did not: older caches are rebuilt)
CACHE_VERSION = 2
LAYOUT_VARIABLES = ("page_offset_base", "vmalloc_base", "vmemmap_base")
#: what recognition and the region map (layout.py) look up: kept in the cache's header,
#: so that commands needing no other symbol (``pt``) never read the ~100,000 others
KNOWN_SYMBOLS = ("_text", "_end", "linux_banner", *LAYOUT_VARIABLES)


@dataclass(frozen=True, slots=True)
class LinuxKernel:
    """What kinspect recognized of a running Linux kernel."""

    banner: str
    #: run-time ``_text``
    text: int
    #: ``_text`` less 0xffffffff81000000 (the kernel's ``kaslr_offset()``)
    slide: int
    #: 5-level paging (CR4.LA57)
    la57: bool
    page_offset_base: int | None
    vmalloc_base: int | None
    vmemmap_base: int | None
    #: where the symbols come from: "kallsyms" (the kernel's memory) or "file"
    symbols_from: str
    symbols_path: str | None
    symbol_count: int
    #: where the kallsyms tables are, when read from memory
    kallsyms: KallsymsLayout | None
    #: whether the symbols came from the cache, and the seconds the recognition took
    cached: bool
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "banner": self.banner,
            "text": self.text,
            "slide": self.slide,
            "la57": self.la57,
            "page_offset_base": self.page_offset_base,
            "vmalloc_base": self.vmalloc_base,
            "vmemmap_base": self.vmemmap_base,
            "symbols": {
                "from": self.symbols_from,
                "path": self.symbols_path,
                "count": self.symbol_count,
                "kallsyms": self.kallsyms.to_dict() if self.kallsyms else None,
                "cached": self.cached,
            },
            "seconds": round(self.seconds, 3),
        }

    def __str__(self) -> str:
        def hex_or_unknown(value: int | None) -> str:
            return f"{value:#018x}" if value is not None else "unknown"

        if self.symbols_from == "kallsyms" and self.kallsyms is not None:
            where = f"kallsyms in memory at {self.kallsyms.offsets:#x}" + (
                " (cached)" if self.cached else ""
            )
        else:
            where = f"file {self.symbols_path}"
        lines = [
            self.banner,
            f"_text             {self.text:#018x}  KASLR slide {self.slide:#x}",
            f"page_offset_base  {hex_or_unknown(self.page_offset_base)}",
            f"vmalloc_base      {hex_or_unknown(self.vmalloc_base)}",
            f"vmemmap_base      {hex_or_unknown(self.vmemmap_base)}",
            f"paging            {5 if self.la57 else 4}-level",
            f"symbols           {self.symbol_count:,} from {where}",
        ]
        return "\n".join(lines)


def kernel_image(ranges: Sequence[Range]) -> tuple[int, list[tuple[int, int]]]:
    """``_text`` (the first executable mapping in the kernel window) and the image's
    non-executable mappings (its data), from the page tables' ranges (in VA order: the
    window is found by bisection, so only its ranges are looked at)."""
    first = bisect.bisect_left(ranges, KERNEL_MAP_START, key=lambda r: r.start)
    stop = bisect.bisect_left(ranges, KERNEL_MAP_END, lo=first, key=lambda r: r.start)
    window = ranges[first:stop]
    text = [r for r in window if r.permissions.executable]
    if not text:
        raise InspectorError(
            "no kernel image is mapped at 0xffffffff80000000: not a Linux kernel "
            "(or not an x86_64 one)"
        )
    data = [(r.start, r.end) for r in window if not r.permissions.executable]
    return min(r.start for r in text), data


def find_banner(read_virtual: ReadVirtual, data: Sequence[tuple[int, int]]) -> str | None:
    """The ``Linux version`` line near the start of the kernel's read-only data (a page
    at a time: it is in the first one on Debian's 6.1)."""
    for start, end in data[:2]:
        limit = min(start + BANNER_SEARCH, end)
        tail = b""
        for page in range(start, limit, 4096):
            chunk = tail + read_virtual(page, min(4096, limit - page))
            at = chunk.find(BANNER)
            if at >= 0:
                text = chunk[at:]
                if b"\0" not in text and page + 4096 < end:
                    text += read_virtual(page + 4096, 4096)
                return _c_string(text)
            tail = chunk[-len(BANNER) :]
    return None


def _c_string(data: bytes) -> str:
    end = data.find(b"\0")
    return data[: end if end >= 0 else len(data)].decode("utf-8", "replace").rstrip("\n")


def cache_directory() -> Path:
    """``$XDG_CACHE_HOME/kinspect`` (``~/.cache/kinspect``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kinspect"


def _cache_path(directory: Path, banner: str, text: int) -> Path:
    key = hashlib.sha256(f"{banner}\n{text:#x}".encode()).hexdigest()[:20]
    # the version in the name: a kinspect of another version keeps its own file
    return directory / f"kallsyms-v{CACHE_VERSION}-{key}.txt.gz"


def _load_cache(
    path: Path, read_virtual: ReadVirtual
) -> tuple[KallsymsLayout, dict[str, int | None], bytes] | None:
    """The cache's layout and known addresses, when the kernel still holds the same tables
    where it says, and its compressed bytes: the symbols are read from them on first use."""
    try:
        raw = path.read_bytes()
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as stream:
            header = json.loads(stream.readline())
        if header.get("version") != CACHE_VERSION:
            return None
        layout = KallsymsLayout.from_dict(header["layout"])
        known = header["known"]
        if set(known) != set(KNOWN_SYMBOLS) or not all(
            value is None or isinstance(value, int) for value in known.values()
        ):
            return None
    except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError, zlib.error):
        return None
    # the kernel must still hold the same tables where the cache says
    try:
        (base,) = struct.unpack("<Q", read_virtual(layout.relative_base_at, 8))
        (count,) = struct.unpack("<I", read_virtual(layout.num_syms_at, 4))
    except InspectorError:
        return None
    if (base, count) != (layout.relative_base, layout.count):
        return None
    return layout, known, raw


def _cache_entries(raw: bytes, count: int) -> list[KallsymsEntry] | None:
    """The symbols of a cache file's bytes (None when damaged or not ``count`` of them)."""
    try:
        _, _, body = gzip.decompress(raw).decode("utf-8").partition("\n")
        entries = [
            KallsymsEntry(int(address, 16), kind, name)
            for address, kind, name in (line.split(" ", 2) for line in body.splitlines())
        ]
    except (OSError, EOFError, ValueError, zlib.error):
        return None
    return entries if len(entries) == count else None


def _store_cache(
    path: Path,
    layout: KallsymsLayout,
    entries: Sequence[KallsymsEntry],
    known: dict[str, int | None],
) -> None:
    """Best effort: a cache that cannot be written is only a slower next attach."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + f".{os.getpid()}.partial")
        header = json.dumps({"version": CACHE_VERSION, "layout": layout.to_dict(), "known": known})
        body = "\n".join(f"{e.address:x} {e.type} {e.name}" for e in entries)
        with gzip.open(partial, "wt", encoding="utf-8", compresslevel=1) as stream:
            stream.write(header + "\n" + body + "\n")
        partial.replace(path)
    except OSError:
        pass


def recognize_linux(
    read_virtual: ReadVirtual,
    ranges: Sequence[Range],
    *,
    la57: bool,
    kallsyms_file: str | None = None,
    cache: Path | None = None,
    use_cache: bool = True,
) -> tuple[LinuxKernel, SymbolTable]:
    """Recognize the kernel and build its symbol table (InspectorError when not Linux).

    ``kallsyms_file`` is a /proc/kallsyms copy or a System.map: its symbols are slid so
    that its ``_text`` lands on the running one. Otherwise kallsyms is decoded from
    memory, or taken from ``cache`` (default :func:`cache_directory`).
    """
    started = time.monotonic()
    text, data = kernel_image(ranges)
    try:
        banner = find_banner(read_virtual, data)
    except (FaultError, TargetError) as exc:
        raise InspectorError(f"cannot read the kernel's data to recognize it: {exc}") from exc
    if banner is None:
        raise InspectorError(
            f"no 'Linux version' banner at the start of the kernel's data "
            f"({data[0][0]:#x}): not a Linux kernel"
            if data
            else "the kernel image has no data mappings: not a Linux kernel, or one stopped in "
            "user space under PTI (its tables map only the entry code; kinspect looks again "
            "at the next stop)"
        )
    layout: KallsymsLayout | None = None
    cached = False
    if kallsyms_file is not None:
        try:
            text_file = Path(kallsyms_file).read_text(errors="replace")
        except OSError as exc:
            raise InspectorError(f"cannot read {kallsyms_file}: {exc.strerror}") from exc
        entries = parse_kallsyms_text(text_file, source=kallsyms_file)
        symbol_count = len(entries)
        table = symbol_table(entries)
        file_text = table.lookup("_text")
        if file_text is not None and file_text != text:
            table = table.with_slide(text - file_text)
    else:
        path = _cache_path(cache or cache_directory(), banner, text)

        def decode() -> tuple[KallsymsLayout, list[KallsymsEntry]]:
            try:
                layout, entries = find_kallsyms(read_virtual, data)
            except (FaultError, TargetError, struct.error) as exc:
                raise InspectorError(f"cannot read the kernel's kallsyms: {exc}") from exc
            if use_cache:
                _store_cache(path, layout, entries, known_addresses(entries, KNOWN_SYMBOLS))
            return layout, entries

        found = _load_cache(path, read_virtual) if use_cache else None
        if found is not None:
            cached = True
            layout, known, raw = found
            symbol_count = layout.count

            def cached_entries() -> list[KallsymsEntry]:
                # a damaged cache body is decoded from memory again (and rewritten)
                return _cache_entries(raw, symbol_count) or decode()[1]

            table = deferred_symbol_table(cached_entries, known)
        else:
            layout, entries = decode()
            symbol_count = len(entries)
            table = deferred_symbol_table(lambda: entries, known_addresses(entries, KNOWN_SYMBOLS))

    def variable(name: str) -> int | None:
        address = table.lookup(name)
        if address is None:
            return None
        try:
            value: int = struct.unpack("<Q", read_virtual(address, 8))[0]
        except InspectorError:
            return None
        return value

    banner_at = table.lookup("linux_banner")
    if banner_at is not None:
        try:
            banner = _c_string(read_virtual(banner_at, 512)) or banner
        except InspectorError:
            pass
    text = table.lookup("_text") or text
    kernel = LinuxKernel(
        banner=banner,
        text=text,
        slide=text - LINK_TEXT,
        la57=la57,
        page_offset_base=variable("page_offset_base"),
        vmalloc_base=variable("vmalloc_base"),
        vmemmap_base=variable("vmemmap_base"),
        symbols_from="file" if kallsyms_file is not None else "kallsyms",
        symbols_path=kallsyms_file,
        symbol_count=symbol_count,
        kallsyms=layout,
        cached=cached,
        seconds=time.monotonic() - started,
    )
    return kernel, table


def read_btf_bytes(
    read_virtual: ReadVirtual,
    lookup: Callable[[str], int | None],
    kernel: LinuxKernel,
    *,
    cache: Path | None = None,
    use_cache: bool = True,
) -> bytes:
    """The kernel's BTF (``__start_BTF`` to ``__stop_BTF``), from the cache when the
    kernel still holds the same header there (it is several MB: a minute over a stub)."""
    start, stop = lookup("__start_BTF"), lookup("__stop_BTF")
    if start is None or stop is None or stop <= start:
        raise InspectorError(
            "the kernel has no BTF (no __start_BTF/__stop_BTF in its symbols: "
            "built without CONFIG_DEBUG_INFO_BTF)"
        )
    size = stop - start
    try:
        head = read_virtual(start, min(64, size))
    except (FaultError, TargetError) as exc:
        raise InspectorError(f"cannot read the kernel's BTF at {start:#x}: {exc}") from exc
    key = hashlib.sha256(f"{kernel.banner}\n{kernel.text:#x}\n{size}".encode()).hexdigest()[:20]
    path = (cache or cache_directory()) / f"btf-{key}.bin.gz"
    if use_cache:
        try:
            data = gzip.decompress(path.read_bytes())
            if len(data) == size and data[: len(head)] == head:
                return data
        except (OSError, EOFError, gzip.BadGzipFile):
            pass
    chunks = []
    try:
        for at in range(start, stop, 1 << 16):
            chunks.append(read_virtual(at, min(1 << 16, stop - at)))
    except (FaultError, TargetError) as exc:
        raise InspectorError(f"cannot read the kernel's BTF: {exc}") from exc
    data = b"".join(chunks)
    if use_cache:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(path.name + f".{os.getpid()}.partial")
            partial.write_bytes(gzip.compress(data, compresslevel=1))
            partial.replace(path)
        except OSError:
            pass
    return data
