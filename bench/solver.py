"""Solver benchmark: the faithful baseline loop vs the default (fast) mode, measured in one run.

    .venv/bin/python bench/solver.py                      # CPU, tiny 32² StyleGAN2, K=4
    .venv/bin/python bench/solver.py --config f1024       # GPU, config-f 1024² (random weights), K=1,4,8

Modes (pulse_server.solver, SolveConfig.precision):
  baseline        "fp32": the original loop's structure: fp32, eager, one candidate at a time, a host
                  sync every step, the grouped ("fused") modulated convolution.
  default         the fast path: K candidates in one batch, no host sync in the loop, unfused modconv,
                  bf16 autocast for the synthesis network on CUDA.
  default-fused   the fast path with the grouped modulated convolution (to compare the two forms).
  default-compile the fast path with torch.compile of the renderer (CUDA only; compile time excluded).

Each row: steps/s (solver steps for all K candidates per second: the baseline runs K·S single-candidate
steps for S of them), time for 100 steps, time until every candidate that matches eps has matched it
(the baseline's candidates run one after another), peak GPU memory,
the best candidate's final downscale error, and (with --flops) forward+backward FLOPs of one step and
the fraction of the device's measured matmul ceiling they reach.
Targets are real renders of the same generator downscaled by the config's factor, the same seeds in
every mode, so "final error" compares quality at equal work.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pulse_server.models.stylegan2 import Generator, StyleGAN2Prior, fit_gaussian  # noqa: E402
from pulse_server.models.testing import make_tiny_generator  # noqa: E402
from pulse_server.solver import SolveConfig, solve  # noqa: E402
from pulse_server.solver.downsample import BicubicDownsample  # noqa: E402

CONFIGS = {
    # name: (resolution, factor, default K list)
    "tiny": (32, 8, [4]),
    "f1024": (1024, 32, [1, 4, 8]),
}
MODES = ("baseline", "default", "default-fused", "default-compile")


@dataclass
class Row:
    mode: str
    k: int
    steps: int
    seconds: float
    steps_per_s: float
    time_100: float
    time_to_eps: float | None
    peak_mem_mb: float | None
    final_error: float
    reached: int
    gflop_step: float | None = None
    tflops: float | None = None
    ceiling_frac: float | None = None


def build_prior(config: str, device: torch.device, seed: int = 0) -> StyleGAN2Prior:
    res = CONFIGS[config][0]
    if config == "tiny":
        g = make_tiny_generator(res, seed)
        samples = 20_000
    else:
        torch.manual_seed(seed)
        g = Generator(res).eval()  # config-f widths, random weights: same FLOPs as the FFHQ release
        samples = 100_000
    g = g.to(device)
    mean, std = fit_gaussian(g, samples=samples)
    return StyleGAN2Prior(g, mean, std).to(device).freeze()


def make_target(prior: StyleGAN2Prior, factor: int, seed: int) -> np.ndarray:
    with torch.no_grad():
        z = prior.sample_latent(1, torch.Generator().manual_seed(seed))
        img = ((prior.render(z) + 1) / 2).clamp(0, 1)
        low = BicubicDownsample(factor).to(img.device)(img)
    return low[0].permute(1, 2, 0).float().cpu().numpy()


def mode_config(mode: str, k: int, steps: int, eps: float, seed: int) -> SolveConfig:
    if mode == "baseline":
        return SolveConfig(candidates=k, steps=steps, eps=eps, seed=seed, precision="fp32")
    return SolveConfig(candidates=k, steps=steps, eps=eps, seed=seed, precision="default",
                       fused=True if mode == "default-fused" else None, compile=mode == "default-compile")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_mode(prior, target, mode: str, k: int, steps: int, eps: float, seed: int, device: torch.device,
             warmup: int) -> Row:
    if warmup:
        solve(prior, target, mode_config(mode, k, warmup, eps, seed))  # cudnn autotune, compile, allocator
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    t0 = time.perf_counter()
    res = solve(prior, target, mode_config(mode, k, steps, eps, seed))
    sync(device)
    wall = time.perf_counter() - t0
    # per candidate step time: the baseline runs its candidates one after another
    serial = mode == "baseline"
    per_step = wall / (steps * (k if serial else 1))
    firsts = []
    for i, c in enumerate(sorted(res.candidates, key=lambda c: c.seed)):
        if c.eps_step is not None:
            firsts.append(((i * steps) if serial else 0) + c.eps_step)
    # the user waits for all K faces: time until every candidate that matches eps has matched it
    tte = max(firsts) * per_step if firsts else None
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    sps = steps / wall
    return Row(mode, k, steps, wall, sps, 100 / sps, tte, peak, res.candidates[0].downscale_mse,
               sum(c.eps_reached for c in res.candidates))


def step_flops(prior, target, k: int, eps: float, device: torch.device) -> float:
    """Forward+backward FLOPs of one batched step (torch's FlopCounterMode: matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        solve(prior, target, SolveConfig(candidates=k, steps=1, eps=eps, seed=0, precision="fp32"))
    return float(counter.get_total_flops())


def matmul_ceiling(device: torch.device, dtype: torch.dtype) -> float:
    """Measured dense matmul throughput (FLOP/s) of this device: the roofline for compute-bound steps."""
    n = 8192 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps = 20 if device.type == "cuda" else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def machine(device: torch.device) -> str:
    from pulse_server.devices import device_label

    return f"{device_label(device)}, {os.cpu_count()} cores, torch {torch.__version__}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        return "?"


def fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def table(rows: list[Row]) -> str:
    head = ("| mode | K | steps/s | 100 steps (s) | time to eps (s) | peak mem (MiB) | final error | reached "
            "| GFLOP/step | TFLOP/s | of ceiling |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r.mode} | {r.k} | {r.steps_per_s:.2f} | {r.time_100:.3g} | {fmt(r.time_to_eps, '.3g', 'not reached')} "
                     f"| {fmt(r.peak_mem_mb, '.0f')} | {r.final_error:.2e} | {r.reached}/{r.k} "
                     f"| {fmt(r.gflop_step, '.3g')} | {fmt(r.tflops, '.3f')} | {fmt(r.ceiling_frac, '.1%')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", choices=tuple(CONFIGS), default="tiny")
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps|xpu (auto: cuda > mps > xpu > cpu)")
    ap.add_argument("-k", "--candidates", type=int, nargs="+", default=None, help="K values (default per config)")
    ap.add_argument("--modes", nargs="+", choices=MODES, default=None,
                    help="default: baseline default (CPU); baseline default default-fused (CUDA)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eps", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0, help="seed of candidate 1 (the same in every mode)")
    ap.add_argument("--target-seed", type=int, default=1234, help="seed of the rendered face used as target")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps before each timed run (default: 5 on "
                                                              "CUDA, 2 on CPU)")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per row, interleaved across modes; the "
                                                          "fastest is kept (shared machines are noisy)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--flops", action=argparse.BooleanOptionalAction, default=True,
                    help="count FLOPs of one step and measure the matmul ceiling")
    ap.add_argument("--json", metavar="PATH", default=None, help="also write the rows as JSON")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    from pulse_server.devices import resolve_device

    device = resolve_device(args.device)
    res, factor, ks = CONFIGS[args.config]
    ks = args.candidates or ks
    modes = args.modes or (["baseline", "default", "default-fused"] if device.type == "cuda" else ["baseline", "default"])
    warmup = args.warmup if args.warmup is not None else (5 if device.type == "cuda" else 2)

    t = time.perf_counter()
    prior = build_prior(args.config, device)
    target = make_target(prior, factor, args.target_seed)
    print(f"# {args.config}: {res}² generator, target {res // factor}² (×{factor}), prior ready in "
          f"{time.perf_counter() - t:.1f} s on {machine(device)}", flush=True)

    ceiling = None
    if args.flops:
        ceiling = matmul_ceiling(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
        print(f"# matmul ceiling ({'bf16' if device.type == 'cuda' else 'fp32'}): {ceiling / 1e12:.2f} TFLOP/s", flush=True)

    rows: list[Row] = []
    for k in ks:
        flops = step_flops(prior, target, k, args.eps, device) if args.flops else None
        active = [m for m in modes if not (m == "default-compile" and device.type != "cuda")]
        best: dict[str, Row] = {}
        for rep in range(max(1, args.repeat)):
            for mode in active:
                row = run_mode(prior, target, mode, k, args.steps, args.eps, args.seed, device,
                               warmup if rep == 0 else 0)
                if mode not in best or row.seconds < best[mode].seconds:
                    best[mode] = row
                print(f"  {mode:16s} K={k} run {rep + 1}: {row.steps_per_s:7.2f} steps/s, final error "
                      f"{row.final_error:.2e}", flush=True)
        for mode in active:
            row = best[mode]
            if flops:
                row.gflop_step = flops / 1e9
                row.tflops = flops * row.steps_per_s / 1e12
                row.ceiling_frac = row.tflops * 1e12 / ceiling if ceiling else None
            rows.append(row)

    print()
    print(f"date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {commit()}, {machine(device)}")
    print(f"config {args.config}, steps {args.steps}, eps {args.eps:g}, seed {args.seed}")
    print(table(rows))
    by = {(r.mode, r.k): r for r in rows}
    for k in ks:
        if ("baseline", k) in by and ("default", k) in by:
            b, d = by[("baseline", k)], by[("default", k)]
            tte = (f", time-to-eps ratio {b.time_to_eps / d.time_to_eps:.2f}×"
                   if b.time_to_eps and d.time_to_eps else "")
            print(f"K={k}: default/baseline speed {d.steps_per_s / b.steps_per_s:.2f}×{tte}, "
                  f"error ratio {d.final_error / b.final_error:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": args.config, "device": machine(device), "commit": commit(),
                                               "rows": [asdict(r) for r in rows]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
