"""Rich renderables to plain text, for the "export the current view" command."""

from __future__ import annotations

import io

from rich.console import Console, RenderableType

__all__ = ["render_plain"]


def render_plain(renderable: RenderableType, width: int = 120) -> str:
    console = Console(width=width, file=io.StringIO(), color_system=None, record=True)
    console.print(renderable)
    return console.export_text()
