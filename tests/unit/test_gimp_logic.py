"""The GIMP plug-in's decisions (pulse_gimp.py), without GIMP: formats, geometry, layers, messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PLUGIN_DIR = Path(__file__).resolve().parents[2] / "gimp_plugin" / "pulse-depixelate"
sys.path.insert(0, str(PLUGIN_DIR))

import pulse_gimp as logic  # noqa: E402

from protocol.editor_settings import FIELDS  # noqa: E402
from protocol.errors import DaemonNotRunning, JobCancelled, JobFailed, ProtocolError, VersionMismatch  # noqa: E402
from protocol.job import PARAMS, JobSettings, ParamError  # noqa: E402
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


def test_settings_come_from_the_procedure_config_as_the_contract_says():
    values = {"candidates": 16, "steps": 50, "seed": 7, "block": 8, "model": "ffhq-256",
              "endpoint": " tcp://127.0.0.1:5 ", "force": False}
    s = logic.settings_from(values.__getitem__)
    assert s.endpoint == "tcp://127.0.0.1:5"
    assert s.params() == JobSettings(candidates=16, steps=50, seed=7, block=8, model="ffhq-256").to_wire()
    # the procedure's arguments are the contract's everyday parameters, with its defaults and ranges
    assert [a.name for a in logic.ARGS] == [*FIELDS, "endpoint", "force"]
    for arg in logic.ARGS[:len(FIELDS)]:
        p = PARAMS[arg.name]
        assert (arg.kind, arg.default, arg.minimum, arg.maximum, arg.blurb) == (p.kind, p.default, p.low, p.high, p.help)


def test_a_value_out_of_range_is_refused_not_clamped():
    values = {"candidates": 40, "steps": 50, "seed": 7, "block": 8, "model": "", "endpoint": "", "force": False}
    with pytest.raises(ParamError) as info:
        logic.settings_from(values.__getitem__)
    assert info.value.param == "candidates"
    assert logic.user_message(info.value).startswith("Faces to generate must be between 1 and 16, not 40.")


def test_force_comes_from_a_script_but_never_from_saved_settings_in_the_dialog():
    values = {"candidates": 3, "steps": 50, "seed": 7, "block": 0, "model": "", "endpoint": "", "force": True}
    assert logic.settings_from(values.__getitem__).params()["force"] is True
    assert logic.settings_from(values.__getitem__, interactive=True).params()["force"] is False
    assert logic.ARGS[-1].name == "force" and logic.ARGS[-1].default is False


def test_a_person_is_asked_about_a_missing_mosaic_and_a_script_gets_the_refusal():
    assert logic.asks_before_forcing("interactive") and logic.asks_before_forcing("with-last-vals")
    assert not logic.asks_before_forcing("noninteractive")
    refused = JobFailed("no mosaic found in the selection (no grid of flat blocks in it: it looks like an "
                        "unpixelated picture); select the pixelated area, or pass --force / choose 'depixelate "
                        "anyway' to paint a face over it", "NO_MOSAIC")
    text = logic.user_message(refused)
    assert "no grid of flat blocks in it" in text and "--force" not in text
    assert "python-fu-pulse-depixelate with force TRUE" in text
    from protocol.no_mosaic import NotForced

    assert logic.user_message(NotForced("no mosaic found in the selection")).startswith("Nothing was changed")


ANALYSIS = {"block": 2, "phase": [0, 0], "rect": [1, 0, 2, 2], "confidence": 0.9, "detected": True,
            "method": "ilo", "theta": []}


def _result(errors, w=4, h=2, channels=3, dtype="u8", analysis=None):
    n = w * h * channels * (2 if dtype == "u16" else 1)
    cands = [Candidate(ImageBlob(w, h, channels, dtype, bytes([i]) * n), seed=10 + i, downscale_error=e,
                       eps_reached=e < 2e-3, steps=100) for i, e in enumerate(errors)]
    return Result(job_id="j", candidates=cands, model="tiny-stylegan2-32",
                  analysis=ANALYSIS if analysis is None else analysis)


def test_paste_plan_is_one_group_named_for_the_run_with_ranked_face_layers():
    region = logic.Region(28, 18, 4, 2, 16, 8, True)
    fmt = logic.pixel_format("u8-non-linear", False, False)
    plan = logic.plan_paste(_result([1.3e-3, 2.5e-3, 4e-2]), region, fmt, ["face", "background"], None)
    assert (plan.run, plan.group_name, plan.summary) == (1, "PULSE run 1 — 2 px blocks", "2 px blocks, 2×1 cells")
    assert [p.name for p in plan.layers] == ["PULSE face 1", "PULSE face 2", "PULSE face 3"]
    assert [p.visible for p in plan.layers] == [True, False, False]
    assert [p.error for p in plan.layers] == [1.3e-3, 2.5e-3, 4e-2]
    assert {(p.x, p.y, p.width, p.height) for p in plan.layers} == {(28, 18, 4, 2)}
    assert plan.layers[1].data == bytes([1]) * 24
    meta = json.loads(plan.layers[0].parasite)
    assert (meta["model"], meta["seed"], meta["downscale_error"], meta["kind"]) == ("tiny-stylegan2-32", 10, 1.3e-3, "face")
    assert "not a recovery" in meta["comment"]
    group = json.loads(plan.group_parasite)
    assert group["kind"] == "run" and group["run"] == 1 and "not a recovery" in group["comment"]
    assert [c["downscale_error"] for c in group["candidates"]] == [1.3e-3, 2.5e-3, 4e-2]
    assert "PULSE face 2: error 2.5e-3, seed 11" in group["comment"]


def test_each_face_gets_a_mask_opaque_over_the_mosaic_and_clipped_to_the_selection():
    region = logic.Region(0, 0, 4, 2, 0, 0, True)
    fmt = logic.pixel_format("u8", False, False)
    plan = logic.plan_paste(_result([1e-3, 2e-3]), region, fmt, [], None)
    # mosaic at x 1..2: opaque there, a 2 px band falling off to both sides
    row = list(plan.layers[0].mask[:4])
    assert row[1] == row[2] == 255 and 0 < row[0] < 255 and 0 < row[3] < 255
    assert plan.layers[0].mask == plan.layers[1].mask and len(plan.layers[0].mask) == 8
    selection = bytes([0, 255, 255, 255] * 2)
    clipped = logic.plan_paste(_result([1e-3]), region, fmt, [], selection)
    assert list(clipped.layers[0].mask[:4]) == [0] + row[1:]


def test_a_second_run_is_numbered_on_and_never_reuses_a_face_name():
    region = logic.Region(0, 0, 4, 2, 0, 0, False)
    fmt = logic.pixel_format("u8", False, False)
    names = ["PULSE run 1 — 2 px blocks", "PULSE face 1", "PULSE face 2", "face"]
    plan = logic.plan_paste(_result([1e-3, 2e-3, 3e-3]), region, fmt, names, None)
    assert plan.group_name == "PULSE run 2 — 2 px blocks"
    assert [p.name for p in plan.layers] == ["PULSE face 1 (run 2)", "PULSE face 2 (run 2)", "PULSE face 3"]
    assert not any("#" in p.name for p in plan.layers)


def test_no_mosaic_found_is_named_in_the_group_and_the_message():
    region = logic.Region(0, 0, 4, 2, 0, 0, False)
    analysis = {"block": 1, "phase": [0, 0], "rect": [0, 0, 4, 2], "detected": False, "method": "ilo"}
    plan = logic.plan_paste(_result([1e-3], analysis=analysis), region, logic.pixel_format("u8", False, False), [], None)
    assert plan.group_name == "PULSE run 1 — no mosaic found"
    assert plan.layers[0].mask == bytes([255]) * 8
    assert "PULSE run 1: no mosaic found; imagined 1 face in “PULSE run 1 — no mosaic found”:" in logic.done_message(plan)


def test_done_message_says_what_was_found_made_and_how_to_blend():
    region = logic.Region(0, 0, 4, 2, 0, 0, False)
    plan = logic.plan_paste(_result([1.3e-3, 2e-2]), region, logic.pixel_format("u8", False, False), [], None)
    text = logic.done_message(plan, "“PULSE face 1” is a PULSE result: depixelating the layer beneath it, “face”")
    assert text.startswith("“PULSE face 1” is a PULSE result")
    assert "PULSE run 1: found 2 px blocks, 2×1 cells; imagined 2 faces in “PULSE run 1 — 2 px blocks”:" in text
    # one line per face: its layer, error and seed, whole (a message box wraps long lines mid-name)
    assert "\n  PULSE face 1: error 1.3e-3, seed 10 (shown)\n  PULSE face 2: error 2.0e-2, seed 11\n" in text
    assert "layer mask" in text and "imagined by the model, not recovered" in text


def test_paste_plan_refuses_a_patch_of_the_wrong_shape():
    region = logic.Region(0, 0, 4, 2, 0, 0, False)
    with pytest.raises(ProtocolError) as info:
        logic.plan_paste(_result([1e-3], w=2), region, logic.pixel_format("u8", False, False), [], None)
    assert "2×2×3 u8 patch for a 4×2×3 u8 region" in logic.user_message(info.value)
    assert "install-plugin gimp" in logic.user_message(info.value)
    with pytest.raises(ProtocolError, match="no candidates"):
        logic.plan_paste(_result([]), region, logic.pixel_format("u8", False, False), [], None)


def test_the_active_layer_is_read_unless_it_is_a_pulse_result():
    assert logic.pick_source("face", False, [("background", False, False)]) == logic.Source(-1)


def test_a_pulse_result_hands_over_to_the_photo_layer_beneath_its_runs():
    below = [("PULSE run 1 — 8 px blocks", True, True), ("face", False, False), ("background", False, False)]
    choice = logic.pick_source("PULSE face 1 (run 2)", True, below)
    assert choice.index == 1
    assert "“PULSE face 1 (run 2)” is a PULSE result" in choice.note and "“face”" in choice.note


def test_a_pulse_result_without_a_photo_layer_beneath_is_explained():
    with pytest.raises(logic.UserError, match="no photo layer beneath"):
        logic.pick_source("PULSE face 1", True, [("PULSE run 1", True, True)])
    with pytest.raises(logic.UserError, match="is a group"):
        logic.pick_source("PULSE face 1", True, [("People", False, True)])


def test_a_new_run_goes_above_the_earlier_runs_on_the_same_photo():
    assert logic.insert_position([False, False], 1) == 1  # nothing of ours: right above the photo
    assert logic.insert_position([False, True, True, False], 3) == 1  # above runs 1 and 2, below "text"
    assert logic.insert_position([True], 1) == 0


def test_daemon_down_names_the_address_tried_once():
    text = logic.user_message(DaemonNotRunning(), "tcp://127.0.0.1:9")
    assert text.count("tcp://127.0.0.1:9") == 1 and text.count("pulse-server run") == 1
    slow = DaemonNotRunning("no answer from tcp://127.0.0.1:9 within 10 s — is `pulse-server run` running there?")
    slow_text = logic.user_message(slow, "tcp://127.0.0.1:9")
    assert "did not answer in time" in slow_text and slow_text.count("tcp://127.0.0.1:9") == 1


def test_dialog_labels_are_the_contracts_plain_labels_with_distinct_mnemonics():
    labels = [a.label for a in logic.ARGS]
    assert [label.replace("_", "") for label in labels] == \
        [PARAMS[n].label for n in FIELDS] + ["Daemon address", PARAMS["force"].label]
    assert all(label.count("_") == 1 for label in labels)
    keys = [label[label.index("_") + 1].lower() for label in labels]
    # not Help, Reset, Cancel, OK, Load Saved Settings, Save Settings
    assert len(set(keys)) == len(keys) and not set(keys) & set("hrcols")
    assert "imagine" in logic.DESCRIPTION.lower() and "\n" not in logic.DESCRIPTION


@pytest.mark.parametrize(
    "exc, needle",
    [
        (DaemonNotRunning(), "pulse-server run"),
        (VersionMismatch("server speaks 2", [2]), "install-plugin gimp"),
        (JobFailed("the selection is 3×3 pixels: too small to hold a face", "BAD_REGION"),
         "The selection is 3×3 pixels: too small to hold a face. Select the whole pixelated face."),
        (JobFailed("something new", "NEW_CODE"), "(NEW_CODE): something new"),
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
