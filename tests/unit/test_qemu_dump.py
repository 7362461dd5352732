"""QEMU's monitor as a bulk reader of physical memory (inspector/targets/qemu_dump.py): which
requests one ``pmemsave`` reads, and what happens when QEMU cannot write where we read.
Against QEMU itself in tests/integration/test_paging_vs_qemu.py."""

from __future__ import annotations

import os
import re

from kinspect.inspector.targets.qemu_dump import (
    MERGE_GAP,
    RAM_FLOOR,
    MonitorDumps,
    plan_spans,
)

MiB = 1 << 20
MEMORY = bytes((i * 13 + i // 4096) & 0xFF for i in range(4 * MiB))  # a guest's RAM from 1 MiB


def test_touching_requests_are_one_span_anywhere():
    requests = [(0x3000, 0x1000), (0x1000, 0x1000), (0x2000, 0x1000), (0x2800, 8)]
    assert plan_spans(requests, None) == [(0x1000, 0x3000, [1, 2, 3, 0])]


def test_gaps_are_read_only_inside_plain_ram():
    near = [(RAM_FLOOR, 0x1000), (RAM_FLOOR + 0x3000, 0x1000)]
    assert plan_spans(near, 512 * MiB) == [(RAM_FLOOR, 0x4000, [0, 1])]
    assert plan_spans(near, None) == [(RAM_FLOOR, 0x1000, [0]), (RAM_FLOOR + 0x3000, 0x1000, [1])]
    below = [(0x9F000, 0x1000), (0x9F000 + 0x3000, 0x1000)]  # the VGA window may lie between
    assert len(plan_spans(below, 512 * MiB)) == 2
    past_ram = [(511 * MiB, 0x1000), (512 * MiB, 0x1000)]
    assert len(plan_spans([past_ram[0], (512 * MiB - 0x1000 + 0x2000, 0x1000)], 512 * MiB)) == 2
    high = [(3 * (1 << 30), 0x1000), (3 * (1 << 30) + 0x2000, 0x1000)]  # above 2 GiB: a PCI hole?
    assert len(plan_spans(high, 8 << 30)) == 2
    far = [(RAM_FLOOR, 0x1000), (RAM_FLOOR + 0x1000 + MERGE_GAP + 1, 0x1000)]
    assert len(plan_spans(far, 512 * MiB)) == 2


def test_large_requests_are_cut_at_the_limit():
    assert plan_spans([(RAM_FLOOR, 0x2800)], 512 * MiB, limit=0x1000) == [
        (RAM_FLOOR, 0x1000, [0]),
        (RAM_FLOOR + 0x1000, 0x1000, [0]),
        (RAM_FLOOR + 0x2000, 0x800, [0]),
    ]


class FakeQemu:
    """pmemsave as QEMU does it: the bytes of MEMORY (RAM from 1 MiB) written to the file;
    "Could not open" when it cannot."""

    def __init__(self) -> None:
        self.commands: list[str] = []

    def __call__(self, lines: list[str]) -> list[str | None]:
        outputs: list[str | None] = []
        for line in lines:
            self.commands.append(line)
            match = re.fullmatch(r'pmemsave (0x[0-9a-f]+) (0x[0-9a-f]+) "(.*)"', line)
            assert match, line
            start, size, path = int(match[1], 16), int(match[2], 16), match[3]
            try:
                with open(path, "wb") as file:
                    file.write(MEMORY[start - RAM_FLOOR : start - RAM_FLOOR + size])
            except OSError:
                outputs.append(f"Could not open '{path}'\r\n")
                continue
            outputs.append("")
        return outputs


def test_reads_come_from_few_dumps_and_leave_nothing_behind():
    qemu = FakeQemu()
    dumps = MonitorDumps(qemu, 512 * MiB)
    requests = [(RAM_FLOOR + 0x5000, 0x1000), (RAM_FLOOR, 0x1000), (RAM_FLOOR + 0x1000, 16)]
    requests.append((RAM_FLOOR + 0x300000, 0x2000))
    got = dumps.read_many(requests)
    assert got == [MEMORY[a - RAM_FLOOR : a - RAM_FLOOR + n] for a, n in requests]
    assert len(qemu.commands) == 2  # the first three 0x3000 apart at most; the last alone
    directory = dumps._directory
    assert directory is not None and os.listdir(directory) == []  # each file deleted once read
    dumps.close()
    assert not os.path.exists(directory)


def test_a_qemu_that_cannot_write_here_is_said_with_none():
    qemu = FakeQemu()
    dumps = MonitorDumps(qemu, 512 * MiB)
    dumps._directory = "/nonexistent/kinspect"  # as QEMU on another host or file system
    assert dumps.read_many([(RAM_FLOOR, 0x1000)]) is None
    refusing = MonitorDumps(lambda lines: [None for _ in lines], 512 * MiB)  # gdb refused
    assert refusing.read_many([(RAM_FLOOR, 0x1000)]) is None
    refusing.close()
    silent = MonitorDumps(lambda lines: ["" for _ in lines], 512 * MiB)  # no error, no file
    assert silent.read_many([(RAM_FLOOR, 0x1000)]) is None
    silent.close()
