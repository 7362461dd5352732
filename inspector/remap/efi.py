"""The UEFI runtime part of a remap: move the firmware's runtime services to the higher half.

UEFI lets a kernel move the runtime services once, after ExitBootServices,
with SetVirtualAddressMap (UEFI 2.10, 8.4). The steps, each one an agent
request, journaled like every remap:

1. ``map`` every runtime region at its new address (``EFI_VA_BASE`` +
   physical address), with the permissions the memory attributes table gives;
2. ``efi_set_virtual_address_map`` with one ``[physical, virtual]`` pair per
   runtime descriptor. The firmware runs in physical mode during the call, so
   its code and data must still be identity-mapped: the plan checks it;
3. verification: GetTime and a variable read (GetNextVariableName,
   GetVariable) through the new mapping, by the agent, before anything else
   changes; only then does the identity map go (the higher-half plan's last
   steps, or ``kinspect remap efi-runtime``'s).

Step 2 cannot be undone: the firmware has converted its own pointers. Undo
refuses it, and the steps before it (the runtime services need them), and
leaves the journal as it was.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kinspect.protocols.agent_wire import ErrorCode

from ..efi.memmap import (
    MemoryAttributesTable,
    MemoryDescriptor,
    decode_memory_attributes_table,
    decode_memory_map,
)
from ..efi.runtime import (
    EFI_VA_BASE,
    RUNTIME_CODE,
    RUNTIME_DATA,
    RegionMapping,
    plan_virtual_map,
    system_table_va,
)
from ..errors import AgentError, InspectorError
from ..x86.paging import Range
from .plan import (
    LEVEL_OF_SIZE,
    Protected,
    RangeIndex,
    Refusal,
    Step,
    indexed,
    plan_map,
    tables_needed,
)

if TYPE_CHECKING:
    from ..targets.agent import AgentTarget

__all__ = ["IRREVERSIBLE", "SVAM", "EfiPlan", "EfiState", "plan_efi_steps", "read_efi_state"]

SVAM = "efi_set_virtual_address_map"
#: Steps undo refuses: what they changed cannot be changed back.
IRREVERSIBLE = frozenset({SVAM})
PAGE = 0x1000


@dataclass(frozen=True, slots=True)
class EfiState:
    """What the agent says of the firmware now, and the memory map the kernel kept."""

    info: dict[str, Any]
    descriptors: tuple[MemoryDescriptor, ...]
    attributes: MemoryAttributesTable | None

    @property
    def virtual_mode(self) -> bool:
        return bool(self.info.get("virtual_mode"))


def read_efi_state(target: AgentTarget) -> EfiState | None:
    """From the agent's ``efi_info``; None when the kernel did not boot through UEFI."""
    try:
        info = target.efi_info()
    except AgentError as exc:
        if exc.code in (ErrorCode.UNKNOWN_METHOD, ErrorCode.UNSUPPORTED):
            return None
        raise
    data = target.read_virtual(info["memmap"], info["memmap_size"])
    descriptors = decode_memory_map(data, info["desc_size"])
    attributes = None
    if info.get("memattr") and info.get("memattr_size"):
        raw = target.read_virtual(info["memattr"], info["memattr_size"])
        attributes = decode_memory_attributes_table(raw)
    return EfiState(info, descriptors, attributes)


@dataclass(frozen=True, slots=True)
class EfiPlan:
    steps: tuple[Step, ...]
    tables: int
    refusals: tuple[Refusal, ...]
    notes: tuple[str, ...]
    mappings: tuple[RegionMapping, ...]


def _identity_gaps(index: RangeIndex, start: int, end: int) -> int | None:
    """The first page of [start, end) not mapped at its own physical address, or None."""
    page = start
    for r in index.overlapping(start, end):
        if r.start > page or r.start != r.phys:
            break
        page = r.end
        if page >= end:
            return None
    return page if page < end else None


def plan_efi_steps(
    state: EfiState,
    ranges: Sequence[Range],
    areas: Sequence[Protected],
    base: int = EFI_VA_BASE,
    *,
    levels: int = 4,
) -> EfiPlan:
    """Map the runtime regions at ``base`` + PA, then SetVirtualAddressMap (verified after).

    ``levels`` is the kernel's paging (4, or 5 with LA57): what is canonical, which
    tables the maps need.
    """
    refusals: list[Refusal] = []
    notes: list[str] = []
    if state.virtual_mode:
        st = state.info.get("system_table_va", 0)
        refusals.append(
            Refusal(
                "efi-virtual-mode",
                st,
                "SetVirtualAddressMap was already called: UEFI allows it once per boot "
                f"(the system table is at {st:#x} now)",
            )
        )
        return EfiPlan((), 0, tuple(refusals), (), ())
    mappings = plan_virtual_map(state.descriptors, state.attributes, base)
    index = indexed(ranges)  # thousands of overlap queries on a big kernel's map
    if not mappings:
        raise InspectorError("the UEFI memory map has no runtime regions: nothing to move")
    steps: list[Step] = []
    tables: set[tuple[int, int]] = set()  # the maps share tables: count each once
    for m in mappings:
        for piece in m.pieces:
            taken = list(index.overlapping(piece.va, piece.va + piece.size))
            if taken:
                refusals.append(
                    Refusal(
                        "efi-va-in-use",
                        max(taken[0].start, piece.va),
                        f"the new address of runtime region {m.physical_start:#x} is mapped "
                        f"already ({taken[0]})",
                    )
                )
            sub = plan_map(
                index,
                areas,
                piece.va,
                piece.pa,
                piece.size,
                piece.page_size,
                piece.flags,
                levels=levels,
            )
            refusals += sub.refusals
            tables |= tables_needed(
                index, piece.va, piece.size, LEVEL_OF_SIZE[piece.page_size], levels=levels
            )
            steps += [
                Step(
                    s.method,
                    s.params,
                    f"{s.description} ({m.descriptor.type_name} region {m.descriptor.index})",
                    s.writes,
                    s.expect,
                )
                for s in sub.steps
            ]
        if m.descriptor.type in (RUNTIME_CODE, RUNTIME_DATA):
            gap = _identity_gaps(index, m.physical_start, m.physical_start + m.size)
            if gap is not None:
                refusals.append(
                    Refusal(
                        "efi-unmapped",
                        gap,
                        "SetVirtualAddressMap runs in physical mode: the firmware's code and data "
                        f"must be identity-mapped, and {gap:#x} is not (run this before the "
                        "identity map is dropped)",
                    )
                )
    st_va = system_table_va(mappings, state.info["system_table"])
    pairs = [[m.physical_start, m.virtual_start] for m in mappings]
    pages = sum(m.size for m in mappings) // PAGE
    steps.append(
        Step(
            SVAM,
            (pairs,),  # type: ignore[arg-type]
            f"SetVirtualAddressMap: {len(mappings)} runtime regions ({pages} pages) to "
            f"{base:#x} + physical; the system table moves to {st_va:#x}. Cannot be undone: "
            "UEFI allows one call",
        )
    )
    notes.append(
        "after SetVirtualAddressMap the agent calls GetTime and reads a variable through "
        "the new mapping before anything else changes"
    )
    return EfiPlan(tuple(steps), len(tables), tuple(refusals), tuple(notes), tuple(mappings))
