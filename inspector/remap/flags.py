"""The flags of ``remap map`` and ``remap protect``, named like mprotect: one parser, one default.

``kinspect remap map|protect --flags`` and the TUI's remap form both read
their text with :func:`parse_flags` and start from :data:`DEFAULT_FLAGS`, so
the two faces cannot disagree. Words are separated by commas, ``+`` or
spaces:

- the access: ``r``, ``rw``, ``rx``, ``rwx`` (letters of ``rwx``, each once;
  words add up, so ``rw,x`` is ``rwx``). A present x86 page is always
  readable, so ``w`` and ``x`` alone mean ``rw`` and ``rx``. A page is
  executable **only** when ``x`` is named: every other page gets NX.
  ``ro`` is ``r``.
- ``user`` (``us``, ``u``): U/S set, user mode may reach it; ``global``
  (``g``): G set, kept in the TLB across CR3 loads.
- caching: ``wb``, ``wt``, ``uc-``, ``uc``, ``wc``, ``wp``: the first of PAT
  entries 0-3 that holds that type, selected by PWT and PCD (the agent sets
  those two bits, not the PAT bit). Without the IA32_PAT value the
  power-on PAT is assumed (0 WB, 1 WT, 2 UC-, 3 UC; no WC or WP).
- the SDM's bit names, as before: ``RW`` (``rw``), ``US``, ``G``, ``PWT``,
  ``PCD``, and ``NX`` (the default; naming it with ``x`` is an error).

No access named at all (``g``, ``pcd``) is ``r``; an empty text is an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import InspectorError

__all__ = [
    "CACHE_TYPES",
    "DEFAULT_FLAGS",
    "DEFAULT_PAT",
    "FLAGS_HELP",
    "PTE_FLAG_BITS",
    "FlagsError",
    "Permission",
    "escalation",
    "format_flags",
    "parse_flags",
    "permission_of",
    "wants_pat",
]

#: Leaf entry bits a map or protect may set (P is always set): the SDM's names.
PTE_FLAG_BITS = {
    "RW": 1 << 1,
    "US": 1 << 2,
    "PWT": 1 << 3,
    "PCD": 1 << 4,
    "G": 1 << 8,
    "NX": 1 << 63,
}
RW, US, PWT, PCD, G, NX = (PTE_FLAG_BITS[n] for n in ("RW", "US", "PWT", "PCD", "G", "NX"))

#: The text each form starts from: ``map`` maps data (read/write, never executable),
#: ``protect`` takes write away (read-only, not executable).
DEFAULT_FLAGS = {"map": "rw", "protect": "r"}
FLAGS_HELP = (
    "r, rw, rx or rwx (executable only with x), user, global, caching wb/wt/uc-/uc/wc; "
    "SDM names RW,US,G,PWT,PCD,NX too"
)

#: IA32_PAT memory types (SDM Vol. 3, "PAT"): the byte value of each name.
CACHE_TYPES = {"uc": 0, "wc": 1, "wt": 4, "wp": 5, "wb": 6, "uc-": 7}
#: IA32_PAT at power-on and reset: 0 WB, 1 WT, 2 UC-, 3 UC (and again for 4-7).
DEFAULT_PAT = 0x0007040600070406

_USER = {"USER", "US", "U"}
_GLOBAL = {"GLOBAL", "G"}
_CACHE_ALIASES = {"UCMINUS": "uc-", "UC_MINUS": "uc-"}


class FlagsError(InspectorError, ValueError):
    """The flags text names something that is not a flag (one line, naming the word)."""


@dataclass(frozen=True, slots=True)
class Permission:
    """What a leaf lets through: its effective write and execute."""

    writable: bool
    executable: bool

    def __str__(self) -> str:
        return "r" + ("w" if self.writable else "-") + ("x" if self.executable else "-")


def permission_of(flags: int) -> Permission:
    """The access that PTE bits ``flags`` give (RW set: writable; NX clear: executable)."""
    return Permission(bool(flags & RW), not flags & NX)


def _cache_bits(kind: str, pat: int) -> int:
    """PWT/PCD selecting the first PAT entry (0-3) that holds memory type ``kind``."""
    want = CACHE_TYPES[kind]
    for index in range(4):
        if (pat >> (8 * index)) & 0x7 == want:
            return (PWT if index & 1 else 0) | (PCD if index & 2 else 0)
    entries = ", ".join(_type_name((pat >> (8 * i)) & 0x7) for i in range(4))
    raise FlagsError(
        f"no PAT entry 0-3 holds {kind.upper()} (IA32_PAT {pat:#018x}: {entries}); the agent "
        "selects a type with PWT and PCD only"
    )


def _type_name(value: int) -> str:
    for name, v in CACHE_TYPES.items():
        if v == value:
            return name.upper()
    return f"reserved {value}"


def parse_flags(text: str, *, pat: int | None = None) -> int:
    """PTE bits for ``text`` (module docstring); ``pat``: IA32_PAT, for caching names.

    Raises :class:`FlagsError` (an InspectorError and a ValueError) naming a
    word it does not know, an empty text, or ``x`` with ``nx``.
    """
    words = [w for w in text.replace("+", ",").replace(" ", ",").split(",") if w.strip()]
    if not words:
        raise FlagsError("no flags named: give the access (r, rw, rx or rwx), e.g. --flags rw")
    access: set[str] = set()
    bits = 0
    nx_named = False
    cache: str | None = None
    for raw in words:
        word = raw.strip()
        upper = word.upper()
        lower = _CACHE_ALIASES.get(upper, word.lower())
        if lower == "ro":
            access.add("r")
        elif lower and set(lower) <= set("rwx") and len(set(lower)) == len(lower):
            access.update(lower)
        elif upper == "NX":
            nx_named = True
        elif upper in _USER:
            bits |= US
        elif upper in _GLOBAL:
            bits |= G
        elif upper in ("PWT", "PCD"):
            bits |= PTE_FLAG_BITS[upper]
        elif lower in CACHE_TYPES:
            if cache is not None and cache != lower:
                raise FlagsError(f"two caching types named: {cache} and {lower}")
            cache = lower
        else:
            raise FlagsError(f"unknown flag {word!r} (known: {FLAGS_HELP})")
    if "x" in access and nx_named:
        raise FlagsError("both x (executable) and nx named: name one")
    if cache is not None:
        if bits & (PWT | PCD):
            raise FlagsError(f"a caching type ({cache}) and PWT/PCD both named: name one")
        bits |= _cache_bits(cache, DEFAULT_PAT if pat is None else pat)
    if "w" in access:
        bits |= RW
    if "x" not in access:
        bits |= NX
    return bits


def wants_pat(text: str) -> bool:
    """Whether ``text`` names a caching type (so IA32_PAT is worth reading first)."""
    words = text.replace("+", ",").replace(" ", ",").split(",")
    return any(
        _CACHE_ALIASES.get(w.strip().upper(), w.strip().lower()) in CACHE_TYPES for w in words
    )


def format_flags(value: int) -> str:
    """``P RW NX`` (the SDM's names of the bits set; unknown bits as one hex number)."""
    names = ["P"] + [n for n, bit in PTE_FLAG_BITS.items() if value & bit]
    unknown = value & ~(sum(PTE_FLAG_BITS.values()) | 1)
    return " ".join(names) + (f" |{unknown:#x}" if unknown else "")


def escalation(flags: int, before: Iterable[Permission | None]) -> list[str]:
    """What a change to ``flags`` adds, for the plan to say and the faces to ask about again.

    ``before``: the access of each page (or range) now, None where nothing is
    mapped. A new mapping is "adding execute" when executable; it is not
    "adding write" (data is mapped writable by default), but it is W+X when both.
    """
    after = permission_of(flags)
    was = list(before)
    out = []
    if after.writable and after.executable:
        out.append("makes the pages writable AND executable (W+X)")
    if after.writable and any(p is not None and not p.writable for p in was):
        out.append("adds write to pages that were read-only")
    if after.executable and any(p is None or not p.executable for p in was):
        out.append("adds execute to pages that were not executable (or not mapped)")
    return out
