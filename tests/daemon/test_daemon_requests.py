"""Client requests handled one at a time over a real socket, without the loop's thread: the handshake, SUBMIT's
idempotence, CANCEL, STATUS, FETCH of a kept result, BYE."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from daemon_parts import read_all

from protocol.codec import MAGIC
from protocol.messages import (
    PROTOCOL_VERSION,
    Accepted,
    Bye,
    Cancel,
    Error,
    Failed,
    Fetch,
    Hello,
    ImageBlob,
    JobState,
    Ok,
    Status,
    StatusReply,
    Submit,
    Welcome,
)
from pulse_server.daemon import Daemon, DaemonConfig

pytestmark = pytest.mark.timeout(60)

REGION = ImageBlob(4, 4, 1, "u8", b"\0" * 16)


@pytest.fixture
def daemon():
    folder = tempfile.mkdtemp(prefix="pd-", dir="/tmp")
    d = Daemon(DaemonConfig(endpoint=f"ipc://{Path(folder) / 'd.sock'}", weights="noop:"))
    d.transport.bind(d.config.endpoint, locked=True)  # no worker, no loop: jobs stay queued
    import zmq

    peer = zmq.Context.instance().socket(zmq.DEALER)
    peer.linger = 0
    peer.connect(d.config.endpoint)
    yield d, peer
    peer.close(0)
    d.transport.close_sockets(0)
    d.transport.terminate()
    shutil.rmtree(folder, ignore_errors=True)


def ask(d: Daemon, peer, *msgs) -> list:
    from protocol.codec import encode

    for m in msgs:
        peer.send_multipart(m if isinstance(m, list) else encode(m))
        assert d.transport.router.poll(5000)
        for frames in d.transport.receive():
            d.requests.on_frames(frames)
    return read_all(peer)


def test_nothing_but_hello_is_answered_before_the_handshake(daemon):
    d, peer = daemon
    (err,) = ask(d, peer, Status())
    assert isinstance(err, Error) and err.code == "HANDSHAKE_REQUIRED" and err.retryable
    (err,) = ask(d, peer, [MAGIC, b"\xc1"])
    assert isinstance(err, Error) and err.code == "MALFORMED"
    (err,) = ask(d, peer, Hello(protocol=99, min_protocol=99))
    assert isinstance(err, Error) and err.code == "VERSION_MISMATCH" and err.supported == [PROTOCOL_VERSION]


def test_submit_is_idempotent_and_cancel_ends_the_queued_job_for_fetch(daemon):
    d, peer = daemon
    (welcome,) = ask(d, peer, Hello(client="t", session="s1"))
    assert isinstance(welcome, Welcome) and welcome.session == "s1" and welcome.models[0]["name"] == "noop"
    (acc,) = ask(d, peer, Submit("j1", REGION, None, {"mode": "solve", "steps": 3}))
    assert isinstance(acc, Accepted) and acc.position == 1 and acc.state == "queued"
    (again,) = ask(d, peer, Submit("j1", REGION, None, {"mode": "solve", "steps": 3}))
    assert isinstance(again, Accepted) and again.position == 1 and len(d.queue) == 1
    (status,) = ask(d, peer, Status())
    assert isinstance(status, StatusReply) and status.jobs == [
        {"job_id": "j1", "state": "queued", "position": 1, "step": 0, "total": 0}]
    assert status.server["queued"] == 1 and status.server["sessions"] == 1
    (state,) = ask(d, peer, Fetch("j1"))
    assert isinstance(state, JobState) and state.state == "queued" and state.position == 1
    failed, ok = ask(d, peer, Cancel("j1"))
    assert isinstance(failed, Failed) and failed.code == "CANCELLED" and isinstance(ok, Ok)
    (kept,) = ask(d, peer, Fetch("j1"))
    assert isinstance(kept, Failed) and kept.code == "CANCELLED"
    (resubmit,) = ask(d, peer, Submit("j1", REGION, None, {"mode": "solve"}))
    assert isinstance(resubmit, Failed) and resubmit.code == "CANCELLED" and len(d.queue) == 0


def _with_params(msg: Submit, params: dict) -> list:
    """`msg`'s frames with `params` put in past the encoder, which refuses what breaks the job contract."""
    import msgpack

    from protocol.codec import encode

    frames = encode(msg)
    header = msgpack.unpackb(frames[1])
    header["params"] = params
    return [frames[0], msgpack.packb(header), *frames[2:]]


def test_a_refused_submit_says_why_and_queues_nothing(daemon):
    d, peer = daemon
    ask(d, peer, Hello(client="t"))
    (bad,) = ask(d, peer, _with_params(Submit("j", REGION), {"mode": "paint"}))  # refused by the decoder
    assert isinstance(bad, Failed) and bad.job_id == "j" and bad.code == "BAD_PARAMS" and len(d.queue) == 0
    (bad,) = ask(d, peer, Submit("k", REGION, None, {"model": "/etc/passwd"}))  # by the daemon's own spec
    assert isinstance(bad, Failed) and bad.code == "BAD_PARAMS" and "params.model" in bad.message
    assert len(d.queue) == 0
    (bad,) = ask(d, peer, Submit("x" * 200, REGION))
    assert isinstance(bad, Error) and bad.code == "BAD_FIELD"
    (gone,) = ask(d, peer, Fetch("nope"))
    assert isinstance(gone, Failed) and gone.code == "NOT_FOUND"


def test_bye_forgets_the_session_and_cancels_its_jobs(daemon):
    d, peer = daemon
    ask(d, peer, Hello(client="t", session="s1"), Submit("j", REGION, None, {"mode": "solve"}))
    job = d.sessions["s1"].jobs["j"]
    ask(d, peer, Bye())
    assert "s1" not in d.sessions and job.cancel_event.is_set() and len(d.queue) == 0
    (err,) = ask(d, peer, Status())
    assert isinstance(err, Error) and err.code == "HANDSHAKE_REQUIRED"
