"""The time estimates' parts in-process: the cost model, the time left of a running job, the cache of
measurements (one file per model and device), the measurement itself on a real (tiny) model, and a worker
that measures a model once and reuses the figures."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pulse_server.errors import Cancelled
from pulse_server.estimate import Calibration, Estimates, JobClock, JobShape, ModelId, Segment, segments


def _cal(**kw) -> Calibration:
    base = dict(latent=(0.01, 0.025), feature=(0.005, 0.0125), refines=True, search_fixed=0.1, pixels=10_000,
                prepare=(0.2, 0.5), finish=(0.05, 1.0), job_fixed=0.0)
    return Calibration(**{**base, **kw})


# ---- the cost model -----------------------------------------------------------------------------------


def test_depixelate_phases_run_the_warm_up_at_three_starts_per_candidate():
    segs = segments(JobShape("depixelate", candidates=2, steps=100), refines=True)
    assert segs == [Segment(15, 6, "latent"), Segment(50, 2, "latent"), Segment(35, 2, "feature")]
    assert sum(s.steps for s in segs) == 100
    no_stages = segments(JobShape("depixelate", candidates=2, steps=100), refines=False)
    assert [s.kind for s in no_stages] == ["latent", "latent"] and sum(s.steps for s in no_stages) == 100
    assert [s.kind for s in segments(JobShape("depixelate", 2, 100, method="pulse"), True)] == ["latent", "latent"]


def test_solve_batches_its_candidates_except_in_fp32():
    assert segments(JobShape("solve", candidates=3, steps=50), True) == [Segment(50, 3, "latent")]
    assert segments(JobShape("solve", candidates=3, steps=50, precision="fp32"), True) == [Segment(150, 1, "latent")]


def test_a_step_costs_linearly_in_the_batch_through_the_two_measured_points():
    cal = _cal()
    assert cal.per_step("latent", 1) == pytest.approx(0.01)
    assert cal.per_step("latent", 4) == pytest.approx(0.025)
    assert cal.per_step("latent", 2) == pytest.approx(0.015)
    assert cal.per_step("latent", 12) == pytest.approx(0.065)  # the warm-up of 4 candidates, along the same line
    assert cal.per_step("feature", 4) == pytest.approx(0.0125)
    noisy = _cal(latent=(0.01, 0.008))  # a GPU's batch 4 measured faster than its batch 1: no cheaper batches
    assert noisy.per_step("latent", 8) == pytest.approx(0.01)


def test_the_estimate_adds_the_search_and_the_region_terms():
    cal = _cal()
    shape = JobShape("depixelate", candidates=1, steps=20, pixels=40_000)  # 4x the calibration region
    search = 0.1 + 3 * 0.02 + 10 * 0.01 + 7 * 0.005  # fixed + warm-up (batch 3) + latent + features
    prepare, finish = 0.2 * 4**0.5, 0.05 * 4
    assert cal.estimate(shape) == pytest.approx(search + prepare + finish)
    assert cal.estimate(JobShape("solve", candidates=1, steps=20, pixels=64)) == pytest.approx(0.1 + 20 * 0.01)


def test_finished_jobs_move_the_estimate_toward_what_they_took():
    cal = _cal()
    shape = JobShape("depixelate", candidates=3, steps=100, pixels=90_000)
    first = cal.estimate(shape)
    search, total = 2 * cal.search_seconds(shape), 2 * first  # this machine runs twice as slow as measured
    for _ in range(12):
        cal.observe(shape, search, None, total)
    assert cal.estimate(shape) == pytest.approx(total, rel=0.05)
    assert cal.estimate(JobShape("solve", 3, 100)) == pytest.approx(cal.search_seconds(JobShape("solve", 3, 100)))
    assert cal.jobs == 12


def test_an_early_stop_is_not_mistaken_for_a_faster_machine():
    cal = _cal()
    shape = JobShape("depixelate", candidates=2, steps=100, pixels=10_000)
    half = cal.search_seconds(shape, 50)  # the search ended after 50 of its 100 steps, exactly as modelled
    cal.observe(shape, half, 50, half + cal.overhead_seconds(shape))
    assert cal.scale["depixelate"] == pytest.approx(1.0)


def test_one_absurd_job_moves_the_scale_only_a_bounded_way():
    cal = _cal()
    shape = JobShape("solve", candidates=1, steps=10)
    cal.observe(shape, 1e6, None, 1e6)  # a daemon paused in a debugger
    assert cal.scale["solve"] < 4


def test_time_left_follows_the_jobs_own_pace():
    cal = _cal(job_fixed=0.0, prepare=(1e-9, 1.0), finish=(1e-9, 1.0))
    shape = JobShape("solve", candidates=1, steps=100)
    clock = JobClock(cal, shape, started=0.0)
    whole = cal.estimate(shape)
    on_time = [clock.eta(step, 100, now=cal.search_seconds(shape, step)) for step in (1, 25, 50, 99)]
    assert on_time == sorted(on_time, reverse=True)
    assert on_time[2] == pytest.approx(whole - cal.search_seconds(shape, 50), rel=1e-3)
    slow = clock.eta(50, 100, now=2 * cal.search_seconds(shape, 50))  # running at half the modelled speed
    assert slow == pytest.approx(2 * on_time[2], rel=1e-3)
    uncalibrated = JobClock(None, shape, started=0.0)
    assert uncalibrated.eta(25, 100, now=10.0) == pytest.approx(30.0)  # 75 steps at 0.4 s
    assert uncalibrated.eta(0, 100, now=1.0) == 0.0  # nothing to go by yet: unknown


# ---- the cache --------------------------------------------------------------------------------------


def test_measurements_are_cached_per_model_and_device(tmp_path: Path):
    model = ModelId("tiny", 1234)
    first = Estimates("cpu: test, 1 threads", "2.13.0", tmp_path)
    assert first.get(model) is None
    first.put(model, _cal())
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and json.loads(files[0].read_text())["device"] == "cpu: test, 1 threads"
    again = Estimates("cpu: test, 1 threads", "2.13.0", tmp_path)  # a restarted daemon
    assert again.get(model) == _cal()
    shape = JobShape("depixelate", 2, 50, pixels=20_000)
    assert again.estimate(model, shape) == pytest.approx(_cal().estimate(shape))
    assert Estimates("cuda: some GPU", "2.13.0", tmp_path).get(model) is None
    assert Estimates("cpu: test, 1 threads", "2.14.0", tmp_path).get(model) is None
    assert again.get(ModelId("tiny", 1235)) is None  # another file of the same name
    assert again.estimate(ModelId("tiny", 1235), shape) == 0.0  # unknown


def test_finished_jobs_update_the_cached_figures(tmp_path: Path):
    model = ModelId("tiny", 1)
    est = Estimates("cpu", "t", tmp_path)
    est.put(model, _cal())
    shape = JobShape("solve", 1, 10)
    est.observe(model, shape, 10.0, None, 10.0)
    assert Estimates("cpu", "t", tmp_path).get(model).jobs == 1


def test_a_damaged_cache_file_is_ignored(tmp_path: Path):
    model = ModelId("tiny", 1)
    est = Estimates("cpu", "t", tmp_path)
    est.path(model).parent.mkdir(parents=True, exist_ok=True)
    est.path(model).write_text("{not json")
    assert est.get(model) is None
    est2 = Estimates("cpu", "t", tmp_path)
    doc = {"key": "tiny|1|cpu|torch t|format 1", "calibration": {**_cal().to_json(), "latent": [-1, 0.1]}}
    est2.path(model).write_text(json.dumps(doc))
    assert est2.get(model) is None


def test_the_cache_lives_under_the_user_cache_folder(monkeypatch, tmp_path: Path):
    from pulse_server.estimate import cache_file

    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path))
    path = cache_file(ModelId("stylegan2-ffhq-256", 99), "cpu: x", "2.13.0")
    assert path.parent == tmp_path / "estimates" and path.name.startswith("stylegan2-ffhq-256-")


# ---- measuring a real model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_prior(tiny_weights):
    from pulse_server.models.loading import load_prior

    return load_prior(tiny_weights, "cpu")


def test_measuring_a_model_takes_seconds_and_finds_what_a_job_costs(tiny_prior):
    from pulse_server import runner
    from pulse_server.calibrate import calibrate, synthetic_region
    from pulse_server.pipeline import DepixParams

    prior, _ = tiny_prior
    t0 = time.monotonic()
    cal = calibrate(prior)
    assert time.monotonic() - t0 < 30 and cal.seconds > 0
    assert cal.refines and all(v > 0 for v in (*cal.latent, *cal.feature))
    assert 0.3 <= cal.prepare[1] <= 1.5 and 0.3 <= cal.finish[1] <= 1.5
    region = synthetic_region()
    shape = JobShape("depixelate", candidates=2, steps=30, pixels=region.shape[0] * region.shape[1])
    t0 = time.monotonic()
    runner.depixelate(prior, region, None, DepixParams(candidates=2, steps=30, seed=0))
    took = time.monotonic() - t0
    assert 0.2 < cal.estimate(shape) / took < 5  # the same job, measured on a shared machine: same order


def test_a_slow_model_is_measured_within_the_budget(tiny_prior):
    from pulse_server.calibrate import calibrate

    prior, _ = tiny_prior
    t0 = time.monotonic()
    cal = calibrate(prior, steps=500, budget_s=0.3)  # would be seconds of steps without the budget
    assert time.monotonic() - t0 < 20 and cal.latent[0] > 0


def test_a_measurement_stops_when_the_job_is_cancelled(tiny_prior):
    from pulse_server.calibrate import calibrate

    prior, _ = tiny_prior
    calls = [0]

    def cancel() -> bool:
        calls[0] += 1
        return calls[0] > 6

    with pytest.raises(Cancelled):
        calibrate(prior, cancel)


# ---- the worker ---------------------------------------------------------------------------------------


def _run_worker(weights: Path, count: int) -> list[tuple[str, str, object]]:
    from daemon_fixture import run_worker_until

    from protocol.job import JobSettings
    from protocol.messages import ImageBlob
    from pulse_server.jobs import Job, JobQueue
    from pulse_server.worker import Worker

    events: list[tuple[str, str, object]] = []
    done = threading.Event()

    def emit(kind, job, payload):
        events.append((kind, job.job_id, payload))
        if kind == "final" and job.job_id == f"job{count - 1}":
            done.set()

    q = JobQueue()
    w = Worker(q, emit, weights=str(weights), device="cpu")
    low = ImageBlob.from_numpy(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32))
    jobs = [Job(f"job{i}", "s", JobSettings(mode="solve", candidates=1, steps=40, seed=i), low, None) for i in range(count)]
    run_worker_until(w, q, jobs, done)
    return events


def test_a_worker_measures_a_model_once_and_reuses_it_after_a_restart(tiny_weights, tmp_path, monkeypatch):
    from pulse_server import calibrate as calibrate_mod

    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path))
    runs = []
    real = calibrate_mod.calibrate
    monkeypatch.setattr(calibrate_mod, "calibrate", lambda *a, **k: runs.append(1) or real(*a, **k))
    events = _run_worker(tiny_weights, 2)
    assert len(runs) == 1 and len(list((tmp_path / "estimates").iterdir())) == 1
    etas = [p.eta_s for kind, jid, p in events if kind == "progress" and jid == "job1"]
    assert etas and etas[0] > 0
    cached = json.loads(next((tmp_path / "estimates").iterdir()).read_text())
    assert cached["model"] == "tiny-stylegan2-32" and cached["calibration"]["jobs"] == 2
    _run_worker(tiny_weights, 1)  # a new worker (a restarted daemon): the file, no second measurement
    assert len(runs) == 1
