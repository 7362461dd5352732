"""kinspect on OVMF's own page tables while boot services run, against QEMU's own view.

OVMF identity-maps the whole physical address space (1 TiB on qemu64) with
2 MiB pages: about half a million leaves. The ESP is empty, so the firmware
finds no loader and idles in its UEFI shell, on its own tables. One boot for
the module, and one stop: the gdb stub holds the CPU while kinspect walks and
while QEMU's monitor (through QMP, not gdb) gives the truth we compare with:

- ``xp /512gx``: the raw table pages as QEMU reads them, walked by the small
  SDM walker below (every leaf: VA, PA, size, the leaf bits ``info tlb``
  prints, effective rights);
- ``gva2gpa``: QEMU's own translation, for a few hundred sampled addresses;
- ``info mem``: QEMU's own walk, merged on effective U/W (0.01 s here).

- ``info tlb``: QEMU's own walk, leaf for leaf (24 MB of text, 0.5-2.5 s
  here; the captured fixture, tests/unit/test_ovmf_capture.py, does the same
  without a boot).
"""

from __future__ import annotations

import bisect
import random
import re
import shutil
import time

import pytest

from kinspect.inspector import api
from kinspect.inspector.targets.qemu import OVMF_CODE, launch_qemu
from kinspect.inspector.targets.qemu_text import decode_info_mem, decode_info_tlb

from .test_paging_vs_qemu import tlb_flags

pytestmark = pytest.mark.integration

BOOT_TIMEOUT = 180.0  # OVMF to its shell prompt: 8-9 s on an idle machine, far more under load
SHELL_PROMPT = "Shell> "  # after the shell's 5 s countdown for startup.nsh
TiB = 1 << 40
KiB4, MiB2, GiB1 = 1 << 12, 1 << 21, 1 << 30
ADDRESS = 0x000F_FFFF_FFFF_F000
P, RW, US, PS, NX = 1, 1 << 1, 1 << 2, 1 << 7, 1 << 63


@pytest.fixture(scope="module")
def ovmf():
    for tool in ("qemu-system-x86_64", "gdb"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make test` (it installs it)")
    if not OVMF_CODE.is_file():
        pytest.fail(f"{OVMF_CODE} is missing: run `make test` (it installs ovmf)")
    started = time.monotonic()
    instance = launch_qemu(
        None, uefi=True, memory="256M", ready_marker=SHELL_PROMPT, timeout=BOOT_TIMEOUT
    )
    instance.boot_seconds = time.monotonic() - started
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def stopped(ovmf):
    """One kinspect session for the module, the CPU stopped throughout; the walk timed."""
    session = api.attach(ovmf.gdb_endpoint, timeout=60.0)
    try:
        session.control_registers()
        started = time.perf_counter()
        session.address_space()
        walked = time.perf_counter()
        session.ranges()
        session.walk_seconds = walked - started
        session.coalesce_seconds = time.perf_counter() - walked
        yield session
    finally:
        session.close()


@pytest.fixture(scope="module")
def monitor(ovmf, stopped):
    """One QMP connection for the many small monitor commands."""
    client = ovmf.qmp(timeout=60.0)
    try:
        yield client.human_monitor_command
    finally:
        client.close()


@pytest.fixture(scope="module")
def qemu_cr3(monitor):
    return int(re.search(r"\bCR3=([0-9a-f]+)", monitor("info registers")).group(1), 16)


def qemu_table(monitor, address: int) -> list[int]:
    values = re.findall(r"\b0x([0-9a-f]{16})\b", monitor(f"xp /512gx {address:#x}"))
    assert len(values) == 512, address
    return [int(v, 16) for v in values]


@pytest.fixture(scope="module")
def qemu_leaves(monitor, qemu_cr3):
    """Every leaf, from table bytes QEMU's monitor reads: (va, pa, size, flags, W, U, X).

    4-level paging with EFER.NXE (checked in test_the_firmware_runs_its_shell);
    the bits are the SDM's: P, PS in a PDPT or PD entry, RW and US ANDed down
    the walk, NX ORed.
    """
    leaves = []

    def visit(table: int, level: int, base: int, w: bool, u: bool, nx: bool) -> None:
        for index, raw in enumerate(qemu_table(monitor, table)):
            if not raw & P:
                continue
            va = base | index << (12 + 9 * (level - 1))
            if va >> 47:
                va |= 0xFFFF_0000_0000_0000
            lw, lu, lnx = w and bool(raw & RW), u and bool(raw & US), nx or bool(raw & NX)
            if level == 1 or (level in (2, 3) and raw & PS):
                size = 1 << (12 + 9 * (level - 1))
                leaves.append(
                    (va, raw & ADDRESS & ~(size - 1), size, tlb_flags(raw), lw, lu, not lnx)
                )
            else:
                visit(raw & ADDRESS, level - 1, va & ((1 << 48) - 1), lw, lu, lnx)

    started = time.monotonic()
    visit(qemu_cr3 & ADDRESS, 4, 0, True, True, False)
    print(f"walk through xp over QMP: {time.monotonic() - started:.2f} s, {len(leaves)} leaves")
    return leaves


def test_the_firmware_runs_its_shell(ovmf, stopped, qemu_cr3, monitor):
    """No loader on the ESP: the boot manager falls to OVMF's shell; CR3 is the firmware's."""
    assert not [p for p in (ovmf.workdir / "esp").rglob("*") if p.is_file()]
    text = ovmf.serial_output()
    assert re.search(r"BdsDxe: failed to load Boot\d+ .*: Not Found", text)  # the empty disk
    assert re.search(r'BdsDxe: starting Boot\d+ "EFI Internal Shell"', text)
    assert "UEFI Interactive Shell" in text and "kinspect" not in text
    control = stopped.control_registers()
    assert control["CR3"].value == qemu_cr3
    assert control["CR0"].is_set("PG") and control["EFER"].is_set("NXE")
    assert control.paging.levels == 4
    # the firmware's tables, in its RAM (256 MiB), and nothing above 1 TiB: PML4
    # entries 0 and 1 only, no higher half such as any kernel of ours maps
    assert qemu_cr3 < 256 << 20
    pml4 = qemu_table(monitor, qemu_cr3 & ADDRESS)
    assert [index for index, raw in enumerate(pml4) if raw & P] == [0, 1]
    print(f"OVMF to its shell prompt: {ovmf.boot_seconds:.1f} s; CR3={qemu_cr3:#x}")


def test_every_leaf_matches_qemus_table_bytes(stopped, qemu_leaves):
    space = stopped.address_space()
    assert not space.problems and not space.truncated
    ours = [
        (
            leaf.va,
            leaf.pa,
            leaf.size,
            tlb_flags(leaf.entry.raw),
            leaf.permissions.writable,
            leaf.permissions.user,
            leaf.permissions.executable,
        )
        for leaf in space.leaves
    ]
    assert len(ours) == len(qemu_leaves) > 500_000
    mismatches = [(a, b) for a, b in zip(ours, qemu_leaves, strict=True) if a != b]
    assert mismatches == []


def test_every_leaf_matches_info_tlb(stopped, monitor):
    """QEMU's own walk, whole: 24 MB of text, 0.5-2.5 s to print on this machine."""
    truth = decode_info_tlb(monitor("info tlb"))
    leaves = stopped.address_space().leaves
    compared = 0
    for leaf, theirs in zip(leaves, truth, strict=True):
        assert (leaf.va, leaf.pa, tlb_flags(leaf.entry.raw)) == tuple(theirs), hex(leaf.va)
        compared += 1
    assert compared > 500_000


def test_a_1_tib_identity_map_in_few_ranges(stopped, qemu_leaves, monitor):
    """The ranges QEMU's view implies, and what they are: VA = PA over the whole space."""
    info_mem = list(decode_info_mem(monitor("info mem")))
    top = info_mem[-1][1]
    assert info_mem[0][0] == 0 and top == TiB  # qemu64: 40 physical address bits
    assert sum(size for _, _, size, *_ in qemu_leaves) == top
    assert all(va == pa for va, pa, *_ in qemu_leaves)

    # ptdump's rule on QEMU's leaves: contiguous VA and PA, same size, rights and G/PWT/PCD/PAT
    expected: list[list] = []
    for va, pa, size, flags, w, u, x in qemu_leaves:
        key = (size, w, u, x, flags[1], flags[5], flags[6], flags[2] if size == KiB4 else "")
        last = expected[-1] if expected else None
        if last and last[1] == va and last[2] + (va - last[0]) == pa and last[3] == key:
            last[1] = va + size
        else:
            expected.append([va, va + size, pa, key])

    ranges = stopped.ranges()
    assert [(r.start, r.end, r.phys) for r in ranges] == [(s, e, p) for s, e, p, _ in expected]
    for r, (_, _, _, (size, w, u, x, *_)) in zip(ranges, expected, strict=True):
        p = r.permissions
        assert (r.page_size, p.writable, p.user, p.executable) == (size, w, u, x)
    assert len(ranges) < 100  # 26 on OVMF 2022.11: compact, for half a million leaves
    print(f"{len(qemu_leaves)} leaves, {len(ranges)} ranges")


def test_ranges_match_info_mem(stopped, monitor):
    """info mem merges on the effective U/W bits (ANDed across levels), NX ignored."""
    started = time.monotonic()
    theirs = [list(r) for r in decode_info_mem(monitor("info mem"))]
    print(f"info mem: {time.monotonic() - started:.3f} s, {len(theirs)} ranges")
    merged: list[list] = []
    for leaf in stopped.address_space().leaves:
        prot = "-r" + ("w" if leaf.permissions.writable else "-")
        if leaf.permissions.user:
            prot = "u" + prot[1:]
        if merged and merged[-1][1] == leaf.va and merged[-1][2] == prot:
            merged[-1][1] = leaf.end
        else:
            merged.append([leaf.va, leaf.end, prot])
    assert merged == theirs


def sample_addresses(ranges) -> list[int]:
    rng = random.Random(20261125)
    picks = [0, 0x10, 0xFFF, 0x1000, 0x9F000, 0xA0000, 0xFFFF0, 0x100000]
    picks += [TiB - 1, TiB - MiB2, TiB - KiB4, TiB, TiB + 0x1000]  # the top, and just past it
    picks += [(4 << 30) + d for d in (-MiB2, -KiB4, -1, 0, 1, 0x1234, MiB2, GiB1)]
    # MMIO below 4 GiB on q35: PCIe ECAM, IOAPIC, HPET, LAPIC, the pflash, the reset vector
    picks += [0xB0000000, 0xFEC00000, 0xFED00000, 0xFEE00000, 0xFFC00000, 0xFFFFFFF0]
    for r in ranges:  # both ends of each range, and the page on each side
        picks += [r.start, r.start + 0x7FF, r.end - 1, r.end, max(0, r.start - 1)]
    picks += [rng.randrange(TiB) for _ in range(300)]
    picks += [rng.randrange(TiB, 1 << 47) for _ in range(10)]  # canonical, unmapped
    picks += [0xFFFF800000000000, 0xFFFFFFFF80000000, 0x0000800000000000]
    return sorted(set(picks))


def test_sampled_addresses_match_gva2gpa(stopped, monitor):
    leaves = stopped.address_space().leaves
    starts = [leaf.va for leaf in leaves]
    addresses = sample_addresses(stopped.ranges())
    assert len(addresses) > 300
    started = time.monotonic()
    checked = 0
    for va in addresses:
        text = monitor(f"gva2gpa {va:#x}")
        match = re.search(r"gpa:\s*(0x[0-9a-f]+|0)\b", text)  # QEMU prints %#x: "0", not "0x0"
        truth = int(match.group(1), 0) if match else None
        if truth is None:
            assert "Unmapped" in text, text
        t = stopped.translate(va)
        assert (t.pa if t.ok else None) == truth, (hex(va), t)
        # the walk's leaf for the address, found by VA
        n = bisect.bisect_right(starts, va) - 1
        leaf = leaves[n] if n >= 0 and leaves[n].va <= va < leaves[n].end else None
        assert (leaf.pa + va - leaf.va if leaf else None) == truth, hex(va)
        if leaf:
            assert t.steps[-1].entry == leaf.entry and t.permissions == leaf.permissions
            checked += 1
    assert checked > 300
    print(f"gva2gpa: {len(addresses)} addresses in {time.monotonic() - started:.2f} s")


def test_walk_and_coalesce_figures(ovmf, stopped):
    """The live walk reads 1028 table pages through the stub; printed, with a generous bound."""
    leaves = len(stopped.address_space().leaves)
    ranges = len(stopped.ranges())
    print(
        f"OVMF boot {ovmf.boot_seconds:.1f} s; live walk {stopped.walk_seconds:.2f} s"
        f" ({leaves} leaves), coalesce {stopped.coalesce_seconds:.3f} s ({ranges} ranges)"
    )
    # 2.4 s and 0.1 s on an idle 2-core machine; reading table pages entry by entry, or
    # coalescing in quadratic time, would be minutes
    assert stopped.walk_seconds < 60.0 and stopped.coalesce_seconds < 10.0
