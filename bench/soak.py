"""Soak: a real daemon with the 32² face prior under a studio's load and faults; nothing may be lost or crossed.

    python bench/soak.py [--clients 8] [--jobs 1000] [--short] [--write-results]

All traffic on one private ipc socket. Phases:
  1. load: N client processes share the jobs (mixed `solve` and `depixelate`, a few fixed inputs and seeds, so
     repeats must come back byte for byte equal); 15 % are cancelled at a random moment, 5 % run in a client
     that SIGKILLs itself mid-job. RSS and open fds of the daemon are sampled throughout.
  2. faults: the daemon SIGSTOPped while jobs run (no job may be cancelled for it), kill -9 and restart mid-job
     (clients reconnect and re-submit), a second daemon (refused), the per-client queue limit.
  3. bad frames: malformed messages on raw sockets, each must be answered; a normal job still works after.
Prints submitted / completed / cancelled / failed / killed / lost / crossed, latency p50/p95/p99 and the RSS/fd
trend; exits 1 on any lost or crossed job, unanswered bad frame, daemon crash or SIGSTOP cancel.
Uses only the public client (PulseClient), never pipeline internals.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PRIOR = REPO.parent / "shared" / "priors" / "celeba32-dcgan.pt"
HEARTBEAT_MS = 500


# ---- inputs: a few fixed ones, so that repeats can be compared byte for byte ----------------------------------


def _inputs() -> list[tuple[str, Any, dict]]:
    import numpy as np

    out = []
    for i in range(3):
        rng = np.random.default_rng(100 + i)
        low = rng.random((8, 8, 3)).astype(np.float32)  # 8 divides 32: a ×4 solve
        out.append(("solve", low, {"mode": "solve", "candidates": 1, "steps": 4, "seed": i}))
        cells = (rng.random((8, 8, 3)) * 255).astype(np.uint8)
        mosaic = np.repeat(np.repeat(cells, 6, 0), 6, 1)  # 48×48 of 6-px blocks
        out.append(("depixelate", mosaic, {"mode": "depixelate", "candidates": 1, "steps": 4, "seed": i, "block": 6}))
    return out


# ---- client processes -----------------------------------------------------------------------------------------


def _doomed(endpoint: str, index: int) -> None:
    """A client SIGKILLed mid-job: no BYE, no CANCEL; the daemon must find out and cancel its job."""
    from protocol.client import PulseClient
    from protocol.messages import ImageBlob, Progress

    mode, pixels, params = _inputs()[index]
    c = PulseClient(endpoint, client_name="soak-doomed", timeout=30)
    jid = c.submit(ImageBlob.from_numpy(pixels), None, {**params, "steps": 5000}).job_id
    for ev in c.events(jid):
        if isinstance(ev, Progress):
            os.kill(os.getpid(), signal.SIGKILL)


def _client(endpoint: str, jobs: list[dict], out: mp.Queue) -> None:
    from protocol.client import PulseClient
    from protocol.errors import JobCancelled, JobFailed
    from protocol.messages import ImageBlob

    inputs = _inputs()
    rng = random.Random(os.getpid())
    with PulseClient(endpoint, client_name=f"soak-{os.getpid()}", timeout=60) as c:
        for job in jobs:
            if job["kill"]:
                p = mp.get_context("spawn").Process(target=_doomed, args=(endpoint, job["input"]))
                p.start()
                p.join(120)
                out.put({"id": job["id"], "outcome": "killed" if p.exitcode == -signal.SIGKILL else "lost"})
                continue
            mode, pixels, params = inputs[job["input"]]
            jid = uuid.uuid4().hex
            cancel_at = time.monotonic() + rng.uniform(0.0, 0.3) if job["cancel"] else None
            t0 = time.monotonic()
            row: dict[str, Any] = {"id": job["id"], "key": job["input"], "mode": mode}
            try:
                res = c.run_job(ImageBlob.from_numpy(pixels), None, params, job_id=jid,
                                should_cancel=(lambda at=cancel_at: time.monotonic() >= at) if cancel_at else None)
                img = res.candidates[0].image
                expected = (32, 32, 3) if mode == "solve" else pixels.shape
                crossed = res.job_id != jid or (img.height, img.width, img.channels) != expected
                row.update(outcome="crossed" if crossed else "completed", seconds=time.monotonic() - t0,
                           digest=hashlib.sha256(bytes(img.data)).hexdigest())
            except JobCancelled:
                row["outcome"] = "cancelled"
            except JobFailed as exc:
                row.update(outcome="failed", code=exc.code)
            except Exception as exc:  # a job without an answer: lost
                row.update(outcome="lost", error=f"{type(exc).__name__}: {exc}")
            out.put(row)


# ---- the daemon -----------------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, root: Path, weights: Path) -> None:
        self.root, self.weights = root, weights
        run = Path(tempfile.mkdtemp(prefix="pulse-soak-", dir="/tmp"))
        self.endpoint = f"ipc://{run}/pulse-depixelate/daemon.sock"
        self.env = {**os.environ, "HOME": str(root), "XDG_RUNTIME_DIR": str(run), "XDG_CONFIG_HOME": str(root / "c"),
                    "XDG_CACHE_HOME": str(root / "cache"), "XDG_STATE_HOME": str(root / "s"),
                    "PULSE_ENDPOINT": self.endpoint, "PYTHONPATH": str(REPO)}
        for k in ("PULSE_TOKEN", "PULSE_SERVER_KEY", "PULSE_RUNTIME_DIR"):
            self.env.pop(k, None)
        self.proc: subprocess.Popen | None = None
        self.crashes = 0
        self.log = root / "daemon.log"

    def command(self) -> list[str]:
        from protocol import launch

        return launch.daemon_argv(launch.module_program(sys.executable), endpoint=self.endpoint, weights=self.weights,
                                  extra=["--heartbeat-ms", str(HEARTBEAT_MS), "--no-log-file", "--preload"])

    def start(self) -> None:
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen(self.command(), env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not self.answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"soak: the daemon did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def answers(self) -> bool:
        from protocol.client import PulseClient
        from protocol.errors import ProtocolError

        try:
            with PulseClient(self.endpoint, client_name="soak-probe", timeout=2) as c:
                c.connect()
            return True
        except ProtocolError:
            return False

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.crashes += 1
            print(f"soak: the daemon died (exit {self.proc.returncode})", file=sys.stderr)
            self.start()

    def sample(self) -> tuple[int, int]:
        """(RSS in KiB, open fds) of the daemon."""
        pid = self.proc.pid
        rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status") if line.startswith("VmRSS"))
        return rss, len(os.listdir(f"/proc/{pid}/fd"))

    def output(self) -> str:
        return self.log.read_text(errors="replace")


# ---- phases ---------------------------------------------------------------------------------------------------


def load_phase(d: Daemon, clients: int, jobs: int, cancel_rate: float, kill_rate: float, seed: int,
               deadline: float) -> tuple[list[dict], list[tuple[float, int, int]]]:
    rng = random.Random(seed)
    n_inputs = len(_inputs())
    plan = [{"id": i, "input": rng.randrange(n_inputs), "cancel": rng.random() < cancel_rate,
             "kill": rng.random() < kill_rate} for i in range(jobs)]
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(d.endpoint, plan[i::clients], out)) for i in range(clients)]
    for p in procs:
        p.start()
    rows: list[dict] = []
    samples: list[tuple[float, int, int]] = []
    last = 0.0
    while len(rows) < jobs and time.monotonic() < deadline:
        try:
            rows.append(out.get(timeout=0.5))
        except Exception:  # queue.Empty
            pass
        if time.monotonic() - last >= 1.0:
            d.check_alive()
            samples.append((len(rows) / jobs, *d.sample()))
            last = time.monotonic()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    seen = {r["id"] for r in rows}
    rows += [{"id": j["id"], "outcome": "lost", "error": "no answer before the deadline"} for j in plan if j["id"] not in seen]
    return rows, samples


def stop_phase(d: Daemon, seconds: float) -> dict:
    """SIGSTOP the daemon while two jobs run; both must complete, nothing may be cancelled for it."""
    import threading

    from protocol.client import PulseClient
    from protocol.messages import ImageBlob

    mode, pixels, params = _inputs()[0]
    results: list[Any] = []

    def one() -> None:
        try:
            with PulseClient(d.endpoint, client_name="soak-stop", timeout=60) as c:
                results.append(c.run_job(ImageBlob.from_numpy(pixels), None, {**params, "steps": 400}))
        except Exception as exc:
            results.append(exc)

    before = d.output().count("client vanished")
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    os.kill(d.proc.pid, signal.SIGSTOP)
    time.sleep(seconds)
    os.kill(d.proc.pid, signal.SIGCONT)
    for t in threads:
        t.join(300)
    vanished = d.output().count("client vanished") - before
    return {"sigstop_s": seconds, "sigstop_completed": sum(not isinstance(r, Exception) for r in results),
            "sigstop_cancelled": vanished}


def restart_phase(d: Daemon) -> dict:
    """kill -9 mid-job and restart: the client reconnects, re-submits and gets its result."""
    import threading

    from protocol.client import PulseClient
    from protocol.messages import ImageBlob

    mode, pixels, params = _inputs()[1]
    results: list[Any] = []

    def one() -> None:
        try:
            with PulseClient(d.endpoint, client_name="soak-restart", timeout=120) as c:
                results.append(c.run_job(ImageBlob.from_numpy(pixels), None, {**params, "steps": 300}))
        except Exception as exc:
            results.append(exc)

    t = threading.Thread(target=one)
    t.start()
    time.sleep(1.0)
    d.proc.kill()
    d.proc.wait(10)
    d.start()
    t.join(300)
    second = subprocess.run(d.command(), env=d.env, capture_output=True, text=True, timeout=120)
    return {"restart_completed": int(bool(results) and not isinstance(results[0], Exception)),
            "second_daemon_refused": int(second.returncode == 2 and "already running" in second.stderr)}


def queue_phase(d: Daemon) -> dict:
    from protocol.client import PulseClient
    from protocol.errors import JobFailed
    from protocol.messages import ImageBlob

    mode, pixels, params = _inputs()[0]
    with PulseClient(d.endpoint, client_name="soak-queue", timeout=30) as c:
        ids = [c.submit(ImageBlob.from_numpy(pixels), None, {**params, "steps": 5000}).job_id for _ in range(9)]
        try:
            c.submit(ImageBlob.from_numpy(pixels), None, params)
            refused = 0
        except JobFailed as exc:
            refused = int(exc.code == "QUEUE_FULL" and exc.retryable)
        for jid in ids:
            c.cancel(jid)
        return {"queue_full_refused": refused}


def bad_frame_phase(d: Daemon, count: int) -> dict:
    import msgpack
    import zmq

    from protocol.codec import MAGIC

    rng = random.Random(7)
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    s.connect(d.endpoint)
    answered = 0
    for i in range(count):
        kind = i % 4
        if kind == 0:
            frames = [rng.randbytes(rng.randrange(1, 64))]
        elif kind == 1:
            frames = [b"NOTPULSE", b"\x80"]
        elif kind == 2:
            frames = [MAGIC, msgpack.packb({"type": "HELLO", "protocol": "x"})]
        else:
            frames = [MAGIC, msgpack.packb({"type": "EXPLODE", "n": i})]
        s.send_multipart(frames)
        if s.poll(10_000):
            s.recv_multipart()
            answered += 1
    s.close(0)
    return {"bad_frames": count, "bad_frames_answered": answered}


# ---- report ---------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q / 100 * (len(v) - 1))))]


def summarise(rows: list[dict], samples: list[tuple[float, int, int]]) -> dict:
    by: dict[str, int] = {}
    for r in rows:
        by[r["outcome"]] = by.get(r["outcome"], 0) + 1
    digests: dict[int, set[str]] = {}
    for r in rows:
        if r["outcome"] == "completed":
            digests.setdefault(r["key"], set()).add(r["digest"])
    crossed = by.get("crossed", 0) + sum(len(v) - 1 for v in digests.values())  # a repeat with other bytes
    lat = [r["seconds"] for r in rows if r["outcome"] == "completed"]
    warm = [s for s in samples if s[0] >= 0.2] or samples
    rss0, rss1 = (warm[0][1], warm[-1][1]) if warm else (0, 0)
    return {"submitted": len(rows), "completed": by.get("completed", 0), "cancelled": by.get("cancelled", 0),
            "failed": by.get("failed", 0), "killed": by.get("killed", 0), "lost": by.get("lost", 0), "crossed": crossed,
            "p50_s": percentile(lat, 50), "p95_s": percentile(lat, 95), "p99_s": percentile(lat, 99),
            "rss_warm_mib": rss0 / 1024, "rss_end_mib": rss1 / 1024,
            "rss_growth_pct": 100.0 * (rss1 - rss0) / rss0 if rss0 else 0.0,
            "fds_warm": warm[0][2] if warm else 0, "fds_end": warm[-1][2] if warm else 0}


def table(s: dict) -> str:
    keys = list(s)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    return "| " + " | ".join(keys) + " |\n|" + "---|" * len(keys) + "\n| " + " | ".join(fmt(s[k]) for k in keys) + " |\n"


def write_results(text: str) -> None:
    path = REPO / "bench" / "RESULTS.md"
    doc = path.read_text()
    start, end = "<!-- soak -->", "<!-- /soak -->"
    block = f"{start}\n{text}{end}"
    if start in doc and end in doc:
        doc = doc[: doc.index(start)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n## bench/soak.py — the daemon under load and faults\n\n" + block + "\n"
    path.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--cancel-rate", type=float, default=0.15)
    ap.add_argument("--kill-rate", type=float, default=0.05)
    ap.add_argument("--stop-seconds", type=float, default=10.0, help="SIGSTOP of the fault phase")
    ap.add_argument("--bad-frames", type=int, default=400)
    ap.add_argument("--max-seconds", type=float, default=1800.0, help="the load phase ends here, whatever is left")
    ap.add_argument("--short", action="store_true", help="CI variant: 4 clients, 120 jobs, 4 s SIGSTOP, 100 bad frames")
    ap.add_argument("--weights", type=Path, default=PRIOR)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write-results", action="store_true", help="append/replace the table in bench/RESULTS.md")
    args = ap.parse_args(argv)
    if args.short:
        args.clients, args.jobs, args.stop_seconds, args.bad_frames = 4, 120, 4.0, 100
        args.max_seconds = min(args.max_seconds, 150.0)
    if not args.weights.is_file():
        print(f"soak: face prior not found: {args.weights}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="pulse-soak-") as tmp:
        d = Daemon(Path(tmp), args.weights)
        d.start()
        try:
            rows, samples = load_phase(d, args.clients, args.jobs, args.cancel_rate, args.kill_rate, args.seed,
                                       time.monotonic() + args.max_seconds)
            summary = summarise(rows, samples)
            d.check_alive()
            summary.update(stop_phase(d, args.stop_seconds))
            summary.update(queue_phase(d))
            summary.update(restart_phase(d))
            summary.update(bad_frame_phase(d, args.bad_frames))
            d.check_alive()
            summary["daemon_crashes"] = d.crashes
            summary["wall_s"] = round(time.monotonic() - t0, 1)
        finally:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.terminate()
                d.proc.wait(30)
    text = table(summary)
    print(text)
    for r in rows:
        if r["outcome"] in ("lost", "crossed"):
            print(f"soak: job {r['id']}: {r['outcome']}: {r.get('error', '')}", file=sys.stderr)
    if args.write_results:
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        write_results(f"### {stamp} — {args.clients} clients, {args.jobs} jobs{' (short)' if args.short else ''}\n\n{text}\n")
    ok = (summary["lost"] == 0 and summary["crossed"] == 0 and summary["daemon_crashes"] == 0
          and summary["sigstop_cancelled"] == 0 and summary["sigstop_completed"] == 2
          and summary["bad_frames_answered"] == summary["bad_frames"] and summary["restart_completed"] == 1
          and summary["second_daemon_refused"] == 1 and summary["queue_full_refused"] == 1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
