"""PulseClient against a scripted protocol peer on a real socket, for the daemon answers a current daemon
never gives: a future daemon's version mismatch or unknown message types, and a forgotten session."""

from __future__ import annotations

import threading
from typing import Callable

import msgpack
import pytest
import zmq

from protocol.client import PulseClient
from protocol.codec import MAGIC, decode, encode
from protocol.errors import ProtocolError, VersionMismatch
from protocol.messages import Error, Hello, Status, StatusReply, Welcome


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


def test_version_mismatch_names_the_daemons_versions(tmp_path):
    peer = Peer(tmp_path, lambda m: [encode(Error("VERSION_MISMATCH", "daemon speaks 2..3", supported=[2, 3]))])
    try:
        with pytest.raises(VersionMismatch) as err:
            with PulseClient(peer.endpoint, timeout=5) as c:
                c.connect()
        assert err.value.supported == [2, 3] and "2..3" in str(err.value)
        hello = peer.seen[0]
        assert isinstance(hello, Hello) and hello.protocol == 1 and hello.min_protocol == 1
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
