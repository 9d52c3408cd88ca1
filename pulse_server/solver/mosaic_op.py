"""The mosaic as a differentiable forward model: face (R×R) → placement θ → area average over each cell.

    cells(face, θ)[n, :, c] = mean of face_n over the photo pixels of cell c, after placing the generator
                              frame over the mosaic rectangle with θ_n = (log-scale, angle, tx, ty)

Placement: at θ = 0 the generator frame is a square of side L0 = max(W, H)·(1 + 2·margin) photo pixels
centred on the rectangle; θ scales it by exp(log-scale), turns it by `angle` (radians) about its centre and
shifts that centre by (tx, ty)·L0. A photo point p maps to the frame coordinate u = Rot(−angle)(p − c)/(L/2)
in [−1, 1] (grid_sample's convention, align_corners=False); points beyond the frame read its reflection,
so a slightly small or shifted frame shows a mirrored continuation of the face, never streaks of one
edge pixel.

Area average: each cell is integrated with the midpoint rule over S×S points spread over the part of the
cell inside the rectangle (partial edge cells count only what they cover), read bilinearly from the
face area-pooled by 2^level, chosen so that a cell spans about 8 pooled generator pixels: the sum is then
the box average of the face over the cell, without aliasing, for any generator size and any block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..pipeline.observation import Observation

THETA_DIM = 4  # log-scale, angle (rad), tx, ty (fractions of L0)
# How far the search may move the frame from its start: faces in real photos are a little off-centre,
# scaled and tilted inside the box a user draws; beyond these bounds the prior's face no longer fits.
THETA_LOW = (math.log(0.7), -0.35, -0.25, -0.25)
THETA_HIGH = (math.log(1.45), 0.35, 0.25, 0.25)
GAIN_RANGE = (0.5, 2.0)  # a colour fit outside this would erase or exaggerate the face's contrast
_CELL_PX = 8  # pooled generator pixels a cell should span (sets the pyramid level)
_MAX_SAMPLES = 8  # per cell side


@dataclass(frozen=True)
class Colour:
    """Per candidate and channel: face → photo colour, photo = gain·face + offset. (N, 3) each."""

    gain: Tensor
    offset: Tensor


class MosaicOperator:
    """The forward model for one observation and one generator resolution (see module doc)."""

    def __init__(self, obs: Observation, resolution: int, margin: float, device: torch.device | str = "cpu"):
        self.obs, self.resolution = obs, resolution
        self.device = torch.device(device)
        w, h = obs.width, obs.height
        self.base_side = max(w, h) * (1.0 + 2.0 * margin)  # L0, photo pixels
        self.centre = (w / 2.0, h / 2.0)
        per_cell = obs.block * resolution / self.base_side  # generator pixels per cell side at θ = 0
        self.level = max(0, int(math.floor(math.log2(max(per_cell, 1.0) / _CELL_PX))))
        self.samples = int(min(_MAX_SAMPLES, max(2, math.ceil(per_cell / 2**self.level))))
        self.points = self._cell_points().to(self.device)  # (cells·S², 2) photo px (x, y)
        ny, nx = obs.grid
        self.target = torch.from_numpy(obs.cells.reshape(ny * nx, 3).T.copy()).float().to(self.device)  # (3, C)
        wgt = torch.from_numpy(obs.weight.reshape(-1).astype(np.float32)).to(self.device)  # (C,)
        self.weight = wgt / wgt.sum().clamp_min(1e-12)
        # A grey photo (every cell achromatic) gets grey faces: per-channel colour fits of a colour face
        # would otherwise paint colour fringes into it.
        self.grey = bool(np.ptp(obs.cells, axis=2).max() < 1.0 / 255)

    def _cell_points(self) -> Tensor:
        """Midpoint-rule sample points of every cell (row-major), clipped to the rectangle."""
        s = self.samples
        xs, ys = self.obs.cell_edges(1), self.obs.cell_edges(0)
        frac = (np.arange(s) + 0.5) / s  # (S,)
        px = xs[:-1, None] + (xs[1:] - xs[:-1])[:, None] * frac[None]  # (nx, S)
        py = ys[:-1, None] + (ys[1:] - ys[:-1])[:, None] * frac[None]  # (ny, S)
        ny, nx = len(ys) - 1, len(xs) - 1
        gx = np.broadcast_to(px[None, :, None, :], (ny, nx, s, s))  # (ny, nx, sy, sx)
        gy = np.broadcast_to(py[:, None, :, None], (ny, nx, s, s))
        return torch.from_numpy(np.stack([gx, gy], axis=-1).reshape(-1, 2).astype(np.float32))

    # ---- placement --------------------------------------------------------------------------------

    def clamp_(self, theta: Tensor) -> None:
        """Keep θ (N, 4) inside the search bounds, in place (no host sync)."""
        low = theta.new_tensor(THETA_LOW)
        high = theta.new_tensor(THETA_HIGH)
        theta.copy_(torch.maximum(torch.minimum(theta, high), low))

    def frame_coords(self, theta: Tensor, points: Tensor) -> Tensor:
        """θ (N, 4), photo points (P, 2) -> grid_sample coordinates (N, P, 2) in the generator frame."""
        scale, angle, tx, ty = theta.float().unbind(1)  # (N,) each
        half = self.base_side * torch.exp(scale) / 2.0  # (N,)
        cx = self.centre[0] + tx * self.base_side
        cy = self.centre[1] + ty * self.base_side
        dx = points[None, :, 0] - cx[:, None]  # (N, P)
        dy = points[None, :, 1] - cy[:, None]
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        u = (cos * dx + sin * dy) / half[:, None]  # rotate by −angle
        v = (-sin * dx + cos * dy) / half[:, None]
        return torch.stack([u, v], dim=-1)

    def _sample(self, image: Tensor, coords: Tensor, mode: str) -> Tensor:
        """image (N, 3, r, r), coords (N, P, 2) -> (N, 3, P)."""
        out = F.grid_sample(image, coords[:, None], mode=mode, padding_mode="reflection", align_corners=False)
        return out[:, :, 0]

    # ---- the forward model ------------------------------------------------------------------------

    def cells(self, image: Tensor, theta: Tensor) -> Tensor:
        """Faces (N, 3, R, R) in [0, 1] placed with θ (N, 4) -> cell means (N, 3, C), C = ny·nx row-major."""
        pooled = F.avg_pool2d(image.float(), 2**self.level) if self.level else image.float()
        vals = self._sample(pooled, self.frame_coords(theta, self.points), "bilinear")  # (N, 3, C·S²)
        n = image.shape[0]
        return self._tone(vals.reshape(n, 3, -1, self.samples * self.samples).mean(-1))

    def _tone(self, x: Tensor) -> Tensor:
        """(N, 3, ...) -> the same, grey (channel mean) when the photo is grey."""
        return x.mean(1, keepdim=True).expand_as(x) if self.grey else x

    def fit_colour(self, pred: Tensor) -> Colour:
        """Weighted least-squares gain and offset per candidate and channel mapping pred (N, 3, C) onto the
        observed cells: the photo's white balance and contrast are not the prior's (differentiable)."""
        w = self.weight  # (C,), sums to 1
        mp = (pred * w).sum(-1, keepdim=True)  # (N, 3, 1)
        mt = (self.target * w).sum(-1, keepdim=True)  # (3, 1)
        dp, dt = pred - mp, self.target - mt
        var = (dp * dp * w).sum(-1)  # (N, 3)
        cov = (dp * dt * w).sum(-1)
        gain = torch.where(var > 1e-8, cov / var.clamp_min(1e-8), torch.ones_like(var)).clamp(*GAIN_RANGE)
        offset = mt[..., 0] - gain * mp[..., 0]
        return Colour(gain, offset)

    def error(self, pred: Tensor, colour: Colour | None = None) -> Tensor:
        """(N, 3, C) cell means -> (N,) weighted mean squared error per cell and channel vs the observation."""
        if colour is not None:
            pred = pred * colour.gain[..., None] + colour.offset[..., None]
        return ((pred - self.target).pow(2).mean(1) * self.weight).sum(-1)

    # ---- placing a face for the patch ---------------------------------------------------------------

    @torch.no_grad()
    def place(self, image: Tensor, theta: Tensor) -> Tensor:
        """Faces (N, 3, R, R) -> (N, 3, H, W) over the rectangle's pixels, sampled at pixel centres
        (bicubic where the face is enlarged, area-pooled first where it is shrunk)."""
        w, h = self.obs.width, self.obs.height
        xs = torch.arange(w, dtype=torch.float32, device=self.device) + 0.5
        ys = torch.arange(h, dtype=torch.float32, device=self.device) + 0.5
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        points = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=-1)  # (H·W, 2)
        out = []
        for i in range(image.shape[0]):  # one candidate at a time: a 4096² rectangle is 16 M points
            th = theta[i : i + 1]
            gen_per_px = self.resolution / (self.base_side * float(torch.exp(th[0, 0])))
            level = max(0, int(math.floor(math.log2(max(gen_per_px, 1.0)))))
            img = image[i : i + 1].float()
            img = F.avg_pool2d(img, 2**level) if level else img
            mode = "bicubic" if level == 0 else "bilinear"
            vals = self._sample(img, self.frame_coords(th, points), mode)  # (1, 3, H·W)
            out.append(self._tone(vals.reshape(1, 3, h, w)))
        return torch.cat(out)
