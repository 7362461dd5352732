"""The GDB/MI session against a real gdb process (no target needed)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from kinspect.protocols.gdbmi import MiClosed, MiError, MiSession, MiTimeout, mi_quote


@pytest.fixture
def mi():
    session = MiSession()
    try:
        yield session
    finally:
        session.close()


def test_result_matched_by_token_and_console_collected(mi):
    result = mi.command("-gdb-version")
    assert result.message == "done"
    assert "GNU gdb" in result.text


def test_commands_do_not_wait_for_silence(mi):
    """pygdbmi's default write() waits 200 ms of silence; ours returns at once."""
    mi.command("-gdb-set confirm off")
    started = time.monotonic()
    for _ in range(20):
        mi.command("-data-evaluate-expression 1+1")
    assert (time.monotonic() - started) / 20 < 0.1


def test_error_record_raises_mi_error(mi):
    with pytest.raises(MiError) as excinfo:
        mi.command("-data-evaluate-expression no_such_symbol_here")
    assert "symbol" in excinfo.value.message.lower()


def test_timeout_raises_mi_timeout_and_session_recovers(mi):
    with pytest.raises(MiTimeout):
        mi.console("shell sleep 1", timeout=0.2)
    time.sleep(1.2)
    # the late reply to the timed-out command is skipped: tokens differ
    assert mi.command("-data-evaluate-expression 6*7").payload["value"] == "42"


def test_dead_gdb_raises_mi_closed(mi):
    os.kill(mi._process.pid, signal.SIGKILL)
    mi._process.wait(5)
    with pytest.raises(MiClosed):
        mi.command("-gdb-version", timeout=2)


def test_mi_quote_escapes():
    assert mi_quote('a "b" \\ c') == '"a \\"b\\" \\\\ c"'


def test_a_stop_in_the_same_read_as_the_result_is_not_lost(mi, monkeypatch):
    """``^running`` and a quick ``*stopped`` can come in one read: keep the stop."""
    token = mi._next_token
    batch = [
        {"type": "result", "token": token, "message": "running", "payload": None},
        {"type": "notify", "message": "running", "payload": {"thread-id": "all"}},
        {"type": "notify", "message": "stopped", "payload": {"reason": "breakpoint-hit"}},
    ]
    monkeypatch.setattr(mi, "_write", lambda *a, **k: None)
    monkeypatch.setattr(mi, "_read_available", lambda *a: batch)
    assert mi.command("-exec-continue").message == "running"
    assert mi.state == "stopped"
    assert mi.wait_for_stop(0.1) == {"reason": "breakpoint-hit"}


def test_close_without_waiting_leaves_gdb_to_exit_on_its_own():
    """The command line's close (wait_on_close False) asks gdb to exit and returns: the
    session is closed at once, twice is harmless, and gdb is gone soon after."""
    session = MiSession()
    session.command("-gdb-version")
    process = session._process
    session.wait_on_close = False
    session.close()
    session.close()
    assert not session.alive
    with pytest.raises(MiClosed):
        session.command("-gdb-version", timeout=2)
    assert process.wait(timeout=10) == 0
