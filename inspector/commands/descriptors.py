"""The descriptor tables: ``gdt``, ``idt``, ``tss``."""

from __future__ import annotations

from . import Command, CommandResult, Context, apply_slide

__all__ = ["COMMANDS"]


def run_gdt(context: Context) -> CommandResult:
    session = context.need_session()
    gdt = session.gdt()
    ldt = session.ldt()
    body = {"gdt": gdt.to_dict(), "ldt": ldt.to_dict() if ldt else None}
    text = f"{gdt}\n{ldt if ldt else 'LDT: none (LDTR is null)'}"
    return context.result(body, text)


def run_idt(context: Context) -> CommandResult:
    apply_slide(context)
    idt = context.need_session().idt()
    return context.result({"idt": idt.to_dict()}, str(idt))


def run_tss(context: Context) -> CommandResult:
    apply_slide(context)
    tss = context.need_session().tss()
    return context.result({"tss": tss.to_dict()}, str(tss))


COMMANDS = [
    Command("gdt", "the GDT and LDT, loaded selectors checked", run_gdt),
    Command("idt", "the IDT gate by gate, handlers symbolized", run_idt),
    Command("tss", "the TSS: RSP0-2, IST1-7 and where they point", run_tss),
]
