"""Projected Adam on spheres (the original `SphericalOptimizer.py`).

Each parameter is (N, rows, ...): after every optimizer step, every (candidate, row) slice is rescaled to
the norm it had at the start. For a W+ latent (N, rows, dim) that is one sphere of radius ≈ sqrt(dim)
per row (where a Gaussian's mass lives); for a noise map (N, 1, H, W) one sphere per map.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def row_norms(t: Tensor) -> Tensor:
    """(N, R, ...) -> (N, R, 1, ...) norms over every dim after the second (+1e-9 as the original)."""
    return (t.pow(2).sum(dim=tuple(range(2, t.ndim)), keepdim=True) + 1e-9).sqrt()


class SphericalOptimizer:
    """Wraps an optimizer; `step()` = inner step, then project each (candidate, row) back to its radius."""

    def __init__(self, params: Sequence[Tensor], lr: float,
                 optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam, **kwargs):
        self.params = list(params)
        for p in self.params:
            if p.ndim < 3:
                raise ValueError(f"spherical parameters are (N, rows, ...), got shape {tuple(p.shape)}")
        self.opt = optimizer(self.params, lr=lr, **kwargs)
        with torch.no_grad():
            self.radii = [row_norms(p) for p in self.params]

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def project(self) -> None:
        for p, r in zip(self.params, self.radii):
            p.mul_(r / row_norms(p))

    def step(self) -> None:
        self.opt.step()
        self.project()
