"""Loaded Linux modules from the kernel's ``modules`` list, laid out by its BTF: ``modules``.

What /proc/modules shows (name, size, references, users, state, address) and each module's
layout: its text, read-only, read-only-after-init and writable parts, from
``core_layout``/``init_layout`` (up to 6.3) or ``mem[]`` (6.4 on), whichever BTF describes.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InspectorError
from .btf import Btf

__all__ = [
    "Module",
    "ModuleList",
    "ModulePart",
    "ModuleSymbol",
    "format_modules",
    "read_module_symbols",
    "read_modules",
]

ReadVirtual = Callable[[int, int], bytes]
Lookup = Callable[[str], int | None]

#: the most modules walked: a corrupt list ends the walk
MAX_MODULES = 8192
#: /proc/modules's words for enum module_state (kernel/module/procfs.c)
_STATE_WORDS = {"MODULE_STATE_GOING": "Unloading", "MODULE_STATE_COMING": "Loading"}


@dataclass(frozen=True, slots=True)
class ModulePart:
    """One part of a module's memory: where, how big, with which rights."""

    name: str
    base: int
    size: int
    permissions: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "base": self.base,
            "size": self.size,
            "permissions": self.permissions,
        }


@dataclass(frozen=True, slots=True)
class Module:
    address: int
    name: str
    #: what /proc/modules shows: core and init sizes together, the core base
    size: int
    base: int
    refcount: int
    #: the modules that use this one (its source_list)
    used_by: tuple[str, ...]
    state: str
    parts: tuple[ModulePart, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": self.address,
            "name": self.name,
            "size": self.size,
            "base": self.base,
            "refcount": self.refcount,
            "used_by": list(self.used_by),
            "state": self.state,
            "parts": [part.to_dict() for part in self.parts],
        }


@dataclass(frozen=True, slots=True)
class ModuleList:
    modules: tuple[Module, ...]
    problem: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"modules": [m.to_dict() for m in self.modules], "problem": self.problem}

    def __str__(self) -> str:
        return format_modules(self)


def format_modules(found: ModuleList) -> str:
    lines = []
    for module in found.modules:
        users = ",".join(module.used_by) + "," if module.used_by else "-"
        lines.append(
            f"{module.name} {module.size} {module.refcount} {users} {module.state} {module.base:#x}"
        )
        for part in module.parts:
            if part.size:
                lines.append(
                    f"    {part.name:<16} {part.base:#018x}-{part.base + part.size:#018x} "
                    f"{part.size:>8} {part.permissions}"
                )
    lines.append(f"{len(found.modules)} modules")
    if found.problem:
        lines.append(f"(the list ends early: {found.problem})")
    return "\n".join(lines)


def _u(data: bytes, offset: int, size: int = 8) -> int:
    return int.from_bytes(data[offset : offset + size], "little")


class _Reader:
    def __init__(self, read_virtual: ReadVirtual, btf: Btf) -> None:
        self.read = read_virtual
        self.btf = btf

    def u(self, address: int, struct_name: str, path: str) -> int:
        location = self.btf.field(struct_name, path)
        size = min(self.btf.sizeof(location.type), 8)
        return _u(self.read(address + location.offset, size), 0, size)


def _parts(reader: _Reader, address: int) -> tuple[int, int, tuple[ModulePart, ...]]:
    """(base, the size /proc/modules shows, the parts) from whichever layout BTF has."""
    btf = reader.btf
    parts: list[ModulePart] = []
    if btf.has_field("module", "core_layout"):
        total = 0
        base = reader.u(address, "module", "core_layout.base")
        for layout, prefix in (("core_layout", ""), ("init_layout", "init ")):
            at = reader.u(address, "module", f"{layout}.base")
            size = reader.u(address, "module", f"{layout}.size")
            text = reader.u(address, "module", f"{layout}.text_size")
            ro = reader.u(address, "module", f"{layout}.ro_size")
            after = (
                reader.u(address, "module", f"{layout}.ro_after_init_size")
                if btf.has_field("module", f"{layout}.ro_after_init_size")
                else ro
            )
            total += size
            parts += [
                ModulePart(prefix + "text", at, text, "r-x"),
                ModulePart(prefix + "rodata", at + text, ro - text, "r--"),
                ModulePart(prefix + "ro_after_init", at + ro, after - ro, "r--"),
                ModulePart(prefix + "data", at + after, size - after, "rw-"),
            ]
        return base, total, tuple(parts)
    if not btf.has_field("module", "mem"):
        raise InspectorError("the kernel's struct module has neither core_layout nor mem[]")
    # 6.4 on: mem[] indexed by enum mod_mem_type
    enum = btf.named("mod_mem_type", "enum")
    if enum is None:
        raise InspectorError("the kernel's BTF has no enum mod_mem_type")
    total = 0
    base = 0
    for name, index in enum.values:
        if not name.startswith("MOD_") or name == "MOD_MEM_NUM_TYPES" or index < 0:
            continue
        at = reader.u(address, "module", f"mem[{index}].base")
        size = reader.u(address, "module", f"mem[{index}].size")
        label = name[4:].lower()
        rights = "r-x" if label.endswith("text") else "rw-" if label.endswith("data") else "r--"
        if label == "text":
            base = at
        total += size
        parts.append(ModulePart(label, at, size, rights))
    return base, total, tuple(parts)


def read_modules(read_virtual: ReadVirtual, btf: Btf, lookup: Lookup) -> ModuleList:
    """Every module on the kernel's ``modules`` list, newest first (as /proc/modules)."""
    head = lookup("modules")
    if head is None:
        raise InspectorError("the kernel's symbols have no 'modules' list")
    reader = _Reader(read_virtual, btf)
    list_at = btf.offset("module", "list")
    name = btf.field("module", "name")
    name_size = btf.sizeof(name.type)
    state_names = {}
    state_enum = btf.named("module_state", "enum")
    if state_enum is not None:
        state_names = {value: word for word, value in state_enum.values}
    modules: list[Module] = []
    problem = None
    seen: set[int] = set()
    link = _u(read_virtual(head, 8), 0)
    while link != head:
        address = link - list_at
        if address in seen or len(modules) >= MAX_MODULES:
            problem = f"the list loops back to {address:#x}"
            break
        seen.add(address)
        try:
            module_name = read_virtual(address + name.offset, name_size).split(b"\0")[0]
            state = reader.u(address, "module", "state")
            base, size, parts = _parts(reader, address)
            refcount = reader.u(address, "module", "refcnt.counter") - 1  # MODULE_REF_BASE
            users = _users(reader, address)
            link = reader.u(address, "module", "list.next")
        except InspectorError as exc:
            problem = f"cannot read the module at {address:#x}: {exc}"
            break
        word = _STATE_WORDS.get(state_names.get(state, ""), "Live")
        modules.append(
            Module(
                address,
                module_name.decode("utf-8", "replace"),
                size,
                base,
                refcount,
                users,
                word,
                parts,
            )
        )
    return ModuleList(tuple(modules), problem)


def _users(reader: _Reader, address: int) -> tuple[str, ...]:
    """The names of the modules on ``source_list`` (struct module_use's ``source``)."""
    btf = reader.btf
    if not btf.has_field("module", "source_list"):
        return ()
    head = address + btf.offset("module", "source_list")
    link_at = btf.offset("module_use", "source_list")
    name = btf.field("module", "name")
    names = []
    link = reader.u(address, "module", "source_list.next")
    for _ in range(MAX_MODULES):
        if link == head:
            break
        use = link - link_at
        source = reader.u(use, "module_use", "source")
        names.append(
            reader.read(source + name.offset, btf.sizeof(name.type)).split(b"\0")[0].decode()
        )
        link = reader.u(use, "module_use", "source_list.next")
    return tuple(names)


@dataclass(frozen=True, slots=True)
class ModuleSymbol:
    address: int
    size: int
    name: str
    module: str


#: Elf64_Sym (the ELF specification's layout, not the kernel's): name, info, other,
#: section index, value, size
_ELF64_SYM = struct.Struct("<IBBHQQ")


def read_module_symbols(read_virtual: ReadVirtual, btf: Btf, module: Module) -> list[ModuleSymbol]:
    """A module's own symbols (``mod->kallsyms``: the ELF symbols it keeps), by address;
    the ones /proc/kallsyms lists with ``[module]`` after them."""
    reader = _Reader(read_virtual, btf)
    table = reader.u(module.address, "module", "kallsyms")
    if not table:
        return []
    symtab = reader.u(table, "mod_kallsyms", "symtab")
    count = reader.u(table, "mod_kallsyms", "num_symtab")
    strtab = reader.u(table, "mod_kallsyms", "strtab")
    count = min(count, 1 << 16)
    if not count or not symtab or not strtab:
        return []
    data = read_virtual(symtab, count * _ELF64_SYM.size)
    rows = list(_ELF64_SYM.iter_unpack(data))
    end = max(row[0] for row in rows) + 256
    strings = read_virtual(strtab, end)
    symbols = []
    for name_at, _info, _other, section, value, size in rows:
        if not value or not section or not name_at:
            continue
        name = strings[name_at : strings.find(b"\0", name_at)].decode("utf-8", "replace")
        if name:
            symbols.append(ModuleSymbol(value, size, name, module.name))
    symbols.sort(key=lambda s: s.address)
    return symbols
