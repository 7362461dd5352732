"""The one error tree of kinspect.

Every error a user can see derives from :class:`InspectorError` and carries a
message that says what went wrong and what to do about it. Library exceptions
(pygdbmi, sockets, pyelftools) are wrapped at the boundary where they arise.
"""

from __future__ import annotations

__all__ = [
    "AgentError",
    "DecodeError",
    "FaultError",
    "InspectorError",
    "ProtocolError",
    "TargetError",
]


class InspectorError(Exception):
    """Base of every error kinspect reports to a user."""


class TargetError(InspectorError):
    """The target cannot be reached, stopped, or has gone away."""


class FaultError(InspectorError):
    """An address cannot be read or translated (unmapped, non-canonical, past RAM)."""

    def __init__(self, address: int, reason: str) -> None:
        self.address = address
        self.reason = reason
        super().__init__(f"{address:#x}: {reason}")


class DecodeError(InspectorError):
    """Bytes do not decode as the structure they should hold."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"at offset {offset:#x}: {reason}")


class ProtocolError(InspectorError):
    """A peer (GDB/MI, the agent) answered something we cannot understand."""


class AgentError(InspectorError):
    """The in-kernel agent answered a request with an error code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(f"agent error {code}: {message}")
