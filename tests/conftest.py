"""How ``make test`` spreads the suite over workers (pytest-xdist, ``--dist loadgroup``).

Tests that share a boot stay on one worker, so each boot happens once: the Linux tests
share the session's guest (tests/linux/conftest.py), and an integration module shares
its module's QEMU. Everything else (the unit tests, the TUI's pilot tests) goes wherever
a worker is free.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        parts = item.path.parts
        if "linux" in parts[-2:-1]:
            item.add_marker(pytest.mark.xdist_group("linux-guest"))
        elif "integration" in parts[-2:-1]:
            item.add_marker(pytest.mark.xdist_group(item.path.stem))
