"""Linux tasks from the kernel's memory, laid out by its own BTF: ``tasks``, ``bt --task``.

Every process is on the list that starts at ``init_task.tasks``; each CPU's running task
is its per-CPU ``current_task`` (``pcpu_hot.current_task`` from 6.2). Every offset comes
from BTF (:mod:`.btf`), so one code reads every kernel that carries it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InspectorError
from .btf import Btf

__all__ = [
    "SavedContext",
    "Task",
    "TaskList",
    "find_task",
    "pti_user_copy",
    "format_tasks",
    "read_tasks",
    "saved_context",
    "task_state_letter",
]

ReadVirtual = Callable[[int, int], bytes]
Lookup = Callable[[str], int | None]

#: what ps shows for the state bits (fs/proc/array.c's task_state_array, by fls)
_STATE_LETTERS = "RSDTtXZP"
#: TASK_REPORT: the state bits /proc reports; TASK_IDLE (UNINTERRUPTIBLE | NOLOAD) is "I",
#: TASK_RTLOCK_WAIT reads as "D" (include/linux/sched.h, stable since 4.14)
_TASK_REPORT = 0x7F
_TASK_IDLE = 0x402
_TASK_RTLOCK_WAIT = 0x1000
#: the most tasks walked: a corrupt list ends the walk, never loops forever
MAX_TASKS = 65536


def task_state_letter(state: int, exit_state: int = 0) -> str:
    """The letter ps shows for ``task_struct.__state`` and ``exit_state``."""
    if state == _TASK_IDLE:
        return "I"
    if state == _TASK_RTLOCK_WAIT:
        state = 0x2
    value = (state | exit_state) & _TASK_REPORT
    return _STATE_LETTERS[value.bit_length()]


@dataclass(frozen=True, slots=True)
class Task:
    """One task (a process: the list holds thread-group leaders)."""

    address: int
    pid: int
    tgid: int
    comm: str
    #: ps's letter (R S D T t X Z P I) and the raw ``__state`` value
    state: str
    state_value: int
    cpu: int
    #: ``mm`` NULL: a kernel thread
    kernel_thread: bool
    mm: int
    #: ``mm->pgd`` (virtual, in the direct map) and its physical address: the CR3 base
    pgd: int | None
    pgd_physical: int | None
    #: the CPUs on which it is ``current``
    current_on: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "pid": self.pid,
            "tgid": self.tgid,
            "comm": self.comm,
            "state": self.state,
            "state_value": self.state_value,
            "cpu": self.cpu,
            "kernel_thread": self.kernel_thread,
            "mm": self.mm or None,
            "pgd": self.pgd,
            "pgd_physical": self.pgd_physical,
            "current_on": list(self.current_on),
        }


@dataclass(frozen=True, slots=True)
class TaskList:
    tasks: tuple[Task, ...]
    #: per CPU, its current task (an idle task, pid 0, is on no list: it is read here)
    current: tuple[Task, ...]
    #: why the walk ended early (a broken list), else None
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tasks": [t.to_dict() for t in self.tasks],
            "current": [
                {"cpu": cpu, "pid": t.pid, "comm": t.comm, "address": t.address}
                for cpu, t in enumerate(self.current)
            ],
            "problem": self.problem,
        }

    def __str__(self) -> str:
        return format_tasks(self)


def format_tasks(found: TaskList) -> str:
    lines = [f"{'PID':>7} {'TGID':>7} S CPU {'TASK':<18} {'PGD (phys)':<18} COMM"]
    for task in found.tasks:
        pgd = f"{task.pgd_physical:#x}" if task.pgd_physical is not None else "-"
        comm = f"[{task.comm}]" if task.kernel_thread else task.comm
        mark = "".join(f" <- current on CPU {cpu}" for cpu in task.current_on)
        lines.append(
            f"{task.pid:>7} {task.tgid:>7} {task.state} {task.cpu:>3} "
            f"{task.address:#018x} {pgd:<18} {comm}{mark}"
        )
    lines.append(f"{len(found.tasks)} tasks")
    for cpu, task in enumerate(found.current):
        lines.append(f"CPU {cpu}: current {task.comm} (pid {task.pid}) at {task.address:#x}")
    if found.problem:
        lines.append(f"(the list ends early: {found.problem})")
    return "\n".join(lines)


class _Layout:
    """The task_struct members kinspect reads, by BTF."""

    def __init__(self, btf: Btf) -> None:
        self.btf = btf
        field = btf.offset
        self.tasks = field("task_struct", "tasks")
        self.pid = field("task_struct", "pid")
        self.tgid = field("task_struct", "tgid")
        self.comm = btf.field("task_struct", "comm")
        self.comm_size = btf.sizeof(self.comm.type)
        state = "__state" if btf.has_field("task_struct", "__state") else "state"
        self.state = field("task_struct", state)
        self.state_size = btf.sizeof(btf.field("task_struct", state).type)
        self.exit_state = field("task_struct", "exit_state")
        cpu = "thread_info.cpu" if btf.has_field("task_struct", "thread_info.cpu") else "cpu"
        self.cpu = field("task_struct", cpu)
        self.mm = field("task_struct", "mm")
        self.pgd = field("mm_struct", "pgd")
        offsets = [self.tasks, self.pid, self.tgid, self.state, self.exit_state, self.cpu]
        offsets += [self.mm]
        self.start = min([*offsets, self.comm.offset])
        self.end = max([o + 8 for o in offsets] + [self.comm.offset + self.comm_size])


def _u(data: bytes, offset: int, size: int = 8, signed: bool = False) -> int:
    return int.from_bytes(data[offset : offset + size], "little", signed=signed)


def _current_tasks(read_virtual: ReadVirtual, btf: Btf, lookup: Lookup) -> list[int]:
    """Per CPU, its current task: ``pcpu_hot.current_task`` or ``current_task``."""
    offsets_at = lookup("__per_cpu_offset")
    variable = lookup("pcpu_hot")
    if variable is not None:
        variable += btf.offset("pcpu_hot", "current_task")
    else:
        variable = lookup("current_task")
    if offsets_at is None or variable is None:
        return []
    count_at = lookup("nr_cpu_ids")
    count = struct.unpack("<I", read_virtual(count_at, 4))[0] if count_at is not None else 1
    count = max(1, min(count, 8192))
    per_cpu = struct.unpack(f"<{count}Q", read_virtual(offsets_at, 8 * count))
    return [_u(read_virtual(offset + variable, 8), 0) for offset in per_cpu]


def read_tasks(
    read_virtual: ReadVirtual, btf: Btf, lookup: Lookup, *, page_offset_base: int | None
) -> TaskList:
    """Every task on ``init_task.tasks`` (init_task itself, pid 0, is the list's head)."""
    layout = _Layout(btf)
    head = lookup("init_task")
    if head is None:
        raise InspectorError("the kernel's symbols have no init_task")
    current = _current_tasks(read_virtual, btf, lookup)
    tasks: list[Task] = []
    problem = None
    seen = {head}
    link = _u(read_virtual(head + layout.tasks, 8), 0)
    while True:
        address = link - layout.tasks
        if address == head:
            break
        if address in seen or len(tasks) >= MAX_TASKS:
            problem = f"the list loops back to {address:#x} without reaching init_task"
            break
        seen.add(address)
        try:
            data = read_virtual(address + layout.start, layout.end - layout.start)
        except InspectorError as exc:
            problem = f"cannot read the task at {address:#x}: {exc}"
            break
        tasks.append(_task(read_virtual, layout, address, data, current, page_offset_base))
        link = _u(data, layout.tasks - layout.start)
    listed = {task.address: task for task in tasks}
    on_cpu = []
    for address in current:
        task = listed.get(address)
        if task is None:
            data = read_virtual(address + layout.start, layout.end - layout.start)
            task = _task(read_virtual, layout, address, data, current, page_offset_base)
        on_cpu.append(task)
    return TaskList(tuple(tasks), tuple(on_cpu), problem)


def _task(
    read_virtual: ReadVirtual,
    layout: _Layout,
    address: int,
    data: bytes,
    current: list[int],
    page_offset_base: int | None,
) -> Task:
    base = layout.start
    comm_at = layout.comm.offset - base
    comm = data[comm_at : comm_at + layout.comm_size].split(b"\0")[0].decode("utf-8", "replace")
    state = _u(data, layout.state - base, layout.state_size)
    exit_state = _u(data, layout.exit_state - base, 4)
    mm = _u(data, layout.mm - base)
    pgd = pgd_physical = None
    if mm:
        try:
            pgd = _u(read_virtual(mm + layout.pgd, 8), 0)
        except InspectorError:
            pgd = None
        if pgd is not None and page_offset_base is not None and pgd >= page_offset_base:
            pgd_physical = pgd - page_offset_base
    return Task(
        address=address,
        pid=_u(data, layout.pid - base, 4, signed=True),
        tgid=_u(data, layout.tgid - base, 4, signed=True),
        comm=comm,
        state=task_state_letter(state, exit_state),
        state_value=state,
        cpu=_u(data, layout.cpu - base, 4),
        kernel_thread=mm == 0,
        mm=mm,
        pgd=pgd,
        pgd_physical=pgd_physical,
        current_on=tuple(cpu for cpu, task in enumerate(current) if task == address),
    )


def find_task(found: TaskList, pid: int) -> Task:
    """Task ``pid`` on the list, or a CPU's idle task (pid 0: the first CPU's)."""
    for task in (*found.tasks, *found.current):
        if task.pid == pid:
            return task
    raise InspectorError(f"no task with PID {pid} on the kernel's task list")


@dataclass(frozen=True, slots=True)
class SavedContext:
    """Where a task that is not running left off: ``thread.sp`` and the
    ``inactive_task_frame`` there (the registers ``__switch_to_asm`` pushed)."""

    sp: int
    registers: dict[str, int]


def saved_context(read_virtual: ReadVirtual, btf: Btf, task: int) -> SavedContext:
    """The registers to unwind a sleeping task from: RIP is the frame's ``ret_addr``
    (a return address), RSP just above the frame, the callee-saved ones as pushed."""
    sp = _u(read_virtual(task + btf.offset("task_struct", "thread.sp"), 8), 0)
    frame = btf.struct("inactive_task_frame")
    size = btf.sizeof(frame.id)
    data = read_virtual(sp, size)
    registers = {"rsp": sp + size}
    names = {"ret_addr": "rip", "bp": "rbp", "bx": "rbx"}
    for member in frame.members:
        name = names.get(member.name, member.name)
        if name in ("rip", "rbp", "rbx", "r12", "r13", "r14", "r15"):
            registers[name] = _u(data, member.bit_offset // 8)
    if "rip" not in registers:
        raise InspectorError("the kernel's inactive_task_frame has no ret_addr")
    return SavedContext(sp, registers)


def pti_user_copy(pgd_table: bytes, pgd_physical: int) -> int | None:
    """The physical address of a task's user-space copy of its PGD under PTI, else None.

    PTI allocates each PGD as two pages, the kernel's copy then the user's, and marks
    the kernel copy's user-space entries NX (arch/x86/mm/pti.c, pti_set_user_pgtbl):
    so an 8 KiB-aligned PGD whose present user entries (US) in the lower half all have
    NX has its user copy one page above.
    """
    if pgd_physical % 8192:
        return None
    entries = struct.unpack("<256Q", pgd_table[: 256 * 8])
    user = [e for e in entries if e & 0b101 == 0b101]  # P and US
    if user and all(e >> 63 for e in user):
        return pgd_physical + 4096
    return None
