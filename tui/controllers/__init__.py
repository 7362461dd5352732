"""Controllers: what a key or a ``:`` command asks, run by the thread that owns the session.

Each module holds one family's controller and its ``COMMANDS`` for the ``:`` line
(:data:`COMMANDS` gathers them for :mod:`kinspect.tui.commands`): stepping
(``next``, ``finish``, ``until``, ``watch``) and editing (``write``, ``set``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from .editing import COMMANDS as EDITING
from .stepping import COMMANDS as STEPPING

if TYPE_CHECKING:
    from ..app import KinspectApp

__all__ = ["COMMANDS"]

#: ``:`` verbs: (run(app, argument), what the argument is when one is needed)
COMMANDS: Mapping[str, tuple[Callable[[KinspectApp, str], None], str | None]] = {
    **STEPPING,
    **EDITING,
}
