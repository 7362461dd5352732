"""A stopped target over captured page-table pages: the CLI's own code path, no QEMU.

``kinspect pt`` run in process (``cli.run``) on the Linux capture
(tests/fixtures/linux-6.1-nokaslr, 74,251 leaves) or on OVMF's 1 TiB identity
map (tests/fixtures/ovmf, 524,799 leaves): the writer tests compare its
output with the documents of before, the benchmarks time it and measure its
peak memory (benchmarks/bench_speed.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

from kinspect.inspector import cli
from kinspect.inspector.session import Session
from kinspect.inspector.targets.base import Capability, Target
from tests.qemu_view import capture_reader


class CaptureTarget(Target):
    """Physical reads of the captured table pages; the control registers of the capture."""

    capabilities = frozenset({Capability.PHYSICAL_READS})

    def __init__(self, pages: Mapping[int, bytes], registers: Mapping[str, int], name: str):
        self.description = f"capture {name}"
        self._read = capture_reader(pages)
        self._registers = dict(registers)

    def read_physical(self, address: int, size: int) -> bytes:
        return self._read(address, size)

    def read_virtual(self, address: int, size: int) -> bytes:
        from kinspect.inspector.errors import FaultError

        raise FaultError(address, "a capture holds page tables only")

    def registers(self) -> Mapping[str, int]:
        return self._registers

    @property
    def state(self) -> str:
        return "stopped"

    def stop(self) -> None:
        return None

    def resume(self) -> None:
        pass

    def close(self, *, resume: bool = True) -> None:
        pass


def _registers(cr0: int, cr3: int, cr4: int, efer: int) -> dict[str, int]:
    return {"cr0": cr0, "cr3": cr3, "cr4": cr4, "efer": efer, "rip": 0, "eflags": 0x2}


def linux_target() -> CaptureTarget:
    from tests.unit import test_x86_linux_capture as linux

    registers = _registers(linux.CR0, linux.CR3, linux.CR4, linux.EFER)
    return CaptureTarget(linux.load_pages(), registers, "linux-6.1-nokaslr")


def ovmf_target() -> CaptureTarget:
    from tests.unit import test_ovmf_capture as ovmf

    registers = _registers(ovmf.CR0, ovmf.CR3, ovmf.CR4, ovmf.EFER)
    return CaptureTarget(ovmf.load_pages(), registers, "ovmf")


@contextlib.contextmanager
def cli_on(target: Target | Session) -> Iterator[Session]:
    """``cli.run`` attaches to ``target`` (whatever ``--target`` says) while this lasts: a
    new session on it, or this session again (what it read stays: a capture never runs)."""
    session = target if isinstance(target, Session) else Session(target)
    original = cli.connect

    def connect(args: object, **kwargs: object) -> Session:
        return session

    cli.connect = connect  # type: ignore[assignment]
    try:
        yield session
    finally:
        cli.connect = original  # type: ignore[assignment]
