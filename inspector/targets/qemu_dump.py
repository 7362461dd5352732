"""Bulk reads of a QEMU guest's physical memory through its monitor's ``pmemsave``.

QEMU 7.2's gdb stub carries at most 2 KiB of memory in a packet (its packets are 4 KiB
of hex), and gdb sends one packet at a time: OVMF's 1,028 table pages are more than
2,000 round trips, about 0.45 s. The monitor, which the stub reaches with ``qRcmd``
(gdb's ``monitor``), has ``pmemsave ADDR SIZE "FILE"``: QEMU writes guest physical
memory to a file, read the same way as the stub's physical mode reads it
(``cpu_physical_memory_read``), any size in one round trip. So a batch of table reads
becomes a few monitor commands, each writing one span to a file in a private directory,
which this process reads and deletes.

It works only when QEMU writes where we read: the same host and file system, a QEMU
allowed to write there. :class:`MonitorDumps` says so by returning None (the caller reads
through the stub then, and stops asking); the caller also checks the first bulk read
against the stub's own answer before trusting the path.

Requests are read as asked; neighbours a small gap apart are one span only inside
:data:`RAM_FLOOR` .. ``min(RAM, 2 GiB)``, which is RAM on every QEMU x86 machine (pc,
q35, microvm): the bytes of a gap are read too, and outside RAM they could be a device's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

__all__ = ["MERGE_GAP", "RAM_FLOOR", "SPAN_LIMIT", "MonitorDumps", "plan_spans"]

#: Requests at most this far apart are one ``pmemsave`` (inside plain RAM): a command costs
#: about 0.25 ms, writing and reading a dumped KiB about 2 us.
MERGE_GAP = 128 * 1024
#: The most one ``pmemsave`` writes (a larger request is cut).
SPAN_LIMIT = 16 << 20
#: Where RAM starts past the legacy hole (VGA window, option ROMs, the BIOS below 1 MiB).
RAM_FLOOR = 1 << 20
#: Below 2 GiB, QEMU's x86 machines keep all RAM from 1 MiB up (q35 moves RAM above 4 GiB
#: from 2 GiB up when it has more than 2.75 GiB; pc from 3 GiB).
RAM_CEILING = 1 << 31

#: Runs monitor command lines (in order, pipelined) and gives each one's output, or None
#: for a command that failed.
MonitorBatch = Callable[[list[str]], list[str | None]]


def plan_spans(
    requests: Sequence[tuple[int, int]],
    ram_size: int | None,
    *,
    gap: int = MERGE_GAP,
    limit: int = SPAN_LIMIT,
) -> list[tuple[int, int, list[int]]]:
    """The reads that cover ``requests`` (this module's dumps; the gdb target's commands,
    with no ``ram_size``): ``(start, size, indices of the requests it holds)`` in address
    order. Requests that touch or overlap are one span up to ``limit`` bytes; requests up
    to ``gap`` apart are one span too when the whole span is plain RAM (:data:`RAM_FLOOR`
    up to ``min(ram_size, RAM_CEILING)``; no merging across gaps when the RAM size is not
    known). A request larger than ``limit`` is cut into spans of its own (its index in
    each)."""
    ceiling = min(ram_size, RAM_CEILING) if ram_size else 0
    spans: list[tuple[int, int, list[int]]] = []
    for index in sorted(range(len(requests)), key=lambda i: requests[i]):
        address, size = requests[index]
        end = address + size
        if spans:
            start, length, members = spans[-1]
            joined_end = max(end, start + length)
            touches = address <= start + length
            in_ram = RAM_FLOOR <= start and joined_end <= ceiling
            if (touches or (address - (start + length) <= gap and in_ram)) and (
                joined_end - start <= limit
            ):
                spans[-1] = (start, joined_end - start, [*members, index])
                continue
        first = True
        while first or address < end:
            first = False
            piece = min(limit, end - address)
            spans.append((address, piece, [index]))
            address += piece
    return spans


class MonitorDumps:
    """Physical reads by ``pmemsave`` into a private directory (made on first use,
    removed by :meth:`close`). ``monitor`` runs a batch of monitor commands."""

    def __init__(self, monitor: MonitorBatch, ram_size: int | None) -> None:
        self._monitor = monitor
        self._ram_size = ram_size
        self._directory: str | None = None

    def read_many(self, requests: Sequence[tuple[int, int]]) -> list[bytes] | None:
        """Each request's bytes, or None when this path does not work here (a command
        failed, a file is missing or short): the caller reads through the stub then."""
        if not requests:
            return []
        directory = self._directory or self._make_directory()
        if directory is None:
            return None
        spans = plan_spans(requests, self._ram_size)
        files = [os.path.join(directory, str(n)) for n in range(len(spans))]
        outputs = self._monitor(
            [
                f'pmemsave {start:#x} {size:#x} "{path}"'
                for (start, size, _), path in zip(spans, files, strict=True)
            ]
        )
        pieces: dict[int, list[tuple[int, bytes]]] = {}
        whole = True
        for (start, size, members), path, output in zip(spans, files, outputs, strict=True):
            data = _take(path)
            if output is None or output.strip() or data is None or len(data) != size:
                whole = False  # a refusal prints why; nothing printed and a whole file: read
                continue
            for index in members:
                pieces.setdefault(index, []).append((start, data))
        if not whole:
            return None
        found: list[bytes] = []
        for index, (address, size) in enumerate(requests):
            parts = sorted(pieces[index])
            if len(parts) == 1:
                start, data = parts[0]
                found.append(data[address - start : address - start + size])
            else:  # a request larger than SPAN_LIMIT: its spans in order
                found.append(b"".join(data for _, data in parts)[:size])
        return found

    def _make_directory(self) -> str | None:
        import tempfile  # here, not at start: `regs` reads no physical memory

        directory = tempfile.mkdtemp(prefix="kinspect-pmem-")
        if any(c in directory for c in '"\\\n'):  # the monitor's string syntax: keep it plain
            os.rmdir(directory)
            return None
        self._directory = directory
        return directory

    def close(self) -> None:
        if self._directory is not None:
            import shutil

            shutil.rmtree(self._directory, ignore_errors=True)
            self._directory = None


def _take(path: str) -> bytes | None:
    """The file's bytes, the file deleted (guest memory is not left on disk); None if absent."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError:
        return None
    try:
        os.unlink(path)
    except OSError:
        pass
    return data
