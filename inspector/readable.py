"""Read what can be read: a window of memory up to the first page that cannot be.

A view of 256 bytes at RSP runs past the top of the stack into an unmapped
page; that must not turn the whole view into an error. :func:`read_readable`
reads the window whole when it can, else page by page, and says where
reading stopped: the start of the first page that could not be read (the
window's first byte when that is the one), never an address a stub made up
from a partial answer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import AgentError, FaultError

__all__ = ["PAGE", "Readable", "read_readable"]

#: The smallest page: what is mapped or not comes in pages of at least this size.
PAGE = 0x1000


@dataclass(frozen=True, slots=True)
class Readable:
    """``data`` read at ``address``; when short, ``unreadable`` is the first address that is
    not readable and ``error`` why."""

    address: int
    size: int  # what was asked for
    data: bytes
    unreadable: int | None = None
    error: str | None = None

    @property
    def complete(self) -> bool:
        return self.unreadable is None

    def describe_unreadable(self) -> str:
        """``0xffffffff80183000: not readable (not mapped)``, or empty when all was read."""
        if self.unreadable is None:
            return ""
        return f"{self.unreadable:#x}: not readable ({self.error or 'not mapped'})"


def read_readable(read: Callable[[int, int], bytes], address: int, size: int) -> Readable:
    """``read(address, size)``, or as much of it as can be read from ``address`` on.

    ``read`` is a target's (or session's) reader, raising :class:`FaultError`
    (or the agent's :class:`AgentError`) where memory cannot be read; any
    other error (a lost link) is raised as it is.
    """
    try:
        return Readable(address, size, read(address, size))
    except (FaultError, AgentError):
        pass
    data = bytearray()
    at = address
    end = address + size
    while at < end:
        chunk = min((at | (PAGE - 1)) + 1, end) - at
        try:
            data += read(at, chunk)
        except FaultError as exc:
            return Readable(address, size, bytes(data), at, exc.reason)
        except AgentError as exc:
            return Readable(address, size, bytes(data), at, str(exc))
        at += chunk
    return Readable(address, size, bytes(data))  # readable after all (it changed, or a retry)
