import time
from types import SimpleNamespace

import pytest

from protocol.layers import (
    Rect,
    band_width,
    blend_mask,
    candidate_list,
    cell_grid,
    face_name,
    group_comment,
    group_name,
    layer_comment,
    mosaic_rect,
    mosaic_summary,
    next_run_number,
)

ANALYSIS = {"block": 12, "phase": [3, 5], "rect": [3, 5, 84, 108], "confidence": 0.9, "detected": True,
            "method": "ilo", "theta": [[0.0, 0.0, 0.0, 0.0]]}


def test_layer_comment_says_imagined_and_provenance() -> None:
    text = layer_comment(SimpleNamespace(seed=7, downscale_error=1.5e-3, eps_reached=True), "stylegan2-ffhq-1024")
    assert "not a recovery" in text and "Imagined" in text
    assert "seed: 7" in text and "stylegan2-ffhq-1024" in text and "1.500e-03" in text and "yes" in text


def test_run_numbers_continue_after_the_highest_even_when_runs_were_deleted() -> None:
    assert next_run_number([]) == 1
    assert next_run_number(["Background", "PULSE face 1"]) == 1
    assert next_run_number(["PULSE run 1 — 8 px blocks", "PULSE run 3 — no mosaic found", "face"]) == 4
    assert next_run_number(["PULSE run 12", "PULSE runner", "my PULSE run 40"]) == 13


def test_group_is_named_for_the_run_and_its_mosaic() -> None:
    assert group_name(2, ANALYSIS) == "PULSE run 2 — 12 px blocks"
    assert group_name(1, {"block": 1, "detected": False}) == "PULSE run 1 — no mosaic found"
    assert group_name(1, {}) == "PULSE run 1 — no mosaic found"


def test_face_names_stay_short_and_never_collide_with_an_earlier_run() -> None:
    assert [face_name(i, 1) for i in (1, 2)] == ["PULSE face 1", "PULSE face 2"]
    taken = ["PULSE run 1 — 8 px blocks", "PULSE face 1", "PULSE face 2", "Background"]
    assert [face_name(i, 2, taken) for i in (1, 2, 3)] == ["PULSE face 1 (run 2)", "PULSE face 2 (run 2)",
                                                            "PULSE face 3"]


def test_cell_grid_counts_partial_cells_at_the_mosaic_edges() -> None:
    assert cell_grid(ANALYSIS) == (7, 9)  # 84 / 12, 108 / 12 with the grid on the rectangle's corner
    # a rectangle starting mid-cell: 2 px of a cell, 3 whole cells, 4 px of a cell
    assert cell_grid({"block": 10, "phase": [0, 0], "rect": [8, 0, 36, 10], "detected": True}) == (5, 1)
    assert cell_grid({"block": 1, "rect": [0, 0, 5, 5]}) == (0, 0)
    assert cell_grid({"block": 8}) == (0, 0)


def test_mosaic_summary_names_block_size_and_cells() -> None:
    assert mosaic_summary(ANALYSIS) == "12 px blocks, 7×9 cells"
    assert mosaic_summary({"block": 1, "detected": False, "rect": [0, 0, 9, 9]}) == "no mosaic found"
    assert mosaic_summary({"block": 6}) == "6 px blocks"


def test_group_comment_lists_the_candidates_with_their_errors() -> None:
    assert candidate_list([1.3e-3, 2e-2], [5, 6]) == ("PULSE face 1: error 1.3e-3, seed 5\n"
                                                       "PULSE face 2: error 2.0e-2, seed 6")
    text = group_comment(2, "ffhq-256", ANALYSIS, [1.3e-3], [5])
    assert "not a recovery" in text and "PULSE run 2" in text and "12 px blocks, 7×9 cells" in text
    assert "ffhq-256" in text and "ilo" in text and "PULSE face 1: error 1.3e-3" in text


def test_mosaic_rect_is_clipped_and_defaults_to_the_region() -> None:
    assert mosaic_rect(ANALYSIS, 100, 120) == Rect(3, 5, 84, 108)
    assert mosaic_rect({"rect": [-4, 2, 50, 50]}, 40, 30) == Rect(0, 2, 40, 28)
    assert mosaic_rect({}, 40, 30) == Rect(0, 0, 40, 30)
    assert mosaic_rect({"rect": [50, 50, 4, 4]}, 40, 30) == Rect(0, 0, 40, 30)  # nothing inside: whole region
    assert band_width(ANALYSIS) == 12 and band_width({"block": 1}) == 2


def _grid(data: bytes, w: int) -> list[list[int]]:
    return [list(data[i:i + w]) for i in range(0, len(data), w)]


def test_mask_is_opaque_over_the_mosaic_and_falls_off_in_a_band_outside() -> None:
    w, h, band = 20, 16, 4
    rect = Rect(6, 5, 8, 6)
    m = _grid(blend_mask(w, h, rect, band), w)
    assert all(m[y][x] == 255 for y in range(5, 11) for x in range(6, 14))
    # along a row through the middle: falls strictly over the band, then zero
    left = [m[8][x] for x in range(6, -1, -1)]  # from the edge outwards
    assert left[0] == 255 and all(a > b for a, b in zip(left[:band + 1], left[1:band + 1]))
    assert left[band] > 0 and all(v == 0 for v in left[band + 1:])
    # symmetric on the other side and vertically
    assert [m[8][13 + d] for d in range(5)] == left[:5]
    assert [m[10 + d][9] for d in range(5)] == left[:5]
    # round corners: diagonally out by (3, 3) is further than 4 px, so less than straight out by 3
    assert m[4 - 2][5 - 2] < m[8][6 - 3]
    assert m[0][0] == 0


def test_mask_is_multiplied_by_the_selection_coverage() -> None:
    w, h = 12, 10
    rect = Rect(2, 2, 8, 6)
    selection = bytearray([255] * (w * h))
    selection[5 * w + 5] = 0  # a hole in the middle
    selection[4 * w + 4] = 128  # a soft pixel
    for x in range(w):  # the first row not selected at all
        selection[x] = 0
    m = _grid(blend_mask(w, h, rect, 3, bytes(selection)), w)
    assert m[5][5] == 0 and m[4][4] == 128 and m[6][6] == 255
    assert all(v == 0 for v in m[0])
    plain = _grid(blend_mask(w, h, rect, 3), w)
    assert m[1] == plain[1]  # fully selected rows keep the band
    with pytest.raises(ValueError):
        blend_mask(w, h, rect, 3, bytes(5))


def test_mask_of_a_mosaic_filling_the_region_is_fully_opaque() -> None:
    assert blend_mask(7, 5, Rect(0, 0, 7, 5), 8) == bytes([255]) * 35


def test_mask_of_a_large_region_is_quick_in_pure_python() -> None:
    t0 = time.perf_counter()
    data = blend_mask(1500, 1500, Rect(100, 100, 1300, 1300), 40, bytes([255]) * 1500 * 1500)
    assert len(data) == 1500 * 1500
    assert time.perf_counter() - t0 < 5.0
