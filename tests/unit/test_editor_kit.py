"""The editor kit both plug-ins share (protocol/editor_*.py, protocol/layers.py's plan): fields and models from
the contract and WELCOME, messages by error code, the job's progress text, the candidate → layer plan."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pytest

from protocol import editor_messages as msgs
from protocol import editor_settings as kit
from protocol import layers
from protocol.editor_progress import JobView, detected_text
from protocol.errors import DaemonNotRunning, JobCancelled, JobFailed, ProtocolError, VersionMismatch
from protocol.job import PARAMS, JobSettings, ParamError, narrowed, spec_to_wire
from protocol.messages import Accepted, Candidate, ImageBlob, JobState, Progress, Result, Welcome

EDITOR = msgs.Editor(name="gimp", title="Depixelate Face (PULSE)", start="start it with `pulse-server run`",
                     force="call it with force TRUE", log="the error console")

WELCOME = Welcome(protocol=1, server_version="0", session="s", heartbeat_ms=1000, device="cpu", models=[
    {"name": "stylegan2-ffhq-1024", "id": "", "family": "stylegan2", "resolution": 1024, "loaded": True},
    {"name": "stylegan2-ffhq-256", "id": "ffhq-256", "family": "stylegan2", "resolution": 256, "loaded": False},
    {"name": "digiface-64", "id": "digiface-64", "family": "dcgan", "resolution": 64, "loaded": True},
])


# --------------------------------------------------------------------------------------------- settings


def test_the_dialog_fields_are_the_contracts_everyday_parameters_in_its_order():
    assert kit.FIELDS == tuple(n for n, p in PARAMS.items() if not p.advanced)
    assert {"candidates", "steps", "seed", "block", "model"} <= set(kit.FIELDS)
    for f in kit.fields():
        p = PARAMS[f.name]
        assert (f.label, f.help, f.default, f.low, f.high, f.kind) == \
            (p.label, p.help, p.default, p.low, p.high, p.kind)


def test_fields_take_the_daemons_ranges_from_its_welcome_and_the_contracts_without_one():
    welcome = SimpleNamespace(params=spec_to_wire(narrowed(steps=(1, 300))))
    assert (kit.field("steps", kit.daemon_spec(welcome)).high, kit.field("steps", kit.daemon_spec(WELCOME)).high) \
        == (300, PARAMS["steps"].high)
    assert kit.daemon_spec(None) == PARAMS


def test_job_settings_refuse_rather_than_clamp_and_ignore_what_is_not_a_job_parameter():
    assert kit.job_settings({"steps": 40, "endpoint": "tcp://x:1", "source": "layer"}) == JobSettings(steps=40)
    with pytest.raises(ParamError) as info:
        kit.job_settings({"steps": PARAMS["steps"].high + 1})
    assert info.value.param == "steps"


def test_the_model_list_puts_the_daemons_own_first_as_the_empty_choice():
    choices = kit.model_choices(WELCOME)
    assert [c.value for c in choices] == ["", "ffhq-256", "digiface-64"]
    assert choices[0].label == "The daemon's own: stylegan2-ffhq-1024 (1024 px, ready)"
    assert choices[1].label == "ffhq-256 (256 px)" and choices[2].loaded
    assert [c.value for c in kit.model_choices(None)] == [""]  # no daemon yet: its own model is still a choice
    assert kit.own_model_name(WELCOME) == "stylegan2-ffhq-1024"
    assert kit.model_for_estimate(JobSettings(), WELCOME) == "stylegan2-ffhq-1024"
    assert kit.model_for_estimate(JobSettings(model="ffhq-256"), WELCOME) == "ffhq-256"


# --------------------------------------------------------------------------------------------- messages


def test_every_code_in_the_table_gives_sentences_without_placeholders():
    for code in msgs.ADVICE:
        text = msgs.user_message(ProtocolError("the daemon's own words", code), EDITOR, "tcp://127.0.0.1:9")
        assert "{" not in text and text[0].isupper() and text.endswith("."), (code, text)


def test_daemon_down_names_the_endpoint_once_and_how_to_start_it():
    text = msgs.user_message(DaemonNotRunning(), EDITOR, "tcp://127.0.0.1:9")
    assert text.count("tcp://127.0.0.1:9") == 1 and text.count("pulse-server run") == 1
    assert "not running" in text
    from protocol.endpoint import default_endpoint

    assert default_endpoint() in msgs.user_message(DaemonNotRunning(), EDITOR)  # "" = the default, named


def test_a_bad_parameter_is_named_by_its_dialog_label_whichever_side_refused_it():
    mine = msgs.user_message(ParamError("steps", "must be between 1 and 5000, not 6000"), EDITOR)
    assert mine == "Search steps must be between 1 and 5000, not 6000. Change it in the dialog."
    theirs = msgs.user_message(JobFailed("params.candidates must be 1..16", "BAD_PARAMS"), EDITOR)
    assert theirs.startswith("Faces to generate must be 1..16.")


@pytest.mark.parametrize("exc, needle", [
    (VersionMismatch("daemon speaks 2", [2]), "`pulse-server install-plugin gimp`"),
    (JobCancelled(), "Depixelation cancelled: the image is unchanged."),
    (JobFailed("no mosaic found in the selection (flat); select it, or pass --force", "NO_MOSAIC"),
     "no mosaic found in the selection (flat): select the pixelated area, or call it with force TRUE"),
    (JobFailed("out of memory", "OUT_OF_MEMORY", True), "choose a smaller face model"),
    (JobFailed("a new thing happened", "SOMETHING_NEW"), "(SOMETHING_NEW): a new thing happened"),
    (KeyError("x"), "Depixelate Face (PULSE) failed: KeyError"),
])
def test_messages_say_what_happened_and_what_to_do(exc, needle):
    assert needle in msgs.user_message(exc, EDITOR)


def test_cancel_and_bugs_are_told_apart_by_code():
    assert msgs.is_cancel(JobCancelled()) and not msgs.is_cancel(JobFailed("x", "BAD_REGION"))
    assert msgs.is_bug(KeyError("x")) and not msgs.is_bug(DaemonNotRunning())
    assert not msgs.is_bug(ModuleNotFoundError("zmq"))


# --------------------------------------------------------------------------------------------- progress


def test_the_estimate_shows_before_the_job_runs_and_the_time_left_replaces_it():
    view = JobView(device="cpu", model="stylegan2-ffhq-1024")
    view.accepted(Accepted("j", 1, "queued", estimate_s=1500.0, wait_s=60.0))
    assert view.text() == ("waiting for other jobs · about 25 min on this CPU — a GPU or the ffhq-256 model is "
                           "faster (starts in about 1 min)")
    view.job_state(JobState("j", "running", 0, "12 px blocks, 14×16 cells detected"))
    assert view.headline().startswith("imagining faces · 12 px blocks, 14×16 cells detected · about 25 min")
    view.progress(Progress("j", 12, 40, {}, 1.5e-3, eta_s=31.0))
    assert view.text() == "step 12/40, best error 1.50e-03 · about 30 s left · 12 px blocks, 14×16 cells detected"
    assert view.fraction == 0.3 and "25 min" not in view.headline()


def test_what_was_detected_comes_from_the_message_or_the_analysis():
    view = JobView()
    view.job_state(SimpleNamespace(state="running", message="", analysis={"block": 8, "rect": [0, 0, 32, 24]}))
    assert view.found == "8 px blocks, 4×3 cells detected"
    view.job_state(JobState("j", "running", 0, ""))  # a later state without news keeps what was found
    assert view.found == "8 px blocks, 4×3 cells detected"
    assert detected_text({"block": 1, "detected": False}) == "no mosaic found"
    # JOB_STATE's analysis names the cells; RESULT's gives the rectangle they are counted in
    assert detected_text({"block": 4, "cells": [8, 6], "confidence": 0.9, "detected": True}) == \
        "4 px blocks, 8×6 cells detected"
    view.job_state("loading")
    assert view.headline().startswith("loading the face model")


def test_unknown_estimates_and_errors_are_left_out():
    view = JobView(device="cuda:0")
    view.accepted(Accepted("j", 0, "running"))
    assert view.text() == "imagining faces"
    view.progress(Progress("j", 1, 10))
    assert view.text() == "step 1/10"


# --------------------------------------------------------------------------------------------- layer plan


def _result(n: int, w: int = 4, h: int = 2, analysis: dict | None = None) -> Result:
    cands = [Candidate(ImageBlob(w, h, 3, "u8", bytes([i]) * (w * h * 3)), seed=5 + i, downscale_error=1e-3 * (i + 1),
                       eps_reached=i == 0, steps=50) for i in range(n)]
    return Result("j", cands, "tiny", analysis if analysis is not None else {"block": 2, "rect": [0, 0, 4, 2]})


def test_a_run_plan_names_a_group_and_ranked_faces_with_their_provenance():
    plan = layers.plan_run(layers.faces_of(_result(3)), "tiny", {"block": 2, "rect": [0, 0, 4, 2]},
                           ["PULSE run 1 — 2 px blocks", "PULSE face 1", "photo"])
    assert (plan.run, plan.group_name, plan.summary) == (2, "PULSE run 2 — 2 px blocks", "2 px blocks, 2×1 cells")
    assert [f.name for f in plan.layers] == ["PULSE face 1 (run 2)", "PULSE face 2", "PULSE face 3"]
    assert [f.visible for f in plan.layers] == [True, False, False]
    assert all(layers.DISCLAIMER in f.comment and f.meta["model"] == "tiny" for f in plan.layers)
    assert plan.meta["candidates"][1] == {"name": "PULSE face 2", "downscale_error": 2e-3, "seed": 6}
    assert layers.face_line(plan.layers[1]) == "PULSE face 2: error 2.0e-3, seed 6"
    assert layers.found_text(plan.summary) == "found 2 px blocks, 2×1 cells"


def test_patches_that_do_not_fit_the_region_are_refused_with_a_code():
    assert layers.checked_patches(_result(2), 4, 2, 3, "u8")[1] == bytes([1]) * 24
    with pytest.raises(ProtocolError) as info:
        layers.checked_patches(_result(1), 4, 4, 3, "u8")
    assert info.value.code == "BAD_RESULT"
    assert "Update pulse-server and the plug-in" in msgs.user_message(info.value, EDITOR)
    with pytest.raises(ProtocolError, match="no candidates"):
        layers.checked_patches(_result(0), 4, 2, 3, "u8")


def test_rect_intersection_and_emptiness():
    a = layers.Rect(0, 0, 10, 8)
    assert a.intersect(layers.Rect(6, 4, 10, 10)) == layers.Rect(6, 4, 4, 4)
    assert a.intersect(layers.Rect(20, 0, 5, 5)).empty and not a.empty


# --------------------------------------------------------------------------------------------- budget


def test_the_kit_imports_with_the_standard_library_alone():
    """The editors' Python may lack pyzmq (the plug-ins explain that); the kit must still load there."""
    code = ("import sys; sys.modules['zmq'] = None; sys.modules['msgpack'] = None; sys.modules['numpy'] = None; "
            "import protocol.editor_settings, protocol.editor_messages, protocol.editor_progress, protocol.layers, "
            "protocol.no_mosaic, protocol.estimate_text; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
