"""The Ray pool's throughput and overhead on this machine: `pulse-server run --cluster ray`.

    python bench/cluster.py [--jobs 16] [--steps 150] [--latency-runs 20] [--weights PATH]

Starts its own Ray head on 127.0.0.1 (stopped at the end, whatever happens) and, in one run,
  * throughput: the same batch of solve jobs (8×8 -> 32², from 4 client threads) through a pool of 1 actor
    and then of 2 actors (1 CPU each): jobs/minute and their ratio;
  * added latency: small jobs (1 candidate, 1 step) one after another, alternating between the pool
    (2 actors) and a local daemon (the worker thread, --device cpu, one torch thread like a 1-CPU actor): median round trip of each and the
    difference, which is what the Ray path adds per job (bridge, actor calls, event polling).
The model is the 32² CelebA prior beside the project (../shared/priors) unless --weights names another.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the tests' daemon and Ray head helpers

PRIOR = REPO.parent / "shared" / "priors" / "celeba32-dcgan.pt"


def _lowres(seed: int):
    import numpy as np

    return np.random.default_rng(seed).random((8, 8, 3)).astype(np.float32)


def _batch(d, jobs: int, steps: int, clients: int = 4) -> float:
    """Wall seconds for `jobs` solve jobs spread over `clients` threads."""
    from protocol.messages import ImageBlob

    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            with d.client(client_name=f"bench-{k}") as c:
                c.connect()
                for i in range(k, jobs, clients):
                    c.run_job(ImageBlob.from_numpy(_lowres(i)), None,
                              {"mode": "solve", "candidates": 1, "steps": steps, "seed": i})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - t0


def _warm(d, actors: int) -> None:
    _batch(d, 2 * actors, 2, clients=actors)  # every actor loads the model once


def _round_trips(pool, local, runs: int) -> tuple[list[float], list[float]]:
    from protocol.messages import ImageBlob

    times: dict[str, list[float]] = {"pool": [], "local": []}
    with pool.client() as cp, local.client() as cl:
        cp.connect()
        cl.connect()
        for i in range(runs + 1):
            for name, c in (("pool", cp), ("local", cl)):
                t0 = time.perf_counter()
                c.run_job(ImageBlob.from_numpy(_lowres(i)), None, {"mode": "solve", "candidates": 1, "steps": 1, "seed": i})
                if i:  # the first round is the warm-up
                    times[name].append(time.perf_counter() - t0)
    return times["pool"], times["local"]


def main() -> int:
    from daemon_fixture import start_daemon
    from ray_fixture import RayHead

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--latency-runs", type=int, default=20)
    ap.add_argument("--weights", default=str(PRIOR))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pulse-bench-cluster-"))
    head = RayHead.start(num_cpus=2)
    rates: dict[int, float] = {}
    try:
        for actors in (1, 2):
            d = start_daemon(tmp / f"pool{actors}", weights=args.weights, env=head.env, timeout=240,
                             args=["--cluster", "ray", "--actors", str(actors), "--actor-cpus", "1", "--no-log-file"])
            try:
                _warm(d, actors)
                wall = _batch(d, args.jobs, args.steps)
                rates[actors] = args.jobs / wall * 60
                print(f"{actors} actor(s): {args.jobs} jobs × {args.steps} steps in {wall:.1f} s = "
                      f"{rates[actors]:.1f} jobs/min", flush=True)
                if actors == 2:
                    # One torch thread, as in a 1-CPU actor (Ray sets its OMP_NUM_THREADS).
                    local = start_daemon(tmp / "local", weights=args.weights, env={"OMP_NUM_THREADS": "1"},
                                         args=["--device", "cpu", "--no-log-file"])
                    try:
                        pool_t, local_t = _round_trips(d, local, args.latency_runs)
                    finally:
                        local.stop()
            finally:
                d.stop()
    finally:
        head.stop()
    mp, ml = statistics.median(pool_t) * 1000, statistics.median(local_t) * 1000
    print(f"throughput 2 actors / 1 actor: {rates[2] / rates[1]:.2f}x")
    print(f"small job (1 step) round trip, median of {args.latency_runs}: Ray pool {mp:.1f} ms, local worker "
          f"{ml:.1f} ms, added by the Ray path {mp - ml:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
