"""One remap request, from whichever face asked: the one place a remap action becomes a plan.

``kinspect remap ACTION`` (inspector/commands/remap.py) and the TUI's remap
form both build a :class:`RemapRequest` and call :func:`plan_request`, so
the two plan the same change the same way. :func:`parse_request` reads a
form's text fields (numbers, sizes, symbols, flags) with the same parsers
the command line uses.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..efi.runtime import EFI_VA_BASE
from ..errors import InspectorError
from ..numbers import parse_size
from .flags import parse_flags
from .plan import LEVEL_OF_SIZE, Plan

__all__ = ["ACTIONS", "Planner", "RemapRequest", "parse_request", "plan_request"]

#: The actions that make a plan (``undo`` and ``journal`` do not).
ACTIONS = ("map", "unmap", "protect", "move", "higher-half", "efi-runtime")

PAGE = 0x1000


class Planner(Protocol):
    """What :func:`plan_request` asks of a remapper (``Remapper``, ``StubAssistedRemapper``)."""

    def plan_map(
        self, va: int, pa: int, size: int, *, page_size: int = ..., flags: int = ...
    ) -> Plan: ...
    def plan_unmap(self, va: int, size: int, *, page_size: int = ...) -> Plan: ...
    def plan_protect(
        self, va: int, size: int, *, page_size: int = ..., flags: int = ...
    ) -> Plan: ...
    def plan_move(self, va: int, size: int, new_va: int, *, drop_old: bool = ...) -> Plan: ...
    def plan_higher_half(self) -> Plan: ...
    def plan_efi_runtime(self, *, base: int = ..., drop_identity: bool = ...) -> Plan: ...


@dataclass(frozen=True, slots=True)
class RemapRequest:
    """A remap action and its parameters, already parsed (addresses resolved, flags as bits)."""

    action: str
    va: int = 0
    size: int = 0
    pa: int = 0
    page_size: int = PAGE
    flags: int = 0
    new_va: int = 0
    drop_old: bool = False
    base: int = EFI_VA_BASE
    keep_identity: bool = False


def plan_request(remapper: Planner, request: RemapRequest) -> Plan:
    """The plan for ``request``, as ``kinspect remap ACTION --plan`` shows it."""
    r = request
    if r.action == "higher-half":
        return remapper.plan_higher_half()
    if r.action == "efi-runtime":
        return remapper.plan_efi_runtime(base=r.base, drop_identity=not r.keep_identity)
    if r.action == "move":
        return remapper.plan_move(r.va, r.size, r.new_va, drop_old=r.drop_old)
    if r.action not in ACTIONS:
        raise InspectorError(f"unknown remap {r.action!r} (known: {', '.join(ACTIONS)})")
    if r.page_size not in LEVEL_OF_SIZE:
        raise InspectorError(f"{r.action}: page size must be 4k, 2m, 1g (or 512g for unmap)")
    if r.action == "unmap":
        return remapper.plan_unmap(r.va, r.size, page_size=r.page_size)
    if r.action == "map":
        return remapper.plan_map(r.va, r.pa, r.size, page_size=r.page_size, flags=r.flags)
    return remapper.plan_protect(r.va, r.size, page_size=r.page_size, flags=r.flags)


def parse_request(
    action: str,
    fields: Mapping[str, Any],
    resolve: Callable[[str], int],
    *,
    pat: int | None = None,
) -> RemapRequest:
    """A request from a form's fields (text): ``va``, ``size``, ``pa``, ``page_size``, ``flags``,
    ``new_va``, ``drop_old``, ``base``, ``keep_identity``; ``resolve`` turns an address or a
    symbol into a number; ``pat``: IA32_PAT, for caching names in ``flags`` (the power-on
    PAT when None). A missing or bad field is an :class:`InspectorError` naming it. The
    flags field starts from :data:`~.flags.DEFAULT_FLAGS` (``r`` for protect, ``rw`` for map).
    """

    def number(name: str, what: str, parse: Callable[[str], int]) -> int:
        text = str(fields.get(name, "")).strip()
        if not text:
            raise InspectorError(f"{action}: the {what} is missing")
        try:
            return parse(text)
        except InspectorError:
            raise
        except (ValueError, KeyError) as exc:
            raise InspectorError(f"{action}: {what} {text!r}: {exc}") from exc

    if action == "higher-half":
        return RemapRequest(action)
    if action == "efi-runtime":
        base = number("base", "base", parse_size) if fields.get("base") else EFI_VA_BASE
        return RemapRequest(action, base=base, keep_identity=bool(fields.get("keep_identity")))
    if action not in ACTIONS:
        raise InspectorError(f"unknown remap {action!r} (known: {', '.join(ACTIONS)})")
    va = number("va", "virtual address", resolve)
    size = number("size", "size", parse_size)
    if action == "move":
        new_va = number("new_va", "new virtual address", resolve)
        return RemapRequest(
            action, va=va, size=size, new_va=new_va, drop_old=bool(fields.get("drop_old"))
        )
    page_size = number("page_size", "page size", parse_size)
    if page_size not in LEVEL_OF_SIZE:
        raise InspectorError(f"{action}: page size must be 4k, 2m, 1g (or 512g for unmap)")
    if action == "unmap":
        return RemapRequest(action, va=va, size=size, page_size=page_size)
    flags = number("flags", "flags", lambda text: parse_flags(text, pat=pat))
    pa = number("pa", "physical address", parse_size) if action == "map" else 0
    return RemapRequest(action, va=va, size=size, pa=pa, page_size=page_size, flags=flags)
