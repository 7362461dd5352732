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

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def guest(linux_guest, tmp_path_factory):
    """The guest and a kinspect cache of its own (kallsyms and BTF, filled by the first run)."""
    return linux_guest, tmp_path_factory.mktemp("cache")


def kinspect(guest, *args, timeout=240):
    qemu, cache = guest
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "kinspect.inspector.cli", "--target", qemu.gdb_endpoint, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


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


def sched_text(linux_guest):
    lines = linux_guest.shell("grep -E ' __sched_text_(start|end)$' /proc/kallsyms").output
    found = {line.split()[2]: int(line.split()[0], 16) for line in lines.splitlines()}
    return found["__sched_text_start"], found["__sched_text_end"]


@pytest.mark.parametrize("sleeper", ["nanosleep", "pipe_read"])
def test_bt_task_equals_proc_stack(guest, sleeper):
    linux_guest, _ = guest
    pid = linux_guest.pids[sleeper]
    stack = linux_guest.shell(f"cat /proc/{pid}/stack").output
    theirs = re.findall(r"^\[<[0-9a-f]+>\] (\S+)\+0x", stack, re.M)
    assert theirs, stack
    start, end = sched_text(linux_guest)
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


def test_pt_task_maps_what_pagemap_says(guest):
    linux_guest, _ = guest
    pid = linux_guest.pids["nanosleep"]
    present = pagemap(linux_guest, pid)
    assert len(present) > 5, present
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
