"""A stock Debian kernel recognized with no files (KASLR and PTI on): its kallsyms
decoded from memory against the guest's own /proc/kallsyms, the IDT named as
/proc/kallsyms names it, the banner against /proc/version, the layout variables
against QEMU's monitor reading the addresses /proc/kallsyms gives."""

from __future__ import annotations

import bisect
import os
import random
import re
import time

import pytest

from kinspect.inspector import api
from kinspect.inspector.linux.kallsyms import find_kallsyms
from kinspect.inspector.linux.kernel import LINK_TEXT, kernel_image

from .conftest import stopped_in_kernel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest_says(linux_guest, proc_kallsyms):
    """What the guest says about itself, asked before anything stops it."""
    lines = proc_kallsyms.splitlines()
    by_name: dict[str, list[int]] = {}
    for line in lines:
        address, _, name = line.split()[:3]
        by_name.setdefault(name, []).append(int(address, 16))
    return {
        "lines": lines,
        "by_name": by_name,
        "version": linux_guest.shell("cat /proc/version").output.strip(),
    }


@pytest.fixture(scope="module")
def attached(linux_guest, guest_says, tmp_path_factory):
    """A session recognized once with an empty cache, then again from the cache."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    session = None
    try:
        figures = {}
        session = stopped_in_kernel(api.attach(linux_guest.gdb_endpoint))
        session.ranges()  # the page walk is timed apart from kallsyms
        started = time.monotonic()
        first = session.kernel()
        figures["first"] = time.monotonic() - started
        session.close()
        session = stopped_in_kernel(api.attach(linux_guest.gdb_endpoint))
        session.ranges()
        started = time.monotonic()
        cached = session.kernel()
        figures["cached"] = time.monotonic() - started
        print(
            f"\nkallsyms: {first.symbol_count} symbols, first {figures['first']:.2f} s, "
            f"cached {figures['cached']:.2f} s; guest boot {linux_guest.boot_seconds:.1f} s"
        )
        yield session, first, cached, figures
    finally:
        if session is not None:
            session.close()
        if saved is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = saved


def test_every_symbol_equals_proc_kallsyms(attached, guest_says):
    session, first, _, _ = attached
    _, data = kernel_image(session.ranges())
    layout, entries = find_kallsyms(session.read_virtual, data)
    assert layout == first.kallsyms
    assert [str(e) for e in entries] == guest_says["lines"]  # no modules are loaded
    assert first.symbol_count == len(guest_says["lines"]) > 50_000


def test_a_sample_of_names_resolves_as_proc_kallsyms(attached, guest_says):
    session, _, _, _ = attached
    rng = random.Random(12)
    unique = [n for n, addresses in guest_says["by_name"].items() if len(addresses) == 1]
    landmarks = ["_text", "_etext", "idt_table", "asm_exc_page_fault", "start_kernel", "_end"]
    for name in rng.sample(unique, 2000) + landmarks:
        assert session.resolve(name) == guest_says["by_name"][name][0], name


def expected_handler(lines_sorted, addresses, address):
    """What /proc/kallsyms says ``address`` is: the names at the highest symbol address
    at or below it, and the offset."""
    index = bisect.bisect_right(addresses, address) - 1
    base = addresses[index]
    names = {name for a, name in lines_sorted if a == base}
    return names, address - base


def test_idt_handlers_are_named_as_proc_kallsyms(attached, guest_says):
    session, _, _, _ = attached
    text = [
        (int(line.split()[0], 16), line.split()[2])
        for line in guest_says["lines"]
        if line.split()[1] in "tT"
    ]
    text.sort()
    addresses = [a for a, _ in text]
    table = session.idt()
    present = [e for e in table.entries if e.gate.P]
    assert len(present) == 256
    for entry in present:
        names, offset = expected_handler(text, addresses, entry.gate.offset)
        name, _, shown_offset = entry.handler.partition("+")
        assert name in names, (entry.gate.vector, entry.handler, names)
        assert int(shown_offset or "0", 16) == offset, (entry.gate.vector, entry.handler)
    assert table.entries[14].handler == "asm_exc_page_fault"
    assert table.entries[14].gate.offset == guest_says["by_name"]["asm_exc_page_fault"][0]


def test_banner_is_proc_version(attached, guest_says):
    _, first, _, _ = attached
    assert first.banner == guest_says["version"]
    assert first.banner.startswith("Linux version 6.")


def test_text_and_kaslr_slide(attached, guest_says):
    _, first, _, _ = attached
    (text,) = guest_says["by_name"]["_text"]
    assert first.text == text
    assert first.slide == text - LINK_TEXT != 0
    assert first.slide % 0x200000 == 0  # CONFIG_PHYSICAL_ALIGN


def monitor_u64(guest, address: int) -> int:
    text = guest.monitor(f"x /1gx {address:#x}")
    match = re.search(r":\s*(0x[0-9a-f]+)", text)
    assert match, text
    return int(match.group(1), 16)


def monitor_gpa(guest, address: int) -> int | None:
    text = guest.monitor(f"gva2gpa {address:#x}")
    match = re.search(r"gpa: (0x[0-9a-f]+|[0-9]+)", text)  # "gpa: 0" for zero
    return int(match.group(1), 0) if match else None


def test_layout_bases_equal_what_qemu_reads(attached, guest_says, linux_guest):
    _, first, _, _ = attached
    for name in ("page_offset_base", "vmalloc_base", "vmemmap_base"):
        (address,) = guest_says["by_name"][name]
        assert getattr(first, name) == monitor_u64(linux_guest, address), name
    # the direct map starts with physical 0; struct page of pfn 0 is mapped; the bases
    # are in the kernel's order, 1 GiB aligned (KASLR's memory randomization)
    assert monitor_gpa(linux_guest, first.page_offset_base) == 0
    assert monitor_gpa(linux_guest, first.vmemmap_base) is not None
    assert first.page_offset_base < first.vmalloc_base < first.vmemmap_base
    for base in (first.page_offset_base, first.vmalloc_base, first.vmemmap_base):
        assert base % (1 << 30) == 0
    # the kernel's vmalloc'd mappings (task stacks, ...) are in its vmalloc area
    mem = linux_guest.monitor("info mem")
    starts = [int(m.group(1), 16) for m in re.finditer(r"^([0-9a-f]{16})-", mem, re.M)]
    assert any(first.vmalloc_base <= s < first.vmalloc_base + (32 << 40) for s in starts)


def test_paging_is_4_level(attached, linux_guest):
    _, first, _, _ = attached
    cr4 = int(re.search(r"CR4=([0-9a-f]+)", linux_guest.monitor("info registers")).group(1), 16)
    assert first.la57 is bool(cr4 >> 12 & 1) is False


def test_vtop_symbol_matches_qemu(attached, guest_says, linux_guest):
    session, _, _, _ = attached
    address = session.resolve("linux_banner")
    assert address == guest_says["by_name"]["linux_banner"][0]
    assert session.translate(address).pa == monitor_gpa(linux_guest, address)


def test_second_attach_uses_the_cache(attached):
    session, first, cached, figures = attached
    assert not first.cached and cached.cached
    assert cached.kallsyms == first.kallsyms and cached.banner == first.banner
    assert (cached.text, cached.page_offset_base) == (first.text, first.page_offset_base)
    assert session.symbols.lookup("asm_exc_page_fault") is not None
    # the budget is 2 s on an idle machine; this bound only catches a search gone wild
    assert figures["first"] < 30 and figures["cached"] < figures["first"]
    assert "from kallsyms in memory" in str(cached) and "(cached)" in str(cached)


def test_disasm_and_telescope_name_what_proc_kallsyms_names(attached, guest_says, linux_guest):
    """kinspect disasm at RIP of the stopped Debian kernel: every named call or jump
    target is the /proc/kallsyms address of that name (plus its offset); the telescope at
    RSP names each slot's region (Linux's, as ptdump does) and its values are the qwords
    QEMU's monitor reads there."""
    from kinspect.inspector.context import disassemble, telescope

    session, _, _, _ = attached
    by_name = guest_says["by_name"]
    rip = session.registers()["rip"]
    listing = disassemble(session, rip, before=8, after=64)
    assert listing.instructions and listing.index is not None
    named = [i for i in listing.instructions if i.target is not None and i.target_name]
    assert named  # 64 instructions from RIP: calls and jumps to check
    for insn in named:
        name, _, offset = insn.target_name.partition("+")
        assert insn.target in {a + int(offset or "0", 16) for a in by_name[name]}, insn
    own, _, offset = (listing.symbols[listing.index] or "").partition("+")
    assert rip in {a + int(offset or "0", 16) for a in by_name[own]}

    rsp = session.registers()["rsp"]
    found = telescope(session, rsp, 8)
    monitor = linux_guest.monitor(f"x /8gx {rsp:#x}")
    words = [int(w, 16) for line in monitor.splitlines() for w in line.split()[1:]]
    assert [s.value for s in found.slots] == words
    text = [s for s in found.slots if s.symbol]
    assert text  # the idle stack holds return addresses
    for slot in text:
        name, _, offset = slot.symbol.partition("+")
        assert slot.value in {a + int(offset or "0", 16) for a in by_name[name]}
    names = {region.name for region in session.regions()}
    mapped = [slot for slot in found.slots if slot.mapping]
    assert mapped and all(slot.mapping.split(" 0x")[0] in names for slot in mapped), mapped
