"""Search a face prior for faces whose mosaic matches an observation (the depixelate engine).

    minimise  100·soft_clamp(E(cells(G(z), θ)·gain + offset, observed)) + 0.05·GEOCROSS(w+(z))

E is the weighted per-cell mean squared error (the reported `downscale_error`), `cells` the mosaic
forward model (mosaic_op.py), gain/offset the per-channel colour fit solved in closed form at every step,
θ the face's placement inside the mosaic. Three phases share one step budget (`steps`):

  warm-up   `starts_per_candidate` starts per candidate, each a latent drawn from the candidate's seed ×
            a placement from a small grid (scales, shifts, ± a few degrees), run jointly on latent and θ for
            `warmup`·steps steps; each candidate continues from the best of its own starts (candidate i
            depends on seed + i alone, as in `solve`, and the K candidates stay K different seeds).
  latent    PULSE's search on the K survivors (spherical Adam on z and the first noise maps, GEOCROSS
            on W+, the same soft clamp at eps) with θ still free; θ is then frozen.
  features  (method "ilo") intermediate-layer refinement after ILO (Daras et al., ICML 2021): the
            features after one generator stage are optimised directly, projected after every step onto
            an l1 ball around their latent-phase value (radius `radius`·their l1 norm), so the face can
            leave the prior's exact range a little to match the cells while staying close to it. This
            phase stops pulling at `feature_target`·eps and is drawn back to its start by a `proximity`
            term, so it departs from the prior's face only as far as the cells need.
  retry     (`retries`) when the best candidate matches eps and others do not, each of those is searched
            again the same way (all three phases, its own batch) from a seed drawn from its own
            (`retry_seed`), and keeps the better of its two searches; the others are left as they are.
            A retried candidate reports its new seed: that seed run alone gives the same search.

Defaults and where they come from (MosaicConfig):
  lr=0.4, schedule linear1cycledrop, noise "trainable" (first 5 maps), 100·L2 + 0.05·GEOCROSS
                                   PULSE's run.py defaults (see pulse.py), per phase.
  method="ilo", radius=0.3, stage: the finest stage at most min(R/4, 2·cells per side) px
                                   measured: with latent search alone the 32² prior reached eps on 0/6 real
                                   mosaics; adding the 8×8 features in an l1 ball of 0.2 / 0.3 of their
                                   norm reached it on 5/6 / 6/6 (shared/notes/engine.md); bench/quality.py.
  feature_lr=0.2                   bench/quality.py, 24 cases: eps on 17/24 at 0.05, 22/24 at 0.1, 24/24 at 0.2.
  feature_target=0.5, proximity=1.0
                                   ours: without them the features kept fitting far below eps (4e-5 on the
                                   demo with the 64² DigiFace prior) and the face dissolved into a blur of
                                   the mosaic; with them it stays a face at 9e-4 (the 32² prior's bench
                                   cases: still 24/24 at eps, median 9.2e-4).
  tv=0.5                           ours: a total-variation term in the feature phase; the cells constrain only
                                   cell means, so the features can paint speckle inside cells; 0.5 leaves the
                                   median error as it was (1.25e-3), 2.0 raised it to 1.7e-3.
  starts_per_candidate=3, warmup=0.15, latent_share=0.5
                                   ours: a warm-up of ~15 steps tells good placements from bad ones;
                                   per-step cost is dominated by the render, so wide batches are cheap
                                   on a GPU and the sequential step count stays that of `steps`.
  theta steps (Adam): 0.1 × (0.1 log-scale, 0.1 rad, 0.05 L0, 0.05 L0) per unit gradient sign
                                   ours: about 1 % of the frame per step at the schedule's peak.
  retries=1                        bench/quality.py: on 24 + 36 cases 6 candidates of 180 missed eps while
                                   their case's best matched; a retry from a new seed matched all 6. Why they
                                   missed: the features stall at the l1 ball's edge, where the cells' pull
                                   meets the proximity and TV terms; 35 more feature steps and a 1.5-3×
                                   ball still missed, a quarter of the pull matched the cells with a
                                   speckled non-face; every candidate on the best one's placement cut the
                                   diversity to 6.9/255 and missed elsewhere. Cost: one more search where
                                   a candidate misses (3 of 24 cases).
  colour fit: gain in [0.5, 2]     ours: the photo's white balance and contrast are not the prior's;
                                   a prototype found much of the latent-phase error was colour/lighting.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from protocol.job import METHODS, PARAMS

from ..errors import Cancelled, SolverError
from ..models.base import FacePrior
from ..pipeline.observation import Observation
from .losses import geocross_loss, soft_clamp
from .mosaic_op import THETA_DIM, Colour, MosaicOperator
from .pulse import Progress, SolveConfig, candidate_seeds, check_search, initial_state
from .schedules import get_schedule
from .sphere import SphericalOptimizer

# How much of the generator frame is not face, per side, as a fraction of the mosaic's side, at θ = 0:
# FFHQ-aligned StyleGAN2 faces fill about 60 % of the frame; the CelebA-crop DCGAN's fill nearly all of it.
FAMILY_MARGIN = {"stylegan2": 0.15, "dcgan": 0.0}
# Warm-up placements (log-scale, angle, tx, ty), tried in this order; start i of a candidate takes row i.
_PLACEMENTS = np.array([
    (0.0, 0.0, 0.0, 0.0),
    (0.15, 0.0, 0.0, 0.0), (-0.15, 0.0, 0.0, 0.0),
    (0.0, 0.1, 0.0, 0.0), (0.0, -0.1, 0.0, 0.0),
    (0.0, 0.0, 0.08, 0.0), (0.0, 0.0, -0.08, 0.0),
    (0.0, 0.0, 0.0, 0.08), (0.0, 0.0, 0.0, -0.08),
    (0.1, 0.05, 0.05, 0.05), (-0.1, -0.05, -0.05, -0.05),
    (0.1, -0.05, -0.05, 0.05), (-0.1, 0.05, 0.05, -0.05),
], dtype=np.float32)
_THETA_STEP = (0.1, 0.1, 0.05, 0.05)  # units of θ's Adam parameters (see the module doc)


@dataclass
class MosaicConfig:
    # The job's own settings: defaults from the job contract (protocol/job.py); seed None = a random one.
    candidates: int = PARAMS["candidates"].default
    steps: int = PARAMS["steps"].default
    eps: float = PARAMS["eps"].default
    seed: int | None = None
    method: str = PARAMS["method"].default
    precision: str = PARAMS["precision"].default
    margin: float | None = None  # None: FAMILY_MARGIN by the prior's family
    starts_per_candidate: int = 3
    warmup: float = 0.15  # share of the steps
    latent_share: float = 0.5  # share of the steps for the latent phase in "ilo" ("pulse": all after warm-up)
    lr: float = 0.4
    schedule: str = "linear1cycledrop"
    theta_lr: float = 0.1
    feature_lr: float = 0.2  # Adam step, as a fraction of the features' mean magnitude
    radius: float = 0.3
    tv: float = 0.5  # weight of the feature phase's total-variation term
    feature_target: float = 0.5  # the feature phase stops pulling at this fraction of eps
    proximity: float = 1.0  # weight of the features' relative squared distance from the latent phase's
    early_stop: bool = True  # end a phase once every candidate matches eps and has stalled
    stall_window: int = 10
    stall_tolerance: float = 0.01
    stage: int | None = None  # None: by resolution and grid (module doc)
    retries: int = 1  # searches again for candidates above eps where the best matches it (module doc)
    below_eps_weight: float = 0.1
    geocross: float = 0.05
    preview_every: int = 0
    preview_size: int = 128
    progress_interval: float = 0.1


@dataclass
class MosaicCandidate:
    image: np.ndarray  # (R, R, 3) float32 in [0, 1]: the generator's face, before placement and colour
    seed: int
    downscale_mse: float  # weighted per-cell MSE of the placed, colour-fitted face vs the observed cells
    eps_reached: bool
    steps: int  # the step (1-based, over all phases) whose image this is
    theta: tuple[float, float, float, float]  # log-scale, angle (rad), tx, ty (fractions of the base frame)
    gain: tuple[float, float, float]
    offset: tuple[float, float, float]
    method: str


@dataclass
class MosaicSolveResult:
    candidates: list[MosaicCandidate]  # best first
    operator: MosaicOperator
    seconds: float = 0.0
    steps_run: int = 0  # sequential steps in all, retries included (so it can pass `steps`)
    stage: int | None = None  # the refined stage ("ilo")


def _validate(cfg: MosaicConfig) -> None:
    check_search(cfg.candidates, cfg.steps, cfg.eps, cfg.precision, cfg.schedule)
    if cfg.method not in METHODS:
        raise SolverError(f"method must be one of {METHODS}, got {cfg.method!r}", code="BAD_PARAMS")


def phase_steps(cfg: MosaicConfig, refine: bool) -> tuple[int, int, int]:
    """(warm-up, latent, features) steps; they add up to `steps` (the warm-up needs at least 2 steps left)."""
    s = cfg.steps
    warm = min(max(1, round(cfg.warmup * s)), max(0, s - 1)) if s >= 3 else 0
    if not refine:
        return warm, s - warm, 0
    latent = max(1, round(cfg.latent_share * s))
    feats = max(0, s - warm - latent)
    return warm, s - warm - feats, feats


def pick_stage(prior: FacePrior, obs: Observation) -> int | None:
    """The finest stage whose side is at most min(R/4, 2·cells): fine enough to shape what the cells show,
    coarse enough that the features cannot paint a face the prior would not make."""
    if prior.stages == 0:
        return None
    ny, nx = obs.grid
    limit = min(prior.resolution / 4, 2 * max(nx, ny))
    ok = [k for k in range(prior.stages) if prior.stage_resolution(k) <= limit]
    return max(ok) if ok else 0


# -------------------------------------------------------------------------------------------- tracking


class _Best:
    """Each candidate's best step so far, on the device (no host sync): matching eps first, then the lower
    total loss; the image, θ, colour and error of that step."""

    def __init__(self, n: int, resolution: int, device: torch.device):
        self.score = torch.full((n,), math.inf, device=device)
        self.hit = torch.zeros(n, dtype=torch.bool, device=device)
        self.err = torch.full((n,), math.inf, device=device)
        self.step = torch.zeros(n, dtype=torch.long, device=device)
        self.image = torch.zeros(n, 3, resolution, resolution, device=device)
        self.theta = torch.zeros(n, THETA_DIM, device=device)
        self.gain = torch.ones(n, 3, device=device)
        self.offset = torch.zeros(n, 3, device=device)
        self.min_err = torch.full((n,), math.inf, device=device)

    @torch.no_grad()
    def update(self, step: int, err: Tensor, score: Tensor, image: Tensor, theta: Tensor, colour: Colour,
               eps: float) -> None:
        hit = err <= eps
        better = (hit & ~self.hit) | ((hit == self.hit) & (score < self.score))
        self.score = torch.where(better, score, self.score)
        self.hit = self.hit | hit
        self.err = torch.where(better, err, self.err)
        self.step = torch.where(better, step, self.step)
        self.image = torch.where(better[:, None, None, None], image, self.image)
        self.theta = torch.where(better[:, None], theta, self.theta)
        self.gain = torch.where(better[:, None], colour.gain, self.gain)
        self.offset = torch.where(better[:, None], colour.offset, self.offset)
        self.min_err = torch.minimum(self.min_err, err)

    def take(self, idx: Tensor) -> _Best:
        out = _Best.__new__(_Best)
        for k, v in vars(self).items():
            setattr(out, k, v[idx])
        return out

    def put(self, idx: Tensor, part: _Best) -> None:
        """Rows `idx` replaced by `part`'s (the inverse of take)."""
        for k, v in vars(self).items():
            v[idx] = getattr(part, k)


# ------------------------------------------------------------------------------------------ the phases


class _Phase:
    """Shared by the phases: render → clamp (straight-through) → cells → colour fit → loss → best-of."""

    def __init__(self, ctx: _Context, best: _Best, steps: int, first_step: int):
        self.ctx, self.best, self.steps, self.first_step = ctx, best, steps, first_step
        self.last: dict[str, Tensor] = {}

    def evaluate(self, j: int, image: Tensor, theta: Tensor, wplus: Tensor | None,
                 extra: dict[str, tuple[float, Tensor]] | None = None, stop_below: float | None = None) -> Tensor:
        """image (N, 3, R, R) in [-1, 1] -> (N,) total loss; updates the best-of state.

        `extra`: more terms, name -> (weight, (N,) value); `stop_below`: the data term is flat below this
        error (a hard clamp) instead of the soft clamp at eps."""
        ctx = self.ctx
        image = (image.float() + 1) / 2
        shown = image.clamp(0, 1)
        image = image + (shown - image).detach()  # the loss speaks of the image we would return
        pred = ctx.op.cells(image, theta)  # (N, 3, C)
        colour = ctx.op.fit_colour(pred)
        err = ctx.op.error(pred, colour)  # (N,)
        if stop_below is None:
            total = 100 * soft_clamp(err, ctx.cfg.eps, ctx.cfg.below_eps_weight)
        else:
            total = 100 * err.clamp(min=stop_below)
        terms = {"L2": err}
        if wplus is not None and ctx.cfg.geocross:
            geo = geocross_loss(wplus)
            total = total + ctx.cfg.geocross * geo
            terms["GEOCROSS"] = geo
        for name, (weight, value) in (extra or {}).items():
            total = total + weight * value
            terms[name] = value
        with torch.no_grad():
            self.best.update(self.first_step + j + 1, err.detach(), total.detach(), shown.detach(), theta.detach(),
                             Colour(colour.gain.detach(), colour.offset.detach()), ctx.cfg.eps)
            self.last = {**{k: v.detach() for k, v in terms.items()}, "TOTAL": total.detach(), "MSE": err.detach()}
        return total

    def lr_factor(self, j: int) -> float:
        return self.ctx.schedule(j, self.steps)


class _LatentPhase(_Phase):
    """PULSE's latent search (+ θ when `move_theta`), for any number of starts."""

    def __init__(self, ctx: _Context, best: _Best, steps: int, first_step: int, latent: Tensor,
                 noises: list[Tensor], trainable: list[Tensor], theta: Tensor, move_theta: bool):
        super().__init__(ctx, best, steps, first_step)
        self.latent, self.noises, self.move_theta = latent, noises, move_theta
        extra: dict[str, Any] = {"fused": True} if (ctx.autocast and ctx.device.type == "cuda") else {}
        self.opt = SphericalOptimizer([latent, *trainable], lr=ctx.cfg.lr, **extra)
        self.trainable = trainable
        unit = theta.new_tensor(_THETA_STEP)
        self.theta_unit = unit
        self.theta_raw = (theta.detach() / unit).requires_grad_(move_theta)  # Adam's steps are ~lr in these units
        self.theta_opt = torch.optim.Adam([self.theta_raw], lr=ctx.cfg.theta_lr) if move_theta else None

    @property
    def theta(self) -> Tensor:
        return self.theta_raw * self.theta_unit

    def step(self, j: int) -> None:
        ctx = self.ctx
        f = self.lr_factor(j)
        for group in self.opt.opt.param_groups:
            group["lr"] = ctx.cfg.lr * f
        self.opt.zero_grad()
        if self.theta_opt is not None:
            for group in self.theta_opt.param_groups:
                group["lr"] = ctx.cfg.theta_lr * f
            self.theta_opt.zero_grad(set_to_none=True)
        image = ctx.render(lambda: ctx.prior.render(self.latent, self.noises))
        wplus = ctx.to_wplus(self.latent) if ctx.to_wplus is not None else None
        total = self.evaluate(j, image, self.theta, wplus)
        total.sum().backward()
        self.opt.step()
        if self.theta_opt is not None:
            self.theta_opt.step()
            with torch.no_grad():
                t = self.theta_raw * self.theta_unit
                ctx.op.clamp_(t)
                self.theta_raw.copy_(t / self.theta_unit)

    def take(self, idx: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor]:
        """The state of the starts `idx` as fresh leaves: (latent, noises, trainable noises, θ)."""
        latent = self.latent.detach()[idx].clone().requires_grad_(True)
        trainable_ids = {id(t) for t in self.trainable}
        noises, trainable = [], []
        for n in self.noises:
            m = n.detach()[idx].clone() if n.shape[0] > 1 else n
            if id(n) in trainable_ids:
                m.requires_grad_(True)
                trainable.append(m)
            noises.append(m)
        return latent, noises, trainable, self.theta.detach()[idx].clone()


class _FeaturePhase(_Phase):
    """ILO-style refinement of the features after `stage`, each projected onto an l1 ball around its start."""

    def __init__(self, ctx: _Context, best: _Best, steps: int, first_step: int, latent: Tensor,
                 noises: list[Tensor], theta: Tensor, stage: int):
        super().__init__(ctx, best, steps, first_step)
        self.latent, self.noises, self.theta, self.stage = latent.detach(), [n.detach() for n in noises], theta, stage
        with torch.no_grad():
            start = ctx.prior.render_to(self.latent, self.noises, stage)
        self.centres = [t.detach().float() for t in start]
        self.radii = [ctx.cfg.radius * t.flatten(1).abs().sum(1) for t in self.centres]  # (N,) each
        self.feats = [t.clone().requires_grad_(True) for t in self.centres]
        self.opt = torch.optim.Adam([{"params": [x]} for x in self.feats], lr=1.0)  # one lr per tensor
        self.base_lr = [ctx.cfg.feature_lr * float(t.abs().mean().clamp_min(1e-6)) for t in self.centres]

    def distance(self) -> Tensor:
        """(N,) mean relative squared distance of the features from their latent-phase values."""
        return torch.stack([_relative_distance(x, c) for x, c in zip(self.feats, self.centres)]).mean(0)

    def step(self, j: int) -> None:
        ctx = self.ctx
        f = self.lr_factor(j)
        for group, lr in zip(self.opt.param_groups, self.base_lr):
            group["lr"] = lr * f
        self.opt.zero_grad(set_to_none=True)
        image = ctx.render(lambda: ctx.prior.render_from(self.feats, self.stage, self.latent, self.noises))
        cfg = ctx.cfg
        # Only as far from the prior's own face as the cells need: the data term stops pulling below
        # feature_target·eps, and the distance to the latent-phase features pulls back.
        extra = {"TV": (cfg.tv, total_variation(((image.float() + 1) / 2).clamp(0, 1))),
                 "PROX": (cfg.proximity, self.distance())}
        total = self.evaluate(j, image, self.theta, None, extra, stop_below=cfg.feature_target * cfg.eps)
        total.sum().backward()
        self.opt.step()
        with torch.no_grad():
            for x, c, r in zip(self.feats, self.centres, self.radii):
                x.copy_(c + project_l1_ball((x - c).flatten(1), r).view_as(x))


def _relative_distance(x: Tensor, c: Tensor) -> Tensor:
    """(N, ...) × (N, ...) -> (N,) squared distance over squared norm of the centre."""
    return (x - c).pow(2).flatten(1).sum(1) / c.pow(2).flatten(1).sum(1).clamp_min(1e-12)


def total_variation(image: Tensor) -> Tensor:
    """(N, 3, R, R) -> (N,) mean absolute difference between neighbouring pixels."""
    dx = (image[..., :, 1:] - image[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def project_l1_ball(v: Tensor, radius: Tensor) -> Tensor:
    """Rows of v (N, D) projected onto {x: |x|_1 <= radius_n} (Duchi et al. 2008), batched, no host sync."""
    a = v.abs()
    inside = a.sum(1) <= radius
    u, _ = torch.sort(a, dim=1, descending=True)
    css = u.cumsum(1) - radius[:, None]
    ind = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    cond = (u - css / ind) > 0
    rho = cond.sum(1).clamp_min(1) - 1  # last index where cond holds (cond is True then False)
    tau = css.gather(1, rho[:, None]) / (rho[:, None] + 1).to(v.dtype)
    w = torch.sign(v) * (a - tau).clamp_min(0)
    return torch.where(inside[:, None], v, w)


# ----------------------------------------------------------------------------------------------- solve


@dataclass
class _Context:
    prior: FacePrior
    op: MosaicOperator
    cfg: MosaicConfig
    schedule: Callable[[int, int], float]
    autocast: bool
    device: torch.device
    to_wplus: Callable[[Tensor], Tensor] | None

    def render(self, fn: Callable[[], Tensor]) -> Tensor:
        if self.autocast:
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                return fn()
        return fn()


def solve_mosaic(prior: FacePrior, obs: Observation, config: MosaicConfig | None = None,
                 progress: Callable[[Progress], None] | None = None,
                 cancel: Callable[[], bool] | None = None) -> MosaicSolveResult:
    """K faces whose mosaic (placed with their own θ) matches the observation; best first (module doc)."""
    with torch.inference_mode(False), torch.enable_grad():
        return _solve(prior, obs, config or MosaicConfig(), progress, cancel)


def _solve(prior: FacePrior, obs: Observation, cfg: MosaicConfig, progress: Callable[[Progress], None] | None,
           cancel: Callable[[], bool] | None) -> MosaicSolveResult:
    _validate(cfg)
    if not np.isfinite(obs.cells).all():
        raise SolverError("the mosaic's cells contain NaN or infinite values", code="BAD_INPUT")
    prior.freeze()
    device = prior.device
    margin = cfg.margin if cfg.margin is not None else FAMILY_MARGIN.get(prior.family, 0.1)
    op = MosaicOperator(obs, prior.resolution, margin, device)
    fast = cfg.precision == "default"
    old_fused = getattr(prior, "fused", None)
    if old_fused is not None and fast:
        prior.fused = False  # shared-weight convs over the whole batch (see pulse.py)
    ctx = _Context(prior, op, cfg, get_schedule(cfg.schedule), fast and device.type == "cuda", device,
                   getattr(prior, "to_wplus", None))
    stage = pick_stage(prior, obs) if cfg.method == "ilo" else None
    if cfg.stage is not None and cfg.method == "ilo":
        if not 0 <= cfg.stage < prior.stages:
            raise SolverError(f"stage must be in 0..{prior.stages - 1} for this model, got {cfg.stage}", code="BAD_PARAMS")
        stage = cfg.stage
    phases = phase_steps(cfg, stage is not None)
    reporter = _Reporter(progress, cfg.steps, cfg.progress_interval if fast else 0.0, cfg)
    t0 = time.perf_counter()
    try:
        k = cfg.candidates
        seeds = candidate_seeds(SolveConfig(candidates=k, seed=cfg.seed))
        search = _Search(ctx, stage, phases, reporter, cancel)
        starts = cfg.starts_per_candidate if phases[0] else 1
        placements = np.stack([_PLACEMENTS[j % len(_PLACEMENTS)] for j in range(starts) for _ in range(k)])
        best, done = search.run(seeds, starts, torch.from_numpy(placements).to(device), 0)
        for attempt in range(1, cfg.retries + 1):
            lag = torch.nonzero(~best.hit)[:, 0].tolist()  # one host sync per attempt
            if not lag or not bool(best.hit.any()):
                break
            done = _retry(search, best, seeds, lag, attempt, starts, placements, done)
        reporter.finish(done)
    finally:
        if old_fused is not None:
            prior.fused = old_fused
    results = _results(best, seeds, cfg)
    results.sort(key=lambda c: (c.downscale_mse, c.seed))
    return MosaicSolveResult(results, op, time.perf_counter() - t0, done, stage)


class _Search:
    """Warm-up, latent phase and feature phase for a list of seeds (see the module doc)."""

    def __init__(self, ctx: _Context, stage: int | None, phases: tuple[int, int, int], reporter: _Reporter,
                 cancel: Callable[[], bool] | None):
        self.ctx, self.stage, self.phases, self.reporter, self.cancel = ctx, stage, phases, reporter, cancel

    def run(self, seeds: list[int], starts: int, placements: Tensor, done: int) -> tuple[_Best, int]:
        """Row j·K + i of `placements` is start j's θ for seed i. -> (each seed's best, steps done in all)."""
        ctx, cfg, reporter, cancel = self.ctx, self.ctx.cfg, self.reporter, self.cancel
        warm, latent_steps, feat_steps = self.phases
        k, device, resolution = len(seeds), ctx.device, ctx.prior.resolution
        latent, noises, trainable = initial_state(ctx.prior, start_seeds(seeds, starts), SolveConfig(), device)
        theta = placements
        if warm:
            best = _Best(k * starts, resolution, device)
            phase = _LatentPhase(ctx, best, warm, done, latent, noises, trainable, theta, move_theta=True)
            done, _ = _run(phase, warm, done, reporter, cancel, None)
            # each candidate keeps the best of its own starts: start j of candidate i is row j·K + i
            keep = torch.argmin(best.err.view(starts, k), dim=0) * k + torch.arange(k, device=device)
            latent, noises, trainable, theta = phase.take(keep)
            best = best.take(keep)
        else:
            best = _Best(k, resolution, device)
        phase = _LatentPhase(ctx, best, latent_steps, done, latent, noises, trainable, theta, move_theta=True)
        done, settled = _run(phase, latent_steps, done, reporter, cancel, _Stall.of(cfg, best))
        # candidates that all match eps from the prior's own faces need no feature refinement
        if feat_steps and self.stage is not None and not settled:
            theta = phase.theta.detach()
            refine = _FeaturePhase(ctx, best, feat_steps, done, phase.latent, phase.noises, theta, self.stage)
            done, _ = _run(refine, feat_steps, done, reporter, cancel, _Stall.of(cfg, best))
        return best, done


def _retry(search: _Search, best: _Best, seeds: list[int], lag: list[int], attempt: int, starts: int,
           placements: np.ndarray, done: int) -> int:
    """The candidates `lag` (above eps) searched again, each from a new seed drawn from its own, the same way;
    each keeps the better of its two searches. Updates `best` and `seeds` in place; -> steps done in all."""
    device = search.ctx.device
    new_seeds = [retry_seed(seeds[i], attempt) for i in lag]
    rows = np.concatenate([placements[j * len(seeds) + np.array(lag)] for j in range(starts)])
    search.reporter.extend(sum(search.phases), best)
    part, done = search.run(new_seeds, starts, torch.from_numpy(rows).to(device), done)
    idx = torch.tensor(lag, device=device)
    old = best.take(idx)
    # eps first, then the error (the scores of two searches are not comparable: their terms differ)
    better = ((part.hit & ~old.hit) | ((part.hit == old.hit) & (part.err < old.err))).tolist()
    for row, (i, b) in enumerate(zip(lag, better)):
        if b:
            best.put(idx[row : row + 1], part.take(torch.tensor([row], device=device)))
            seeds[i] = new_seeds[row]
    return done


def retry_seed(seed: int, attempt: int) -> int:
    """The seed of a candidate's `attempt`-th new search, drawn from its own seed (a stream apart from
    start_seeds'), below 2^31 like the seeds a job draws itself: a short number in the editors' layer notes."""
    return int(np.random.SeedSequence([seed, 1000 + attempt]).generate_state(1, np.uint32)[0] >> 1)


def start_seeds(seeds: list[int], starts: int) -> list[int]:
    """Seeds of the warm-up's starts, row j·K + i for start j of candidate i: start 0 is the candidate's own
    seed (its plain PULSE start), the others are drawn from it, so candidate i depends on seed + i alone."""
    out = []
    for j in range(starts):
        for s in seeds:
            out.append(s if j == 0 else int(np.random.SeedSequence([s, j]).generate_state(1, np.uint64)[0] >> 1))
    return out


class _Stall:
    """Early stop, batched: every `window` steps (one host sync per window, none per step) the phase ends
    when every candidate matches eps and its best score improved by less than `tolerance` (relative)."""

    def __init__(self, best: _Best, window: int, tolerance: float):
        self.best, self.window, self.tolerance = best, window, tolerance
        self.last = best.score.clone()

    @classmethod
    def of(cls, cfg: MosaicConfig, best: _Best) -> _Stall | None:
        return cls(best, cfg.stall_window, cfg.stall_tolerance) if cfg.early_stop else None

    def settled(self, j: int) -> bool:
        if (j + 1) % self.window:
            return False
        score = self.best.score
        gain = (self.last - score) / self.last.abs().clamp_min(1e-12)
        self.last = score.clone()
        return bool((self.best.hit & (gain < self.tolerance)).all())


def _run(phase: _Phase, steps: int, done: int, reporter: _Reporter, cancel: Callable[[], bool] | None,
         stall: _Stall | None) -> tuple[int, bool]:
    """-> (steps done in all, whether the phase ended early because every candidate had settled)."""
    for j in range(steps):
        if cancel is not None and cancel():
            raise Cancelled("solve cancelled")
        phase.step(j)  # type: ignore[attr-defined]
        done += 1
        reporter.maybe(done, phase)
        if stall is not None and stall.settled(j):
            return done, True
    return done, False


def _results(best: _Best, seeds: list[int], cfg: MosaicConfig) -> list[MosaicCandidate]:
    images = best.image.permute(0, 2, 3, 1).float().cpu().numpy()
    errs, steps = best.err.cpu().tolist(), best.step.cpu().tolist()
    thetas, gains, offsets = best.theta.cpu().tolist(), best.gain.cpu().tolist(), best.offset.cpu().tolist()
    return [MosaicCandidate(image=np.ascontiguousarray(images[i]), seed=int(seeds[i]), downscale_mse=float(errs[i]),
                            eps_reached=bool(errs[i] <= cfg.eps), steps=int(steps[i]),
                            theta=tuple(float(v) for v in thetas[i]),  # type: ignore[arg-type]
                            gain=tuple(float(v) for v in gains[i]),  # type: ignore[arg-type]
                            offset=tuple(float(v) for v in offsets[i]),  # type: ignore[arg-type]
                            method=cfg.method)
            for i in range(len(seeds))]


class _Reporter:
    """Calls `progress` on the first and last step and otherwise at most every `interval` seconds. A retry
    (`extend`) adds its steps to the total, so the step never passes it; the best error never rises."""

    def __init__(self, progress: Callable[[Progress], None] | None, total: int, interval: float, cfg: MosaicConfig):
        self.progress, self.total, self.interval, self.cfg = progress, total, interval, cfg
        self.last = -math.inf
        self.phase: _Phase | None = None
        self.best_error = math.inf
        self.shown: _Best | None = None  # the candidates a preview shows (None: the running phase's)

    def extend(self, steps: int, shown: _Best) -> None:
        self.total += steps
        self.shown = shown

    def maybe(self, done: int, phase: _Phase) -> None:
        if self.progress is None:
            return
        self.phase = phase
        cfg = self.cfg
        want_preview = cfg.preview_every > 0 and done % cfg.preview_every == 0
        now = time.perf_counter()
        if not (done == 1 or done == self.total or want_preview or now - self.last >= self.interval):
            return
        self.last = now
        preview = _preview(self.shown or phase.best, cfg.preview_size) if want_preview else None
        losses = {k: float(v.mean()) for k, v in phase.last.items()}
        self.progress(Progress(step=done, total=self.total, losses=losses, best_error=self._best_error(phase),
                               preview=preview))

    def _best_error(self, phase: _Phase) -> float:
        self.best_error = min(self.best_error, float(phase.best.min_err.min()))
        return self.best_error

    def finish(self, done: int) -> None:
        """A search that stopped early still ends its progress at `total` (a bar runs to its end)."""
        if self.progress is not None and done < self.total and self.phase is not None:
            phase, self.last = self.phase, -math.inf
            self.progress(Progress(step=self.total, total=self.total, losses={k: float(v.mean()) for k, v in phase.last.items()},
                                   best_error=self._best_error(phase)))


def _preview(best: _Best, size: int) -> np.ndarray:
    img = best.image[int(torch.argmin(best.err))][None]  # (1, 3, R, R)
    if img.shape[-1] > size:
        img = torch.nn.functional.interpolate(img, size=(size, size), mode="area")
    return (img[0].permute(1, 2, 0).clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
