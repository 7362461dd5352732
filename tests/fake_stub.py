"""A GDB remote stub in a thread, for real gdb to talk to: memory with holes, a ``PacketSize``
of our choosing, and a limit on the reads it accepts that may be below what it announced.

No QEMU extensions (``qqemu.*`` and ``qRcmd`` get the empty "unsupported" reply), so a
GdbTarget on it reads physical memory through a direct map, as on kgdb or a probe's
server. Every packet gdb sends is kept in :attr:`FakeStub.packets` for the tests to count.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
from collections.abc import Mapping

#: x86-64 general registers, rip, eflags and segments, then the x87/SSE state gdb's
#: default i386:x86-64 description expects in a ``g`` reply (all zero but rip).
_G_BYTES = 16 * 8 + 8 + 4 + 6 * 4 + 8 * 10 + 8 * 4 + 16 * 16 + 4
RIP = 0xFFFFFFFF81000000


def _checksum(data: bytes) -> bytes:
    return b"%02x" % (sum(data) & 0xFF)


class FakeStub:
    """Serve one gdb at a time on a unix socket (:attr:`endpoint`) from a thread.

    ``memory``: address -> bytes (regions; everything else is a hole: ``E14``).
    ``packet_size``: announced in ``qSupported`` (None: not announced). ``max_read``: a
    larger ``m`` is refused with ``E22`` (as QEMU refuses more than PacketSize/2).
    """

    def __init__(
        self,
        memory: Mapping[int, bytes],
        *,
        packet_size: int | None = 0x1000,
        max_read: int | None = None,
    ) -> None:
        self.memory = dict(memory)
        self.packet_size = packet_size
        self.max_read = max_read
        self.packets: list[bytes] = []
        self._dir = tempfile.mkdtemp(prefix="kinspect-fake-stub-")
        self.endpoint = os.path.join(self._dir, "gdb.sock")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.endpoint)
        self._server.listen(1)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def reads(self) -> list[tuple[int, int]]:
        """``(address, length)`` of each ``m`` packet gdb sent."""
        found = []
        for packet in self.packets:
            if packet.startswith(b"m"):
                address, length = packet[1:].split(b",")
                found.append((int(address, 16), int(length, 16)))
        return found

    def close(self) -> None:
        try:
            self._server.close()
        finally:
            try:
                os.unlink(self.endpoint)
                os.rmdir(self._dir)
            except OSError:
                pass

    # -- the stub ---------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._server.accept()
            except OSError:
                return
            with connection:
                self._talk(connection)

    def _talk(self, connection: socket.socket) -> None:
        buffer = b""
        while True:
            try:
                data = connection.recv(65536)
            except OSError:
                return
            if not data:
                return
            buffer += data
            while True:
                buffer = buffer.lstrip(b"+-\x03")
                start = buffer.find(b"$")
                end = buffer.find(b"#", start)
                if start < 0 or end < 0 or len(buffer) < end + 3:
                    break
                packet = buffer[start + 1 : end]
                buffer = buffer[end + 3 :]
                self.packets.append(packet)
                reply = self._answer(packet)
                try:
                    connection.sendall(b"+$" + reply + b"#" + _checksum(reply))
                except OSError:
                    return
                if packet.startswith(b"D"):
                    return

    def _answer(self, packet: bytes) -> bytes:
        if packet.startswith(b"qSupported"):
            return b"PacketSize=%x" % self.packet_size if self.packet_size else b""
        if packet == b"?":
            return b"S05"
        if packet == b"g":
            return (
                (b"00" * 8 * 16)
                + RIP.to_bytes(8, "little").hex().encode()
                + b"00" * (_G_BYTES - 16 * 8 - 8)
            )
        if packet.startswith(b"m"):
            address, length = (int(x, 16) for x in packet[1:].split(b","))
            if self.max_read is not None and length > self.max_read:
                return b"E22"
            data = self.read(address, length)
            return b"E14" if data is None else data.hex().encode()
        if packet in (b"qAttached",):
            return b"1"
        if packet.startswith((b"Hg", b"Hc", b"D")):
            return b"OK"
        return b""  # everything else (qqemu.*, qRcmd, vCont?, qTStatus...): unsupported

    def read(self, address: int, length: int) -> bytes | None:
        """What an ``m`` answers: all of it, or None when any byte is in a hole."""
        for base, data in self.memory.items():
            if base <= address and address + length <= base + len(data):
                return data[address - base : address - base + length]
        return None


# -- a relay: QEMU's stub with its extensions hidden, on gdb's stdin/stdout ----------------------

#: What QEMU's stub has and a plain stub (kgdb, OpenOCD, a probe's server) does not: its
#: physical-memory mode and its monitor. The relay answers these itself: "unsupported".
HIDDEN = (b"qqemu.", b"Qqemu.", b"qRcmd,")


def relay(socket_path: str) -> None:
    """Pass gdb's packets (on stdin/stdout: ``target remote | python fake_stub.py relay
    SOCKET``) to the stub at ``socket_path`` and back, answering :data:`HIDDEN` ones with
    the empty reply; what the stub says is passed on untouched (its PacketSize too)."""
    import select

    stub = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stub.connect(socket_path)
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    pending = b""
    while True:
        ready, _, _ = select.select([stdin, stub], [], [])
        if stub in ready:
            data = stub.recv(1 << 16)
            if not data:
                return
            os.write(stdout, data)
        if stdin in ready:
            data = os.read(stdin, 1 << 16)
            if not data:
                return
            pending += data
            forward = b""
            while pending:
                if pending[:1] != b"$":  # acks, ^C: as they are
                    cut = pending.find(b"$")
                    cut = len(pending) if cut < 0 else cut
                    forward, pending = forward + pending[:cut], pending[cut:]
                    continue
                end = pending.find(b"#")
                if end < 0 or len(pending) < end + 3:
                    break  # the rest of the packet is still on its way
                packet, pending = pending[: end + 3], pending[end + 3 :]
                if packet[1:].startswith(HIDDEN):
                    os.write(stdout, b"+$#00")
                else:
                    forward += packet
            if forward:
                stub.sendall(forward)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "relay":
        sys.exit("usage: fake_stub.py relay GDB_SOCKET")
    relay(sys.argv[2])
