"""Time estimates from a real daemon process (tiny StyleGAN2, its own cache folder): ACCEPTED's estimate_s
once the model has been measured, wait_s for a job queued behind a running one, PROGRESS's eta_s counting
down, and the CLI's line."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
from daemon_fixture import REPO, start_daemon

from protocol.messages import ImageBlob, Progress, Result

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_weights):
    tmp = tmp_path_factory.mktemp("estimates")
    d = start_daemon(tmp, weights=tiny_weights, env={"PULSE_CACHE_DIR": str(tmp / "cache")})
    d.cache = tmp / "cache"
    yield d
    d.stop()


def _low(seed: int = 0) -> ImageBlob:
    return ImageBlob.from_numpy(np.random.default_rng(seed).random((8, 8, 3)).astype(np.float32))


def _solve(steps: int, seed: int = 0) -> dict:
    return {"mode": "solve", "candidates": 1, "steps": steps, "seed": seed}


def _until_running(c, job_id: str, deadline: float) -> None:
    for ev in c.events(job_id):
        if isinstance(ev, Progress):
            return
        assert not isinstance(ev, Result) and time.monotonic() < deadline, "the job never ran"


def _drain(c, job_id: str) -> None:
    for _ in c.events(job_id):
        pass


def test_accepted_carries_the_estimate_once_the_model_is_measured(daemon):
    with daemon.client() as c:
        first = []
        c.run_job(_low(), None, _solve(5), on_accepted=first.append)
        second = []
        c.run_job(_low(1), None, _solve(200), on_accepted=second.append)
    # The first job of a fresh daemon waits for the model, which is measured while it loads: unknown before.
    assert first[0].estimate_s == 0.0
    assert second[0].estimate_s > 0 and second[0].wait_s == 0.0  # nothing ahead of it: it starts now
    # *.json: the daemon may be writing the next correction (a temporary file renamed over the cache) right now
    files = list((daemon.cache / "estimates").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("tiny-stylegan2-32-")


def test_a_job_behind_a_running_one_is_told_how_long_it_waits(daemon):
    deadline = time.monotonic() + 120
    with daemon.client() as c:
        c.run_job(_low(), None, _solve(2))  # the model is loaded and measured
        running = c.submit(_low(2), None, _solve(5000))
        try:
            _until_running(c, running.job_id, deadline)
            queued = c.submit(_low(3), None, _solve(50))
            assert queued.position == 1 and queued.estimate_s > 0
            assert queued.wait_s > 5  # what remains of 5000 steps (the most a job takes): a millisecond each at least
            behind = c.submit(_low(4), None, _solve(50))
            assert behind.wait_s == pytest.approx(queued.wait_s + queued.estimate_s, rel=0.2)
        finally:
            for job_id in [j["job_id"] for j in c.status().jobs if j["state"] in ("queued", "loading", "running")]:
                c.cancel(job_id)
                _drain(c, job_id)


def test_progress_counts_the_time_left_down(daemon):
    with daemon.client() as c:
        c.run_job(_low(), None, _solve(2))
        etas: list[tuple[int, float]] = []
        c.run_job(_low(5), None, _solve(400, seed=5), on_progress=lambda p: etas.append((p.step, p.eta_s)))
    known = [(s, e) for s, e in etas if e > 0]
    assert len(known) >= 3, etas
    third = max(1, len(known) // 3)
    early = np.median([e for _, e in known[:third]])
    late = np.median([e for _, e in known[-third:]])
    assert late < early, known
    assert known[-1][1] < known[0][1]


def test_the_cli_prints_the_estimate_on_stderr(daemon, tmp_path):
    from PIL import Image

    with daemon.client() as c:
        c.run_job(_low(), None, _solve(2))  # measured
    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp_path / "low.png")
    cli = subprocess.run([sys.executable, "-m", "pulse_server.cli", "solve", str(tmp_path / "low.png"), "-o",
                          str(tmp_path / "face.png"), "--via-daemon", "--endpoint", daemon.endpoint, "--steps", "20"],
                         env=daemon.env, cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    lines = [ln for ln in cli.stderr.splitlines() if ln.startswith("pulse: estimate: about ")]
    assert len(lines) == 1, cli.stderr
    assert lines[0].endswith(" s") or lines[0].endswith(" min")  # solve has no early stop to mention
    quiet = subprocess.run([sys.executable, "-m", "pulse_server.cli", "solve", str(tmp_path / "low.png"), "-o",
                            str(tmp_path / "face.png"), "--via-daemon", "--endpoint", daemon.endpoint, "--steps", "2",
                            "-q"], env=daemon.env, cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert quiet.returncode == 0 and "estimate" not in quiet.stderr


def test_an_in_process_run_prints_the_estimate_only_from_a_cached_measurement(daemon, tiny_weights, tmp_path):
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((8, 8, 3)) * 255).astype(np.uint8)).save(tmp_path / "low.png")
    argv = [sys.executable, "-m", "pulse_server.cli", "solve", str(tmp_path / "low.png"), "-o", str(tmp_path / "f.png"),
            "--weights", str(tiny_weights), "--steps", "3", "--device", "cpu"]
    fresh = subprocess.run(argv, env={**daemon.env, "PULSE_CACHE_DIR": str(tmp_path / "empty")}, cwd=str(REPO),
                           capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0 and "estimate" not in fresh.stderr, fresh.stderr
    assert not (tmp_path / "empty" / "estimates").exists()  # nothing measured just to print a line
    with daemon.client() as c:
        c.run_job(_low(), None, _solve(2))
    cached = subprocess.run(argv, env=daemon.env, cwd=str(REPO), capture_output=True, text=True, timeout=120)
    assert cached.returncode == 0 and "pulse: estimate: about " in cached.stderr, cached.stderr
