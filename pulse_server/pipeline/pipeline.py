"""`depixelate`: an editor region (+ selection mask) in, K finished patches of the same shape and format out.

    region ──formats.to_working──▶ float RGB ──mosaic.detect_grid──▶ MosaicInfo
           ──cell means──▶ samples ──framing──▶ solver input (s × s) ──solver.solve──▶ K faces (R × R)
           ──Frame.from_generator──▶ rect-sized faces ──blend (colour, feather, cells)──▶ formats.from_working
Pixels with mask 0 and pixels outside the mosaic rectangle come back bit-identical; alpha is never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import PipelineError
from . import blend
from .formats import PixelFormat, check_region, from_working, to_working
from .framing import Frame, FrameFn, FrameHints, center_frame
from .mosaic import MAX_BLOCK, MosaicInfo, detect_grid, no_mosaic

MAX_SIDE = 4096  # pixels per region side: a face selection; bigger is a mistake (or a job for another tool)
MIN_SIDE = 4  # a region smaller than this holds no face
# How much of the generator frame is not face, per side, as a fraction of the mosaic's side. FFHQ-aligned
# StyleGAN2 faces fill about 60 % of the frame; the CelebA-crop DCGAN's fill nearly all of it.
FAMILY_MARGIN = {"stylegan2": 0.15, "dcgan": 0.0}


@dataclass
class DepixParams:
    candidates: int = 3
    steps: int = 100
    seed: int | None = None
    block: int | None = None  # None / 0: detect
    eps: float = 2e-3
    precision: str = "default"
    # Beyond the contract:
    margin: float | None = None  # face margin in the generator frame, fraction of the grid side; None: by family
    feather: float | None = None  # feather width in pixels; None = a third of a block (at least 1 px)
    preview_every: int = 0  # solver steps between progress previews (the generator frame); 0 = none


@dataclass
class DepixResult:
    patches: list[np.ndarray]  # same shape & dtype as the region, best first
    candidates: list  # list[solver.CandidateResult], same order
    mosaic: MosaicInfo
    model: str
    frame: Frame | None = field(default=None, repr=False)


def analyze_mosaic(region: np.ndarray, mask: np.ndarray | None = None, block: int | None = None) -> MosaicInfo:
    """Mosaic analysis of an editor region in any supported format (see `depixelate` for the arguments)."""
    return _prepare(region, mask, block)[3]


def _prepare(region: np.ndarray, mask: np.ndarray | None, block: int | None
             ) -> tuple[PixelFormat, np.ndarray | None, np.ndarray, MosaicInfo]:
    """Checks shared by analysis and depixelation -> (format, mask, working RGB, mosaic analysis)."""
    fmt = check_region(region)
    _check_size(region)
    mask = _check_mask(mask, region.shape[:2])
    rgb, _alpha = to_working(region, fmt)
    return fmt, mask, rgb, _analysis(rgb, block)


def _analysis(rgb: np.ndarray, block: int | None) -> MosaicInfo:
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
        return detect_grid(rgb, int(block))
    return detect_grid(rgb, None)


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


def depixelate(prior, region: np.ndarray, mask: np.ndarray | None, params: DepixParams | None = None,
               progress: Callable | None = None, cancel: Callable[[], bool] | None = None, *,
               model: str | None = None, framer: FrameFn = center_frame) -> DepixResult:
    """K candidate patches for an editor region; see the module doc. Raises PipelineError for bad regions."""
    from ..solver import SolveConfig, solve  # torch stays out of pure analysis imports

    params = params or DepixParams()
    fmt, mask, rgb, info = _prepare(region, mask, params.block)
    h, w = rgb.shape[:2]
    x, y, rw, rh = info.rect
    b = info.block
    if rw < 2 * b or rh < 2 * b:
        raise PipelineError(f"the mosaic ({rw}×{rh} px in blocks of {b}) has fewer than 2×2 blocks", code="BAD_REGION")

    base = rgb[y : y + rh, x : x + rw]
    grid = blend.CellGrid.of(info.rect, b, info.phase)
    cells = grid.means(base).astype(np.float32)  # (ny, nx, 3): one sample per block (partial ones too)
    touches = _touches(info.rect, w, h)
    margin = params.margin if params.margin is not None else FAMILY_MARGIN.get(getattr(prior, "family", ""), 0.1)
    frame = framer(cells, prior.resolution, FrameHints(touches=touches, margin=margin, trim=grid.trim))
    lowres = frame.to_lowres(cells)

    config = SolveConfig(candidates=params.candidates, steps=params.steps, eps=params.eps, seed=params.seed,
                         precision=params.precision, preview_every=params.preview_every)
    result = solve(prior, lowres, config, progress=progress, cancel=cancel)

    weight = _weight(info, mask, params, touches)
    patches = [_finish(c.image, frame, base, grid, cells, weight, info, region, fmt) for c in result.candidates]
    name = model or getattr(prior, "name", None) or getattr(prior, "family", "") or type(prior).__name__
    return DepixResult(patches=patches, candidates=list(result.candidates), mosaic=info, model=str(name), frame=frame)


def _weight(info: MosaicInfo, mask: np.ndarray | None, params: DepixParams,
            touches: tuple[bool, bool, bool, bool]) -> np.ndarray:
    """Blend weight over the mosaic rectangle: selection (0..1) × feather ramp at sides inside the region."""
    x, y, rw, rh = info.rect
    feather = params.feather if params.feather is not None else max(1.0, info.block / 3)
    open_sides = tuple(not t for t in touches)
    wgt = blend.feather_ramp(rh, rw, feather, open_sides)  # type: ignore[arg-type]
    if mask is not None:
        wgt = wgt * (mask[y : y + rh, x : x + rw].astype(np.float32) / 255.0)
    return wgt


def _finish(face_r: np.ndarray, frame: Frame, base: np.ndarray, grid: "blend.CellGrid", cells: np.ndarray,
            weight: np.ndarray, info: MosaicInfo, region: np.ndarray, fmt: PixelFormat) -> np.ndarray:
    """One generated face (R, R, 3) -> a patch of the region's shape and format."""
    x, y, rw, rh = info.rect
    face = frame.from_generator(face_r, rw, rh)
    face = blend.match_colour(face, cells, grid)
    if info.block > 1:  # one sample per pixel (no mosaic) has nothing to keep consistent: it would return the input
        face = blend.enforce_cells(face, base, weight, grid)
    out_rgb = blend.composite(base, face, weight)

    patch = region.copy()
    colour = from_working(out_rgb, fmt)  # (rh, rw, 1|3) in the editor's dtype
    sub = patch[y : y + rh, x : x + rw]
    changed = weight > 0  # mask 0 (or feather 0) pixels keep their exact original bits
    sub[..., : colour.shape[2]][changed] = colour[changed]
    return patch
