"""Every CPU apart: QEMU's threads named by CPU, a session whose caches and views are the
selected CPU's, ``--cpu`` on every command, and Linux's current task through the per-CPU
areas."""

import pytest

from kinspect.inspector.commands import UsageError, registry
from kinspect.inspector.cpus import CpuState, find_current_task, format_cpus
from kinspect.inspector.errors import FaultError, TargetError
from kinspect.inspector.session import Session
from kinspect.inspector.targets.base import (
    Capability,
    CpuThread,
    DescriptorTableRegister,
    SegmentRegister,
    SystemRegisters,
    Target,
)
from kinspect.inspector.targets.gdb import decode_cpu_threads

# -- QEMU's -thread-info ---------------------------------------------------------------------


def test_qemus_threads_are_cpus_halted_or_running():
    payload = {
        "threads": [
            {"id": "1", "target-id": "Thread 1.1", "details": "CPU#0 [running]"},
            {"id": "2", "target-id": "Thread 1.2", "details": "CPU#1 [halted ]"},
            {"id": "7", "target-id": "Thread 1.3", "details": "CPU#2"},
        ],
        "current-thread-id": "2",
    }
    assert decode_cpu_threads(payload) == [
        (CpuThread(0, False), "1"),
        (CpuThread(1, True), "2"),
        (CpuThread(2, None), "7"),
    ]


def test_threads_that_are_tasks_are_no_cpus():
    payload = {"threads": [{"id": "1", "target-id": "Thread 1", "details": "swapper/0"}]}
    assert decode_cpu_threads(payload) == []
    assert decode_cpu_threads({}) == [] and decode_cpu_threads("junk") == []


# -- the session on a machine of three CPUs ------------------------------------------------


class Machine(Target):
    """Three CPUs, each with its own RIP, GDT and TR; reads count per CPU."""

    description = "three-CPU machine"
    capabilities = frozenset({Capability.SYSTEM_REGISTERS})

    def __init__(self):
        self._cpu = 0
        self.reads = {0: 0, 1: 0, 2: 0}

    def read_virtual(self, address, size):
        raise FaultError(address, "nothing mapped")

    def registers(self):
        self.reads[self._cpu] += 1
        return {
            "rip": 0x1000 + self._cpu,
            "cr0": 0x80000011,
            "cr3": 0x5000,
            "cr4": 0x20,
            "efer": 0x500,
        }

    def system_registers(self):
        n = self._cpu
        return SystemRegisters(
            DescriptorTableRegister(0x10000 + 0x100 * n, 0x47),
            DescriptorTableRegister(0x20000, 0xFFF),
            SegmentRegister(0x28, 0x30000 + 0x100 * n, 0x67, 0x8B),
            None,
        )

    @property
    def state(self):
        return "stopped"

    def stop(self):
        pass

    def resume(self):
        pass

    def close(self, *, resume=True):
        pass

    @property
    def cpu(self):
        return self._cpu

    def cpu_threads(self):
        return [CpuThread(0, True), CpuThread(1, False), CpuThread(2, True)]

    def select_cpu(self, index):
        if index not in (0, 1, 2):
            raise TargetError(f"there is no CPU {index}: this target has CPUs 0-2")
        self._cpu = index


def test_cpus_reads_each_cpu_and_keeps_the_selection():
    machine = Machine()
    session = Session(machine)
    session.select_cpu(1)
    cpus = session.cpus()
    assert session.cpu == 1
    assert [c.index for c in cpus] == [0, 1, 2]
    assert [c.state for c in cpus] == ["halted", "stopped", "halted"]
    assert [c.selected for c in cpus] == [False, True, False]
    assert [c.rip for c in cpus] == [0x1000, 0x1001, 0x1002]
    assert [c.gdtr.base for c in cpus] == [0x10000, 0x10100, 0x10200]
    assert [c.tr_base for c in cpus] == [0x30000, 0x30100, 0x30200]
    assert all(c.paging == "4-level" and c.error is None for c in cpus)
    # each CPU's registers are kept for the stop: asked again, none is read twice
    session.cpus()
    assert machine.reads == {0: 1, 1: 1, 2: 1}
    session.invalidate()
    session.registers()
    assert machine.reads == {0: 1, 1: 2, 2: 1}


def test_the_views_read_the_selected_cpu():
    session = Session(Machine())
    assert session.registers()["rip"] == 0x1000
    session.select_cpu(2)
    assert session.registers()["rip"] == 0x1002
    assert session.system_registers().gdtr.base == 0x10200
    with pytest.raises(TargetError, match="there is no CPU 5"):
        session.select_cpu(5)


def test_a_target_with_one_cpu_refuses_another():
    class One(Machine):
        cpu_threads = Target.cpu_threads
        select_cpu = Target.select_cpu
        cpu = Target.cpu

    session = Session(One())
    session.select_cpu(0)
    with pytest.raises(
        TargetError, match="three-CPU machine shows one CPU only: there is no CPU 1"
    ):
        session.select_cpu(1)


def test_cpu_on_the_line_reads_that_cpu_and_leaves_the_selection():
    session = Session(Machine())
    result = registry().execute(session, "cpus --cpu 2")
    assert result.body["selected"] == 2
    assert session.cpu == 0  # the TUI's views stay on their CPU
    with pytest.raises(UsageError, match="not a CPU number"):
        registry().execute(session, "cpus --cpu two")
    with pytest.raises(UsageError, match="not a CPU number"):
        registry().execute(session, "cpus --cpu -1")


def test_cpus_text_marks_the_selected_cpu_and_says_what_failed():
    text = format_cpus(
        [
            CpuState(0, "halted", True, rip=0xFFFFFFFF81000000, symbol="default_idle+0x4"),
            CpuState(1, "stopped", current_task=0xFFFF888003F00000, error="no GDTR"),
        ]
    )
    lines = text.splitlines()
    assert (
        lines[1].startswith("*   0  halted   ffffffff81000000") and "default_idle+0x4" in lines[1]
    )
    assert lines[2].startswith("    1  stopped  -")
    assert "CPU 1: current task 0xffff888003f00000" in text and "CPU 1: no GDTR" in text


# -- Linux: the current task through __per_cpu_offset -----------------------------------------


def test_the_current_task_is_read_from_the_cpus_own_area():
    memory = {
        0xFFFFFFFF82000000 + 8: 0xFFFF88807D000000,  # __per_cpu_offset[1]
        0xFFFF88807D000000 + 0x32900: 0xFFFF888004B10000,  # CPU 1's current_task
    }
    symbols = {"__per_cpu_offset": 0xFFFFFFFF82000000, "current_task": 0x32900}
    assert find_current_task(memory.__getitem__, symbols.get, 1) == 0xFFFF888004B10000


def test_no_per_cpu_areas_no_task():
    def read(address):
        raise FaultError(address, "unmapped")

    assert find_current_task(read, {}.get, 0) is None  # not Linux
    symbols = {"__per_cpu_offset": 0x1000, "current_task": 0xFFFFFFFF81000000}  # not per-CPU
    assert find_current_task(read, symbols.get, 0) is None
    assert find_current_task(read, {"__per_cpu_offset": 0x1000, "pcpu_hot": 0}.get, 0) is None
