"""Start a kernel in QEMU with every channel on a unix socket of our own.

The gdb stub, QMP and the serial port each listen on a unix socket in a
private temporary directory, so nothing listens on the network and two
launches never collide (QEMU's ``-s`` would bind every interface on a fixed
port). The serial port also logs to a file, so the kernel's early output is
kept even before anyone connects. QEMU is stopped by its PID, politely first.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kinspect.protocols.qmp import QmpClient, QmpError

from ..errors import TargetError

__all__ = ["QemuConfig", "QemuInstance", "launch_qemu"]

READY_MARKER = "kinspect-demo: ready"

#: The CPU model of every launch: 1 GiB pages; ``cpu_flags`` add to it (``+la57``).
DEFAULT_CPU = "qemu64,+pdpe1gb"

#: Debian's ``ovmf`` package: the firmware (read-only) and the variable store
#: each UEFI launch copies into its workdir.
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")


@dataclass(slots=True)
class QemuConfig:
    """What to boot and how."""

    #: None only with ``uefi``: an empty ESP, so OVMF finds no loader and idles in its
    #: UEFI shell, on its own page tables (boot services still running)
    kernel: Path | None
    memory: str = "128M"
    cpu: str = DEFAULT_CPU
    accel: str = "tcg"
    extra_args: Sequence[str] = field(default_factory=tuple)
    qemu: str = "qemu-system-x86_64"
    stopped: bool = False  # start with -S (CPU halted before the first instruction)
    #: COM1 on "unix" (a socket in the workdir), "tcp" (127.0.0.1, a free port,
    #: TCP_NODELAY) or "pty"; logged to serial.log in every case
    serial: str = "unix"
    #: boot ``kernel`` as a UEFI application (BOOTX64.EFI) through OVMF on q35,
    #: from a FAT drive QEMU makes of a directory in the workdir, instead of PVH
    uefi: bool = False
    #: CPUs (QEMU -smp); the demo kernel brings up every one of them
    smp: int = 1
    ovmf_code: Path = OVMF_CODE
    ovmf_vars: Path = OVMF_VARS
    #: log every exception and interrupt QEMU delivers (``-d int``) to ``qemu-int.log``:
    #: ~270 KB/s on the idle demo kernel (its 100 Hz timer and the handled #PF after
    #: each tick, each with a register dump), so only when asked; a triple fault and a
    #: CPU reset (``-d cpu_reset``) are logged there always
    exception_log: bool = False


class QemuInstance:
    """A QEMU process we started, with the paths of its sockets."""

    def __init__(self, config: QemuConfig) -> None:
        self.config = config
        self.workdir = Path(tempfile.mkdtemp(prefix="kinspect-qemu-"))
        self.gdb_socket = self.workdir / "gdb.sock"
        self.qmp_socket = self.workdir / "qmp.sock"
        self.serial_socket = self.workdir / "serial.sock"
        self.serial_log = self.workdir / "serial.log"
        self.serial_port: int | None = None
        self.stderr_log = self.workdir / "qemu.stderr"
        #: QEMU's own log (``-D``): resets and triple faults, and with ``exception_log``
        #: every delivered exception (``check_exception``, ``v=0e e=0002 ...``)
        self.int_log = self.workdir / "qemu-int.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def gdb_endpoint(self) -> str:
        """What ``target remote`` takes to reach this QEMU's gdb stub."""
        return str(self.gdb_socket)

    @property
    def agent_endpoint(self) -> str:
        """What ``--agent`` takes to reach the kernel's COM1 (the agent's line)."""
        serial = self.config.serial
        if serial == "tcp":
            return f"tcp:127.0.0.1:{self.serial_port}"
        if serial == "pty":
            with self.qmp() as client:
                for chardev in client.execute("query-chardev"):
                    if chardev.get("label") == "serial0":
                        return str(chardev["filename"])  # "pty:/dev/pts/N"
            raise TargetError("QEMU did not report the pty of serial0")
        return f"unix:{self.serial_socket}"

    def _serial_chardev(self) -> str:
        serial = self.config.serial
        log = f"logfile={self.serial_log}"
        if serial == "unix":
            return f"socket,id=serial0,path={self.serial_socket},server=on,wait=off,{log}"
        if serial == "tcp":
            if self.serial_port is None:
                with socket.socket() as probe:  # a free port on loopback only
                    probe.bind(("127.0.0.1", 0))
                    self.serial_port = probe.getsockname()[1]
            return (
                f"socket,id=serial0,host=127.0.0.1,port={self.serial_port},server=on,"
                f"wait=off,nodelay=on,{log}"
            )
        if serial == "pty":
            return f"pty,id=serial0,{log}"
        raise TargetError(f"unknown serial kind {serial!r} (unix, tcp or pty)")

    def command_line(self) -> list[str]:
        config = self.config
        binary = shutil.which(config.qemu)
        if binary is None:
            raise TargetError(
                f"{config.qemu} was not found; install it (apt-get install qemu-system-x86)"
            )
        # each option with its value, as a QEMU command line reads
        args = [
            binary,
            *("-accel", config.accel),
            *("-cpu", config.cpu),
            *("-m", config.memory),
            *("-smp", str(config.smp)),
            *(self._uefi_args() if config.uefi else ("-kernel", str(config.kernel))),
            *("-display", "none"),
            "-no-reboot",
            *("-action", "reboot=shutdown,shutdown=pause"),  # a triple fault pauses, state kept
            *("-d", "int,cpu_reset" if config.exception_log else "cpu_reset"),
            *("-D", str(self.int_log)),
            "-nodefaults",
            *("-monitor", "none"),
            *("-chardev", self._serial_chardev()),
            *("-serial", "chardev:serial0"),
            *("-qmp", f"unix:{self.qmp_socket},server=on,wait=off"),
            *("-gdb", f"unix:{self.gdb_socket},server=on,wait=off"),
        ]
        if config.stopped:
            args.append("-S")
        args.extend(config.extra_args)
        return args

    def _uefi_args(self) -> list[str]:
        """q35 with OVMF in pflash (unit 1 a private copy of VARS) and the app on a FAT drive."""
        config = self.config
        for path, package in ((config.ovmf_code, "ovmf"), (config.ovmf_vars, "ovmf")):
            if not Path(path).is_file():
                raise TargetError(f"{path} is missing; install it (apt-get install {package})")
        vars_copy = self.workdir / "OVMF_VARS.fd"
        shutil.copyfile(config.ovmf_vars, vars_copy)
        boot = self.workdir / "esp" / "EFI" / "BOOT"
        boot.mkdir(parents=True, exist_ok=True)
        if config.kernel is not None:
            shutil.copyfile(config.kernel, boot / "BOOTX64.EFI")
        return [
            *("-machine", "q35"),
            *("-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={config.ovmf_code}"),
            *("-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"),
            *("-drive", f"file=fat:rw:{self.workdir / 'esp'},format=raw"),
        ]

    def start(self, *, timeout: float = 10.0) -> None:
        """Start QEMU and wait until its QMP socket answers."""
        if self.config.kernel is None:
            if not self.config.uefi:
                raise TargetError("no kernel to boot: only a UEFI launch may go without one")
        elif not Path(self.config.kernel).is_file():
            raise TargetError(f"kernel image {self.config.kernel} does not exist (run make kernel)")
        args = self.command_line()
        with open(self.stderr_log, "wb") as stderr:
            self.process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive()
            if self.qmp_socket.exists() and self.gdb_socket.exists():
                try:
                    with QmpClient(
                        str(self.qmp_socket), timeout=max(0.5, deadline - time.monotonic())
                    ):
                        return
                except QmpError:
                    pass
            if time.monotonic() > deadline:
                self.stop()
                raise TargetError(f"QEMU did not become ready within {timeout:g} s")
            time.sleep(0.02)

    def serial_output(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_serial(self, marker: str = READY_MARKER, *, timeout: float = 20.0) -> str:
        """Wait until the kernel prints ``marker`` on its serial port."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_output()
            if marker in text:
                return text
            self._check_alive()
            if time.monotonic() > deadline:
                tail = text.strip().splitlines()[-3:]
                raise TargetError(
                    f"the kernel did not print {marker!r} within {timeout:g} s"
                    + (
                        f" (last serial output: {' | '.join(tail)})"
                        if tail
                        else " (no serial output)"
                    )
                )
            time.sleep(0.02)

    def qmp(self, *, timeout: float = 5.0) -> QmpClient:
        try:
            return QmpClient(str(self.qmp_socket), timeout=timeout)
        except QmpError as exc:
            raise TargetError(str(exc)) from exc

    def monitor(self, command_line: str, *, timeout: float = 60.0) -> str:
        """Run a human monitor command through QMP (independent of gdb)."""
        try:
            with QmpClient(str(self.qmp_socket), timeout=timeout) as client:
                return client.human_monitor_command(command_line, timeout=timeout)
        except QmpError as exc:
            raise TargetError(str(exc)) from exc

    def int_log_text(self) -> str:
        """QEMU's log so far (``-D``): see :mod:`.qemu_log` to read it."""
        try:
            return self.int_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def status(self) -> dict[str, object]:
        """QMP ``query-status``: ``{"status": "running"|"paused"|"shutdown"|..., ...}``.

        A triple fault leaves ``"shutdown"`` (``-action shutdown=pause``): stopped, not
        reset, the gdb stub and the monitor still answer.
        """
        with self.qmp() as client:
            return dict(client.execute("query-status"))

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop our QEMU by PID: SIGTERM, then SIGKILL. Removes the sockets."""
        process = self.process
        if process is not None and process.poll() is None:
            try:
                os.kill(process.pid, signal.SIGTERM)
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(process.pid, signal.SIGKILL)
                process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> QemuInstance:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_alive(self) -> None:
        if self.process is None:
            raise TargetError("QEMU has not been started")
        status = self.process.poll()
        if status is not None:
            try:
                detail = self.stderr_log.read_text(errors="replace").strip().splitlines()
            except FileNotFoundError:
                detail = []
            last = detail[-1] if detail else "no message"
            raise TargetError(f"QEMU exited with status {status}: {last}")


def launch_qemu(
    kernel: Path | str | None,
    *,
    memory: str = "128M",
    wait_ready: bool = True,
    ready_marker: str = READY_MARKER,
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
    serial: str = "unix",
    uefi: bool = False,
    cpu_flags: Sequence[str] = (),
    exception_log: bool = False,
    stopped: bool = False,
    smp: int = 1,
) -> QemuInstance:
    """Boot ``kernel`` (a UEFI application if ``uefi``) and wait for its ready line on serial.

    With ``uefi`` and no ``kernel`` the ESP is empty: OVMF ends in its UEFI shell
    (``ready_marker="Shell> "``), still on the firmware's own page tables.
    ``cpu_flags`` are added to ``DEFAULT_CPU``: ``("+la57",)`` gives the CPU 5-level paging.
    ``exception_log`` logs every delivered exception to ``instance.int_log`` (costly: see
    :class:`QemuConfig`); ``stopped`` starts the CPU halted (``-S``) and waits for no line.
    ``smp`` is the number of CPUs (the demo kernel brings up all of them).
    """
    instance = QemuInstance(
        QemuConfig(
            None if kernel is None else Path(kernel),
            memory=memory,
            extra_args=tuple(extra_args),
            serial=serial,
            uefi=uefi,
            cpu=",".join((DEFAULT_CPU, *cpu_flags)),
            exception_log=exception_log,
            stopped=stopped,
            smp=smp,
        )
    )
    instance.start(timeout=min(timeout, 10.0))
    if wait_ready and not stopped:
        try:
            instance.wait_for_serial(ready_marker, timeout=timeout)
        except TargetError:
            instance.stop()
            raise
    return instance
