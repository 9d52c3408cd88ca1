"""CUDA vs CPU on the tiny model: same seeds, same targets, results within each precision's tolerance.

Marked `gpu`; skipped where CUDA is absent (this file is meant to run on the GPU machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pulse_server.solver import SolveConfig, solve
from pulse_server.solver.downsample import BicubicDownsample

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.fixture(scope="module")
def priors(tiny_weights: Path, tmp_path_factory: pytest.TempPathFactory):
    from pulse_server.models.loading import load_prior

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PULSE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        cpu, _ = load_prior(tiny_weights, "cpu")
        gpu, _ = load_prior(tiny_weights, "cuda")
    return cpu, gpu


@pytest.fixture(scope="module")
def target(priors) -> np.ndarray:
    cpu, _ = priors
    with torch.no_grad():
        z = cpu.sample_latent(1, torch.Generator().manual_seed(1234))
        img = ((cpu.render(z) + 1) / 2).clamp(0, 1)
    return BicubicDownsample(8)(img)[0].permute(1, 2, 0).numpy()


def test_fp32_mode_matches_cpu(priors, target) -> None:
    cpu, gpu = priors
    torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32 here: TF32 convs would round to 10 bits
    try:
        cfg = SolveConfig(candidates=2, steps=20, seed=0, precision="fp32")
        a, b = solve(cpu, target, cfg), solve(gpu, target, cfg)
    finally:
        torch.backends.cudnn.allow_tf32 = True
    for x, y in zip(sorted(a.candidates, key=lambda c: c.seed), sorted(b.candidates, key=lambda c: c.seed)):
        assert x.seed == y.seed
        assert np.abs(x.image - y.image).max() < 2e-2
        assert y.downscale_mse == pytest.approx(x.downscale_mse, rel=0.05, abs=1e-6)


def test_default_mode_bf16_same_quality_as_cpu(priors, target) -> None:
    """bf16 synthesis changes the trajectory, not the outcome: same eps flags, errors of the same size."""
    cpu, gpu = priors
    cfg = SolveConfig(candidates=4, steps=100, seed=0, precision="default")
    a, b = solve(cpu, target, cfg), solve(gpu, target, cfg)
    assert sum(c.eps_reached for c in b.candidates) == sum(c.eps_reached for c in a.candidates) == 4
    assert b.candidates[0].downscale_mse <= 1.5 * a.candidates[0].downscale_mse + 1e-5
    # the reported error is measured in fp32 on the returned image
    low = BicubicDownsample(8)(torch.from_numpy(b.candidates[0].image).permute(2, 0, 1)[None])
    mse = float((low[0].permute(1, 2, 0).numpy() - target).__pow__(2).mean())
    assert mse == pytest.approx(b.candidates[0].downscale_mse, rel=1e-3, abs=1e-7)


def test_default_mode_compiled_runs(priors, target) -> None:
    _, gpu = priors
    res = solve(gpu, target, SolveConfig(candidates=2, steps=10, seed=0, compile=True))
    assert len(res.candidates) == 2 and all(np.isfinite(c.downscale_mse) for c in res.candidates)


def test_default_step_loop_never_syncs_with_the_host(priors, target) -> None:
    """The fast path's step: no .item(), no device->host copy (CUDA sync debug mode raises on any sync)."""
    from pulse_server.solver.pulse import _Search, _target_tensor

    _, gpu = priors
    cfg = SolveConfig(candidates=4, steps=10, seed=0)
    tgt, factor = _target_tensor(target, gpu.resolution)
    search = _Search(gpu, tgt.cuda(), factor, [0, 1, 2, 3], cfg, gpu.render, autocast=True)
    search.step(0)  # first step: lazy allocations, cuBLAS/cuDNN handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for j in range(1, cfg.steps):
            search.step(j)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert int(search.best_step.min()) >= 1


def test_mosaic_search_on_cuda_matches_cpu_in_fp32(priors) -> None:
    """The depixelate search runs batched on CUDA (bf16 synthesis in the default mode) and, in fp32, finds
    the same candidates as on the CPU: same seeds, same placements, errors within float rounding."""
    from pulse_server.pipeline.observation import Observation
    from pulse_server.solver.mosaic_search import MosaicConfig, solve_mosaic

    rng = np.random.default_rng(5)
    obs = Observation(cells=rng.uniform(0.2, 0.8, (9, 9, 3)).astype(np.float32), weight=np.ones((9, 9), np.float32),
                      width=108, height=108, block=12)
    cpu, gpu = priors
    cfg = MosaicConfig(candidates=3, steps=30, seed=7, precision="fp32")
    a, b = solve_mosaic(cpu, obs, cfg), solve_mosaic(gpu, obs, cfg)
    assert [c.seed for c in a.candidates] == [c.seed for c in b.candidates]
    for x, y in zip(a.candidates, b.candidates):
        assert y.downscale_mse == pytest.approx(x.downscale_mse, rel=0.05, abs=1e-5)
        assert np.allclose(x.theta, y.theta, atol=5e-3)
    fast = solve_mosaic(gpu, obs, MosaicConfig(candidates=3, steps=30, seed=7))  # bf16 synthesis
    assert len(fast.candidates) == 3 and all(np.isfinite(c.downscale_mse) for c in fast.candidates)
