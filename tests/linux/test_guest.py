"""The Debian guest itself: it boots with KASLR and PTI, and its shell answers."""

from __future__ import annotations

import re

import pytest

from .conftest import read_guest_file

pytestmark = pytest.mark.integration


def test_guest_says_what_it_runs(linux_guest):
    release = linux_guest.shell("uname -r").output.strip()
    assert release == linux_guest.files.release
    assert linux_guest.version == linux_guest.shell("cat /proc/version").output.strip()
    cmdline = linux_guest.shell("cat /proc/cmdline").output
    assert "nokaslr" not in cmdline and "pti=on" in cmdline


def test_shell_status_and_markers(linux_guest):
    result = linux_guest.shell("echo one; echo two >&2; false", check=False)
    assert result.output == "one\ntwo\n"
    assert result.status == 1


def test_sleepers_sleep_where_init_says(linux_guest):
    sleeping = linux_guest.shell(f"cat /proc/{linux_guest.pids['nanosleep']}/stack").output
    assert re.search(r"^\[<0>\] hrtimer_nanosleep\+", sleeping, re.M)
    reading = linux_guest.shell(f"cat /proc/{linux_guest.pids['pipe_read']}/stack").output
    assert re.search(r"^\[<0>\] pipe_read\+", reading, re.M)


def test_kaslr_moved_the_text(linux_guest):
    text = read_guest_file(linux_guest, "/proc/kallsyms")
    start = int(re.search(r"^([0-9a-f]+) T _text$", text, re.M).group(1), 16)
    assert start != 0xFFFFFFFF81000000 and start >> 31 == 0x1FFFFFFFF
