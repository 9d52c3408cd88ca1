"""The PULSE latent search (Menon et al., CVPR 2020): find faces whose downscaled versions match an input.

    minimise  100·L2(D(G(z, noise)), target) + 0.05·GEOCROSS(w+(z))   over z on spheres (+ some noise maps)

G is any `FacePrior` (StyleGAN2: z -> w+ = lrelu(z·std + mean) inside `render`; DCGAN: z directly), D the
antialiased bicubic downscaler, target the low-res input in [0, 1].

Search space and optimizer (the original `PULSE.py`, `SphericalOptimizer.py`):
  the starting latent is `prior.sample_latent` (StyleGAN2: z ~ N(0, I), one row per W+ input; the gaussian
  fit of the mapping output is the prior's, computed once per checkpoint); after every Adam step each
  latent row and each trainable noise map is rescaled to the norm it started with, per candidate; noise
  maps are drawn from the candidate's seed, the last noise layer is zero; GEOCROSS acts on the mapped W+
  rows (`prior.to_wplus`), as the original's `latent_in`; `tile_latent` searches one row repeated.

Defaults and where they come from (SolveConfig):
  steps=100, lr=0.4, schedule="linear1cycledrop", optimizer Adam   the original `run.py` defaults (the lr
                                                                     starts at 0.1·lr, peaks at 45%, drops
                                                                     to 0.001·lr over the last 10%).
  loss="100*L2+0.05*GEOCROSS"                                        the original `run.py` default.
  noise="trainable", trainable_noise_layers=5, last layer zeroed     the original (`bad_noise_layers="17"`,
                                                                     the last of 18 layers at 1024²).
  eps=2e-3                                                           the product's contract (the original
                                                                     uses 1e-3 in run.py, 4e-3 in its demo);
                                                                     2e-3 ≈ an RMS error of 4.5% per pixel.
  tile_latent=False                                                  the original's default (full W+).
  below_eps_weight=0.1                                               ours: the data term's slope below eps
                                                                     (the original: 0, a hard clamp), see
                                                                     losses.py.
  candidates=1, seed=None (random)                                   the original's batch of 1; seed 0 is
                                                                     a seed here (the original's `if seed:`
                                                                     ignored it).
  precision="default", fused=None, compile=False                     ours, see "Precision modes" below.
  progress_interval=0.1 s, preview_every=0, preview_size=128         ours: a bar that moves 10×/s costs at
                                                                     most 10 host syncs per second.
Beyond the original:
  * the data term is measured on the image as returned (clamped to [0, 1]; straight-through gradient):
    the original measured the unclamped image but returned it clamped;
  * each candidate keeps its BEST step, not its last: a step that matches eps beats one that does not;
    among those, the lower (soft-clamped) total loss wins; the returned image is that step's image;
  * K candidates are one batch with one seed each (candidate i: seed + i); losses are per candidate and
    candidates never interact, so a candidate's result does not depend on K;
  * results come back sorted by downscale error, each flagged eps_reached; a solve that misses eps still
    returns its best candidates.

Precision modes:
  "default"  the fast path: all K candidates in one batch, no host sync inside the step loop (the best
             image, its error and step are tracked on the device with `torch.where`; progress syncs only
             when a callback is due, at most every `progress_interval` s), noise preallocated, fused Adam
             and bf16 autocast for the synthesis network on CUDA only (latents, losses, downscaler in fp32),
             optional `torch.compile` of the renderer on CUDA (`compile=True`; never on CPU, never at import),
             StyleGAN2's unfused modulated convolution (shared-weight convs over the whole batch, the form
             bf16 tensor cores like; 1.1× the grouped form for K=4 on CPU, tiny config; bench/solver.py's
             `default-fused` row compares the two on any device).
  "fp32"     the faithful baseline: the original loop's structure: fp32, eager, one candidate at a time,
             the loss read back to the host at every step.
Both modes compute the same function: on CPU they agree to float rounding (tests/unit/test_solver.py).
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from protocol.job import PARAMS, PRECISIONS

from ..errors import Cancelled, SolverError
from ..models.base import FacePrior
from .downsample import BicubicDownsample, padding
from .losses import mse_per_image, parse_loss, total_loss
from .schedules import get_schedule
from .sphere import SphericalOptimizer

NOISE_TYPES = ("zero", "fixed", "trainable")


@dataclass
class SolveConfig:
    # The job's own settings: defaults from the job contract (protocol/job.py); seed None = a random one.
    candidates: int = PARAMS["candidates"].default
    steps: int = PARAMS["steps"].default
    eps: float = PARAMS["eps"].default
    seed: int | None = None
    lr: float = 0.4
    schedule: str = "linear1cycledrop"
    noise: str = "trainable"
    trainable_noise_layers: int = 5
    loss: str = "100*L2+0.05*GEOCROSS"
    tile_latent: bool = False
    precision: str = PARAMS["precision"].default
    preview_every: int = 0
    # Beyond the contract (all optional):
    below_eps_weight: float = 0.1  # slope of the data term below eps (0 = the original's hard clamp)
    bad_noise_layers: tuple[int, ...] | None = None  # noise layers forced to zero; None = the last one
    progress_interval: float = 0.1  # default mode: seconds between progress callbacks (first/last always)
    preview_size: int = 128  # previews are at most this many pixels wide
    compile: bool = False  # torch.compile the renderer (CUDA, default precision only)
    fused: bool | None = None  # StyleGAN2 modulated-conv form; None: unfused in "default", the prior's own in "fp32"


@dataclass
class Progress:
    step: int
    total: int
    losses: dict[str, float]  # this step, mean over candidates: each loss term, "TOTAL", "MSE" (downscale)
    best_error: float  # lowest downscale MSE seen so far, any candidate, any step (never rises)
    preview: np.ndarray | None = None  # (h, w, 3) uint8


@dataclass
class CandidateResult:
    image: np.ndarray  # (R, R, 3) float32 in [0, 1]
    seed: int
    downscale_mse: float
    eps_reached: bool
    steps: int  # the step (1-based) whose image this is
    eps_step: int | None = None  # first step at which this candidate matched eps (None: never)


@dataclass
class SolveResult:
    candidates: list[CandidateResult]  # best first
    factor: int
    resolution: int
    seconds: float = 0.0
    steps_run: int = 0  # steps per candidate


# ----------------------------------------------------------------------------------------------- input


def _target_tensor(lowres: np.ndarray, resolution: int) -> tuple[Tensor, int]:
    """(h, w, 3) float in [0, 1] -> ((1, 3, h, w) float32, factor); SolverError for anything unsolvable."""
    a = np.asarray(lowres)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] not in (1, 3):
        raise SolverError(f"low-res input must be an (h, w, 3) RGB image, got shape {a.shape}", code="BAD_SIZE")
    if a.shape[2] == 1:
        a = np.repeat(a, 3, axis=2)
    h, w = a.shape[:2]
    if h == 0 or w == 0:
        raise SolverError("low-res input is empty", code="BAD_SIZE")
    if h != w:
        raise SolverError(f"low-res input must be square, got {w}×{h}", code="BAD_SIZE")
    if resolution % h:
        divisors = [d for d in range(2, resolution + 1) if resolution % d == 0]
        raise SolverError(
            f"low-res input {w}×{h} does not divide the generator resolution {resolution}; "
            f"use a size in {divisors}", code="BAD_SIZE")
    factor = resolution // h
    if max(padding(factor)) >= resolution:
        raise SolverError(f"low-res input {w}×{h} is too small (at least 2×2)", code="BAD_SIZE")
    a = a.astype(np.float32, copy=False)
    if not np.isfinite(a).all():
        raise SolverError("low-res input contains NaN or infinite values", code="BAD_INPUT")
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].contiguous()
    return t, factor


def check_search(candidates: int, steps: int, eps: float, precision: str, schedule: str) -> None:
    """The checks every search (PULSE's and the mosaic search) makes on its budget; SolverError names the bad one."""
    if candidates < 1:
        raise SolverError(f"candidates must be >= 1, got {candidates}", code="BAD_PARAMS")
    if steps < 1:
        raise SolverError(f"steps must be >= 1, got {steps}", code="BAD_PARAMS")
    if not (eps > 0 and math.isfinite(eps)):
        raise SolverError(f"eps must be a positive number, got {eps}", code="BAD_PARAMS")
    if precision not in PRECISIONS:
        raise SolverError(f"precision must be one of {PRECISIONS}, got {precision!r}", code="BAD_PARAMS")
    get_schedule(schedule)


def _validate(config: SolveConfig) -> None:
    check_search(config.candidates, config.steps, config.eps, config.precision, config.schedule)
    if config.noise not in NOISE_TYPES:
        raise SolverError(f"noise must be one of {NOISE_TYPES}, got {config.noise!r}", code="BAD_PARAMS")
    parse_loss(config.loss)


# ------------------------------------------------------------------------------------------ the search


def initial_state(prior: FacePrior, seeds: list[int], config: SolveConfig, device: torch.device
                   ) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """-> (latent leaf (K, rows|1, dim), noises for render, the trainable noise leaves).

    Everything random is drawn on the CPU from one generator per candidate seed, so a candidate's start
    depends only on its seed: not on K, the device or the precision mode.
    """
    shapes = prior.noise_shapes()
    bad = set(config.bad_noise_layers) if config.bad_noise_layers is not None else {len(shapes) - 1}
    latents, noise_rows = [], []
    for seed in seeds:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        z = prior.sample_latent(1, gen).to("cpu", torch.float32)  # (1, rows, dim)
        if config.tile_latent:
            z = z[:, :1]
        latents.append(z)
        noise_rows.append([torch.randn(1, 1, h, w, generator=gen) for (h, w) in shapes])
    latent = torch.cat(latents).to(device).requires_grad_(True)

    noises, trainable = [], []
    for i, (h, w) in enumerate(shapes):
        if config.noise == "zero" or i in bad:
            noises.append(torch.zeros(1, 1, h, w, device=device))  # broadcasts over candidates
            continue
        n = torch.cat([rows[i] for rows in noise_rows]).to(device)  # (K, 1, h, w)
        if config.noise == "trainable" and i < config.trainable_noise_layers:
            n.requires_grad_(True)
            trainable.append(n)
        noises.append(n)
    return latent, noises, trainable


class _Search:
    """One batch of candidates: state, optimizer, on-device best-of tracking. `step()` never syncs."""

    def __init__(self, prior: FacePrior, target: Tensor, factor: int, seeds: list[int], config: SolveConfig,
                 render: Callable[..., Tensor], autocast: bool):
        self.prior, self.config, self.render, self.autocast = prior, config, render, autocast
        device = target.device
        self.target = target
        self.down = BicubicDownsample(factor).to(device)
        self.spec = parse_loss(config.loss)
        self.schedule = get_schedule(config.schedule)
        self.latent, self.noises, trainable = initial_state(prior, seeds, config, device)
        # CUDA fast path: the fused Adam kernel (one launch for all tensors; same update rule)
        extra: dict[str, Any] = {"fused": True} if (autocast and device.type == "cuda") else {}
        self.opt = SphericalOptimizer([self.latent, *trainable], lr=config.lr, **extra)
        self.to_wplus = getattr(prior, "to_wplus", None)  # GEOCROSS acts on W+ (the original's latent_in)
        k, r = len(seeds), prior.resolution
        self.best_score = torch.full((k,), math.inf, device=device)
        self.best_hit = torch.zeros(k, dtype=torch.bool, device=device)
        self.best_mse = torch.full((k,), math.inf, device=device)  # error of the step each candidate returns
        self.min_mse = torch.full((k,), math.inf, device=device)  # lowest error seen (progress: never rises)
        self.best_step = torch.zeros(k, dtype=torch.long, device=device)
        self.eps_step = torch.zeros(k, dtype=torch.long, device=device)
        self.best_image = torch.zeros(k, 3, r, r, device=device)
        self.last_losses: dict[str, Tensor] = {}

    def step(self, j: int) -> None:
        cfg = self.config
        for group in self.opt.opt.param_groups:
            group["lr"] = cfg.lr * self.schedule(j, cfg.steps)
        self.opt.zero_grad()
        latent = self.latent
        if cfg.tile_latent:
            latent = latent.expand(-1, self.prior.latent_rows, -1)
        if self.autocast:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                image = self.render(latent, self.noises)
        else:
            image = self.render(latent, self.noises)
        image = (image.float() + 1) / 2  # (K, 3, R, R), [-1, 1] -> [0, 1]
        # Measure the data term on the image we would return (clamped to [0, 1]) with a straight-through
        # gradient, so the loss, the best-of choice and the reported error all speak of the same image.
        shown = image.clamp(0, 1)
        image = image + (shown - image).detach()
        wplus = self.to_wplus(self.latent) if self.to_wplus is not None else self.latent
        low = self.down(image)  # (K, 3, h, w)
        mse_grad = mse_per_image(low, self.target)  # (K,) the reported downscale error, and L2's input
        total, terms = total_loss(self.spec, low, self.target, wplus, cfg.eps, cfg.below_eps_weight, mse=mse_grad)

        with torch.no_grad():
            mse = mse_grad.detach()
            hit = mse <= cfg.eps
            score = total.detach()
            # lexicographic: matching eps first, then the lower total loss
            better = (hit & ~self.best_hit) | ((hit == self.best_hit) & (score < self.best_score))
            self.best_score = torch.where(better, score, self.best_score)
            self.best_hit = self.best_hit | hit
            self.best_mse = torch.where(better, mse, self.best_mse)
            self.min_mse = torch.minimum(self.min_mse, mse)
            self.best_step = torch.where(better, j + 1, self.best_step)
            self.eps_step = torch.where(hit & (self.eps_step == 0), j + 1, self.eps_step)
            self.best_image = torch.where(better[:, None, None, None], shown.detach(), self.best_image)
            self.last_losses = {**{k: v.detach() for k, v in terms.items()}, "TOTAL": total.detach(), "MSE": mse}

        total.sum().backward()
        self.opt.step()

    # -- host side: only called when someone asks (progress, the end) --
    def losses_now(self) -> dict[str, float]:
        return {k: float(v.mean()) for k, v in self.last_losses.items()}

    def preview(self, size: int) -> np.ndarray:
        img = self.best_image[int(torch.argmin(self.best_mse))][None]  # (1, 3, R, R)
        if img.shape[-1] > size:
            img = F.interpolate(img, size=(size, size), mode="area")
        return (img[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()

    def results(self, seeds: list[int]) -> list[CandidateResult]:
        images = self.best_image.permute(0, 2, 3, 1).float().cpu().numpy()  # (K, R, R, 3)
        mses = self.best_mse.cpu().tolist()
        steps = self.best_step.cpu().tolist()
        eps_steps = self.eps_step.cpu().tolist()
        return [CandidateResult(image=np.ascontiguousarray(images[i]), seed=seeds[i], downscale_mse=float(mses[i]),
                                eps_reached=bool(mses[i] <= self.config.eps), steps=int(steps[i]),
                                eps_step=int(eps_steps[i]) or None)
                for i in range(len(seeds))]


def candidate_seeds(config: SolveConfig) -> list[int]:
    """Candidate i gets seed + i; no seed -> a random one (reported, so any candidate can be re-run alone)."""
    base = config.seed if config.seed is not None else secrets.randbelow(2**31)
    return [int(base) + i for i in range(config.candidates)]


def solve(prior: FacePrior, lowres: np.ndarray, config: SolveConfig | None = None,
          progress: Callable[[Progress], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> SolveResult:
    """K faces at the prior's resolution whose downscaled versions match `lowres` (see module doc)."""
    # The search needs autograd even when the caller runs under no_grad / inference_mode.
    with torch.inference_mode(False), torch.enable_grad():
        return _solve(prior, lowres, config, progress, cancel)


def _solve(prior: FacePrior, lowres: np.ndarray, config: SolveConfig | None,
           progress: Callable[[Progress], None] | None, cancel: Callable[[], bool] | None) -> SolveResult:
    config = config or SolveConfig()
    _validate(config)
    prior.freeze()
    device = prior.device
    target, factor = _target_tensor(lowres, prior.resolution)
    target = target.to(device)
    seeds = candidate_seeds(config)
    fast = config.precision == "default"
    on_cuda = device.type == "cuda"

    render: Callable[..., Tensor] = prior.render
    if fast and on_cuda and config.compile:
        render = torch.compile(prior.render, dynamic=False)
    old_fused = getattr(prior, "fused", None)
    fused = config.fused if config.fused is not None else (False if fast else old_fused)
    if old_fused is not None:
        prior.fused = fused
    t0 = time.perf_counter()
    try:
        if fast:
            batches = [seeds]
        else:
            batches = [[s] for s in seeds]  # the original's structure: one candidate at a time
        total = config.steps * len(batches)
        reporter = _Reporter(progress, total, 0.0 if not fast else config.progress_interval, config)
        results: list[CandidateResult] = []
        best_so_far = math.inf
        done = 0
        for batch in batches:
            search = _Search(prior, target, factor, batch, config, render, autocast=fast and on_cuda)
            for j in range(config.steps):
                if cancel is not None and cancel():
                    raise Cancelled("solve cancelled")
                search.step(j)
                done += 1
                if not fast:
                    # a host sync every step, like the original's `if loss < min_loss`
                    _ = float(search.last_losses["TOTAL"].sum())
                reporter.maybe(done, search, best_so_far)
            results.extend(search.results(batch))
            best_so_far = min(best_so_far, float(search.min_mse.min()))
    finally:
        if old_fused is not None:
            prior.fused = old_fused
    results.sort(key=lambda r: (r.downscale_mse, r.seed))
    return SolveResult(candidates=results, factor=factor, resolution=prior.resolution,
                       seconds=time.perf_counter() - t0, steps_run=config.steps)


class _Reporter:
    """Calls `progress` on the first and last step and otherwise at most every `interval` seconds."""

    def __init__(self, progress: Callable[[Progress], None] | None, total: int, interval: float, config: SolveConfig):
        self.progress, self.total, self.interval, self.config = progress, total, interval, config
        self.last = -math.inf

    def maybe(self, done: int, search: _Search, best_before: float) -> None:
        if self.progress is None:
            return
        cfg = self.config
        want_preview = cfg.preview_every > 0 and done % cfg.preview_every == 0
        now = time.perf_counter()
        if not (done == 1 or done == self.total or want_preview or now - self.last >= self.interval):
            return
        self.last = now
        best = min(best_before, float(search.min_mse.min()))
        preview = search.preview(cfg.preview_size) if want_preview else None
        self.progress(Progress(step=done, total=self.total, losses=search.losses_now(), best_error=best,
                               preview=preview))
