"""Putting a generated face back: colour/tone match, feathered composite, block consistency.

All functions work on float32 RGB in [0, 1] over the mosaic rectangle (whole cells). The composite is
    out = input + a * (face - input)        a = selection weight × feather ramp, in [0, 1]
and the face is shifted per cell so that every cell of `out` averages to the input cell's colour
(re-pixelating the result gives back the mosaic; the photo's white balance cannot drift).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def cell_view(img: np.ndarray, block: int) -> np.ndarray:
    """(H, W, ...) with H, W multiples of block -> (H/b, b, W/b, b, ...) view."""
    h, w = img.shape[:2]
    return img.reshape(h // block, block, w // block, block, *img.shape[2:])


def cell_means(img: np.ndarray, block: int) -> np.ndarray:
    """(H, W, C) -> (H/b, W/b, C) float64 cell means."""
    return cell_view(img.astype(np.float64), block).mean(axis=(1, 3))


def match_colour(face: np.ndarray, target_cells: np.ndarray, block: int) -> np.ndarray:
    """Per-channel gain and offset that make the face's cell means fit the target cell colours (least squares).

    This keeps the photo's white balance and tone: a generator with a colour cast or a different contrast
    is mapped onto the input's statistics before the per-cell correction adds only small offsets.
    """
    fc = cell_means(face, block).reshape(-1, 3)
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


def enforce_cells(face: np.ndarray, base: np.ndarray, weight: np.ndarray, block: int, iterations: int = 4,
                  smooth_iterations: int = 10) -> np.ndarray:
    """Shift the face per cell so that every cell of base + weight·(face − base) has base's cell mean.

    First a few rounds of smooth back-projection (the per-cell error, interpolated bilinearly over the pixels,
    is subtracted: no visible steps at cell borders), then exact constant-per-cell steps for what is left.
    Cells with no weight are left alone. Clipping to [0, 1] can leave a residual after one pass (a bright
    cell whose face pixels saturate); the loop spreads it over the pixels that still have room.
    """
    face = _smooth_backproject(face, base, weight, block, smooth_iterations)
    w = cell_view(np.broadcast_to(weight[..., None], face.shape).astype(np.float64), block)
    f = cell_view(face.astype(np.float64), block).copy()
    b = cell_view(base.astype(np.float64), block)
    for _ in range(iterations):
        resid = (w * (f - b)).sum(axis=(1, 3), keepdims=True)  # Σ w·(f − b) per cell and channel
        if np.abs(resid).max() < 1e-7:
            break
        # adding c to the pixels M of a cell changes the sum by c·Σ_M w; M = pixels that can still move that way
        movable = np.where(resid < 0, f < 1.0, f > 0.0) & (w > 0)
        wm = (w * movable).sum(axis=(1, 3), keepdims=True)
        c = np.where(wm > 1e-12, -resid / np.maximum(wm, 1e-12), 0.0)
        f = np.clip(f + c * movable, 0.0, 1.0)
    return f.reshape(face.shape).astype(np.float32)


def _smooth_backproject(face: np.ndarray, base: np.ndarray, weight: np.ndarray, block: int, rounds: int) -> np.ndarray:
    h, w = face.shape[:2]
    ny, nx = h // block, w // block
    if rounds <= 0 or ny < 2 or nx < 2:
        return face
    wgt = weight[..., None].astype(np.float64)
    wsum = cell_view(wgt, block).sum(axis=(1, 3))  # (ny, nx, 1)
    f = face.astype(np.float64)
    b = base.astype(np.float64)
    for _ in range(rounds):
        resid = cell_view(wgt * (f - b), block).sum(axis=(1, 3)) / np.maximum(wsum, 1e-9)  # weighted mean error
        resid = np.where(wsum > 1e-9, resid, 0.0)
        corr = np.stack([np.asarray(Image.fromarray(resid[..., c].astype(np.float32)).resize(
            (w, h), Image.Resampling.BILINEAR)) for c in range(3)], axis=2)
        f = np.clip(f - corr, 0.0, 1.0)
    return f.astype(np.float32)


def composite(base: np.ndarray, face: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """base + weight·(face − base), float32."""
    return (base + weight[..., None] * (face - base)).astype(np.float32)
