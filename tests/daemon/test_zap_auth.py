"""tcp peers authenticate during the ZMTP handshake (PLAIN + the daemon's ZAP handler), so nothing a peer
without the token sends is ever delivered to the daemon's loop, and a client with a wrong
or missing token gets a clear BAD_TOKEN quickly instead of libzmq's silent retries."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import zmq
from daemon_fixture import isolated_env, plain_credentials, server_command, start_daemon
from zmq.utils.monitor import recv_monitor_message

from protocol.client import PulseClient
from protocol.codec import decode
from protocol.errors import ProtocolError
from protocol.messages import Error, ImageBlob

pytestmark = pytest.mark.timeout(120)

FRAME = 8 << 20  # 8 MiB per frame, well under ZMQ_MAXMSGSIZE (1 GiB with the default limits)
FRAMES = 32  # 256 MiB in one multipart message if it were delivered


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("zap"), weights="noop:", endpoint="tcp", args=["--no-log-file"])
    yield d
    d.stop()


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _big_garbage() -> list:
    blob = bytes(FRAME)  # one buffer referenced by every frame (copy=False): cheap for the sender
    return [b"garbage, not PULSE/1", *([blob] * FRAMES)]


def _status(d) -> dict:
    with d.client() as c:
        return c.status().server


def test_unauthenticated_peers_never_get_a_message_delivered(daemon):
    ctx = zmq.Context()  # private: no PLAIN defaults from the fixture on Context.instance()
    try:
        rss0 = _rss_kib(daemon.proc.pid)
        refused0 = _status(daemon)["refused_peers"]
        peers = []
        try:
            for password in (None, b"not-the-token"):  # NULL mechanism (no credentials), PLAIN with a wrong token
                s = ctx.socket(zmq.DEALER)
                s.linger = 0
                if password is not None:
                    s.plain_username, s.plain_password = b"pulse", password
                s.sndtimeo = 3000  # a peer refused before it sends has no pipe left: its send can only time out
                monitor = s.get_monitor_socket()
                s.connect(daemon.endpoint)
                peers.append((s, monitor))
                try:
                    s.send_multipart(_big_garbage(), copy=False)
                except zmq.Again:
                    pass  # refused first: nothing could be delivered
            # The wrong token is refused by the ZAP handler; the NULL peer fails the mechanism negotiation.
            events: list[list[int]] = [[], []]
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not (zmq.EVENT_HANDSHAKE_FAILED_AUTH in events[1] and events[0]):
                for i, (_, monitor) in enumerate(peers):
                    while monitor.poll(50):
                        events[i].append(recv_monitor_message(monitor)["event"])
            assert zmq.EVENT_HANDSHAKE_FAILED_AUTH in events[1], events[1]
            assert zmq.EVENT_HANDSHAKE_SUCCEEDED not in events[0] + events[1], events
            time.sleep(1.0)  # libzmq keeps reconnecting and being refused; give a delivery every chance
            for s, _ in peers:
                assert not s.poll(200)  # never answered (a delivered message would get ERROR(BAD_MAGIC))
            assert _status(daemon)["refused_peers"] > refused0
            out = daemon.output()
            assert "refused a PLAIN peer" in out and "bad message" not in out
            rss1 = _rss_kib(daemon.proc.pid)
            if rss0 is not None and rss1 is not None:  # Linux: the 2 × 256 MiB never reached the daemon
                assert rss1 - rss0 < 64 * 1024, (rss0, rss1)
        finally:
            for s, monitor in peers:
                s.disable_monitor()
                monitor.close(0)
                s.close(0)
        # Control: the same message from a peer with the token *is* delivered (and answered), so the checks
        # above would have seen a delivery.
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        plain_credentials(s, daemon.token)
        s.connect(daemon.endpoint)
        try:
            s.send_multipart(_big_garbage(), copy=False)
            assert s.poll(20_000)
            reply = decode(s.recv_multipart())
            assert isinstance(reply, Error) and reply.code == "BAD_MAGIC"
            assert "bad message" in daemon.output()
        finally:
            s.close(0)
    finally:
        ctx.destroy(linger=0)  # every socket, whatever failed: a context left open hangs the interpreter's exit


def test_wrong_or_missing_token_is_a_clear_quick_error_and_the_right_one_works(daemon, tmp_path, monkeypatch):
    t0 = time.monotonic()
    with pytest.raises(ProtocolError) as err:
        with PulseClient(daemon.endpoint, token="not-the-token", timeout=15) as c:
            c.connect()
    assert err.value.code == "BAD_TOKEN" and time.monotonic() - t0 < 3
    assert "token" in str(err.value) and "PULSE_TOKEN" in str(err.value)
    # No token at all: no PULSE_TOKEN, an empty runtime dir. The message says where the file would be.
    monkeypatch.delenv("PULSE_TOKEN", raising=False)
    monkeypatch.setenv("PULSE_RUNTIME_DIR", str(tmp_path / "empty"))
    t0 = time.monotonic()
    with pytest.raises(ProtocolError) as err:
        with PulseClient(daemon.endpoint, timeout=15) as c:
            c.connect()
    assert err.value.code == "BAD_TOKEN" and time.monotonic() - t0 < 3
    assert str(tmp_path / "empty" / "token") in str(err.value)
    # The token file is found and used.
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "token").write_text(daemon.token + "\n")
    with PulseClient(daemon.endpoint, timeout=15) as c:
        res = c.run_job(ImageBlob(4, 4, 4, "u8", bytes(range(64))), None, {})
        assert bytes(res.candidates[0].image.data) == bytes(range(64))


def test_a_token_plain_cannot_carry_is_refused_at_start(tmp_path):
    env = isolated_env(tmp_path, {"PULSE_TOKEN": "x" * 300})
    out = subprocess.run(server_command("run", "--endpoint", "tcp://127.0.0.1:0", "--weights", "noop:", "--no-log-file"),
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "255 bytes" in out.stderr, out.stderr

