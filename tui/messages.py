"""The messages the app sends its panes and screens (attributes down, messages up).

A pane's own results (ranges read, a table read, ...) are message classes in
the pane's module; these are the ones every pane and screen may receive.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from textual.message import Message

from .link import RegisterSnapshot

__all__ = ["Stop", "StopSeen"]


@dataclass(frozen=True, slots=True)
class Stop:
    """One stop of the kernel, as the link saw it."""

    number: int  # 1 for the first stop the app shows (attach), then 2, 3, ...
    record: Mapping[str, Any]  # gdb's stop record (reason, frame, bkptno)
    snapshot: RegisterSnapshot | None  # the registers, read before anything else
    seen_at: float  # time.perf_counter() when the link saw it (0.0: not timed)


class StopSeen(Message, bubble=False):
    """The kernel stopped: each pane reads what it shows again (or marks itself stale)."""

    def __init__(self, stop: Stop) -> None:
        super().__init__()
        self.stopped = stop  # not ``stop``: Message.stop() stops a message's bubbling
