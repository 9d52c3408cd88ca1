"""How good the daemon's time estimates are: ACCEPTED's `estimate_s` and `wait_s` against what the jobs took.

    .venv/bin/python bench/estimate.py                           # 24 jobs on the 32² prior
    .venv/bin/python bench/estimate.py --weights digiface-64 --jobs 16
    .venv/bin/python bench/estimate.py --write                   # also add the table to bench/RESULTS.md

A real `pulse-server run` process with a fresh cache folder (so it measures the model itself, as on a user's
first job), one client. The first job is the warm-up: it waits while the model loads and is measured (its
ACCEPTED has no estimate; the time it spent "loading" is reported). Then `--jobs` jobs one after another, of
varied kind: depixelate on mosaicked face photos (bench/quality.py's cases, `pip install -e '.[bench]'`),
some ×2 or ×3 larger (4 or 9 times the pixels: the photo enlarged, then pixelated with 2 or 3 times the
block, see `grown`), and PULSE solve jobs on
8×8 faces; K from 1 to 4, steps from 30 to 150. For each: the estimate against the job's actual time, from
SUBMIT to RESULT minus its wait (until JOB_STATE(running)). Then `--pairs` pairs submitted back to back: the
second one's `wait_s` against how long it waited.

The estimate is for the whole step budget and the search may stop early (depixelate only), so a ratio above 1
is expected where it did. Target: median estimate/actual within 0.7–1.4.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the tests' daemon helper
sys.path.insert(0, str(Path(__file__).parent))  # bench/quality.py's face cases

import quality  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## bench/estimate.py"
TARGET = (0.7, 1.4)


@dataclass
class Row:
    kind: str  # "depixelate 300×280" | "solve 8×8"
    k: int
    steps: int
    estimate: float
    actual: float

    @property
    def ratio(self) -> float:
        return self.estimate / self.actual if self.actual > 0 else float("nan")


def job_mix(count: int, seed: int) -> list[tuple[str, np.ndarray, dict]]:
    """`count` (label, region, params): 3 in 4 depixelate (photo cases at ×1, ×2, ×3), 1 in 4 solve."""
    sources, missing = quality.available_sources()
    if not sources:
        raise SystemExit("no face photo source is installed (scikit-image: pip install -e '.[bench]')")
    cases = quality.make_cases(count, seed, sources)
    rng = np.random.default_rng(seed)
    jobs = []
    for i, case in enumerate(cases):
        k = int(rng.integers(1, 5))
        steps = int(rng.choice([30, 60, 100, 150]))
        grow = int(rng.choice([1, 1, 2, 3]))
        if i % 4 == 3:
            h, w = case.truth.shape[:2]
            side = min(h, w)
            square = case.truth[(h - side) // 2 : (h + side) // 2, (w - side) // 2 : (w + side) // 2]
            low = np.asarray(Image.fromarray(square).resize((8, 8), Image.Resampling.BOX))
            jobs.append(("solve 8×8", low, {"mode": "solve", "candidates": k, "steps": steps, "seed": i}))
            continue
        region = case.region if grow == 1 else grown(case, grow)
        h, w = region.shape[:2]
        jobs.append((f"depixelate {w}×{h}", region, {"mode": "depixelate", "candidates": k, "steps": steps,
                                                        "seed": case.seed}))
    return jobs


def grown(case: quality.Case, factor: int) -> np.ndarray:
    """The case `factor`× larger per side as an editor would hold it: the photo enlarged smoothly (bicubic)
    and pixelated again over the enlarged rectangle with `factor`× the block (at most the detector's largest).
    Enlarging the mosaicked region itself (nearest neighbour) would make every photo pixel a factor-px block:
    the detector then rightly finds a factor-px mosaic over the whole region (100 000+ cells), a job no editor
    sends and one the estimate's search term (measured on 16×16 cells) does not describe."""
    from pulse_server.pipeline.mosaic import MAX_BLOCK

    h, w = case.truth.shape[:2]
    big = np.asarray(Image.fromarray(case.truth).resize((w * factor, h * factor), Image.Resampling.BICUBIC))
    x, y, rw, rh = case.rect
    block = min(case.block * factor, MAX_BLOCK)
    phase = (case.phase[0] * factor % block, case.phase[1] * factor % block)
    return quality.pixelate(big, block, (x * factor, y * factor, rw * factor, rh * factor), phase)


def run_one(client, region: np.ndarray, params: dict) -> tuple[float, float, float]:
    """-> (estimate_s, wait_s, seconds from JOB_STATE(running) to RESULT)."""
    from protocol.messages import ImageBlob

    accepted, running = [], []
    t0 = time.monotonic()

    def on_state(state: str) -> None:
        if state == "running" and not running:
            running.append(time.monotonic())

    client.run_job(ImageBlob.from_numpy(region), None, params, on_accepted=accepted.append, on_state=on_state)
    t1 = time.monotonic()
    started = running[0] if running else t0
    return accepted[0].estimate_s, accepted[0].wait_s, t1 - started


def run_pair(client, first: tuple[np.ndarray, dict], second: tuple[np.ndarray, dict]) -> tuple[float, float]:
    """Two jobs submitted back to back -> (second's wait_s, how long it actually waited)."""
    from protocol.messages import Failed, ImageBlob, JobState, Result

    a = client.submit(ImageBlob.from_numpy(first[0]), None, first[1])
    t_submit = time.monotonic()
    b = client.submit(ImageBlob.from_numpy(second[0]), None, second[1])
    started = None
    for ev in client.events(b.job_id):
        if isinstance(ev, JobState) and ev.state == "running" and started is None:
            started = time.monotonic()
        if isinstance(ev, (Result, Failed)):
            break
    for ev in client.events(a.job_id):
        if isinstance(ev, (Result, Failed)):
            break
    return b.wait_s, (started or time.monotonic()) - t_submit


def summary(rows: list[Row]) -> dict[str, float]:
    ratios = sorted(r.ratio for r in rows)
    q = statistics.quantiles(ratios, n=10) if len(ratios) >= 2 else ratios * 9
    return {"median": statistics.median(ratios), "p10": q[0], "p90": q[-1], "min": ratios[0], "max": ratios[-1]}


def table(rows: list[Row]) -> str:
    lines = ["| # | job | K | steps | estimate s | actual s | estimate/actual |", "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows, 1):
        lines.append(f"| {i} | {r.kind} | {r.k} | {r.steps} | {r.estimate:.2f} | {r.actual:.2f} | "
                     f"{r.ratio:.2f} |")
    return "\n".join(lines)


def machine(threads: int) -> str:
    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return f"{quality.machine(1).split(',')[0]}, {os.cpu_count()} cores, {threads} torch thread(s){load}"


def insert_section(text: str, block: str) -> str:
    """RESULTS.md with `block` at the end of this bench's section (created if absent)."""
    if SECTION not in text:
        intro = (f"{SECTION} — the daemon's time estimates against the jobs' times\n\nSee the script's docstring for "
                 "the jobs. Ratios inside one run only: the machine's load moves absolute times.")
        text = text.rstrip("\n") + "\n\n" + intro + "\n"
    start = text.index(SECTION)
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt < 0 else nxt + 1
    before, after = text[:end].rstrip("\n"), text[end:]
    return before + "\n\n" + block.rstrip("\n") + "\n" + ("\n" + after if after else "")


def main() -> int:
    from daemon_fixture import start_daemon

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(quality.DEFAULT_PRIOR), help="model: a checkpoint file or a registry name")
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the daemon (OMP_NUM_THREADS); two threads on two shared cores collapse "
                         "whenever another process runs (bench/RESULTS.md, bench/solver.py)")
    ap.add_argument("--write", action="store_true", help=f"add the table to {RESULTS.relative_to(REPO)}")
    args = ap.parse_args()
    jobs = job_mix(args.jobs + 2 * args.pairs + 1, args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="pulse-bench-estimate-"))
    d = start_daemon(tmp, weights=args.weights, timeout=240, args=["--no-log-file"],
                     env={"PULSE_CACHE_DIR": str(tmp / "cache"), "OMP_NUM_THREADS": str(args.threads)})
    rows: list[Row] = []
    waits: list[tuple[float, float]] = []
    try:
        with d.client(client_name="bench-estimate", timeout=60.0) as c:
            c.connect()
            label, region, params = jobs[0]
            t0 = time.monotonic()
            est0, _, actual0 = run_one(c, region, params)
            warm_wall = time.monotonic() - t0
            print(f"warm-up ({label}): estimate {est0:g} (unknown before the measurement), loading and measuring "
                  f"{warm_wall - actual0:.1f} s, job {actual0:.1f} s", flush=True)
            for label, region, params in jobs[1 : args.jobs + 1]:
                est, _, actual = run_one(c, region, params)
                rows.append(Row(label, params["candidates"], params["steps"], est, actual))
                print(f"{label:24} K={params['candidates']} steps {params['steps']:3}: estimate {est:6.2f} s, "
                      f"actual {actual:6.2f} s, ratio {est / actual:.2f}", flush=True)
            rest = jobs[args.jobs + 1 :]
            for i in range(args.pairs):
                (_, r1, p1), (_, r2, p2) = rest[2 * i], rest[2 * i + 1]
                waits.append(run_pair(c, (r1, p1), (r2, p2)))
                print(f"pair {i + 1}: wait_s {waits[-1][0]:.2f}, waited {waits[-1][1]:.2f} s", flush=True)
    finally:
        d.stop()
    s = summary(rows)
    later = summary(rows[len(rows) // 2 :]) if len(rows) >= 4 else s
    wait_ratios = [w / a for w, a in waits if a > 0 and w > 0]
    verdict = "yes" if TARGET[0] <= s["median"] <= TARGET[1] else "no"
    lines = [f"estimate/actual over {len(rows)} jobs: median {s['median']:.2f}, 10–90 % {s['p10']:.2f}–{s['p90']:.2f}, "
             f"range {s['min']:.2f}–{s['max']:.2f}; second half (after more corrections) median {later['median']:.2f}, "
             f"10–90 % {later['p10']:.2f}–{later['p90']:.2f}; target median {TARGET[0]}–{TARGET[1]}: {verdict}"]
    if wait_ratios:
        lines.append(f"wait_s/actual wait over {len(wait_ratios)} back-to-back pairs: median "
                     f"{statistics.median(wait_ratios):.2f}, range {min(wait_ratios):.2f}–{max(wait_ratios):.2f}")
    lines.append(f"warm-up: loading + measuring the model {warm_wall - actual0:.1f} s before the first job ran")
    print("\n".join(lines))
    if args.write:
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/estimate.py", *sys.argv[1:]])
        block = "\n".join([f"### {when} — commit {quality.git('rev-parse', '--short', 'HEAD') or '?'} — {machine(args.threads)}", "",
                           f"`{cmd}` (model {Path(args.weights).name}, seed {args.seed})", "", table(rows), "",
                           *[f"- {line}" for line in lines]])
        RESULTS.write_text(insert_section(RESULTS.read_text(), block))
        print(f"written to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
