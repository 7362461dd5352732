"""Run control through the Target interface: a target that stops only when asked (the
agent) never reports a stop, and says it cannot step or break; a stub's records pass."""

import pytest

from kinspect.inspector.errors import TargetError
from kinspect.inspector.session import Session
from kinspect.inspector.targets.base import SystemRegisters, Target


class Quiet(Target):
    """Runs until someone stops it, like the agent."""

    description = "quiet target"

    def __init__(self):
        self._state = "running"

    def read_virtual(self, address, size):
        return bytes(size)

    def read_physical(self, address, size):
        return bytes(size)

    def registers(self):
        return {"rip": 0x1000}

    def system_registers(self):
        return SystemRegisters(None, None, None, None)

    @property
    def state(self):
        return self._state

    def stop(self):
        self._state = "stopped"

    def resume(self):
        self._state = "running"

    def close(self, *, resume=True):
        pass


class Stub(Quiet):
    """Reports its stops, like a gdb stub."""

    def wait_for_stop(self, timeout):
        self._state = "stopped"
        self.last_stop = {"reason": "breakpoint-hit", "bkptno": "1"}
        return self.last_stop


def test_a_target_that_stops_only_when_asked():
    session = Session(Quiet())
    assert session.wait_for_stop(0.01) is None
    assert session.last_stop == {}
    with pytest.raises(TargetError, match="quiet target cannot single-step"):
        session.step_instruction()
    with pytest.raises(TargetError, match="quiet target cannot set breakpoints"):
        session.break_insert("0x1000")


def test_a_stub_reports_its_stops():
    session = Session(Stub())
    assert session.wait_for_stop(0.01) == {"reason": "breakpoint-hit", "bkptno": "1"}
    assert session.last_stop["reason"] == "breakpoint-hit"
