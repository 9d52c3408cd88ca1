"""Putting a generated face back: colour/tone match, feathered composite, block consistency.

All functions work on float32 RGB in [0, 1] over the mosaic rectangle; its cells are described by a
`CellGrid` (the outermost rows/columns may be partial cells, cut by the mosaic's edge). The composite is
    out = input + a * (face - input)        a = selection weight × feather ramp, in [0, 1]
and the face is shifted per cell so that every cell of `out` averages to the input cell's colour
(re-pixelating the result gives back the mosaic; the photo's white balance cannot drift).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CellGrid:
    """The mosaic's cells over its rectangle: grid lines every `block` px from `origin` (rect coordinates,
    -block < origin <= 0), so the first/last row/column may be partial cells cut by the mosaic's edge.

    The index maps (`row`, `col`, `labels`) are computed once per grid: `enforce_cells` calls `sums` and
    `spread` dozens of times on one grid."""

    height: int
    width: int
    block: int
    origin: tuple[int, int] = (0, 0)  # (x, y) of the first grid line, relative to the rectangle

    @classmethod
    def of(cls, rect: tuple[int, int, int, int], block: int, phase: tuple[int, int]) -> "CellGrid":
        """The grid of a mosaic rectangle (region coords) with grid lines at phase (mod block)."""
        x, y, w, h = rect
        ox = (phase[0] - x) % block
        oy = (phase[1] - y) % block
        return cls(h, w, block, (ox - block if ox else 0, oy - block if oy else 0))

    @cached_property
    def col(self) -> np.ndarray:
        return (np.arange(self.width) - self.origin[0]) // self.block

    @cached_property
    def row(self) -> np.ndarray:
        return (np.arange(self.height) - self.origin[1]) // self.block

    @cached_property
    def shape(self) -> tuple[int, int]:
        return int(self.row[-1]) + 1, int(self.col[-1]) + 1

    @cached_property
    def labels(self) -> np.ndarray:
        """(H, W) cell index of every pixel, row-major over the cells."""
        return self.row[:, None] * self.shape[1] + self.col[None, :]

    @property
    def trim(self) -> tuple[float, float, float, float]:
        """Fractions of the first/last column/row cell outside the rectangle: (left, top, right, bottom)."""
        b = self.block
        ny, nx = self.shape
        return (-self.origin[0] / b, -self.origin[1] / b,
                (nx * b + self.origin[0] - self.width) / b, (ny * b + self.origin[1] - self.height) / b)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """(H, W, C) -> (ny, nx, C) per-cell sums."""
        ny, nx = self.shape
        lab = self.labels.ravel()
        flat = values.reshape(lab.size, -1).astype(np.float64)
        out = np.stack([np.bincount(lab, weights=flat[:, c], minlength=ny * nx) for c in range(flat.shape[1])], axis=1)
        return out.reshape(ny, nx, -1)

    def means(self, img: np.ndarray) -> np.ndarray:
        """(H, W, C) -> (ny, nx, C) float64 cell means (partial cells: mean of their pixels inside)."""
        return self.sums(img) / self.sums(np.ones(img.shape[:2] + (1,)))

    def spread(self, per_cell: np.ndarray) -> np.ndarray:
        """(ny, nx, C) -> (H, W, C): every pixel gets its cell's value."""
        return per_cell[self.row[:, None], self.col[None, :]]


def match_colour(face: np.ndarray, target_cells: np.ndarray, grid: CellGrid) -> np.ndarray:
    """Per-channel gain and offset that make the face's cell means fit the target cell colours (least squares).

    This keeps the photo's white balance and tone: a generator with a colour cast or a different contrast
    is mapped onto the input's statistics before the per-cell correction adds only small offsets.
    """
    fc = grid.means(face).reshape(-1, 3)
    tc = target_cells.reshape(-1, 3).astype(np.float64)
    out = np.empty_like(face)
    for c in range(3):
        x, y = fc[:, c], tc[:, c]
        vx = float(((x - x.mean()) ** 2).mean())
        gain = float(((x - x.mean()) * (y - y.mean())).mean() / vx) if vx > 1e-8 else 1.0
        gain = float(np.clip(gain, 0.25, 4.0))  # a flat or inverted fit would erase or negate the detail
        off = float(y.mean() - gain * x.mean())
        out[..., c] = face[..., c] * gain + off
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def feather_ramp(height: int, width: int, width_px: float, open_sides: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """(H, W) weight: 0 → 1 over `width_px` pixels inward from each side in `open_sides` (left, top, right,
    bottom), 1 elsewhere. Sides on the region's border are not feathered: there is nothing to blend into."""
    if width_px <= 0:
        return np.ones((height, width), np.float32)
    xs, ys = np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32)
    dist_x = np.full(width, np.inf, np.float32)
    dist_y = np.full(height, np.inf, np.float32)
    if open_sides[0]:
        dist_x = np.minimum(dist_x, xs + 0.5)
    if open_sides[2]:
        dist_x = np.minimum(dist_x, width - xs - 0.5)
    if open_sides[1]:
        dist_y = np.minimum(dist_y, ys + 0.5)
    if open_sides[3]:
        dist_y = np.minimum(dist_y, height - ys - 0.5)
    d = np.minimum(dist_y[:, None], dist_x[None, :])
    t = np.clip(d / width_px, 0.0, 1.0)
    return (t * t * (3 - 2 * t)).astype(np.float32)  # smoothstep: no visible kink where the ramp ends


def enforce_cells(face: np.ndarray, base: np.ndarray, weight: np.ndarray, grid: CellGrid, iterations: int = 4,
                  smooth_iterations: int = 10) -> np.ndarray:
    """Shift the face per cell so that every cell of base + weight·(face − base) has base's cell mean.

    First a few rounds of smooth back-projection (the per-cell error, interpolated bilinearly over the pixels,
    is subtracted: no visible steps at cell borders), then exact constant-per-cell steps for what is left.
    Cells with no weight are left alone. Clipping to [0, 1] can leave a residual after one pass (a bright
    cell whose face pixels saturate); the loop spreads it over the pixels that still have room.
    """
    w = np.broadcast_to(weight[..., None], face.shape).astype(np.float64)
    b = base.astype(np.float64)
    f = _smooth_backproject(face, b, w, grid, smooth_iterations).astype(np.float64)
    for _ in range(iterations):
        resid = grid.spread(grid.sums(w * (f - b)))  # Σ w·(f − b) of each pixel's cell, per channel
        if np.abs(resid).max() < 1e-7:
            break
        # adding c to the pixels M of a cell changes the sum by c·Σ_M w; M = pixels that can still move that way
        movable = np.where(resid < 0, f < 1.0, f > 0.0) & (w > 0)
        wm = grid.spread(grid.sums(w * movable))
        c = np.where(wm > 1e-12, -resid / np.maximum(wm, 1e-12), 0.0)
        f = np.clip(f + c * movable, 0.0, 1.0)
    return f.astype(np.float32)


def _smooth_backproject(face: np.ndarray, base: np.ndarray, w: np.ndarray, grid: CellGrid, rounds: int) -> np.ndarray:
    ny, nx = grid.shape
    if rounds <= 0 or ny < 2 or nx < 2:
        return face
    wsum = grid.sums(w)
    f = face.astype(np.float64)
    # the cell-error map lives on the cell grid; its pixel footprint, partial cells included, is this box
    l, t, r, btm = grid.trim
    box = (l, t, nx - r, ny - btm)
    for _ in range(rounds):
        resid = np.where(wsum > 1e-9, grid.sums(w * (f - base)) / np.maximum(wsum, 1e-9), 0.0)  # mean error
        corr = np.stack([np.asarray(Image.fromarray(resid[..., c].astype(np.float32)).resize(
            (grid.width, grid.height), Image.Resampling.BILINEAR, box=box)) for c in range(resid.shape[2])], axis=2)
        f = np.clip(f - corr, 0.0, 1.0)
    return f.astype(np.float32)


def composite(base: np.ndarray, face: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """base + weight·(face − base), float32."""
    return (base + weight[..., None] * (face - base)).astype(np.float32)
