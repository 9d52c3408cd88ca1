"""Putting a placed face back: feathered composite and a smooth correction to the cell means.

All functions work on float32 RGB in [0, 1] over the mosaic rectangle; its cells are described by a
`CellGrid` (the outermost rows/columns may be partial cells, cut by the mosaic's edge). The composite is
    out = smooth + a * (face - smooth)      a = selection weight × feather ramp, in (0, 1]
    out = input                             where a = 0 (bit for bit)
with `smooth` the mosaic's cell means interpolated between cell centres, and the face gets a smooth correction so that every cell of `out` averages to the input cell's colour
(re-pixelating the result gives back the mosaic) with no step at any cell edge.
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

    The index maps (`row`, `col`, `labels`) are computed once per grid: `correct_cells` calls `sums` and
    `spread` dozens of times on one grid."""

    height: int
    width: int
    block: int
    origin: tuple[int, int] = (0, 0)  # (x, y) of the first grid line, relative to the rectangle

    @classmethod
    def of(cls, rect: tuple[int, int, int, int], block: int, phase: tuple[int, int]) -> CellGrid:
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

    @cached_property
    def _starts(self) -> tuple[np.ndarray, np.ndarray]:
        """First pixel row of every cell row, first pixel column of every cell column."""
        return (np.flatnonzero(np.diff(self.row, prepend=-1)), np.flatnonzero(np.diff(self.col, prepend=-1)))

    @property
    def trim(self) -> tuple[float, float, float, float]:
        """Fractions of the first/last column/row cell outside the rectangle: (left, top, right, bottom)."""
        b = self.block
        ny, nx = self.shape
        return (-self.origin[0] / b, -self.origin[1] / b,
                (nx * b + self.origin[0] - self.width) / b, (ny * b + self.origin[1] - self.height) / b)

    def sums(self, values: np.ndarray) -> np.ndarray:
        """(H, W, C) -> (ny, nx, C) per-cell sums, float64. The cells are rectangles: a sum over each band of
        columns (in the input's float type: a band is at most `block` values), then over each band of rows
        (float64), reads the image once in memory order; a sum by label reads a label map beside it and
        scatters, about 9× slower on a 1000² region."""
        rows, cols = self._starts
        values = values.reshape(self.height, self.width, -1)
        if values.dtype not in (np.float32, np.float64):
            values = values.astype(np.float64)
        return np.add.reduceat(np.add.reduceat(values, cols, axis=1), rows, axis=0, dtype=np.float64)

    def means(self, img: np.ndarray) -> np.ndarray:
        """(H, W, C) -> (ny, nx, C) float64 cell means (partial cells: mean of their pixels inside)."""
        return self.sums(img) / self.sums(np.ones(img.shape[:2] + (1,)))

    def spread(self, per_cell: np.ndarray) -> np.ndarray:
        """(ny, nx, C) -> (H, W, C): every pixel gets its cell's value."""
        return per_cell[self.row[:, None], self.col[None, :]]


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


def correct_cells(face: np.ndarray, base: np.ndarray, under: np.ndarray, weight: np.ndarray, grid: CellGrid,
                  rounds: int = 40, tolerance: float = 0.1 / 255) -> np.ndarray:
    """A smooth correction of the face so that every cell of `composite(base, under, face, weight)` has
    base's cell mean (re-pixelating the patch gives back the mosaic).

    Each round measures each cell's error per unit of weight and subtracts it, interpolated bilinearly
    between cell centres: a correction with no steps at cell edges (a per-cell constant would draw the grid
    again). A round leaves at most three quarters of the error (a checkerboard of cell errors; smooth errors
    vanish at once); clipping to [0, 1] leaves more in cells whose face pixels saturate, which later rounds
    push into the pixels that still have room. Stops when every cell is within `tolerance`.
    Cells with no weight are left alone.
    """
    ny, nx = grid.shape
    on = weight > 0
    w = weight.astype(np.float32)[..., None]
    f = face.astype(np.float32)  # a copy: corrected in place below
    # composite = under + w·(f − under) where w > 0, base elsewhere: its cell sums are a part that does not
    # change (under·(1 − w), base) plus sums(w·f), so a round sums one product instead of composing the patch
    target = grid.sums(base) - grid.sums(np.where(on[..., None], under * (1 - w), base))
    wsum = grid.sums(w)
    # the cell-error map lives on the cell grid; its pixel footprint, partial cells included, is this box
    left, top, right, bottom = grid.trim
    box = (left, top, nx - right, ny - bottom)
    for _ in range(rounds):
        resid = np.where(wsum > 1e-9, (grid.sums(w * f) - target) / np.maximum(wsum, 1e-9), 0.0)
        if np.abs(resid).max() < tolerance:
            break
        for c in range(resid.shape[2]):
            f[..., c] -= _interpolate(resid[..., c], grid.width, grid.height, box)
        np.clip(f, 0.0, 1.0, out=f)
    return f


def smooth_cells(img: np.ndarray, grid: CellGrid) -> np.ndarray:
    """(H, W, C) -> a smooth image with the same cell means: the mosaic without its grid, what the face is
    feathered into (blending into the mosaic itself would draw its steps at the rim). Its cells already
    average right, so a face that fades into it at a thin partial edge cell needs no correction there."""
    ny, nx = grid.shape
    left, top, right, bottom = grid.trim
    means = grid.means(img)
    start = np.stack([_interpolate(means[..., c], grid.width, grid.height, (left, top, nx - right, ny - bottom))
                      for c in range(img.shape[2])], axis=2).astype(np.float32)
    ones = np.ones(img.shape[:2], np.float32)
    return correct_cells(start, img, start, ones, grid)


def _interpolate(cells: np.ndarray, width: int, height: int, box: tuple[float, float, float, float]) -> np.ndarray:
    """(ny, nx) per-cell values -> (height, width), bilinear between cell centres (PIL; constant beyond them)."""
    if cells.shape[0] < 2 and cells.shape[1] < 2:
        return np.full((height, width), float(cells.reshape(-1)[0]), np.float32)
    img = Image.fromarray(cells.astype(np.float32))
    return np.asarray(img.resize((width, height), Image.Resampling.BILINEAR, box=box), dtype=np.float32)


def composite(base: np.ndarray, under: np.ndarray, face: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """under + weight·(face − under) where weight > 0; base (bit for bit) where it is 0. float32."""
    w = weight[..., None]
    return np.where(w > 0, under + w * (face - under), base).astype(np.float32)
