"""The plug-ins' own code against a real daemon process (tcp, tiny generator), without an editor: the editor
kit reading a real WELCOME, and the Krita plug-in's logic on the small `krita` mock running a whole job."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "krita_mock"))
sys.path.insert(0, str(REPO / "krita_plugin"))

import krita  # noqa: E402  (the mock)
from pulse_depixelate import logic  # noqa: E402

from protocol import editor_settings as kit  # noqa: E402
from protocol.editor_progress import JobView  # noqa: E402
from protocol.job import PARAMS  # noqa: E402

assert Path(krita.__file__).parent.name == "krita_mock", "the real krita module must not shadow the mock"


def make_doc(w=24, h=20, model="RGBA", depth="U8", select=(4, 3, 16, 12)):
    doc = krita.Krita.instance().createDocument(w, h, "t", model, depth, "", 72.0)
    if select is not None:
        sel = krita.Selection()
        sel.select(*select, 255)
        doc.setSelection(sel)
    return doc


# ------------------------------------------------------------------------------------------------ editor kit


@pytest.mark.slow
def test_a_real_daemons_welcome_fills_the_model_list_and_the_ranges(tmp_path, tiny_weights, monkeypatch):
    from daemon_fixture import start_daemon

    from protocol.client import PulseClient

    daemon = start_daemon(tmp_path, weights=tiny_weights, endpoint="tcp")
    try:
        monkeypatch.setenv("PULSE_TOKEN", daemon.token)
        with PulseClient(daemon.endpoint, client_name="test", timeout=10.0) as client:
            welcome = client.connect()
    finally:
        daemon.stop()
    choices = kit.model_choices(welcome)
    assert choices[0].value == "" and choices[0].label.startswith("The daemon's own: ")
    assert len({c.value for c in choices}) == len(choices)
    spec = kit.daemon_spec(welcome)
    assert set(spec) == set(PARAMS) and all(spec[n].low is not None for n in ("candidates", "steps", "block"))


# ------------------------------------------------------------------------------------------- Krita plug-in


@pytest.mark.slow
def test_job_round_trip_through_the_real_daemon(tmp_path, tiny_weights):
    """selection → request → daemon (tcp, tiny generator) → layers, all through the plug-in's own code."""
    import numpy as np
    from daemon_fixture import start_daemon
    from krita_env import block_means, mosaic_image

    rect, block = (8, 8, 32, 32), 4
    image = mosaic_image(64, 48, rect, block, seed=5)
    doc = make_doc(64, 48, select=rect)
    bg = doc.activeNode()
    bg.setPixelData(image[..., [2, 1, 0, 3]].tobytes(), 0, 0, 64, 48)  # Krita's BGRA
    req = logic.build_request(doc, logic.Settings(candidates=2, steps=5, seed=3, block=block))
    daemon = start_daemon(tmp_path, weights=tiny_weights, endpoint="tcp")
    try:
        req.endpoint = daemon.endpoint
        seen, welcomes, view = [], [], JobView()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("PULSE_TOKEN", daemon.token)
            outcome = logic.run_job(req, on_progress=lambda p: (seen.append(p), view.progress(p)),
                                    on_accepted=view.accepted, on_job_state=view.job_state,
                                    on_welcome=welcomes.append)
    finally:
        daemon.stop()
    assert any(getattr(p, "total", None) == 5 for p in seen)
    assert len(welcomes) == 1 and welcomes[0].device  # the daemon's ranges were known before the pixels left
    assert view.state == "running" and view.steps_text().startswith("step ") and view.total == 5
    # what the daemon detected after its analysis, before the search: the docker shows it while the job runs
    assert view.found == f"{block} px blocks, 8×8 cells detected", view
    new = logic.apply_outcome(req, outcome, krita.Krita.instance().documents()).faces
    assert [n.name() for n in new] == ["PULSE face 1", "PULSE face 2"]
    assert outcome.layers[0].error <= outcome.layers[1].error
    x, y, w, h = rect
    best = np.frombuffer(new[0].pixelData(x, y, w, h), np.uint8).reshape(h, w, 4)[..., [2, 1, 0, 3]]
    err = np.abs(block_means(best.astype(float), block) - block_means(image[y:y + h, x:x + w].astype(float), block))
    assert (err.mean((0, 1)) <= 2.0).all()
    assert bytes(bg.pixelData(0, 0, 64, 48)) == image[..., [2, 1, 0, 3]].tobytes()
