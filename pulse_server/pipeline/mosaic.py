"""Mosaic analysis: where in the region is the pixelated area, how big are its blocks, where is its grid.

A mosaic is a grid of b×b cells, each filled with one colour (possibly softened by JPEG). Two signals find
it, both from the absolute neighbour differences |I(x+1) - I(x)| (max over channels):
  * the column (row) profile of those differences is large on the grid lines x ≡ phase (mod b) and
    near zero between them: for each b we score every phase at once with one bincount over x mod b,
    as  mean(profile on grid lines) / mean(profile elsewhere).  Divisors of the true b lose (half their
    "lines" are flat), multiples lose (true lines land in their "elsewhere");
  * inside each cell of that grid the image is flat, while a photograph is not: cells that are flat
    relative to their borders mark the mosaic's rectangle inside a larger box.
Grid and rectangle are refined alternately (the profile is recomputed on the rectangle only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from protocol.job import MAX_BLOCK

from ..errors import Cancelled

MIN_RECT = 12  # pixels per side: a smaller "mosaic" is texture, not a face
MIN_CELLS = 4  # per axis: fewer cells hold too little of a face (and a photo can fake them)
# JPEG erodes the outermost cells of a small mosaic, and partial cells at its edges may not count: the
# search works on 3 whole cells per axis, a detection needs 3 per axis and 12 in all
_WORK_CELLS = MIN_CELLS - 1
_FLOOR = 0.5 / 255  # below this a difference is "zero" (rounding noise of 8-bit mosaics)
_DETECT_SCORE = 1.4  # evidence (line score on the rectangle + half-cell shift score) a mosaic must reach

Check = Callable[[], None]  # raises Cancelled once the job is cancelled; called between steps of the analysis


def _never() -> None:
    """The Check of an analysis nobody can cancel."""


@dataclass(frozen=True)
class MosaicInfo:
    """Result of the analysis, in region pixel coordinates.

    block: cell side in pixels (1 = no mosaic: one sample per pixel); phase: (x, y) of the first grid line,
    0 <= phase < block; rect: (x, y, w, h) of the pixelated area (its outermost cells may be partial: cut by
    the mosaic's edge where the editor aligned the blocks elsewhere); confidence in [0, 1];
    detected: False when no mosaic was found (or the client forced a block size without one being seen).
    """

    block: int
    phase: tuple[int, int]
    rect: tuple[int, int, int, int]
    confidence: float
    detected: bool

    def as_dict(self) -> dict:
        return {
            "block": self.block,
            "phase": list(self.phase),
            "rect": list(self.rect),
            "confidence": round(float(self.confidence), 4),
            "detected": self.detected,
        }


def neighbour_differences(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dx (H, W-1), dy (H-1, W)): max over channels of |I(x+1)-I(x)| and |I(y+1)-I(y)|, float32."""
    dx = np.abs(np.diff(rgb, axis=1)).mean(axis=2)
    dy = np.abs(np.diff(rgb, axis=0)).mean(axis=2)
    return dx, dy


def _line_scores(profile: np.ndarray, block: int) -> np.ndarray:
    """Per phase 0..block-1: how much a 1-D difference profile peaks on the lines x ≡ phase (mod block).

    profile[i] is the mean difference between pixels i and i+1, i.e. across the line at position i+1.
    The profile is folded modulo `block`; a phase scores log(folded mean there / largest folded mean at the
    other phases, its immediate neighbours excepted). The true grid has one clear peak; a multiple of it has two equal peaks (score ≈ 0); a
    divisor has a peak of half height; a photograph has no peak that stands out.
    """
    pos = np.arange(1, len(profile) + 1)
    res = pos % block
    on_sum = np.bincount(res, weights=profile, minlength=block)
    on_n = np.bincount(res, minlength=block)
    folded = on_sum / np.maximum(on_n, 1)
    # runner-up: the largest folded mean at least `gap` phases away (JPEG smears a block edge over its
    # neighbour lines; a multiple of the true block has its second peak block/2 or more away)
    gap = max(2, block // 5) if block >= 5 else 1
    r = np.arange(block)
    dist = np.abs(r[:, None] - r[None, :])
    dist = np.minimum(dist, block - dist)
    runner_up = np.where(dist >= gap, folded[None, :], 0.0).max(axis=1) if block > 1 else np.zeros(1)
    score = np.log((folded + _FLOOR) / (runner_up + _FLOOR))
    score[on_n < 2] = -np.inf  # fewer than two grid lines cannot show a period
    return score


def _grid_scores(dx: np.ndarray, dy: np.ndarray, blocks: list[int]) -> list[tuple[float, int, int, int, float, float]]:
    """(key, block, phase_x, phase_y, score_x, score_y) for every candidate block size, best key first.

    Both axes must show the grid: the weaker axis decides, the sum breaks ties. A divisor d of a better
    block b wins when it scores almost as well: on the true grid every multiple of it only gains noise,
    while a true grid of b loses log(b/d) when probed at d (half of its "lines" are flat).
    """
    px_profile = dx.mean(axis=0).astype(np.float64)
    py_profile = dy.mean(axis=1).astype(np.float64)
    rows = []
    for b in blocks:
        sx = _line_scores(px_profile, b)
        sy = _line_scores(py_profile, b)
        ix, iy = int(np.argmax(sx)), int(np.argmax(sy))
        key = float(min(sx[ix], sy[iy]) + 0.25 * (sx[ix] + sy[iy]))
        rows.append((key, b, ix, iy, float(sx[ix]), float(sy[iy])))
    rows.sort(key=lambda r: -r[0])
    return rows


def _best_grid(dx: np.ndarray, dy: np.ndarray, blocks: list[int], top: int = 0) -> tuple[int, int, int, float, float]:
    """The top-th best (block, phase_x, phase_y, score_x, score_y) over the candidate block sizes."""
    rows = _grid_scores(dx, dy, blocks)
    r = rows[min(top, len(rows) - 1)]
    return r[1], r[2], r[3], r[4], r[5]


def _cell_flatness(dx: np.ndarray, dy: np.ndarray, block: int, px: int,
                   py: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Per full cell of the grid: inner difference level, border difference level, and cell origins.

    Returns (inner (ny, nx), border (ny, nx), (xs, ys)) with xs/ys the pixel origins of the cell columns/rows.
    """
    h, w = dy.shape[0] + 1, dx.shape[1] + 1
    xs = np.arange(px, w - block + 1, block)
    ys = np.arange(py, h - block + 1, block)
    if len(xs) == 0 or len(ys) == 0:
        return np.zeros((0, 0)), np.zeros((0, 0)), (xs, ys)
    x0, x1 = xs[0], xs[-1] + block
    y0, y1 = ys[0], ys[-1] + block
    ny, nx = len(ys), len(xs)
    # inner: differences between two pixels of the same cell
    cdx = dx[y0:y1, x0 : x1 - 1]  # (ny*b, nx*b-1): diff i is between pixels i and i+1
    cdx = np.concatenate([cdx, np.zeros((cdx.shape[0], 1), cdx.dtype)], axis=1).reshape(ny, block, nx, block)
    cdy = dy[y0 : y1 - 1, x0:x1]
    cdy = np.concatenate([cdy, np.zeros((1, cdy.shape[1]), cdy.dtype)], axis=0).reshape(ny, block, nx, block)
    # the last diff column of each cell crosses the cell's right border; the padded one is zero
    inner_x = cdx[:, :, :, : block - 1].sum(axis=(1, 3))
    inner_y = cdy[:, : block - 1, :, :].sum(axis=(1, 3))
    inner = (inner_x + inner_y) / (2 * block * (block - 1))
    bx = cdx[:, :, :, block - 1].mean(axis=1)  # (ny, nx): right border of each cell (last one: outside/zero)
    by = cdy[:, block - 1, :, :].mean(axis=2)  # (ny, nx): bottom border
    if x1 < w:  # the last column's right border exists in the image
        bx[:, -1] = dx[y0:y1, x1 - 1].reshape(ny, block).mean(axis=1)
    if y1 < h:
        by[-1, :] = dy[y1 - 1, x0:x1].reshape(nx, block).mean(axis=1)
    border = np.zeros((ny, nx))
    border_n = np.zeros((ny, nx))
    border += bx
    border_n += 1
    border[:, 1:] += bx[:, :-1]
    border_n[:, 1:] += 1
    border += by
    border_n += 1
    border[1:, :] += by[:-1, :]
    border_n[1:, :] += 1
    return inner, border / border_n, (xs, ys)


def _longest_run(flags: np.ndarray) -> tuple[int, int]:
    """[start, stop) of the longest run of True values (0, 0 if none)."""
    best, start = (0, 0), None
    for i, f in enumerate(list(flags) + [False]):
        if f and start is None:
            start = i
        elif not f and start is not None:
            if i - start > best[1] - best[0]:
                best = (start, i)
            start = None
    return best


def _grow(band: tuple[int, int, int, int], loose: np.ndarray) -> tuple[int, int, int, int]:
    """Extend the band by whole rows/columns whose cells mostly pass a looser test (JPEG smears the photo
    into the mosaic's outermost cells, which then fail the strict one)."""
    r0, r1, c0, c1 = band
    ny, nx = loose.shape
    grown = True
    while grown:
        grown = False
        if r0 > 0 and loose[r0 - 1, c0:c1].mean() >= 0.5:
            r0, grown = r0 - 1, True
        if r1 < ny and loose[r1, c0:c1].mean() >= 0.5:
            r1, grown = r1 + 1, True
        if c0 > 0 and loose[r0:r1, c0 - 1].mean() >= 0.5:
            c0, grown = c0 - 1, True
        if c1 < nx and loose[r0:r1, c1].mean() >= 0.5:
            c1, grown = c1 + 1, True
    return r0, r1, c0, c1


def _band(cells: np.ndarray) -> tuple[int, int, int, int] | None:
    """The rows/columns of cells that are mostly mosaic: (r0, r1, c0, c1), or None.

    First rows that hold at least half as many mosaic cells as the best row (the mosaic may be narrower
    than half the box), then columns that are mostly mosaic inside those rows, and so on until it settles.
    """
    rows = cells.mean(axis=1)
    if rows.max() <= 0:
        return None
    r0, r1 = _longest_run(rows >= 0.5 * rows.max())
    c0, c1 = 0, cells.shape[1]
    for _ in range(3):
        c0, c1 = _longest_run(cells[r0:r1].mean(axis=0) >= 0.5)
        if c1 <= c0:
            return None
        r0, r1 = _longest_run(cells[:, c0:c1].mean(axis=1) >= 0.5)
        if r1 <= r0:
            return None
    return r0, r1, c0, c1


def _mosaic_cells(inner: np.ndarray, border: np.ndarray, block: int) -> np.ndarray:
    """Cells that look like mosaic: flat inside compared with their borders (or exactly flat).

    JPEG smears a small cell's edges over most of its pixels, so small cells get a looser ratio.
    """
    ratio = 0.3 + 0.3 * float(np.clip((8 - block) / 4, 0.0, 1.0))
    return (inner <= ratio * border + 0.25 * _FLOOR) & ((border > 2 * _FLOOR) | (inner <= 0.25 * _FLOOR))


def _locate(dx: np.ndarray, dy: np.ndarray, block: int, px: int, py: int) -> tuple[tuple[int, int, int, int], float]:
    """Mosaic rectangle (whole cells, region coords) on a given grid, and the fraction of mosaic cells in it."""
    inner, border, (xs, ys) = _cell_flatness(dx, dy, block, px, py)
    if inner.size == 0:
        return (0, 0, 0, 0), 0.0
    cells = _mosaic_cells(inner, border, block)
    band = _band(cells)
    if band is None:
        return (0, 0, 0, 0), 0.0
    # second look: a mosaic's cells are about equally flat, so a cell much busier than the band's typical
    # cell is photograph (a relative test alone lets textured photo cells with strong borders in)
    r0, r1, c0, c1 = band
    typical = float(np.percentile(inner[r0:r1, c0:c1], 75))
    cells &= inner <= 3.0 * typical + 0.5 * _FLOOR
    # and a flat photo area (sky, a wall, JPEG-flattened) next to the mosaic has flat cells with faint
    # borders: keep cells whose borders are a fair share of the band's, or that are exactly flat (clean mosaic)
    edge = float(np.median(border[r0:r1, c0:c1]))
    cells &= (border >= 0.25 * edge) | (inner <= 0.25 * _FLOOR)
    band = _band(cells)
    if band is None:
        return (0, 0, 0, 0), 0.0
    loose = cells | (_mosaic_cells(inner, border, 4) & (inner <= 3.5 * typical + _FLOOR) & (border >= 0.25 * edge))
    r0, r1, c0, c1 = _grow(band, loose)
    frac = float(loose[r0:r1, c0:c1].mean())
    rect = (int(xs[c0]), int(ys[r0]), int((c1 - c0) * block), int((r1 - r0) * block))
    return rect, frac


def _candidate_blocks(w: int, h: int) -> list[int]:
    top = min(MAX_BLOCK, w // MIN_CELLS, h // MIN_CELLS)
    return list(range(2, top + 1))


@dataclass
class _Grid:
    """One grid hypothesis and the evidence for it (internal)."""

    block: int
    px: int
    py: int
    rect: tuple[int, int, int, int] = (0, 0, 0, 0)
    score: float = -np.inf  # line score of the weaker axis, measured on the rectangle
    frac: float = 0.0  # fraction of flat cells in the rectangle
    contrast: float = 0.0  # log(median border difference / median inner difference) in the rectangle
    shift: float = 0.0  # log(residual of cell means on the grid shifted by half a cell / on the grid)
    edge: float = 0.0  # mean difference across the cell borders inside the rectangle (0..1)
    full: tuple[int, int, int, int] | None = None  # the rectangle with its partial edge cells
    complete: float = 0.0  # log(weak grid line's step / step inside cells) over `full`: see _completeness

    @property
    def evidence(self) -> float:
        return self.score + self.shift if self.frac > 0 else -np.inf

    @property
    def rank(self) -> float:
        """Evidence plus a bonus for area: a divisor of the true block can look good on a small patch only."""
        return self.evidence + 0.5 * float(np.log(max(self.rect[2] * self.rect[3], 1))) + _COMPLETE_W * self.complete


def _full(g: _Grid) -> tuple[int, int, int, int]:
    """g's extent with its partial edge cells, which _refine sets on a grid whose rectangle is large enough:
    the steps that read it run only after a grid with one was found."""
    if g.full is None:
        raise RuntimeError(f"the {g.block}-px grid at phase ({g.px}, {g.py}) has no extent")
    return g.full


def _cell_residual(rgb: np.ndarray, block: int, rect: tuple[int, int, int, int]) -> float:
    """Mean |pixel - its cell mean| over a whole-cell rectangle: ~0 on a mosaic's own grid."""
    x, y, w, h = rect
    sub = rgb[y : y + h, x : x + w].reshape(h // block, block, w // block, block, -1)
    return float(np.abs(sub - sub.mean(axis=(1, 3), keepdims=True)).mean())


def _shift_evidence(rgb: np.ndarray, block: int, rect: tuple[int, int, int, int]) -> float:
    """log(residual on the grid shifted by half a cell / residual on the grid), both inside the rectangle.

    On a mosaic the shifted cells straddle four blocks each while the true cells are flat (JPEG: nearly);
    a photograph has about the same residual at every phase, and so has a wrong block size.
    """
    x, y, w, h = rect
    half = block // 2
    if half == 0 or w < 2 * block or h < 2 * block:
        return 0.0
    inner = (x + half, y + half, w - block, h - block)
    own = (x + half - half, y + half - half, w - block, h - block)  # same area size, on the true grid
    return float(np.log((_cell_residual(rgb, block, inner) + _FLOOR) / (_cell_residual(rgb, block, own) + _FLOOR)))


def _refine(dx: np.ndarray, dy: np.ndarray, blocks: list[int], g: _Grid, check: Check = _never) -> _Grid:
    """Alternate: rectangle on the grid, grid re-fitted inside the rectangle (the rest only adds noise)."""
    h, w = dy.shape[0] + 1, dx.shape[1] + 1
    check()
    g.rect, g.frac = _locate(dx, dy, g.block, g.px, g.py)
    for _ in range(3):
        check()
        x, y, rw, rh = g.rect
        if rw < _WORK_CELLS * g.block or rh < _WORK_CELLS * g.block:
            return g
        # one pixel of context on each side: the rectangle's own borders are grid lines too
        x0, y0 = max(0, x - 1), max(0, y - 1)
        x1, y1 = min(w, x + rw + 1), min(h, y + rh + 1)
        sub = [b for b in blocks if b <= min(x1 - x0, y1 - y0) // _WORK_CELLS]
        if not sub:
            return g
        b, qx, qy, sx, sy = _best_grid(dx[y0:y1, x0 : x1 - 1], dy[y0 : y1 - 1, x0:x1], sub)
        nxt = _Grid(b, (qx + x0) % b, (qy + y0) % b)
        nxt.rect, nxt.frac = _locate(dx, dy, nxt.block, nxt.px, nxt.py)
        nxt.score = min(sx, sy)
        if (nxt.block, nxt.px, nxt.py, nxt.rect) == (g.block, g.px, g.py, g.rect):
            g.score = nxt.score
            break
        g = nxt
    if g.rect[2] >= _WORK_CELLS * g.block and g.rect[3] >= _WORK_CELLS * g.block:
        check()
        inner, border, _ = _cell_flatness(dx, dy, g.block, g.px, g.py)
        x, y, rw, rh = g.rect
        cx, cy = (x - g.px) // g.block, (y - g.py) // g.block
        sl = np.s_[cy : cy + rh // g.block, cx : cx + rw // g.block]
        g.contrast = float(np.log((np.median(border[sl]) + _FLOOR) / (np.median(inner[sl]) + _FLOOR)))
        g.edge = float(np.mean(border[sl]))
        # edge cells: shed photo lines of nearly whole cells, take in partial cells; the evidence is then
        # measured on the whole cells inside
        g.full = _extend_partial(dx, dy, g)
        inside = _whole_inside(g.full, g.block, g.px, g.py)
        if min(inside[2], inside[3]) >= _WORK_CELLS * g.block and inside != g.rect:
            g.rect = inside
            g.score = _rect_line_score(dx, dy, g)
    return g


def _prefer_multiple(rgb: np.ndarray, dx: np.ndarray, dy: np.ndarray, g: _Grid, check: Check = _never) -> _Grid:
    """A divisor of the true block looks fine on a rectangle it located well (each true cell is m×m of its
    cells) while the true grid's rectangle may have gone wrong. On g's rectangle the true grid's lines score
    about log(m) higher than g's; a real grid's multiples score lower (every other line of theirs is flat)."""
    prof_x, prof_y, x0, y0 = _rect_profiles(dx, dy, g.rect)
    own = min(_line_scores(prof_x, g.block)[(g.px - x0) % g.block], _line_scores(prof_y, g.block)[(g.py - y0) % g.block])
    best = None
    for m in (2, 3, 4):
        big = m * g.block
        if big > MAX_BLOCK or min(_full(g)[2:]) < (MIN_CELLS - 0.5) * big:
            break
        sx = _line_scores(prof_x, big)
        sy = _line_scores(prof_y, big)
        jx = max(range(m), key=lambda j: sx[(g.px + j * g.block - x0) % big])
        jy = max(range(m), key=lambda j: sy[(g.py + j * g.block - y0) % big])
        score = min(sx[(g.px + jx * g.block - x0) % big], sy[(g.py + jy * g.block - y0) % big])
        if score >= own + 0.5 * np.log(m) and (best is None or score > best[0]):
            best = (score, big, (g.px + jx * g.block) % big, (g.py + jy * g.block) % big)
    if best is None:
        return g
    cand = _add_shift(rgb, _refine(dx, dy, [best[1]], _Grid(best[1], best[2], best[3], score=best[0]), check),
                      check=check)
    return cand if cand.evidence >= _DETECT_SCORE and cand.full is not None else g


def _rect_profiles(dx: np.ndarray, dy: np.ndarray, rect: tuple[int, int, int, int]
                   ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Mean step across each column / row boundary over `rect` with one pixel of context on each side (its
    own borders are grid lines too): (profile x, profile y, x0, y0), profile index i = boundary after x0 + i."""
    h, w = dy.shape[0] + 1, dx.shape[1] + 1
    x, y, rw, rh = rect
    x0, y0 = max(0, x - 1), max(0, y - 1)
    x1, y1 = min(w, x + rw + 1), min(h, y + rh + 1)
    prof_x = dx[y0:y1, x0 : x1 - 1].mean(axis=0).astype(np.float64)
    prof_y = dy[y0 : y1 - 1, x0:x1].mean(axis=1).astype(np.float64)
    return prof_x, prof_y, x0, y0


def _rect_line_score(dx: np.ndarray, dy: np.ndarray, g: _Grid) -> float:
    """Line score of the weaker axis for this grid's own block and phase, on its rectangle (+1 px context)."""
    prof_x, prof_y, x0, y0 = _rect_profiles(dx, dy, g.rect)
    sx = _line_scores(prof_x, g.block)[(g.px - x0) % g.block]
    sy = _line_scores(prof_y, g.block)[(g.py - y0) % g.block]
    return float(min(sx, sy))


def _whole_inside(rect: tuple[int, int, int, int], b: int, px: int, py: int) -> tuple[int, int, int, int]:
    """The largest whole-cell rectangle inside `rect` on the grid (b, px, py)."""
    x, y, w, h = rect
    x0, y0 = x + (px - x) % b, y + (py - y) % b
    x1, y1 = x + w - (x + w - px) % b, y + h - (y + h - py) % b
    return (x0, y0, max(0, x1 - x0), max(0, y1 - y0))


def _add_shift(rgb: np.ndarray, g: _Grid, dx: np.ndarray | None = None, dy: np.ndarray | None = None,
               check: Check = _never) -> _Grid:
    if g.rect[2] >= _WORK_CELLS * g.block and g.rect[3] >= _WORK_CELLS * g.block:
        g.shift = _shift_evidence(rgb, g.block, g.rect)
        check()  # the two residuals over a large rectangle are the analysis' longest step
        if dx is not None and dy is not None and g.full is not None:
            g.complete = _completeness(dx, dy, g)
    return g


_COMPLETE_W = 1.0  # weight of a grid's line completeness in its rank (sweeps: 0.5–2 all help, 1 best)


def _completeness(dx: np.ndarray, dy: np.ndarray, g: _Grid) -> float:
    """Does every grid line inside the mosaic carry a step? log(weak line / inside-cell level), weaker axis.

    A divisor of the true block has every other line flat, a near-miss block size drifts off the true lines
    across the mosaic: both have weak lines. Measured over the whole extent (partial cells included)."""
    x, y, w, h = _full(g)
    out = []
    for prof, ph, o in ((dx[y : y + h, x : x + w - 1].mean(axis=0), g.px, x),
                        (dy[y : y + h - 1, x : x + w].mean(axis=1), g.py, y)):
        pos = np.arange(len(prof)) + o + 1  # prof[i] crosses the line at pixel o+i+1
        on = (pos - ph) % g.block == 0
        if on.sum() < 2 or (~on).sum() < 2:
            return 0.0
        steps = np.sort(prof[on])
        weak = float(np.mean(steps[: max(1, len(steps) // 3)]))
        out.append(np.log((weak + _FLOOR) / (float(np.median(prof[~on])) + _FLOOR)))
    return float(min(out))


def detect_grid(rgb: np.ndarray, block: int | None = None, cancel: Callable[[], bool] | None = None) -> MosaicInfo:
    """Analyse a float RGB region (H, W, 3) in [0, 1]; `block` forces the cell size (phase/rect still found).

    `cancel` is polled between the analysis' steps (each grid hypothesis, each refinement round): when it
    returns True, Cancelled is raised, so a CANCEL or a shutdown lands within one step. Only the part of the
    region around its visible steps is analysed; featureless regions (no step of 1.5 levels of 8 bits: blank,
    flat, smooth gradients) are answered at once.

    Worst case, the largest region the pipeline takes (MAX_SIDE² = 4096²), measured on a loaded 2-core CPU:
    a whole-region fine mosaic (8-px cells, every hypothesis refined over all of it) takes about 66 s, and a
    CANCEL during it lands within 1.6 s; a 4096² photograph (noise) takes 3 s, a blank or near-blank one 1–2 s.
    tests/unit/test_mosaic_bounds.py holds the cancel latency and the featureless cases.
    """

    def check() -> None:
        if cancel is not None and cancel():
            raise Cancelled("cancelled during the mosaic analysis")

    return _analyze(rgb, block, check)[0]


_FEATURELESS = 1.5 / 255  # a region whose largest neighbour difference is smaller has no grid lines to find


_CANDIDATES = 10  # grid hypotheses from the whole region that are refined (JPEG's own 8-grid competes)
_MORE_CANDIDATES = 15  # further ones looked at when none of those is a mosaic (stricter bar, see _analyze)


def _active_box(dx: np.ndarray, dy: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x, y, w, h) around every neighbour difference of _FEATURELESS or more, one MAX_BLOCK of margin on each
    side; None for a featureless region. A mosaic's grid lines are such differences, so the mosaic lies
    inside; the flat rest would only be refined again and again as "perfectly flat cells" for nothing."""
    sx, sy = dx >= _FEATURELESS, dy >= _FEATURELESS
    h, w = dy.shape[0] + 1, dx.shape[1] + 1
    cols, rows = np.zeros(w, bool), np.zeros(h, bool)
    across_x, across_y = sx.any(axis=0), sy.any(axis=1)  # a step involves the pixels on both sides
    cols[:-1] |= across_x
    cols[1:] |= across_x
    cols |= sy.any(axis=0)
    rows[:-1] |= across_y
    rows[1:] |= across_y
    rows |= sx.any(axis=1)
    if not cols.any():
        return None
    xs, ys = np.flatnonzero(cols), np.flatnonzero(rows)
    x0, y0 = max(0, int(xs[0]) - MAX_BLOCK), max(0, int(ys[0]) - MAX_BLOCK)
    x1, y1 = min(w, int(xs[-1]) + 1 + MAX_BLOCK), min(h, int(ys[-1]) + 1 + MAX_BLOCK)
    return x0, y0, x1 - x0, y1 - y0


def _moved(info: MosaicInfo, x0: int, y0: int, w: int, h: int) -> MosaicInfo:
    """An analysis of the crop at (x0, y0) in the coordinates of the whole w×h region."""
    if info.block == 1 and not info.detected:
        return MosaicInfo(1, (0, 0), (0, 0, w, h), info.confidence, False)
    b, (px, py), (x, y, rw, rh) = info.block, info.phase, info.rect
    return MosaicInfo(b, ((px + x0) % b, (py + y0) % b), (x + x0, y + y0, rw, rh), info.confidence, info.detected)


def _featureless_info(w: int, h: int, block: int | None) -> MosaicInfo:
    """What the full analysis concludes on a featureless region (every cell flat, no line scores: evidence 0),
    without its cost: a blank 1024² selection would otherwise refine every hypothesis over the whole area."""
    conf = float(1.0 / (1.0 + np.exp(2.0 * _DETECT_SCORE)))
    if block:
        return MosaicInfo(block, (0, 0), _whole_cells(w, h, block, 0, 0), conf, False)
    return MosaicInfo(1, (0, 0), (0, 0, w, h), 1.0 - conf, False)


def _analyze(rgb: np.ndarray, block: int | None, check: Check = _never) -> tuple[MosaicInfo, _Grid]:
    """detect_grid plus its raw evidence, for calibration."""
    h, w = rgb.shape[:2]
    dx, dy = neighbour_differences(rgb)
    blocks = [block] if block else _candidate_blocks(w, h)
    if not blocks:
        return no_mosaic(w, h), _Grid(1, 0, 0)
    box = _active_box(dx, dy)
    if box is None:
        return _featureless_info(w, h, block), _Grid(block or 1, 0, 0)
    x0, y0, bw, bh = box
    if (bw, bh) != (w, h) and (not block or min(bw, bh) >= 2 * block):
        info, g = _analyze(rgb[y0 : y0 + bh, x0 : x0 + bw], block, check)
        return _moved(info, x0, y0, w, h), g
    check()
    rows = _grid_scores(dx, dy, blocks)
    best: _Grid | None = None
    for row in rows[:_CANDIDATES]:
        # refined twice: keeping its block (only phase and rectangle move), and free to change block inside
        # the rectangle (a small mosaic in a large box); the evidence decides
        for search in ([row[1]], blocks) if not block else ([row[1]],):
            g = _refine(dx, dy, search, _Grid(row[1], row[2], row[3], score=min(row[4], row[5])), check)
            g = _add_shift(rgb, g, dx, dy, check)
            if best is None or g.rank > best.rank:
                best = g
    if best is None:  # _grid_scores scores every candidate block, and there is at least one
        raise RuntimeError("no grid hypothesis to refine")
    if best.evidence < _DETECT_SCORE and not block:
        # nothing convincing among the whole region's top grids: a small mosaic in a busy (JPEG) box can rank
        # lower there; further grids must show stronger evidence and complete lines (photos fake weak grids)
        for row in rows[_CANDIDATES : _CANDIDATES + _MORE_CANDIDATES]:
            g = _add_shift(rgb, _refine(dx, dy, blocks, _Grid(row[1], row[2], row[3], score=min(row[4], row[5])), check),
                           dx, dy, check)
            if g.evidence >= _DETECT_SCORE + 1.0 and g.complete >= 0.3 and g.rank > best.rank:
                best = g
    g = best
    if not block and g.full is not None:
        g = _try_multiples(rgb, dx, dy, blocks, g, check)
        g = _try_phases(rgb, dx, dy, g, check)
        check()
        g = _prefer_multiple(rgb, dx, dy, g, check)
    b, (px, py), rect = g.block, (g.px, g.py), g.rect
    extent = g.full if g.full is not None else rect
    # cells in all, partial edge cells by their area (layer-aligned: 4 cells of a side may show as 3 whole + 2 cut)
    whole = max((rect[2] // b) * (rect[3] // b), (extent[2] * extent[3]) // (b * b)) if b else 0
    ok_rect = (min(rect[2], rect[3]) >= _WORK_CELLS * b and whole >= MIN_CELLS * (MIN_CELLS - 1)
               and min(extent[2], extent[3]) >= MIN_RECT and _stepped_lines(dx, dy, g) >= 0.5)
    margin = g.evidence - _DETECT_SCORE
    conf = float(1.0 / (1.0 + np.exp(-2.0 * margin))) * (g.frac if ok_rect else 0.0)
    detected = bool(ok_rect and margin >= 0 and g.frac >= 0.6)
    if ok_rect and (detected or block) and g.full is not None:
        rect = g.full
    if block:
        if not ok_rect:
            rect = _whole_cells(w, h, block, px, py)
        return MosaicInfo(block, (px, py), rect, conf if detected else min(conf, 0.5), detected), g
    if not detected:
        return MosaicInfo(1, (0, 0), (0, 0, w, h), 1.0 - conf, False), g
    return MosaicInfo(b, (px, py), rect, conf, True), g


def _stepped_lines(dx: np.ndarray, dy: np.ndarray, g: _Grid) -> float:
    """The share of the grid's lines inside its rectangle that show a step, on the axis with fewer.

    A mosaic's cells differ from their neighbours, so nearly every line between two rows or columns of cells
    steps somewhere along its length. Flat cells alone are no evidence: on a patch of one or two big cells any
    finer grid that puts a line on the one real edge has flat cells and a perfect line score."""
    b, (x, y, w, h) = g.block, g.rect
    if b < 2 or w < 2 * b or h < 2 * b:
        return 0.0
    cols = np.arange(x + b, x + w, b) - 1  # dx[:, c] is the difference across the line between c and c + 1
    rows = np.arange(y + b, y + h, b) - 1
    across_x = dx[y : y + h, cols].max(axis=0)
    across_y = dy[rows, x : x + w].max(axis=1)
    inner = np.concatenate([dx[y : y + h, x : x + w - 1].ravel(), dy[y : y + h - 1, x : x + w].ravel()])
    thr = 3.0 * float(np.median(inner)) + 2 * _FLOOR
    return min(float((across_x > thr).mean()), float((across_y > thr).mean()))


def _try_multiples(rgb: np.ndarray, dx: np.ndarray, dy: np.ndarray, blocks: list[int], g: _Grid,
                   check: Check = _never) -> _Grid:
    """The best grid's multiples (every compatible phase), refined with their block kept; the rank decides.

    A mosaic's half-block grid can out-score it on the whole region (its lines include all the true ones)
    and keep the true grid out of the candidates; with the rectangle known, completeness tells them apart."""
    best = g
    for m in (2, 3):
        big = m * g.block
        if big not in blocks:
            break
        for jx in range(m):
            for jy in range(m):
                c = _Grid(big, (g.px + jx * g.block) % big, (g.py + jy * g.block) % big)
                c = _add_shift(rgb, _refine(dx, dy, [big], c, check), dx, dy, check)
                if c.rank > best.rank:
                    best = c
    return best


def _try_phases(rgb: np.ndarray, dx: np.ndarray, dy: np.ndarray, g: _Grid, check: Check = _never, top: int = 3) -> _Grid:
    """The best grid's block at the phases whose lines peak most on its extent (per axis), refined; the rank
    decides. A photo edge next to a small mosaic can pull the whole-region phase off the mosaic's own."""
    x, y, w, h = _full(g)
    px_scores = _line_scores(dx[y : y + h, x : x + w - 1].mean(axis=0).astype(np.float64), g.block)
    py_scores = _line_scores(dy[y : y + h - 1, x : x + w].mean(axis=1).astype(np.float64), g.block)
    best = g
    for qx in np.argsort(-px_scores)[:top]:
        for qy in np.argsort(-py_scores)[:top]:
            c = _Grid(g.block, int(qx + x) % g.block, int(qy + y) % g.block)
            if (c.px, c.py) == (g.px, g.py):
                continue
            c = _add_shift(rgb, _refine(dx, dy, [g.block], c, check), dx, dy, check)
            if c.rank > best.rank:
                best = c
    return best


def _extend_partial(dx: np.ndarray, dy: np.ndarray, g: _Grid) -> tuple[int, int, int, int]:
    """Grow a whole-cell rectangle by the partial cells along its edges (editors align blocks to the layer
    origin, so a selection's mosaic often starts and ends with cells cut short). A strip of k < block
    columns joins when it is flat like the cells: no difference between its columns, none inside its cells."""
    b, (x, y, w, h) = g.block, g.rect
    inner, _, _ = _cell_flatness(dx[y : y + h, x : x + w - 1], dy[y : y + h - 1, x : x + w], b, 0, 0)
    thr = 2.0 * float(np.median(inner)) + _FLOOR if inner.size else _FLOOR
    H, W = dy.shape[0] + 1, dx.shape[1] + 1
    loose = 1.5 * thr  # JPEG rings next to the grid lines; a photo is caught by the steps-on-lines test

    def flat_col(c: int, r0: int, r1: int, pair: int | None) -> bool:
        rows = np.arange(r0, r1 - 1)
        within = ((rows + 1 - g.py) % b) != 0  # dy[r] crosses the line at r+1
        return _steps_on_lines(dy[rows, c], within, loose) and (pair is None or dx[r0:r1, pair].mean() <= loose)

    def flat_row(r: int, c0: int, c1: int, pair: int | None) -> bool:
        cols = np.arange(c0, c1 - 1)
        within = ((cols + 1 - g.px) % b) != 0
        return _steps_on_lines(dx[r, cols], within, loose) and (pair is None or dy[pair, c0:c1].mean() <= loose)

    # an edge cell that is mostly mosaic may still hold photo lines at the rectangle's edge (a partial cell
    # that happened to pass as whole): keep only the flat part next to the grid line
    first_x, last_x = x + ((g.px - x) % b or b), x + w - ((x + w - g.px) % b or b)  # grid lines inside
    first_y, last_y = y + ((g.py - y) % b or b), y + h - ((y + h - g.py) % b or b)
    col = dx[y : y + h, x : x + w - 1].mean(axis=0)  # col[i]: between columns x+i and x+i+1
    row = dy[y : y + h - 1, x : x + w].mean(axis=1)
    shed_l = _shed(col[: first_x - x - 1], thr)
    shed_r = _shed(col[last_x - x : w - 1][::-1], thr)
    shed_t = _shed(row[: first_y - y - 1], thr)
    shed_b = _shed(row[last_y - y : h - 1][::-1], thr)
    x, w = x + shed_l, w - shed_l - shed_r
    y, h = y + shed_t, h - shed_t - shed_b
    left = 0
    while left < b - 1 and x - left - 1 >= 0 and flat_col(x - left - 1, y, y + h, x - left - 1 if left else None):
        left += 1
    right = 0
    while right < b - 1 and x + w + right < W and flat_col(x + w + right, y, y + h, x + w + right - 1 if right else None):
        right += 1
    x0, x1 = x - left, x + w + right
    top = 0
    while top < b - 1 and y - top - 1 >= 0 and flat_row(y - top - 1, x0, x1, y - top - 1 if top else None):
        top += 1
    bottom = 0
    while bottom < b - 1 and y + h + bottom < H and flat_row(y + h + bottom, x0, x1, y + h + bottom - 1 if bottom else None):
        bottom += 1
    return (x0, y - top, x1 - x0, h + top + bottom)


def _shed(pairs: np.ndarray, thr: float) -> int:
    """How many outer lines of an edge cell are photo: `pairs` are the mean differences between its
    successive lines, outermost first. The rest must be flat and clearly flatter than what is shed."""
    best, best_ratio = 0, 0.0
    for k in range(1, len(pairs)):
        shed, kept = float(pairs[:k].mean()), float(pairs[k:].mean())
        if kept <= thr and shed > 5.0 * kept + 4 * _FLOOR:
            ratio = shed / (kept + _FLOOR)
            if ratio > best_ratio:
                best, best_ratio = k, ratio
    return best


def _steps_on_lines(diffs: np.ndarray, within: np.ndarray, thr: float) -> bool:
    """A line of pixels across cells: flat inside the cells, and (unlike a smooth photo) changing on the grid."""
    inside = float(diffs[within].mean()) if within.any() else 0.0
    on = float(diffs[~within].mean()) if (~within).any() else 0.0
    return inside <= thr and on >= 3.0 * inside + _FLOOR


def _whole_cells(w: int, h: int, block: int, px: int, py: int) -> tuple[int, int, int, int]:
    nx, ny = (w - px) // block, (h - py) // block
    return (px, py, nx * block, ny * block)


def no_mosaic(w: int, h: int) -> MosaicInfo:
    """One sample per pixel over the whole region."""
    return MosaicInfo(1, (0, 0), (0, 0, w, h), 1.0, False)


def block_means(img: np.ndarray, block: int, rect: tuple[int, int, int, int],
                origin: tuple[int, int] | None = None) -> np.ndarray:
    """Mean colour of every cell of `rect`: (H, W, C) -> (ny, nx, C) float64.

    Grid lines run every `block` px from `origin` (image coords; default: the rectangle's corner, whole cells);
    cells cut by the rectangle's edge are averaged over their pixels inside it.
    """
    x, y, w, h = rect
    return _rect_grid(block, rect, origin).means(img[y : y + h, x : x + w])


def _rect_grid(block: int, rect: tuple[int, int, int, int], origin: tuple[int, int] | None):
    """The CellGrid of `rect` with grid lines every `block` px from `origin` (default: the rectangle's corner)."""
    from .blend import CellGrid

    ox, oy = origin if origin is not None else rect[:2]
    return CellGrid.of(rect, block, (ox % block, oy % block))


def pixelate(img: np.ndarray, block: int, rect: tuple[int, int, int, int],
             origin: tuple[int, int] | None = None) -> np.ndarray:
    """A copy of `img` with `rect` replaced by its cell means (an editor's Pixelize filter on a selection).

    `origin` as in `block_means`: GIMP/Krita align the blocks to the layer origin, `origin=(0, 0)`, so a
    selection that does not start on a multiple of the block size has partial cells along its edges.
    Integer images get rounded means, like an editor's filter would produce.
    """
    out = img.copy()
    x, y, w, h = rect
    grid = _rect_grid(block, rect, origin)
    cells = grid.spread(grid.means(img[y : y + h, x : x + w]))
    if np.issubdtype(img.dtype, np.integer):
        cells = np.rint(cells)
    out[y : y + h, x : x + w] = cells.reshape(h, w, -1).astype(img.dtype)
    return out
