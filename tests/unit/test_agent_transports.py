"""Transports (TCP, unix socket, pty, pyserial URL, paced) and the client's
timeouts and retries, against in-process peers."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from kinspect.inspector.errors import TargetError
from kinspect.inspector.targets.agent import AgentTarget
from kinspect.protocols.agent_client import AgentClient, AgentRemoteError, AgentTimeout
from kinspect.protocols.agent_wire import decode_request, encode_frame, encode_reply
from kinspect.protocols.transports import (
    FdTransport,
    PacedTransport,
    SerialTransport,
    SocketTransport,
    TransportError,
    open_transport,
)
from tests.fake_agent_line import frame_bodies


def echo_server(sock: socket.socket) -> threading.Thread:
    def serve():
        conn, _ = sock.accept()
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def read_exactly(transport, n: int, timeout: float = 2.0) -> bytes:
    out = b""
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        out += transport.read(deadline - time.monotonic())
    return out


def test_tcp_with_nodelay():
    server = socket.create_server(("127.0.0.1", 0))
    echo_server(server)
    with open_transport(f"tcp:127.0.0.1:{server.getsockname()[1]}") as t:
        assert isinstance(t, SocketTransport)
        assert t.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        t.write(b"\x00hello\x00")
        assert read_exactly(t, 7) == b"\x00hello\x00"
        assert t.read(0.05) == b""
    server.close()


@pytest.mark.parametrize("form", ["unix:{}", "{}"])
def test_unix_socket(tmp_path, form):
    path = str(tmp_path / "serial.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    echo_server(server)
    with open_transport(form.format(path)) as t:
        t.write(b"abc")
        assert read_exactly(t, 3) == b"abc"
    server.close()


def test_pty():
    master, slave = os.openpty()
    t = open_transport(os.ttyname(slave))
    assert isinstance(t, FdTransport)
    os.write(master, b"\x00\x01\x02kernel\r\n")
    assert read_exactly(t, 11) == b"\x00\x01\x02kernel\r\n"  # raw mode: nothing translated
    t.write(b"\x00\xff\x00")
    assert os.read(master, 16) == b"\x00\xff\x00"
    t.close()
    os.close(slave)
    os.close(master)


def test_pyserial_url():
    t = open_transport("loop://")
    assert isinstance(t, SerialTransport)
    t.write(b"\x00loop\x00")
    assert read_exactly(t, 6) == b"\x00loop\x00"
    t.close()


def test_bad_specs():
    with pytest.raises(TransportError, match="tcp:HOST:PORT"):
        open_transport("tcp:nohost")
    with pytest.raises(TransportError, match="No such file"):
        open_transport("/nonexistent/ttyUSB9")
    with pytest.raises(TransportError, match="cannot connect"):
        open_transport("unix:/nonexistent/serial.sock")
    with pytest.raises(TransportError, match="neither"):
        open_transport("/etc/hostname")


def test_closed_peer_is_an_error():
    ours, theirs = socket.socketpair()
    t = SocketTransport(ours, "pair")
    theirs.close()
    with pytest.raises(TransportError, match="closed"):
        t.read(1.0)


def test_paced_transport_takes_line_time():
    ours, theirs = socket.socketpair()
    t = PacedTransport(SocketTransport(ours, "pair"), baud=115200)
    theirs.sendall(bytes(1152))  # 0.1 s at 115200 baud, 8N1
    started = time.monotonic()
    assert len(read_exactly(t, 1152)) == 1152
    assert time.monotonic() - started >= 0.095
    t.close()
    theirs.close()


class FakeAgent(threading.Thread):
    """Answers requests on a socket; ``silent`` requests are swallowed N times."""

    def __init__(self, sock: socket.socket, silent: int = 0, console: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.sock = sock
        self.silent = silent
        self.console = console
        self.seen: list[int] = []
        self.start()

    def run(self):
        for body in frame_bodies(self.sock):
            request = decode_request(body)
            self.seen.append(request.id)
            if self.silent:
                self.silent -= 1
                continue
            if request.method == "hello":
                reply = encode_reply(request.id, {"protocol": 1, "agent": "fake", "max_read": 64})
            elif request.method == "read_phys":
                address, size = request.params
                reply = encode_reply(request.id, bytes(size))
            else:
                reply = encode_reply(request.id, None, (2, "unknown method"))
            # An old reply first (a stale id), console text, then the answer.
            self.sock.sendall(
                encode_frame(encode_reply(request.id - 1, None))
                + self.console
                + encode_frame(reply)
            )


def test_client_retries_with_the_same_id_and_skips_stale_replies():
    ours, theirs = socket.socketpair()
    fake = FakeAgent(theirs, silent=2, console=b"[console]")
    seen = bytearray()
    client = AgentClient(
        SocketTransport(ours, "pair"), timeout=0.5, retries=3, on_console=seen.extend
    )
    assert client.hello()["agent"] == "fake"
    assert len(fake.seen) == 3 and len(set(fake.seen)) == 1  # one id, sent three times
    assert client.stats.retries == 2 and client.stats.stale_replies == 1
    assert bytes(seen) == b"[console]"
    with pytest.raises(AgentRemoteError) as error:
        client.call("frobnicate")
    assert error.value.code == 2 and str(error.value) == "agent error 2: unknown method"
    client.close()


def test_client_gives_up_after_its_retries():
    ours, theirs = socket.socketpair()
    FakeAgent(theirs, silent=100)
    client = AgentClient(SocketTransport(ours, "pair"), timeout=0.05, retries=2)
    started = time.monotonic()
    with pytest.raises(AgentTimeout, match="3 attempt"):
        client.call("hello")
    assert 0.15 <= time.monotonic() - started < 3.0
    client.close()


def test_agent_target_reads_in_max_read_chunks_and_wraps_timeouts():
    ours, theirs = socket.socketpair()
    fake = FakeAgent(theirs)
    target = AgentTarget(SocketTransport(ours, "pair"), timeout=0.1)
    assert target.read_physical(0x1000, 200) == bytes(200)
    assert len(fake.seen) == 1 + 4  # hello, then 64+64+64+8
    fake.silent = 100
    with pytest.raises(TargetError, match="did not answer"):
        target.read_physical(0, 8)
    target.close()


def test_a_peer_that_reads_nothing_makes_writes_time_out(monkeypatch):
    import kinspect.protocols.transports as transports

    monkeypatch.setattr(transports, "WRITE_TIMEOUT", 0.2)
    ours, theirs = socket.socketpair()
    t = SocketTransport(ours, "pair")
    with pytest.raises(TransportError, match="took nothing"):
        for _ in range(10000):  # fills both socket buffers, then blocks
            t.write(bytes(65536))
    t.close()
    theirs.close()

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    pipe = FdTransport(read_fd, write_fd, "pipe")
    with pytest.raises(TransportError, match="took nothing"):
        for _ in range(10000):
            pipe.write(bytes(65536))
    pipe.close()


def test_client_refuses_a_request_larger_than_the_agent_takes():
    from kinspect.protocols.agent_client import AgentProtocolError

    ours, theirs = socket.socketpair()
    FakeAgent(theirs)
    client = AgentClient(SocketTransport(ours, "pair"), timeout=0.5)
    with pytest.raises(AgentProtocolError, match="at most 512"):
        client.call("read_phys", "x" * 600)
    assert client.stats.bytes_sent == 0
    client.close()


class ScriptedAgent(threading.Thread):
    """Answers the first request with ``first(id)`` (bytes for the line), and anything after
    it (a NAK, the request again) with the intact reply."""

    def __init__(self, sock: socket.socket, first) -> None:
        super().__init__(daemon=True)
        self.sock, self.first = sock, first
        self.messages: list[list] = []
        self.start()

    def run(self):
        import msgpack

        for body in frame_bodies(self.sock):
            message = msgpack.unpackb(body)
            self.messages.append(message)
            request_id = message[1]
            reply = encode_frame(encode_reply(request_id, b"\x11" * 16))
            self.sock.sendall(self.first(request_id) if len(self.messages) == 1 else reply)


def _damaged(request_id: int) -> bytearray:
    wire = bytearray(encode_frame(encode_reply(request_id, b"\x11" * 16)))
    wire[len(wire) // 2] ^= 0x40
    return wire


@pytest.mark.parametrize(
    "first",
    [
        # damaged, and its closing delimiter lost: no zero will come to end it
        lambda request_id: bytes(_damaged(request_id)[:-1]),
        # damaged, and its opening delimiter lost: text until the closing zero
        lambda request_id: bytes(_damaged(request_id)[1:]),
        # its id damaged (an id the client never sent), and the rest with it
        lambda request_id: bytes(_damaged(request_id + 1000)),
        # a NAK for the request, its id damaged on the way
        lambda request_id: encode_frame(msgpack_nak(request_id ^ 0x5A5A0000)),
    ],
    ids=["closing-lost", "opening-lost", "damaged-id", "nak-damaged-id"],
)
def test_a_damaged_frame_is_asked_for_again_without_a_wait(first):
    """Whatever the damage hid (a delimiter, the id), one NAK or one resend and no wait."""
    ours, theirs = socket.socketpair()
    fake = ScriptedAgent(theirs, first)
    client = AgentClient(SocketTransport(ours, "pair"), timeout=5.0, retries=1)
    assert client.call("read_phys", 0x1000, 16) == b"\x11" * 16
    stats = client.stats
    assert stats.timeouts == 0, stats
    assert stats.naks_sent + stats.resends == 1, stats
    assert len(fake.messages) == 2
    client.close()


def msgpack_nak(request_id: int) -> bytes:
    import msgpack

    return msgpack.packb([2, request_id, True])
