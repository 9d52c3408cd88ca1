"""Pure parts of the solver: spherical projection, loss terms and grammar, lr schedules."""

from __future__ import annotations

import math

import pytest
import torch

from pulse_server.errors import SolverError
from pulse_server.solver.losses import geocross_loss, l1_loss, l2_loss, parse_loss, soft_clamp, total_loss
from pulse_server.solver.schedules import SCHEDULES, get_schedule
from pulse_server.solver.sphere import SphericalOptimizer, row_norms


# ------------------------------------------------------------------------------------------- sphere
def test_sphere_projection_keeps_each_rows_norm() -> None:
    gen = torch.Generator().manual_seed(0)
    latent = (torch.randn(3, 5, 16, generator=gen) * torch.rand(3, 5, 1, generator=gen) * 3).requires_grad_(True)
    noise = torch.randn(3, 1, 8, 8, generator=gen).requires_grad_(True)
    r_lat, r_noise = row_norms(latent).detach().clone(), row_norms(noise).detach().clone()
    assert r_lat.shape == (3, 5, 1) and r_noise.shape == (3, 1, 1, 1)
    opt = SphericalOptimizer([latent, noise], lr=0.4)
    target = torch.randn(3, 5, 16, generator=gen)
    for _ in range(20):
        opt.zero_grad()
        ((latent - target).pow(2).sum() + noise.sum()).backward()
        opt.step()
        torch.testing.assert_close(row_norms(latent), r_lat, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(row_norms(noise), r_noise, rtol=1e-5, atol=1e-5)
    # it moved (a projection that undid the step would also keep norms)
    assert (latent.detach() - target).pow(2).sum() < 0.9 * (torch.randn(3, 5, 16, generator=gen) - target).pow(2).sum()


def test_sphere_rejects_flat_parameters() -> None:
    with pytest.raises(ValueError):
        SphericalOptimizer([torch.zeros(4, requires_grad=True)], lr=0.1)


# ------------------------------------------------------------------------------------------- losses
def _rows_at_angle(theta: float, dim: int = 8) -> torch.Tensor:
    a = torch.zeros(dim)
    a[0] = 1.0
    b = torch.zeros(dim)
    b[0], b[1] = math.cos(theta), math.sin(theta)
    return torch.stack([a, b])[None] * 3.0  # (1, 2, dim)


def test_geocross_zero_for_equal_rows_and_growing_with_angle() -> None:
    same = torch.randn(1, 1, 16).expand(2, 6, 16).contiguous()
    assert geocross_loss(same).abs().max() < 1e-3
    values = [float(geocross_loss(_rows_at_angle(t))[0]) for t in (0.0, 0.2, 0.5, 1.0, 2.0, 3.0)]
    assert values[0] < 1e-3
    assert all(b > a for a, b in zip(values, values[1:]))
    # squared angle, × dim / 8, mean over the 4 ordered pairs (2 of them are the diagonal)
    assert values[3] == pytest.approx(1.0**2 * 8 / 8 * 2 / 4, rel=1e-3)
    assert geocross_loss(torch.randn(4, 1, 16)).tolist() == [0.0] * 4  # one row: nothing to compare


def test_losses_are_per_candidate() -> None:
    target = torch.zeros(1, 3, 4, 4)
    gen = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.3)])
    l2 = l2_loss(gen, target, eps=1e-3)
    torch.testing.assert_close(l2, torch.tensor([0.01, 0.09]))
    torch.testing.assert_close(l1_loss(gen, target, eps=1e-3), torch.tensor([1.0, 3.0]))


def test_soft_clamp_keeps_a_gradient_below_eps() -> None:
    eps = 1e-2
    err = torch.tensor([1e-3, 5e-2], requires_grad=True)
    hard = soft_clamp(err, eps, 0.0)
    torch.testing.assert_close(hard, torch.tensor([eps, 5e-2]))
    hard.sum().backward()
    assert err.grad.tolist() == [0.0, 1.0]  # the original: no data gradient below eps
    err.grad = None
    soft = soft_clamp(err, eps, 0.1)
    soft.sum().backward()
    torch.testing.assert_close(err.grad, torch.tensor([0.1, 1.0]))
    # continuous at eps
    at = torch.tensor([eps - 1e-7, eps + 1e-7])
    v = soft_clamp(at, eps, 0.1)
    assert abs(float(v[1] - v[0])) < 1e-6


def test_loss_grammar() -> None:
    spec = parse_loss("100*L2+0.05*GEOCROSS")
    assert spec.terms == ((100.0, "L2"), (0.05, "GEOCROSS"))
    assert parse_loss("L2 + 1*l1").terms == ((1.0, "L2"), (1.0, "L1"))
    for bad in ("", "100*L3", "x*L2", "0.05*GEOCROSS", "L2+"):
        with pytest.raises(SolverError):
            parse_loss(bad)
    lowres = torch.full((2, 3, 4, 4), 0.5)
    target = torch.zeros(1, 3, 4, 4)
    total, terms = total_loss(spec, lowres, target, torch.randn(2, 3, 8), eps=1e-3, below_eps_weight=0.0)
    assert total.shape == (2,) and set(terms) == {"L2", "GEOCROSS"}
    torch.testing.assert_close(total, 100 * terms["L2"] + 0.05 * terms["GEOCROSS"])


# ----------------------------------------------------------------------------------------- schedules
def test_schedules_match_the_original_shapes() -> None:
    assert set(SCHEDULES) == {"fixed", "linear1cycle", "linear1cycledrop"}
    steps = 100
    fixed, cyc, drop = (get_schedule(n) for n in ("fixed", "linear1cycle", "linear1cycledrop"))
    assert [fixed(s, steps) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    assert cyc(0, steps) == pytest.approx(0.1) and cyc(50, steps) == pytest.approx(1.0)
    assert cyc(25, steps) == pytest.approx(0.55) and cyc(100, steps) == pytest.approx(0.1)
    assert drop(0, steps) == pytest.approx(0.1) and drop(45, steps) == pytest.approx(1.0)
    assert drop(90, steps) == pytest.approx(0.1)
    assert drop(99, steps) == pytest.approx(0.1 + 0.9 * (0.001 - 0.1))
    assert drop(100, steps) == pytest.approx(0.001)
    # piecewise linear and positive everywhere
    assert all(drop(s, steps) > 0 for s in range(steps))
    with pytest.raises(SolverError):
        get_schedule("cosine")
