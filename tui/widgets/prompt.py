"""A text box that a key opens (``:``, ``b``, ``/``): never reached by Tab.

While it is closed it cannot take the focus, so Tab never lands in it and
the number keys never type there; a key (or a click) opens it, and Enter or
Esc closes it again. Esc posts :class:`PromptInput.Cancelled` so its owner
puts the focus back on its list.
"""

from __future__ import annotations

from typing import Any

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widgets import Input

__all__ = ["PromptInput"]


class PromptInput(Input):
    BINDINGS = [Binding("escape", "cancel", "Back to the list", show=False)]

    class Cancelled(Message):
        def __init__(self, prompt: PromptInput) -> None:
            super().__init__()
            self.prompt = prompt

        @property
        def control(self) -> PromptInput:
            return self.prompt

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.can_focus = False

    def open(self) -> None:
        """Take the focus now (keys already queued must land here)."""
        self.can_focus = True
        self.app.set_focus(self)

    def on_mouse_down(self, event: events.MouseDown) -> None:
        if not self.can_focus:
            self.open()

    def _on_blur(self, event: events.Blur) -> None:
        super()._on_blur(event)
        self.can_focus = False

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled(self))
