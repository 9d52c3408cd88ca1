"""What the solver sees of a mosaic: the observed cell means and the grid's geometry in photo pixels.

`prepare` builds it from the editor region; the solver's forward model (solver/mosaic_op.py) renders a
face, places it over the mosaic rectangle and averages it over exactly these cells. Numpy only: the
pipeline stays importable without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Observation:
    """The mosaic rectangle (`width` × `height` photo pixels) cut by grid lines every `block` px from `origin`.

    `origin` is the first grid line relative to the rectangle (-block < origin <= 0), so the outermost
    rows/columns may be partial cells; each cell's mean is taken over its pixels inside the rectangle only.
    `weight` says how much each cell counts in the data term: the mean of the selection mask over the cell
    (0 = the user left it out). `touches` (left, top, right, bottom): sides of the rectangle on the region's
    border, where the face may continue beyond what the editor sent.
    """

    cells: np.ndarray  # (ny, nx, 3) float32 in [0, 1]: the observed cell means
    weight: np.ndarray  # (ny, nx) float32 in [0, 1]
    width: int
    height: int
    block: int
    origin: tuple[int, int] = (0, 0)  # (x, y)
    touches: tuple[bool, bool, bool, bool] = (False, False, False, False)

    @property
    def grid(self) -> tuple[int, int]:
        """(ny, nx) cells."""
        return self.cells.shape[0], self.cells.shape[1]

    def cell_edges(self, axis: int) -> np.ndarray:
        """Cell boundaries along x (axis 1) or y (axis 0) in rectangle pixels, clipped to it: (n + 1,) float."""
        n = self.grid[axis]
        o = self.origin[1 - axis]  # origin is (x, y); axis 1 = x
        size = self.width if axis == 1 else self.height
        return np.clip(o + self.block * np.arange(n + 1, dtype=np.float64), 0, size)
