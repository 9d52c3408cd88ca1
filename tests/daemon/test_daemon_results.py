"""Kept results (FETCH, idempotent re-SUBMIT): bounded in bytes and in time, one per job id, and what a job's
end stores and sends."""

from __future__ import annotations

import time

from daemon_parts import bound_transport, close, connect, read, receive_one

from protocol.codec import DEFAULT_LIMITS, decode
from protocol.job import JobSettings
from protocol.messages import Failed, ImageBlob, Result
from pulse_server.daemon.events import JobTracker
from pulse_server.daemon.outbox import Outbox
from pulse_server.daemon.results import ResultStore
from pulse_server.daemon.sessions import SessionTable
from pulse_server.jobs import Job, JobQueue


def _ended(sid: str, jid: str, nbytes: int, finished: float = 0.0) -> Job:
    job = Job(jid, sid, JobSettings(), None, None, state="done")
    job.final_frames, job.final_bytes, job.finished = [b"\0" * nbytes], nbytes, finished
    return job


def test_the_oldest_results_go_first_when_the_bytes_run_over():
    store = ResultStore(max_bytes=250, ttl=60)
    for jid in ("a", "b", "c"):
        store.keep(_ended("s", jid, 100))
    assert ("s", "a") not in store and ("s", "b") in store and ("s", "c") in store
    assert store.bytes == 200 and len(store) == 2


def test_a_result_kept_again_replaces_the_first_and_its_bytes():
    store = ResultStore(max_bytes=1000, ttl=60)
    store.keep(_ended("s", "a", 100))
    store.keep(_ended("s", "a", 300))
    assert len(store) == 1 and store.bytes == 300 and store.get("s", "a").final_bytes == 300


def test_results_expire_after_their_time_to_live_and_only_for_their_session():
    store = ResultStore(max_bytes=1000, ttl=10)
    store.keep(_ended("s", "old", 1, finished=1.0))
    store.keep(_ended("t", "new", 1, finished=8.0))
    assert [j.job_id for j in store.of_session("t")] == ["new"]
    store.expire(now=12.0)
    assert ("s", "old") not in store and ("t", "new") in store and store.bytes == 1
    assert store.get("s", "new") is None


def test_a_jobs_end_is_sent_kept_and_its_inputs_released():
    t = bound_transport()
    peer = connect(t)
    try:
        peer.send(b"hi")
        table = SessionTable()
        s, _ = table.attach(receive_one(t)[0].bytes, "sid", "x", time.monotonic())
        store, queue = ResultStore(1 << 20, 60), JobQueue()
        tracker = JobTracker(queue, table, store, Outbox(t, DEFAULT_LIMITS, table.lost), DEFAULT_LIMITS, t.wake)
        image = ImageBlob(1, 1, 1, "u8", b"\7")
        job = s.jobs["j"] = Job("j", "sid", JobSettings(), image, None)
        tracker.finish(job, Result("j", [], "m"))
        assert job.state == "done" and job.image is None and "j" not in s.jobs
        got = read(peer)
        assert isinstance(got, Result) and got.job_id == "j"
        kept = store.get("sid", "j")
        assert kept is job and isinstance(decode(kept.final_frames, DEFAULT_LIMITS), Result)
        tracker.finish(job, Failed("j", "INTERNAL", "late"))  # a second end of the same job is ignored
        assert job.state == "done" and not peer.poll(100)
    finally:
        close(t, peer)
