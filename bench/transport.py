"""Transport overhead of the daemon: a full job round trip with the no-op model vs a raw pyzmq echo.

    python bench/transport.py [--transport tcp|ipc] [--sizes 256 1024 4096] [--repeat N] [--baseline DIR]

For each RGBA u8 region size it measures, in one run and on the same transport,
  * daemon: PulseClient.run_job(region) against `pulse-server run --weights noop:` (HELLO done once;
    SUBMIT with the region, ACCEPTED, JOB_STATE, PROGRESS, RESULT carrying the same bytes back), and
  * raw: a DEALER sending the same bytes to a ROUTER echo process and receiving them back,
and prints the median round-trip times and their ratio (daemon / raw). With --baseline DIR (another checkout,
e.g. main's worktree) a second daemon runs that checkout's code, measured interleaved with the first, and
`vs base` is this daemon's median over the baseline's (1.00: as fast; the client is this checkout's for both).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:
    from protocol.messages import ImageBlob

ECHO = """
import sys, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.ROUTER)
s.setsockopt(zmq.LINGER, 0)
s.bind(sys.argv[1])
print("ready", flush=True)
while True:
    frames = s.recv_multipart(copy=False)
    s.send_multipart(frames, copy=False)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _endpoint(kind: str, run_dir: str) -> str:
    return f"tcp://127.0.0.1:{_free_port()}" if kind == "tcp" else f"ipc://{run_dir}/{secrets.token_hex(4)}.sock"


def _interleaved(fns: list, repeat: int) -> list[list[float]]:
    """Alternate the functions so that load on a shared machine hits all alike; one warm-up each."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return times


def _round_trip(client, blob: ImageBlob, nbytes: int) -> None:
    """One job through the daemon: the region there and the (same-size) result back."""
    res = client.run_job(blob, None, {"mode": "depixelate", "candidates": 1, "steps": 1})
    assert res.candidates[0].image.nbytes == nbytes


def _round_trip_raw(raw, payload: memoryview, nbytes: int) -> None:
    """The same bytes through a bare ZeroMQ echo: the floor the daemon's round trip is compared with."""
    raw.send_multipart([payload], copy=False)
    back = raw.recv_multipart(copy=False)
    assert len(back[0]) == nbytes


def _start_daemon(repo: Path, endpoint: str, env: dict[str, str]) -> subprocess.Popen:
    """`pulse-server run` from the checkout `repo` (its own runtime dir: one daemon per lock)."""
    from protocol import launch

    run_dir = tempfile.mkdtemp(prefix="daemon-", dir=env["PULSE_RUNTIME_DIR"])  # removed with the bench's own
    cmd = launch.daemon_argv(launch.module_program(sys.executable), endpoint=endpoint, weights="noop:",
                             extra=["--no-log-file", "--log-level", "WARNING"])
    # cwd = repo too: `python -m` puts the working directory first on sys.path.
    return subprocess.Popen(cmd, cwd=repo, env={**env, "PULSE_RUNTIME_DIR": run_dir, "PYTHONPATH": str(repo)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _connect(client, daemon: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            client.connect()
            return
        except Exception:  # still starting
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise
            time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--transport", choices=("tcp", "ipc"), default="tcp")
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--repeat", type=int, default=0, help="round trips per size (default: 30 / 10 / 5 by size)")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ap.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                    help="another checkout whose daemon is measured interleaved with this one's (vs base column)")
    args = ap.parse_args(argv)

    import numpy as np
    import zmq

    from protocol.client import PulseClient
    from protocol.messages import ImageBlob

    run_dir = tempfile.mkdtemp(prefix="pulse-bench-")
    token = secrets.token_urlsafe(16)
    env = {**os.environ, "PULSE_RUNTIME_DIR": run_dir, "PULSE_TOKEN": token, "PYTHONPATH": str(REPO)}
    daemon_ep, echo_ep = _endpoint(args.transport, run_dir), _endpoint(args.transport, run_dir)
    daemons = [_start_daemon(REPO, daemon_ep, env)]
    base_ep = _endpoint(args.transport, run_dir)
    if args.baseline is not None:
        daemons.append(_start_daemon(args.baseline.resolve(), base_ep, env))
    echo = subprocess.Popen([sys.executable, "-c", ECHO, echo_ep], env=env, stdout=subprocess.PIPE, text=True)
    rows = []
    try:
        echo.stdout.readline()
        clients = [PulseClient(e, token=token, timeout=60, client_name="bench") for e in (daemon_ep, base_ep)[:len(daemons)]]
        for client, daemon in zip(clients, daemons):
            _connect(client, daemon)
        ctx = zmq.Context()
        raw = ctx.socket(zmq.DEALER)
        raw.setsockopt(zmq.LINGER, 0)
        raw.connect(echo_ep)
        for size in args.sizes:
            region = np.random.default_rng(size).integers(0, 256, (size, size, 4), dtype=np.uint8)
            blob = ImageBlob.from_numpy(region)
            payload = memoryview(region).cast("B")
            repeat = args.repeat or (30 if size <= 256 else 10 if size <= 1024 else 5)

            # Bound now with partial, not closed over: each size's functions see that size's region.
            fns = [functools.partial(_round_trip_raw, raw, payload, region.nbytes)]
            fns += [functools.partial(_round_trip, c, blob, region.nbytes) for c in clients]
            tr, td, *tb = _interleaved(fns, repeat)
            d_med, d_min, r_med, r_min = statistics.median(td), min(td), statistics.median(tr), min(tr)
            row = {"size": size, "mib": region.nbytes / 2**20, "repeat": repeat, "daemon_ms": d_med * 1e3,
                   "raw_ms": r_med * 1e3, "ratio": d_med / r_med, "daemon_min_ms": d_min * 1e3, "raw_min_ms": r_min * 1e3}
            if tb:
                row.update(baseline_ms=statistics.median(tb[0]) * 1e3, vs_baseline=d_med / statistics.median(tb[0]))
            rows.append(row)
        for client in clients:
            client.close()
        raw.close()
        ctx.term()
    finally:
        for daemon in daemons:
            daemon.terminate()
        echo.kill()
        for daemon in daemons:
            daemon.wait(20)
        echo.wait(20)
        echo.stdout.close()
        shutil.rmtree(run_dir, ignore_errors=True)  # the ipc sockets and the daemon's runtime files
    if args.json:
        print(json.dumps({"transport": args.transport, "rows": rows}, indent=1))
        return 0
    print(f"transport: {args.transport} (loopback), RGBA u8 regions, median round trip; daemon = noop job via PulseClient")
    base = args.baseline is not None
    print(f"{'region':>10} {'MiB':>7} {'n':>3} {'daemon ms':>10} {'raw ms':>9} {'ratio':>6} {'min ratio':>9}"
          + (f" {'base ms':>8} {'vs base':>7}" if base else ""))
    for r in rows:
        print(f"{r['size']:>5}x{r['size']:<4} {r['mib']:7.2f} {r['repeat']:3d} {r['daemon_ms']:10.2f} {r['raw_ms']:9.2f} "
              f"{r['ratio']:6.2f} {r['daemon_min_ms'] / r['raw_min_ms']:9.2f}"
              + (f" {r['baseline_ms']:8.2f} {r['vs_baseline']:7.2f}" if base else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
