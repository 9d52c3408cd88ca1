"""The daemon as a real subprocess on real tcp sockets, with the tiny StyleGAN2 (one shared daemon).

Covers: results equal to the in-process solver, 8 concurrent clients, cancel (queued and running), a
killed client's job cancelled, hostile input answered or dropped (then a normal job still works),
queue limits, FETCH and idempotent SUBMIT after a reconnect, previews.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import msgpack
import numpy as np
import pytest
import zmq
from daemon_fixture import start_daemon, start_long_job_client

from protocol.client import PulseClient
from protocol.codec import MAGIC, decode, encode
from protocol.errors import JobCancelled, JobFailed, ProtocolError
from protocol.messages import PROTOCOL_VERSION, Error, Hello, ImageBlob, Progress, Result, Submit, Welcome

pytestmark = pytest.mark.timeout(180)

HEARTBEAT_MS = 500
MAX_BLOB = 4 << 20  # small frame cap (and ZMQ_MAXMSGSIZE) so an oversized frame is cheap to send


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_weights):
    d = start_daemon(tmp_path_factory.mktemp("daemon"), weights=tiny_weights, endpoint="tcp",
                     args=["--heartbeat-ms", str(HEARTBEAT_MS), "--max-blob-bytes", str(MAX_BLOB)])
    yield d
    d.stop()


def lowres(seed: int, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).random((size, size, 3)).astype(np.float32)


def quick(seed: int = 0, **kw) -> dict:
    return {"mode": "solve", "candidates": 1, "steps": 1, "seed": seed, **kw}


def wait_running(c: PulseClient, job_id: str, timeout: float = 60.0) -> None:
    """Iterate a job's events until its first PROGRESS (it is on the worker)."""
    deadline = time.monotonic() + timeout
    for ev in c.events(job_id):
        if isinstance(ev, Progress):
            return
        assert not isinstance(ev, (Result,)), "job finished before it could be observed running"
        assert time.monotonic() < deadline, "job never started"
    raise AssertionError("job ended before running")


def drain(c: PulseClient, job_id: str):
    last = None
    for ev in c.events(job_id):
        last = ev if ev is not None else last
    return last


def test_round_trip_equals_in_process_solver(daemon, tiny_weights):
    from pulse_server.models.loading import load_prior
    from pulse_server.solver import SolveConfig, solve

    x = lowres(1)
    with daemon.client() as c:
        welcome = c.connect()
        assert welcome.protocol == PROTOCOL_VERSION and welcome.heartbeat_ms == HEARTBEAT_MS
        states = []
        res = c.run_job(ImageBlob.from_numpy(x), None, quick(seed=7, candidates=2, steps=3), on_state=states.append)
    assert states[0] == "queued" and "running" in states
    if not welcome.models[0]["loaded"]:  # the first job of this daemon: the model loads once, visibly
        assert states.index("loading") < states.index("running")
        with daemon.client() as c:
            assert c.connect().models[0]["loaded"] and c.connect().models[0]["name"] == "tiny-stylegan2-32"
    prior, info = load_prior(tiny_weights, "cpu")
    ref = solve(prior, x, SolveConfig(candidates=2, steps=3, seed=7))
    assert res.model == info.name and res.analysis["factor"] == 4
    assert [c.seed for c in res.candidates] == [c.seed for c in ref.candidates]
    for got, want in zip(res.candidates, ref.candidates):
        img = got.image.to_numpy()
        assert img.shape == (32, 32, 3) and got.image.dtype == "f32"
        np.testing.assert_allclose(img, want.image, atol=1e-5)
        assert got.downscale_error == pytest.approx(want.downscale_mse, rel=1e-4, abs=1e-7)
        assert got.steps == want.steps and got.eps_reached == want.eps_reached


def test_depixelate_round_trip_equals_in_process_runner(daemon, tiny_weights):
    from pulse_server import pipeline, runner
    from pulse_server.models.loading import load_prior

    rng = np.random.default_rng(3)
    blocks = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
    region = np.repeat(np.repeat(blocks, 6, 0), 6, 1)  # a 48×48 mosaic of 6-px blocks
    region = np.concatenate([region, np.full((48, 48, 1), 255, np.uint8)], axis=2)  # RGBA
    params = {"mode": "depixelate", "candidates": 1, "steps": 2, "seed": 11, "block": 6}
    with daemon.client() as c:
        res = c.run_job(ImageBlob.from_numpy(region), None, params)
    prior, _ = load_prior(tiny_weights, "cpu")
    ref = runner.depixelate(prior, region.copy(), None, pipeline.DepixParams(candidates=1, steps=2, seed=11, block=6))
    got = res.candidates[0].image.to_numpy()
    assert got.shape == region.shape and got.dtype == region.dtype
    np.testing.assert_allclose(got.astype(np.int16), ref.patches[0].astype(np.int16), atol=1)
    assert res.analysis["block"] == ref.mosaic.block
    assert res.analysis["method"] == ref.method == "ilo"
    assert res.analysis["theta"] == [[round(v, 5) for v in c.theta] for c in ref.candidates]


def test_eight_concurrent_clients_get_their_own_results(daemon):
    results: dict[int, Result] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            with daemon.client(client_name=f"c{i}") as c:
                results[i] = c.run_job(ImageBlob.from_numpy(lowres(100 + i)), None, quick(seed=1000 + i), job_id=f"conc-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert sorted(results) == list(range(8))
    for i, res in results.items():
        assert res.job_id == f"conc-{i}" and res.candidates[0].seed == 1000 + i
    # Different inputs and seeds: no two clients got the same image back.
    images = {res.candidates[0].image.to_numpy().tobytes() for res in results.values()}
    assert len(images) == 8


def test_cancel_running_and_queued_jobs(daemon):
    with daemon.client() as c:
        running = c.submit(ImageBlob.from_numpy(lowres(2)), None, quick(steps=5000)).job_id
        wait_running(c, running)
        queued = c.submit(ImageBlob.from_numpy(lowres(3)), None, quick(steps=5000))
        assert queued.position >= 1 and queued.state == "queued"
        c.cancel(queued.job_id)
        end = drain(c, queued.job_id)
        assert end.code == "CANCELLED"
        t0 = time.monotonic()
        c.cancel(running)
        end = drain(c, running)
        assert end.code == "CANCELLED" and time.monotonic() - t0 < 10
        c.cancel(running)  # idempotent: cancelling a finished job is fine
        jobs = {j["job_id"]: j["state"] for j in c.status().jobs}
        assert jobs[running] == "cancelled" and jobs[queued.job_id] == "cancelled"
        # run_job's should_cancel path raises JobCancelled.
        with pytest.raises(JobCancelled):
            c.run_job(ImageBlob.from_numpy(lowres(4)), None, quick(steps=5000), should_cancel=lambda: True)


def test_killed_client_has_its_job_cancelled(daemon):
    proc = start_long_job_client(daemon.endpoint, daemon.token)
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
        with daemon.client() as c:
            assert c.status().server["running"] == 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            deadline = time.monotonic() + 20
            while True:
                server = c.status().server
                if server["running"] == 0 and server["queued"] == 0:
                    break
                assert time.monotonic() < deadline, f"killed client's job still running: {server}"
                time.sleep(0.2)
            assert server["sessions"] == 1  # only us: the dead client's session is gone
            res = c.run_job(ImageBlob.from_numpy(lowres(5)), None, quick())
            assert len(res.candidates) == 1
    finally:
        proc.kill()
    assert "client vanished" in daemon.output()


def _raw(daemon) -> zmq.Socket:
    return daemon.raw_socket()  # a bare DEALER with the PLAIN credentials the tcp handshake asks for


def _ask(s: zmq.Socket, frames, timeout: float = 10.0):
    s.send_multipart(frames)
    if not s.poll(int(timeout * 1000)):
        return None
    return decode(s.recv_multipart())


def test_hostile_input_is_answered_or_dropped_and_daemon_survives(daemon):
    s = _raw(daemon)
    try:
        cases = [
            ([b"garbage bytes"], "MALFORMED"),
            ([b"NOTPULSE", b"\x80"], "BAD_MAGIC"),
            ([MAGIC, msgpack.packb({"type": "HELLO", "protocol": 1})[:-4]], "MALFORMED"),  # truncated msgpack
            ([MAGIC, msgpack.packb({"type": "HELLO", "protocol": "one"})], "BAD_FIELD"),  # wrong type
            ([MAGIC, msgpack.packb({"type": "EXPLODE"})], "UNKNOWN_TYPE"),
            ([MAGIC, msgpack.packb({"type": "WELCOME", "protocol": 1})], "UNEXPECTED_TYPE"),
            ([MAGIC, msgpack.packb({"type": "HELLO", "client": "x" * 100_000})], "HEADER_TOO_LARGE"),
            (encode(Submit("early", ImageBlob(1, 1, 3, "u8", b"abc"))), "HANDSHAKE_REQUIRED"),
            (encode(Hello(protocol=99, min_protocol=99, token=daemon.token)), "VERSION_MISMATCH"),
            (encode(Hello(token="wrong-token")), "BAD_TOKEN"),
            (encode(Hello(token=None)), "BAD_TOKEN"),
        ]
        for frames, code in cases:
            reply = _ask(s, frames)
            assert isinstance(reply, Error) and reply.code == code, (frames[:2], reply)
            if code == "VERSION_MISMATCH":
                assert reply.supported == [PROTOCOL_VERSION]
        # Authenticated, then a header claiming 100000×100000 pixels: refused before any allocation.
        assert isinstance(_ask(s, encode(Hello(token=daemon.token, client="raw"))), Welcome)
        claim = {"type": "SUBMIT", "job_id": "huge", "image": 0, "params": {},
                 "blobs": [{"kind": "image", "w": 100_000, "h": 100_000, "c": 4, "dtype": "u8", "nbytes": 4 * 10**10}]}
        reply = _ask(s, [MAGIC, msgpack.packb(claim), b"\x00" * 64])
        assert isinstance(reply, Error) and reply.code == "TOO_LARGE"
        # A frame over ZMQ_MAXMSGSIZE: libzmq drops the connection, nothing is answered or allocated.
        too_big = encode(Submit("big", ImageBlob(1024, 1024, 4, "u16", bytes(1024 * 1024 * 8))))
        assert _ask(s, too_big, timeout=2.0) is None
    finally:
        s.close(0)
    with pytest.raises(ProtocolError) as err:
        with daemon.client(token="not-the-token") as c:
            c.connect()
    assert err.value.code == "BAD_TOKEN"
    with daemon.client() as c:
        res = c.run_job(ImageBlob.from_numpy(lowres(6)), None, quick())
        assert len(res.candidates) == 1


def test_a_burst_of_random_messages_does_not_hurt_the_daemon(daemon):
    rng = np.random.default_rng(1234)
    s = _raw(daemon)
    try:
        assert isinstance(_ask(s, encode(Hello(token=daemon.token, client="fuzz"))), Welcome)  # also as a session
        for i in range(300):
            n = int(rng.integers(1, 5))
            frames = [rng.bytes(int(rng.integers(0, 200))) for _ in range(n)]
            if i % 2:
                fields = {"type": str(rng.choice(["SUBMIT", "CANCEL", "FETCH", "HELLO", "STATUS", "PING", "X"])),
                          "job_id": rng.bytes(4).hex(), "image": int(rng.integers(-1, 3)), "params": {"steps": int(rng.integers(-5, 5))},
                          "blobs": [{"w": int(rng.integers(-1, 5)), "h": 2, "c": 1, "dtype": "u8", "nbytes": int(rng.integers(0, 12))}]}
                frames = [MAGIC, msgpack.packb(fields), *frames[: int(rng.integers(0, 3))]]
            s.send_multipart(frames)
        time.sleep(0.5)
    finally:
        s.close(0)
    assert daemon.alive()
    with daemon.client() as c:
        assert len(c.run_job(ImageBlob.from_numpy(lowres(10)), None, quick()).candidates) == 1


def test_bad_params_mask_and_queue_full(daemon):
    img = ImageBlob.from_numpy(lowres(7))
    with daemon.client() as c:
        for params in [quick(steps=0), quick(mode="dream"), quick(candidates="3"), quick(eps=-1)]:
            with pytest.raises(ProtocolError) as err:  # refused by the client, against the daemon's WELCOME spec
                c.run_job(img, None, params)
            assert err.value.code == "BAD_PARAMS"
        with pytest.raises(JobFailed) as err:
            c.run_job(img, ImageBlob.from_numpy(np.zeros((4, 4), np.uint8)), quick())
        assert err.value.code == "BAD_MASK"
        long = quick(steps=5000)
        first = c.submit(img, None, long).job_id
        wait_running(c, first)
        queued = [c.submit(img, None, long).job_id for _ in range(8)]  # the per-client cap
        with pytest.raises(JobFailed) as err:
            c.submit(img, None, long)
        assert err.value.code == "QUEUE_FULL" and err.value.retryable
        for jid in [*queued, first]:
            c.cancel(jid)
        for jid in [*queued, first]:
            assert drain(c, jid).code == "CANCELLED"


def test_fetch_and_idempotent_submit_after_reconnect(daemon):
    job_id = f"fetch-{uuid.uuid4().hex[:8]}"
    img = ImageBlob.from_numpy(lowres(8))
    with daemon.client() as c:
        res = c.run_job(img, None, quick(seed=3), job_id=job_id)
        session = c.session
    with daemon.client() as c2:  # a new connection (new socket identity) with the same session secret
        c2.session = session
        c2.connect()
        again = c2.fetch(job_id)
        assert again.job_id == job_id
        assert again.candidates[0].image.to_numpy().tobytes() == res.candidates[0].image.to_numpy().tobytes()
        assert c2.submit(img, None, quick(seed=3), job_id=job_id).state == "done"  # not run twice
        with pytest.raises(JobFailed) as err:
            c2.fetch("no-such-job")
        assert err.value.code == "NOT_FOUND"
    with daemon.client() as stranger:  # another session cannot fetch it
        with pytest.raises(JobFailed):
            stranger.fetch(job_id)


def test_previews_are_small_jpegs_at_the_clients_rate(daemon):
    previews: list[bytes] = []
    progress: list[Progress] = []
    with daemon.client() as c:
        c.run_job(ImageBlob.from_numpy(lowres(9)), None, quick(steps=12), on_preview=previews.append,
                  on_progress=progress.append, preview_interval=0.01)
    assert progress and progress[-1].total == 12 and all(p.job_id for p in progress)
    assert previews and all(p[:2] == b"\xff\xd8" for p in previews)


def test_depixelate_jobs_send_previews_and_name_the_model(daemon, tiny_weights):
    # A 40×40 u8 region holding an 8×8 grid of 5-px blocks: the editors' mode.
    cells = (np.random.default_rng(3).random((8, 8, 3)) * 255).astype(np.uint8)
    region = np.repeat(np.repeat(cells, 5, axis=0), 5, axis=1)
    previews: list[bytes] = []
    with daemon.client() as c:
        res = c.run_job(ImageBlob.from_numpy(region), None, {"mode": "depixelate", "candidates": 1, "steps": 12, "seed": 0},
                        on_preview=previews.append, preview_interval=0.01)
    assert previews and all(p[:2] == b"\xff\xd8" for p in previews)
    # The RESULT names the loaded checkpoint (what the layer metadata records), not just its family.
    assert res.model == tiny_weights.stem


@pytest.mark.parametrize("mode", ["solve", "depixelate"])
def test_infinite_pixels_are_refused_by_both_modes_alike(daemon, mode):
    region = np.full((8, 8, 3), 0.5, np.float32)
    region[2, 3, 1] = np.inf
    region[5, 5, 0] = -np.inf
    with daemon.client() as c:
        with pytest.raises(JobFailed) as err:
            c.run_job(ImageBlob.from_numpy(region), None, quick(mode=mode, steps=2))
    assert err.value.code == "BAD_PIXELS" and "infinite" in err.value.message
