"""The Krita plug-in end to end: full Krita 5.1 GUI under Xvfb, the real daemon on tcp loopback, tiny generator.

A test-only startup plug-in (tests/krita_scripts/pulse_gui_hook) opens an image with a mosaic, triggers the
`pulse_depixelate` action without a selection, against a dead endpoint, against the live daemon with a
selection, and once more to cancel mid-job; it writes what happened to a JSON file and exits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time

import numpy as np
import pytest

from daemon_fixture import free_tcp_port, start_daemon
from krita_env import SCRIPTS, block_means, install_plugin, krita_env, mosaic_image, pykrita_dir, require, write_png

pytestmark = [pytest.mark.krita, pytest.mark.slow]

W, H, RECT, BLOCK = 64, 48, (8, 8, 32, 32), 4  # 32×32 face region = the tiny generator's size, 8×8 mosaic
PLAIN_RECT = (40, 8, 24, 32)  # right of the mosaic: the photo's noisy gradient, never pixelated


@pytest.fixture(scope="module")
def gui_run(tmp_path_factory, tiny_weights):
    require("krita", "xvfb-run", "xauth")
    root = tmp_path_factory.mktemp("krita-gui")
    daemon = start_daemon(root / "daemon", weights=tiny_weights, endpoint="tcp")
    try:
        image = mosaic_image(W, H, RECT, BLOCK, seed=3)
        out = root / "out"
        out.mkdir()
        cfg = {"png": str(write_png(root / "face.png", image)), "rect": list(RECT), "out": str(out / "result.json"),
               "settings": {"candidates": 3, "steps": 10, "seed": 1, "block": 0, "source": "layer",
                            "endpoint": daemon.endpoint},
               "dead_endpoint": f"tcp://127.0.0.1:{free_tcp_port()}", "cancel_steps": 5000, "timeout": 200,
               "plain_rect": list(PLAIN_RECT),
               "start_endpoint": f"tcp://127.0.0.1:{free_tcp_port()}",
               "screenshots": bool(os.environ.get("PULSE_KRITA_SCREENSHOTS")), "undo": 6}  # docker-<step>.png in out/
        (root / "cfg.json").write_text(json.dumps(cfg))
        env = krita_env(root / "krita", {"PULSE_TOKEN": daemon.token, "PULSE_KRITA_TEST": str(root / "cfg.json")})
        install_plugin(env)
        pykrita = pykrita_dir(env)
        shutil.copytree(SCRIPTS / "pulse_gui_hook", pykrita / "pulse_gui_hook")
        shutil.copy(SCRIPTS / "pulse_gui_hook.desktop", pykrita / "pulse_gui_hook.desktop")
        (root / "krita/home/.config/kritarc").write_text(
            "[python]\nenable_pulse_depixelate=true\nenable_pulse_gui_hook=true\n")
        t0 = time.monotonic()
        proc = subprocess.run(["xvfb-run", "-a", "-s", "-screen 0 1280x1024x24", "krita", "--nosplash"],
                              env=env, capture_output=True, text=True, timeout=300)
        seconds = time.monotonic() - t0
        (out / "krita-stderr.txt").write_text(proc.stderr)
        result_file = out / "result.json"
        assert result_file.is_file(), f"Krita wrote no result (rc {proc.returncode}):\n{proc.stderr[-4000:]}"
        res = json.loads(result_file.read_text())
        assert "error" not in res, f"{res.get('error')}\nsteps: {res.get('steps')}\n{proc.stderr[-3000:]}"
        res["wall_seconds"] = seconds
        res["daemon_log"] = daemon.output()
        print(f"\nKrita GUI run: {seconds:.1f}s wall; hook {res['total_seconds']}s; "
              + ", ".join(f"{s['name']} {s.get('seconds')}s (max GUI gap {s.get('max_gui_gap')}s)" for s in res["steps"]))
        yield res, image, out
    finally:
        daemon.stop()
        _stop_started_daemon(cfg["start_endpoint"], daemon.token)


def _stop_started_daemon(endpoint: str, token: str) -> None:
    """The daemon the Start button launched outlives Krita by design; the hook stops it, this is the backstop."""
    from protocol.client import PulseClient
    from protocol.errors import ProtocolError

    try:
        with PulseClient(endpoint, token=token, timeout=2.0, client_name="test") as c:
            c.connect()
            c.shutdown()
    except ProtocolError:
        pass


def _step(res, name):
    found = [s for s in res["steps"] if s["name"] == name]
    assert found, f"step {name} missing: {res['steps']}"
    return found[0]


def test_docker_and_action_are_registered(gui_run):
    res, _, _ = gui_run
    assert res["dockers"] == ["pulse_depixelate"]
    assert res["docker_title"] == "PULSE Depixelate"
    assert res["action_text"] == "Depixelate Face (PULSE)"


def test_start_button_launches_the_daemon_detached(gui_run):
    step = _step(gui_run[0], "start")
    assert step["status_right_after_change"] == "Daemon: checking…", step
    assert step["button_visible_before"] and "not running" in step["status_before"], step
    assert step["status_after_click"] == "Daemon: starting…"
    assert step["status"].startswith("Daemon: connected"), step
    assert not step["button_visible_after"]
    assert step["stopped"] is True


def test_no_selection_is_refused_in_the_docker(gui_run):
    step = _step(gui_run[0], "nosel")
    assert step["state"] == "refused"
    assert "select the pixelated face" in step["docker_message"]
    assert step["layers_after"] == step["layers_before"]


def test_dead_daemon_is_explained_without_freezing(gui_run):
    step = _step(gui_run[0], "dead")
    assert step["state"] == "failed"
    assert "not running" in step["docker_message"] and "Start" in step["docker_message"]
    assert step["layers_after"] == step["layers_before"]
    assert step["max_gui_gap"] < 1.0, "the GUI thread blocked while the client waited for a dead daemon"


def test_live_job_adds_one_group_of_ranked_layers_above_the_original(gui_run):
    res, image, out = gui_run
    step = _step(res, "live")
    assert step["state"] == "done", step
    assert step["progress_count"] >= 2, "no PROGRESS reached the progress bar"
    assert step["max_gui_gap"] < 1.0
    names = [layer["name"] for layer in step["new_layers"]]
    assert names == ["PULSE face 1", "PULSE face 2", "PULSE face 3"]
    group = step["group"]
    assert group["name"] == f"PULSE run 1 — {BLOCK} px blocks" and group["type"] == "grouplayer"
    # bottom first inside the group: the best on top; masks only where Krita's API can fill one (5.2+)
    assert [c[:2] for c in group["children"]] == [[n, "paintlayer"] for n in names[::-1]]
    stack = [s for s in step["layers_after"] if s[1] != "selectionmask"]
    before = [s for s in step["layers_before"] if s[1] != "selectionmask"]
    assert [s[0] for s in stack] == [before[0][0], group["name"]]  # the group right above the original
    assert [layer["visible"] for layer in step["new_layers"]] == [True, False, False]
    for layer in step["new_layers"]:
        assert layer["bounds"] == list(RECT) and layer["space"] == ["RGBA", "U8"]
    assert step["original_unchanged"]
    # the next stroke goes to the visible best face, not to a hidden one
    assert step["active_after"] == ["PULSE face 1", "paintlayer", True], step["active_after"]
    assert step["status"].startswith("Daemon: connected"), step["status"]
    assert f"found {BLOCK} px blocks, 8×8 cells" in step["docker_message"], step["docker_message"]
    assert "imagined" in step["docker_message"]
    assert step["docker_tooltip"].startswith("PULSE face 1: error ")

    # re-mosaic invariant: the best face, averaged over the mosaic cells, gives the mosaic back
    x, y, w, h = RECT
    bgra = np.frombuffer((out / "layer0.raw").read_bytes(), np.uint8).reshape(h, w, 4)
    best = bgra[..., [2, 1, 0, 3]].astype(np.float64)
    mosaic = image[y:y + h, x:x + w].astype(np.float64)
    err = np.abs(block_means(best, BLOCK) - block_means(mosaic, BLOCK)).mean((0, 1))
    assert (err <= 2.0).all(), f"mean abs error per channel over mosaic cells: {err}"
    assert np.abs(best - mosaic).mean() > 1.0, "the best layer is just the mosaic: nothing was imagined"


def test_cancel_mid_job_leaves_the_image_alone(gui_run):
    step = _step(gui_run[0], "cancel")
    assert step["state"] == "cancelled", step
    # the Cancel button reached the daemon: the job stopped there, not just in the docker
    assert re.search(r"job \w+ cancelled", gui_run[0]["daemon_log"]), gui_run[0]["daemon_log"][-2000:]
    assert step["layers_after"] == step["layers_before"]
    assert step["seconds"] < 30
    assert step["max_gui_gap"] < 1.0


def test_one_undo_takes_the_whole_run_back_out(gui_run):
    """The group is built complete before it enters the image: one Edit ▸ Undo removes the run."""
    step = _step(gui_run[0], "undo")
    stacks = [[name for name, kind, _ in stack if kind != "selectionmask"] for stack in step["stacks"]]
    assert stacks[0] == ["Background", f"PULSE run 1 — {BLOCK} px blocks"]
    assert stacks[1:] == [["Background"]], stacks
    assert step["original_unchanged"]


def test_previews_show_small_in_the_docker(gui_run):
    assert gui_run[0]["preview_slot"] == {"visible": True, "size": [96, 96]}


def test_no_mosaic_asks_and_its_default_answer_changes_nothing(gui_run):
    step = _step(gui_run[0], "nomosaic_no")
    q = step["question"]
    assert q is not None, "the 'depixelate anyway?' box never appeared"
    assert q["text"] == "No mosaic found in the selection: depixelate anyway?"
    assert q["detail"].startswith("No mosaic found in the selection (") and "--force" not in q["detail"]
    assert q["default_is_no"] and not q["run_button_enabled"]
    assert step["state"] == "declined"
    assert step["docker_message"].startswith("Nothing was changed.")
    assert step["layers_after"] == step["layers_before"]


def test_no_mosaic_answered_yes_sends_it_again_forced_and_adds_the_run(gui_run):
    res = gui_run[0]
    step = _step(res, "nomosaic_yes")
    assert step["question"] is not None and step["state"] == "done", step
    assert step["group"] == "PULSE run 1 — no mosaic found"  # run 1: the undo step took the first run out
    assert step["faces"] == ["PULSE face 1", "PULSE face 2", "PULSE face 3"]
    # the daemon refused the unforced job, then ran the forced one (a new job id)
    assert res["daemon_log"].count("NO_MOSAIC") >= 2, res["daemon_log"][-3000:]


def test_docker_at_300_px_wraps_text_and_lists_each_face_with_error_seed_and_thumbnail(gui_run):
    step = _step(gui_run[0], "layout")
    assert step["docker_width"] == 300
    # nothing sticks out sideways (the horizontal scroll bar is off: it would be cut)
    assert step["content_min_width"] <= step["viewport_width"], step
    assert step["widest_child"] <= step["viewport_width"], step
    # the final message is shown whole, wrapped
    assert step["message_needs"] <= step["message_height"], step
    assert "no mosaic found" in step["message_text"] and "imagined" in step["message_text"]
    assert step["faces_visible"] and len(step["faces"]) == 3
    for i, text in enumerate(step["faces"], 1):
        name, detail = text.split("\n")
        assert name == f"PULSE face {i}" and re.fullmatch(r"error \S+ · seed \d+", detail), text
    assert max(step["face_line_widths"]) <= step["face_text_room"], step  # names and errors not elided
    assert step["faces_have_icons"] == [True] * 3
    assert step["faces_checked"] == [True, False, False]
    assert step["toggle_shows"] and step["toggle_hides"]
