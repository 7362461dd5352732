"""A stock Debian Linux guest under QEMU (TCG, KASLR and PTI on), one boot shared by the modules
that use ``linux_guest`` (kallsyms, ORC, tasks: none changes what the others read, and
test_tasks, which loads two modules, runs last); test_guest boots its own on two CPUs and
test_la57_cli its own with 5-level paging.

The guest's files come from ``make linux-guest`` (scripts/fetch-linux.sh); a test that
finds them missing fails and says so. ``linux_guest`` is running when a test gets it: a
test that attaches a debugger (``linux_session``) stops it, and the session's close lets
it run again, so ask the guest's shell before attaching or after closing.
"""

from __future__ import annotations

import base64
import gzip
import shutil
import time

import pytest

from kinspect.inspector import api
from kinspect.inspector.errors import TargetError
from kinspect.inspector.linux import guest as linux

#: Under TCG the guest is ready in 8-20 s; a machine shared with other boots needs more.
LINUX_BOOT_TIMEOUT = 240.0


def _files() -> linux.GuestFiles:
    if shutil.which("qemu-system-x86_64") is None:
        pytest.fail("qemu-system-x86_64 is not installed: run `make test` (it installs it)")
    try:
        return linux.guest_files()
    except TargetError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def linux_guest():
    """The booted guest (:class:`~kinspect.inspector.linux.guest.LinuxGuest`)."""
    guest = linux.launch_linux(files=_files(), timeout=LINUX_BOOT_TIMEOUT)
    try:
        yield guest
    finally:
        guest.stop()


@pytest.fixture(scope="module")
def linux_guest_la57():
    """The same guest on a CPU with LA57: the kernel runs with 5-level paging."""
    guest = linux.launch_linux(files=_files(), timeout=LINUX_BOOT_TIMEOUT, cpu_flags=("+la57",))
    try:
        yield guest
    finally:
        guest.stop()


def read_guest_file(guest: linux.LinuxGuest, path: str, *, timeout: float = 120.0) -> str:
    """A text file of the guest, gzip'd and base64'd on the way (the serial line is slow:
    /proc/kallsyms, 3.9 MB, takes a minute as text and a few seconds this way)."""
    result = guest.shell(f"gzip -c {path} | base64", timeout=timeout)
    return gzip.decompress(base64.b64decode(result.output)).decode()


@pytest.fixture(scope="session")
def proc_kallsyms(linux_guest) -> str:
    """The guest's /proc/kallsyms, read once through its shell."""
    return read_guest_file(linux_guest, "/proc/kallsyms")


#: Stops tried before a test gives up on finding the guest with the kernel's tables loaded.
KERNEL_STOP_TRIES = 100
#: CR3's bit that selects PTI's user copy of the page tables (PTI_USER_PGTABLE_BIT).
PTI_USER_BIT = 1 << 12


def stopped_in_kernel(session: api.Session) -> api.Session:
    """``session`` stopped with the kernel's own page tables in CR3. Under PTI a stop in
    user space (the shell's last command may still be running) has the user copy loaded
    (CR3 bit 12), which maps only the kernel's entry code: kinspect recognizes no kernel in
    that stop (it tries again at the next). So the guest runs a moment and is stopped
    again until CR3 holds the kernel's copy; a test fails if it never does."""
    for _ in range(KERNEL_STOP_TRIES):
        if not session.control_registers()["CR3"].value & PTI_USER_BIT:
            return session
        session.resume()
        time.sleep(0.02)
        session.stop()
    session.close()
    pytest.fail(f"the guest was in user space at each of {KERNEL_STOP_TRIES} stops")


@pytest.fixture
def linux_session(linux_guest):
    """A session on the guest's gdb stub, stopped in the kernel (:func:`stopped_in_kernel`):
    the guest is stopped until the test ends."""
    s = stopped_in_kernel(api.attach(linux_guest.gdb_endpoint))
    try:
        yield s
    finally:
        s.close()
        s.close()
