"""One job, the same way everywhere (daemon worker, `pulse depixelate`, `pulse solve`, a cluster actor).

    depixelate:  pipeline.prepare ──Observation──▶ solver.solve_mosaic ──faces + θ──▶ pipeline.finish
    solve:       solver.solve (PULSE's bicubic forward model on a square low-res face)

Each stage returns to the runner; none calls the next. Torch is imported when a job runs, not before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .pipeline import DepixParams, DepixResult, Prepared, finish, prepare


def depixelate(prior: Any, region: np.ndarray, mask: np.ndarray | None, params: DepixParams | None = None,
               progress: Callable[[Any], None] | None = None, cancel: Callable[[], bool] | None = None, *,
               model: str | None = None, on_prepared: Callable[[Prepared], None] | None = None) -> DepixResult:
    """K candidate patches for an editor region (+ selection mask), best first. PipelineError / SolverError
    for input that cannot be depixelated; Cancelled when `cancel()` turns true. `on_prepared` sees what the
    analysis found (the mosaic, its cells) before the search starts."""
    from .solver.mosaic_search import MosaicConfig, solve_mosaic

    params = params or DepixParams()
    prep = prepare(region, mask, params, cancel)
    if on_prepared is not None:
        on_prepared(prep)
    config = MosaicConfig(candidates=params.candidates, steps=params.steps, eps=params.eps, seed=params.seed,
                          method=params.method, precision=params.precision, margin=params.margin,
                          preview_every=params.preview_every)
    solved = solve_mosaic(prior, prep.observation, config, progress=progress, cancel=cancel)
    patches = finish(prep, solved)
    name = model or getattr(prior, "name", None) or getattr(prior, "family", "") or type(prior).__name__
    return DepixResult(patches=patches, candidates=list(solved.candidates), mosaic=prep.mosaic, model=str(name),
                       method=params.method, stage=solved.stage, search_seconds=solved.seconds,
                       steps_run=solved.steps_run)


def solve(prior: Any, lowres: np.ndarray, config: Any = None, progress: Callable[[Any], None] | None = None,
          cancel: Callable[[], bool] | None = None) -> Any:
    """PULSE on a square low-res face (solver.solve): K faces at the prior's resolution."""
    from .solver import solve as pulse_solve

    return pulse_solve(prior, lowres, config, progress=progress, cancel=cancel)
