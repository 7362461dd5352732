"""What QEMU's monitor prints, and captured table pages, as the tests compare them.

Shared by the live tests (tests/integration) and the capture tests
(tests/unit/test_*_capture.py): the flag letters of ``info tlb`` and a
``read_physical`` over a capture's page-table pages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from kinspect.inspector.errors import FaultError

#: ``info tlb`` prints a leaf's raw bits as these letters, this order: XGPDACTUW.
TLB_FLAGS = (
    (63, "X"),
    (8, "G"),
    (7, "P"),
    (6, "D"),
    (5, "A"),
    (4, "C"),
    (3, "T"),
    (2, "U"),
    (1, "W"),
)


def tlb_flags(raw: int) -> str:
    """The flags ``info tlb`` prints for a leaf entry ``raw``."""
    return "".join(letter if raw >> bit & 1 else "-" for bit, letter in TLB_FLAGS)


def capture_reader(pages: Mapping[int, bytes]) -> Callable[[int, int], bytes]:
    """``read_physical`` over captured 4 KiB pages; anything else is a FaultError."""

    def read(address: int, size: int) -> bytes:
        base = address & ~0xFFF
        if base not in pages or (address & 0xFFF) + size > 4096:
            raise FaultError(address, "not in the capture")
        return pages[base][address & 0xFFF : (address & 0xFFF) + size]

    return read
