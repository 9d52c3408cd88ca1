"""PULSE's antialiased bicubic downscaler, for any integer factor.

A separable FIR filter: the Keys cubic kernel (a = -0.5) stretched by the factor, so it has 4·factor taps
and low-passes before decimation (plain bicubic *interpolation* would alias). Borders are reflect-padded.
Same kernel, padding and stride as the original `bicubic.py` for even factors; the original puts its taps
half a pixel off the block centre for odd factors, here they sit on it (for odd f the tap at offset
+2f falls on a zero of the kernel, so 4f-1 taps are non-zero).

Output pixel j of a row is sum_i k_i · x[j·f + (f-1)/2 + o_i] with offsets o_i measured from the centre
of input block j, k_i = cubic(o_i / f) / sum(k). The float32 result stays within 2e-6 (max abs, images in
[0, 1]) of a float64 evaluation of the same formula; tests/unit/test_downsample.py holds it to that bound.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CUBIC_A = -0.5  # Keys' cubic convolution parameter, as in the original (and Catmull-Rom)


def cubic(x: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
    """The Keys cubic convolution kernel, support (-2, 2), float64."""
    ax = np.abs(np.asarray(x, dtype=np.float64))
    near = (a + 2) * ax**3 - (a + 3) * ax**2 + 1
    far = a * ax**3 - 5 * a * ax**2 + 8 * a * ax - 4 * a
    return np.where(ax <= 1, near, np.where(ax < 2, far, 0.0))


def tap_offsets(factor: int) -> np.ndarray:
    """Offsets (input pixels) of the 4·factor taps from the centre of an input block, float64."""
    f = int(factor)
    first = -2 * f + 0.5 if f % 2 == 0 else -2 * f + 1.0
    return first + np.arange(4 * f, dtype=np.float64)


def bicubic_taps(factor: int) -> np.ndarray:
    """The normalised 1-D filter (4·factor,), float64."""
    k = cubic(tap_offsets(factor) / factor)
    return k / k.sum()


def padding(factor: int) -> tuple[int, int]:
    """(before, after) reflect padding so that output j's first tap lands on padded index j·factor."""
    f = int(factor)
    before = math.floor(-(tap_offsets(f)[0] + (f - 1) / 2))
    return before, 3 * f - before


class BicubicDownsample(nn.Module):
    """(N, C, H, W) -> (N, C, H/f, W/f); H and W must be multiples of f and larger than 1.5·f."""

    taps: Tensor  # a buffer (register_buffer), typed here: nn.Module's __getattr__ only says Tensor | Module

    def __init__(self, factor: int):
        super().__init__()
        if int(factor) != factor or factor < 1:
            raise ValueError(f"downscale factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)
        self.pad = padding(self.factor)
        self.register_buffer("taps", torch.tensor(bicubic_taps(self.factor), dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        f = self.factor
        before, after = self.pad
        # Always fp32, even inside an autocast region: the data term is an error of ~1e-3, bf16 can't hold it.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.float()
            k = self.taps.to(x.device)
            kv = k.view(1, 1, -1, 1).expand(c, 1, -1, 1)  # (C, 1, 4f, 1)
            kh = k.view(1, 1, 1, -1).expand(c, 1, 1, -1)  # (C, 1, 1, 4f)
            x = F.pad(x, (0, 0, before, after), mode="reflect")  # (N, C, H+3f, W)
            x = F.conv2d(x, kv, stride=(f, 1), groups=c)  # (N, C, H/f, W)
            x = F.pad(x, (before, after, 0, 0), mode="reflect")  # (N, C, H/f, W+3f)
            x = F.conv2d(x, kh, stride=(1, f), groups=c)  # (N, C, H/f, W/f)
        return x


def downsample_reference(image: np.ndarray, factor: int) -> np.ndarray:
    """float64 reference of the same filter, written independently of the convolution code: (H, W, C)."""
    x = np.asarray(image, dtype=np.float64)
    f = int(factor)
    k = bicubic_taps(f)
    offs = tap_offsets(f)

    def reflect(idx: np.ndarray, n: int) -> np.ndarray:
        period = 2 * (n - 1)
        idx = np.mod(idx, period)
        return np.where(idx < n, idx, period - idx)

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        n = a.shape[axis]
        centres = np.arange(n // f) * f + (f - 1) / 2  # block centres
        pos = np.rint(centres[:, None] + offs[None, :]).astype(np.int64)  # (out, taps), integers by design
        gathered = np.take(a, reflect(pos, n), axis=axis)  # axis replaced by (out, taps)
        return np.tensordot(gathered, k, axes=([axis + 1], [0]))

    return along(along(x, 0), 1)
