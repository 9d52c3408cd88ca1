"""The daemon on a real local Ray cluster (2 CPU actors, the 32² CelebA prior): `--cluster ray`.

One Ray head for the module (always stopped); one pool daemon for most tests. Results are compared bit
for bit with the same job run in this process through the runner (the actors run the same code).
The test that stops the head runs last: it also checks that the daemon reconnects when Ray is back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray", reason="the cluster tests need Ray: pip install -e '.[cluster]'")

from daemon_fixture import REPO, free_tcp_port, isolated_env, server_command, start_daemon, start_long_job_client
from ray_fixture import RayHead

from protocol.messages import ImageBlob, Progress

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

HEARTBEAT_MS = 500


@pytest.fixture(scope="module")
def head():
    h = RayHead.start(num_cpus=2)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def pool(head, tmp_path_factory, shared_prior_path):
    d = start_daemon(tmp_path_factory.mktemp("pool"), weights=shared_prior_path, env=head.env, timeout=240,
                     args=["--cluster", "ray", "--actor-cpus", "1", "--heartbeat-ms", str(HEARTBEAT_MS), "--no-log-file"])
    try:
        yield d
    finally:
        d.stop()


@pytest.fixture(scope="module")
def prior(shared_prior_path):
    import torch

    from pulse_server.models.loading import load_prior

    torch.set_num_threads(1)  # as in a 1-CPU actor (Ray sets its OMP_NUM_THREADS)
    return load_prior(shared_prior_path, "cpu")


def lowres(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((8, 8, 3)).astype(np.float32)


def mosaic(seed: int) -> np.ndarray:
    blocks = (np.random.default_rng(seed).random((8, 8, 3)) * 255).astype(np.uint8)
    return np.repeat(np.repeat(blocks, 6, 0), 6, 1)  # 48×48, 6-px cells


def job(seed: int) -> tuple[np.ndarray, dict]:
    if seed % 2:
        return lowres(seed), {"mode": "solve", "candidates": 1, "steps": 6, "seed": seed}
    return mosaic(seed), {"mode": "depixelate", "candidates": 1, "steps": 4, "seed": seed, "block": 6}


def local_pixels(prior, pixels: np.ndarray, params: dict) -> np.ndarray:
    """The same job in this process, as the daemon's worker would run it."""
    from pulse_server import runner
    from pulse_server.pipeline import DepixParams
    from pulse_server.solver import SolveConfig
    from pulse_server.worker import _to_rgb_float

    model, info = prior
    if params["mode"] == "solve":
        cfg = SolveConfig(candidates=1, steps=params["steps"], seed=params["seed"], preview_every=0)
        return np.asarray(runner.solve(model, _to_rgb_float(pixels.copy()), cfg).candidates[0].image, np.float32)
    dp = DepixParams(candidates=1, steps=params["steps"], seed=params["seed"], block=params["block"], preview_every=0)
    return runner.depixelate(model, pixels.copy(), None, dp, model=info.name).patches[0]


def pool_status(d) -> dict:
    with d.client(client_name="probe") as c:
        c.connect()
        return c.status().server


def wait_for(predicate, timeout: float, what: str, d=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout:g} s" + (f":\n{d.output()[-3000:]}" if d else ""))


def test_twenty_jobs_from_four_clients_match_local_runs_bit_for_bit(pool, prior):
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            with pool.client(client_name=f"desk-{k}") as c:
                c.connect()
                for i in range(5):
                    seed = 10 * k + i
                    pixels, params = job(seed)
                    res = c.run_job(ImageBlob.from_numpy(pixels), None, params, job_id=f"desk{k}-{i}")
                    assert res.job_id == f"desk{k}-{i}" and res.candidates[0].seed == seed
                    results[seed] = res.candidates[0].image.to_numpy()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(240)
    assert not errors, errors
    assert len(results) == 20
    for seed, got in sorted(results.items()):
        want = local_pixels(prior, *job(seed))
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want), f"job with seed {seed} differs from the local run"
    actors = pool_status(pool)["cluster"]["actors"]
    assert len(actors) == 2 and all(a["done"] > 0 for a in actors), actors  # both actors took jobs
    assert all(a["models"] == [""] for a in actors)  # the daemon's own model, warm on each


def test_cancel_reaches_the_running_actor_within_a_second(pool):
    with pool.client() as c:
        c.connect()
        jid = c.submit(ImageBlob.from_numpy(lowres(1)), None, {"mode": "solve", "candidates": 1, "steps": 5000}).job_id
        for ev in c.events(jid):
            if isinstance(ev, Progress):
                break
        t0 = time.monotonic()
        c.cancel(jid)
        end = None
        for ev in c.events(jid):
            end = ev if ev is not None else end
        took = time.monotonic() - t0
    assert end.code == "CANCELLED"
    assert took < 1.0, f"cancel took {took:.2f} s"
    wait_for(lambda: all(a["job"] is None for a in pool_status(pool)["cluster"]["actors"]), 5, "actors idle again")


def test_vanished_client_has_its_job_cancelled_on_the_pool(pool):
    proc = start_long_job_client(pool.endpoint, pool.token)
    try:
        assert proc.stdout.readline().strip() == "RUNNING"
        assert pool_status(pool)["running"] == 1
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Heartbeats expire after 3 × 0.5 s + 0.5 s; the cancel then reaches the actor within a poll.
        wait_for(lambda: pool_status(pool)["running"] == 0, 10, "the vanished client's job stopped", pool)
        assert all(a["job"] is None for a in pool_status(pool)["cluster"]["actors"])
    finally:
        proc.kill()


def test_killed_actor_job_runs_again_elsewhere_and_completes(pool, prior):
    pixels, params = lowres(5), {"mode": "solve", "candidates": 1, "steps": 120, "seed": 5}
    with pool.client() as c:
        c.connect()
        jid = c.submit(ImageBlob.from_numpy(pixels), None, params, job_id="doomed-actor").job_id
        for ev in c.events(jid):
            if isinstance(ev, Progress):
                break
        actors = c.status().server["cluster"]["actors"]
        victim = next(a for a in actors if a["job"] == jid)
        os.kill(victim["pid"], signal.SIGKILL)
        res = None
        for ev in c.events(jid):
            res = ev if ev is not None else res
        assert res.job_id == jid, res
        assert np.array_equal(res.candidates[0].image.to_numpy(), local_pixels(prior, pixels, params))
    cluster = wait_for(lambda: (lambda s: s if len([a for a in s["actors"] if a["state"] == "idle"]) == 2 else None)(
        pool_status(pool)["cluster"]), 120, "a replacement actor", pool)
    assert cluster["retried"] == 1 and cluster["lost"] == 0
    assert victim["pid"] not in [a["pid"] for a in cluster["actors"]]


def test_unreachable_cluster_refuses_to_start_with_exit_2(tmp_path, shared_prior_path):
    env = isolated_env(tmp_path, {"RAY_ADDRESS": f"127.0.0.1:{free_tcp_port()}", "RAY_USAGE_STATS_ENABLED": "0"})
    out = subprocess.run(server_command("run", "--cluster", "ray", "--weights", str(shared_prior_path), "--no-log-file",
                                        "--endpoint", f"tcp://127.0.0.1:{free_tcp_port()}"),
                         env=env, capture_output=True, text=True, timeout=120, cwd=str(REPO))
    assert out.returncode == 2, out.stderr
    assert "cannot reach the Ray cluster at 127.0.0.1:" in out.stderr


def test_stopped_head_fails_jobs_cleanly_and_the_daemon_reconnects(pool, head):
    with pool.client() as c:
        c.connect()
        jid = c.submit(ImageBlob.from_numpy(lowres(2)), None, {"mode": "solve", "candidates": 1, "steps": 5000}).job_id
        for ev in c.events(jid):
            if isinstance(ev, Progress):
                break
        head.stop_processes()
        end = None
        for ev in c.events(jid):
            end = ev if ev is not None else end
        assert end.code == "CLUSTER_DOWN" and end.retryable, end
        server = c.status().server
        assert server["cluster"]["state"] == "down" and server["cluster"]["message"]
        late = c.submit(ImageBlob.from_numpy(lowres(3)), None, {"mode": "solve", "candidates": 1, "steps": 2}).job_id
        end = None
        for ev in c.events(late):
            end = ev if ev is not None else end
        assert end.code == "CLUSTER_DOWN"
    assert pool.alive()
    head.restart()
    wait_for(lambda: pool_status(pool)["cluster"]["state"] == "up", 120, "the daemon reconnected", pool)
    with pool.client() as c:
        c.connect()
        res = c.run_job(ImageBlob.from_numpy(lowres(4)), None, {"mode": "solve", "candidates": 1, "steps": 2, "seed": 1})
        assert len(res.candidates) == 1
