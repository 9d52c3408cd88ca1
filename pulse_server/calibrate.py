"""Measure a loaded model's speed on its device: the figures of `estimate.Calibration`.

The worker runs this right after a model's first load on a device, while the job that asked for the model
waits in its "loading" state, so no job pays for it twice and the first estimate is known from the second
job on (and the first job's progress already has a calibrated time left). It runs the real code paths a job
runs, on a synthetic mosaic:
  * `pipeline.prepare` on a 240×240 photo-like region holding a 160×160 mosaic of 10-px blocks (about the share
    of a selection a mosaic fills) and on the same region at 480×480 (20-px blocks): the mosaic analysis' cost
    and how it grows with size;
  * `solve_mosaic` ("ilo", one start per candidate, no early stop) at K = 1 and K = 4, CAL_STEPS steps each,
    every step timed through the cancel hook (called before each step): the median latent and feature step at
    each batch; the first step of the search and of each phase is left out (lazy initialisation, the phase's
    set-up) and counted in `search_fixed`;
  * `pipeline.finish` of 4 faces on the 240² region and of 1 on the 480² one: the per-candidate cost of placing
    and blending, and its growth.
About two seconds on the 32² prior. Bounded: each search stops after CAL_BUDGET_S once it has timed MIN_STEPS
steps (a 1024² model on a CPU still needs three steps, a minute or so), and K = 4 is not run where one step at
K = 1 already takes SLOW_STEP_S (a device that slow is a CPU, where a batch costs about its size in steps).
Cancellable between steps: `cancel()` true raises `Cancelled`, and nothing is cached.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .errors import Cancelled
from .estimate import BATCH_POINTS, Calibration

if TYPE_CHECKING:  # torch-heavy; imported where used
    from .models.base import FacePrior
    from .pipeline import Observation, Prepared

CAL_STEPS = 20  # per batch: phase_steps gives 3 warm-up, 10 latent and 7 feature steps
CAL_BUDGET_S = 1.0  # per batch, once MIN_STEPS are timed
MIN_STEPS = 4  # the first one is left out: three timed steps remain
SLOW_STEP_S = 0.5
CELLS, BLOCK, CONTEXT = 16, 10, 40  # the synthetic region: 16×16 cells of 10 px, 40 px of context on each side
EXPONENTS = (0.3, 1.5)  # the pixel terms' growth, bounded: two noisy timings must not predict nonsense
# The pixel terms' growth is measured from the 240² region to one GROWTH× larger per side (480²). Between 120²
# and 240², as before, fixed costs hid it: the exponents came out 0.4-0.6 and a 1000² selection took 2× the
# estimate (bench/RESULTS.md, the estimate section).
GROWTH = 2


class _OutOfBudget(Exception):
    """Raised from the cancel hook: stop the search, keep the steps timed so far."""


@dataclass
class _Timed:
    latent: float | None  # median seconds per latent step
    feature: float | None
    search_fixed: float  # seconds of the search outside its median steps


def calibrate(prior: FacePrior, cancel: Callable[[], bool] | None = None, *, steps: int = CAL_STEPS,
              budget_s: float = CAL_BUDGET_S) -> Calibration:
    """Time `prior` (a loaded FacePrior) on its device; Cancelled when `cancel()` turns true."""
    from .solver.mosaic_search import pick_stage

    cancel = cancel or (lambda: False)
    t0 = time.perf_counter()
    _time_prepare(synthetic_region(CELLS // 2, CONTEXT // 2), cancel)  # the first analysis of a process warms numpy's caches: not counted
    region = synthetic_region()
    pixels = region.shape[0] * region.shape[1]
    large_region = enlarged(region, GROWTH)
    at_p0, prep = _time_prepare(region, cancel)
    at_p1, prep_large = _time_prepare(large_region, cancel)
    growth = GROWTH * GROWTH
    refines = pick_stage(prior, prep.observation) is not None
    one = _time_search(prior, prep.observation, 1, cancel, steps, budget_s)
    if one.latent is None:
        raise RuntimeError("the calibration search timed no step")
    latent1 = one.latent
    feature1 = one.feature if one.feature is not None else latent1
    b4 = BATCH_POINTS[1]
    search_fixed = one.search_fixed
    if latent1 < SLOW_STEP_S:
        four = _time_search(prior, prep.observation, b4, cancel, steps, budget_s)
        latent4 = four.latent if four.latent is not None else b4 * latent1
        feature4 = four.feature if four.feature is not None else feature1 * latent4 / latent1
        # the first search of a process also pays torch's one-time initialisation, which no job pays again
        search_fixed = min(search_fixed, four.search_fixed)
    else:
        latent4, feature4 = b4 * latent1, b4 * feature1
    _time_finish(prior, prep, 1, cancel)  # the first placement initialises what later ones reuse
    finish = _time_finish(prior, prep, b4, cancel) / b4
    finish_large = _time_finish(prior, prep_large, 1, cancel)
    return Calibration(latent=(latent1, latent4), feature=(feature1, feature4), refines=refines,
                       search_fixed=search_fixed, pixels=pixels, prepare=(at_p0, _exponent(at_p0, at_p1, growth)),
                       finish=(finish, _exponent(finish, finish_large, growth)), seconds=time.perf_counter() - t0)


def enlarged(region: np.ndarray, factor: int) -> np.ndarray:
    """The region `factor`× larger per side, nearest neighbour: the same mosaic, blocks `factor`× larger, as
    a larger selection of a face pixelated into about as many cells holds."""
    return np.repeat(np.repeat(region, factor, axis=0), factor, axis=1)


def synthetic_region(cells: int = CELLS, context: int = CONTEXT, seed: int = 0) -> np.ndarray:
    """A mosaic of `cells`² random cells of BLOCK px inside `context` px of a smooth, slightly noisy "photo"."""
    rng = np.random.default_rng(seed)
    side = cells * BLOCK + 2 * context
    yy, xx = np.mgrid[0:side, 0:side] / side
    photo = np.stack([0.5 + 0.3 * np.sin(3 * xx + 2 * yy + p) for p in (0.0, 1.0, 2.0)], axis=-1)
    photo = (np.clip(photo + rng.normal(0.0, 0.03, photo.shape), 0, 1) * 255).astype(np.uint8)
    values = (rng.random((cells, cells, 3)) * 200 + 28).astype(np.uint8)
    inner = slice(context, context + cells * BLOCK)
    photo[inner, inner] = np.repeat(np.repeat(values, BLOCK, axis=0), BLOCK, axis=1)
    return photo


def _time_prepare(region: np.ndarray, cancel: Callable[[], bool]) -> tuple[float, Prepared]:
    from . import pipeline

    t0 = time.perf_counter()
    prep = pipeline.prepare(region, None, pipeline.DepixParams(), cancel)
    return time.perf_counter() - t0, prep


def _exponent(small: float, large: float, growth: float) -> float:
    """How a cost grows with the pixels: t ∝ P^e through (P, small) and (growth · P, large), bounded."""
    if small <= 0 or large <= 0:
        return 1.0
    return float(min(max(np.log(large / small) / np.log(growth), EXPONENTS[0]), EXPONENTS[1]))


def _time_search(prior: FacePrior, obs: Observation, batch: int, cancel: Callable[[], bool], steps: int,
                 budget_s: float) -> _Timed:
    from .solver.mosaic_search import MosaicConfig, phase_steps, pick_stage, solve_mosaic

    cfg = MosaicConfig(candidates=batch, steps=steps, seed=0, method="ilo", starts_per_candidate=1, early_stop=False)
    marks: list[float] = []  # before each step

    def hook() -> bool:
        if cancel():
            return True  # the solver raises Cancelled
        marks.append(time.perf_counter())
        if len(marks) > MIN_STEPS and marks[-1] - marks[0] > budget_s:
            raise _OutOfBudget()
        return False

    start = time.perf_counter()
    try:
        solve_mosaic(prior, obs, cfg, cancel=hook)
        marks.append(time.perf_counter())  # the last step ends with the results' extraction: left out below
        complete = True
    except _OutOfBudget:
        complete = False
    durations = np.diff(marks)
    warm, latent, feats = phase_steps(cfg, pick_stage(prior, obs) is not None)
    feature_start = warm + latent
    skip = {0, feature_start} | ({len(durations) - 1} if complete else set())
    lat = [d for i, d in enumerate(durations) if i < feature_start and i not in skip]
    fea = [d for i, d in enumerate(durations) if i >= feature_start and i not in skip]
    lat_med = statistics.median(lat) if lat else None
    fea_med = statistics.median(fea) if fea else None
    # what the medians do not explain: set-up before the first step, the slow first steps, the results
    counted = sum((lat_med or 0.0) if i < feature_start else (fea_med or lat_med or 0.0) for i in range(len(durations)))
    elapsed = (marks[-1] if marks else time.perf_counter()) - start
    return _Timed(lat_med, fea_med, max(0.0, elapsed - counted))


def _time_finish(prior: FacePrior, prep: Prepared, k: int, cancel: Callable[[], bool]) -> float:
    """Seconds of `pipeline.finish` for k random faces, unplaced. The correction that makes a patch re-pixelate
    to the mosaic runs until it converges (blend.correct_cells, at most 40 rounds); a real face's needs most of
    them, as a random face's does, where a flat grey face would converge at once and time a fraction."""
    from . import pipeline
    from .solver.mosaic_op import MosaicOperator
    from .solver.mosaic_search import MosaicCandidate, MosaicSolveResult

    if cancel():
        raise Cancelled("calibration cancelled")
    r = int(prior.resolution)
    rng = np.random.default_rng(0)
    faces = [MosaicCandidate(image=rng.random((r, r, 3), dtype=np.float32), seed=i, downscale_mse=0.0, eps_reached=True,
                             steps=1, theta=(0.0, 0.0, 0.0, 0.0), gain=(1.0, 1.0, 1.0), offset=(0.0, 0.0, 0.0),
                             method="ilo") for i in range(k)]
    op = MosaicOperator(prep.observation, r, 0.1, prior.device)
    t0 = time.perf_counter()
    pipeline.finish(prep, MosaicSolveResult(faces, op))
    return time.perf_counter() - t0


__all__ = ["calibrate", "synthetic_region"]
