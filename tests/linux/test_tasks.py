"""Tasks, their stacks and their address spaces from the kernel's own BTF, on the stock
Debian guest (one boot for the module), against what the guest says about itself: busybox
``ps``, /proc/PID/stack, /proc/PID/pagemap."""

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
import tarfile

import pytest

from .conftest import stopped_in_kernel

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest(linux_guest, tmp_path_factory):
    """The guest and a kinspect cache of its own (kallsyms and BTF, filled by the first run)."""
    return linux_guest, tmp_path_factory.mktemp("cache")


def kinspect(guest, *args, timeout=240):
    """The command line on the guest. Its one stop may find the guest in user space under
    PTI (the shell just answered), where no kernel is mapped to recognize (the error says
    so): run again then, as a user would, a bounded number of times."""
    qemu, cache = guest
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    for _ in range(20):
        result = subprocess.run(
            [sys.executable, "-m", "kinspect.inspector.cli", "--target", qemu.gdb_endpoint, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        if "user space under PTI" not in result.stderr:
            break
    return result


def ps(linux_guest):
    """busybox ps: {pid: (comm, the state letter)}, ps itself left out."""
    result = linux_guest.shell("ps -o pid,stat,comm")
    found = {}
    for line in result.output.splitlines()[1:]:
        fields = line.split(None, 2)
        if len(fields) == 3 and fields[0].isdigit():
            found[int(fields[0])] = (fields[2].strip(), fields[1][0])
    return {pid: what for pid, what in found.items() if what[0] != "ps"}


def same_as_ps(ours, theirs):
    """``theirs`` when ``ours`` is what ps shows: /proc adds a workqueue worker's current
    work to its name (fs/proc/array.c's proc_task_name: ``kworker/0:0-rcu_gp``), cut to
    15 characters, which task_struct.comm does not hold."""
    if ours is None:
        return None
    comm, state = ours
    shown, their_state = theirs
    if comm.startswith("kworker/") and shown.startswith(comm + "-"):
        comm = shown
    return comm, state


def test_tasks_equal_the_guests_ps(guest):
    linux_guest, _ = guest
    before = ps(linux_guest)
    result = kinspect(guest, "--json", "tasks")
    assert result.returncode == 0, result.stderr
    after = ps(linux_guest)
    document = json.loads(result.stdout)
    assert document["command"] == "tasks" and document["problem"] is None
    ours = {t["pid"]: (t["comm"], t["state"]) for t in document["tasks"]}
    # kernel threads may come and go between two ps runs: the ones in both must be ours,
    # with the same comm and state, and we list nothing that neither ps saw
    stable = {pid: what for pid, what in before.items() if after.get(pid) == what}
    assert len(stable) > 30, (before, after)
    assert {pid: same_as_ps(ours.get(pid), what) for pid, what in stable.items()} == stable
    assert set(ours) <= set(before) | set(after)
    # the sleepers /init started: user tasks with a page-table root; kthreadd is a kernel thread
    by_pid = {t["pid"]: t for t in document["tasks"]}
    for pid in linux_guest.pids.values():
        assert by_pid[pid]["state"] == "S"
        assert not by_pid[pid]["kernel_thread"]
        assert by_pid[pid]["pgd_physical"] % 4096 == 0 and by_pid[pid]["pgd_physical"] > 0
    assert by_pid[2]["kernel_thread"] and by_pid[2]["pgd"] is None
    # a single CPU, stopped while the guest idles in its idle task (pid 0, on no list)
    assert [c["cpu"] for c in document["current"]] == [0]
    text = kinspect(guest, "tasks")
    assert text.returncode == 0, text.stderr
    assert re.search(rf"^\s+{linux_guest.pids['nanosleep']}\s+.* S .*\bsleep$", text.stdout, re.M)


@pytest.fixture(scope="module")
def sched_text(guest):
    """Where .sched.text starts and ends, as the guest's /proc/kallsyms says (asked once)."""
    lines = guest[0].shell("grep -E ' __sched_text_(start|end)$' /proc/kallsyms").output
    found = {line.split()[2]: int(line.split()[0], 16) for line in lines.splitlines()}
    return found["__sched_text_start"], found["__sched_text_end"]


@pytest.mark.parametrize("sleeper", ["nanosleep", "pipe_read"])
def test_bt_task_equals_proc_stack(guest, sched_text, sleeper):
    linux_guest, _ = guest
    pid = linux_guest.pids[sleeper]
    stack = linux_guest.shell(f"cat /proc/{pid}/stack").output
    theirs = re.findall(r"^\[<[0-9a-f]+>\] (\S+)\+0x", stack, re.M)
    assert theirs, stack
    start, end = sched_text
    result = kinspect(guest, "--json", "bt", "--task", str(pid))
    assert result.returncode == 0, result.stderr
    backtrace = json.loads(result.stdout)["backtrace"]
    frames = backtrace["frames"]
    kernel = [f for f in frames if f["pc"] >> 63]
    # /proc/PID/stack leaves out the scheduler's own functions (.sched.text): so do we here
    shown = [f["symbol"] for f in kernel if not start <= f["pc"] - 1 < end]
    assert shown == theirs
    assert [f["symbol"] for f in kernel][:2] == ["__schedule", "schedule"]
    if sleeper == "nanosleep":
        assert [f["symbol"] for f in kernel] == [
            "__schedule", "schedule", "do_nanosleep", "hrtimer_nanosleep", "common_nsleep",
            "__x64_sys_clock_nanosleep", "do_syscall_64", "entry_SYSCALL_64_after_hwframe",
        ]  # fmt: skip
    # through the syscall entry into the task's user-space pt_regs
    assert backtrace["stop"] == "outermost"
    assert frames[-1]["how"] == "interrupt" and frames[-1]["interrupt"]["cs"] & 3 == 3
    assert frames[-1]["symbol"] is None  # a user-space PC: no kernel symbol names it


def test_type_prints_layouts_from_btf(guest):
    result = kinspect(guest, "--json", "type", "inactive_task_frame")
    assert result.returncode == 0, result.stderr
    layout = json.loads(result.stdout)["type"]
    # arch/x86/include/asm/switch_to.h in 6.1: the registers __switch_to_asm pushes
    assert [(m["name"], m["offset"], m["size"]) for m in layout["members"]] == [
        ("r15", 0, 8), ("r14", 8, 8), ("r13", 16, 8), ("r12", 24, 8), ("bx", 32, 8),
        ("bp", 40, 8), ("ret_addr", 48, 8),
    ]  # fmt: skip
    text = kinspect(guest, "type", "list_head")
    assert text.returncode == 0, text.stderr
    assert re.search(r"struct list_head \*next;\s+/\*\s+0\s+8 \*/", text.stdout)
    assert re.search(r"struct list_head \*prev;\s+/\*\s+8\s+8 \*/", text.stdout)
    nobody = kinspect(guest, "bt", "--task", "99999")
    assert nobody.returncode == 1
    assert nobody.stderr.strip().splitlines() == [
        "kinspect: error: no task with PID 99999 on the kernel's task list"
    ]
    missing = kinspect(guest, "type", "no_such_struct")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        "kinspect: error: the kernel's BTF has no type 'no_such_struct'"
    ]


def pagemap(linux_guest, pid):
    """{virtual page: physical frame} of every page /proc/PID/pagemap says is present."""
    script = (
        f"grep -v vsyscall /proc/{pid}/maps | while read r rest; do s=${{r%-*}}; e=${{r#*-}}; "
        f"echo $s $(dd if=/proc/{pid}/pagemap bs=8 skip=$((0x$s/4096)) "
        f"count=$(((0x$e-0x$s)/4096)) 2>/dev/null | base64 -w0); done"
    )
    present = {}
    for line in linux_guest.shell(script).output.splitlines():
        start_text, _, encoded = line.strip().partition(" ")
        data = base64.b64decode(encoded)
        start = int(start_text, 16)
        for i, (entry,) in enumerate(struct.iter_unpack("<Q", data)):
            if entry >> 63:  # bit 63: present; bits 0-54: the frame
                present[start + 4096 * i] = (entry & ((1 << 55) - 1)) * 4096
    return present


@pytest.fixture(scope="module")
def sleeper_pages(guest):
    """The nanosleep sleeper's present pages, as its /proc/PID/pagemap says (asked once:
    it sleeps, they stay)."""
    present = pagemap(guest[0], guest[0].pids["nanosleep"])
    assert len(present) > 5, present
    return present


def test_pt_task_maps_what_pagemap_says(guest, sleeper_pages):
    linux_guest, _ = guest
    pid = linux_guest.pids["nanosleep"]
    present = sleeper_pages
    result = kinspect(guest, "--json", "pt", "--task", str(pid), "--leaves")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["task"]["pid"] == pid
    # the guest runs with pti=on: both copies, the user one a page above the kernel's
    kernel_copy, user_copy = document["kernel_copy"], document["user_copy"]
    assert user_copy is not None and user_copy["pgd"] == kernel_copy["pgd"] + 4096
    for copy in (kernel_copy, user_copy):
        leaves = [(leaf["va"], leaf["size"], leaf["pa"]) for leaf in copy["leaves"]]
        found = {}
        for va in present:
            for start, size, pa in leaves:
                if start <= va < start + size:
                    found[va] = pa + va - start
                    break
        assert found == present
        assert all(leaf["permissions"]["user"] for leaf in copy["leaves"] if leaf["va"] in present)
    # the kernel's copy makes user space non-executable (PTI: the user copy runs it)
    assert not any(
        leaf["permissions"]["executable"] for leaf in kernel_copy["leaves"] if leaf["va"] in present
    )
    # one page of the sleeper: vtop through its tables, ptov names it as an owner
    va, frame = max(present.items())  # its stack's top page
    result = kinspect(guest, "--json", "vtop", "--task", str(pid), hex(va + 0x18))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["pa"] == frame + 0x18
    result = kinspect(guest, "--json", "ptov", "--all-tasks", hex(frame + 0x18))
    assert result.returncode == 0, result.stderr
    owners = json.loads(result.stdout)["owners"]
    assert {"virtual": va + 0x18, "pid": pid, "comm": "sleep"} in owners
    # the direct map maps every frame: the kernel half is listed once, with no task
    assert any(o["pid"] is None and o["virtual"] >> 63 for o in owners)
    kthread = kinspect(guest, "pt", "--task", "2")
    assert kthread.returncode == 1
    assert "kernel thread" in kthread.stderr and "Traceback" not in kthread.stderr


@pytest.mark.timeout(600)
def test_the_tui_tasks_pane_shows_what_the_guest_says(
    guest, sched_text, sleeper_pages, monkeypatch
):
    """The TUI on the guest (the module's boot): T lists init and the sleeper; Enter on
    the sleeper (``:tasks PID``) shows its stack, the functions /proc/PID/stack lists,
    and its address space from the root the list shows (PTI: the user copy above),
    whose tables map every page /proc/PID/pagemap says is present, at that frame."""
    import asyncio
    import time

    from textual.widgets import TabbedContent

    from kinspect.inspector import api
    from kinspect.tui.app import make_app
    from kinspect.tui.panes.tasks import TasksView, TaskTable

    linux_guest, cache = guest
    sleeper = linux_guest.pids["nanosleep"]
    start, end = sched_text
    # asked before attaching (the shell needs the guest running); not init's: init is
    # the shell that answers, in do_wait for cat while asked, in poll once idle
    stack = linux_guest.shell(f"cat /proc/{sleeper}/stack").output
    theirs = re.findall(r"^\[<[0-9a-f]+>\] (\S+)\+0x", stack, re.M)
    assert theirs, stack
    present = sleeper_pages
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # the kallsyms and BTF read already

    async def until(app, pilot, predicate, what, timeout=240.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"waited {timeout:.0f} s for {what}: {app.errors}")
            await pilot.pause(0.1)
        await app.wait_idle(timeout)

    def shown(app, pid):
        detail = app.query_one(TasksView).detail
        return detail is not None and detail.task.pid == pid

    async def go():
        # the shell just answered: stopped in its user space, the app would see no kernel
        app = make_app(stopped_in_kernel(api.attach(linux_guest.gdb_endpoint)))
        async with app.run_test(size=(160, 48)) as pilot:
            await until(app, pilot, lambda: app.stops >= 1, "the first stop")
            tabs = app.query_one(TabbedContent)
            await until(app, pilot, lambda: tabs.get_tab("tasks").display, "the tab (Linux)")
            await pilot.press("T")
            table = app.query_one(TaskTable)
            await until(app, pilot, lambda: table.row_count > 30, "the task list")
            rows = {int(str(table.get_row_at(i)[0])): i for i in range(table.row_count)}
            view = app.query_one(TasksView)
            init = view.rows[rows[1]]
            assert (init.comm, init.kernel_thread) == ("init", False)
            assert [str(c) for c in table.get_row_at(rows[sleeper])][-1] == "sleep"
            assert init.pgd_physical and init.pgd_physical % 8192 == 0  # PTI: two pages
            started = time.monotonic()
            # one walk of a whole address space (the budget of make test)
            pid = sleeper
            app.run_command(f"tasks {pid}")
            await until(app, pilot, lambda: shown(app, pid), f"task {pid}")
            detail = view.detail
            assert detail.stack_error is None and detail.space_error is None
            kernel = [f.symbol for f in detail.backtrace.frames if f.pc >> 63]
            assert kernel[:2] == ["__schedule", "schedule"], str(detail.backtrace)
            assert kernel[-1] == "entry_SYSCALL_64_after_hwframe"
            assert detail.backtrace.stop == "outermost"  # into its user-space pt_regs
            stack_text = str(app.query_one("#task-stack").render())
            assert all(name in stack_text for name in kernel)
            # /proc/PID/stack leaves out the scheduler's functions (.sched.text)
            frames = [f for f in detail.backtrace.frames if f.pc >> 63]
            ours = [f.symbol for f in frames if not start <= f.pc - 1 < end]
            assert ours == theirs, str(detail.backtrace)
            # the tables from the root the list shows; under PTI the user copy above
            row = view.rows[rows[pid]]
            kernel_copy, user_copy = detail.copies
            assert kernel_copy.space.cr3 == row.pgd_physical
            assert user_copy.space.cr3 == row.pgd_physical + 4096
            assert "PTI: the user-space copy" in str(app.query_one("#task-space").render())
            print(f"the sleeper's stack and tables: {time.monotonic() - started:.1f} s")
            for copy in detail.copies:  # the sleeper's: every present page, at its frame
                found = {}
                for va in present:
                    for leaf in copy.space.leaves:
                        if leaf.va <= va < leaf.va + leaf.size:
                            found[va] = leaf.pa + va - leaf.va
                            break
                assert found == present
            assert app.errors == []

    asyncio.run(asyncio.wait_for(go(), 600))
    # the app let the guest run again: its shell answers
    assert linux_guest.shell("echo alive").output.strip() == "alive"


#: small modules of the kernel package without dependencies, loaded for the modules test
MODULES = ("kernel/lib/crc7.ko", "kernel/net/ipv4/tcp_bic.ko")


def load_module(linux_guest, relative):
    """Extract a module from the kernel's .deb and insmod it through the serial console
    (base64 in lines under the tty's 4096-byte line limit)."""
    files = linux_guest.files
    if files.deb is None:
        pytest.fail("the kernel's .deb is not in build/linux/debs: run `make linux-guest`")
    member = f"./lib/modules/{files.release}/{relative}"
    tar = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(files.deb)], capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        data = archive.extractfile(member).read()
    encoded = base64.b64encode(data).decode()
    target = "/tmp/" + relative.rsplit("/", 1)[1]
    linux_guest.shell(f"rm -f {target}.b64")
    for i in range(0, len(encoded), 2048):
        linux_guest.shell(f"echo {encoded[i : i + 2048]} >> {target}.b64")
    linux_guest.shell(f"base64 -d {target}.b64 > {target} && insmod {target}")


def test_modules_equal_proc_modules(guest):
    linux_guest, _ = guest
    loaded = linux_guest.shell("cat /proc/modules").output.split()
    for relative in MODULES:
        name = relative.rsplit("/", 1)[1][: -len(".ko")]
        if name not in loaded:
            load_module(linux_guest, relative)
    theirs = [
        line.split()[:6] for line in linux_guest.shell("cat /proc/modules").output.splitlines()
    ]
    assert {"crc7", "tcp_bic"} <= {fields[0] for fields in theirs}
    result = kinspect(guest, "--json", "modules")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["problem"] is None
    ours = [
        [
            m["name"], str(m["size"]), str(m["refcount"]),
            ",".join(m["used_by"]) + "," if m["used_by"] else "-", m["state"], f"{m['base']:#x}",
        ]
        for m in document["modules"]
    ]  # fmt: skip
    assert ours == theirs
    # sym names module addresses as /proc/kallsyms does: "name [module]"
    listed = linux_guest.shell("grep -E ' [tT] .*\\[tcp_bic\\]' /proc/kallsyms").output
    names = {}
    for line in listed.splitlines():
        address, _, name = line.split()[:3]
        names.setdefault(int(address, 16), set()).add(name)
    assert len(names) >= 3, listed
    result = kinspect(guest, "--json", "sym", *(hex(a + 1) for a in sorted(names)))
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)["addresses"]
    for address, answer in zip(sorted(names), found, strict=True):
        name, _, module = answer["symbol"].partition(" ")
        assert (name in names[address], module, answer["offset"]) == (True, "[tcp_bic]", 1)
    # the core text is where /proc/modules's address is, executable and nothing else is
    for module in document["modules"]:
        text = next(p for p in module["parts"] if p["name"] == "text")
        assert text["base"] == module["base"] and text["permissions"] == "r-x"
