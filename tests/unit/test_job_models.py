"""Each job may name a registry model; the worker keeps the last few warm and lists them for WELCOME/STATUS."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from daemon_fixture import run_worker_until

from protocol.job import JobSettings
from protocol.messages import Failed, ImageBlob, Result
from pulse_server.errors import PulseError
from pulse_server.jobs import Job, JobQueue, daemon_spec
from pulse_server.worker import Worker


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path / "cache"))


def test_job_model_param_is_optional_and_takes_registry_names_only() -> None:
    spec = daemon_spec()
    assert JobSettings.from_wire({}, spec).model == "" and JobSettings.from_wire({"model": ""}, spec).model == ""
    assert JobSettings.from_wire({"model": "digiface-64"}, spec).model == "digiface-64"
    for bad in ("/etc/passwd", "../shared/priors/celeba32-dcgan.pt", "ffhq-512"):
        with pytest.raises(PulseError) as e:
            JobSettings.from_wire({"model": bad}, spec)
        assert e.value.code == "BAD_PARAMS" and "params.model" in e.value.message
    with pytest.raises(PulseError):
        JobSettings.from_wire({"model": 3}, spec)


def _run(worker: Worker, models: list[str | None]) -> list[tuple[str, str, object]]:
    """Solve one 8×8 face per entry of `models` (a job's `model` param), in order; -> the worker's events."""
    events: list = []
    done = threading.Event()
    ids = [f"job{i}" for i in range(len(models))]

    def emit(kind, job, payload):
        events.append((kind, job.job_id, payload))
        if kind == "final" and job.job_id == ids[-1]:
            done.set()

    worker.emit = emit
    lowres = ImageBlob.from_numpy(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32))
    jobs = []
    for jid, model in zip(ids, models):
        params = JobSettings(mode="solve", candidates=1, steps=1, seed=1, model=model or "")
        jobs.append(Job(jid, "s", params, lowres, None))
    run_worker_until(worker, worker.queue, jobs, done)
    return events


def test_a_job_naming_another_model_runs_on_it_and_both_stay_warm(tiny_weights: Path, digiface_installed) -> None:
    w = Worker(JobQueue(), lambda *a: None, weights=str(tiny_weights), device="cpu")
    events = _run(w, [None, "digiface-64", None, "digiface-64"])
    finals = {jid: p for kind, jid, p in events if kind == "final"}
    assert all(isinstance(p, Result) for p in finals.values()), finals
    assert [finals[f"job{i}"].model for i in range(4)] == ["tiny-stylegan2-32", "digiface-64-dcgan"] * 2
    assert finals["job1"].analysis["resolution"] == 64 and finals["job0"].analysis["resolution"] == 32
    assert [jid for kind, jid, p in events if (kind, p) == ("state", "loading")] == ["job0", "job1"]  # then warm
    rows = w.model_summaries()
    assert [(r["id"], r["loaded"]) for r in rows[:2]] == [("", True), ("digiface-64", True)]
    assert rows[0]["name"] == "tiny-stylegan2-32" and rows[1]["resolution"] == 64
    assert {r["id"] for r in rows[2:]} == {"ffhq-1024", "ffhq-256"} and not any(r["loaded"] for r in rows[2:])


def test_past_the_limit_the_least_recently_used_model_is_unloaded(tiny_weights: Path, digiface_installed) -> None:
    w = Worker(JobQueue(), lambda *a: None, weights=str(tiny_weights), device="cpu", max_models=1)
    events = _run(w, [None, "digiface-64", None])
    assert [jid for kind, jid, p in events if (kind, p) == ("state", "loading")] == ["job0", "job1", "job2"]
    assert [r["id"] for r in w.model_summaries() if r["loaded"]] == [""]


def test_a_job_naming_the_daemons_own_model_does_not_load_it_twice(digiface_installed) -> None:
    w = Worker(JobQueue(), lambda *a: None, weights="digiface-64", device="cpu")
    events = _run(w, [None, "digiface-64"])
    assert [jid for kind, jid, p in events if (kind, p) == ("state", "loading")] == ["job0"]
    assert not any(isinstance(p, Failed) for kind, jid, p in events if kind == "final")
