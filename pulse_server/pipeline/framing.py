"""Grid → generator frame and back.

The solver wants a square low-res face whose side s divides the generator resolution R. A mosaic gives
one sample per cell on an nx × ny grid. `center_frame` places that grid in a square "framed grid" of
n cells (reflection padding to make it square, plus a margin), picks s (a divisor of R close to n) and
records everything needed to undo it. `Frame.to_lowres` builds the solver input, `Frame.from_generator`
crops/resamples a generated R×R face back to the mosaic's pixel rectangle, exactly inverting the framing.

The framing function is a seam: landmark alignment can later replace `center_frame` with any function of
the same signature (`FrameFn`) that returns a `Frame`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image

from ..errors import PipelineError


@dataclass(frozen=True)
class FrameHints:
    """What a framing function may use besides the samples: which sides of the mosaic touch the region's border
    (the face continues beyond it there) and the margin wanted around the face, as a fraction of the grid side."""

    touches: tuple[bool, bool, bool, bool] = (False, False, False, False)  # left, top, right, bottom
    margin: float = 0.1
    # fractions of the outermost cells that lie outside the mosaic (partial cells cut by its edge)
    trim: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # left, top, right, bottom


@dataclass(frozen=True)
class Frame:
    """The mosaic grid (nx × ny cells) sits at cell offset `pad` inside a square framed grid of `side` cells;
    the framed grid is resampled to `lowres` × `lowres` solver samples; the generator renders `resolution`²."""

    grid: tuple[int, int]  # (nx, ny)
    side: int
    pad: tuple[int, int]  # (left, top), cells
    lowres: int
    resolution: int
    trim: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # see FrameHints.trim

    @property
    def factor(self) -> int:
        return self.resolution // self.lowres

    def to_lowres(self, samples: np.ndarray) -> np.ndarray:
        """(ny, nx, 3) cell colours -> (lowres, lowres, 3) float32 solver input (reflection padded, resampled)."""
        nx, ny = self.grid
        if samples.shape[:2] != (ny, nx):
            raise ValueError(f"samples {samples.shape[:2]} do not match the frame's grid {(ny, nx)}")
        left, top = self.pad
        right, bottom = self.side - nx - left, self.side - ny - top
        framed = np.pad(samples.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="symmetric")
        return resample(framed, self.lowres, self.lowres)

    def mosaic_box(self) -> tuple[float, float, float, float]:
        """The mosaic's pixels in generator coordinates: (x0, y0, x1, y1), fractional (partial cells trimmed)."""
        k = self.resolution / self.side
        nx, ny = self.grid
        left, top = self.pad
        tl, tt, tr, tb = self.trim
        return ((left + tl) * k, (top + tt) * k, (left + nx - tr) * k, (top + ny - tb) * k)

    def from_generator(self, image: np.ndarray, width: int, height: int) -> np.ndarray:
        """(R, R, 3) generated face -> (height, width, 3): the part over the mosaic, resampled to its pixels."""
        return resample(image, width, height, box=self.mosaic_box())


FrameFn = Callable[[np.ndarray, int, FrameHints], Frame]


def resample(img: np.ndarray, width: int, height: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Float (h, w, C) -> (height, width, C) per channel with PIL: area (BOX) when shrinking, bicubic otherwise.

    `box` crops in source pixel coordinates (fractional allowed) before scaling, with no rounding.
    """
    h, w = img.shape[:2]
    bw, bh = (box[2] - box[0], box[3] - box[1]) if box else (w, h)
    if box is None and (w, h) == (width, height):
        return img.astype(np.float32, copy=True)
    shrink = width <= bw and height <= bh
    method = Image.Resampling.BOX if shrink else Image.Resampling.BICUBIC
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32)).resize(
            (width, height), method, box=box))
        for c in range(img.shape[2])
    ]
    return np.stack(chans, axis=2).astype(np.float32)


def lowres_sides(resolution: int) -> list[int]:
    """Solver input sides that divide the resolution, with a factor of at least 2 (ascending)."""
    return [d for d in range(2, resolution // 2 + 1) if resolution % d == 0]


def center_frame(samples: np.ndarray, resolution: int, hints: FrameHints) -> Frame:
    """The default framing: square + margin by reflection, the face centred (or pushed to the image border).

    The solver side s is the divisor of R nearest to the framed side n (in ratio). If s > n the frame grows
    by more reflected margin (no resampling: every solver sample is one mosaic cell); if s < n the framed
    grid is area-averaged down (block consistency restores the cell colours afterwards).
    """
    ny, nx = samples.shape[:2]
    sides = lowres_sides(resolution)
    if not sides:
        raise PipelineError(f"generator resolution {resolution} has no usable low-res size", code="BAD_MODEL")
    n = max(nx, ny)
    n += 2 * int(round(hints.margin * n))
    s = min(sides, key=lambda d: (abs(np.log(d / n)), -d))
    side = max(n, s)
    left = _place(side - nx, hints.touches[0], hints.touches[2])
    top = _place(side - ny, hints.touches[1], hints.touches[3])
    return Frame(grid=(nx, ny), side=side, pad=(left, top), lowres=s, resolution=resolution, trim=hints.trim)


def _place(extra: int, touch_low: bool, touch_high: bool) -> int:
    """Cells of padding before the grid: all of it on the side where the face leaves the image, else centred."""
    if touch_low and not touch_high:
        return extra
    if touch_high and not touch_low:
        return 0
    return extra // 2
