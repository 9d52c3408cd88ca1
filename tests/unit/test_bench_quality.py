"""bench/quality.py's measures on synthetic arrays: what a perfect, a blocky and a smooth result score.

No prior and no engine: only the pure-numpy metric, grid and report functions of the bench.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"
_spec = importlib.util.spec_from_file_location("bench_quality", _PATH)
assert _spec is not None and _spec.loader is not None
quality = importlib.util.module_from_spec(_spec)
sys.modules["bench_quality"] = quality  # dataclasses look their module up by name
_spec.loader.exec_module(quality)

RECT = (5, 7, 61, 53)  # a mosaic rectangle inside a 72×80 region, not a whole number of cells
BLOCK = 9
PHASE = (3, 4)  # grid lines away from the rectangle's corner: partial cells on every side


def noise_photo(h: int = 72, w: int = 80, seed: int = 0) -> np.ndarray:
    """u8 RGB with texture at every scale: nothing lines up with any grid."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def gradient(h: int = 72, w: int = 80) -> np.ndarray:
    """u8 RGB ramp, the same step between every pair of horizontal and of vertical neighbours."""
    y, x = np.mgrid[0:h, 0:w]
    lum = (2 * x + 1 * y).astype(np.uint8)
    return np.repeat(lum[..., None], 3, axis=2)


def test_cell_index_cuts_partial_cells_at_the_phase() -> None:
    row, col = quality.rect_grid(RECT, BLOCK, PHASE)
    # x = 5..65; grid lines at x ≡ 3 (mod 9): 12, 21, ... -> the first cell holds x = 5..11 (7 px)
    assert (col[:7] == 0).all() and col[7] == 1
    assert (col[7:16] == 1).all() and col[16] == 2
    # y = 7..59; grid lines at y ≡ 4: 13, 22, ... -> the first cell holds y = 7..12 (6 px)
    assert (row[:6] == 0).all() and row[6] == 1
    # a grid line on the corner: whole cells from the first pixel
    row0, col0 = quality.rect_grid((9, 18, 27, 27), 9, (0, 0))
    assert (np.bincount(col0) == 9).all() and (np.bincount(row0) == 9).all()


def test_pixelated_image_remosaics_exactly_and_is_blocky() -> None:
    photo = noise_photo()
    mosaic = quality.pixelate(photo, BLOCK, RECT, PHASE)
    assert quality.remosaic_mae(mosaic, mosaic, RECT, BLOCK, PHASE) == 0.0
    assert quality.blockiness(mosaic, RECT, BLOCK, PHASE) > 1e3  # flat cells: no step inside any of them
    # the photo itself re-pixelates to the mosaic (up to the mosaic's rounding to u8)
    assert quality.remosaic_mae(photo, mosaic, RECT, BLOCK, PHASE) <= 0.5
    assert quality.outside_identical(mosaic, photo, RECT)


def test_remosaic_mae_is_in_u8_levels() -> None:
    mosaic = quality.pixelate(noise_photo(), BLOCK, RECT, PHASE)
    brighter = mosaic.copy()
    x, y, w, h = RECT
    brighter[y : y + h, x : x + w] += np.uint8(3)  # noise mosaic cells are far from 255 after averaging
    assert quality.remosaic_mae(brighter, mosaic, RECT, BLOCK, PHASE) == pytest.approx(3.0)


def test_smooth_gradient_and_noise_have_blockiness_near_one() -> None:
    assert quality.blockiness(gradient(), RECT, BLOCK, PHASE) == pytest.approx(1.0)
    assert quality.blockiness(noise_photo(seed=1), RECT, BLOCK, PHASE) == pytest.approx(1.0, abs=0.1)


def test_diversity_of_candidates() -> None:
    a = noise_photo(seed=2)
    assert quality.diversity([a, a.copy(), a.copy()], RECT) == 0.0
    b = a.copy()
    x, y, w, h = RECT
    b[y : y + h, x : x + w] = np.clip(a[y : y + h, x : x + w].astype(int) + 10, 0, 255).astype(np.uint8)
    b[:y] = 0  # outside the mosaic: not counted
    assert 9.0 < quality.diversity([a, b], RECT) <= 10.0
    assert quality.diversity([a], RECT) is None


def test_outside_identical_sees_one_changed_pixel() -> None:
    region = noise_photo(seed=3)
    patch = region.copy()
    x, y, w, h = RECT
    patch[y : y + h, x : x + w] = 0  # inside: allowed
    assert quality.outside_identical(patch, region, RECT)
    patch[y - 1, x] ^= 1
    assert not quality.outside_identical(patch, region, RECT)


def test_psnr_and_ssim_look_only_inside_the_mosaic() -> None:
    truth = noise_photo(seed=4)
    patch = truth.copy()
    x, y, w, h = RECT
    patch[y : y + h, x : x + w] = 255 - patch[y : y + h, x : x + w]
    inside_only = quality.psnr_ssim(patch, truth, RECT)
    patch[:y] = 255 - patch[:y]  # rows above the rectangle
    assert quality.psnr_ssim(patch, truth, RECT) == inside_only
    assert inside_only[0] < 10 and inside_only[1] < 0.1


def test_summary_counts_failures_as_not_reaching_eps() -> None:
    ok = {"eps_reached": True, "cands_at_eps": 2, "cands": 3, "cell_error": 1e-3, "remosaic": 0.1, "blockiness": 1.1,
          "photo_blockiness": 1.0, "psnr": 25.0, "ssim": 0.8, "outside": True, "block_hit": True, "diversity": 4.0,
          "seconds": 2.0}
    failed = {"error": "PipelineError: no mosaic", "seconds": 0.1}
    s = quality.summarise("x", [ok, failed])
    assert s["cases"] == 2 and s["failed"] == 1
    assert s["eps_share"] == 0.5 and s["cands_eps_share"] == pytest.approx(2 / 3)
    assert s["blockiness"] == 1.1 and s["outside_share"] == 1.0
    assert "| x | 2 (1) | 50% |" in quality.table([s])


def test_results_section_is_created_once_and_runs_are_appended_inside_it() -> None:
    text = "# Benchmark results\n\n## bench/solver.py\n\nold\n"
    once = quality.insert_section(text, "### run 1\n", quality.INTRO)
    twice = quality.insert_section(once, "### run 2\n", quality.INTRO)
    assert twice.count(quality.SECTION) == 1
    assert twice.index("## bench/solver.py") < twice.index(quality.SECTION) < twice.index("### run 1") < twice.index("### run 2")
    # a section followed by another one: the run goes before the next heading
    later = twice + "\n## bench/other.py\n\nx\n"
    third = quality.insert_section(later, "### run 3\n", quality.INTRO)
    assert third.index("### run 3") < third.index("## bench/other.py")
