#!/usr/bin/env python3
"""Write the Linux test guest's initramfs: a gzip'd newc cpio, with no root and no cpio tool.

It holds /bin/busybox, /init (the script given), the directories busybox mounts on and
the two device nodes the kernel opens before any devtmpfs exists (/dev/console, /dev/null).
"""

from __future__ import annotations

import argparse
import gzip
import stat
from pathlib import Path


def newc_entry(name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> bytes:
    """One newc record: the 110-byte ASCII header, the name, the data, each padded to 4."""
    encoded = name.encode() + b"\0"
    fields = (
        0,  # inode: the kernel does not need distinct ones without hard links
        mode,
        0,  # uid
        0,  # gid
        1,  # nlink
        0,  # mtime
        len(data),
        0,  # devmajor
        0,  # devminor
        rdev[0],
        rdev[1],
        len(encoded),
        0,  # check
    )
    header = b"070701" + b"".join(b"%08x" % value for value in fields)
    record = header + encoded
    record += b"\0" * (-len(record) % 4)
    record += data
    record += b"\0" * (-len(record) % 4)
    return record


def build(busybox: bytes, init: bytes) -> bytes:
    entries = [newc_entry(d, stat.S_IFDIR | 0o755) for d in ("bin", "dev", "proc", "sys", "tmp")]
    entries.append(newc_entry("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1)))
    entries.append(newc_entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3)))
    entries.append(newc_entry("bin/busybox", stat.S_IFREG | 0o755, busybox))
    entries.append(newc_entry("bin/sh", stat.S_IFLNK | 0o777, b"busybox"))
    entries.append(newc_entry("init", stat.S_IFREG | 0o755, init))
    entries.append(newc_entry("TRAILER!!!", 0))
    return b"".join(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busybox", type=Path, required=True)
    parser.add_argument("--init", type=Path, required=True)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    archive = build(args.busybox.read_bytes(), args.init.read_bytes())
    partial = args.output.with_suffix(".partial")
    partial.write_bytes(gzip.compress(archive, mtime=0))
    partial.replace(args.output)


if __name__ == "__main__":
    main()
