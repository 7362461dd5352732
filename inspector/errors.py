"""The one error tree of kinspect.

Every error a user can see derives from :class:`InspectorError` and carries a
message that says what went wrong and what to do about it. Library exceptions
(pygdbmi, sockets, pyelftools) are wrapped at the boundary where they arise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .targets.base import Capability

__all__ = [
    "AgentError",
    "DecodeError",
    "FaultError",
    "InspectorError",
    "MissingCapability",
    "ProtocolError",
    "TargetError",
    "TargetLost",
]


class InspectorError(Exception):
    """Base of every error kinspect reports to a user."""


class TargetError(InspectorError):
    """The target cannot be reached, stopped, or has gone away."""


class TargetLost(TargetError):
    """The link to the target is dead (the connection closed, the stub or agent went silent):
    nothing more can be read through it, whatever is retried."""


class MissingCapability(TargetError):
    """The target does not offer a feature (physical reads, breakpoints, UEFI calls, ...).

    ``capability`` is the :class:`~inspector.targets.base.Capability` it lacks; the
    message names it and, where there is one, what to attach to have it.
    """

    def __init__(self, capability: Capability, message: str) -> None:
        self.capability = capability
        super().__init__(message)


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
        #: the agent's error code (compare with ``protocols.agent_wire.ErrorCode``)
        self.code = code
        super().__init__(f"agent error {int(code)}: {message}")
