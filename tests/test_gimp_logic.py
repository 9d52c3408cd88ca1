"""The GIMP plug-in's decisions (pulse_gimp.py), without GIMP: formats, geometry, layers, messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[1] / "gimp_plugin" / "pulse-depixelate"
sys.path.insert(0, str(PLUGIN_DIR))

import pulse_gimp as logic  # noqa: E402
from protocol.errors import DaemonNotRunning, JobCancelled, JobFailed, VersionMismatch  # noqa: E402
from protocol.messages import Candidate, ImageBlob, Result  # noqa: E402


@pytest.mark.parametrize(
    "precision, gray, alpha, babl, dtype, channels, size",
    [
        ("u8-non-linear", False, False, "R'G'B' u8", "u8", 3, 1),
        ("U8_LINEAR", False, True, "R'G'B'A u8", "u8", 4, 1),
        ("u16-perceptual", True, False, "Y' u16", "u16", 1, 2),
        ("u16-linear", True, True, "Y'A u16", "u16", 2, 2),
        ("float-linear", False, True, "R'G'B'A float", "f32", 4, 4),
        ("half-non-linear", False, False, "R'G'B' float", "f32", 3, 4),
        ("u32-linear", True, False, "Y' float", "f32", 1, 4),
        ("double-perceptual", False, False, "R'G'B' float", "f32", 3, 4),
    ],
)
def test_pixel_format_keeps_the_depth_the_protocol_carries(precision, gray, alpha, babl, dtype, channels, size):
    fmt = logic.pixel_format(precision, gray, alpha)
    assert (fmt.babl, fmt.dtype, fmt.channels, fmt.itemsize) == (babl, dtype, channels, size)


def test_layer_type_follows_channels():
    assert logic.pixel_format("u8", False, False).layer_type_name == "RGB_IMAGE"
    assert logic.pixel_format("u8", False, True).layer_type_name == "RGBA_IMAGE"
    assert logic.pixel_format("u8", True, False).layer_type_name == "GRAY_IMAGE"
    assert logic.pixel_format("u8", True, True).layer_type_name == "GRAYA_IMAGE"


def test_unknown_precision_is_a_user_error():
    with pytest.raises(logic.UserError):
        logic.pixel_format("u4-odd", False, False)


def test_region_is_selection_clipped_to_the_offset_drawable():
    # Drawable 64×56 at (12, 10); selection (0, 0)-(40, 30) sticks out on the top-left.
    r = logic.plan_region((12, 10), (64, 56), (True, 0, 0, 40, 30))
    assert (r.x, r.y, r.width, r.height) == (12, 10, 28, 20)
    assert (r.src_x, r.src_y) == (0, 0) and r.has_selection
    r = logic.plan_region((12, 10), (64, 56), (True, 28, 18, 60, 50))
    assert (r.x, r.y, r.width, r.height, r.src_x, r.src_y) == (28, 18, 32, 32, 16, 8)


def test_no_selection_means_the_whole_drawable():
    r = logic.plan_region((-5, 7), (40, 30), (False, 0, 0, 100, 100))
    assert (r.x, r.y, r.width, r.height, r.src_x, r.src_y, r.has_selection) == (-5, 7, 40, 30, 0, 0, False)


def test_selection_outside_the_layer_is_explained():
    with pytest.raises(logic.UserError, match="does not overlap"):
        logic.plan_region((0, 0), (10, 10), (True, 20, 20, 30, 30))


def test_mask_rules():
    assert logic.mask_or_none(bytes([255] * 16)) is None  # plain rectangle: no mask frame needed
    partial = bytes([0, 128, 255, 255])
    assert logic.mask_or_none(partial) == partial
    with pytest.raises(logic.UserError, match="empty"):
        logic.mask_or_none(bytes(16))


def test_settings_from_config_and_params():
    values = {"candidates": 40, "steps": 50, "seed": 7, "block-size": 8, "endpoint": " tcp://127.0.0.1:5 "}
    s = logic.settings_from(values.__getitem__)
    assert s.candidates == 16  # clamped to the declared maximum
    assert s.endpoint == "tcp://127.0.0.1:5"
    assert s.params() == {"mode": "depixelate", "candidates": 16, "steps": 50, "seed": 7, "block": 8}
    assert [a.name for a in logic.INT_ARGS] == ["candidates", "steps", "seed", "block-size"]
    defaults = {a.name: a.default for a in logic.INT_ARGS}
    assert defaults == {"candidates": 3, "steps": 100, "seed": -1, "block-size": 0}


def test_progress():
    assert logic.progress_fraction(25, 100) == 0.25
    assert logic.progress_fraction(3, 0) == 0.0
    assert "12/40" in logic.progress_text(12, 40, 1.5e-3) and "1.50e-03" in logic.progress_text(12, 40, 1.5e-3)


def _result(errors, w=4, h=2, channels=3, dtype="u8"):
    n = w * h * channels * (2 if dtype == "u16" else 1)
    cands = [Candidate(ImageBlob(w, h, channels, dtype, bytes([i]) * n), seed=10 + i, downscale_error=e,
                       eps_reached=e < 2e-3, steps=100) for i, e in enumerate(errors)]
    return Result(job_id="j", candidates=cands, model="tiny-stylegan2-32", analysis={"block": 8})


def test_plan_layers_names_visibility_position_and_parasite():
    region = logic.Region(28, 18, 4, 2, 16, 8, True)
    fmt = logic.pixel_format("u8-non-linear", False, False)
    plans = logic.plan_layers(_result([1.3e-3, 2.5e-3, 4e-2]), region, fmt)
    assert [p.name for p in plans] == ["PULSE face 1 (err 1.3e-3)", "PULSE face 2 (err 2.5e-3)",
                                       "PULSE face 3 (err 4.0e-2)"]
    assert [p.visible for p in plans] == [True, False, False]
    assert {(p.x, p.y, p.width, p.height) for p in plans} == {(28, 18, 4, 2)}
    assert plans[1].data == bytes([1]) * 24
    meta = json.loads(plans[0].parasite)
    assert (meta["model"], meta["seed"], meta["downscale_error"]) == ("tiny-stylegan2-32", 10, 1.3e-3)
    assert "not a recovery" in meta["comment"]
    # Inserted worst first at the active layer's position, so the best ends on top.
    assert [p.name[:12] for p in logic.insertion_order(plans)] == ["PULSE face 3", "PULSE face 2", "PULSE face 1"]


def test_plan_layers_refuses_a_patch_of_the_wrong_shape():
    region = logic.Region(0, 0, 4, 2, 0, 0, False)
    with pytest.raises(logic.UserError, match="install-plugin"):
        logic.plan_layers(_result([1e-3], w=2), region, logic.pixel_format("u8", False, False))
    with pytest.raises(logic.UserError, match="no candidates"):
        logic.plan_layers(_result([]), region, logic.pixel_format("u8", False, False))


@pytest.mark.parametrize(
    "exc, needle",
    [
        (DaemonNotRunning(), "pulse-server run"),
        (VersionMismatch("server speaks 2", [2]), "install-plugin gimp"),
        (JobFailed("selection too small", "BAD_REGION"), "BAD_REGION"),
        (JobCancelled(), "cancelled"),
        (ModuleNotFoundError("No module named 'zmq'", name="zmq"), "python3-zmq"),
        (logic.UserError("Select a layer"), "Select a layer"),
        (RuntimeError("boom"), "RuntimeError: boom"),
    ],
)
def test_user_messages_say_what_to_do(exc, needle):
    assert needle in logic.user_message(exc)


def test_logic_module_does_not_import_zmq_or_gimp():
    src = (PLUGIN_DIR / "pulse_gimp.py").read_text()
    top_level = [ln for ln in src.splitlines() if ln.startswith(("import ", "from "))]
    assert all("zmq" not in ln and "gi" not in ln.split()[1] for ln in top_level), top_level
