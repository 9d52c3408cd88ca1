"""SUBMIT admission (params, mask, the bytes regions may hold while they wait) and the wait a queued job is told."""

from __future__ import annotations

import dataclasses

import pytest

from protocol.job import MAX_REGION_SIDE, JobSettings
from protocol.messages import Failed, ImageBlob, Submit
from pulse_server.daemon import DaemonConfig
from pulse_server.daemon.admission import admit, remaining, wait_s
from pulse_server.jobs import Job, JobQueue

CONFIG = DaemonConfig(endpoint="ipc:///x", max_queued_bytes=1000)


def _submit(w: int = 10, h: int = 10, mask: ImageBlob | None = None, **params) -> Submit:
    return Submit("j", ImageBlob(w, h, 1, "u8", b"\0" * (w * h)), mask, {"mode": "solve", **params}, 9999.0)


def test_a_valid_submit_becomes_a_job_of_its_session():
    job = admit(_submit(steps=7), "sid", CONFIG, held_bytes=0)
    assert isinstance(job, Job) and job.session == "sid" and job.params.steps == 7
    assert job.preview_interval == 3600.0  # clamped


@pytest.mark.parametrize("submit, code", [
    (_submit(steps=0), "BAD_PARAMS"),
    (_submit(mask=ImageBlob(10, 10, 3, "u8", b"\0" * 300)), "BAD_MASK"),
    (_submit(mask=ImageBlob(5, 10, 1, "u8", b"\0" * 50)), "BAD_MASK"),
    (_submit(40, 40), "TOO_LARGE"),
    (_submit(MAX_REGION_SIDE + 1, 1), "TOO_LARGE"),  # over the pipeline's limit: refused before it is queued
])
def test_a_submit_that_cannot_run_is_refused_with_its_reason(submit, code):
    got = admit(submit, "sid", CONFIG, held_bytes=0)
    assert isinstance(got, Failed) and got.code == code and not got.retryable


def test_a_region_that_fits_only_later_is_refused_as_retryable():
    got = admit(_submit(), "sid", CONFIG, held_bytes=950)
    assert isinstance(got, Failed) and got.code == "QUEUE_FULL" and got.retryable


def test_the_wait_adds_the_jobs_ahead_and_what_remains_of_the_running_one():
    q = JobQueue()
    ahead = Job("a", "s1", JobSettings(), None, None, estimate_s=4.0)
    mine = Job("b", "s2", JobSettings(), None, None, estimate_s=9.0)
    for j in (ahead, mine):
        q.put(j)
    running = Job("r", "s3", JobSettings(), None, None, state="running", estimate_s=10.0, started=100.0)
    assert wait_s(mine, q.positions(), [ahead, mine, running], now=103.0) == pytest.approx(4.0 + 7.0)
    assert wait_s(running, q.positions(), [running], now=103.0) == 0.0  # not queued: it runs
    unknown = dataclasses.replace(ahead, estimate_s=0.0)
    q2 = JobQueue()
    for j in (unknown, mine):
        q2.put(j)
    assert wait_s(mine, q2.positions(), [], now=103.0) == 0.0  # any unknown part: unknown


def test_remaining_prefers_the_workers_latest_time_left():
    job = Job("r", "s", JobSettings(), None, None, estimate_s=10.0, started=0.0, eta_s=3.0, eta_at=50.0)
    assert remaining(job, 51.0) == pytest.approx(2.0)
    assert remaining(Job("r", "s", JobSettings(), None, None), 1.0) is None
    assert remaining(Job("r", "s", JobSettings(), None, None, estimate_s=5.0), 1.0) == 5.0  # still loading
