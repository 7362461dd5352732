"""The kinspect command line against the live demo kernel, as a user runs it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from kinspect.inspector import api
from kinspect.inspector.targets.qemu_text import decode_info_tlb
from tests.waiting import wait_until

from .test_paging_vs_qemu import tlb_flags

pytestmark = pytest.mark.integration


def kinspect(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *, contains: str = "") -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("kinspect: error: ")
    assert contains in lines[0]


def test_pt_json_agrees_with_info_tlb_page_for_page(qemu, demo_kernel):
    result = kinspect(
        "--target", qemu.gdb_endpoint, "--elf", demo_kernel, "pt", "--json", "--leaves"
    )
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["command"] == "pt" and doc["paging"]["levels"] == 4
    ours = {(leaf["va"], leaf["pa"], tlb_flags(leaf["entry"]["raw"])) for leaf in doc["leaves"]}
    truth = {tuple(line) for line in decode_info_tlb(qemu.monitor("info tlb"))}
    assert ours == truth


def test_pt_json_lines_streams_what_info_tlb_lists(qemu, demo_kernel):
    """One leaf per line between the envelope and the end line; the same leaves as --json."""
    result = kinspect("--target", qemu.gdb_endpoint, "pt", "--leaves", "--json-lines")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    head, leaves, end = lines[0], lines[1:-1], lines[-1]
    assert head["kinspect"] == 1 and head["command"] == "pt" and head["paging"]["levels"] == 4
    assert end["leaf_count"] == len(leaves) and end["truncated"] is False
    ours = {(leaf["va"], leaf["pa"], tlb_flags(leaf["entry"]["raw"])) for leaf in leaves}
    assert ours == {tuple(line) for line in decode_info_tlb(qemu.monitor("info tlb"))}
    whole = json.loads(kinspect("--target", qemu.gdb_endpoint, "pt", "--json", "--leaves").stdout)
    assert leaves == whole["leaves"] and end["problems"] == whole["problems"]
    assert head["cr3"] == whole["cr3"]


def test_pt_json_lines_wants_leaves(qemu):
    result = kinspect("--target", qemu.gdb_endpoint, "pt", "--json-lines")
    assert result.returncode == 2 and "--json-lines goes with --leaves" in result.stderr
    assert "Traceback" not in result.stderr


def test_pt_json_ranges_cover_the_leaves(qemu):
    result = kinspect("--target", qemu.gdb_endpoint, "pt", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert sum(r["end"] - r["start"] for r in doc["ranges"]) > 0
    truth = list(decode_info_tlb(qemu.monitor("info tlb")))
    for va, pa, _flags in truth[:: max(1, len(truth) // 200)]:
        covering = [r for r in doc["ranges"] if r["start"] <= va < r["end"]]
        assert len(covering) == 1
        assert covering[0]["phys"] + (va - covering[0]["start"]) == pa


def test_pt_text_is_ptdump_like(qemu):
    result = kinspect("--target", qemu.gdb_endpoint, "pt")
    assert result.returncode == 0, result.stderr
    assert "0xffffffff80" in result.stdout and "leaves in" in result.stdout


def test_regs_text_and_json(qemu):
    text = kinspect("--target", qemu.gdb_endpoint, "regs")
    assert text.returncode == 0, text.stderr
    assert "PG" in text.stdout and "NXE" in text.stdout and "4-level" in text.stdout
    doc = json.loads(kinspect("--target", qemu.gdb_endpoint, "regs", "--json").stdout)
    assert doc["control"]["CR0"]["value"] & 0x80000000
    assert "rip" in doc["general"]


def test_vtop_by_symbol_shows_the_walk(qemu, demo_kernel):
    result = kinspect("--target", qemu.gdb_endpoint, "--elf", demo_kernel, "vtop", "demo_level3")
    assert result.returncode == 0, result.stderr
    for level in ("PML4", "PDPT", "PD", "PT"):
        assert level in result.stdout


def test_ptov_lists_aliases(qemu):
    result = kinspect("--target", qemu.gdb_endpoint, "ptov", "0x100000")
    assert result.returncode == 0, result.stderr
    vas = [int(line.split()[0], 16) for line in result.stdout.splitlines()]
    assert 0x100000 in vas and 0xFFFF888000100000 in vas and 0xFFFFFFFF80100000 in vas


def test_vtop_unmapped_is_one_line_error(qemu):
    assert_one_line_error(
        kinspect("--target", qemu.gdb_endpoint, "vtop", "0x0"), contains="not present"
    )


def test_vtop_non_canonical_is_one_line_error(qemu):
    assert_one_line_error(
        kinspect("--target", qemu.gdb_endpoint, "vtop", "0x0000800000000000"), contains="canonical"
    )


def test_unknown_symbol_is_one_line_error(qemu, demo_kernel):
    assert_one_line_error(
        kinspect("--target", qemu.gdb_endpoint, "--elf", demo_kernel, "vtop", "no_such_symbol"),
        contains="no_such_symbol",
    )


def test_nothing_listening_is_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        started = time.monotonic()
        result = kinspect("--target", f"127.0.0.1:{port}", "regs", timeout=30)
    assert_one_line_error(result, contains="cannot attach")
    assert time.monotonic() - started < 20


def test_missing_socket_path_is_one_line_error(tmp_path):
    assert_one_line_error(
        kinspect("--target", str(tmp_path / "nope.sock"), "pt"), contains="cannot attach"
    )


def test_usage_error_exits_2():
    result = kinspect("pt")
    assert result.returncode == 2 and "Traceback" not in result.stderr


def test_kernel_keeps_running_between_inspections(qemu, demo_kernel):
    """Each command stops the kernel, reads, and lets it run again on exit."""

    def ticks() -> int:
        with api.attach(qemu.gdb_endpoint, elf=demo_kernel) as s:
            address = s.symbols.lookup("demo_ticks")
            return int.from_bytes(s.read_virtual(address, 8), "little")

    first = ticks()
    wait_until(lambda: ticks() > first, what="demo_ticks moves: the kernel runs again")


def test_no_resume_leaves_the_kernel_stopped(qemu):
    result = kinspect("--target", qemu.gdb_endpoint, "--no-resume", "regs")
    assert result.returncode == 0, result.stderr
    with qemu.qmp() as q:
        assert q.execute("query-status")["running"] is False
        q.execute("cont")
        assert q.execute("query-status")["running"] is True


def test_qemu_exiting_mid_walk_is_one_line_error(demo_kernel):
    instance = api.launch_demo()
    try:
        session = api.attach(instance.gdb_endpoint, elf=demo_kernel)
        original, batch = session.target.read_physical, session.target.read_physical_many
        calls = 0

        def dying(read):
            def read_then_die(*args):
                nonlocal calls
                calls += 1
                if calls == 3:
                    os.kill(instance.pid, 9)
                    instance.process.wait(5)
                return read(*args)

            return read_then_die

        # the walk reads a level of tables a batch (read_physical_many), then single pages
        session.target.read_physical = dying(original)
        session.target.read_physical_many = dying(batch)
        with pytest.raises(api.TargetError) as excinfo:
            session.address_space()
        assert "\n" not in str(excinfo.value)
        session.close()
    finally:
        instance.stop()


def test_the_tui_command_line_runs_the_same_commands(qemu, demo_kernel):
    """registry().execute, the TUI's `:` line, gives the CLI's text and document byte for byte."""
    from kinspect.inspector.commands import UsageError, registry
    from kinspect.inspector.formatting import format_json

    where = ("--target", qemu.gdb_endpoint, "--elf", demo_kernel)
    vtop = kinspect(*where, "vtop", "kernel_main")
    gdt = kinspect(*where, "--json", "gdt")
    unmapped = kinspect(*where, "vtop", "0x7fff00000000")
    assert vtop.returncode == 0 and gdt.returncode == 0, (vtop.stderr, gdt.stderr)
    with api.attach(qemu.gdb_endpoint, elf=demo_kernel) as session:
        commands = registry()
        assert commands.execute(session, "vtop kernel_main").text + "\n" == vtop.stdout
        assert format_json(commands.execute(session, "gdt").document) == gdt.stdout
        failed = commands.execute(session, "vtop 0x7fff00000000")
        with pytest.raises(UsageError, match="required: address"):
            commands.execute(session, "vtop")
    assert failed.status == unmapped.returncode == 1
    assert failed.text + "\n" == unmapped.stdout
    assert unmapped.stderr == f"kinspect: error: {failed.error}\n"


def test_type_reads_the_demo_kernels_dwarf_when_it_has_no_btf(qemu, demo_kernel):
    """The demo kernel carries no BTF: ``type`` takes the layout from the DWARF of
    ``--elf`` (checked against gdb's own ``ptype /o``); without ``--elf``, and ``tasks``
    on a kernel that is not Linux, one line each."""
    from tests.unit.test_linux_dwarf_types import gdb_ptype

    where = ("--target", qemu.gdb_endpoint, "--elf", demo_kernel)
    result = kinspect(*where, "--json", "type", "demo_pte_view")
    assert result.returncode == 0, result.stderr
    layout = json.loads(result.stdout)["type"]
    members = {m["name"]: m for m in layout["members"]}
    assert set(members) == {"va", "", "level", "leaf", "name"}
    truth = gdb_ptype(demo_kernel, "demo_pte_view")
    assert truth[-1] == ("(size)", 0, layout["size"])
    checked = 0
    for name, bit, size in truth[:-1]:
        if name in members and name:
            member = members[name]
            assert member["offset"] * 8 + (member["bit_offset"] or 0) == bit, member
            assert member["size"] == size
            checked += 1
    assert checked == 4  # va, level:3, leaf:1, name[5]
    text = kinspect(*where, "type", "demo_pte_view")
    assert "uint8_t leaf:1;" in text.stdout and "/*    16: 3    1 */" in text.stdout

    assert_one_line_error(
        kinspect("--target", qemu.gdb_endpoint, "type", "demo_pte_view"), contains="--elf"
    )
    assert_one_line_error(kinspect(*where, "tasks"), contains="Linux")


def test_mem_phys_write_and_writes_as_a_user_runs_them(qemu, demo_kernel, tmp_path):
    """``mem``/``phys`` equal QEMU's monitor ``x``/``xp``; past the end of RAM, what was
    readable and one line naming the first unreadable address (exit 1); ``write`` with
    nobody to ask writes nothing; ``--yes`` writes, and ``writes`` lists it."""
    env = {**os.environ, "KINSPECT_WRITES_LOG": str(tmp_path / "writes.log")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kinspect.inspector.cli", "--target", qemu.gdb_endpoint,
             "--elf", demo_kernel, "--no-resume", *args],
            capture_output=True, text=True, timeout=60, env=env, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    doc = json.loads(run("--json", "mem", "demo_state", "32").stdout)
    shown = qemu.monitor(f"x /32xb {doc['address']:#x}")
    monitor = bytes(int(v, 16) for line in shown.splitlines() for v in line.split(":")[1].split())
    assert bytes.fromhex(doc["data"]) == monitor and doc["unreadable"] is None
    ram = 128 << 20  # launch_demo's -m 128M: the last 16 bytes, then past the end
    result = run("phys", f"{ram - 16:#x}", "32")
    assert result.returncode == 1 and result.stdout.startswith(f"{ram - 16:#018x}: ")
    assert len(result.stdout.splitlines()) == 1
    assert_one_line_error(result, contains=f"{ram:#x} is unreadable")
    stack = run("--json", "regs")
    rsp = json.loads(stack.stdout)["general"]["rsp"]
    target = rsp - 0x800
    assert_one_line_error(run("write", hex(target), "aa", "bb"), contains="nothing written")
    result = run("write", hex(target), "--u16", "0xbbaa", "--yes")
    assert result.returncode == 0, result.stderr
    assert qemu.monitor(f"x /2xb {target:#x}").split(":")[1].split() == ["0xaa", "0xbb"]
    listed = json.loads(run("--json", "writes").stdout)["writes"]
    assert [(w["kind"], w["where"], w["new"]) for w in listed] == [("virtual", target, "aabb")]
    subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", "--target", qemu.gdb_endpoint, "regs"],
        capture_output=True, timeout=60,
    )  # fmt: skip  # let the kernel run again
