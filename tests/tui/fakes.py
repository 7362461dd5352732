"""An in-memory target built from the real Linux 6.1 capture, for Pilot tests.

The page-table pages, CR0/CR3/CR4/EFER and the general registers are the
ones captured from Debian's 6.1 kernel under QEMU (tests/fixtures/
linux-6.1-nokaslr). Run control is simulated: ``resume`` lets it "run",
the breakpoint with the lowest number is hit on the next wait (its count
rises, as gdb counts), ``stop`` interrupts; ``on_resume`` may change
memory or registers while it runs (a remap between two stops). Like
gdb's stub, breakpoints are listed while it runs and deleted only when
stopped, and their numbers are never reused.

``efi_session`` adds what the demo kernel's efi.c keeps when it boots
through UEFI (the firmware's memory map, found by symbol), with bytes the
test builds, so the EFI view reads it through the real Session.

``MemoryRemapper`` plans on the capture with the real Remapper (nothing is
applied); ``EfiRemapper`` adds the agent's ``efi_info`` over such a kept map,
so ``plan_efi_runtime`` and ``plan_higher_half`` plan the UEFI steps for real,
and "applies" a plan by journaling each step and reporting what the agent
would have checked (GetTime and a variable through the new mapping); undo is
the real Remapper's, refusals (``UndoRefused``) included, writing nothing.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

from kinspect.inspector.errors import AgentError, FaultError, TargetError, TargetLost
from kinspect.inspector.remap.apply import HIGHER_HALF, Remapper, StepReport
from kinspect.inspector.remap.efi import SVAM
from kinspect.inspector.remap.journal import Journal, JournalStep
from kinspect.inspector.remap.plan import Step, protected_areas
from kinspect.inspector.session import Session
from kinspect.inspector.symbols import Symbol, SymbolTable
from kinspect.inspector.targets.base import Breakpoint, Capability, CpuThread, Target
from kinspect.inspector.targets.qemu_text import system_registers_from_info
from kinspect.inspector.x86.control import decode_paging_mode
from kinspect.inspector.x86.paging import translate
from kinspect.protocols.agent_wire import ErrorCode
from tests.unit.test_x86_linux_capture import load_pages

FIXTURE = Path(__file__).parent.parent / "fixtures" / "linux-6.1-nokaslr"
CR0, CR3, CR4, EFER = 0x80050033, 0x487C000, 0x6F0, 0xD01
MODE = decode_paging_mode(CR0, CR4, EFER)
TEXT = 0xFFFFFFFF81000000

REGISTERS = {
    "rax": 0x1AD40,
    "rbx": 0,
    "rcx": 0x20,
    "rdx": 0x4000000000000000,
    "rsi": 0x83,
    "rdi": 0x2E4,
    "rbp": 0xFFFFFFFF82A1AA40,
    "rsp": 0xFFFFFFFF82A03E98,
    "r8": 0xFFFF88801F423000,
    "r9": 7,
    "r10": 0xFFFFFFFB,
    "r11": 0,
    "r12": 0,
    "r13": 0,
    "r14": 0xFFFFFFFF82A1A118,
    "r15": 0x14790,
    "rip": 0xFFFFFFFF81A592EB,
    "rflags": 0x246,
    "cs": 0x10,
    "ss": 0x18,
    "ds": 0,
    "es": 0,
    "fs": 0,
    "gs": 0,
    "fs_base": 0,
    "gs_base": 0xFFFF88801F400000,
    "k_gs_base": 0,
    "cr0": CR0,
    "cr2": 0x5E22C0,
    "cr3": CR3,
    "cr4": CR4,
    "cr8": 0,
    "efer": EFER,
}

_PAGES: dict[int, bytes] | None = None


def capture_pages() -> dict[int, bytes]:
    global _PAGES
    if _PAGES is None:
        _PAGES = load_pages()
    return _PAGES


def capture_descriptor_memory() -> dict[int, bytes]:
    """The GDT and IDT bytes, by virtual address (gdt.txt, idt.txt: ``VA +OFF: QWORD QWORD``)."""
    memory: dict[int, bytes] = {}
    for name in ("gdt.txt", "idt.txt"):
        for line in (FIXTURE / name).read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            va, _offset, *words = line.replace(":", "").split()
            memory[int(va, 16)] = b"".join(int(w, 16).to_bytes(8, "little") for w in words)
    return memory


def capture_symbols(extra: Iterable[Symbol] = ()) -> SymbolTable:
    symbols = [Symbol("_text", TEXT, 0, "notype"), *extra]
    for line in (FIXTURE / "kallsyms-idt-handlers.txt").read_text().splitlines():
        address, _kind, name = line.split()[:3]
        symbols.append(Symbol(name, int(address, 16), 0x20, "func"))
    return SymbolTable(symbols)


class MemoryTarget(Target):
    """A stopped Linux 6.1 kernel in memory, with simulated run control."""

    description = "in-memory Linux 6.1 capture"
    capabilities = frozenset(
        {
            Capability.PHYSICAL_READS,
            Capability.SYSTEM_REGISTERS,
            Capability.RUN_CONTROL,
            Capability.BREAKPOINTS,
            Capability.WATCHPOINTS,
            Capability.MEMORY_WRITES,
            Capability.REGISTER_WRITES,
        }
    )

    #: where the simulated ``next`` and ``finish`` land: RIP moves by these
    NEXT_LINE, NEXT_INSTRUCTION, FINISH_TO = 0x11, 0x5, 0xFFFFFFFF81234567

    def __init__(self, *, wx: bool = False) -> None:
        """``wx``: make the first 2 MiB of kernel text writable (a W+X mapping to find)."""
        self.pages = dict(capture_pages())
        self.regs = dict(REGISTERS)
        self._state = "stopped"
        self.last_stop: dict = {"reason": "signal-received", "signal-name": "SIGINT"}
        self.armed: dict[int, int] = {}  # breakpoint number -> address
        self.hits: dict[int, int] = {}
        self._next_breakpoint = 1
        self.watches: dict[int, tuple[int, int, str]] = {}  # number -> address, length, access
        self.pending: dict | None = None  # the stop a next/finish/until started will report
        self.started: list[str] = []  # what was started: "next", "nexti", "finish", "until 0x.."
        self.on_resume: Callable[[MemoryTarget], None] | None = None
        self.fail: BaseException | None = None  # raised by the next read
        self.closed = False
        self.reads = 0
        self.virtual = capture_descriptor_memory()  # GDT and IDT, read through their VAs
        if wx:
            step = translate(self.read_physical, CR3, MODE, TEXT).steps[-1]
            self.write_entry(step.entry_address, step.entry.raw | 0x2)
            self.reads = 0

    # -- memory ----------------------------------------------------------------------

    def _check(self) -> None:
        if self.fail is not None:
            error, self.fail = self.fail, None
            if "gone away" in str(error):
                self._state = "exited"
            raise error
        if self._state == "running":
            raise TargetError("the target is running; stop it first")
        if self._state == "exited":
            raise TargetLost("the target has gone away")

    def read_physical(self, address: int, size: int) -> bytes:
        self._check()
        self.reads += 1
        out = bytearray()
        while len(out) < size:
            at = address + len(out)
            page = self.pages.get(at & ~0xFFF)
            if page is None:
                raise FaultError(at, "not in the capture")
            offset = at & 0xFFF
            out += page[offset : offset + min(size - len(out), 4096 - offset)]
        return bytes(out)

    def read_virtual(self, address: int, size: int) -> bytes:
        self._check()
        base = address & ~0xF
        if base in self.virtual:  # the captured GDT/IDT, 16 bytes a line
            out = b"".join(self.virtual.get(a, b"") for a in range(base, address + size + 16, 16))
            data = out[address - base : address - base + size]
            if len(data) == size:
                return data
        out = bytearray()
        while len(out) < size:
            va = address + len(out)
            t = translate(self.read_physical, self.regs["cr3"], MODE, va)
            if not t.ok:
                raise FaultError(va, t.fault or "not mapped")
            chunk = min(size - len(out), 4096 - (va & 0xFFF))
            out += self.read_physical(t.pa, chunk)
        return bytes(out)

    def put_virtual(self, address: int, data: bytes) -> None:
        """Kernel data read by virtual address without a walk, like the captured GDT/IDT."""
        end = address + len(data)
        for line in range(address & ~0xF, end, 16):  # kept in 16-byte lines
            bytes_ = bytearray(self.virtual.get(line, bytes(16)))
            low, high = max(address, line), min(end, line + 16)
            bytes_[low - line : high - line] = data[low - address : high - address]
            self.virtual[line] = bytes(bytes_)

    def write_entry(self, address: int, value: int) -> None:
        """Change one page-table entry (a remap between two stops)."""
        page = bytearray(self.pages[address & ~0xFFF])
        struct.pack_into("<Q", page, address & 0xFFF, value)
        self.pages[address & ~0xFFF] = bytes(page)

    def registers(self):
        self._check()
        return dict(self.regs)

    def system_registers(self):
        self._check()
        text = (FIXTURE / "info-registers.txt").read_text()
        return system_registers_from_info(text)

    # -- run control --------------------------------------------------------------------

    @property
    def state(self) -> str:
        return self._state

    def stop(self) -> dict:
        if self._state == "exited":
            raise TargetLost("the target has gone away")
        if self._state == "running":
            self._stopped({"reason": "signal-received", "signal-name": "SIGINT"})
        return self.last_stop

    def resume(self) -> None:
        if self._state == "exited":
            raise TargetLost("the target has gone away")
        self._state = "running"
        if self.on_resume is not None:
            self.on_resume(self)

    def wait_for_stop(self, timeout: float) -> dict:
        if self._state == "stopped":
            return self.last_stop
        if self._state == "exited":
            raise TargetLost("the target has gone away")
        if self.pending is not None:
            record, self.pending = self.pending, None
            self._stopped(record)
            return self.last_stop
        if self.armed:
            number = min(self.armed)
            self.hits[number] += 1
            self.regs["rip"] = self.armed[number]
            self.regs["rax"] += 1
            self._stopped(
                {
                    "reason": "breakpoint-hit",
                    "bkptno": str(number),
                    "frame": {"addr": f"{self.armed[number]:#x}"},
                }
            )
            return self.last_stop
        time.sleep(timeout)
        raise TargetError(f"the target did not stop within {timeout:g} s")

    def step_instruction(self) -> dict:
        self._check()
        self.regs["rip"] += 2
        self._stopped({"reason": "end-stepping-range", "frame": {"addr": f"{self.regs['rip']:#x}"}})
        return self.last_stop

    def break_insert(self, location: str) -> int:
        self._check()
        number = self._next_breakpoint
        self._next_breakpoint += 1
        self.armed[number] = int(location.lstrip("*"), 16)
        self.hits[number] = 0
        return number

    def breakpoints(self) -> list[Breakpoint]:
        """As gdb lists them without --elf: the location is what was asked, ``*0x...``."""
        if self._state == "exited":
            raise TargetLost("the target has gone away")
        listed = [
            Breakpoint(n, address, f"*{address:#x}", self.hits[n], True)
            for n, address in self.armed.items()
        ]
        kinds = {"w": "hw watchpoint", "r": "read watchpoint", "rw": "acc watchpoint"}
        listed += [
            Breakpoint(n, None, f"*(unsigned long *) {address:#x}", self.hits[n], True, kinds[a])
            for n, (address, _length, a) in self.watches.items()
        ]
        return sorted(listed, key=lambda b: b.number)

    def break_delete(self, number: int) -> None:
        self._check()
        if number in self.watches:
            del self.watches[number]
            return
        if number not in self.armed:
            raise TargetError(f"no breakpoint number {number}")
        del self.armed[number]

    def _start(self, what: str, rip: int, record: dict) -> None:
        self._check()
        self.started.append(what)
        self.regs["rip"] = rip
        self.pending = {**record, "frame": {"addr": f"{rip:#x}"}}
        self._state = "running"

    def start_next(self, *, line: bool) -> None:
        step = self.NEXT_LINE if line else self.NEXT_INSTRUCTION
        self._start(
            "next" if line else "nexti", self.regs["rip"] + step, {"reason": "end-stepping-range"}
        )

    def start_finish(self) -> None:
        self._start("finish", self.FINISH_TO, {"reason": "function-finished"})

    def start_until(self, address: int) -> int:
        number = self._next_breakpoint
        self._next_breakpoint += 1
        record = {"reason": "breakpoint-hit", "disp": "del", "bkptno": str(number)}  # gdb's tbreak
        self._start(f"until {address:#x}", address, record)
        return number

    def watch_insert(self, address: int, length: int, access: str) -> int:
        self._check()
        number = self._next_breakpoint
        self._next_breakpoint += 1
        self.watches[number] = (address, length, access)
        self.hits[number] = 0
        return number

    def write_physical(self, address: int, data: bytes) -> None:
        self._check()
        for at in range(len(data)):
            page = bytearray(self.pages[(address + at) & ~0xFFF])
            page[(address + at) & 0xFFF] = data[at]
            self.pages[(address + at) & ~0xFFF] = bytes(page)

    def write_virtual(self, address: int, data: bytes) -> None:
        self._check()
        for at in range(len(data)):
            t = translate(self.read_physical, self.regs["cr3"], MODE, address + at)
            if not t.ok:
                raise FaultError(address + at, t.fault or "not mapped")
            self.write_physical(t.pa, data[at : at + 1])

    def set_register(self, name: str, value: int) -> None:
        self._check()
        self.regs[name] = value

    def _stopped(self, record: dict) -> None:
        self._state = "stopped"
        self.last_stop = record

    def close(self, *, resume: bool = True) -> None:
        self.closed = True


def memory_session(*, wx: bool = False) -> Session:
    session = Session(MemoryTarget(wx=wx))
    session._symbols = capture_symbols()  # what --elf would load
    return session


EFI_DATA = 0xFFFFFFFF83F00000
"""Where the fake kernel's efi.c variables live (read through ``MemoryTarget.virtual``)."""


def efi_session(
    memmap: bytes, descriptor_size: int, *, version: int = 1, memattr: bytes = b""
) -> Session:
    """A memory session whose kernel kept a UEFI memory map, as the demo kernel's efi.c does.

    ``memmap``: GetMemoryMap's buffer (``efi_memmap``, ``efi_memmap_size``
    bytes), descriptors ``descriptor_size`` apart; empty: the kernel did not
    boot through UEFI (efi_memmap_size is 0). ``memattr``: the
    EFI_MEMORY_ATTRIBUTES_TABLE copied whole (``efi_memattr``), or empty.
    """
    layout = {  # name: (offset, bytes), the C types of kernel-agent/demo/efi.c
        "efi_memmap_size": (0x00, struct.pack("<Q", len(memmap))),
        "efi_memmap_desc_size": (0x08, struct.pack("<Q", descriptor_size)),
        "efi_memmap_desc_version": (0x10, struct.pack("<I", version)),
        "efi_memattr_size": (0x18, struct.pack("<Q", len(memattr))),
        "efi_memmap": (0x1000, memmap),
        "efi_memattr": (0x8000, memattr),
    }
    session = Session(MemoryTarget())
    for offset, data in layout.values():
        session.target.put_virtual(EFI_DATA + offset, data)
    session._symbols = capture_symbols(
        Symbol(name, EFI_DATA + offset, max(len(data), 1), "object")
        for name, (offset, data) in layout.items()
    )
    return session


class MemoryRemapper(Remapper):
    """A Remapper that plans on the in-memory capture (no agent: plans only, nothing applied)."""

    def __init__(self, target: MemoryTarget, journal: Journal) -> None:
        target.spec = "memory"  # type: ignore[attr-defined]
        target.info = {"paging_levels": 4}  # type: ignore[attr-defined]
        if not hasattr(target, "efi_info"):
            target.efi_info = _no_uefi  # type: ignore[attr-defined]
        super().__init__(target, journal)  # type: ignore[arg-type]

    def registers(self) -> dict[str, int]:
        system = self.target.system_registers()
        regs = dict(self.target.registers())
        regs.update(
            gdtr_base=system.gdtr.base,
            gdtr_limit=system.gdtr.limit,
            idtr_base=system.idtr.base,
            idtr_limit=system.idtr.limit,
        )
        return regs

    def ranges(self) -> list:
        return Session(self.target).ranges()

    def areas(self, regs=None, ranges=None, *, tss_base=None) -> list:
        return protected_areas(self.registers(), tss_base=None, frames_top=None)


def _no_uefi() -> dict:
    """The agent's efi_info on a kernel that did not boot through UEFI (error 6)."""
    raise AgentError(ErrorCode.UNSUPPORTED, "efi_info: unsupported")


def remap_session(journal_path) -> Session:
    """A memory session whose remapper plans on the capture (what the agent would plan)."""
    session = memory_session()
    session._remapper = MemoryRemapper(session.target, Journal.open(journal_path))
    return session


#: What the fake firmware answers through the new mapping (StepReport.checks).
GET_TIME = "GetTime answers through the new mapping: 2026-11-25 20:02:13 (no time zone)"
VARIABLES = (
    "GetNextVariableName lists 29 variables; GetVariable SetupMode "
    "(8be4df61-93ca-11d2-aa0d-00e098032b8c): 1 bytes, attributes 0x6"
)


class EfiRemapper(MemoryRemapper):
    """The real Remapper's plans on the capture with a kept UEFI map; applying only journals.

    ``efi`` is what the agent's ``efi_info`` answers (the kept map found by
    symbol, as ``efi_session`` lays it out). ``identity``: the runtime code
    and data are also mapped at their physical addresses (the identity map a
    UEFI kernel keeps until SetVirtualAddressMap; the Linux capture has
    none), else the plan is refused (``efi-unmapped``).
    """

    def __init__(
        self, target: MemoryTarget, journal: Journal, efi: dict, *, identity: bool = True
    ) -> None:
        self.efi = efi
        self.identity = identity
        self.applied: list[Step] = []
        self.undone: list[int] = []
        target.efi_info = lambda: dict(self.efi)  # type: ignore[attr-defined]
        super().__init__(target, journal)

    def ranges(self) -> list:
        # The capture's map thinned to the kernel image (code, stack, GDT) and the lower
        # half: the core's planning of a map looks at every range for every page it maps,
        # which costs seconds over the direct map's 65,000 ranges, and none of them matter.
        full = super().ranges()
        ranges = [r for r in full if r.start < HIGHER_HALF or r.start >= TEXT]
        if not self.identity:
            return ranges
        from kinspect.inspector.efi.memmap import decode_memory_map
        from kinspect.inspector.efi.runtime import RUNTIME_CODE, RUNTIME_DATA

        data = self.target.read_virtual(self.efi["memmap"], self.efi["memmap_size"])
        low = []
        for d in decode_memory_map(data, self.efi["desc_size"]):
            if d.type in (RUNTIME_CODE, RUNTIME_DATA):
                alias = next(r for r in full if r.phys <= d.physical_start < r.phys + r.size)
                low.append(
                    replace(
                        alias,
                        start=d.physical_start,
                        phys=d.physical_start,
                        end=d.physical_start + d.size,
                    )
                )
        return sorted(ranges + low, key=lambda r: r.start)

    def run_step(self, step: Step, *, force: bool = False) -> StepReport:
        record = self.journal.begin(
            step.method, list(step.params), {"entries": []}, step.description
        )
        checks: list[str] = []
        if step.method == SVAM:
            pairs = step.params[0]
            offset = pairs[0][1] - pairs[0][0]
            st_va = self.efi["system_table"] + offset
            result = [0, st_va, st_va + 0xB80]  # EFI_SUCCESS, system table, RuntimeServices
            self.efi.update(virtual_mode=True, system_table_va=st_va)
            self.efi_virtual = True
        else:  # [va, level, entry_pa, old, new] per entry, as the agent replies
            result = [
                [va, level, 0x1000 + 8 * i, 0, 1]
                for i, (va, level, _text) in enumerate(step.writes)
            ]
        self.journal.applied(record, result)
        if self.efi_virtual:
            checks.append(GET_TIME)
        if step.method == SVAM:
            checks.append(
                f"the system table is at {result[1]:#x} (physical "
                f"{self.efi['system_table']:#x}), RuntimeServices at {result[2]:#x}"
            )
            checks.append(VARIABLES)
        self.applied.append(step)
        return StepReport(record.seq, step, result, [], 0.0, checks)

    def _undo_one(self, record: JournalStep, force: bool) -> None:
        self.undone.append(record.seq)  # nothing to write back: nothing was written


def efi_remap_session(
    journal_path,
    memmap: bytes,
    descriptor_size: int,
    *,
    memattr: bytes = b"",
    system_table: int,
    identity: bool = True,
) -> Session:
    """``efi_session``'s kernel with an agent that plans the UEFI steps (``EfiRemapper``)."""
    session = efi_session(memmap, descriptor_size, memattr=memattr)
    efi = {
        "system_table": system_table,
        "system_table_va": system_table,
        "runtime_services": system_table + 0xB80,
        "firmware_revision": 0x10000,
        "virtual_mode": False,
        "virtual_map": [],
        "memmap": EFI_DATA + 0x1000,
        "memmap_size": len(memmap),
        "desc_size": descriptor_size,
        "desc_version": 1,
        "memattr": EFI_DATA + 0x8000 if memattr else 0,
        "memattr_size": len(memattr),
        "runtime_regions": 0,
    }
    session._remapper = EfiRemapper(
        session.target, Journal.open(journal_path), efi, identity=identity
    )
    return session


class SmpMemoryTarget(MemoryTarget):
    """The capture on ``count`` CPUs, as QEMU's stub shows them (one thread per CPU).

    Each CPU has its own registers (CPU N's RIP is the capture's plus N, its RAX
    is N); CPUs ``halted`` sit in HLT. A breakpoint is hit on CPU ``hit_cpu``: the
    stop record names it (``cpu``) and selects it, as the gdb target does.
    """

    def __init__(self, count: int = 4, *, halted: Iterable[int] = (), hit_cpu: int = 0) -> None:
        super().__init__()
        self.per_cpu = [dict(REGISTERS, rip=REGISTERS["rip"] + n, rax=n) for n in range(count)]
        self.halted = set(halted)
        self.hit_cpu = hit_cpu
        self.selected = 0
        self.regs = self.per_cpu[0]

    @property
    def cpu(self) -> int:
        return self.selected

    def cpu_threads(self) -> list[CpuThread]:
        return [CpuThread(n, n in self.halted) for n in range(len(self.per_cpu))]

    def select_cpu(self, index: int) -> None:
        self._check()
        if not 0 <= index < len(self.per_cpu):
            raise TargetError(
                f"there is no CPU {index}: this target has CPUs 0-{len(self.per_cpu) - 1}"
            )
        self.selected = index
        self.regs = self.per_cpu[index]

    def _stopped(self, record: dict) -> None:
        if record.get("reason") == "breakpoint-hit":
            address = self.regs["rip"]
            self.select_cpu_now(self.hit_cpu)
            self.regs["rip"] = address
            record = dict(record, cpu=self.hit_cpu)
        super()._stopped(record)

    def select_cpu_now(self, index: int) -> None:
        self.selected = index
        self.regs = self.per_cpu[index]


def smp_session(count: int = 4, **options) -> Session:
    session = Session(SmpMemoryTarget(count, **options))
    session._symbols = capture_symbols()
    return session


def capture_regions():
    """Linux's regions for the capture (no KASLR: the default bases, _text to 48 MiB on)."""
    from kinspect.inspector.linux.layout import linux_regions

    return linux_regions(
        levels=4,
        page_offset_base=None,
        vmalloc_base=None,
        vmemmap_base=None,
        text=TEXT,
        end=TEXT + (48 << 20),
    )


def regions_session(session: Session | None = None) -> Session:
    """A session on the capture that knows Linux's regions, as ``Session.regions()`` answers
    on a recognized kernel (the capture's symbols are too few to recognize it)."""
    session = session if session is not None else memory_session()
    regions = capture_regions()
    session.regions = lambda: regions  # type: ignore[method-assign]
    return session
