"""The record of what kinspect wrote into a kernel: one JSON line per memory write or
register change, appended to a file in the user's state directory.

Every face writes through :meth:`Session.write_memory` and :meth:`Session.set_register`,
which append here after the write was read back, so ``kinspect writes`` (and the TUI's
``:writes``) list everything any of them changed: where, the old and the new bytes or
value, when, and on which target.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InspectorError

__all__ = [
    "DEFAULT_LOG",
    "WriteRecord",
    "append_write",
    "format_writes",
    "read_writes",
    "writes_log",
]

#: Where the log goes without ``$KINSPECT_WRITES_LOG`` (under ``$XDG_STATE_HOME`` if set).
DEFAULT_LOG = "kinspect/writes.log"


def writes_log() -> Path:
    """``$KINSPECT_WRITES_LOG``, else ``$XDG_STATE_HOME/kinspect/writes.log``, else
    ``~/.local/state/kinspect/writes.log``."""
    named = os.environ.get("KINSPECT_WRITES_LOG")
    if named:
        return Path(named).expanduser()
    state = os.environ.get("XDG_STATE_HOME") or "~/.local/state"
    return Path(state).expanduser() / DEFAULT_LOG


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One change: ``kind`` is ``"virtual"``, ``"physical"`` or ``"register"``; ``where``
    the address (or the register's name); ``old``/``new`` the bytes (hex) or values."""

    time: float
    target: str
    cpu: int
    kind: str
    where: int | str
    old: str
    new: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "target": self.target,
            "cpu": self.cpu,
            "kind": self.kind,
            "where": self.where,
            "old": self.old,
            "new": self.new,
        }

    @classmethod
    def from_dict(cls, item: Mapping[str, Any]) -> WriteRecord:
        where = item["where"]
        return cls(
            float(item["time"]),
            str(item["target"]),
            int(item.get("cpu", 0)),
            str(item["kind"]),
            where if isinstance(where, (int, str)) else str(where),
            str(item["old"]),
            str(item["new"]),
        )

    def __str__(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        where = f"{self.where:#018x}" if isinstance(self.where, int) else self.where
        return (
            f"{when}  {self.kind:<8} {where}  cpu {self.cpu}  "
            f"old {self.old}  new {self.new}  ({self.target})"
        )


def append_write(record: WriteRecord, path: Path | None = None) -> Path:
    """Append ``record`` to the log (made with its directory when missing); the log's path."""
    path = path or writes_log()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as log:
            log.write(json.dumps(record.to_dict()) + "\n")
    except OSError as exc:
        raise InspectorError(
            f"wrote to the kernel, but cannot record it in {path}: {exc.strerror}"
        ) from None
    return path


def read_writes(path: Path | None = None) -> Iterator[WriteRecord]:
    """The records in the log, oldest first (none when there is no log yet); a line that is
    not a record is skipped (a crash mid-line)."""
    path = path or writes_log()
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise InspectorError(f"cannot read {path}: {exc.strerror}") from None
    for line in lines:
        try:
            yield WriteRecord.from_dict(json.loads(line))
        except (ValueError, KeyError, TypeError):
            continue


def format_writes(records: list[WriteRecord], path: Path) -> str:
    """The log for people: one line per change, the file named first."""
    if not records:
        return f"nothing written yet ({path})"
    return "\n".join([f"{len(records)} writes recorded in {path}:", *map(str, records)])
