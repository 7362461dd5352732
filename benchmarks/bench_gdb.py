"""What reading a live kernel through QEMU's gdb stub costs (make bench).

The figures to expect on a 2-core TCG machine: a 4 KiB read about 1 ms (a
naive pygdbmi wrapper pays 200 ms of silence per command), the demo kernel's
whole walk (10 table pages) a few tens of ms.
"""

from __future__ import annotations


def test_read_physical_4k(benchmark, session):
    session.stop()
    benchmark(session.target.read_physical, 0x100000, 4096)


def test_read_virtual_4k(benchmark, session):
    address = session.symbols.lookup("demo_level3") & ~0xFFF
    session.stop()
    benchmark(session.target.read_virtual, address, 4096)


def test_read_alternating_physical_virtual(benchmark, session):
    """Each switch of QEMU's PhyMemMode is one extra round trip."""
    address = session.symbols.lookup("demo_level3") & ~0xFFF

    def both():
        session.target.read_physical(0x100000, 4096)
        session.target.read_virtual(address, 4096)

    benchmark(both)


def test_registers(benchmark, session):
    session.stop()
    benchmark(session.target.registers)


def test_walk_demo_kernel_cold(benchmark, session):
    """Registers, every table page, decode and coalesce: what `kinspect pt` does."""

    def walk():
        session.invalidate()
        return session.ranges()

    ranges = benchmark(walk)
    assert ranges


def test_translate(benchmark, session):
    address = session.symbols.lookup("demo_level3")
    session.control_registers()
    benchmark(session.translate, address)
