"""The Debian guest on a CPU with LA57 (5-level paging), through the command line:
``kernel``, ``idt``, ``sym`` and ``vtop`` with no files, and with ``--kallsyms FILE``,
against what the guest and QEMU's monitor say."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from .conftest import read_guest_file

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest(linux_guest_la57, tmp_path_factory):
    """The LA57 guest, what it says about itself, and a cache directory of its own."""
    says = {
        "kallsyms": read_guest_file(linux_guest_la57, "/proc/kallsyms"),
        "version": linux_guest_la57.shell("cat /proc/version").output.strip(),
        "cpuinfo": linux_guest_la57.shell("cat /proc/cpuinfo").output,
    }
    says["address"] = {}
    for line in says["kallsyms"].splitlines():
        address, _, name = line.split()[:3]
        says["address"].setdefault(name, int(address, 16))
    return linux_guest_la57, says, tmp_path_factory.mktemp("cache")


def kinspect(guest, *args, timeout=180):
    qemu, _, cache = guest
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", "--target", qemu.gdb_endpoint, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def test_kernel_says_5_level_and_what_the_guest_says(guest):
    qemu, says, _ = guest
    assert re.search(r"^flags\s*:.*\bla57\b", says["cpuinfo"], re.M)
    result = kinspect(guest, "--json", "kernel")
    assert result.returncode == 0, result.stderr
    kernel = json.loads(result.stdout)["kernel"]
    assert kernel["la57"] is True
    assert kernel["banner"] == says["version"]
    assert kernel["text"] == says["address"]["_text"]
    assert kernel["symbols"]["from"] == "kallsyms"
    assert kernel["symbols"]["count"] == len(says["kallsyms"].splitlines())
    # the 5-level direct map: page_offset_base as QEMU reads it, mapping physical 0
    assert kernel["page_offset_base"] >> 56 == 0xFF
    dump = qemu.monitor(f"x /1gx {says['address']['page_offset_base']:#x}")
    assert int(re.search(r":\s*(0x[0-9a-f]+)", dump).group(1), 16) == kernel["page_offset_base"]
    assert re.search(r"gpa: (0x0|0)\b", qemu.monitor(f"gva2gpa {kernel['page_offset_base']:#x}"))
    text = kinspect(guest, "kernel")
    assert text.returncode == 0 and "5-level" in text.stdout and "(cached)" in text.stdout


def test_idt_and_sym_name_the_live_addresses(guest):
    _, says, _ = guest
    idt = kinspect(guest, "idt")
    assert idt.returncode == 0, idt.stderr
    line = next(x for x in idt.stdout.splitlines() if re.match(r"\s*(0x)?0*e\b|\s*14\b", x))
    assert line.rstrip().endswith("asm_exc_page_fault"), line
    sym = kinspect(guest, "--json", "sym", "asm_exc_page_fault", "do_idle")
    assert sym.returncode == 0, sym.stderr
    found = json.loads(sym.stdout)["addresses"]
    assert [f["address"] for f in found] == [
        says["address"]["asm_exc_page_fault"],
        says["address"]["do_idle"],
    ]
    assert [f["symbol"] for f in found] == ["asm_exc_page_fault", "do_idle"]


def test_vtop_of_a_symbol_walks_5_levels(guest):
    qemu, says, _ = guest
    result = kinspect(guest, "--json", "vtop", "linux_banner")
    assert result.returncode == 0, result.stderr
    translation = json.loads(result.stdout)
    assert len(translation["steps"]) >= 4
    gpa = re.search(
        r"gpa: (0x[0-9a-f]+)", qemu.monitor(f"gva2gpa {says['address']['linux_banner']:#x}")
    )
    assert translation["pa"] == int(gpa.group(1), 16)


def test_kallsyms_file_instead_of_memory(guest, tmp_path):
    _, says, _ = guest
    copy = tmp_path / "kallsyms"
    copy.write_text(says["kallsyms"])
    result = kinspect(guest, "--kallsyms", str(copy), "--json", "kernel")
    assert result.returncode == 0, result.stderr
    kernel = json.loads(result.stdout)["kernel"]
    assert kernel["symbols"]["from"] == "file" and kernel["symbols"]["path"] == str(copy)
    sym = kinspect(guest, "--kallsyms", str(copy), "sym", "start_kernel")
    assert f"{says['address']['start_kernel']:#x} start_kernel" in sym.stdout
    bad = tmp_path / "bad"
    bad.write_text("this is not a symbol file\n")
    refused = kinspect(guest, "--kallsyms", str(bad), "kernel")
    assert refused.returncode == 1
    assert refused.stderr.strip().count("\n") == 0 and "bad, line 1" in refused.stderr


def test_pt_compact_names_the_5_level_regions(guest):
    """The 5-level layout (page_offset_base 0xff11..., vmalloc 0xffa0..., vmemmap 0xffd4...
    before KASLR) under ptdump's headings, in under 500 rows, through the command line."""
    _, says, _ = guest
    result = kinspect(guest, "--json", "pt", "--compact")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["compact"] is True and doc["paging"]["levels"] == 5
    regions = {r["start"]: r["region"] for r in doc["ranges"]}
    assert regions[says["address"]["_text"]] == "kernel text/data"
    kernel = json.loads(kinspect(guest, "--json", "kernel").stdout)["kernel"]
    assert kernel["page_offset_base"] >> 56 == 0xFF
    assert regions[kernel["page_offset_base"]] == "direct map"
    names = {r["region"] for r in doc["ranges"]}
    assert {"direct map", "vmalloc", "vmemmap", "cpu_entry_area", "kernel text/data"} <= names
    text = kinspect(guest, "pt", "--compact")
    assert text.returncode == 0, text.stderr
    rows = text.stdout.splitlines()
    assert len(rows) < 500 and "---[ vmemmap ]---" in rows
