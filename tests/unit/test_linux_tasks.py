"""The task walk, the state letters, the saved context and PTI's user copy, on memory and
BTF built here."""

import struct

import pytest

from kinspect.inspector.errors import FaultError, InspectorError
from kinspect.inspector.linux.btf import decode_btf
from kinspect.inspector.linux.tasks import (
    find_task,
    pti_user_copy,
    read_tasks,
    saved_context,
    task_state_letter,
)

from .test_linux_btf import Builder


@pytest.mark.parametrize(
    ("state", "exit_state", "letter"),
    [
        (0x0, 0, "R"), (0x1, 0, "S"), (0x2, 0, "D"), (0x102, 0, "D"),  # TASK_KILLABLE
        (0x402, 0, "I"),  # TASK_IDLE
        (0x4, 0, "T"), (0x8, 0, "t"), (0x40, 0, "P"), (0x1000, 0, "D"),  # RTLOCK_WAIT
        (0x0, 0x20, "Z"), (0x0, 0x10, "X"), (0x1, 0x20, "Z"),
    ],
)  # fmt: skip
def test_state_letters_as_ps_shows_them(state, exit_state, letter):
    assert task_state_letter(state, exit_state) == letter


def kernel_btf():
    b = Builder()
    u64 = b.int("long unsigned int", 8)
    i32 = b.int("int", 4, signed=True)
    u32 = b.int("unsigned int", 4)
    char = b.int("char", 1, signed=True)
    comm = b.array(char, i32, 16)
    lh = b.count + 1
    b.struct("list_head", 16, [("next", lh + 1, 0, 0), ("prev", lh + 1, 64, 0)])
    b.ptr(lh)
    info = b.struct("thread_info", 16, [("flags", u64, 0, 0), ("cpu", u32, 64, 0)])
    thread = b.struct("thread_struct", 16, [("es", u64, 0, 0), ("sp", u64, 64, 0)])
    mm = b.struct("mm_struct", 32, [("mmap_base", u64, 0, 0), ("pgd", u64, 128, 0)])
    mm_ptr = b.ptr(mm)
    volatile_u32 = b.qualifier(9, "", u32)
    b.struct(
        "task_struct",
        128,
        [
            ("thread_info", info, 0, 0), ("__state", volatile_u32, 128, 0),
            ("tasks", lh, 192, 0), ("mm", mm_ptr, 320, 0), ("exit_state", i32, 384, 0),
            ("pid", i32, 416, 0), ("tgid", i32, 448, 0), ("comm", comm, 512, 0),
            ("thread", thread, 640, 0),
        ],
    )  # fmt: skip
    names = ["r15", "r14", "r13", "r12", "bx", "bp", "ret_addr"]
    b.struct("inactive_task_frame", 56, [(n, u64, 64 * i, 0) for i, n in enumerate(names)])
    return decode_btf(b.bytes())


class Memory:
    def __init__(self):
        self.bytes = {}

    def put(self, address, data):
        for i, byte in enumerate(data):
            self.bytes[address + i] = byte

    def q(self, address, value):
        self.put(address, struct.pack("<Q", value))

    def read(self, address, size):
        try:
            return bytes(self.bytes[address + i] for i in range(size))
        except KeyError:
            raise FaultError(address, "unmapped") from None


INIT, PER_CPU, CURRENT, OFFSETS, NR = 0xFFFF0000, 0x1000, 0x40, 0x2000, 0x3000
PAGE_OFFSET = 0xFFFF888000000000


def task(memory, address, pid, comm, state, mm=0, nxt=0, exit_state=0, cpu=0):
    memory.put(address, bytes(128))
    memory.put(address + 8, struct.pack("<I", cpu))
    memory.put(address + 16, struct.pack("<I", state))
    memory.q(address + 24, nxt + 24)
    memory.q(address + 40, mm)
    memory.put(address + 48, struct.pack("<iii", exit_state, pid, pid))
    memory.put(address + 64, comm.encode().ljust(16, b"\0"))


def machine():
    memory = Memory()
    a, b = 0xFFFF888000100000, 0xFFFF888000200000
    mm = 0xFFFF888000300000
    memory.put(mm, bytes(32))
    memory.q(mm + 16, PAGE_OFFSET + 0x1234000)
    task(memory, INIT, 0, "swapper/0", 0, nxt=a)
    task(memory, a, 1, "init", 1, mm=mm, nxt=b)
    task(memory, b, 2, "kthreadd", 0x402, nxt=INIT, cpu=1)
    memory.put(NR, struct.pack("<I", 2))
    memory.q(OFFSETS, PER_CPU)
    memory.q(OFFSETS + 8, PER_CPU + 0x100)
    memory.q(PER_CPU + CURRENT, INIT)
    memory.q(PER_CPU + 0x100 + CURRENT, b)
    symbols = {"init_task": INIT, "__per_cpu_offset": OFFSETS, "current_task": CURRENT}
    symbols["nr_cpu_ids"] = NR
    return memory, symbols, (a, b)


def test_walk_from_init_task():
    memory, symbols, (a, b) = machine()
    found = read_tasks(memory.read, kernel_btf(), symbols.get, page_offset_base=PAGE_OFFSET)
    assert found.problem is None
    rows = [(t.pid, t.comm, t.state, t.cpu, t.kernel_thread, t.pgd_physical) for t in found.tasks]
    assert rows == [(1, "init", "S", 0, False, 0x1234000), (2, "kthreadd", "I", 1, True, None)]
    assert [t.pid for t in found.current] == [0, 2]
    assert find_task(found, 2).current_on == (1,)
    assert find_task(found, 0).comm == "swapper/0"  # an idle task: on no list, current
    with pytest.raises(InspectorError, match="no task with PID 7"):
        find_task(found, 7)
    assert "CPU 1: current kthreadd (pid 2)" in str(found)


def test_a_looping_list_ends_the_walk_with_a_problem():
    memory, symbols, (a, b) = machine()
    memory.q(b + 24, a + 24)  # kthreadd points back at init
    found = read_tasks(memory.read, kernel_btf(), symbols.get, page_offset_base=PAGE_OFFSET)
    assert [t.pid for t in found.tasks] == [1, 2]
    assert "loops" in found.problem
    memory.q(b + 24, 0xDEAD0000 + 24)  # into nothing
    found = read_tasks(memory.read, kernel_btf(), symbols.get, page_offset_base=PAGE_OFFSET)
    assert "cannot read the task at 0xdead0000" in found.problem


def test_saved_context_from_the_inactive_task_frame():
    memory, _, (a, _) = machine()
    sp = 0xFFFFC90000003F00
    memory.q(a + 88, sp)  # thread.sp
    frame = [15, 14, 13, 12, 0xB, 0xFFFFC90000003F80, 0xFFFFFFFF81234567]
    memory.put(sp, struct.pack("<7Q", *frame))
    context = saved_context(memory.read, kernel_btf(), a)
    assert context.registers == {
        "rsp": sp + 56, "rip": 0xFFFFFFFF81234567, "rbp": 0xFFFFC90000003F80, "rbx": 0xB,
        "r12": 12, "r13": 13, "r14": 14, "r15": 15,
    }  # fmt: skip


def test_pti_user_copy():
    table = bytearray(4096)
    user_entry = 0x1000 | 0b111
    struct.pack_into("<Q", table, 0, user_entry | 1 << 63)  # NX on the kernel's copy
    struct.pack_into("<Q", table, 8 * 300, 0x2000 | 0b011)  # a kernel entry: no US
    assert pti_user_copy(bytes(table), 0x4000) == 0x5000
    assert pti_user_copy(bytes(table), 0x5000) is None  # not 8 KiB-aligned
    struct.pack_into("<Q", table, 0, user_entry)  # executable user entry: no PTI
    assert pti_user_copy(bytes(table), 0x4000) is None
    assert pti_user_copy(bytes(4096), 0x4000) is None


def test_btf_read_once_then_from_the_cache(tmp_path):
    from kinspect.inspector.linux.kernel import LinuxKernel, read_btf_bytes

    blob = Builder()
    blob.int("int", 4, signed=True)
    data = blob.bytes()
    memory = Memory()
    memory.put(0x5000, data)
    reads = []

    def read(address, size):
        reads.append(size)
        return memory.read(address, size)

    symbols = {"__start_BTF": 0x5000, "__stop_BTF": 0x5000 + len(data)}
    kernel = LinuxKernel.__new__(LinuxKernel)
    object.__setattr__(kernel, "banner", "Linux version test")
    object.__setattr__(kernel, "text", 0xFFFFFFFF81000000)
    assert read_btf_bytes(read, symbols.get, kernel, cache=tmp_path) == data
    assert decode_btf(data).named("int").size == 4
    reads.clear()
    assert read_btf_bytes(read, symbols.get, kernel, cache=tmp_path) == data
    assert reads == [
        min(64, len(data))
    ]  # only the header, to check the cache is still this kernel's
    memory.put(0x5000 + 30, b"\xff")  # the kernel's BTF changed: read again
    assert read_btf_bytes(read, symbols.get, kernel, cache=tmp_path) != data
    with pytest.raises(InspectorError, match="CONFIG_DEBUG_INFO_BTF"):
        read_btf_bytes(read, {}.get, kernel, cache=tmp_path)


def module_btf():
    b = Builder()
    u64 = b.int("long unsigned int", 8)
    u32 = b.int("unsigned int", 4)
    i32 = b.int("int", 4, signed=True)
    char = b.int("char", 1, signed=True)
    name = b.array(char, i32, 56)
    lh = b.count + 1
    b.struct("list_head", 16, [("next", lh + 1, 0, 0), ("prev", lh + 1, 64, 0)])
    b.ptr(lh)
    states = ["MODULE_STATE_LIVE", "MODULE_STATE_COMING", "MODULE_STATE_GOING"]
    extra = b"".join(struct.pack("<Ii", b.name(n), v) for v, n in enumerate(states))
    state = b.add(6, "module_state", 4, extra, vlen=3)
    fields = ["base", "size", "text_size", "ro_size", "ro_after_init_size"]
    layout = b.struct("module_layout", 40, [(f, u64, 64 * i, 0) for i, f in enumerate(fields)])
    atomic = b.struct("", 4, [("counter", i32, 0, 0)])
    b.struct(
        "module",
        200,
        [
            ("state", state, 0, 0), ("list", lh, 64, 0), ("name", name, 192, 0),
            ("core_layout", layout, 640, 0), ("init_layout", layout, 960, 0),
            ("refcnt", atomic, 1280, 0), ("source_list", lh, 1344, 0), ("kallsyms", u64, 1472, 0),
        ],
    )  # fmt: skip
    b.struct("module_use", 48, [("source_list", lh, 0, 0), ("source", u64, 256, 0)])
    b.struct(
        "mod_kallsyms", 32,
        [("symtab", u64, 0, 0), ("num_symtab", u32, 64, 0), ("strtab", u64, 128, 0)],
    )  # fmt: skip
    return decode_btf(b.bytes())


def test_modules_from_the_list_with_layouts_users_and_symbols():
    from kinspect.inspector.linux.modules import read_module_symbols, read_modules

    memory = Memory()
    head, a, b = 0x9000, 0xFFFFFFFFC0001000, 0xFFFFFFFFC0002000
    memory.q(head, a + 8)

    def module(at, name, nxt, state=0, refcount=1):
        memory.put(at, bytes(200))
        memory.put(at, struct.pack("<I", state))
        memory.q(at + 8, nxt + 8 if nxt != head else head)
        memory.put(at + 24, name.encode())
        base = at + 0x10000
        memory.put(at + 80, struct.pack("<5Q", base, 0x5000, 0x2000, 0x3000, 0x4000))
        memory.put(at + 160, struct.pack("<i", refcount + 1))
        memory.q(at + 168, at + 168)
        memory.q(at + 184, 0)

    module(a, "crc7", b)
    module(b, "tcp_bic", head, state=1, refcount=2)
    # crc7 is used by tcp_bic: a module_use on crc7's source_list
    use = 0xA000
    memory.q(a + 168, use)
    memory.q(use, a + 168)
    memory.q(use + 32, b)
    found = read_modules(memory.read, module_btf(), {"modules": head}.get)
    assert found.problem is None
    rows = [(m.name, m.size, m.refcount, m.used_by, m.state, m.base) for m in found.modules]
    assert rows == [
        ("crc7", 0x5000, 1, ("tcp_bic",), "Live", a + 0x10000),
        ("tcp_bic", 0x5000, 2, (), "Loading", b + 0x10000),
    ]
    parts = {(p.name, p.size, p.permissions) for p in found.modules[0].parts}
    assert {("text", 0x2000, "r-x"), ("rodata", 0x1000, "r--"), ("data", 0x1000, "rw-")} <= parts
    assert "crc7 20480 1 tcp_bic, Live 0xffffffffc0011000" in str(found)
    # its own symbols: Elf64_Sym entries and their names
    table, symtab, strtab = 0xB000, 0xC000, 0xD000
    memory.q(a + 184, table)
    memory.put(table, struct.pack("<QI4xQ", symtab, 3, strtab) + bytes(8))
    rows = [(0, 0, 0, 0, 0, 0), (1, 0x12, 0, 1, a + 0x10010, 8), (6, 0x12, 0, 1, a + 0x10000, 16)]
    memory.put(symtab, b"".join(struct.pack("<IBBHQQ", *r) for r in rows))
    memory.put(strtab, b"\0crc7\0crc7_be\0" + bytes(300))
    symbols = read_module_symbols(memory.read, module_btf(), found.modules[0])
    assert [(s.name, s.address - a) for s in symbols] == [("crc7_be", 0x10000), ("crc7", 0x10010)]
