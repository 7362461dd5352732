"""The descriptor tables: ``gdt``, ``idt``, ``tss``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import Command, CommandResult, Context, apply_slide

if TYPE_CHECKING:
    from ..session import Session

__all__ = ["COMMANDS"]


_WORDS = {"gdtr": "GDTR", "idtr": "IDTR", "tr": "TR"}


def _from(session: Session, *registers: str) -> tuple[dict[str, str | None], str]:
    """Where each register came from: for the JSON (``source``) and a text line."""
    sources = session.system_registers_from()
    found = {name: sources.get(name) for name in registers}
    text = "\n".join(f"{_WORDS[name]} from {where}" for name, where in found.items() if where)
    return found, text


def run_gdt(context: Context) -> CommandResult:
    session = context.need_session()
    gdt = session.gdt()
    ldt = session.ldt()
    source, said = _from(session, "gdtr")
    body = {"gdt": gdt.to_dict(), "ldt": ldt.to_dict() if ldt else None, "source": source}
    text = f"{gdt}\n{ldt if ldt else 'LDT: none (LDTR is null)'}\n{said}"
    return context.result(body, text)


def run_idt(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    idt = session.idt()
    source, said = _from(session, "idtr")
    return context.result({"idt": idt.to_dict(), "source": source}, f"{idt}\n{said}")


def run_tss(context: Context) -> CommandResult:
    apply_slide(context)
    session = context.need_session()
    tss = session.tss()
    source, said = _from(session, "gdtr", "tr")
    return context.result({"tss": tss.to_dict(), "source": source}, f"{tss}\n{said}")


COMMANDS = [
    Command("gdt", "the GDT and LDT, loaded selectors checked", run_gdt),
    Command("idt", "the IDT gate by gate, handlers symbolized", run_idt),
    Command("tss", "the TSS: RSP0-2, IST1-7 and where they point", run_tss),
]
