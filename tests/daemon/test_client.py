"""PulseClient against a scripted protocol peer on a real socket, for the daemon answers a current daemon
never gives: a future daemon's version mismatch or unknown message types, and a forgotten session."""

from __future__ import annotations

import threading
from collections.abc import Callable

import msgpack
import pytest
import zmq

from protocol.client import PulseClient
from protocol.codec import MAGIC, decode, encode
from protocol.errors import ProtocolError, VersionMismatch
from protocol.messages import MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, Error, Hello, Status, StatusReply, Welcome


class Peer:
    """A ROUTER on a real ipc socket whose answers come from `script(msg) -> list[frames]`."""

    def __init__(self, tmp_path, script: Callable) -> None:
        self.endpoint = f"ipc://{tmp_path}/peer.sock"
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.linger = 0
        self.sock.bind(self.endpoint)
        self.script = script
        self.seen: list = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self.sock.poll(50):
                continue
            ident, *frames = self.sock.recv_multipart()
            msg = decode(frames)
            self.seen.append(msg)
            for reply in self.script(msg):
                self.sock.send_multipart([ident, *reply])

    def close(self) -> None:
        self._stop.set()
        self.thread.join(5)
        self.sock.close(0)
        self.ctx.term()


def _welcome() -> list:
    return encode(Welcome(1, "9.9", "s", 1000, "cpu"))


@pytest.mark.parametrize("supported, advice", [([1], "update pulse-server"), ([3, 4], "update the plug-in")])
def test_version_mismatch_names_the_versions_and_what_to_update(tmp_path, supported, advice):
    peer = Peer(tmp_path, lambda m: [encode(Error("VERSION_MISMATCH", "daemon speaks them", supported=supported))])
    try:
        with pytest.raises(VersionMismatch) as err:
            with PulseClient(peer.endpoint, timeout=5) as c:
                c.connect()
        text = str(err.value)
        assert err.value.supported == supported and advice in text and "daemon speaks them" in text
        assert f"speaks protocol {PROTOCOL_VERSION}, the daemon speaks {'/'.join(map(str, supported))}" in text
        hello = peer.seen[0]
        assert isinstance(hello, Hello) and hello.protocol == PROTOCOL_VERSION
        assert hello.min_protocol == MIN_PROTOCOL_VERSION
    finally:
        peer.close()


def test_unknown_message_types_and_fields_from_a_newer_daemon_are_ignored(tmp_path):
    future = [MAGIC, msgpack.packb({"type": "FUTURE_NOTICE", "x": 1})]
    welcome_plus = [MAGIC, msgpack.packb({"type": "WELCOME", "protocol": 1, "server_version": "9", "session": "s",
                                          "heartbeat_ms": 1000, "device": "cpu", "new_field": [1, 2]})]
    peer = Peer(tmp_path, lambda m: [future, welcome_plus] if isinstance(m, Hello) else [])
    try:
        with PulseClient(peer.endpoint, timeout=5) as c:
            assert c.connect().server_version == "9"
    finally:
        peer.close()


def test_a_forgotten_session_is_re_established_transparently(tmp_path):
    asked = {"status": 0}

    def script(m):
        if isinstance(m, Hello):
            return [_welcome()]
        if isinstance(m, Status):
            asked["status"] += 1
            if asked["status"] == 1:  # as after the daemon expired an idle session
                return [encode(Error("HANDSHAKE_REQUIRED", "send HELLO first", retryable=True))]
            return [encode(StatusReply([], {"pid": 1}))]
        return []

    peer = Peer(tmp_path, script)
    try:
        with PulseClient(peer.endpoint, timeout=5) as c:
            c.connect()
            assert c.status().server == {"pid": 1}
        hellos = [m for m in peer.seen if isinstance(m, Hello)]
        assert len(hellos) == 2 and hellos[0].session == hellos[1].session  # same session secret both times
    finally:
        peer.close()


def test_a_silent_listener_is_reported_as_not_running(tmp_path):
    peer = Peer(tmp_path, lambda m: [])
    try:
        with pytest.raises(ProtocolError) as err:
            with PulseClient(peer.endpoint, timeout=1) as c:
                c.connect()
        assert err.value.code == "DAEMON_NOT_RUNNING" and "no answer" in str(err.value)
    finally:
        peer.close()


class _StalePoll:
    """A real socket whose POLLOUT answer is stale: it still says "writable" after its connection died. This is
    the race between a poll and the send after it (a failed handshake drops a DEALER's only pipe for good),
    which a loaded machine widens, made deterministic."""

    def __init__(self, sock: zmq.Socket) -> None:
        self._sock = sock

    def poll(self, timeout: int | None = None, flags: int = zmq.POLLIN) -> int:
        return zmq.POLLOUT if flags & zmq.POLLOUT else self._sock.poll(timeout, flags)

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


def test_a_send_returns_within_the_timeout_when_the_connection_dies_after_the_poll():
    ctx = zmq.Context()
    dead = ctx.socket(zmq.DEALER)  # no pipe at all: a blocking send on it never returns
    dead.linger = 0
    client = PulseClient("ipc:///nonexistent/pulse.sock", timeout=0.5)
    client._sock = _StalePoll(dead)
    outcome: list[BaseException | None] = []

    def send() -> None:
        try:
            client._send(Status())
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=send, daemon=True)
    t.start()
    t.join(5)
    assert not t.is_alive(), "the send blocked past the client's 0.5 s timeout"
    assert isinstance(outcome[0], ProtocolError) and outcome[0].code == "TIMEOUT", outcome
    dead.close(0)
    ctx.term()
