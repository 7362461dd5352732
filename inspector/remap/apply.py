"""Applying remap plans through the agent: journal first, then the request, then a fresh walk.

Each step goes: the raw entries (or registers) it will change are read and
written to the journal as *pending*; the request is sent (a retry carries the
same id, so the agent applies it once); the entries the agent replaced are
written to the journal as *applied*, and only then is the step reported. The
map is walked again and compared with what the plan expected.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from kinspect.protocols.agent_client import (
    AgentClientError,
    AgentProtocolError,
    AgentRemoteError,
    AgentTimeout,
)
from kinspect.protocols.agent_wire import ErrorCode

from ..efi.runtime import EFI_VA_BASE
from ..errors import AgentError, InspectorError, TargetError, TargetLost
from ..x86.control import PagingMode, decode_paging_mode
from ..x86.paging import (
    Range,
    ReadPhysical,
    entry_span,
    higher_half,
    level_index,
    translate,
    walk_tables,
)
from .efi import IRREVERSIBLE, SVAM, plan_efi_steps, read_efi_state
from .journal import Journal, JournalStep, kernel_identity
from .plan import (
    LEVEL_OF_SIZE,
    Expectation,
    Plan,
    Protected,
    Refusal,
    Step,
    check_change,
    plan_map,
    plan_move,
    plan_protect,
    plan_unmap,
    protected_areas,
    verify_expectations,
)

if TYPE_CHECKING:  # the agent target opens its Remapper: imported the other way round
    from ..targets.agent import AgentTarget
__all__ = ["HIGHER_HALF", "RemapRefused", "Remapper", "StepReport", "UndoRefused"]

PAGE = 0x1000
REFUSED = ErrorCode.REFUSED
#: Lower and upper halves of the 4-level address space (a Remapper knows its own mode's).
HIGHER_HALF = higher_half(4)
SET_ENTRIES_CHUNK = 16  # a set_entries request stays under the agent's 512-byte limit
VARIABLES_LISTED = 64  # GetNextVariableName calls the check after SetVirtualAddressMap makes
ENTRY_BLOCK = 512  # bytes of a table read at once to journal a step's entries (64 of them)
#: Requests that take no ``force`` parameter (UEFI forbids what their checks refuse).
NO_FORCE = frozenset({SVAM})
#: Refusals --force cannot override (the agent or the firmware refuses them anyway).
UNFORCEABLE = frozenset({"efi-virtual-mode", "efi-unmapped", "non-canonical", "misaligned"})


class RemapRefused(AgentError):
    """A change refused for safety (by the plan or by the agent), with its reason."""

    def __init__(self, refusal: Refusal, *, by: str) -> None:
        self.refusal = refusal
        self.reason = refusal.reason
        self.address = refusal.address
        self.by = by
        hint = "" if refusal.reason in UNFORCEABLE else " (add --force to do it anyway)"
        super().__init__(REFUSED, f"{by}: {refusal}{hint}")


class UndoRefused(InspectorError):
    """Undo would reverse what cannot be reversed; nothing was undone."""

    def __init__(self, record: JournalStep, pinned: list[JournalStep]) -> None:
        self.record = record
        self.pinned = pinned
        seqs = _seq_ranges([s.seq for s in pinned])
        super().__init__(
            f"undo refused: step #{record.seq} called SetVirtualAddressMap, which cannot be "
            "undone (UEFI allows one call per boot, and the firmware has converted its own "
            f"pointers to the new addresses); steps {seqs} keep the runtime services mapped "
            "and stay as they are. Nothing was undone; steps after it can be undone with "
            "--seq, and `kinspect remap journal --keep` closes the rest"
        )


def _seq_ranges(seqs: list[int]) -> str:
    """``#1-#34, #36`` for [1, 2, ..., 34, 36]."""
    runs: list[list[int]] = []
    for seq in sorted(seqs):
        if runs and runs[-1][1] == seq - 1:
            runs[-1][1] = seq
        else:
            runs.append([seq, seq])
    return ", ".join(f"#{lo}" if lo == hi else f"#{lo}-#{hi}" for lo, hi in runs)


@dataclass(slots=True)
class StepReport:
    seq: int
    step: Step
    result: Any
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: What was checked beyond the walk (the runtime services answering, ...).
    checks: list[str] = field(default_factory=list)

    @property
    def verified(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        head = f"step #{self.seq} {self.step.method}: {self.step.description}"
        if (
            isinstance(self.result, list)
            and self.result
            and isinstance(self.result[0], list)
            and len(self.result[0]) == 5
        ):
            head += f"\n  {len(self.result)} entries written (old values journaled)"
            for va, level, entry_pa, old, new in self.result[:6]:
                head += f"\n    L{level} {va:#018x} @{entry_pa:#x}: {old:#018x} -> {new:#018x}"
        if self.step.expect:
            checked = "the walk matches the plan"
        elif self.step.method == SVAM:
            checked = "the firmware answers through the new mapping"
        else:
            checked = "the registers are as planned"
        verdict = f"verified: {checked}" if self.verified else "NOT as planned:"
        lines = [head, f"  {verdict}"] + [f"    {p}" for p in self.problems]
        lines += [f"    {c}" for c in self.checks]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "step": self.step.to_dict(),
            "result": self.result,
            "verified": self.verified,
            "problems": self.problems,
            "checks": self.checks,
            "seconds": round(self.seconds, 4),
        }


def _refusal_from(exc: AgentRemoteError) -> Refusal:
    reason, _, message = exc.message.partition(": ")
    return Refusal(reason, exc.address or 0, message or exc.message)


class Remapper:
    """Remaps on a kernel reached through its agent, journaled and verified."""

    def __init__(
        self,
        target: AgentTarget,
        journal: Journal,
        *,
        on_report: Callable[[StepReport], None] | None = None,
        verify_walk: Callable[[], list[Range]] | None = None,
    ) -> None:
        self.target = target
        self.journal = journal
        self.on_report = on_report
        #: What verification walks: the agent's walk, or another source (a gdb stub's view).
        self.verify_walk = verify_walk
        self.levels = int(target.info.get("paging_levels", 4))
        #: Where the upper (kernel) half starts with this many levels.
        self.higher_half = higher_half(self.levels)
        #: Set once SetVirtualAddressMap succeeded here: later steps check the runtime services.
        self.efi_virtual = False
        target.stop()
        #: Which kernel instance this is: the journal shows and undoes its steps only.
        self.kernel = kernel_identity(
            target.info, None if target.info.get("boot_nonce") else self.registers()
        )
        journal.start_session(target.spec, kernel=self.kernel)

    # -- reading the state ---------------------------------------------------------

    @property
    def spec(self) -> str:
        """The agent's line, as the journal names the target."""
        return self.target.spec

    def close(self) -> None:
        """Nothing to let go of: the agent's line is the session's target."""

    def _call(self, method: str, *params: Any) -> Any:
        try:
            return self.target.client.call(method, *params)
        except AgentRemoteError as exc:
            if exc.code == REFUSED:
                raise RemapRefused(_refusal_from(exc), by="the agent refused") from exc
            raise AgentError(exc.code, f"{method}: {exc.message}") from exc
        except AgentTimeout as exc:
            raise TargetLost(f"the agent did not answer {method}: {exc}") from exc
        except AgentProtocolError as exc:
            raise TargetError(f"agent: {exc}") from exc
        except AgentClientError as exc:
            raise TargetLost(f"agent: {exc}") from exc

    def registers(self) -> dict[str, int]:
        return self.target.agent_registers()

    def ranges(self) -> list[Range]:
        return self.target.walk_ranges()

    def tss_base(self, regs: dict[str, int]) -> int | None:
        system = self.target.system_registers()
        return system.tr.base if system.tr else None

    def frames_top(self, regs: dict[str, int]) -> int:
        """The top of the frame-pointer chain from RBP (the stack the kernel is using)."""
        top, rbp = regs["rsp"] + 8, regs["rbp"]
        for _ in range(64):
            if rbp < regs["rsp"] or rbp - regs["rsp"] > 0x100000:
                break
            top = max(top, rbp + 16)
            try:
                (saved,) = struct.unpack("<Q", self.target.read_virtual(rbp, 8))
            except InspectorError:
                break
            if saved <= rbp:
                break
            rbp = saved
        return top

    def paging_mode(self, regs: dict[str, int]) -> PagingMode:
        """The paging mode the registers (the agent's ``regs``) say the kernel runs in."""
        return decode_paging_mode(
            regs["cr0"], regs["cr4"], regs["efer"], maxphyaddr=regs.get("maxphyaddr") or 52
        )

    def table_addresses(self, regs: dict[str, int]) -> list[int]:
        """Physical address of every page table reachable from CR3 (each once)."""
        walk = walk_tables(self.target.read_physical, regs["cr3"], self.paging_mode(regs))
        return [table for _level, table in walk]

    def areas(
        self,
        regs: dict[str, int] | None = None,
        ranges: list[Range] | None = None,
        *,
        tss_base: int | None = None,
    ) -> list[Protected]:
        """What the agent protects, seen from here (mappings of the tables: every alias)."""
        regs = regs or self.registers()
        ranges = ranges if ranges is not None else self.ranges()
        tables = set(self.table_addresses(regs))
        aliases = []
        for r in ranges:
            for pa in tables:
                if r.phys <= pa < r.phys + r.size:
                    aliases.append(r.start + (pa - r.phys))
        system = self.target.system_registers()  # TR and LDTR, read once
        if tss_base is None:
            tss_base = system.tr.base if system.tr else None
        ldtr = system.ldtr
        areas = protected_areas(
            regs,
            tss_base=tss_base,
            frames_top=self.frames_top(regs),
            table_aliases=aliases,
            ldt=(ldtr.base, ldtr.limit) if ldtr else None,
        )
        return areas + self._efi_areas()

    def _efi_areas(self) -> list[Protected]:
        """After SetVirtualAddressMap: the runtime regions where the firmware was told they are."""
        try:
            info = self.target.efi_info()
        except AgentError as exc:
            if exc.code in (ErrorCode.UNKNOWN_METHOD, ErrorCode.UNSUPPORTED):
                return []  # an agent without UEFI methods, or a PVH boot
            raise
        return [
            Protected("efi-runtime", va, va + pages * PAGE)
            for _pa, va, pages in info.get("virtual_map") or ()
        ]

    # -- plans ---------------------------------------------------------------------------

    def plan_map(
        self, va: int, pa: int, size: int, *, page_size: int = PAGE, flags: int = 0
    ) -> Plan:
        return plan_map(
            self.ranges(), self.areas(), va, pa, size, page_size, flags, levels=self.levels
        )

    def plan_unmap(self, va: int, size: int, *, page_size: int = PAGE) -> Plan:
        return plan_unmap(self.ranges(), self.areas(), va, size, page_size, levels=self.levels)

    def plan_protect(self, va: int, size: int, *, page_size: int = PAGE, flags: int = 0) -> Plan:
        return plan_protect(
            self.ranges(), self.areas(), va, size, page_size, flags, levels=self.levels
        )

    def plan_move(self, va: int, size: int, new_va: int, *, drop_old: bool = False) -> Plan:
        return plan_move(
            self.ranges(), self.areas(), va, size, new_va, drop_old=drop_old, levels=self.levels
        )

    # -- applying ------------------------------------------------------------------------

    def apply(self, plan: Plan, *, force: bool = False) -> list[StepReport]:
        if plan.refusals and not force:
            raise RemapRefused(plan.refusals[0], by="the plan is refused")
        reports = []
        for step in plan.steps:
            reports.append(self.run_step(step, force=force))
        return reports

    def _entry_reader(self) -> ReadPhysical:
        """Physical reads of page-table entries, 512 bytes at a time and kept: a step's
        64 pages share their upper entries and lie side by side in one table."""
        blocks: dict[int, bytes] = {}

        def read(pa: int, size: int) -> bytes:
            block = pa & ~(ENTRY_BLOCK - 1)
            if pa + size > block + ENTRY_BLOCK:
                return self.target.read_physical(pa, size)
            if block not in blocks:
                blocks[block] = self.target.read_physical(block, ENTRY_BLOCK)
            return blocks[block][pa - block : pa - block + size]

        return read

    def _entries_on_the_way(
        self, cr3: int, mode: PagingMode, va: int, level: int, read: ReadPhysical
    ) -> list[list[int]]:
        """[va, level, entry] of the entry at ``level``, or of the absent one above it:
        the entries the agent's walk to ``level`` reads, as the walker translates ``va``."""
        for step in translate(read, cr3, mode, va).steps:
            raw = step.entry.raw
            if step.level == level:
                return [[va, level, raw]]
            if not step.entry.present:
                return [[va & ~(entry_span(step.level) - 1), step.level, raw]]
            if step.entry.is_leaf:
                return []  # a larger page: the agent refuses the step
        return []

    def _before(self, step: Step) -> Any:
        """What undo needs if the agent's reply never reaches the journal."""
        regs = self.registers()
        if step.method in ("map", "unmap", "protect"):
            va = step.params[0]
            size, page_size = step.params[2:4] if step.method == "map" else step.params[1:3]
            level = LEVEL_OF_SIZE[page_size]
            out: list[list[int]] = []
            read = self._entry_reader()
            mode = self.paging_mode(regs)
            for off in range(0, size, page_size):
                for item in self._entries_on_the_way(regs["cr3"], mode, va + off, level, read):
                    if item[:2] not in [o[:2] for o in out]:
                        out.append(item)
            return {"entries": out}
        if step.method == SVAM:
            return {"efi_info": self.target.efi_info()}
        return {
            "rsp": regs["rsp"],
            "gdtr_base": regs["gdtr_base"],
            "idtr_base": regs["idtr_base"],
            "tss_base": self.tss_base(regs),
        }

    def run_step(self, step: Step, *, force: bool = False) -> StepReport:
        import time

        t0 = time.monotonic()
        before = self._before(step)
        record = self.journal.begin(step.method, list(step.params), before, step.description)
        params = step.params if step.method in NO_FORCE else (*step.params, force)
        result = self._call(step.method, *params)
        self.journal.applied(record, result)
        if step.method == SVAM:
            self.efi_virtual = True
        checks: list[str] = []
        problems = self.verify(step, checks)
        report = StepReport(record.seq, step, result, problems, time.monotonic() - t0, checks)
        if self.on_report:
            self.on_report(report)
        return report

    def verify(self, step: Step, checks: list[str] | None = None) -> list[str]:
        """Walk again (and read the registers) and say what differs from the plan.

        After SetVirtualAddressMap, every step also checks that the runtime
        services still answer (GetTime; after the call itself a variable
        read too); what was checked goes to ``checks``.
        """
        walk = self.verify_walk or self.ranges
        problems = verify_expectations(step.expect, walk()) if step.expect else []
        if checks is None:
            checks = []
        if self.efi_virtual:
            problems += self._verify_runtime(step, checks)
        regs = self.registers()
        if step.method == "move_stack":
            lo, hi, new_lo = step.params[:3]
            if not new_lo <= regs["rsp"] < new_lo + (hi - lo):
                problems.append(
                    f"RSP is {regs['rsp']:#x}, not in {new_lo:#x}-{new_lo + hi - lo:#x}"
                )
        if step.method == "load_descriptors":
            gdt, idt, tss = step.params[:3]
            if regs["gdtr_base"] != gdt:
                problems.append(f"GDTR.base is {regs['gdtr_base']:#x}, not {gdt:#x}")
            if regs["idtr_base"] != idt:
                problems.append(f"IDTR.base is {regs['idtr_base']:#x}, not {idt:#x}")
            if (now := self.tss_base(regs)) != tss:
                problems.append(f"the TSS base is {now!s}, not {tss:#x}")
        return problems

    def _verify_runtime(self, step: Step, checks: list[str]) -> list[str]:
        problems: list[str] = []
        try:
            now = self.target.efi_get_time()
        except InspectorError as exc:
            return [f"GetTime through the new mapping failed: {exc}"]
        problems += [f"GetTime: {p}" for p in now.problems()]
        checks.append(f"GetTime answers through the new mapping: {now}")
        if step.method != SVAM:
            return problems
        state = read_efi_state(self.target)
        assert state is not None  # the call succeeded: the agent has UEFI
        info = state.info
        sizes = {d.physical_start: d.size for d in state.descriptors}
        st = info["system_table"]
        pairs = cast("list[list[int]]", step.params[0])  # SVAM's one parameter: [PA, VA] pairs
        expected = next(
            (va + st - pa for pa, va in pairs if pa <= st < pa + sizes.get(pa, 0)), None
        )
        if not info.get("virtual_mode"):
            problems.append("the agent does not report virtual mode after the call")
        if expected is not None and info.get("system_table_va") != expected:
            problems.append(
                f"the system table is reached at {info.get('system_table_va'):#x}, "
                f"not {expected:#x}"
            )
        checks.append(
            f"the system table is at {info.get('system_table_va', 0):#x} "
            f"(physical {st:#x}), RuntimeServices at "
            f"{info.get('runtime_services', 0):#x}"
        )
        try:
            names = self.target.efi_variable_names(limit=VARIABLES_LISTED)
        except InspectorError as exc:
            return problems + [f"GetNextVariableName through the new mapping failed: {exc}"]
        if not names:
            return problems + ["GetNextVariableName found no variable to read back"]
        name, guid = names[0]
        try:
            attributes, data = self.target.efi_get_variable(name, guid)
        except InspectorError as exc:
            return problems + [f"GetVariable {name} through the new mapping failed: {exc}"]
        listed = f"{len(names)}" if len(names) < VARIABLES_LISTED else f"{len(names)} or more"
        checks.append(
            f"GetNextVariableName lists {listed} variables; GetVariable "
            f"{name} ({guid}): {len(data)} bytes, "
            f"attributes {attributes:#x}"
        )
        return problems

    # -- undo ------------------------------------------------------------------------------

    def undo(
        self, steps: list[JournalStep] | None = None, *, force: bool = False
    ) -> list[JournalStep]:
        """Restore what the open steps (or ``steps``) replaced, newest first."""
        todo = sorted(
            steps if steps is not None else self.journal.open_steps(),
            key=lambda s: s.seq,
            reverse=True,
        )
        self._refuse_irreversible(todo)
        done = []
        for record in todo:
            self._undo_one(record, force)
            self.journal.undone(record)
            done.append(record)
        return done

    def _refuse_irreversible(self, todo: list[JournalStep]) -> None:
        """Refuse, before anything is undone, an undo that reaches an irreversible step."""
        for record in self.journal.open_steps():
            if record.method not in IRREVERSIBLE:
                continue
            if record.state == "pending" and not self.target.efi_info().get("virtual_mode"):
                continue  # the reply never reached the journal, and the call never happened
            pinned = [
                s
                for s in self.journal.open_steps()
                if s.session == record.session and s.seq <= record.seq
            ]
            if any(s.seq in {p.seq for p in pinned} for s in todo):
                raise UndoRefused(record, pinned)

    def _undo_one(self, record: JournalStep, force: bool) -> None:
        m = record.method
        if m in ("map", "unmap", "protect", "set_entries"):
            if record.state == "applied":
                entries = [
                    [va, level, old] for va, level, _pa, old, _new in reversed(record.result)
                ]
            else:  # pending: the reply never reached the journal; the entries read before do
                entries = [list(e) for e in reversed(record.before["entries"])]
            for i in range(0, len(entries), SET_ENTRIES_CHUNK):
                self._call("set_entries", force, entries[i : i + SET_ENTRIES_CHUNK])
        elif m == "move_stack":
            lo, hi, new_lo = record.params[:3]
            rsp = self.registers()["rsp"]
            if new_lo <= rsp < new_lo + (hi - lo):  # applied (whatever the journal knew)
                # The old place has no guard page (the identity map): force skips only that check.
                self._call("move_stack", new_lo, new_lo + (hi - lo), lo, True)
        elif m == "load_descriptors":
            b = record.before
            regs = self.registers()
            if (regs["gdtr_base"], regs["idtr_base"]) != (b["gdtr_base"], b["idtr_base"]) or (
                self.tss_base(regs) != b["tss_base"]
            ):
                self._call("load_descriptors", b["gdtr_base"], b["idtr_base"], b["tss_base"], force)
        else:
            raise InspectorError(f"journal step #{record.seq}: cannot undo {m}")

    # -- the seed scenario -------------------------------------------------------------

    def plan_higher_half(self) -> Plan:
        """Move the stack and the GDT/IDT/TSS to higher-half aliases, then drop the lower half."""
        regs = self.registers()
        ranges = self.ranges()
        tss = self.tss_base(regs)
        steps: list[Step] = []
        notes: list[str] = []
        moved = dict(regs)
        if regs["rsp"] < self.higher_half:
            steps.append(self._plan_stack(regs, ranges, notes))
            lo, _hi, new_lo = steps[-1].params
            moved["rsp"] += new_lo - lo
            moved["rbp"] += new_lo - lo if lo <= regs["rbp"] < _hi else 0
        else:
            notes.append(f"the stack is already in the higher half (RSP={regs['rsp']:#x})")
        gdt, idt = regs["gdtr_base"], regs["idtr_base"]

        def lifted(base: int) -> int:
            return self._upper_alias(base, ranges) if base < self.higher_half else base

        if any(v is not None and v < self.higher_half for v in (gdt, idt, tss)):
            new_gdt, new_idt = lifted(gdt), lifted(idt)
            new_tss = lifted(tss) if tss is not None else None
            steps.append(
                Step(
                    "load_descriptors",
                    (new_gdt, new_idt, new_tss or 0),
                    f"lgdt {new_gdt:#x}, far return to reload CS, lidt {new_idt:#x}, "
                    f"TSS descriptor -> {new_tss or 0:#x} and ltr (were {gdt:#x}, "
                    f"{idt:#x}, {tss or 0:#x})",
                )
            )
            moved["gdtr_base"], moved["idtr_base"] = new_gdt, new_idt
            tss = new_tss
        else:
            notes.append("GDT, IDT and TSS are already in the higher half")
        areas = self.areas(moved, ranges, tss_base=tss)
        refusals: list[Refusal] = []
        tables = 0
        title = "move the runtime to the higher half, then drop the identity map"
        efi = read_efi_state(self.target)
        if efi is not None and not efi.virtual_mode:
            part = plan_efi_steps(efi, ranges, areas, levels=self.levels)
            steps += part.steps
            tables += part.tables
            refusals += part.refusals
            notes += part.notes
            title = (
                "move the runtime and the UEFI runtime services to the higher half, "
                "then drop the identity map"
            )
        elif efi is not None:
            notes.append("the UEFI runtime services are in virtual mode already")
        drop, low, more = self._drop_lower_half(ranges, areas)
        return Plan(
            title, tuple(steps + drop), tables, tuple(low), tuple(refusals + more), tuple(notes)
        )

    def _drop_lower_half(
        self, ranges: list[Range], areas: list[Protected]
    ) -> tuple[list[Step], list[Range], list[Refusal]]:
        """Clear the PML4 entries of everything below the higher half (the identity map).

        512 GiB at a time with 5 levels too: the PML4 entries under the lower PML5 entries.
        """
        low = [r for r in ranges if r.start < self.higher_half]
        span = entry_span(4)
        slots = sorted({r.start // span for r in low})
        steps, refusals = [], []
        for slot in slots:
            va = slot * span
            inside = [r for r in low if r.start // span == slot]
            what = (
                "the identity map"
                if all(r.start == r.phys for r in inside)
                else "lower-half mappings, not only an identity map"
            )
            where = f"PML4 entry {level_index(va, 4)}"
            if self.levels == 5:
                where += f" under PML5 entry {level_index(va, 5)}"
            steps.append(
                Step(
                    "unmap",
                    (va, span, span),
                    f"clear {where} ({va:#x}-{va + span:#x}): {what}",
                    ((va, 4, "0 (not present)"),),
                    (Expectation(va, va + span, None),),
                )
            )
            refusals += check_change(areas, va, va + span, unmaps=True)
        return steps, low, refusals

    def plan_efi_runtime(self, *, base: int = EFI_VA_BASE, drop_identity: bool = True) -> Plan:
        """Map the UEFI runtime regions at ``base`` + PA, SetVirtualAddressMap, verify,
        then (``drop_identity``) clear the identity map the firmware ran through."""
        efi = read_efi_state(self.target)
        if efi is None:
            raise InspectorError(
                "the kernel has no UEFI runtime services to move: the agent answers efi_info "
                "with unsupported (not booted through UEFI, or an agent without UEFI support)"
            )
        regs = self.registers()
        ranges = self.ranges()
        areas = self.areas(regs, ranges)
        part = plan_efi_steps(efi, ranges, areas, base, levels=self.levels)
        low: list[Range] = []
        steps, refusals = list(part.steps), list(part.refusals)
        if drop_identity and part.steps:
            drop, low, more = self._drop_lower_half(ranges, areas)
            steps += drop
            refusals += more
        return Plan(
            f"move the UEFI runtime services to {base:#x} + physical"
            + (", then drop the identity map" if drop_identity else ""),
            tuple(steps),
            part.tables,
            tuple(low),
            tuple(refusals),
            part.notes,
        )

    def _upper_alias(self, va: int, ranges: list[Range]) -> int:
        pa = self.target.translate(va).pa
        aliases = [
            r.start + (pa - r.phys)
            for r in ranges
            if r.start >= self.higher_half and r.phys <= pa < r.phys + r.size
        ]
        if not aliases:
            raise InspectorError(f"{va:#x} (physical {pa:#x}) has no alias in the higher half")
        return max(aliases)  # the kernel image's alias rather than the direct map's

    def _plan_stack(self, regs: dict[str, int], ranges: list[Range], notes: list[str]) -> Step:
        def mapped(va: int) -> int | None:
            for r in ranges:
                if r.start <= va < r.end:
                    return r.phys + (va - r.start)
            return None

        page = regs["rsp"] & ~0xFFF
        pa = mapped(page)
        if pa is None:
            raise InspectorError(f"the stack at {regs['rsp']:#x} is not mapped")
        top = self.frames_top(regs)
        for alias in sorted(
            (
                r.start + (pa - r.phys)
                for r in ranges
                if r.start >= self.higher_half and r.phys <= pa < r.phys + r.size
            ),
            reverse=True,
        ):
            bottom = alias
            for _ in range(64):
                below = mapped(bottom - PAGE)
                if below is None or below != pa - (alias - bottom) - PAGE:
                    break
                bottom -= PAGE
            if mapped(bottom - PAGE) is not None:
                continue  # no guard page below this alias
            end = alias + PAGE
            while end - alias < 64 * PAGE and mapped(end) == pa + (end - alias):
                end += PAGE
            delta = alias - page
            if top > end - delta:
                continue
            notes.append(
                f"the stack {bottom - delta:#x}-{end - delta:#x} is also mapped at "
                f"{bottom:#x}-{end:#x}, guard page (unmapped) at {bottom - PAGE:#x}"
            )
            return Step(
                "move_stack",
                (bottom - delta, end - delta, bottom),
                f"RSP, RBP and the saved frame pointers += {delta:#x} (RSP {regs['rsp']:#x} -> "
                f"{regs['rsp'] + delta:#x})",
            )
        raise InspectorError(
            f"the stack at {regs['rsp']:#x} has no higher-half alias with a guard page below it"
        )
