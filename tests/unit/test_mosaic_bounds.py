"""Mosaic analysis is bounded: CANCEL lands inside it, featureless and near-featureless regions are cheap up to
the largest region the pipeline takes (MAX_SIDE per side)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from pulse_server.errors import Cancelled
from pulse_server.pipeline import MAX_SIDE, detect_grid, pixelate


def _mosaic(side: int, block: int) -> np.ndarray:
    rng = np.random.default_rng(5)
    return pixelate(rng.random((side, side, 3), dtype=np.float32), block, (0, 0, side, side))


def test_a_cancel_lands_inside_the_analysis_of_a_region_full_of_mosaic():
    # A whole-region fine mosaic is the analysis' most expensive content (every hypothesis is refined on it).
    region = _mosaic(768, 8)
    cancelled = threading.Event()
    threading.Timer(0.3, cancelled.set).start()
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        detect_grid(region, None, cancel=cancelled.is_set)
    assert time.monotonic() - t0 < 0.3 + 1.5, "the analysis ran on long after the cancel"


def test_a_cancel_before_the_analysis_stops_it_at_once():
    t0 = time.monotonic()
    with pytest.raises(Cancelled):
        detect_grid(_mosaic(256, 4), 4, cancel=lambda: True)
    assert time.monotonic() - t0 < 0.5


@pytest.mark.parametrize("content", ["blank", "dot", "gradient"])
def test_featureless_and_near_featureless_regions_of_the_largest_size_are_cheap(content):
    region = np.full((MAX_SIDE, MAX_SIDE, 3), 0.5, np.float32)
    if content == "dot":  # a blank selection with one speck: still nothing to analyse but the speck's surroundings
        region[1000:1003, 3000:3002] = 0.9
    elif content == "gradient":  # smooth, in 8-bit steps: no grid lines
        region[:] = (np.round(np.linspace(0.2, 0.8, MAX_SIDE, dtype=np.float32) * 255) / 255)[None, :, None]
    t0 = time.monotonic()
    info = detect_grid(region)
    assert time.monotonic() - t0 < 8.0  # measured ≈1–2 s on a loaded 2-core CI machine
    assert not info.detected and info.rect == (0, 0, MAX_SIDE, MAX_SIDE)


def test_a_mosaic_in_a_photo_in_a_blank_box_is_found_in_the_boxs_coordinates():
    from PIL import Image

    rng = np.random.default_rng(9)
    photo = np.stack([np.asarray(Image.fromarray(rng.random((20, 20), dtype=np.float32)).resize((200, 200), Image.BICUBIC))
                      for _ in range(3)], axis=2).clip(0, 1)  # smooth, photo-like
    photo[40:140, 60:160] = _mosaic(100, 10)  # a 10-px mosaic over part of it
    box = np.full((700, 900, 3), 0.25, np.float32)
    box[203:403, 333:533] = photo
    info = detect_grid(box)
    assert info.detected and info.block == 10 and info.phase == (393 % 10, 243 % 10)
    assert info.rect == (393, 243, 100, 100)
