"""The patch correction's building blocks against plain references: per-cell sums over a grid with partial
edge cells (any pixel type), and a corrected face whose composite re-pixelates to the mosaic."""

from __future__ import annotations

import numpy as np
import pytest

from pulse_server.pipeline.blend import CellGrid, composite, correct_cells, smooth_cells


def reference_sums(values: np.ndarray, grid: CellGrid) -> np.ndarray:
    """Sum of every cell by slicing, one cell at a time (float64)."""
    ny, nx = grid.shape
    out = np.zeros((ny, nx, values.shape[2]))
    for i in range(ny):
        for j in range(nx):
            rows = slice(max(0, grid.origin[1] + i * grid.block), grid.origin[1] + (i + 1) * grid.block)
            cols = slice(max(0, grid.origin[0] + j * grid.block), grid.origin[0] + (j + 1) * grid.block)
            out[i, j] = values[rows, cols].astype(np.float64).sum(axis=(0, 1))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.uint16])
@pytest.mark.parametrize("geometry", [(97, 83, 10, (-3, -7)), (64, 64, 16, (0, 0)), (45, 130, 9, (-8, 0))])
def test_cell_sums_equal_a_per_cell_reference(geometry, dtype) -> None:
    h, w, block, origin = geometry
    grid = CellGrid(h, w, block, origin)
    rng = np.random.default_rng(block)
    values = rng.random((h, w, 3))
    if np.issubdtype(dtype, np.integer):
        values = values * np.iinfo(dtype).max
    values = values.astype(dtype)
    np.testing.assert_allclose(grid.sums(values), reference_sums(values, grid), rtol=1e-6)
    np.testing.assert_allclose(grid.means(values), reference_sums(values, grid) / reference_sums(np.ones((h, w, 1)), grid),
                               rtol=1e-6)


def test_a_corrected_face_repixelates_to_the_mosaic() -> None:
    """A face with other colours, feathered in with a partial weight: after the correction every cell of the
    composite averages to the mosaic's colour (within the correction's tolerance), with partial edge cells."""
    h, w, block, origin = 150, 133, 12, (-5, -2)
    grid = CellGrid(h, w, block, origin)
    rng = np.random.default_rng(0)
    ny, nx = grid.shape
    base = grid.spread(rng.uniform(0.2, 0.8, (ny, nx, 3))).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    face = np.stack([0.5 + 0.3 * np.sin(7 * xx + 3 * yy + p) for p in (0.0, 1.0, 2.0)], axis=-1).astype(np.float32)
    weight = np.clip(np.minimum(xx, yy) * 8, 0, 1).astype(np.float32)  # zero along two edges, ramps inward
    under = smooth_cells(base, grid)
    fixed = correct_cells(face, base, under, weight, grid)
    out = composite(base, under, fixed, weight)
    assert np.abs(grid.means(out) - grid.means(base)).max() < 0.5 / 255
    assert np.abs(grid.means(composite(base, under, face, weight)) - grid.means(base)).max() > 10 / 255
    assert np.array_equal(out[weight == 0], base[weight == 0])
