"""Boot the real demo kernel in QEMU (TCG) for the integration tests.

Nothing here is skipped for convenience: if QEMU, gdb or the demo kernel are
missing, the tests fail and say what to install or build.
"""

from __future__ import annotations

import shutil
import time

import pytest

from kinspect.inspector import api

KERNEL = api.DEMO_KERNEL


@pytest.fixture(scope="session")
def demo_kernel() -> str:
    for tool in ("qemu-system-x86_64", "gdb"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed: run `make test` (it installs it)")
    if not KERNEL.is_file():
        pytest.fail(f"{KERNEL} is not built: run `make kernel`")
    return str(KERNEL)


@pytest.fixture(scope="module")
def qemu(demo_kernel):
    instance = api.launch_demo()
    try:
        yield instance
    finally:
        instance.stop()


#: OVMF takes 4-6 s to the kernel on an idle machine, far more under load.
UEFI_BOOT_TIMEOUT = 90.0


@pytest.fixture(scope="module")
def uefi_qemu(demo_kernel):
    """The demo kernel booted through OVMF: one boot per module that asks (SetVirtualAddressMap
    works once per boot, so a module that calls it has a firmware of its own). Two CPUs: the
    UEFI path (remap efi-runtime included) runs with an AP online, held by the agent while
    it serves and shot down after every page-table change."""
    if not api.DEMO_UEFI.is_file():
        pytest.fail(f"{api.DEMO_UEFI} is not built: run `make kernel`")
    started = time.monotonic()
    instance = api.launch_demo(uefi=True, memory="256M", timeout=UEFI_BOOT_TIMEOUT, smp=2)
    instance.boot_seconds = time.monotonic() - started
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def session(qemu, demo_kernel):
    s = api.attach(qemu.gdb_endpoint, elf=demo_kernel)
    try:
        yield s
    finally:
        s.close()
