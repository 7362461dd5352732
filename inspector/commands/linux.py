"""Linux as it ships: ``kernel`` says what kinspect recognized, with no files."""

from __future__ import annotations

from . import Command, CommandResult, Context

__all__ = ["COMMANDS"]


def run_kernel(context: Context) -> CommandResult:
    """The banner, _text and the KASLR slide, the layout bases, the paging, the symbols."""
    session = context.need_session()
    kernel = session.kernel()
    physical = session.physical_source
    body = {"kernel": kernel.to_dict(), "physical_from": physical}
    text = f"{kernel}\nphysical memory  {physical or 'not readable yet'}"
    return context.result(body, text)


COMMANDS = [
    Command(
        "kernel",
        "the Linux kernel recognized: banner, KASLR slide, page_offset_base, vmalloc_base, "
        "vmemmap_base, paging, where the symbols come from",
        run_kernel,
    ),
]
