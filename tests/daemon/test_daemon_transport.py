"""The daemon's sockets and flow control over a real ipc socket: sends that go, wait or are dropped, the
frame cap, the loop's wake-up, and the checks on the endpoint before a bind."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from daemon_parts import bound_transport, close, connect, read_all, receive_one

from protocol.codec import DEFAULT_LIMITS, Limits
from protocol.messages import JobState, Ping, Progress
from pulse_server.daemon import max_frame_bytes
from pulse_server.daemon.endpoint import check_endpoint, remove_stale_socket
from pulse_server.daemon.outbox import MAX_OUTBOX, Outbox
from pulse_server.daemon.sessions import SessionTable
from pulse_server.errors import PulseError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def wired():
    t = bound_transport()
    peer = connect(t)
    peer.send(b"hi")
    identity = receive_one(t)[0].bytes
    table = SessionTable()
    s, _ = table.attach(identity, "sid", "test", time.monotonic())
    yield t, peer, table, s
    close(t, peer)


def test_send_reaches_the_peer_and_an_unknown_identity_is_gone(wired):
    t, peer, _, s = wired
    assert t.send(s.identity, [b"x"]) == "ok"
    assert peer.recv_multipart() == [b"x"]
    assert t.send(b"nobody", [b"x"]) == "gone"


def test_a_session_without_connection_keeps_its_messages_until_it_is_back(wired):
    t, peer, table, s = wired
    out = Outbox(t, DEFAULT_LIMITS, table.lost)
    identity = s.identity
    table.lost(s)
    out.send(s, JobState("j", "running"))
    out.send(s, Ping(1.0), droppable=True)  # droppable: now or never
    assert len(s.outbox) == 1 and read_all(peer, 0.1) == []
    table.attach(identity, "sid", "test", time.monotonic())
    out.flush(table)
    assert [type(m) for m in read_all(peer)] == [JobState]


def test_progress_is_coalesced_to_the_latest_and_spaced_out(wired):
    t, peer, table, s = wired
    out = Outbox(t, DEFAULT_LIMITS, table.lost)
    for step in (1, 2, 3):
        out.update(s, "j", Progress("j", step, 3))
    out.flush(table)
    out.update(s, "j", Progress("j", 4, 5))
    out.flush(table)  # within PROGRESS_INTERVAL of the last one: held back, not queued
    assert "j" in s.progress
    assert [m.step for m in read_all(peer)] == [3]
    out.flush(table)
    assert [m.step for m in read_all(peer)] == [4]


def test_outbox_keeps_only_the_newest_messages_of_a_client_that_never_reads(wired):
    t, peer, table, s = wired
    out = Outbox(t, DEFAULT_LIMITS, table.lost)
    table.lost(s)
    for i in range(MAX_OUTBOX + 5):
        out.send(s, JobState(f"j{i}", "running"))
    assert len(s.outbox) == MAX_OUTBOX


def test_a_full_pipe_answers_again_instead_of_blocking():
    t = bound_transport()
    peer = connect(t, RCVHWM=1)
    try:
        peer.send(b"hi")
        identity = receive_one(t)[0].bytes
        frame = b"\0" * (1 << 20)
        results = [t.send(identity, [frame]) for _ in range(2000)]
        assert "again" in results and "gone" not in results
    finally:
        close(t, peer)


def test_wake_from_another_thread_ends_the_poll():
    t = bound_transport()
    try:
        threading.Timer(0.1, t.wake).start()
        t0 = time.monotonic()
        assert t.wake_recv.poll(5000)
        assert time.monotonic() - t0 < 2.0
        t.clear_wake()
        assert not t.wake_recv.poll(0)
    finally:
        close(t)


def test_frame_cap_is_the_biggest_legal_image_or_header():
    small = Limits(max_pixels=100, max_blob_bytes=1 << 30)
    assert max_frame_bytes(small) == max(small.max_header_bytes, 100 * 4 * 4)
    assert max_frame_bytes(DEFAULT_LIMITS) == DEFAULT_LIMITS.max_blob_bytes


def test_a_frame_over_the_cap_never_reaches_the_loop():
    t = bound_transport(Limits(max_pixels=64, max_blob_bytes=1 << 20))
    peer = connect(t)
    try:
        peer.send(b"\0" * (max_frame_bytes(t.limits) + 1))
        peer.send(b"\0" * max_frame_bytes(t.limits))  # at the cap: legal
        got = []
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if t.router.poll(50):
                got.append(len(t.router.recv_multipart()[1]))
        assert max_frame_bytes(t.limits) + 1 not in got
    finally:
        close(t, peer)


def test_endpoint_checks_refuse_what_must_not_be_bound(tmp_path):
    with pytest.raises(PulseError) as e:
        check_endpoint("udp://x", allow_remote=False)
    assert e.value.code == "BAD_ENDPOINT"
    with pytest.raises(PulseError) as e:
        check_endpoint("tcp://0.0.0.0:1", allow_remote=False)
    assert e.value.code == "REMOTE_BIND"
    check_endpoint("tcp://0.0.0.0:1", allow_remote=True)
    doc = tmp_path / "notes.txt"
    doc.write_text("mine")
    with pytest.raises(PulseError) as e:
        check_endpoint(f"ipc://{doc}", allow_remote=False)
    assert e.value.code == "BAD_ENDPOINT" and doc.read_text() == "mine"


def test_a_stale_socket_is_removed_only_under_the_lock_and_a_live_one_never(tmp_path):
    path = tmp_path / "s.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    with pytest.raises(PulseError) as e:
        remove_stale_socket(path, locked=False)
    assert e.value.code == "ENDPOINT_IN_USE" and path.exists()
    remove_stale_socket(path, locked=True)
    assert not path.exists()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen(1)
    try:
        with pytest.raises(PulseError) as e:
            remove_stale_socket(path, locked=True)
        assert e.value.code == "ENDPOINT_IN_USE" and path.exists()
    finally:
        live.close()
