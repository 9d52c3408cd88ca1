"""PULSE's loss terms as pure functions, and the `"100*L2+0.05*GEOCROSS"` loss-string grammar.

Every term returns one value per candidate, shape (N,): candidates never share a loss, so summing the
per-candidate totals for `backward()` gives each candidate exactly the gradient it would get alone.

Terms (origin: the original `loss.py`):
  L2        mean squared error of the downscaled image vs the target, per image, clamped below at eps.
  L1        10 × mean absolute error, clamped below at eps (the original's factor 10 is kept).
  GEOCROSS  sum of squared geodesic angles between all pairs of W+ rows: keeps the rows of one candidate
            close to each other (a "realistic" W+), scaled as the original: mean over row pairs × dim / 8.

Clamping at eps is how the original stops chasing the target once it is matched, so that GEOCROSS (the
realism prior) takes over. The original clamps hard, which zeroes the data gradient below eps: the
latent may then drift back above eps and the run ends unmatched. Here the clamp is soft:
    clamp_soft(e) = max(e, eps) + below_eps_weight · min(e, eps)
is continuous at eps, has slope 1 above it (the original's) and slope `below_eps_weight` (default 0.1)
below it, so the data term keeps pulling, ten times weaker than the prior's share of the gradient it had.
`below_eps_weight=0` is the original's hard clamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import SolverError

TERMS = ("L2", "L1", "GEOCROSS")


def soft_clamp(err: Tensor, eps: float, below_eps_weight: float) -> Tensor:
    """max(err, eps) + w·min(err, eps): the original's clamp when w == 0, still a gradient below eps else."""
    out = err.clamp(min=eps)
    if below_eps_weight:
        out = out + below_eps_weight * err.clamp(max=eps)
    return out


def mse_per_image(a: Tensor, b: Tensor) -> Tensor:
    """(N, C, h, w) × (N|1, C, h, w) -> (N,) mean squared error."""
    return (a - b).pow(2).flatten(1).mean(1)


def l2_loss(lowres_gen: Tensor, target: Tensor, eps: float, below_eps_weight: float = 0.0) -> Tensor:
    """(N,) clamped MSE of downscaled candidates vs target (the original's `_loss_l2`, per candidate)."""
    return soft_clamp(mse_per_image(lowres_gen, target), eps, below_eps_weight)


def l1_loss(lowres_gen: Tensor, target: Tensor, eps: float, below_eps_weight: float = 0.0) -> Tensor:
    """(N,) 10 × clamped mean absolute error (the original's `_loss_l1`)."""
    return 10 * soft_clamp((lowres_gen - target).abs().flatten(1).mean(1), eps, below_eps_weight)


def geocross_loss(wplus: Tensor) -> Tensor:
    """(N, rows, dim) -> (N,): mean over row pairs of the squared angle between rows, × dim / 8.

    The angle is computed as 2·atan2(|x-y|, |x+y|), stable near 0 and π (the original's formula).
    Zero for one row (tiled latents, DCGAN) and for identical rows; grows with the angle between rows.
    """
    n, rows, dim = wplus.shape
    if rows == 1:
        return wplus.new_zeros(n)
    x = wplus[:, None, :, :]  # (N, 1, rows, dim)
    y = wplus[:, :, None, :]  # (N, rows, 1, dim)
    a = ((x - y).pow(2).sum(-1) + 1e-9).sqrt()  # (N, rows, rows)
    b = ((x + y).pow(2).sum(-1) + 1e-9).sqrt()
    angle = 2 * torch.atan2(a, b)
    return (angle.pow(2) * dim).mean((1, 2)) / 8.0


@dataclass(frozen=True)
class LossSpec:
    """A parsed loss string: ((weight, term), ...)."""

    terms: tuple[tuple[float, str], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t for _, t in self.terms)


def parse_loss(spec: str) -> LossSpec:
    """"100*L2+0.05*GEOCROSS" -> LossSpec(((100.0, "L2"), (0.05, "GEOCROSS"))); a bare term has weight 1."""
    terms = []
    for part in spec.replace(" ", "").split("+"):
        if not part:
            raise SolverError(f"bad loss string {spec!r}: empty term", code="BAD_LOSS")
        weight_s, _, name = part.rpartition("*")
        name = name.upper()
        if name not in TERMS:
            raise SolverError(f"bad loss string {spec!r}: unknown term {name!r} (known: {', '.join(TERMS)})", code="BAD_LOSS")
        try:
            weight = float(weight_s) if weight_s else 1.0
        except ValueError:
            raise SolverError(f"bad loss string {spec!r}: weight {weight_s!r} is not a number", code="BAD_LOSS") from None
        terms.append((weight, name))
    if not any(name in ("L2", "L1") for _, name in terms):
        raise SolverError(f"bad loss string {spec!r}: needs a data term (L2 or L1)", code="BAD_LOSS")
    return LossSpec(tuple(terms))


def total_loss(spec: LossSpec, lowres_gen: Tensor, target: Tensor, wplus: Tensor, eps: float,
               below_eps_weight: float, mse: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """-> (total (N,), {term: (N,)}) for N candidates; sum(total) is what backward() sees.

    `mse`: `mse_per_image(lowres_gen, target)` when the caller has it already (the solver reports it
    every step), so L2 does not compute it a second time."""
    values: dict[str, Tensor] = {}
    total = None
    for weight, name in spec.terms:
        if name not in values:
            if name == "L2":
                values[name] = (soft_clamp(mse, eps, below_eps_weight) if mse is not None
                                else l2_loss(lowres_gen, target, eps, below_eps_weight))
            elif name == "L1":
                values[name] = l1_loss(lowres_gen, target, eps, below_eps_weight)
            else:
                values[name] = geocross_loss(wplus)
        term = weight * values[name]
        total = term if total is None else total + term
    assert total is not None
    return total, values
