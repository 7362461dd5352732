"""A stock Debian Linux guest under QEMU, for tests and demos (``scripts/fetch-linux.sh``).

The kernel is the current ``linux-image-*-amd64`` package's vmlinuz, with KASLR and
PTI on; its initramfs is busybox with an /init (``scripts/linux-init.sh``) that starts
a few sleeping processes, prints what the kernel says about itself and a ready line,
then runs each line it reads on the serial console as a shell command.
:meth:`LinuxGuest.shell` sends one command and waits for an end marker of its own,
never for a fixed time. Every channel is a unix socket in QEMU's private workdir.
"""

from __future__ import annotations

import os
import re
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import TargetError
from ..targets.qemu import QemuInstance, launch_qemu

__all__ = [
    "GUEST_APPEND",
    "LINUX_DIR",
    "READY_MARKER",
    "GuestFiles",
    "LinuxGuest",
    "ShellResult",
    "guest_files",
    "launch_linux",
]

#: Where ``scripts/fetch-linux.sh`` (``make linux-guest``) keeps the guest's files.
LINUX_DIR = Path(
    os.environ.get("KINSPECT_LINUX_DIR")
    or Path(__file__).resolve().parent.parent.parent / "build" / "linux"
)
#: What /init prints once the sleepers run and the console reads commands.
READY_MARKER = "kinspect-linux: ready"
#: The kernel command line: the console on COM1, PTI forced on (qemu64 is an AMD model,
#: on which the kernel would leave it off), a panic ends QEMU (-no-reboot). KASLR stays on.
GUEST_APPEND = "console=ttyS0 pti=on panic=-1 quiet"


@dataclass(frozen=True, slots=True)
class GuestFiles:
    vmlinuz: Path
    initramfs: Path
    #: the kernel release, ``6.1.0-NN-amd64``
    release: str
    #: ``lib/modules/RELEASE`` of the package: the index files (modules.*)
    modules: Path
    #: the downloaded ``linux-image-*.deb``, for a module a test extracts from it
    deb: Path | None


@dataclass(frozen=True, slots=True)
class ShellResult:
    command: str
    #: what the command wrote (stdout and stderr), "\r\n" made "\n"
    output: str
    status: int


def guest_files(directory: Path | None = None) -> GuestFiles:
    """The fetched guest, or a TargetError that says how to fetch it."""
    base = Path(directory) if directory is not None else LINUX_DIR
    release_file = base / "release"
    vmlinuz = base / "vmlinuz"
    initramfs = base / "initramfs.cpio.gz"
    if not (release_file.is_file() and vmlinuz.is_file() and initramfs.is_file()):
        raise TargetError(
            f"the Linux guest is not in {base}: run `make linux-guest` (scripts/fetch-linux.sh)"
        )
    release = release_file.read_text().strip()
    debs = sorted((base / "debs").glob(f"linux-image-{release}_*.deb"))
    return GuestFiles(
        vmlinuz=vmlinuz,
        initramfs=initramfs,
        release=release,
        modules=base / "modules" / release,
        deb=debs[0] if debs else None,
    )


class LinuxGuest:
    """A booted guest: its QEMU (``qemu``), what /init printed, and a shell on ttyS0."""

    def __init__(self, qemu: QemuInstance, files: GuestFiles, boot_seconds: float) -> None:
        self.qemu = qemu
        self.files = files
        self.boot_seconds = boot_seconds
        self._console: socket.socket | None = None
        boot = qemu.serial_output()
        #: /proc/version as /init printed it at boot
        self.version = _field(boot, "version")
        #: /proc/cmdline as /init printed it at boot
        self.cmdline = _field(boot, "cmdline")
        #: the PIDs of /init's sleepers by where they sleep: "nanosleep" (sleep),
        #: "pipe_read" (cat reading an empty pipe)
        self.pids = {
            m.group(1): int(m.group(2))
            for m in re.finditer(r"kinspect-linux: pid (\S+) (\d+)", boot)
        }

    @property
    def gdb_endpoint(self) -> str:
        return self.qemu.gdb_endpoint

    def monitor(self, command_line: str, *, timeout: float = 60.0) -> str:
        return self.qemu.monitor(command_line, timeout=timeout)

    def shell(self, command: str, *, timeout: float = 60.0, check: bool = True) -> ShellResult:
        """Run one shell command line in the guest and return what it wrote.

        The guest must be running (not stopped by a debugger). The output is the text
        between a begin and an end marker unique to this call; ``check`` raises a
        TargetError when the command's status is not 0.
        """
        if "\n" in command:
            raise TargetError("one command line at a time: no newline in the command")
        console = self._connect()
        token = uuid.uuid4().hex[:12]
        # the quotes keep the markers out of any echo of the line itself
        begin, end = f"KS-BEGIN-{token}", f"KS-END-{token}"
        line = f"echo KS-BEGIN''-{token}; {{ {command} ; }} 2>&1; echo KS-END''-{token}-$?\n"
        self._drain(console)
        console.sendall(line.encode())
        pattern = re.compile(rf"{re.escape(end)}-(\d+)\r?\n".encode())
        received = bytearray()
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(received)
            if match:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.qemu.running():
                tail = bytes(received[-200:]).decode(errors="replace")
                raise TargetError(
                    f"the guest did not finish {command!r} within {timeout:g} s"
                    + (" (QEMU has exited)" if not self.qemu.running() else "")
                    + f"; last output: {tail!r}"
                )
            console.settimeout(min(remaining, 1.0))
            try:
                chunk = console.recv(1 << 16)
            except TimeoutError:
                continue
            if not chunk:
                raise TargetError("the guest's serial console closed")
            received += chunk
        start = received.find(f"{begin}\r\n".encode())
        if start < 0:
            start = received.find(f"{begin}\n".encode())
        body = bytes(received[start + len(begin) : match.start()]) if start >= 0 else b""
        output = body.replace(b"\r\n", b"\n").lstrip(b"\r\n").decode(errors="replace")
        result = ShellResult(command, output, int(match.group(1)))
        if check and result.status != 0:
            raise TargetError(f"{command!r} in the guest exited with status {result.status}")
        return result

    def _connect(self) -> socket.socket:
        if self._console is None:
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            console.settimeout(5.0)
            try:
                console.connect(str(self.qemu.serial_socket))
            except OSError as exc:
                console.close()
                raise TargetError(f"cannot reach the guest's serial console: {exc}") from exc
            self._console = console
        return self._console

    @staticmethod
    def _drain(console: socket.socket) -> None:
        """Drop what the console said since the last command (kernel messages)."""
        console.setblocking(False)
        try:
            while console.recv(1 << 16):
                pass
        except BlockingIOError:
            pass
        finally:
            console.setblocking(True)

    def stop(self) -> None:
        if self._console is not None:
            self._console.close()
            self._console = None
        self.qemu.stop()

    def __enter__(self) -> LinuxGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _field(text: str, name: str) -> str:
    match = re.search(rf"kinspect-linux: {name} (.*?)\r?\n", text)
    return match.group(1) if match else ""


def launch_linux(
    *,
    memory: str = "512M",
    timeout: float = 240.0,
    append: str = "",
    cpu_flags: Sequence[str] = (),
    files: GuestFiles | None = None,
    smp: int = 1,
) -> LinuxGuest:
    """Boot the Debian guest under TCG and wait for /init's ready line.

    ``append`` adds to :data:`GUEST_APPEND` (``"no5lvl"``, ``"nokaslr"``...);
    ``cpu_flags`` add to QEMU's CPU model: ``("+la57",)`` lets the kernel use 5-level
    paging. ``smp``: the number of CPUs (QEMU's ``-smp``). About 20 s on an idle machine;
    ``timeout`` leaves room for a loaded one.
    """
    files = files or guest_files()
    command_line = f"{GUEST_APPEND} {append}".strip()
    started = time.monotonic()
    extra = (*("-initrd", str(files.initramfs)), *("-append", command_line))
    qemu = launch_qemu(
        files.vmlinuz,
        memory=memory,
        timeout=timeout,
        ready_marker=READY_MARKER,
        extra_args=extra,
        cpu_flags=cpu_flags,
        smp=smp,
    )
    return LinuxGuest(qemu, files, time.monotonic() - started)
