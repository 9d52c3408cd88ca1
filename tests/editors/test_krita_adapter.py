"""The Krita plug-in's pixel/layer adapter inside real Krita (`kritarunner`, offscreen, no daemon): Debian 12's
5.1.5 on the host and Debian 13's 5.2.9 in the chroot, with the same assertions.

Checks what the fast mock test takes for granted: Krita's channel order in each supported colour space,
reading a selection of a real image in U8/U16/F16/F32 RGBA and GRAYA, pasting candidates as layers above
the layer (names, order, visibility, bounds, colour space, exact round trip), a transparency mask on each face
where Krita's API can fill one (5.2), the original layer untouched, and clear refusals for other colour models
and for no selection.
"""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest
from krita_env import RUNNERS, SCRIPTS, install_plugin, krita_env, krita_runner, mosaic_image, write_png

pytestmark = pytest.mark.krita

RECT = (8, 8, 32, 32)
SRGB, GREY = "sRGB-elle-V2-srgbtrc.icc", "Gray-D50-elle-V2-srgbtrc.icc"
SRGB_LINEAR, GREY_LINEAR = "sRGB-elle-V2-g10.icc", "Gray-D50-elle-V2-g10.icc"
# (model, depth, profile, png): same tone curve as the PNG, so expected values are the PNG's, rescaled.
SPACES = [("RGBA", "U8", SRGB, "rgb"), ("RGBA", "U16", SRGB, "rgb"), ("RGBA", "F16", SRGB, "rgb"),
          ("RGBA", "F32", SRGB, "rgb"), ("GRAYA", "U8", GREY, "grey"), ("GRAYA", "U16", GREY, "grey"),
          ("GRAYA", "F32", GREY, "grey"),
          # Krita's defaults for deep images are linear light: the plug-in sends them with the sRGB curve
          ("RGBA", "U16", SRGB_LINEAR, "rgb"), ("RGBA", "F32", SRGB_LINEAR, "rgb"),
          ("GRAYA", "F16", GREY_LINEAR, "grey")]


@pytest.fixture(scope="module", params=RUNNERS)
def adapter_run(request, tmp_path_factory):
    runner = krita_runner(request.param)
    runner.require("kritarunner")
    root = tmp_path_factory.mktemp(f"krita-adapter-{runner.name}")
    scripts = root / "scripts"  # inside the test's folder: the chroot's Krita sees it at the same path
    scripts.mkdir()
    shutil.copy(SCRIPTS / "pulse_adapter_check.py", scripts)
    env = krita_env(root, {"QT_QPA_PLATFORM": "offscreen", "PYTHONPATH": str(scripts)})
    pykrita = install_plugin(env).parent
    images = {"rgb": mosaic_image(64, 48, RECT, 4), "grey": mosaic_image(64, 48, RECT, 4, grey=True)}
    pngs = {kind: str(write_png(root / f"{kind}.png", image)) for kind, image in images.items()}
    out = root / "out"
    out.mkdir()
    cfg = {"pykrita": str(pykrita), "rect": list(RECT), "out": str(out),
           "spaces": [[m, d, p, pngs[kind]] for m, d, p, kind in SPACES]}
    (root / "cfg.json").write_text(json.dumps(cfg))
    t0 = time.monotonic()
    proc = runner.run(["kritarunner", "-s", "pulse_adapter_check", "-f", "main", str(root / "cfg.json")],
                      env, share=root, timeout=240)
    res_file = out / "result.json"  # kritarunner exits 0 even when the script raised: read what it wrote
    assert res_file.is_file(), f"kritarunner wrote no result (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    res = json.loads(res_file.read_text())
    assert "error" not in res, res.get("error")
    print(f"Krita {res.get('version')} ({runner.name}) adapter runs: {time.monotonic() - t0:.1f}s")
    res["runner"] = runner.name
    return res, images, out


def test_chroot_runs_krita_5_2_and_only_5_2_fills_masks(adapter_run):
    results, _, _ = adapter_run
    if results["runner"] == "chroot":
        assert results["version"].startswith("5.2."), results["version"]
    assert results["api_fills_masks"] == (tuple(map(int, results["version"].split(".")[:2])) >= (5, 2))
    if not results["api_fills_masks"]:
        # Krita 5.1: a mask from createNode("transparencymask") cannot be written: the reason it gets none
        assert results["created_mask_holds"] == [], results["created_mask_holds"]


def test_krita_channel_layouts_match_the_plugin(adapter_run):
    results, _, _ = adapter_run
    layouts = results["layouts"]
    assert set(layouts) == {"RGBA/U8", "RGBA/U16", "RGBA/F16", "RGBA/F32",
                            "GRAYA/U8", "GRAYA/U16", "GRAYA/F16", "GRAYA/F32"}
    for label, info in layouts.items():
        # protocol channel i (R, G, B, A / G, A) sits at Krita channel index order[i]
        assert info["assumed"] == info["order"], (label, info["krita"])
        assert info["size"] == {"U8": 1, "U16": 2, "F16": 2, "F32": 4}[label.split("/")[1]]


@pytest.mark.parametrize("space", SPACES, ids=lambda s: f"{s[0]}-{s[1]}-{s[2].split('-')[-1][:-4]}")
def test_selection_pixels_and_pasted_layers(adapter_run, space):
    model, depth, profile, kind = space
    results, images, out = adapter_run
    label = f"{model}-{depth}-{profile}"
    case = results["cases"][label]
    linear = profile in (SRGB_LINEAR, GREY_LINEAR)
    assert case["work"] == ({"RGBA": SRGB, "GRAYA": GREY}[model] if linear else None)
    assert case["space"] == [model, depth, profile]
    x, y, w, h = RECT
    channels = 4 if model == "RGBA" else 2
    assert case["request"] == {"rect": list(RECT), "dtype": {"U8": "u8", "U16": "u16"}.get(depth, "f32"),
                               "channels": channels, "mask": False}

    # the pixels read, in protocol order, equal the PNG's (rescaled to the depth)
    region = images[kind][y:y + h, x:x + w].astype(np.float64) / 255
    want = region if model == "RGBA" else region[..., [0, 3]]
    dtype = {"U8": "<u1", "U16": "<u2"}.get(depth, "<f4")
    got = np.frombuffer((out / f"{label}.wire").read_bytes(), dtype).reshape(h, w, channels).astype(np.float64)
    got /= {"U8": 255, "U16": 65535}.get(depth, 1)
    assert np.abs(got - want).max() <= 1.01 / 255, f"{model}/{depth}: channels swapped or misread"

    # one group right above the original, three masked layers inside it, best on top and visible
    names = ["PULSE face 1", "PULSE face 2", "PULSE face 3"]
    stack = [s for s in case["stack"] if s[1] != "selectionmask"]
    assert [s[:2] for s in stack] == [["Background", "paintlayer"], ["PULSE run 1 — 4 px blocks", "grouplayer"]]
    assert case["group"]["children"] == [[n, "paintlayer"] for n in names[::-1]]
    assert [layer["name"] for layer in case["layers"]] == names
    assert [layer["visible"] for layer in case["layers"]] == [True, False, False]
    # (which layer is active needs a view: the GUI test checks it)
    for layer in case["layers"]:
        assert layer["bounds"] == list(RECT)
        assert layer["space"] == [model, depth, profile]
        # exact, or within the precision of Krita's two conversions (sRGB curve -> linear -> sRGB curve)
        assert layer["roundtrip"] <= (2e-3 if linear else 0), f"{layer['name']}: pasted pixels differ from the candidate"
        if results["api_fills_masks"]:  # Krita 5.2: each face's mask holds the planned coverage
            assert layer["children"] == ["transparencymask"] and layer["mask_is_plan"], layer
        else:  # Krita 5.1: a transparency mask cannot be filled from a script, so none is added
            assert layer["children"] == [], layer
    assert case["masked"] == results["api_fills_masks"]
    assert case["notes"] == names  # provenance annotation, one entry per new layer
    assert case["original_unchanged"]
    assert case["projection_same"]  # "Whole image (merged)" reads the projection, same layout


def test_second_run_gets_its_own_group_and_names(adapter_run):
    results, _, out = adapter_run
    second = results["cases"][f"RGBA-U8-{SRGB}"]["second"]
    assert second["group"] == "PULSE run 2 — 4 px blocks"
    assert second["faces"] == ["PULSE face 1 (run 2)", "PULSE face 2 (run 2)", "PULSE face 3 (run 2)"]
    # bottom first: the new run above the earlier one, so its best face is the one that shows
    assert [n for n in second["stack"] if n.startswith(("PULSE", "Back"))] == [
        "Background", "PULSE run 1 — 4 px blocks", "PULSE run 2 — 4 px blocks"]
    # the mask: opaque over the mosaic (4 px in from the selection's edge), a band falling off outside it
    x, y, w, h = RECT
    mask = np.frombuffer((out / "mask.raw").read_bytes(), np.uint8).reshape(h, w)
    assert (mask[4:h - 4, 4:w - 4] == 255).all()
    assert 0 < mask[h // 2, 0] < mask[h // 2, 2] < 255
    if results["api_fills_masks"]:
        # the mask decides what shows: the visible face's projection has the mask as its alpha (its pixels are
        # opaque there), across the band, the mosaic and the band on the other side
        case = results["cases"][f"RGBA-U8-{SRGB}"]
        (shown,), (row,) = case["shown_alpha"], case["mask_row"]
        assert row == list(mask[h // 2]) and max(abs(a - b) for a, b in zip(shown, row)) <= 1, (shown, row)


def test_other_models_and_missing_selection_are_refused(adapter_run):
    results, _, _ = adapter_run
    assert "CMYKA/U8" in results["cmyk"] and "Convert Image Color Space" in results["cmyk"]
    assert "select the pixelated face" in results["nosel"]
