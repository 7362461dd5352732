"""Benchmarks boot the demo kernel like the integration tests do, and the Debian guest
like the Linux tests do (one boot, ``linux_guest``); at the end, issue 16's targets are
printed as one table (benchmarks/summary.py)."""

from benchmarks import summary
from tests.integration.conftest import demo_kernel, qemu, session  # noqa: F401
from tests.linux.conftest import linux_guest  # noqa: F401


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.section("issue 16")
    for line in summary.table():
        terminalreporter.write_line(line)
