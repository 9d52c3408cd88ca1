"""The antialiased bicubic downscaler against an independent float64 reference, for many factors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pulse_server.solver.downsample import (
    BicubicDownsample,
    bicubic_taps,
    cubic,
    downsample_reference,
    padding,
    tap_offsets,
)

# Stated bound: float32 convolution vs float64 reference, max abs error on images in [0, 1].
BOUND = 2e-6


def _torch_down(img: np.ndarray, f: int) -> np.ndarray:
    x = torch.from_numpy(img.astype(np.float32)).permute(2, 0, 1)[None]
    return BicubicDownsample(f)(x)[0].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("factor,low", [(1, 5), (2, 3), (3, 4), (4, 2), (5, 3), (6, 4), (7, 2), (8, 4), (32, 2)])
def test_matches_float64_reference(factor: int, low: int) -> None:
    rng = np.random.default_rng(factor * 100 + low)
    for _ in range(3):
        img = rng.random((low * factor, low * factor, 3))
        got = _torch_down(img, factor)
        want = downsample_reference(img, factor)
        assert got.shape == (low, low, 3)
        assert np.abs(got - want).max() < BOUND


def test_reference_is_not_trivially_equal_to_block_mean() -> None:
    """The filter really is bicubic (negative lobes), not a box: a check that the reference can fail."""
    rng = np.random.default_rng(0)
    img = rng.random((16, 16, 3))
    box = img.reshape(4, 4, 4, 4, 3).mean((1, 3))
    assert np.abs(downsample_reference(img, 4) - box).max() > 1e-2


def test_kernel_properties() -> None:
    for f in range(1, 10):
        k, offs = bicubic_taps(f), tap_offsets(f)
        assert len(k) == 4 * f
        assert abs(k.sum() - 1) < 1e-12
        # taps are symmetric about the block centre (the original is half a pixel off for odd factors)
        nz = offs[np.abs(k) > 0]
        np.testing.assert_allclose(nz, -nz[::-1])
        before, after = padding(f)
        assert before + after == 3 * f
    assert cubic(np.array([0.0]))[0] == 1 and cubic(np.array([1.0, 2.0, 2.5])).tolist() == [0, 0, 0]
    assert cubic(np.array([1.5]))[0] == pytest.approx(-0.0625)  # a = -0.5


@pytest.mark.parametrize("f", [2, 4, 8, 32])
def test_even_factors_use_the_original_kernel_and_padding(f: int) -> None:
    """Original bicubic.py: k_i = cubic((i - floor(2f) + 0.5) / f), reflect pad 3f//2 then the rest."""
    orig = cubic((np.arange(4 * f) - 2 * f + 0.5) / f)
    np.testing.assert_allclose(bicubic_taps(f), orig / orig.sum(), rtol=0, atol=1e-15)
    assert padding(f) == (3 * f // 2, 3 * f - 3 * f // 2)


def test_factor_one_is_identity_and_constants_stay_constant() -> None:
    rng = np.random.default_rng(1)
    img = rng.random((6, 6, 3))
    np.testing.assert_allclose(_torch_down(img, 1), img, atol=1e-6)
    const = np.full((24, 24, 3), 0.3)
    for f in (2, 3, 4, 6, 8):
        np.testing.assert_allclose(_torch_down(const, f), 0.3, atol=1e-6)


def test_gradient_and_batch() -> None:
    x = torch.rand(5, 3, 32, 32, requires_grad=True)
    y = BicubicDownsample(8)(x)
    assert y.shape == (5, 3, 4, 4)
    y.sum().backward()
    # each output sums its inputs with weights summing to 1: the total gradient mass equals #outputs
    assert x.grad is not None and abs(float(x.grad.sum()) - 5 * 3 * 16) < 1e-3
