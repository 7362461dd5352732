"""The inspection session: the one facade every face (CLI, TUI, API) stands on.

A session holds a target, caches what it read for as long as the target stays
stopped, and hands the bytes to the pure decoders. A fact the CLI prints and
the TUI shows comes from the same call here, so the two cannot disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import AgentError, FaultError, InspectorError, TargetError, TargetLost
from .numbers import resolve_address
from .symbols import SymbolicAddress, SymbolTable
from .tables import (
    InterruptTable,
    MappingLookup,
    TaskState,
    describe_gdt,
    describe_idt,
    describe_ldt,
    describe_tss,
    mapping_lookup,
)
from .targets.base import Breakpoint, SystemRegisters, Target
from .unwind import MAX_DEPTH, Backtrace, unwind
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
from .x86.descriptors import SEGMENT_REGISTERS, DescriptorTable
from .x86.paging import (
    AddressSpace,
    PageTableEntry,
    Range,
    Translation,
    coalesce_ranges,
    collect_address_space,
    decode_table,
    find_aliases,
    is_canonical,
    translate,
)

__all__ = ["ControlState", "Session"]

TABLE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class ControlState:
    """The decoded control registers and the paging mode they imply."""

    registers: Mapping[str, DecodedRegister]
    paging: PagingMode

    def __getitem__(self, name: str) -> DecodedRegister:
        return self.registers[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "registers": {name: reg.to_dict() for name, reg in self.registers.items()},
            "paging": self.paging.to_dict(),
        }


class Session:
    """A live inspection of one target."""

    def __init__(self, target: Target, *, elf: str | None = None) -> None:
        self.target = target
        self.elf = elf
        self._symbols: SymbolTable | None = None
        self._registers: Mapping[str, int] | None = None
        self._space: AddressSpace | None = None
        self._ranges: list[Range] | None = None
        self._tables: dict[int, bytes] = {}
        self._remapper: Any = None
        #: Where the kernel keeps the UEFI memory map, and the map itself: neither changes
        #: once boot services are gone, so both are kept across stops (the mappings are
        #: read again at each).
        self._efi_kept_at: dict[str, int] | None = None
        self._efi_descriptors: Any = None
        self._efi_attributes: Any = None

    # -- lifecycle -------------------------------------------------------------

    def close(self, *, resume: bool = True) -> None:
        if self._remapper is not None:
            self._remapper.journal.end_session()
            if hasattr(self._remapper, "close"):
                self._remapper.close()
        self.target.close(resume=resume)

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def invalidate(self) -> None:
        """Forget everything read: the target ran (or was changed) since."""
        self._registers = None
        self._space = None
        self._ranges = None
        self._tables.clear()

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
        from .targets.agent import AgentAssistedTarget, AgentTarget

        if self._remapper is not None or isinstance(self.target, AgentTarget):
            return None
        if isinstance(self.target, AgentAssistedTarget) and self.target.agent_spec:
            return None
        return (
            "remaps need the in-kernel agent: attach with --agent (alone, or beside "
            "--target: the agent applies, the stub verifies)"
        )

    def remapper(self, *, journal: str | Any = None) -> Any:
        """This session's :class:`~inspector.remap.apply.Remapper`, made on first use.

        ``journal`` (first call only): the journal file, default
        ``$KINSPECT_REMAP_JOURNAL`` or ``~/.local/state/kinspect/remap-journal.jsonl``.
        The journal session ends when this session closes.
        """
        if self._remapper is None:
            why = self.remap_unavailable
            if why is not None:
                raise TargetError(why)
            from .remap.apply import Remapper
            from .remap.journal import Journal
            from .targets.agent import AgentAssistedTarget

            if isinstance(self.target, AgentAssistedTarget):
                from .remap.assisted import StubAssistedRemapper

                self._remapper = StubAssistedRemapper(
                    self.target, Journal.open(journal), self._fresh_ranges
                )
            else:
                self._remapper = Remapper(self.target, Journal.open(journal))  # type: ignore[arg-type]
        return self._remapper

    def _fresh_ranges(self) -> list[Range]:
        """The map walked again now, forgotten afterwards (the kernel runs on)."""
        self.invalidate()
        try:
            return self.ranges()
        finally:
            self.invalidate()

    # -- run control (what a live face needs: the TUI) ---------------------------

    @property
    def state(self) -> str:
        """The target's ``"stopped"``, ``"running"`` or ``"exited"``."""
        return self.target.state

    @property
    def last_stop(self) -> Mapping[str, Any]:
        """The record of the last stop (``reason``, ``frame``...), empty when unknown."""
        return self.target.last_stop or {}

    def wait_for_stop(self, timeout: float) -> Mapping[str, Any] | None:
        """Wait up to ``timeout`` s for the running target to stop.

        The stop record, or None while the target still runs; TargetError
        when it has gone away or cannot report stops.
        """
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
        return record or {}

    def step_instruction(self) -> Mapping[str, Any]:
        """Execute one instruction and return the stop record."""
        self.stop()
        self.invalidate()
        return self.target.step_instruction()

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
        """The kernel's symbols when an ELF was given (loaded on first use)."""
        if self._symbols is None and self.elf:
            self._symbols = SymbolTable.from_elf(self.elf)
        return self._symbols

    def resolve(self, text: str) -> int:
        """An address from user text: ``0x...``, decimal, or a symbol name."""
        symbols = self.symbols
        if symbols is None:
            return resolve_address(text, None, hint=" (pass --elf to use symbol names)")
        return resolve_address(text, symbols.lookup)

    # -- registers ---------------------------------------------------------------

    def registers(self) -> Mapping[str, int]:
        """General, segment and control registers as the target reports them."""
        if self._registers is None:
            self.stop()
            self._registers = dict(self.target.registers())
        return self._registers

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
        self.stop()
        return self.target.system_registers()

    # -- memory --------------------------------------------------------------------

    def read_virtual(self, address: int, size: int) -> bytes:
        self.stop()
        self._check_canonical(address)
        return self.target.read_virtual(address, size)

    def read_physical(self, address: int, size: int) -> bytes:
        self.stop()
        return self.target.read_physical(address, size)

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
        if self._space is None:
            cr3, mode = self._walk_inputs()
            self._space = collect_address_space(self._read_table, cr3, mode)
        return self._space

    def ranges(self) -> list[Range]:
        if self._ranges is None:
            self._ranges = coalesce_ranges(self.address_space().leaves)
        return self._ranges

    def translate(self, virtual: int) -> Translation:
        cr3, mode = self._walk_inputs()
        return translate(self._read_table, cr3, mode, virtual)

    def page_table(self, address: int, level: int) -> tuple[PageTableEntry, ...]:
        """The 512 entries of the table at physical ``address`` holding ``level`` entries.

        For tools that drill down one table at a time (the TUI's tree): the
        root is ``page_table(root_table(), paging_mode().levels)``.
        """
        mode = self.paging_mode()
        data = self._read_table(address & ~(TABLE_SIZE - 1), TABLE_SIZE)
        return decode_table(data, level, maxphyaddr=mode.maxphyaddr, nxe=mode.nxe)

    def root_table(self) -> int:
        """Physical address of the top paging structure (CR3's base)."""
        cr3, mode = self._walk_inputs()
        return cr3 & ((1 << mode.maxphyaddr) - 1) & ~(TABLE_SIZE - 1)

    def aliases(self, physical: int) -> list[int]:
        """Every virtual address that maps ``physical``, ascending."""
        if physical < 0 or physical >= 1 << 52:
            raise FaultError(physical, "not a physical address (must be below 2^52)")
        return [va for va, _leaf in find_aliases(self.address_space().leaves, physical)]

    def _efi_kept(self) -> dict[str, int]:
        """Where the kernel keeps the UEFI memory map and attributes table, and their sizes
        (asked once)."""
        if self._efi_kept_at is None:
            self._efi_kept_at = self._find_efi_kept()
        return self._efi_kept_at

    def _find_efi_kept(self) -> dict[str, int]:
        """From the agent's ``efi_info`` when the target is the agent (no ELF needed), else
        by the demo kernel's symbols (``efi_memmap``, ...)."""
        from .targets.agent import AgentTarget

        if isinstance(self.target, AgentTarget):
            try:
                info = self.target.efi_info()
            except AgentError as exc:
                if exc.code == 6:  # unsupported: no UEFI information in the kernel
                    raise TargetError(
                        "the kernel did not boot through UEFI: the agent has no UEFI memory map"
                    ) from exc
                raise
            keys = ("memmap", "memmap_size", "desc_size", "desc_version", "memattr", "memattr_size")
            return {k: int(info.get(k) or 0) for k in keys}
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

    def efi_memory_map(self) -> Any:
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

    def efi_memory_attributes(self) -> Any:
        """EFI_MEMORY_ATTRIBUTES_TABLE as the kernel kept it, or None."""
        from .efi.memmap import decode_memory_attributes_table

        kept = self._efi_kept()
        if kept["memattr_size"] == 0:
            return None
        if self._efi_attributes is None:
            data = self.read_virtual(kept["memattr"], kept["memattr_size"])
            self._efi_attributes = decode_memory_attributes_table(data)
        return self._efi_attributes

    def _efi_agent(self, what: str) -> Any:
        from .targets.agent import AgentTarget

        if not isinstance(self.target, AgentTarget):
            raise TargetError(
                f"{what} is a call into the firmware, which the in-kernel agent makes: "
                "attach with --agent"
            )
        return self.target

    def efi_time(self) -> Any:
        """GetTime (an EfiTime), called by the agent where the firmware is mapped now."""
        return self._efi_agent("GetTime").efi_get_time()

    def efi_variable_names(self) -> list[tuple[str, Any]]:
        """(name, vendor GUID) of every variable the firmware lists at runtime."""
        return self._efi_agent("GetNextVariableName").efi_variable_names()

    def efi_variable(self, name: str, guid: Any) -> tuple[int, bytes]:
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

    def addr2sym(self, address: int) -> SymbolicAddress:
        """Symbol+offset and file:line of a run-time address."""
        symbols = self.symbols
        if symbols is None:
            raise InspectorError("symbolizing needs the kernel's ELF: pass --elf")
        return symbols.addr2sym(address)

    def _long_mode(self) -> bool:
        efer = self.registers().get("efer")
        return True if efer is None else bool(efer >> 10 & 1)  # EFER.LMA

    def _loaded_selectors(self, system: SystemRegisters) -> dict[str, int]:
        regs = self.registers()
        loaded = {name: regs[name.lower()] for name in SEGMENT_REGISTERS if name.lower() in regs}
        if system.tr is not None:
            loaded["TR"] = system.tr.selector
        if system.ldtr is not None:
            loaded["LDTR"] = system.ldtr.selector
        return loaded

    def gdt(self) -> DescriptorTable:
        """The GDT at GDTR, each slot decoded, loaded selectors marked and checked."""
        system = self.system_registers()
        return describe_gdt(
            self.read_virtual,
            system.gdtr,
            self._loaded_selectors(system),
            long_mode=self._long_mode(),
        )

    def ldt(self) -> DescriptorTable | None:
        """The LDT LDTR holds, or None when LDTR is null."""
        system = self.system_registers()
        return describe_ldt(
            self.read_virtual,
            system.ldtr,
            self._loaded_selectors(system),
            long_mode=self._long_mode(),
        )

    def idt(self) -> InterruptTable:
        """Every IDT gate with its handler rebuilt and symbolized."""
        return describe_idt(
            self.read_virtual,
            self.system_registers().idtr,
            self.symbols,
            long_mode=self._long_mode(),
        )

    def tss(self) -> TaskState:
        """The TSS TR selects, with RSP0-2 and IST1-7 and whether each stack is mapped."""
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
        try:
            return mapping_lookup(self.ranges())
        except InspectorError:
            return None

    def backtrace(self, *, max_depth: int = MAX_DEPTH) -> Backtrace:
        """The stack frames of the stopped CPU, innermost first (never raises on bad stacks)."""
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
            max_depth=max_depth,
        )

    def _check_canonical(self, address: int) -> None:
        regs = self.registers()
        if "cr4" in regs and "efer" in regs and "cr0" in regs:
            mode = self.paging_mode()
            if mode.is_long_mode and not is_canonical(address, mode.levels):
                bits = mode.virtual_address_bits
                raise FaultError(
                    address,
                    f"non-canonical address (bits 63:{bits - 1} must all equal bit {bits - 1})",
                )
