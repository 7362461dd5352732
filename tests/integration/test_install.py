"""`pip install .` as a user does it: a wheel built from the repository, installed into
a fresh virtualenv outside it, with its dependencies from the package index.

The installed distribution puts everything under one import namespace
(``kinspect.inspector``, ``kinspect.protocols``, ``kinspect.tui``): no generic
top-level ``inspector``, ``tui`` or ``protocols`` lands in site-packages. The
installed ``kinspect`` then inspects a demo kernel started from the repository,
from a directory where the repository's folders cannot be imported by accident.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.integration.conftest import demo_kernel, qemu  # noqa: F401
from tests.terminal import Tmux

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{args}: {result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The fresh virtualenv's directory; kinspect installed there from a wheel."""
    where = tmp_path_factory.mktemp("install")
    wheels = where / "wheels"
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, ROOT, cwd=where)
    (wheel,) = wheels.glob("kinspect-*.whl")
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    _run(where / "venv/bin/python", "-m", "pip", "install", "-q", wheel, cwd=where)
    return where


def test_the_wheel_installs_one_namespace_and_no_generic_names(installed):
    python = installed / "venv/bin/python"
    code = (
        "import importlib.util, sys, sysconfig, os\n"
        "site = sysconfig.get_paths()['purelib']\n"
        "print(sorted(n for n in os.listdir(site) if not n.startswith(('_', 'pip'))))\n"
        "print([n for n in ('inspector', 'tui', 'protocols') if importlib.util.find_spec(n)])\n"
        "import kinspect.inspector.cli, kinspect.tui.app, kinspect.protocols.agent_wire\n"
        "print(kinspect.inspector.cli.__file__.startswith(site))\n"
    )
    listing, generic, from_site = _run(python, "-c", code, cwd=installed).stdout.splitlines()
    assert "'kinspect'" in listing
    for name in ("inspector", "tui", "protocols"):
        assert f"'{name}'" not in listing
    assert generic == "[]"
    assert from_site == "True"  # the installed copy, not the repository's folders
    # the package data a user needs: the TUI's styles and the agent's wire vectors
    where = "import kinspect.tui, os; print(os.path.dirname(kinspect.tui.__file__))"
    tui = Path(_run(python, "-c", where, cwd=installed).stdout.strip())
    assert (tui / "app.tcss").is_file()


def test_the_installed_cli_reads_the_page_tables(installed, qemu, demo_kernel):  # noqa: F811
    kinspect = installed / "venv/bin/kinspect"
    result = _run(kinspect, "--target", qemu.gdb_endpoint, "pt", cwd=installed, timeout=120)
    assert result.stdout.startswith("CR3=0x")
    assert "0xffffffff80100000" in result.stdout  # the demo kernel's text
    assert " leaves in " in result.stdout
    assert result.stderr == ""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_the_installed_tui_opens_on_the_demo_kernel(installed, qemu, demo_kernel):  # noqa: F811
    command = (
        f"cd {installed} && unset COLUMNS LINES"
        f" && {installed}/venv/bin/kinspect --target {qemu.gdb_endpoint} --elf {demo_kernel}"
        " tui; echo KINSPECT-EXIT=$?; sleep 30"
    )
    tmux = Tmux(command)
    try:
        tmux.wait_for("paging: 4-level", "CR0=", timeout=60)
        tmux.keys("q")
        tmux.wait_for("KINSPECT-EXIT=0")
    finally:
        tmux.close()
