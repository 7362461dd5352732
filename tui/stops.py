"""What a stop means, in words for the status line: pure functions, no Textual."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["cpu_mode", "describe_stop"]


def describe_stop(record: Mapping[str, Any], symbolize: Callable[[int], str | None]) -> str:
    """Why the target stopped, in a few words: ``breakpoint 1 at demo_level3``."""
    reason = str(record.get("reason", "") or "")
    frame = record.get("frame") if isinstance(record.get("frame"), Mapping) else {}
    where = ""
    addr = frame.get("addr") if frame else None
    if isinstance(addr, str):
        try:
            where = symbolize(int(addr, 16)) or addr
        except ValueError:
            where = addr
    watchpoint = record.get("wpt") or record.get("hw-rwpt") or record.get("hw-awpt")
    if reason == "breakpoint-hit" and record.get("disp") == "del":
        text = "reached"  # until's temporary breakpoint
    elif reason == "breakpoint-hit":
        text = f"breakpoint {record.get('bkptno', '?')}"
    elif reason.endswith("watchpoint-trigger") and isinstance(watchpoint, Mapping):
        kind = {"read": "read ", "access": "access "}.get(reason.split("-")[0], "")
        text = f"{kind}watchpoint {watchpoint.get('number', '?')}"
    elif reason == "function-finished":
        text = "finished"
    elif reason == "signal-received":
        signal = record.get("signal-name", "signal")
        text = "interrupted" if signal in ("SIGINT", "0") else f"signal {signal}"
    elif reason == "end-stepping-range":
        text = "stepped"
    elif reason:
        text = reason.replace("-", " ")
    else:
        text = "stopped"
    return f"{text} at {where}" if where else text


def cpu_mode(values: Mapping[str, int], control: Any) -> str:
    """``64-bit CPL0 | 4-level paging [...]``: the CPU mode the registers imply, then paging."""
    efer = control.registers["EFER"]
    cr0 = control.registers["CR0"]
    if efer.is_set("LMA"):
        mode = "64-bit"
    elif cr0.is_set("PE"):
        mode = "protected"
    else:
        mode = "real"
    if "cs" in values and cr0.is_set("PE"):
        mode += f" CPL{values['cs'] & 3}"
    return f"{mode} | {control.paging}"
