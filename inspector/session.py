"""The inspection session: the one facade every face (CLI, TUI, API) stands on.

A session holds a target, caches what it read for as long as the target stays
stopped, and hands the bytes to the pure decoders. A fact the CLI prints and
the TUI shows comes from the same call here, so the two cannot disagree.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import (
    FaultError,
    InspectorError,
    MissingCapability,
    TargetError,
    TargetLost,
)
from .numbers import resolve_address
from .targets.base import (
    REMAPS_NEED_AGENT,
    Breakpoint,
    Capability,
    StopRecord,
    SystemRegisters,
    Target,
    UefiCalls,
    check_watch,
)
from .x86.control import (
    DecodedRegister,
    PagingMode,
    decode_cr0,
    decode_cr3,
    decode_cr4,
    decode_efer,
    decode_paging_mode,
    decode_rflags,
)

# Each of these is imported by the method that needs it: `kinspect regs` starts without
# them (issue 16: cold start), the paging core (and what it imports) included.
if TYPE_CHECKING:
    import uuid

    from .cpus import CpuState, PerCpuArea
    from .efi.memmap import (
        MemoryAttributesTable,
        MemoryDescriptor,
        MemoryMap,
    )
    from .efi.runtime import EfiTime
    from .fault import (
        Catchpoint,
        FaultReport,
        TripleFaultReport,
    )
    from .linux.btf import Btf
    from .linux.kernel import LinuxKernel
    from .linux.layout import RegionMap
    from .linux.modules import ModuleList, ModuleSymbol
    from .linux.orc import OrcTable
    from .linux.percpu import LinuxSystemRegisters
    from .linux.tasks import Task, TaskList
    from .remap.service import Remaps
    from .symbols import SymbolicAddress, SymbolTable
    from .tables import InterruptTable, MappingLookup, TaskState
    from .unwind import Backtrace
    from .x86.descriptors import DescriptorTable
    from .x86.paging import (
        AddressSpace,
        CompactRange,
        PageTableEntry,
        Range,
        RangeList,
        Translation,
        WalkCache,
    )

__all__ = ["ControlState", "Session"]

TABLE_SIZE = 4096
PREFETCH_PAGES = 64
"""Adjacent table pages read in one request at most (256 KiB)."""


@dataclass(frozen=True, slots=True)
class ControlState:
    """The decoded control registers and the paging mode they imply."""

    registers: Mapping[str, DecodedRegister]
    paging: PagingMode

    def __getitem__(self, name: str) -> DecodedRegister:
        return self.registers[name]

    def to_dict(self) -> dict[str, object]:
        return {
            "registers": {name: reg.to_dict() for name, reg in self.registers.items()},
            "paging": self.paging.to_dict(),
        }


class Session:
    """A live inspection of one target."""

    def __init__(
        self, target: Target, *, elf: str | None = None, kallsyms: str | None = None
    ) -> None:
        self.target = target
        self.elf = elf
        #: a /proc/kallsyms copy or System.map to use instead of the kernel's own tables
        self.kallsyms = kallsyms
        self._symbols: SymbolTable | None = None
        #: The kernel's ORC tables (None: it has none), looked for once: they never change.
        self._orc: OrcTable | None = None
        self._orc_looked = False
        #: the kernel's BTF, decoded on first use (kept: the image stays put)
        self._btf: Btf | None = None
        #: a Linux kernel recognized on first use (kept across stops: the image stays put)
        self._linux: tuple[LinuxKernel, SymbolTable] | None = None
        self._linux_error: str | None = None
        #: per CPU: where its GDT, IDT and TSS are, from the kernel's per-CPU variables
        self._linux_system: dict[int, LinuxSystemRegisters] = {}
        #: the direct-map base guessed (from GS), until read from page_offset_base
        self._direct_map_guess: int | None = None
        # per CPU (its index): each has its own registers and CR3; table pages are physical
        self._registers: dict[int, Mapping[str, int]] = {}
        self._space: dict[int, AddressSpace] = {}
        self._ranges: dict[int, RangeList] = {}
        self._tables: dict[int, bytes] = {}
        #: the decoded tables of earlier walks, kept across stops: a re-walk reads the
        #: tables again (in bulk) and decodes only those whose bytes changed
        self._walk_cache: WalkCache | None = None  # made by the first walk (numpy)
        self._remapper: Remaps | None = None
        #: Where the kernel keeps the UEFI memory map, and the map itself: neither changes
        #: once boot services are gone, so both are kept across stops (the mappings are
        #: read again at each).
        self._efi_kept_at: dict[str, int] | None = None
        self._efi_descriptors: tuple[MemoryDescriptor, ...] | None = None
        self._efi_attributes: MemoryAttributesTable | None = None

    # -- lifecycle -------------------------------------------------------------

    def close(self, *, resume: bool = True) -> None:
        if self._remapper is not None:
            self._remapper.journal.end_session()
            self._remapper.close()
        self.target.close(resume=resume)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def invalidate(self) -> None:
        """Forget everything read: the target ran (or was changed) since."""
        self._registers.clear()
        self._space.clear()
        self._ranges.clear()
        self._tables.clear()
        # not recognized in this stop (a user CR3 under PTI maps no kernel data): try again
        self._linux_error = None
        if self._orc is None:
            self._orc_looked = False  # the same: ORC tables not found in this stop

    def stop(self) -> None:
        if self.target.state != "stopped":
            self.target.stop()
            self.invalidate()

    def resume(self) -> None:
        self.invalidate()
        self.target.resume()

    # -- remaps (through the in-kernel agent) -------------------------------------

    @property
    def remap_unavailable(self) -> str | None:
        """Why this session cannot remap (no agent), or None when it can.

        The agent alone (``--agent``) remaps; so does a gdb stub with the agent
        beside it (``--target ... --agent ...``, ``kinspect demo``): the agent
        applies, the stub verifies.
        """
        if self._remapper is not None or self.target.has(Capability.REMAPS):
            return None
        return self.target.missing_reasons.get(Capability.REMAPS, REMAPS_NEED_AGENT)

    def remapper(self, *, journal: str | Path | None = None) -> Remaps:
        """This session's :class:`~inspector.remap.apply.Remapper`, made on first use.

        ``journal`` (first call only): the journal file, default
        ``$KINSPECT_REMAP_JOURNAL`` or ``~/.local/state/kinspect/remap-journal.jsonl``.
        The journal session ends when this session closes.
        """
        if self._remapper is None:
            why = self.remap_unavailable
            if why is not None:
                raise MissingCapability(Capability.REMAPS, why)
            from .remap.journal import Journal

            self._remapper = self.target.open_remaps(Journal.open(journal), self._fresh_ranges)
        return self._remapper

    def _fresh_ranges(self) -> list[Range]:
        """The map walked again now, forgotten afterwards (the kernel runs on)."""
        self.invalidate()
        try:
            return list(self.ranges())
        finally:
            self.invalidate()

    # -- CPUs: every view reads the selected one -----------------------------------

    @property
    def cpu(self) -> int:
        """The selected CPU's index: every register, descriptor table, walk and stack
        is this CPU's. A stop selects the CPU that stopped (a breakpoint's)."""
        return self.target.cpu

    def select_cpu(self, index: int) -> None:
        """Read CPU ``index`` from now on (the target is stopped first)."""
        self.stop()
        self.target.select_cpu(index)

    def cpus(self, *, detail: bool = False) -> list[CpuState]:
        """Every CPU: its state, RIP, CR3, paging mode, GDTR/IDTR/TR and, on Linux, its
        current task. Each is read with that CPU selected; the selection is kept.
        ``detail``: Linux's per-CPU areas too (:class:`~inspector.cpus.PerCpuArea`)."""
        self.stop()
        selected = self.cpu
        states: list[CpuState] = []
        try:
            for thread in self.target.cpu_threads():
                self.target.select_cpu(thread.index)
                state = self._cpu_state(thread.index, thread.halted, selected)
                if detail:
                    state = replace(state, area=self._per_cpu_area(state))
                states.append(state)
        finally:
            self.target.select_cpu(selected)
        return states

    def _cpu_state(self, index: int, halted: bool | None, selected: int) -> CpuState:
        from .cpus import CpuState, find_current_task

        state = "halted" if halted else "stopped"
        problems: list[str] = []
        try:
            regs = self.registers()
        except InspectorError as exc:
            return CpuState(index, state, index == selected, error=str(exc))
        rip, cr3 = regs.get("rip"), regs.get("cr3")
        symbol = paging = None
        symbols = self.symbols
        if rip is not None and symbols is not None:
            found = symbols.symbolize(rip)
            symbol = f"{found[0].name}+{found[1]:#x}" if found else None
        try:
            paging = self.paging_mode().name
        except InspectorError as exc:
            problems.append(str(exc))
        system = None
        try:
            system = self.system_registers()
        except InspectorError as exc:
            problems.append(str(exc))
        task = task_symbol = None
        if symbols is not None:
            task = find_current_task(self._read_u64, symbols.lookup, index)
            found = symbols.symbolize(task) if task is not None else None
            task_symbol = found[0].name if found and found[1] == 0 else None
        return CpuState(
            index,
            state,
            index == selected,
            rip=rip,
            symbol=symbol,
            cr3=cr3,
            paging=paging,
            gdtr=system.gdtr if system else None,
            idtr=system.idtr if system else None,
            tr_selector=system.tr.selector if system and system.tr else None,
            tr_base=system.tr.base if system and system.tr else None,
            current_task=task,
            current_task_symbol=task_symbol,
            error="; ".join(problems) or None,
        )

    def _per_cpu_area(self, state: CpuState) -> PerCpuArea | None:
        """The selected CPU's per-CPU area on Linux (None elsewhere)."""
        from .cpus import PerCpuArea, per_cpu_offset, per_cpu_symbol

        symbols = self.symbols
        if symbols is None:
            return None
        offset = per_cpu_offset(self._read_u64, symbols.lookup, state.index)
        if offset is None:
            return None

        def mine(name: str) -> int | None:
            variable = per_cpu_symbol(symbols.lookup, name)
            return None if variable is None else offset + variable

        def same_page(a: int | None, b: int | None) -> bool | None:
            if a is None or b is None:
                return None
            try:
                one, two = self.translate(a), self.translate(b)
            except InspectorError:
                return None
            if one.pa is None or two.pa is None:
                return None
            return bool(one.pa >> 12 == two.pa >> 12)

        gdt_page, tss = mine("gdt_page"), mine("cpu_tss_rw")
        stacks: tuple[tuple[str, int], ...] = ()
        try:
            stacks = tuple(
                (s.name, s.value) for s in self.tss().stacks if s.name.startswith("IST") and s.value
            )
        except InspectorError:
            pass
        return PerCpuArea(
            offset=offset,
            gdt_page=gdt_page,
            tss=tss,
            entry_area=state.gdtr.base if state.gdtr else None,
            gdt_shared=same_page(state.gdtr.base if state.gdtr else None, gdt_page),
            tss_shared=same_page(state.tr_base, tss),
            stacks=stacks,
        )

    def _read_u64(self, address: int) -> int:
        return int.from_bytes(self.read_virtual(address, 8), "little")

    # -- run control (what a live face needs: the TUI) ---------------------------

    @property
    def state(self) -> str:
        """The target's ``"stopped"``, ``"running"`` or ``"exited"``."""
        return self.target.state

    @property
    def last_stop(self) -> StopRecord:
        """The record of the last stop (``reason``, ``frame``...), empty when unknown;
        ``cpu``: the index of the CPU that stopped (QEMU's stub), selected by the stop."""
        return self._with_cpu(self.target.last_stop or {})

    def _with_cpu(self, record: StopRecord) -> StopRecord:
        """The record after the target has followed it to the CPU that stopped: a
        debugger whose stops name a thread (QEMU's stub: one per CPU) adds ``cpu``."""
        self.target.cpu  # noqa: B018 - following the stop selects its CPU
        return record

    def wait_for_stop(self, timeout: float) -> StopRecord | None:
        """Wait up to ``timeout`` s for the running target to stop.

        The stop record, or None while the target still runs; TargetError
        when it has gone away or cannot report stops.
        """
        record: StopRecord | None
        if self.target.state == "stopped":
            record = self.last_stop
        else:
            try:
                record = self.target.wait_for_stop(timeout)
                if record is None:  # the agent: it runs until someone stops it
                    return None
            except TargetError as exc:
                state = self.target.state
                if state == "running":
                    return None
                if state == "exited":
                    raise TargetLost("the target has gone away (its connection closed)") from exc
                if state != "stopped":
                    raise
                record = self.last_stop  # it stopped as the wait gave up
        self.invalidate()
        reason = str((record or {}).get("reason", ""))
        if reason.startswith("exited"):  # gdb's word for a remote that closed
            raise TargetLost(f"the target has gone away ({reason.replace('-', ' ')})")
        return self._with_cpu(record or {})

    def step_instruction(self) -> StopRecord:
        """Execute one instruction and return the stop record."""
        self.stop()
        self.invalidate()
        return self._with_cpu(self.target.step_instruction())

    # -- stepping as debuggers do: start_* returns with the kernel running; the others wait

    def start_next(self, *, line: bool = True) -> None:
        """Step over calls (``next``: one source line; ``line`` False: ``nexti``); returns
        with the kernel running: :meth:`wait_for_stop` gives the stop."""
        self.stop()
        self.invalidate()
        self.target.start_next(line=line)

    def start_finish(self) -> None:
        """Run until the current function returns to its caller (gdb's ``finish``)."""
        self.stop()
        self.invalidate()
        self.target.start_finish()

    def start_until(self, location: str) -> int:
        """Run until ``location`` (a symbol or address: a temporary breakpoint there, which
        goes at the next stop, wherever it is); the address."""
        address = self.resolve(location)
        self.stop()
        self._check_canonical(address)
        self.invalidate()
        self.target.start_until(address)
        return address

    def next(self, *, line: bool = True, timeout: float = 30.0) -> StopRecord:
        """Step over one source line (``line`` False: one instruction); the stop record."""
        self.start_next(line=line)
        return self.arrive("next" if line else "nexti", timeout)

    def finish(self, *, timeout: float = 30.0) -> StopRecord:
        """Run to the caller's return address; the stop record."""
        self.start_finish()
        return self.arrive("finish", timeout)

    def until(self, location: str, *, timeout: float = 60.0) -> StopRecord:
        """Run until ``location``; the stop record (another breakpoint may stop it first)."""
        self.start_until(location)
        return self.arrive(f"until {location}", timeout)

    def _require(self, capability: Capability) -> None:
        """MissingCapability, with the target's own reason when it gives one."""
        self.target.require(capability, self.target.missing_reasons.get(capability, ""))

    def arrive(self, what: str, timeout: float) -> StopRecord:
        """The stop that ends ``what``; stopped and TargetError when it takes too long."""
        record = self.wait_for_stop(timeout)
        if record is None:
            self.stop()
            rip = self.registers().get("rip")
            where = f" at {rip:#x}" if rip is not None else ""
            raise TargetError(f"{what} did not stop within {timeout:g} s: interrupted{where}")
        return record

    def watch(self, location: str, access: str = "w", length: int = 8) -> tuple[int, int]:
        """A hardware watchpoint on ``length`` bytes at ``location`` (``access``: w, r, rw);
        its number and address. It is listed with the breakpoints and deleted like them."""
        address = self.resolve(location)
        check_watch(address, length, access)
        self.stop()
        self._check_canonical(address)
        self._require(Capability.WATCHPOINTS)
        return self.target.watch_insert(address, length, access), address

    # -- changing the kernel (each change read back, and recorded: inspector/writes.py) ----

    def write_memory(self, address: int, data: bytes, *, physical: bool = False) -> bytes:
        """Write ``data`` at ``address`` (virtual, or ``physical``); the bytes it replaced.

        Nothing is written where the old bytes cannot all be read (FaultError names the
        first unreadable address); the new ones are read back and the change appended to
        the writes log (``kinspect writes``).
        """
        from .writes import WriteRecord, append_write

        if not data:
            raise InspectorError("nothing to write")
        self.stop()
        self._require(Capability.MEMORY_WRITES)
        read = self.read_physical if physical else self.read_virtual
        old = read(address, len(data))
        if physical:
            self.target.write_physical(address, data)
        else:
            self.target.write_virtual(address, data)
        self.invalidate()
        back = read(address, len(data))
        append_write(
            WriteRecord(
                time.time(),
                self.target.description,
                self.cpu,
                "physical" if physical else "virtual",
                address,
                old.hex(),
                back.hex(),
            )
        )
        if back != data:
            raise TargetError(
                f"wrote {data.hex()} at {address:#x} but read back {back.hex()} "
                "(read-only or device memory?)"
            )
        return old

    def set_register(self, name: str, value: int) -> int:
        """Set register ``name`` of the selected CPU; its old value (read back, recorded)."""
        from .writes import WriteRecord, append_write

        name = name.strip().lstrip("$").lower()
        if name == "eflags":
            name = "rflags"
        self.stop()
        regs = self.registers()
        if name not in regs:
            known = ", ".join(sorted(regs))
            raise InspectorError(f"no register {name!r} here (the target has: {known})")
        if not 0 <= value < 1 << 64:
            raise InspectorError(f"{value:#x} does not fit a 64-bit register")
        self._require(Capability.REGISTER_WRITES)
        old = regs[name]
        self.target.set_register(name, value)
        self.invalidate()
        back = self.registers().get(name)
        append_write(
            WriteRecord(
                time.time(),
                self.target.description,
                self.cpu,
                "register",
                name,
                f"{old:#x}",
                f"{back:#x}" if back is not None else "?",
            )
        )
        if back != value:
            raise TargetError(
                f"set {name} to {value:#x} but it reads {back:#x} (the CPU or the stub "
                "refused the value)"
                if back is not None
                else f"set {name}, but it cannot be read back"
            )
        return old

    def break_insert(self, location: str) -> tuple[int, int]:
        """A breakpoint at a symbol or address (user text); its number and address."""
        address = self.resolve(location)
        self.stop()
        return self.target.break_insert(f"*{address:#x}"), address

    def breakpoints(self) -> list[Breakpoint]:
        """The breakpoints set on the target, in number order, with their hit counts."""
        return self.target.breakpoints()

    def break_delete(self, number: int) -> None:
        """Delete breakpoint ``number``; the target is stopped first, as for a new one."""
        self.stop()
        self.target.break_delete(number)

    @property
    def symbols(self) -> SymbolTable | None:
        """The kernel's symbols (loaded on first use): from the ELF when one was given,
        else a Linux kernel's own kallsyms (or the ``kallsyms`` file); None otherwise."""
        if self._symbols is None:
            if self.elf:
                from .symbols import SymbolTable

                self._symbols = SymbolTable.from_elf(self.elf)
            elif (found := self._recognize()) is not None:
                self._symbols = found[1]
        return self._symbols

    def kernel(self) -> LinuxKernel:
        """What kinspect recognized of a Linux kernel: banner, KASLR slide, layout
        bases, paging, where the symbols come from (InspectorError when not Linux)."""
        found = self._recognize()
        if found is None:
            raise InspectorError(self._linux_error or "not a Linux kernel")
        return found[0]

    def _recognize(self) -> tuple[LinuxKernel, SymbolTable] | None:

        from .linux.kernel import recognize_linux

        if self._linux is None and self._linux_error is None:
            try:
                self._linux = recognize_linux(
                    self.read_virtual,
                    self.ranges(),
                    la57=self.paging_mode().levels == 5,
                    kallsyms_file=self.kallsyms,
                )
            except InspectorError as exc:
                self._linux_error = str(exc)
            else:
                self._confirm_direct_map(self._linux[0])
        return self._linux

    def _confirm_direct_map(self, kernel: LinuxKernel) -> None:
        """Read physical memory at ``page_offset_base`` from now on, once it is known."""
        guess, base = self._direct_map_guess, kernel.page_offset_base
        if guess is None or base is None:
            return
        self._direct_map_guess = None
        self.target.use_direct_map(base, "page_offset_base (kallsyms)")
        if base != guess:  # the guess was checked, so this is not expected: read again
            self._space.clear()
            self._ranges.clear()
            self._tables.clear()
            self._walk_cache = None

    def _find_direct_map(self, cr3: int, mode: PagingMode) -> None:
        """A stub without physical reads of its own reads through the direct map: find its
        base (a guess from GS checked by a walk, confirmed from page_offset_base later)."""
        from .linux.layout import check_direct_map, direct_map_candidates
        from .x86.paging import translate

        if not self.target.direct_map_wanted():
            return
        registers = self.registers()
        for base, gs in direct_map_candidates(registers):

            def walk(virtual: int, read: Callable[[int, int], bytes]) -> int | None:
                physical: int | None = translate(read, cr3, mode, virtual).pa
                return physical

            if check_direct_map(base, gs, self.target.read_virtual, walk):
                self.target.use_direct_map(base, "guessed from GS, checked by a walk")
                self._direct_map_guess = base
                return

    @property
    def physical_source(self) -> str | None:
        """Where physical memory is read from, in words (None: it cannot be yet)."""
        return self.target.physical_source

    def regions(self) -> RegionMap | None:
        """Linux's regions as ptdump names them; None on a kernel not recognized as Linux."""
        from .linux.layout import linux_regions

        found = self._recognize()
        if found is None:
            return None
        kernel, symbols = found
        return linux_regions(
            levels=5 if kernel.la57 else 4,
            page_offset_base=kernel.page_offset_base,
            vmalloc_base=kernel.vmalloc_base,
            vmemmap_base=kernel.vmemmap_base,
            text=kernel.text,
            end=symbols.lookup("_end"),
        )

    def compact_ranges(self) -> list[CompactRange]:
        """The ranges merged ptdump's way (whatever their physical addresses), never
        across a region boundary."""
        from .x86.paging import compact_ranges

        regions = self.regions()
        merged: list[CompactRange] = compact_ranges(
            self.ranges(), regions.boundaries() if regions else ()
        )
        return merged

    def resolve(self, text: str) -> int:
        """An address from user text: ``0x...``, decimal, or a symbol name."""
        symbols = self.symbols
        if symbols is None:
            return resolve_address(text, None, hint=" (pass --elf to use symbol names)")
        return resolve_address(text, symbols.lookup)

    # -- registers ---------------------------------------------------------------

    def registers(self) -> Mapping[str, int]:
        """General, segment and control registers as the target reports them."""
        self.stop()
        cpu = self.target.cpu
        if cpu not in self._registers:
            self._registers[cpu] = dict(self.target.registers())
        return self._registers[cpu]

    def control_registers(self) -> ControlState:
        regs = self.registers()
        missing = [n for n in ("cr0", "cr3", "cr4", "efer") if n not in regs]
        if missing:
            raise TargetError(
                f"the stub does not report {', '.join(missing)}; "
                "kinspect needs the control registers to walk page tables"
            )
        cr4 = decode_cr4(regs["cr4"])
        decoded = {
            "CR0": decode_cr0(regs["cr0"]),
            "CR3": decode_cr3(regs["cr3"], pcide=cr4.is_set("PCIDE")),
            "CR4": cr4,
            "EFER": decode_efer(regs["efer"]),
        }
        if "rflags" in regs:
            decoded["RFLAGS"] = decode_rflags(regs["rflags"])
        paging = decode_paging_mode(
            regs["cr0"], regs["cr4"], regs["efer"], maxphyaddr=self.target.maxphyaddr or 52
        )
        return ControlState(decoded, paging)

    def paging_mode(self) -> PagingMode:
        return self.control_registers().paging

    def system_registers(self) -> SystemRegisters:
        """GDTR/IDTR/TR/LDTR from the target, else (a Linux kernel) from its variables."""
        return self._system_registers()[0]

    def system_registers_from(self) -> dict[str, str]:
        """Where ``gdtr``, ``idtr`` and ``tr`` came from, in words."""
        return self._system_registers()[1]

    def _system_registers(self) -> tuple[SystemRegisters, dict[str, str]]:
        from .linux.percpu import find_system_registers

        self.stop()
        if self.target.has(Capability.SYSTEM_REGISTERS):
            source = self.target.system_registers_source or self.target.description
            return self.target.system_registers(), dict.fromkeys(("gdtr", "idtr", "tr"), source)
        cpu = self.cpu
        if cpu not in self._linux_system:
            found = self._recognize()
            if found is None:
                self.target.system_registers()  # MissingCapability, with its hint
                raise self.target.missing(Capability.SYSTEM_REGISTERS)
            self._linux_system[cpu] = find_system_registers(
                self.read_virtual, found[1].lookup, self._alias_in, cpu=cpu
            )
        found_here = self._linux_system[cpu]
        return found_here.registers, dict(found_here.sources)

    def _alias_in(self, virtual: int, low: int, high: int) -> int | None:
        """Where in [low, high) the physical memory at ``virtual`` is mapped too."""
        t = self.translate(virtual)
        if t.pa is None:
            return None
        return next((va for va in self.aliases(t.pa) if low <= va < high), None)

    # -- memory --------------------------------------------------------------------

    def read_virtual(self, address: int, size: int) -> bytes:
        self.stop()
        self._check_canonical(address)
        return self.target.read_virtual(address, size)

    def read_physical(self, address: int, size: int) -> bytes:
        self.stop()
        if self.target.direct_map_wanted():
            self._find_direct_map(*self._walk_inputs())
        return self.target.read_physical(address, size)

    def read_partial(
        self, address: int, size: int, *, physical: bool = False
    ) -> tuple[bytes, FaultError | None]:
        """What can be read from ``size`` bytes at ``address``: the readable start, and
        None or the FaultError of the first unreadable byte.

        Memory is readable page by page, so after a failed read the pages are read one
        by one and the first that fails is named at its first byte, not where a
        debugger's bisection of a larger read happened to stop.
        """
        read = self.read_physical if physical else self.read_virtual
        try:
            return read(address, size), None
        except FaultError as whole:
            if not physical:
                self._check_canonical(address)  # nothing at all to read: say why
            first_error = whole
        out = bytearray()
        at = address
        while at < address + size:
            chunk = min(address + size - at, TABLE_SIZE - (at & (TABLE_SIZE - 1)))
            try:
                out += read(at, chunk)
            except FaultError as exc:
                return bytes(out), FaultError(at, exc.reason)
            at += chunk
        return bytes(out), first_error if len(out) < size else None

    def _read_table(self, address: int, size: int) -> bytes:
        """read_physical for the walkers: whole table pages, cached per stop."""
        page = address & ~(TABLE_SIZE - 1)
        data = self._tables.get(page)
        if data is None:
            data = self.target.read_physical(page, TABLE_SIZE)
            self._tables[page] = data
        offset = address - page
        if offset + size <= TABLE_SIZE:
            return data[offset : offset + size]
        return self.target.read_physical(address, size)

    def _prefetch_tables(self, pages: Iterable[int]) -> None:
        """Read table pages ahead of the walk, in one batch: neighbours as one request (a
        run of adjacent pages, at most PREFETCH_PAGES), the requests through
        ``read_physical_many`` (a gdb stub: several in flight) instead of a round trip
        per page. A run that cannot be read whole is left to the walk, which reads (and
        reports) page by page."""
        wanted = sorted({p for p in pages if p not in self._tables})
        runs: list[list[int]] = []
        for page in wanted:
            if runs and page == runs[-1][-1] + TABLE_SIZE and len(runs[-1]) < PREFETCH_PAGES:
                runs[-1].append(page)
            else:
                runs.append([page])
        if not runs:
            return
        found = self.target.read_physical_many([(run[0], len(run) * TABLE_SIZE) for run in runs])
        for run, data in zip(runs, found, strict=True):
            if not isinstance(data, bytes) or len(data) != len(run) * TABLE_SIZE:
                continue
            for n, page in enumerate(run):
                self._tables[page] = data[n * TABLE_SIZE : (n + 1) * TABLE_SIZE]

    def _walk(self, cr3: int, mode: PagingMode) -> AddressSpace:
        """A whole walk from ``cr3``, through the session's table cache (see
        :class:`~inspector.x86.paging.WalkCache`): the tables the last walk from the same
        root read are read again first, in bulk, then each level's new tables in bulk."""
        from .x86.paging import WalkCache, collect_address_space

        if self._walk_cache is None:
            self._walk_cache = WalkCache()
        cache = self._walk_cache
        self._prefetch_tables(cache.pages(cr3))
        return collect_address_space(
            self._read_table, cr3, mode, cache=cache, prefetch=self._prefetch_tables
        )

    def _walk_inputs(self) -> tuple[int, PagingMode]:
        state = self.control_registers()
        mode = state.paging
        if not mode.is_long_mode:
            raise InspectorError(
                f"cannot walk page tables: {mode} (kinspect walks 4- and 5-level paging)"
            )
        return state["CR3"].value, mode

    # -- page tables ---------------------------------------------------------------

    def address_space(self) -> AddressSpace:
        """Every leaf of the current page tables (walked once per stop)."""

        cpu = self.cpu
        if cpu not in self._space:
            cr3, mode = self._walk_inputs()
            self._find_direct_map(cr3, mode)
            self._space[cpu] = self._walk(cr3, mode)
        return self._space[cpu]

    def ranges(self) -> RangeList:
        """The leaves merged ptdump style (a list of :class:`Range`, made as it is read)."""
        from .x86.paging import coalesce_ranges

        cpu = self.cpu
        if cpu not in self._ranges:
            self._ranges[cpu] = coalesce_ranges(self.address_space().leaves)
        return self._ranges[cpu]

    def translate(self, virtual: int) -> Translation:
        from .x86.paging import translate

        cr3, mode = self._walk_inputs()
        self._find_direct_map(cr3, mode)
        return translate(self._read_table, cr3, mode, virtual)

    def page_table(self, address: int, level: int) -> tuple[PageTableEntry, ...]:
        """The 512 entries of the table at physical ``address`` holding ``level`` entries.

        For tools that drill down one table at a time (the TUI's tree): the
        root is ``page_table(root_table(), paging_mode().levels)``.
        """
        from .x86.paging import decode_table

        mode = self.paging_mode()
        data = self._read_table(address & ~(TABLE_SIZE - 1), TABLE_SIZE)
        return decode_table(data, level, maxphyaddr=mode.maxphyaddr, nxe=mode.nxe)

    def root_table(self) -> int:
        """Physical address of the top paging structure (CR3's base)."""
        cr3, mode = self._walk_inputs()
        return cr3 & ((1 << mode.maxphyaddr) - 1) & ~(TABLE_SIZE - 1)

    def aliases(self, physical: int) -> list[int]:
        """Every virtual address that maps ``physical``, ascending."""
        from .x86.paging import find_alias_addresses

        if physical < 0 or physical >= 1 << 52:
            raise FaultError(physical, "not a physical address (must be below 2^52)")
        return find_alias_addresses(self.address_space().leaves, physical)

    def _efi_kept(self) -> dict[str, int]:
        """Where the kernel keeps the UEFI memory map and attributes table, and their sizes
        (asked once)."""
        if self._efi_kept_at is None:
            self._efi_kept_at = self._find_efi_kept()
        return self._efi_kept_at

    def _find_efi_kept(self) -> dict[str, int]:
        """From the agent's ``efi_info`` when the target makes UEFI calls (no ELF needed),
        else by the demo kernel's symbols (``efi_memmap``, ...)."""
        if self.target.has(Capability.UEFI_CALLS):
            return dict(self.target.uefi().efi_kept_map())
        if self.symbols is None:
            raise TargetError(
                "the UEFI memory map is found by symbol or through the agent: give the "
                "kernel's ELF or --agent"
            )

        if self.symbols.lookup("efi_memmap") is None:
            raise TargetError(
                "this kernel keeps no UEFI memory map (no efi_memmap symbol in its ELF; the "
                "kinspect demo kernel keeps one when booted through UEFI)"
            )

        def read_uint(name: str, size: int = 8) -> int:
            return int.from_bytes(self.read_virtual(self.resolve(name), size), "little")

        return {
            "memmap": self.resolve("efi_memmap"),
            "memmap_size": read_uint("efi_memmap_size"),
            "desc_size": read_uint("efi_memmap_desc_size"),
            "desc_version": read_uint("efi_memmap_desc_version", 4),  # uint32_t in efi.c
            "memattr": self.resolve("efi_memattr"),
            "memattr_size": read_uint("efi_memattr_size"),
        }

    def efi_memory_map(self) -> MemoryMap:
        """The UEFI memory map the kernel kept at ExitBootServices.

        Each runtime region comes with the virtual addresses that map its
        first page now.
        """
        from .efi.memmap import MemoryMap, decode_memory_map

        kept = self._efi_kept()
        if kept["memmap_size"] == 0:
            raise TargetError("the kernel did not boot through UEFI: its memory map is empty")
        stride = kept["desc_size"]
        if self._efi_descriptors is None:
            data = self.read_virtual(kept["memmap"], kept["memmap_size"])
            self._efi_descriptors = decode_memory_map(data, stride)
        descriptors = self._efi_descriptors
        mapped_at = {
            d.index: tuple(self.aliases(d.physical_start)) for d in descriptors if d.runtime
        }
        return MemoryMap(descriptors, stride, kept["desc_version"], mapped_at)

    def efi_memory_attributes(self) -> MemoryAttributesTable | None:
        """EFI_MEMORY_ATTRIBUTES_TABLE as the kernel kept it, or None."""
        from .efi.memmap import decode_memory_attributes_table

        kept = self._efi_kept()
        if kept["memattr_size"] == 0:
            return None
        if self._efi_attributes is None:
            data = self.read_virtual(kept["memattr"], kept["memattr_size"])
            self._efi_attributes = decode_memory_attributes_table(data)
        return self._efi_attributes

    def _efi_agent(self, what: str) -> UefiCalls:
        if not self.target.has(Capability.UEFI_CALLS):
            raise MissingCapability(
                Capability.UEFI_CALLS,
                f"{what} is a call into the firmware, which the in-kernel agent makes: "
                "attach with --agent",
            )
        return self.target.uefi()

    def efi_time(self) -> EfiTime:
        """GetTime, called by the agent where the firmware is mapped now."""
        return self._efi_agent("GetTime").efi_get_time()

    def efi_variable_names(self) -> list[tuple[str, uuid.UUID]]:
        """(name, vendor GUID) of every variable the firmware lists at runtime."""
        return self._efi_agent("GetNextVariableName").efi_variable_names()

    def efi_variable(self, name: str, guid: uuid.UUID) -> tuple[int, bytes]:
        """GetVariable: (attributes, data)."""
        return self._efi_agent("GetVariable").efi_get_variable(name, guid)

    # -- symbols, descriptor tables, stack frames ---------------------------------
    # (the analysis lives in tables.py and unwind.py; these gather its inputs)

    def set_slide(self, slide: int) -> None:
        """Use the ELF's symbols ``slide`` bytes away from their link addresses (KASLR)."""
        symbols = self.symbols
        if symbols is None:
            raise InspectorError("a load slide needs the kernel's symbols: pass --elf")
        self._symbols = symbols.with_slide(slide)
        self._orc_looked = False  # the ORC sections move with the slide

    def addr2sym(self, address: int) -> SymbolicAddress:
        """Symbol+offset and file:line of a run-time address."""
        symbols = self.symbols
        if symbols is None:
            raise InspectorError("symbolizing needs the kernel's ELF: pass --elf")
        end = symbols.lookup("_end")  # modules lie past the kernel's image
        if self._linux is not None and not self.elf and end is not None and address >= end:
            found = self._module_symbol(address)
            if found is not None:
                return found
        return symbols.addr2sym(address)

    def _module_symbol(self, address: int) -> SymbolicAddress | None:
        """``name [module]`` for an address inside a loaded module (its own kallsyms)."""
        from .linux.modules import read_module_symbols
        from .symbols import SymbolicAddress

        try:
            modules = self.modules()
            btf = self.btf()
        except InspectorError:
            return None
        for module in modules.modules:
            if not any(p.base <= address < p.base + p.size for p in module.parts):
                continue
            best: ModuleSymbol | None = None
            for symbol in read_module_symbols(self.read_virtual, btf, module):
                if symbol.address <= address:
                    best = symbol
            if best is None:
                return SymbolicAddress(address, f"[{module.name}]", 0, None)
            return SymbolicAddress(
                address, f"{best.name} [{module.name}]", address - best.address, None
            )
        return None

    def _long_mode(self) -> bool:
        efer = self.registers().get("efer")
        return True if efer is None else bool(efer >> 10 & 1)  # EFER.LMA

    def _loaded_selectors(self, system: SystemRegisters) -> dict[str, int]:
        from .x86.descriptors import SEGMENT_REGISTERS

        regs = self.registers()
        loaded = {name: regs[name.lower()] for name in SEGMENT_REGISTERS if name.lower() in regs}
        if system.tr is not None:
            loaded["TR"] = system.tr.selector
        if system.ldtr is not None:
            loaded["LDTR"] = system.ldtr.selector
        return loaded

    def gdt(self) -> DescriptorTable:
        """The GDT at GDTR, each slot decoded, loaded selectors marked and checked."""
        from .tables import describe_gdt

        system = self.system_registers()
        return describe_gdt(
            self.read_virtual,
            system.gdtr,
            self._loaded_selectors(system),
            long_mode=self._long_mode(),
        )

    def ldt(self) -> DescriptorTable | None:
        """The LDT LDTR holds, or None when LDTR is null."""
        from .tables import describe_ldt

        system = self.system_registers()
        return describe_ldt(
            self.read_virtual,
            system.ldtr,
            self._loaded_selectors(system),
            long_mode=self._long_mode(),
        )

    def idt(self) -> InterruptTable:
        """Every IDT gate with its handler rebuilt and symbolized."""
        from .tables import describe_idt

        return describe_idt(
            self.read_virtual,
            self.system_registers().idtr,
            self.symbols,
            long_mode=self._long_mode(),
        )

    def tss(self) -> TaskState:
        """The TSS TR selects, with RSP0-2 and IST1-7 and whether each stack is mapped."""
        from .tables import describe_gdt, describe_tss

        system = self.system_registers()
        gdt = describe_gdt(
            self.read_virtual,
            system.gdtr,
            self._loaded_selectors(system),
            long_mode=self._long_mode(),
        )
        return describe_tss(self.read_virtual, system.tr, gdt, self.symbols, self.mapping())

    def mapping(self) -> MappingLookup | None:
        """``address -> mapped range`` from the page tables, None when they cannot be walked."""
        from .tables import mapping_lookup

        try:
            return mapping_lookup(self.ranges())
        except InspectorError:
            return None

    def orc(self) -> OrcTable | None:
        """Linux's ORC tables: in the kernel's memory when its symbols (kallsyms, a file,
        an ELF with symbols) name them, else the ``--elf`` file's ``.orc_unwind``
        sections moved by the slide; None without either (the demo kernel: CFI)."""
        if not self._orc_looked:
            self._orc_looked = True
            self._orc = self._find_orc()
        return self._orc

    def _find_orc(self) -> OrcTable | None:
        from .linux.orc import OrcTable

        symbols = self.symbols
        if symbols is not None and symbols.lookup("__start_orc_unwind_ip") is not None:
            try:
                return OrcTable.from_symbols(self.read_virtual, symbols.lookup)
            except InspectorError:
                pass
        if not self.elf:
            return None
        try:
            table = OrcTable.from_elf(self.elf)
        except InspectorError:
            return None  # not a vmlinux with ORC sections
        # the slide: the ELF's symbols' (--slide), else the recognized kernel's (a stripped
        # vmlinux has no symbol to slide by); the file's tables are used only where the
        # kernel's memory holds the same bytes, so a wrong slide never unwinds
        slides = [symbols.slide] if symbols is not None else []
        found = self._recognize()
        if found is not None:
            slides.append(found[0].slide)
        for slide in dict.fromkeys(slides or [0]):
            moved = table.moved(slide)
            if moved.matches(self.read_virtual):
                return moved
        return None

    def backtrace(self, *, max_depth: int | None = None) -> Backtrace:
        """The stack frames of the stopped CPU, innermost first (never raises on bad stacks);
        at most ``max_depth`` (default: the unwinder's ``MAX_DEPTH``)."""
        from .unwind import MAX_DEPTH, unwind

        regs = self.registers()
        symbols = self.symbols
        try:
            handlers = self.idt().handlers()
        except InspectorError:
            handlers = None  # a target without IDTR: no IDT-entry frames
        return unwind(
            self.read_virtual,
            regs,
            cfi=symbols.cfi if symbols else None,
            symbols=symbols,
            mapping=self.mapping(),
            idt_handlers=handlers,
            orc=self.orc(),
            max_depth=MAX_DEPTH if max_depth is None else max_depth,
        )

    # -- Linux: types and tasks (inspector/linux/btf.py, tasks.py) ----------------

    def btf(self) -> Btf:
        """The kernel's types: its BTF, read from its memory once (and cached on disk as
        kallsyms is); where it has none (or it cannot be read), the DWARF of ``--elf``."""
        from .linux.dwarf_types import choose_types

        if self._btf is None:
            self._btf = choose_types(self._kernel_btf, self._dwarf_types if self.elf else None)
        return self._btf

    def _kernel_btf(self) -> Btf:
        from .linux.btf import decode_btf
        from .linux.kernel import read_btf_bytes

        kernel = self.kernel()
        symbols = self.symbols
        if symbols is None:
            raise InspectorError("no kernel symbols: cannot find the kernel's BTF")
        return decode_btf(read_btf_bytes(self.read_virtual, symbols.lookup, kernel))

    def _dwarf_types(self) -> Btf:
        """The types in the DWARF of the ``--elf`` file (read whole, once)."""
        from elftools.common.exceptions import DWARFError, ELFError
        from elftools.elf.elffile import ELFFile

        from .linux.dwarf_types import decode_dwarf_types

        path = str(self.elf)
        try:
            with open(path, "rb") as stream:
                elf = ELFFile(stream)
                if not elf.has_dwarf_info():
                    raise InspectorError(f"{path} has no DWARF (built without -g?)")
                dwarf = elf.get_dwarf_info()  # relocated: a .o or .ko has relocations
                return decode_dwarf_types(dwarf, origin=f"the DWARF of {path}")
        except OSError as exc:
            raise InspectorError(f"cannot read {path}: {exc.strerror or exc}") from exc
        except (ELFError, DWARFError) as exc:
            raise InspectorError(f"cannot read the DWARF of {path}: {exc}") from exc

    def tasks(self) -> TaskList:
        """Every task on ``init_task.tasks``, and each CPU's current task (read per call)."""
        from .linux.tasks import read_tasks

        self.kernel()  # not Linux: say so, not which struct the types lack
        btf = self.btf()
        symbols = self.symbols
        assert symbols is not None  # btf() needs them
        return read_tasks(
            self.read_virtual,
            btf,
            symbols.lookup,
            page_offset_base=self.kernel().page_offset_base,
        )

    def modules(self) -> ModuleList:
        """The loaded modules (the kernel's ``modules`` list), newest first."""
        from .linux.modules import read_modules

        self.kernel()  # not Linux: say so, not which struct the types lack
        btf = self.btf()
        symbols = self.symbols
        assert symbols is not None  # btf() needs them
        return read_modules(self.read_virtual, btf, symbols.lookup)

    def task_address_spaces(self, pid: int) -> tuple[Task, AddressSpace, AddressSpace | None]:
        """Task ``pid``'s page tables from its ``mm->pgd``: the kernel's copy, and under
        PTI the user-space copy (None without PTI)."""
        from .linux.tasks import find_task, pti_user_copy

        task = find_task(self.tasks(), pid)
        if task.pgd_physical is None:
            raise InspectorError(
                f"task {pid} ({task.comm}) is a kernel thread: it has no mm of its own"
            )
        _, mode = self._walk_inputs()
        space = self._walk(task.pgd_physical, mode)
        user_at = pti_user_copy(self._read_table(task.pgd_physical, 4096), task.pgd_physical)
        user = self._walk(user_at, mode) if user_at else None
        return task, space, user

    def task_translate(self, pid: int, virtual: int) -> Translation:
        """Translate ``virtual`` through task ``pid``'s own tables (its ``mm->pgd``: the
        kernel's copy under PTI, which maps user space too)."""
        from .linux.tasks import find_task
        from .x86.paging import translate

        task = find_task(self.tasks(), pid)
        if task.pgd_physical is None:
            raise InspectorError(
                f"task {pid} ({task.comm}) is a kernel thread: it has no mm of its own"
            )
        _, mode = self._walk_inputs()
        return translate(self._read_table, task.pgd_physical, mode, virtual)

    def task_aliases(self, physical: int) -> list[tuple[int, Task | None]]:
        """Every virtual address that maps ``physical`` in any task: the kernel half once
        (shared by all, owner None), then each user task's lower half, with its task."""
        from .x86.paging import find_alias_addresses

        if physical < 0 or physical >= 1 << 52:
            raise FaultError(physical, "not a physical address (must be below 2^52)")
        found: list[tuple[int, Task | None]] = [
            (va, None)
            for va in find_alias_addresses(self.address_space().leaves, physical)
            if va >> 63
        ]
        _, mode = self._walk_inputs()
        for task in self.tasks().tasks:
            if task.pgd_physical is None:
                continue
            space = self._walk(task.pgd_physical, mode)
            found += [
                (va, task) for va in find_alias_addresses(space.leaves, physical) if not va >> 63
            ]
        return found

    def task_backtrace(self, pid: int, *, max_depth: int | None = None) -> Backtrace:
        """The stack of task ``pid``: from the CPU's registers when it is running, else
        from its saved context (``thread.sp``'s ``inactive_task_frame``)."""
        from .linux.tasks import find_task, saved_context
        from .unwind import MAX_DEPTH, unwind

        task = find_task(self.tasks(), pid)
        if task.current_on:
            return self.backtrace(max_depth=max_depth)
        context = saved_context(self.read_virtual, self.btf(), task.address)
        symbols = self.symbols
        return unwind(
            self.read_virtual,
            context.registers,
            symbols=symbols,
            mapping=self.mapping(),
            orc=self.orc(),
            max_depth=MAX_DEPTH if max_depth is None else max_depth,
            return_address=True,
        )

    # -- faults (the analysis lives in fault.py) ------------------------------------

    def fault(
        self, *, frame: int | None = None, vector: int | None = None, qemu_log: str | None = None
    ) -> FaultReport:
        """Why the CPU took the exception it is in: vector, error code, the rule broken.

        From the handler's entry (a catchpoint), interrupt frame ``frame`` of the
        backtrace, or the last exception in ``qemu_log`` (QEMU's ``-d int`` text).
        """
        from .fault import explain_fault

        return explain_fault(self, frame=frame, vector=vector, qemu_log=qemu_log)

    def catch(self, vector: int | None) -> list[Catchpoint]:
        """Stop before the handler of ``vector`` runs (None: every exception, 0-31)."""
        from .fault import catch_exceptions

        return catch_exceptions(self, vector)

    def triple_fault(self, qemu_log: str) -> TripleFaultReport:
        """The exception chain of the triple fault in ``qemu_log`` and why it ended there."""
        from .fault import explain_triple_fault

        return explain_triple_fault(self, qemu_log)

    def _check_canonical(self, address: int) -> None:
        from .x86.paging import check_canonical

        regs = self.registers()
        if "cr4" in regs and "efer" in regs and "cr0" in regs:
            mode = self.paging_mode()
            if mode.is_long_mode:
                check_canonical(address, mode.levels)
