"""The views of the main screen, one module each; the app knows them only through PANES.

A new view is a module here (a :class:`~kinspect.tui.panes.base.Pane`) and
one line in :data:`PANES`: the app builds its tabs, number keys, ``:``
commands, the help screen's list of views and the command palette from it.
"""

from __future__ import annotations

from .base import Pane
from .context import ContextPane
from .descriptors import DescriptorsPane
from .disasm import DisasmPane
from .efi import EfiPane
from .fault import FaultPane
from .memory import MemoryPane
from .ranges import RangesPane
from .registers import RegistersPane
from .stack import StackPane
from .tables import TablesPane
from .tasks import TasksPane

__all__ = ["PANES", "Pane"]

#: The tabs, in order.
PANES: tuple[type[Pane], ...] = (
    RegistersPane,
    RangesPane,
    TablesPane,
    MemoryPane,
    StackPane,
    DescriptorsPane,
    EfiPane,
    FaultPane,
    ContextPane,
    DisasmPane,
    TasksPane,
)
