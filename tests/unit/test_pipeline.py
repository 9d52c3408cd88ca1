"""runner.depixelate() end to end on a tiny real StyleGAN2 checkpoint: the invariants the plug-ins rely on.

For every returned patch:
  * re-pixelating it on the detected grid gives back the input mosaic (mean abs error per channel <= 1 / 255),
  * the grid does not show through: intensity steps across cell edges are not much larger than inside cells,
  * it carries real detail inside the cells (edge energy well above the mosaic's own),
  * pixels outside the selection (mask 0, or outside the mosaic) are bit-identical to the input,
  * shape, dtype and alpha are those of the input.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pulse_server.errors import PipelineError
from pulse_server.pipeline import DepixParams, block_means, pixelate
from pulse_server.runner import depixelate

STEPS = 2  # the invariants hold for any face the solver returns: keep the sweep fast


@pytest.fixture(scope="module")
def prior(tiny_weights):
    from pulse_server.models.loading import load_prior

    p, _ = load_prior(tiny_weights)
    return p


def photo(h: int, w: int, seed: int) -> np.ndarray:
    """Photo-like float RGB in [0, 1]: smooth noise at a few scales."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((h, w, 3), np.float32)
    for s, amp in ((6, 0.4), (20, 0.35), (60, 0.25)):
        small = rng.random((max(2, h // s), max(2, w // s), 3)).astype(np.float32)
        acc += amp * np.stack([np.asarray(Image.fromarray(small[..., c]).resize((w, h), Image.Resampling.BICUBIC))
                               for c in range(3)], axis=2)
    return np.clip(acc, 0, 1)


def encode(rgb: np.ndarray, channels: int, dtype: type, alpha: np.ndarray | None = None) -> np.ndarray:
    """float RGB -> editor pixels (grey via Rec. 709 luma) with an optional alpha channel."""
    colour = rgb if channels in (3, 4) else (rgb @ np.array([0.2126, 0.7152, 0.0722], np.float32))[..., None]
    if channels in (2, 4):
        a = alpha if alpha is not None else np.linspace(0.2, 1.0, rgb.shape[1], dtype=np.float32)[None, :].repeat(rgb.shape[0], 0)
        colour = np.concatenate([colour, a[..., None]], axis=2)
    if dtype == np.float32:
        return colour.astype(np.float32)
    scale = 255 if dtype == np.uint8 else 65535
    return np.rint(colour * scale).astype(dtype)


def to255(a: np.ndarray) -> np.ndarray:
    if a.dtype == np.uint8:
        return a.astype(np.float64)
    if a.dtype == np.uint16:
        return a.astype(np.float64) / 257.0
    return a.astype(np.float64) * 255.0


def inner_energy(img: np.ndarray, block: int, offset: tuple[int, int] = (0, 0)) -> float:
    """Mean |neighbour difference| (0..255) between pixels of the same cell (grid lines at offset mod block):
    0 for a clean mosaic."""
    f = to255(img)
    dx = np.abs(np.diff(f, axis=1))
    dy = np.abs(np.diff(f, axis=0))
    keep_x = ((np.arange(1, f.shape[1]) - offset[0]) % block) != 0
    keep_y = ((np.arange(1, f.shape[0]) - offset[1]) % block) != 0
    return float(0.5 * (dx[:, keep_x].mean() + dy[keep_y].mean()))


def blockiness(img: np.ndarray, block: int, offset: tuple[int, int]) -> float:
    """Mean |neighbour difference| across cell edges ÷ inside cells: ≈ 1 for a photo, large for a mosaic."""
    f = to255(img)
    dx, dy = np.abs(np.diff(f, axis=1)), np.abs(np.diff(f, axis=0))
    on_x = ((np.arange(1, f.shape[1]) - offset[0]) % block) == 0
    on_y = ((np.arange(1, f.shape[0]) - offset[1]) % block) == 0
    edge = np.concatenate([dx[:, on_x].ravel(), dy[on_y].ravel()]).mean()
    inside = np.concatenate([dx[:, ~on_x].ravel(), dy[~on_y].ravel()]).mean()
    return float(edge / max(inside, 1e-9))


def check(region: np.ndarray, mask: np.ndarray | None, res, rect: tuple[int, int, int, int], block: int,
          phase: tuple[int, int]) -> None:
    info = res.mosaic
    assert info.detected and info.block == block and info.phase == phase and info.rect == rect, info
    x, y, w, h = rect
    colour = 1 if region.shape[2] in (1, 2) else 3
    off = ((phase[0] - x) % block, (phase[1] - y) % block)  # grid lines inside the rectangle
    in_cells = block_means(to255(region[..., :colour]), block, rect, origin=phase)
    outside = np.ones(region.shape[:2], bool)
    outside[y : y + h, x : x + w] = False
    if mask is not None:
        outside |= mask == 0
    assert len(res.patches) == len(res.candidates) >= 1
    for patch in res.patches:
        assert patch.shape == region.shape and patch.dtype == region.dtype
        assert np.array_equal(patch[outside], region[outside]), "pixels outside the selection changed"
        if region.shape[2] in (2, 4):
            assert np.array_equal(patch[..., -1], region[..., -1]), "alpha changed"
        sub = patch[y : y + h, x : x + w, :colour]
        out_cells = block_means(to255(patch[..., :colour]), block, rect, origin=phase)
        err = np.abs(out_cells - in_cells).mean(axis=(0, 1))
        assert (err <= 1.0).all(), f"re-pixelated patch differs from the mosaic by {err} per channel"
        detail, flat = inner_energy(sub, block, off), inner_energy(region[y : y + h, x : x + w, :colour], block, off)
        assert detail > 3 * flat + 0.5, f"no detail: inner edge energy {detail:.2f} vs mosaic {flat:.2f}"
        ratio = blockiness(sub, block, off)  # a photo: 0.97-1.06; the mosaic itself: >> 2
        if mask is None:  # unselected pixels keep the mosaic, steps and all
            assert ratio <= 1.3, f"the grid shows through: steps across cell edges / inside cells = {ratio:.2f}"
    errs = [c.downscale_mse for c in res.candidates]
    assert errs == sorted(errs)


CASES = {
    # name: (box h, box w, block, mosaic rect in the box, channels, dtype, mask kind[, grid origin])
    "square-box-is-mosaic": (96, 96, 8, (0, 0, 96, 96), 3, np.uint8, None),
    "nonsquare-larger-box-phase": (150, 190, 13, (21, 17, 130, 104), 3, np.uint8, None),
    "block4": (60, 72, 4, (6, 10, 48, 40), 3, np.uint8, None),
    "block32": (180, 160, 32, (10, 20, 128, 160), 3, np.uint8, None),
    "touch-left-top": (120, 140, 10, (0, 0, 110, 90), 3, np.uint8, None),
    "touch-right-bottom": (120, 140, 10, (40, 30, 100, 90), 3, np.uint8, None),
    "ellipse-mask-rgba": (130, 130, 11, (10, 10, 110, 110), 4, np.uint8, "ellipse"),
    "soft-mask-rgb": (100, 120, 9, (12, 5, 90, 90), 3, np.uint8, "soft"),
    "grey": (100, 100, 12, (2, 2, 96, 96), 1, np.uint8, None),
    "grey-alpha": (100, 110, 7, (5, 8, 91, 84), 2, np.uint8, None),
    "rgb16": (110, 110, 14, (6, 6, 98, 98), 3, np.uint16, None),
    "grey16-mask": (110, 110, 14, (6, 6, 98, 98), 1, np.uint16, "ellipse"),
    "float": (100, 100, 10, (5, 5, 90, 90), 3, np.float32, None),
    "float-rgba": (100, 100, 10, (5, 5, 90, 90), 4, np.float32, "soft"),
    # GIMP/Krita align blocks to the layer origin: the selection's edges cut cells
    "partial-cells": (120, 130, 12, (9, 14, 101, 95), 3, np.uint8, None, (0, 0)),
    "partial-cells-grey16-mask": (120, 130, 10, (13, 7, 97, 103), 1, np.uint16, "soft", (4, 4)),
}


def make_mask(kind: str | None, h: int, w: int) -> np.ndarray | None:
    if kind is None:
        return None
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r = ((xx - w / 2) / (0.48 * w)) ** 2 + ((yy - h / 2) / (0.48 * h)) ** 2
    if kind == "ellipse":
        return np.where(r <= 1.0, 255, 0).astype(np.uint8)
    return np.clip((1.15 - r) * 4 * 255, 0, 255).astype(np.uint8)  # soft edge, 0 in the corners


@pytest.mark.parametrize("name", sorted(CASES))
def test_invariants(prior, name: str) -> None:
    h, w, block, rect, channels, dtype, mask_kind, *origin = CASES[name]
    grid_origin = origin[0] if origin else (rect[0], rect[1])
    seed = sum(map(ord, name))
    base = encode(photo(h, w, seed), channels, dtype)
    region = pixelate(base, block, rect, origin=grid_origin)
    mask = make_mask(mask_kind, h, w)
    res = depixelate(prior, region, mask, DepixParams(candidates=2, steps=STEPS, seed=seed))
    check(region, mask, res, rect, block, (grid_origin[0] % block, grid_origin[1] % block))
    # the two candidates are different faces
    assert not np.array_equal(res.patches[0], res.patches[1])


def test_jpeg_mosaic_and_forced_block(prior) -> None:
    import io

    rgb = photo(140, 140, 5)
    region = pixelate(np.rint(rgb * 255).astype(np.uint8), 12, (10, 14, 120, 120))
    buf = io.BytesIO()
    Image.fromarray(region).save(buf, "JPEG", quality=75)
    jp = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB")).copy()
    for block in (None, 12):
        res = depixelate(prior, jp, None, DepixParams(candidates=1, steps=STEPS, seed=1, block=block))
        assert (res.mosaic.block, res.mosaic.phase, res.mosaic.rect) == (12, (10, 2), (10, 14, 120, 120))
        out = res.patches[0].astype(np.float64)[14:134, 10:130].reshape(10, 12, 10, 12, 3).mean(axis=(1, 3))
        want = jp.astype(np.float64)[14:134, 10:130].reshape(10, 12, 10, 12, 3).mean(axis=(1, 3))
        assert np.abs(out - want).mean() <= 2.0


def test_a_region_without_a_mosaic_is_refused_unless_forced(prior) -> None:
    """Painting a face over a region that holds none of a mosaic (a sharp face, a wrong box) destroys it."""
    region = np.rint(photo(64, 64, 3) * 255).astype(np.uint8)
    for block in (None, 1, 8):
        with pytest.raises(PipelineError) as exc:
            depixelate(prior, region, None, DepixParams(candidates=1, steps=STEPS, block=block))
        assert exc.value.code == "NO_MOSAIC" and "no mosaic found in the selection" in exc.value.message
        assert "--force / choose 'depixelate anyway'" in exc.value.message


def test_a_mosaic_found_with_low_confidence_is_refused() -> None:
    from pulse_server.pipeline import MosaicInfo
    from pulse_server.pipeline.pipeline import MIN_CONFIDENCE, require_mosaic

    require_mosaic(MosaicInfo(8, (0, 0), (0, 0, 64, 64), MIN_CONFIDENCE, True))
    with pytest.raises(PipelineError) as exc:
        require_mosaic(MosaicInfo(8, (0, 0), (0, 0, 64, 64), 0.42, True))
    assert exc.value.code == "NO_MOSAIC"
    assert "(the best grid, 8-px blocks, has confidence 0.42, under 0.50)" in exc.value.message


def test_small_face_without_mosaic_when_forced(prior) -> None:
    """No mosaic, forced: one sample per pixel; the patch keeps the region's shape and pixels outside the mask."""
    region = np.rint(photo(24, 20, 3) * 255).astype(np.uint8)
    mask = make_mask("ellipse", 24, 20)
    res = depixelate(prior, region, mask, DepixParams(candidates=1, steps=STEPS, seed=0, force=True))
    assert not res.mosaic.detected and res.mosaic.block == 1 and res.mosaic.rect == (0, 0, 20, 24)
    patch = res.patches[0]
    assert patch.shape == region.shape and np.array_equal(patch[mask == 0], region[mask == 0])
    # colour matched: the mean colour of the face stays that of the input
    assert np.abs(patch[mask > 0].mean(0).astype(float) - region[mask > 0].mean(0)).max() < 12


@pytest.mark.parametrize(
    "region, mask, message",
    [
        (np.zeros((0, 0, 3), np.uint8), None, "empty"),
        (np.zeros((1, 1, 3), np.uint8), None, "too small"),
        (np.zeros((4097, 8, 3), np.uint8), None, "larger than the limit"),
        (np.full((32, 32, 3), np.nan, np.float32), None, "NaN"),
        (np.zeros((32, 32, 3), np.float64), None, "unsupported pixel type"),
        (np.zeros((32, 32), np.uint8), None, "2-D"),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((32, 31), np.uint8), "mask"),
        (np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8), "nothing is selected"),
    ],
)
def test_bad_regions(prior, region, mask, message) -> None:
    with pytest.raises(PipelineError, match=message) as exc:
        depixelate(prior, region, mask, DepixParams(candidates=1, steps=1))
    assert exc.value.code


def test_forced_block_too_big(prior) -> None:
    with pytest.raises(PipelineError, match="block size 40"):
        depixelate(prior, np.zeros((60, 60, 3), np.uint8), None, DepixParams(candidates=1, steps=1, block=40))


def test_progress_and_cancel(prior) -> None:
    from pulse_server.errors import Cancelled

    region = pixelate(np.rint(photo(64, 64, 2) * 255).astype(np.uint8), 8, (0, 0, 64, 64))
    seen = []
    depixelate(prior, region, None, DepixParams(candidates=1, steps=3, seed=0), progress=seen.append)
    assert seen and seen[-1].step == seen[-1].total == 3
    with pytest.raises(Cancelled):
        depixelate(prior, region, None, DepixParams(candidates=1, steps=3, seed=0), cancel=lambda: True)


def test_a_cancel_during_the_mosaic_analysis_ends_the_job(prior) -> None:
    """The runner hands its cancel to the analysis: a large mosaic is not analysed to the end first."""
    import time

    from pulse_server.errors import Cancelled

    region = pixelate(np.rint(photo(768, 768, 4) * 255).astype(np.uint8), 8, (0, 0, 768, 768))
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        depixelate(prior, region, None, DepixParams(candidates=1, steps=3), cancel=lambda: time.monotonic() - t0 > 0.3)
    assert time.monotonic() - t0 < 3.0
