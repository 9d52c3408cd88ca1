"""Editor region in, finished patches out: the two ends of a depixelate job, around the solver.

    prepare:  region ──formats.to_working──▶ float RGB ──mosaic.detect_grid──▶ MosaicInfo
                     ──cell means, grid geometry, mask weights──▶ Observation (what the solver fits)
    (runner:  solver.solve_mosaic(prior, observation) ──▶ K faces, each with its placement θ and colour fit)
    finish:   face ──placed by θ over the mosaic's pixels──▶ ──smooth correction to the cell means──▶
              ──feathered composite──▶ formats.from_working ──▶ a patch of the region's shape and format
Pixels with mask 0 and pixels outside the mosaic rectangle come back bit-identical; alpha is never touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from protocol.job import MAX_BLOCK, MAX_REGION_SIDE, METHODS, PARAMS

from ..errors import PipelineError
from . import blend
from .formats import PixelFormat, check_region, from_working, to_working
from .mosaic import MosaicInfo, detect_grid, no_mosaic
from .observation import Observation

if TYPE_CHECKING:  # torch stays out of pure analysis imports
    from ..solver.mosaic_search import MosaicSolveResult

MAX_SIDE = MAX_REGION_SIDE  # pixels per region side (the job contract's limit, checked again here)
MIN_SIDE = 4  # a region smaller than this holds no face
# A detection below this confidence is refused like no detection at all (unless forced): the lowest true mosaic
# in tests/unit/test_mosaic.py's sweeps (207 of them: real photos, clean and JPEG q75, blocks 4-32 px) scores 0.53,
# and a detection can score as low as 0.3 (evidence just over the bar, 60 % of its cells flat).
MIN_CONFIDENCE = 0.5


@dataclass
class DepixParams:
    # The job's own settings: defaults from the job contract (protocol/job.py); seed None = a random one.
    candidates: int = PARAMS["candidates"].default
    steps: int = PARAMS["steps"].default
    seed: int | None = None
    block: int | None = None  # None / 0: detect
    eps: float = PARAMS["eps"].default
    precision: str = PARAMS["precision"].default
    method: str = PARAMS["method"].default  # "ilo" (latent + placement, then features) or "pulse" (no features)
    force: bool = PARAMS["force"].default  # paint a face even where no mosaic was found ("depixelate anyway")
    # Beyond the contract:
    margin: float | None = None  # face margin in the generator frame at the search's start; None: by family
    feather: float | None = None  # feather width in pixels; None = a third of a block (at least 1 px)
    preview_every: int = 0  # solver steps between progress previews (the generator frame); 0 = none


@dataclass
class Prepared:
    """Everything `finish` needs from `prepare`, and the observation the solver fits."""

    region: np.ndarray
    fmt: PixelFormat
    rgb: np.ndarray  # (H, W, 3) float32 working copy of the region
    mosaic: MosaicInfo
    grid: blend.CellGrid
    observation: Observation
    weight: np.ndarray  # (rh, rw) blend weight over the mosaic rectangle: selection × feather
    under: np.ndarray  # (rh, rw, 3) what the faces are feathered into: the mosaic without its grid


@dataclass
class DepixResult:
    patches: list[np.ndarray]  # same shape & dtype as the region, best first
    candidates: list  # list[solver.MosaicCandidate], same order
    mosaic: MosaicInfo
    model: str
    method: str = METHODS[0]
    stage: int | None = field(default=None)
    search_seconds: float = 0.0  # the solver's share of the job (estimate.py learns from it)
    steps_run: int | None = None  # solver steps run, fewer than the budget after an early stop


def analyze_mosaic(region: np.ndarray, mask: np.ndarray | None = None, block: int | None = None) -> MosaicInfo:
    """Mosaic analysis of an editor region in any supported format (see `prepare` for the arguments)."""
    return _analysis(_checked(region, mask)[2], block)


def _checked(region: np.ndarray, mask: np.ndarray | None) -> tuple[PixelFormat, np.ndarray | None, np.ndarray]:
    """The checks every entry point makes -> (format, mask, working RGB)."""
    fmt = check_region(region)
    _check_size(region)
    mask = _check_mask(mask, region.shape[:2])
    rgb, _alpha = to_working(region, fmt)
    return fmt, mask, rgb


def prepare(region: np.ndarray, mask: np.ndarray | None, params: DepixParams,
            cancel: Callable[[], bool] | None = None) -> Prepared:
    """Check the region, find its mosaic and describe it for the solver. Raises PipelineError for bad input,
    Cancelled when `cancel()` turns true during the analysis (it can take seconds on a large region)."""
    fmt, mask, rgb = _checked(region, mask)
    info = _analysis(rgb, params.block, cancel)
    if not params.force:
        require_mosaic(info, params.block)
    h, w = rgb.shape[:2]
    x, y, rw, rh = info.rect
    b = info.block
    if rw < 2 * b or rh < 2 * b:
        raise PipelineError(f"the mosaic ({rw}×{rh} px in blocks of {b}) has fewer than 2×2 blocks", code="BAD_REGION")
    grid = blend.CellGrid.of(info.rect, b, info.phase)
    base = rgb[y : y + rh, x : x + rw]
    sel = np.ones((rh, rw), np.float32) if mask is None else mask[y : y + rh, x : x + rw].astype(np.float32) / 255.0
    touches = _touches(info.rect, w, h)
    obs = Observation(cells=grid.means(base).astype(np.float32), weight=grid.means(sel[..., None])[..., 0].astype(np.float32),
                      width=rw, height=rh, block=b, origin=grid.origin, touches=touches)
    if not obs.weight.any():
        raise PipelineError("the selection leaves out every cell of the mosaic", code="BAD_REGION")
    # one sample per pixel (no mosaic) has no grid to hide
    under = blend.smooth_cells(base, grid) if b > 1 else base
    return Prepared(region, fmt, rgb, info, grid, obs, _weight(info, sel, params, touches), under)


def finish(prep: Prepared, solved: MosaicSolveResult) -> list[np.ndarray]:
    """Each candidate placed by its θ and colour fit, corrected to the cell means, blended: patches, best first."""
    import torch

    op = solved.operator
    images = torch.stack([torch.from_numpy(c.image).permute(2, 0, 1) for c in solved.candidates]).to(op.device)
    theta = torch.tensor([c.theta for c in solved.candidates], dtype=torch.float32, device=op.device)
    placed = op.place(images, theta).permute(0, 2, 3, 1).cpu().numpy()  # (K, rh, rw, 3)
    return [_patch(prep, _coloured(face, c.gain, c.offset)) for face, c in zip(placed, solved.candidates)]


def _coloured(face: np.ndarray, gain: tuple[float, ...], offset: tuple[float, ...]) -> np.ndarray:
    return np.clip(face * np.asarray(gain, np.float32) + np.asarray(offset, np.float32), 0.0, 1.0).astype(np.float32)


def _analysis(rgb: np.ndarray, block: int | None, cancel: Callable[[], bool] | None = None) -> MosaicInfo:
    if block is not None and block != 0:
        h, w = rgb.shape[:2]
        if not isinstance(block, (int, np.integer)) or block < 1:
            raise PipelineError(f"block size must be a positive integer or 0/None for auto, got {block!r}", code="BAD_PARAMS")
        if block > MAX_BLOCK or block * 2 > min(w, h):
            raise PipelineError(
                f"block size {block} does not fit a {w}×{h} region twice (max {min(MAX_BLOCK, min(w, h) // 2)})",
                code="BAD_REGION")
        if block == 1:
            return no_mosaic(w, h)
        return detect_grid(rgb, int(block), cancel=cancel)
    return detect_grid(rgb, None, cancel=cancel)


def require_mosaic(info: MosaicInfo, block: int | None = None) -> None:
    """PipelineError(NO_MOSAIC) unless the analysis found a mosaic it is confident of. Without one the solver
    would paint an imagined face over whatever the selection holds, a sharp real face included."""
    if info.detected and info.confidence >= MIN_CONFIDENCE:
        return
    if info.detected:
        why = (f"the best grid, {info.block}-px blocks, has confidence {info.confidence:.2f}, "
               f"under {MIN_CONFIDENCE:.2f}")
    elif block == 1:
        why = "block size 1 is one sample per pixel: no mosaic"
    elif block:
        why = f"no grid of {block}-px blocks lines up in it: let the block size be detected"
    else:
        why = "no grid of flat blocks in it: it looks like an unpixelated picture"
    raise PipelineError(f"no mosaic found in the selection ({why}); select the pixelated area, or pass --force / "
                        f"choose 'depixelate anyway' to paint a face over it", code="NO_MOSAIC")


def _check_size(region: np.ndarray) -> None:
    h, w = region.shape[:2]
    if h == 0 or w == 0:
        raise PipelineError("the selection is empty: select the pixelated face first", code="BAD_REGION")
    if h < MIN_SIDE or w < MIN_SIDE:
        raise PipelineError(f"the selection is {w}×{h} pixels: too small to hold a face (at least {MIN_SIDE}×{MIN_SIDE})",
                            code="BAD_REGION")
    if h > MAX_SIDE or w > MAX_SIDE:
        raise PipelineError(f"the selection is {w}×{h} pixels: larger than the limit of {MAX_SIDE} per side; "
                            f"select just the face", code="TOO_LARGE")


def _check_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] == 1:
        mask = mask[..., 0]
    if mask.shape != shape:
        raise PipelineError(f"selection mask is {mask.shape}, the region is {shape}", code="BAD_MASK")
    if mask.dtype != np.uint8:
        raise PipelineError(f"selection mask must be uint8 0..255, got {mask.dtype}", code="BAD_MASK")
    if not mask.any():
        raise PipelineError("the selection mask is empty: nothing is selected", code="BAD_REGION")
    return mask


def _touches(rect: tuple[int, int, int, int], w: int, h: int) -> tuple[bool, bool, bool, bool]:
    x, y, rw, rh = rect
    return (x == 0, y == 0, x + rw >= w, y + rh >= h)


def _weight(info: MosaicInfo, sel: np.ndarray, params: DepixParams,
            touches: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Blend weight over the mosaic rectangle: selection (0..1) × feather ramp at sides inside the region."""
    x, y, rw, rh = info.rect
    feather = params.feather if params.feather is not None else max(1.0, info.block / 3)
    open_sides = tuple(not t for t in touches)
    return blend.feather_ramp(rh, rw, feather, open_sides) * sel  # type: ignore[arg-type]


def _patch(prep: Prepared, face: np.ndarray) -> np.ndarray:
    """A placed, colour-fitted face (rh, rw, 3) -> a patch of the region's shape and format."""
    x, y, rw, rh = prep.mosaic.rect
    base = prep.rgb[y : y + rh, x : x + rw]
    if prep.mosaic.block > 1:  # one sample per pixel (no mosaic) has nothing to keep consistent
        face = blend.correct_cells(face, base, prep.under, prep.weight, prep.grid)
    out_rgb = blend.composite(base, prep.under, face, prep.weight)
    patch = prep.region.copy()
    colour = from_working(out_rgb, prep.fmt)  # (rh, rw, 1|3) in the editor's dtype
    sub = patch[y : y + rh, x : x + rw]
    changed = prep.weight > 0  # mask 0 (or feather 0) pixels keep their exact original bits
    sub[..., : colour.shape[2]][changed] = colour[changed]
    return patch
