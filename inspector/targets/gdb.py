"""A target behind any GDB remote stub, driven through GDB/MI.

With QEMU's stub, physical memory is read by switching the stub into physical
mode (``Qqemu.PhyMemMode:1``, a setting global to the stub, so it is switched
back before any virtual read) and GDTR/IDTR/TR come from the QEMU monitor.
Other stubs (kgdb, OpenOCD, probe servers) have neither: physical memory is
then read through a direct map of physical memory, at a base the user gives
or found from the kernel's symbols.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from kinspect.protocols.gdbmi import (
    MiClosed,
    MiError,
    MiResult,
    MiSession,
    MiTimeout,
    console_command,
    mi_quote,
)

from ..errors import (
    FaultError,
    InspectorError,
    MissingCapability,
    ProtocolError,
    TargetError,
    TargetLost,
)
from ..x86.control import GENERAL_REGISTERS, SEGMENT_REGISTERS
from .base import (
    Breakpoint,
    Capability,
    CpuThread,
    StopRecord,
    SystemRegisters,
    Target,
    check_watch,
)
from .qemu_dump import MonitorDumps, plan_spans
from .qemu_text import decode_memory_size_summary, system_registers_from_info

__all__ = [
    "DIRECT_MAP_SYMBOLS",
    "WATCH_TYPES",
    "GdbTarget",
    "decode_break_table",
    "decode_cpu_threads",
    "decode_memory_blocks",
    "join_blocks",
    "readable_prefix",
    "slice_blocks",
    "trusted_blocks",
]

#: The C type gdb watches for each length a debug register covers (DR7's LEN: 1, 2, 4, 8).
WATCH_TYPES = {1: "unsigned char", 2: "unsigned short", 4: "unsigned int", 8: "unsigned long"}


#: Variables that hold the base of a kernel's direct map of physical memory.
DIRECT_MAP_SYMBOLS = ("direct_map_base", "page_offset_base")

_REGISTER_NAMES = (
    *GENERAL_REGISTERS,
    "rip",
    "eflags",
    *(name.lower() for name in SEGMENT_REGISTERS),
    *("fs_base", "gs_base", "k_gs_base"),
    *("cr0", "cr2", "cr3", "cr4", "cr8", "efer"),
)

CONNECT_TIMEOUT = 10.0
#: How long the look before connecting waits for a stub to answer (in use: it never does).
QUICK_LOOK = 0.5
#: Whether the stub is QEMU's (it answers with its physical-memory mode, 0 or 1).
_QEMU_QUESTION = "maintenance packet qqemu.PhyMemMode"
#: The first CPU's QOM path on QEMU's pc and q35 machines (query-cpus-fast names it so).
QEMU_CPU_PATH = "/machine/unattached/device[0]"
#: The CPU's physical address width (MAXPHYADDR), from QEMU's own CPU object.
_PHYS_BITS_QUESTION = f"monitor qom-get {QEMU_CPU_PATH} phys-bits"
#: The most one ``-data-read-memory-bytes`` asks for (gdb cuts it into packets).
READ_CHUNK = 64 * 1024
#: The smallest packet a refused read halves gdb's packets down to.
MIN_PACKET = 64


class GdbTarget(Target):
    """A kernel behind a GDB remote stub (QEMU's, kgdb, OpenOCD, ...)."""

    def __init__(
        self,
        endpoint: str,
        *,
        elf: str | None = None,
        phys_base: int | None = None,
        physical: str = "auto",
        timeout: float = 10.0,
        gdb: str | MiSession = "gdb",
        dumps: bool = True,
    ) -> None:
        """``physical`` says how physical memory is read: ``"qemu"`` (the
        stub's physical mode), ``"direct-map"`` (through the kernel's direct
        map) or ``"auto"`` (QEMU's mode when the stub has it). ``gdb``: the
        gdb to run, or one already started (the command line starts it first,
        so that gdb's own start overlaps the imports of the rest). ``dumps``: physical
        reads in bulk through QEMU's monitor (:mod:`.qemu_dump`) when it can; False
        reads through the stub's packets only."""
        if physical not in ("auto", "qemu", "direct-map"):
            raise TargetError(f"unknown physical-memory method {physical!r}")
        self.physical = physical
        self.endpoint = endpoint
        self.elf = elf
        self.timeout = timeout
        self._phys_base = phys_base
        self._phys_base_source = "--phys-base" if phys_base is not None else ""
        self._phys_mode = False
        self._register_numbers: dict[str, int] | None = None
        self._ram_size: int | None = None
        self._maxphyaddr: int | None = None  # 0: asked, not known
        self._closed = False
        self._packet_size: int | None = None  # gdb's, asked when first needed
        #: QEMU's monitor as a bulk reader of physical memory (made on first use; False
        #: once it failed or disagreed with the stub: not asked again)
        self._dumps: MonitorDumps | bool | None = None if dumps else False
        #: CPU index -> gdb thread id (QEMU's stub shows one thread per vCPU)
        self._cpu_threads: dict[int, str] = {}
        self._cpu = 0
        self._followed: object = None
        #: the temporary breakpoints ``until`` set: gone at the next stop, whoever stopped
        self._temporary: set[int] = set()
        #: where a piped stub command's stderr goes (see _quiet_pipe); None: no pipe
        self._pipe_log: str | None = None
        self._gdb_endpoint = self._endpoint_for_gdb(endpoint)
        if self._gdb_endpoint.startswith("|"):
            self._gdb_endpoint = self._quiet_pipe(self._gdb_endpoint)
        else:
            self._look_first(self._gdb_endpoint)  # before gdb starts: "in use" within a second
        try:
            self._mi = gdb if isinstance(gdb, MiSession) else MiSession(gdb)
        except MiClosed as exc:
            self._drop_pipe_log()
            raise TargetError(str(exc)) from exc
        try:
            self._connect()
        except BaseException:
            self._mi.wait_on_close = True  # whatever gdb is doing, it is gone when this returns
            self._mi.close()
            raise
        finally:
            self._drop_pipe_log()  # read if the attach failed; the command keeps it open

    # -- connection ----------------------------------------------------------

    def _connect(self) -> None:
        """gdb's settings, the connect and the first question to the stub in one pipelined
        batch (gdb runs them in order; nothing waits between two of them), then, on QEMU's
        stub, its RAM size and CPUs in another."""
        settings = [
            "-gdb-set mi-async on",
            "-gdb-set pagination off",
            "-gdb-set confirm off",
            "-gdb-set width 0",
            "-gdb-set stack-cache off",
            "-gdb-set code-cache off",
            "-gdb-set tcp connect-timeout 3",
            "-gdb-set tcp auto-retry off",
            "-gdb-set remotetimeout 5",
        ]
        if self.elf:
            if not os.path.isfile(self.elf):
                raise TargetError(f"ELF file {self.elf} does not exist")
            settings.append(f"-file-exec-and-symbols {mi_quote(self.elf)}")
        else:
            settings.append("-gdb-set architecture i386:x86-64")
        endpoint = self._gdb_endpoint
        try:
            *done, attached, qemu, names = self._mi.pipeline(
                [
                    *settings,
                    f"-target-select remote {endpoint}",
                    console_command(_QEMU_QUESTION),
                    "-data-list-register-names",  # the stub's registers: known once attached
                ],
                timeout=CONNECT_TIMEOUT,
            )
        except MiTimeout as exc:
            raise TargetError(
                f"cannot attach to {self.endpoint}: no answer within {CONNECT_TIMEOUT:g} s"
                + self._pipe_said()
            ) from exc
        except MiClosed as exc:
            raise TargetLost(f"cannot attach to {self.endpoint}: gdb exited ({exc})") from exc
        for result in done:
            if isinstance(result, MiError):
                raise TargetError(result.message)
        if isinstance(attached, MiError):
            raise TargetError(
                f"cannot attach to {self.endpoint}: {attached.message}" + self._pipe_said()
            )
        self._mi.state = "stopped"
        if not isinstance(names, MiError):
            self._learn_register_numbers(names.payload)
        #: QEMU's stub: physical mode, and GDTR/IDTR/TR through its monitor
        #: what the stub answered the question of its physical-memory mode ("" if nothing)
        self._qemu_mode = "" if isinstance(qemu, MiError) else _packet_reply(qemu.text)
        self.is_qemu = self._probe_qemu()
        if self.physical == "qemu" and not self.is_qemu:
            raise TargetError("this stub has no physical-memory mode (it is not QEMU's)")
        if self.physical == "auto":
            self.physical = "qemu" if self.is_qemu else "direct-map"
        if self.is_qemu:
            self._phys_mode = self._qemu_mode == "1"  # as another debugger left it
            self._set_phys_mode(False)
            # kgdb's threads are the kernel's tasks (many, and no CPU): only QEMU's are asked
            size, threads, bits = self._pipeline(
                [
                    console_command("monitor info memory_size_summary"),
                    "-thread-info",
                    console_command(_PHYS_BITS_QUESTION),
                ]
            )
            self._learn_maxphyaddr("" if isinstance(bits, MiError) else bits.text)
            try:
                self._ram_size = (
                    None if isinstance(size, MiError) else decode_memory_size_summary(size.text)
                )
            except TargetError:
                self._ram_size = None
            if not isinstance(threads, MiError):
                self._learn_cpus(threads.payload)
        self.description = f"gdb remote stub {self.endpoint}" + (" (QEMU)" if self.is_qemu else "")
        # Physical reads: QEMU's mode, or the direct map (its base found on first use).
        offered = {
            Capability.PHYSICAL_READS,
            Capability.RUN_CONTROL,
            Capability.BREAKPOINTS,
            Capability.WATCHPOINTS,
            Capability.MEMORY_WRITES,
            Capability.REGISTER_WRITES,
        }
        if self.is_qemu:
            offered.add(Capability.SYSTEM_REGISTERS)
        self.capabilities = frozenset(offered)

    @staticmethod
    def _endpoint_for_gdb(spec: str) -> str:
        """``spec`` as gdb's ``target remote`` takes it; a clear error for a bad one."""
        endpoint = spec[len("unix:") :] if spec.startswith("unix:") else spec
        piped = endpoint.startswith("|")  # "| command": gdb talks to a program's stdio
        if not endpoint or (not piped and any(c.isspace() for c in endpoint)) or "\n" in endpoint:
            raise TargetError(f"bad target {spec!r}: give host:port or a socket path")
        return endpoint

    def _quiet_pipe(self, endpoint: str) -> str:
        """``| command`` for gdb with the command's stderr in a file of ours, not gdb's:
        gdb reads a piped command's stderr after every byte the link carries (its
        ``ser-base.c``'s ``generic_readchar``: a system call a byte), 0.55 s of a 0.61 s
        walk of the Debian guest's tables through tests/fake_stub.py's relay; a stderr
        that is not gdb's ends at once for gdb, which then stops reading it. An attach
        that fails says the command's last words (:meth:`_pipe_said`); the file is
        unlinked once attached (the command writes on into it, gone when the command
        ends). gdb runs the line with the user's $SHELL: the redirection is made by
        /bin/sh, whatever that shell is."""
        import shlex
        import tempfile

        try:
            handle, log = tempfile.mkstemp(prefix="kinspect-stub-", suffix=".stderr")
        except OSError:  # nowhere to keep it: the command's words are lost, as before
            log = os.devnull
        else:
            os.close(handle)
            self._pipe_log = log
        line = f"exec 2>>{shlex.quote(log)}; {endpoint[1:].strip()}"
        return f"| exec /bin/sh -c {shlex.quote(line)}"

    def _pipe_said(self) -> str:
        """`` (the command said: LINE)``: the last line a piped stub command wrote on its
        stderr; '' for none (or no pipe)."""
        if self._pipe_log is None:
            return ""
        try:
            with open(self._pipe_log, errors="replace") as log:
                lines = log.read()[-4096:].splitlines()
        except OSError:
            return ""
        said = next((line.strip() for line in reversed(lines) if line.strip()), "")
        return f" (the command said: {said})" if said else ""

    def _drop_pipe_log(self) -> None:
        if self._pipe_log is not None:
            try:
                os.unlink(self._pipe_log)
            except OSError:
                pass
            self._pipe_log = None

    def _look_first(self, endpoint: str) -> None:
        """One short look at a socket before gdb's own connect (which waits far longer):
        a stub held by another debugger, or the agent's line given as a stub, is said at once."""
        from kinspect.protocols.probe import probe  # the agent's wire format: only here

        seen = probe(endpoint, timeout=QUICK_LOOK)
        if seen is None or seen.kind in ("gdb", "other"):
            return  # gdb's connect says what is wrong, if anything
        if seen.kind == "agent":
            raise TargetError(
                f"{self.endpoint} is the kinspect agent's line, not a gdb stub: give it to "
                "--agent; --target takes the gdb stub (QEMU's -gdb socket)"
            )
        raise TargetError(
            f"{self.endpoint} is in use by another client: it accepts, but no gdb stub "
            f"answered within {QUICK_LOOK:g} s (QEMU's stub serves one debugger at a time)"
        )

    @property
    def maxphyaddr(self) -> int | None:
        """The CPU's physical address width from QEMU's own CPU object (its ``phys-bits``
        property, read with ``qom-get`` through the stub's monitor), asked once; None from
        a stub that is not QEMU's: 52 is assumed then (reserved bits 40-51 go unchecked)."""
        if self._maxphyaddr is None and self.is_qemu:  # asked when attaching: not again
            try:
                text = self._console(_PHYS_BITS_QUESTION)
            except TargetError:
                text = ""
            self._learn_maxphyaddr(text)
        return self._maxphyaddr or None

    def _learn_maxphyaddr(self, text: str) -> None:
        """``phys-bits`` as QEMU's monitor printed it (0: not known)."""
        text = text.strip()
        self._maxphyaddr = int(text) if text.isdigit() and 32 <= int(text) <= 52 else 0

    def _learn_cpus(self, payload: Any) -> None:
        """Which gdb thread is which CPU (QEMU names them ``CPU#N``; ``payload``: the
        ``-thread-info`` answer), asked once: the CPUs of a machine do not come and go.
        Other stubs' threads are tasks (kgdb) or unnamed: those show one CPU, the one gdb
        has selected."""
        threads = decode_cpu_threads(payload)
        self._cpu_threads = {cpu.index: thread for cpu, thread in threads}
        current = payload.get("current-thread-id") if isinstance(payload, Mapping) else None
        self._cpu = self._cpu_of_thread(current) or 0
        self._sync_cpu()

    def _cpu_of_thread(self, thread: object) -> int | None:
        for index, known in self._cpu_threads.items():
            if known == str(thread):
                return index
        return None

    def _sync_cpu(self) -> None:
        """Follow a new stop to the CPU that reported it (gdb has selected its thread)."""
        record = self._mi.last_stop
        if record is not None and record is not self._followed:
            self._followed = record
            cpu = self._cpu_of_thread(record.get("thread-id"))
            if cpu is not None:
                self._cpu = cpu
                record["cpu"] = cpu  # the stop report names its CPU

    @property
    def cpu(self) -> int:
        self._sync_cpu()
        return self._cpu

    def cpu_threads(self) -> list[CpuThread]:
        if not self._cpu_threads:
            return [CpuThread(0)]
        if self.state != "stopped":
            return [CpuThread(index) for index in sorted(self._cpu_threads)]
        found = dict(decode_cpu_threads(self._checked("-thread-info").payload))
        return sorted(found, key=lambda cpu: cpu.index)

    def select_cpu(self, index: int) -> None:
        self._require_stopped()
        self._sync_cpu()
        if not self._cpu_threads:
            super().select_cpu(index)
            return
        thread = self._cpu_threads.get(index)
        if thread is None:
            raise TargetError(
                f"there is no CPU {index}: this target has CPUs 0-{max(self._cpu_threads)}"
            )
        if index != self._cpu:
            self._checked(f"-thread-select {thread}")
            self._cpu = index

    def _probe_qemu(self) -> bool:
        """Whether the stub is QEMU's: it answered the connect batch's question about its
        physical-memory mode (0 or 1); other stubs do not know the packet."""
        return self._qemu_mode in ("0", "1")

    @property
    def ram_size(self) -> int | None:
        return self._ram_size

    # -- plumbing --------------------------------------------------------------

    def _call(self, command: str, timeout: float | None = None) -> MiResult:
        """One MI command with our errors: TargetLost for a dead link, MiError for ^error."""
        try:
            return self._mi.command(command, timeout=timeout or self.timeout)
        except MiTimeout as exc:
            raise TargetLost(
                f"the target did not answer within {exc.timeout:g} s ({self.endpoint})"
            ) from exc
        except MiClosed as exc:
            raise TargetLost(f"lost the connection to gdb: {exc}") from exc

    def _checked(self, command: str, timeout: float | None = None) -> MiResult:
        try:
            return self._call(command, timeout)
        except MiError as exc:
            self._raise_if_gone(exc)
            raise TargetError(exc.message) from exc

    def _raise_if_gone(self, exc: MiError) -> None:
        text = exc.message.lower()
        if (
            "remote connection closed" in text
            or "not connected" in text
            or "the program is not being run" in text
        ):
            self._mi.state = "exited"
            raise TargetLost(f"the target has gone away ({exc.message})") from exc
        if "while the target is running" in text:
            raise TargetError("the target is running; stop it first") from exc

    def _console(self, text: str, timeout: float | None = None) -> str:
        try:
            return self._call(console_command(text), timeout).text
        except MiError as exc:
            self._raise_if_gone(exc)
            raise TargetError(f"{text}: {exc.message}") from exc

    def _packet(self, packet: str) -> str:
        """Send a raw remote packet; return what the stub answered ('' if unsupported)."""
        return _packet_reply(self._console(f"maintenance packet {packet}"))

    def _set_phys_mode(self, on: bool) -> None:
        if self._phys_mode == on:
            return
        reply = self._packet(f"Qqemu.PhyMemMode:{1 if on else 0}")
        if reply != "OK":
            raise TargetError(f"QEMU refused physical-memory mode ({reply or 'no reply'})")
        self._phys_mode = on  # gdb's memory caches are off (stack-cache, code-cache)

    # -- memory ------------------------------------------------------------------

    def _read(self, address: int, size: int, what: str) -> bytes:
        (found,) = self._read_many([(address, size)], what)
        if isinstance(found, FaultError):
            raise found
        return found

    def _read_many(
        self, requests: Sequence[tuple[int, int]], what: str
    ) -> list[bytes | FaultError]:
        """Each ``(address, size)`` read as gdb sees memory now (virtual, or physical in
        QEMU's mode), in few commands: contiguous requests are one run (at most
        READ_CHUNK bytes a command), and the runs' commands are pipelined. gdb itself
        cuts each command into packets as large as the stub's ``PacketSize`` allows. A
        request that its run did not give whole is read again alone (:meth:`_read_alone`)."""
        runs = plan_spans(requests, None, limit=READ_CHUNK)  # requests as asked, no gaps
        results = self._pipeline([f"-data-read-memory-bytes {a:#x} {n}" for a, n, _ in runs])
        held: dict[int, list[tuple[int, bytes]]] = {}  # request -> blocks of its runs
        for (_start, _size, members), result in zip(runs, results, strict=True):
            blocks = [] if isinstance(result, MiError) else decode_memory_blocks(result.payload)
            for index in members:
                held.setdefault(index, []).extend(blocks)
        found: list[bytes | FaultError | None] = [None] * len(requests)
        for index, blocks in held.items():
            address, size = requests[index]
            found[index] = slice_blocks(trusted_blocks(join_blocks(blocks), runs), address, size)
        for index, got in enumerate(found):
            if got is None:
                found[index] = self._read_alone(*requests[index], what)
        return [got for got in found if got is not None]

    def _pipeline(self, commands: list[str]) -> list[MiResult | MiError]:
        try:
            results = self._mi.pipeline(commands, timeout=self.timeout)
        except MiTimeout as exc:
            raise TargetLost(
                f"the target did not answer within {exc.timeout:g} s ({self.endpoint})"
            ) from exc
        except MiClosed as exc:
            raise TargetLost(f"lost the connection to gdb: {exc}") from exc
        for result in results:
            if isinstance(result, MiError):
                self._raise_if_gone(result)
        return results

    def _read_alone(self, address: int, size: int, what: str) -> bytes | FaultError:
        """One request its batch did not give whole, in READ_CHUNK commands: its bytes, or
        a FaultError at the first byte that cannot be read. When that byte reads alone,
        the stub refused the packet, not the memory: gdb's packets are halved (down to
        MIN_PACKET bytes) and the read is tried again.

        gdb's answer around a hole may hold one byte too many (gdb 13's
        ``read_whatever_is_readable`` keeps the unreadable byte its search ended on),
        (never read: garbage), so the last byte before the hole is read again alone."""
        out = bytearray()
        while len(out) < size:
            start = address + len(out)
            chunk = min(READ_CHUNK, size - len(out))
            (result,) = self._pipeline([f"-data-read-memory-bytes {start:#x} {chunk}"])
            blocks = [] if isinstance(result, MiError) else decode_memory_blocks(result.payload)
            got = readable_prefix(blocks, start, chunk)
            if len(got) < chunk and got:  # that last byte may not have been read at all
                got = got[:-1] + self._read_byte(start + len(got) - 1)
            out += got
            if len(got) == chunk:
                continue
            failing = start + len(got)
            if self._read_byte(failing) and self._shrink_packets():
                continue
            reason = f"{result.message}" if isinstance(result, MiError) else "not mapped"
            return FaultError(failing, f"cannot read {what} memory ({reason})")
        return bytes(out)

    def _read_byte(self, address: int) -> bytes:
        """The byte at ``address``, or b"" when it cannot be read."""
        (result,) = self._pipeline([f"-data-read-memory-bytes {address:#x} 1"])
        if isinstance(result, MiError):
            return b""
        return readable_prefix(decode_memory_blocks(result.payload), address, 1)

    @property
    def packet_size(self) -> int:
        """The largest packet gdb sends this stub (what its ``qSupported`` reply's
        ``PacketSize`` allows, halved after the stub refused a read): a memory read
        packet carries half of it in hex. Asked of gdb once."""
        if self._packet_size is None:
            text = self._console("show remote memory-read-packet-size")
            match = re.search(r"limited to (\d+) bytes", text)
            self._packet_size = int(match.group(1)) if match else 0
        return self._packet_size

    def _shrink_packets(self) -> bool:
        """Halve gdb's packet size for memory reads; False at the floor (nothing left)."""
        current = self.packet_size
        if current <= MIN_PACKET:
            return False
        self._packet_size = max(MIN_PACKET, current // 2)
        self._console(f"set remote memory-read-packet-size {self._packet_size}")
        return True

    def read_physical_many(self, requests: Sequence[tuple[int, int]]) -> list[bytes | FaultError]:
        found: list[bytes | FaultError | None] = [None] * len(requests)
        wanted: list[tuple[int, int]] = []
        where: list[int] = []
        for index, (address, size) in enumerate(requests):
            try:
                self._check_physical(address, size)
            except FaultError as exc:
                found[index] = exc
                continue
            wanted.append((address, size))
            where.append(index)
        got: Sequence[bytes | FaultError] | None = self._dump_many(wanted) if wanted else None
        if wanted and got is None:
            offset = self._enter_physical()  # QEMU's mode, or the direct map's base found
            what = "physical" if self.physical == "qemu" else "physical (through the direct map)"
            got = self._read_many([(offset + a, n) for a, n in wanted], what)
        for index, one in zip(where, got or [], strict=True):
            found[index] = one  # a fault names the address read, as read_physical's do
        return [one for one in found if one is not None]

    def _dump_many(self, requests: Sequence[tuple[int, int]]) -> list[bytes] | None:
        """``requests`` through QEMU's monitor (:mod:`.qemu_dump`), or None: not QEMU's
        stub, or that path does not work here (QEMU on another host or file system, or
        not allowed to write our temporary directory). Its first answer is checked
        against the stub's own physical read of one request: a disagreement (or any
        failure) turns the path off for this session."""
        if self.physical != "qemu" or self._dumps is False:
            return None
        fresh = self._dumps is None
        if not isinstance(self._dumps, MonitorDumps):
            self._dumps = MonitorDumps(self._monitor_batch, self._ram_size)
        got = self._dumps.read_many(requests)
        if got is not None and fresh:
            index = min(range(len(requests)), key=lambda i: requests[i][1])
            address, size = requests[index][0], min(requests[index][1], 4096)
            self._set_phys_mode(True)
            (theirs,) = self._read_many([(address, size)], "physical")
            if theirs != got[index][:size]:
                got = None
        if got is None:
            self._dumps.close()
            self._dumps = False
        return got

    def _monitor_batch(self, lines: list[str]) -> list[str | None]:
        """QEMU monitor command lines through the stub, pipelined: each one's output (None
        for a command gdb refused)."""
        results = self._pipeline([console_command(f"monitor {line}") for line in lines])
        return [None if isinstance(result, MiError) else result.text for result in results]

    def read_physical(self, address: int, size: int) -> bytes:
        (found,) = self.read_physical_many([(address, size)])
        if isinstance(found, FaultError):
            raise found
        return found

    def read_virtual(self, address: int, size: int) -> bytes:
        from ..x86.paging import check_canonical  # imported by the first read, not at start

        check_canonical(address, 5)  # the widest mode; the session checks the one in use
        self._require_stopped()
        if self._phys_mode:
            self._set_phys_mode(False)
        return self._read(address, size, "virtual")

    def _check_physical(self, address: int, size: int) -> None:
        if address < 0 or size < 0 or address + size > 1 << 52:
            raise FaultError(address, "physical address out of range (above 2^52)")
        self._require_stopped()
        limit = self._physical_limit()
        if limit is not None and address + size > limit:
            raise FaultError(
                address,
                f"physical address past the end of RAM ({(self._ram_size or 0) // (1 << 20)} MiB): "
                "QEMU would answer zeros",
            )

    def _enter_physical(self) -> int:
        """Set the stub up for physical reads; the offset to add to a physical address
        (0 in QEMU's mode, the direct map's base otherwise)."""
        if self.physical == "qemu":
            self._set_phys_mode(True)
            return 0
        base = self._direct_map_base()
        if self._phys_mode:
            self._set_phys_mode(False)
        return base

    def _physical_limit(self) -> int | None:
        """Where RAM ends in the physical address space, as far as we know.

        Up to 2 GiB, QEMU's PC machines put all RAM below 4 GiB; above, part
        of it moves above 4 GiB (past the PCI hole), so the bound is looser.
        """
        if self._ram_size is None:
            return None
        if self._ram_size <= 1 << 31:
            return self._ram_size
        return (1 << 32) + self._ram_size

    @property
    def physical_source(self) -> str | None:
        if self.physical == "qemu":
            return "QEMU's physical-memory mode"
        if self._phys_base is None:
            return None
        return f"the direct map at {self._phys_base:#x} ({self._phys_base_source})"

    @property
    def system_registers_source(self) -> str | None:
        return "QEMU's monitor (info registers)" if self.is_qemu else None

    def direct_map_wanted(self) -> bool:
        return self.physical == "direct-map" and self._symbol_direct_map_base() is None

    def use_direct_map(self, base: int, source: str) -> None:
        if self.physical != "direct-map":
            raise TargetError("this stub reads physical memory itself (QEMU's mode)")
        self._phys_base = base
        self._phys_base_source = source

    def _direct_map_base(self) -> int:
        base = self._symbol_direct_map_base()
        if base is not None:
            return base
        raise TargetError(
            "this stub cannot read physical memory: pass --phys-base with the kernel's "
            "direct-map base, or --elf with a kernel that defines "
            + " or ".join(DIRECT_MAP_SYMBOLS)
        )

    def _symbol_direct_map_base(self) -> int | None:
        """The base given, or read through gdb from the ELF's symbols (None: neither)."""
        if self._phys_base is not None:
            return self._phys_base
        if not self.elf:
            return None
        for symbol in DIRECT_MAP_SYMBOLS:
            try:
                result = self._call(
                    f"-data-evaluate-expression {mi_quote(f'(unsigned long long){symbol}')}"
                )
            except MiError:
                continue
            value = result.payload.get("value", "") if isinstance(result.payload, dict) else ""
            try:
                self._phys_base = int(value.split()[0], 0)
            except (ValueError, IndexError):
                continue
            self._phys_base_source = f"{symbol} in the ELF, through gdb"
            return self._phys_base
        return None

    # -- registers -----------------------------------------------------------------

    def registers(self) -> Mapping[str, int]:
        self._require_stopped()
        self._sync_cpu()
        if self._register_numbers is None:  # asked when attaching: not again
            self._learn_register_numbers(self._checked("-data-list-register-names").payload)
        assert self._register_numbers is not None
        wanted = [self._register_numbers[n] for n in _REGISTER_NAMES if n in self._register_numbers]
        by_number = {v: k for k, v in self._register_numbers.items()}
        payload = self._checked(
            "-data-list-register-values --skip-unavailable x " + " ".join(map(str, wanted))
        ).payload
        values: dict[str, int] = {}
        for item in payload.get("register-values", []):
            name = by_number.get(int(item["number"]))
            value = item.get("value")
            if name is None or not isinstance(value, str):
                continue
            try:
                values["rflags" if name == "eflags" else name] = int(value, 16)
            except ValueError:
                continue
        return values

    def _learn_register_numbers(self, payload: Any) -> None:
        """The stub's register numbers by name (``-data-list-register-names``' answer)."""
        names = payload.get("register-names", []) if isinstance(payload, Mapping) else []
        self._register_numbers = {name: i for i, name in enumerate(names) if name}

    def system_registers(self) -> SystemRegisters:
        if not self.is_qemu:
            raise MissingCapability(
                Capability.SYSTEM_REGISTERS,
                "this gdb stub does not expose GDTR/IDTR/TR; "
                "attach the in-kernel agent to see them",
            )
        self._require_stopped()
        self._sync_cpu()
        if self._cpu_threads:  # the monitor's own CPU, apart from gdb's thread
            self._console(f"monitor cpu {self._cpu}")
        text = self._console("monitor info registers")
        try:
            return system_registers_from_info(text)
        except InspectorError as exc:
            raise TargetError(f"cannot read GDTR/IDTR from QEMU's monitor: {exc}") from exc

    # -- run control -------------------------------------------------------------------

    @property
    def state(self) -> str:
        if self._mi.alive:
            try:
                self._mi.poll()
            except MiClosed:
                return "exited"
        return self._mi.state

    def stop(self, *, timeout: float | None = None) -> StopRecord:
        """Stop the target; return the stop record."""
        if self.state == "stopped":
            return self._mi.last_stop or {}
        self._checked("-exec-interrupt")
        try:
            record = self._mi.wait_for_stop(timeout or self.timeout)
        except MiTimeout as exc:
            raise TargetError(f"the target did not stop within {exc.timeout:g} s") from exc
        except MiClosed as exc:
            raise TargetLost(f"lost the connection to gdb: {exc}") from exc
        self._drop_temporary()
        return record

    def resume(self) -> None:
        if self.state == "running":
            return
        self._set_phys_mode(False)
        self._run("-exec-continue")

    def _run(self, command: str) -> None:
        """Start the kernel with ``command``; a watchpoint or breakpoint the stub refuses
        (gdb inserts them only now) is said in one line."""
        try:
            self._call(command)
        except MiError as exc:
            self._raise_if_gone(exc)
            text = " ".join(exc.message.split())
            if "Could not insert hardware" in text or "hardware watchpoint" in text.lower():
                raise TargetError(
                    f"the stub refused a hardware watchpoint or breakpoint ({text}): "
                    "delete one (breakpoints lists them; x86 has 4 debug registers)"
                ) from exc
            raise TargetError(text) from exc

    def wait_for_stop(self, timeout: float) -> StopRecord:
        try:
            record = self._mi.wait_for_stop(timeout)
        except MiTimeout as exc:
            raise TargetError(f"the target did not stop within {exc.timeout:g} s") from exc
        except MiClosed as exc:
            raise TargetLost(f"lost the connection to gdb: {exc}") from exc
        self._drop_temporary()
        return record

    def _drop_temporary(self) -> None:
        """The kernel stopped: an ``until`` that stopped elsewhere is over (its breakpoint
        goes; gdb deleted the one that was hit, and answers ^done for it)."""
        while self._temporary:
            number = self._temporary.pop()
            try:
                self._call(f"-break-delete {number}")
            except MiError:
                pass

    # -- stepping as debuggers do (each starts the kernel; the stop comes later) ----------

    def start_next(self, *, line: bool) -> None:
        self._require_stopped()
        self._set_phys_mode(False)
        try:
            self._run("-exec-next" if line else "-exec-next-instruction")
        except TargetError as exc:
            if line and "bounds of current function" in str(exc):
                raise TargetError(
                    "next steps over a source line: gdb needs the kernel's ELF with line "
                    "info here (--elf), and none covers RIP; nexti steps over one instruction"
                ) from exc
            raise

    def start_finish(self) -> None:
        self._require_stopped()
        self._set_phys_mode(False)
        self._run("-exec-finish")

    def start_until(self, address: int) -> int:
        self._require_stopped()
        self._set_phys_mode(False)
        payload = self._checked(f"-break-insert -t *{address:#x}").payload
        number = int(payload["bkpt"]["number"])
        self._temporary.add(number)
        self._run("-exec-continue")
        return number

    def watch_insert(self, address: int, length: int, access: str) -> int:
        """``-break-watch`` on ``*(TYPE *) ADDRESS``, TYPE of ``length`` bytes; a watchpoint
        gdb would emulate by single-stepping (software) is refused, not kept."""
        check_watch(address, length, access)
        self._require_stopped()
        flag = {"w": "", "r": "-r ", "rw": "-a "}[access]
        expression = f"*({WATCH_TYPES[length]} *) {address:#x}"
        payload = self._checked(f"-break-watch {flag}{mi_quote(expression)}").payload
        found = next((payload[k] for k in ("wpt", "hw-rwpt", "hw-awpt") if k in payload), None)
        if not isinstance(found, Mapping):
            raise ProtocolError(f"gdb's -break-watch answer has no watchpoint: {payload!r}")
        number = int(found["number"])
        kind = next((b.kind for b in self.breakpoints() if b.number == number), "")
        if not kind.startswith(("hw ", "read ", "acc ")):
            self._call(f"-break-delete {number}")
            raise TargetError(
                f"gdb would only emulate this watchpoint in software ({kind or 'unknown'}): "
                "the stub offers no hardware watchpoints"
            )
        return number

    # -- changing the kernel ---------------------------------------------------------------

    def _write(self, address: int, data: bytes, what: str) -> None:
        for at in range(0, len(data), READ_CHUNK):
            chunk = data[at : at + READ_CHUNK]
            try:
                self._call(f"-data-write-memory-bytes {address + at:#x} {chunk.hex()}")
            except MiError as exc:
                self._raise_if_gone(exc)
                raise FaultError(
                    address + at, f"cannot write {what} memory ({exc.message})"
                ) from exc

    def write_virtual(self, address: int, data: bytes) -> None:
        from ..x86.paging import check_canonical

        check_canonical(address, 5)
        self._require_stopped()
        if self._phys_mode:
            self._set_phys_mode(False)
        self._write(address, data, "virtual")

    def write_physical(self, address: int, data: bytes) -> None:
        if address < 0 or address + len(data) > 1 << 52:
            raise FaultError(address, "physical address out of range (above 2^52)")
        self._require_stopped()
        limit = self._physical_limit()
        if limit is not None and address + len(data) > limit:
            raise FaultError(address, "physical address past the end of RAM")
        if self.physical == "qemu":
            self._set_phys_mode(True)
            try:
                self._write(address, data, "physical")
            finally:
                self._set_phys_mode(False)
            return
        self._write(self._direct_map_base() + address, data, "physical (through the direct map)")

    def set_register(self, name: str, value: int) -> None:
        self._require_stopped()
        self._sync_cpu()
        self.registers()  # learns the names
        gdb_name = "eflags" if name == "rflags" else name
        if self._register_numbers is None or gdb_name not in self._register_numbers:
            raise TargetError(f"this stub has no register {name!r}")
        if self._phys_mode:
            self._set_phys_mode(False)
        try:
            self._checked(f"-data-evaluate-expression {mi_quote(f'${gdb_name} = {value:#x}')}")
        except TargetError as exc:
            if "Invalid cast" not in str(exc):
                raise
            # gdb types CR0, CR4, EFER... as flag structs, assigned from a long only
            expression = f"${gdb_name} = (long) {value:#x}"
            self._checked(f"-data-evaluate-expression {mi_quote(expression)}")

    @property
    def last_stop(self) -> StopRecord:
        """The payload of the last ``*stopped`` record (``reason``, ``frame``...)."""
        return self._mi.last_stop or {}

    @last_stop.setter
    def last_stop(self, record: StopRecord) -> None:
        self._mi.last_stop = dict(record)

    def step_instruction(self, *, timeout: float | None = None) -> StopRecord:
        """Execute one instruction (``stepi``); return the stop record."""
        self._require_stopped()
        self._set_phys_mode(False)
        self._checked("-exec-step-instruction")
        return self.wait_for_stop(timeout or self.timeout)

    def break_insert(self, location: str) -> int:
        """Set a breakpoint at a symbol or ``*address``; return its number."""
        payload = self._checked(f"-break-insert {location}").payload
        return int(payload["bkpt"]["number"])

    def breakpoints(self) -> list[Breakpoint]:
        """gdb's breakpoint table (``-break-list``): gdb's own list, the kernel may run."""
        return decode_break_table(self._checked("-break-list").payload)

    def break_delete(self, number: int) -> None:
        """Delete breakpoint ``number`` (``-break-delete``).

        gdb answers ``^done`` for a number it does not have, so the table is
        asked first: a typo must not look like a deletion.
        """
        if not any(b.number == number for b in self.breakpoints()):
            raise TargetError(f"no breakpoint number {number}")
        self._checked(f"-break-delete {int(number)}")

    def _require_stopped(self) -> None:
        state = self.state
        if state == "running":
            raise TargetError(
                "the target is running; stop it first (kinspect stops it for you unless --no-stop)"
            )
        if state == "exited":
            raise TargetLost("the target has gone away")

    def close(self, *, resume: bool = True) -> None:
        """Detach (the stub lets the target run) or disconnect leaving it stopped."""
        if self._closed:
            return
        self._closed = True
        if isinstance(self._dumps, MonitorDumps):
            self._dumps.close()
        try:
            if self._mi.alive and self._mi.state != "exited":
                if self._phys_mode:
                    self._set_phys_mode(False)
                if resume:
                    self._call("-target-detach", timeout=3)
                else:
                    self._call(console_command("disconnect"), timeout=3)
        except (InspectorError, MiError):
            # gdb may still hold the stub: wait for its exit (or end it) whoever started it
            self._mi.wait_on_close = True
        finally:
            self._mi.close()


def _packet_reply(text: str) -> str:
    """The stub's reply in what ``maintenance packet`` printed ('' if unsupported)."""
    match = re.search(r'received: "(.*)"', text)
    return match.group(1) if match else ""


_CPU_DETAILS = re.compile(r"CPU#(\d+)(?:\s*\[\s*(\w+)\s*\])?")


def decode_cpu_threads(payload: Any) -> list[tuple[CpuThread, str]]:
    """The CPUs in a ``-thread-info`` answer, with their gdb thread ids.

    QEMU's stub names each vCPU's thread ``CPU#N [halted ]`` or ``CPU#N
    [running]`` (its ``qThreadExtraInfo``): ``halted`` is a CPU in HLT. A
    thread without such details (kgdb's tasks) is no CPU: none is listed.
    """
    threads = payload.get("threads") if isinstance(payload, Mapping) else None
    found: list[tuple[CpuThread, str]] = []
    for thread in threads if isinstance(threads, list) else []:
        if not isinstance(thread, Mapping):
            continue
        match = _CPU_DETAILS.search(str(thread.get("details") or ""))
        if match is None or "id" not in thread:
            continue
        word = match.group(2)
        halted = None if word is None else word == "halted"
        found.append((CpuThread(int(match.group(1)), halted), str(thread["id"])))
    return found


def decode_break_table(payload: Any) -> list[Breakpoint]:
    """The records of a ``-break-list`` result, in gdb's order.

    ``payload`` is the parsed result (``{"BreakpointTable": {"hdr": [...],
    "body": [...]}}``). A breakpoint with several locations (an inlined
    function) has ``addr="<MULTIPLE>"``: under MI3 its locations are nested
    (``locations=[...]``), under MI2 they follow it as rows numbered
    ``N.1``, ``N.2``; its address is then its first location's. A pending
    breakpoint (``<PENDING>``) and a watchpoint have no address.
    """
    table = payload.get("BreakpointTable") if isinstance(payload, Mapping) else None
    body = table.get("body") if isinstance(table, Mapping) else None
    if not isinstance(body, list):
        raise ProtocolError(f"gdb's -break-list answer has no BreakpointTable body: {payload!r}")
    rows: list[dict[str, Any]] = []
    for entry in body:
        if not isinstance(entry, Mapping) or "number" not in entry:
            raise ProtocolError(f"a -break-list row without a number: {entry!r}")
        number = str(entry["number"])
        if "." in number:  # MI2: a location row of the breakpoint before it
            if not rows or number.split(".")[0] != rows[-1]["number"]:
                raise ProtocolError(f"location {number} follows no breakpoint of its number")
            rows[-1].setdefault("locations", []).append(dict(entry))
            continue
        rows.append({**entry, "locations": list(entry.get("locations") or [])})
    return [_decode_break_row(row) for row in rows]


def _decode_break_row(row: Mapping[str, Any]) -> Breakpoint:
    try:
        number = int(row["number"])
        hits = int(row.get("times") or 0)
    except ValueError as exc:
        raise ProtocolError(f"a -break-list row with a bad number or count: {dict(row)!r}") from exc
    locations = [loc for loc in row.get("locations") or [] if isinstance(loc, Mapping)]
    address = _hex(row.get("addr"))
    place: Mapping[str, Any] = row
    if address is None:
        for loc in locations:
            address = _hex(loc.get("addr"))
            if address is not None:
                place = loc
                break
    where = _where(place) or _where(row)
    if len(locations) > 1:
        where = f"{where} ({len(locations)} locations)" if where else f"{len(locations)} locations"
    return Breakpoint(
        number=number,
        address=address,
        location=where,
        hits=hits,
        enabled=row.get("enabled", "y") == "y",
        kind=str(row.get("type") or "breakpoint"),
    )


def _hex(text: Any) -> int | None:
    """``0x...`` as a number; gdb's ``<PENDING>``, ``<MULTIPLE>`` and absent as None."""
    if isinstance(text, str) and text.lower().startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            return None
    return None


def _where(row: Mapping[str, Any]) -> str:
    """``func at file:line``, a watched expression, or what the user asked for."""
    func = row.get("func")
    if func:
        file, line = row.get("file"), row.get("line")
        return f"{func} at {file}:{line}" if file and line else str(func)
    for key in ("what", "exp", "pending", "original-location", "at"):
        if row.get(key):
            return str(row[key])
    return ""


# -- reads in runs: pure helpers of GdbTarget._read_many --------------------------------------


def decode_memory_blocks(payload: Any) -> list[tuple[int, bytes]]:
    """``(address, bytes)`` of each block of a ``-data-read-memory-bytes`` answer (gdb
    gives the parts it could read, around the holes), neighbours joined."""
    blocks = payload.get("memory", []) if isinstance(payload, Mapping) else []
    found: list[tuple[int, bytes]] = []
    for block in blocks if isinstance(blocks, list) else []:
        try:
            begin = int(block["begin"], 16) + int(block.get("offset", "0"), 16)
            found.append((begin, bytes.fromhex(block["contents"])))
        except (KeyError, TypeError, ValueError):
            continue
    return join_blocks(found)


def join_blocks(blocks: Sequence[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """Blocks in address order, the ones that touch made one."""
    joined: list[tuple[int, bytearray]] = []
    for begin, data in sorted(blocks, key=lambda block: block[0]):
        if joined and joined[-1][0] + len(joined[-1][1]) == begin:
            joined[-1][1].extend(data)
        else:
            joined.append((begin, bytearray(data)))
    return [(begin, bytes(data)) for begin, data in joined]


def trusted_blocks(
    blocks: Sequence[tuple[int, bytes]], runs: Sequence[tuple[int, int, object]]
) -> list[tuple[int, bytes]]:
    """The blocks less the byte on each side of a hole: gdb 13 may give one byte of
    the hole with the block beside it (see GdbTarget._read_alone). A block edge that is
    a run's edge is no hole's."""
    edges = {start for start, _, _ in runs} | {start + size for start, size, _ in runs}
    found = []
    for begin, data in blocks:
        end = begin + len(data)
        if begin not in edges:
            begin, data = begin + 1, data[1:]
        if end not in edges:
            data = data[:-1]
        if data:
            found.append((begin, data))
    return found


def readable_prefix(blocks: Sequence[tuple[int, bytes]], address: int, size: int) -> bytes:
    """What of ``[address, address + size)`` the blocks hold from its first byte on."""
    for begin, data in blocks:
        if begin <= address < begin + len(data):
            return data[address - begin : address - begin + size]
    return b""


def slice_blocks(blocks: Sequence[tuple[int, bytes]], address: int, size: int) -> bytes | None:
    """``[address, address + size)`` when one block holds it whole; None otherwise."""
    got = readable_prefix(blocks, address, size)
    return got if len(got) == size else None
