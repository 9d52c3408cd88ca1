"""Krita plug-in logic (selection → request → layers) against a small mock of the `krita` module.

Fast and Krita-free; tests/editors/test_krita_adapter.py runs the same code inside real Krita.
The pixel layouts used here (BGRA for integer RGBA, RGBA for float, GA for grey) are Krita's, as observed
through Node.channels() in Krita 5.1.5; the real-Krita adapter test asserts them again.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "krita_mock"))
sys.path.insert(0, str(REPO / "krita_plugin"))

import krita  # noqa: E402  (the mock)
from pulse_depixelate import logic  # noqa: E402

from protocol.errors import ProtocolError  # noqa: E402
from protocol.messages import Candidate, ImageBlob, Result  # noqa: E402

assert Path(krita.__file__).parent.name == "krita_mock", "the real krita module must not shadow the mock"


def rgba_u8_image(w: int, h: int) -> list[tuple[int, int, int, int]]:
    """A distinct colour per pixel, so any swapped channel or misplaced row shows."""
    return [((7 * i) % 256, (13 * i + 50) % 256, (29 * i + 100) % 256, 200 + i % 56) for i in range(w * h)]


def to_krita_u8(pixels, fmt_model="RGBA") -> bytes:
    if fmt_model == "GRAYA":
        return bytes(v for r, g, b, a in pixels for v in (r, a))
    return bytes(v for r, g, b, a in pixels for v in (b, g, r, a))  # Krita stores blue first


def make_doc(w=24, h=20, model="RGBA", depth="U8", select=(4, 3, 16, 12)):
    doc = krita.Krita.instance().createDocument(w, h, "t", model, depth, "", 72.0)
    if select is not None:
        sel = krita.Selection()
        sel.select(*select, 255)
        doc.setSelection(sel)
    return doc


# ---------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize("model,depth", [("RGBA", "U8"), ("RGBA", "U16"), ("RGBA", "F16"), ("RGBA", "F32"),
                                         ("GRAYA", "U8"), ("GRAYA", "U16"), ("GRAYA", "F16"), ("GRAYA", "F32")])
def test_wire_layout_round_trip(model, depth):
    fmt = logic.pixel_format(model, depth)
    n = 6
    # protocol-side values, then Krita's layout built by hand from the documented channel order
    if fmt.dtype == "f32":
        vals = [((p * fmt.channels + c) % 9) / 8 for p in range(n) for c in range(fmt.channels)]
        wire = struct.pack(f"<{len(vals)}f", *vals)
        kfmt = "e" if depth == "F16" else "f"
    else:
        top = 255 if depth == "U8" else 65535
        vals = [(p * 37 + c * 1001) % top for p in range(n) for c in range(fmt.channels)]
        wire = struct.pack(f"<{len(vals)}{'B' if depth == 'U8' else 'H'}", *vals)
        kfmt = "B" if depth == "U8" else "H"
    kvals = []
    for p in range(n):
        px = vals[p * fmt.channels:(p + 1) * fmt.channels]
        if model == "RGBA" and depth in ("U8", "U16"):
            px = [px[2], px[1], px[0], px[3]]
        kvals += px
    kbytes = struct.pack(f"={len(kvals)}{kfmt}", *kvals)
    assert logic.krita_to_wire(kbytes, fmt) == wire  # k/8 is exact in f16 too
    assert logic.wire_to_krita(wire, fmt) == kbytes


def test_f16_is_widened_and_narrowed():
    fmt = logic.pixel_format("RGBA", "F16")
    k = struct.pack("=4e", 0.25, 0.5, 0.75, 1.0)
    wire = logic.krita_to_wire(k, fmt)
    assert fmt.dtype == "f32" and struct.unpack("<4f", wire) == (0.25, 0.5, 0.75, 1.0)
    assert logic.wire_to_krita(wire, fmt) == k


@pytest.mark.parametrize("model,depth", [("CMYKA", "U8"), ("LABA", "U16"), ("XYZA", "F32"), ("YCbCrA", "U8")])
def test_other_colour_models_are_refused_clearly(model, depth):
    doc = make_doc(model=model, depth=depth)
    with pytest.raises(logic.UnsupportedFormat, match=rf"{model}/{depth}.*Convert Image Color Space"):
        logic.build_request(doc, logic.Settings())


# ---------------------------------------------------------------------------------------------- selection


def test_no_selection_says_what_to_do():
    doc = make_doc(select=None)
    with pytest.raises(logic.NoSelection, match="select the pixelated face"):
        logic.build_request(doc, logic.Settings())


def test_selection_is_clipped_to_canvas_and_tiny_ones_refused():
    doc = make_doc(w=24, h=20, select=(18, 15, 10, 10))
    rect, mask = logic.selection_region(doc)
    assert rect == logic.Rect(18, 15, 6, 5) and mask is None
    doc = make_doc(select=(2, 2, 3, 3))
    with pytest.raises(logic.NoSelection, match="3×3"):
        logic.selection_region(doc)


def test_soft_selection_travels_as_a_mask():
    doc = make_doc(select=(4, 4, 8, 8))
    doc.selection().select(6, 6, 2, 2, 128)
    rect, mask = logic.selection_region(doc)
    assert rect == logic.Rect(4, 4, 8, 8)
    assert mask is not None and len(mask) == 64 and mask[2 * 8 + 2] == 128 and mask[0] == 255
    req = logic.build_request(doc, logic.Settings())
    blob = req.mask_blob()
    assert (blob.width, blob.height, blob.channels, blob.dtype, bytes(blob.data)) == (8, 8, 1, "u8", mask)


def test_settings_are_checked_and_sent_as_the_contract_says():
    from protocol.job import JobSettings, ParamError

    s = logic.Settings(candidates=2, steps=30, seed=7, block=4, model="ffhq-256")
    assert s.params() == JobSettings(candidates=2, steps=30, seed=7, block=4, model="ffhq-256").to_wire()
    for name, bad in (("candidates", logic.Settings(candidates=0)), ("steps", logic.Settings(steps=0)),
                      ("block", logic.Settings(block=-1))):
        with pytest.raises(ParamError) as info:
            bad.check()
        assert info.value.param == name and info.value.code == "BAD_PARAMS"
    with pytest.raises(logic.PluginError, match="source"):
        logic.Settings(source="elsewhere").check()


def test_a_daemon_with_narrower_ranges_refuses_before_anything_is_read():
    from protocol.job import ParamError, narrowed

    doc = make_doc()
    with pytest.raises(ParamError) as info:
        logic.build_request(doc, logic.Settings(steps=500), spec=narrowed(steps=(1, 200)))
    assert "Search steps must be between 1 and 200, not 500" in logic.user_message(info.value)


# ---------------------------------------------------------------------------------------------- request → layers


def fake_result(req: logic.Request, k: int, model="tiny-32") -> Result:
    """K candidates: the request's own wire pixels with channel values shifted by the rank."""
    base = bytes(req.image_blob().data)
    cands = []
    for i in range(k):
        data = bytes((v + 10 * i) % 256 for v in base)
        cands.append(Candidate(ImageBlob(req.rect.w, req.rect.h, req.fmt.channels, req.fmt.dtype, data),
                               seed=100 + i, downscale_error=1.3e-3 * (i + 1), eps_reached=i == 0, steps=50))
    return Result(job_id="j", candidates=cands, model=model,
                  analysis={"block": 4, "phase": [0, 0], "rect": [4, 0, 8, 12], "detected": True, "method": "ilo"})


@pytest.mark.parametrize("model", ["RGBA", "GRAYA"])
def test_request_reads_active_layer_in_protocol_order_and_layers_land_above_it(model):
    w, h = 24, 20
    doc = make_doc(w, h, model=model)
    bg = doc.activeNode()
    image = rgba_u8_image(w, h)
    bg.setPixelData(to_krita_u8(image, model), 0, 0, w, h)
    top = doc.createNode("Above", "paintlayer")
    doc.rootNode().addChildNode(top, None)
    before = {n.name(): n.pixelData(0, 0, w, h) for n in doc.topLevelNodes()}

    req = logic.build_request(doc, logic.Settings(candidates=3, steps=20, seed=5))
    assert req.rect == logic.Rect(4, 3, 16, 12) and req.mask is None and req.source == "layer"
    blob = req.image_blob()
    region = [image[(3 + j) * w + 4 + i] for j in range(12) for i in range(16)]
    want = bytes(v for r, g, b, a in region for v in ((r, g, b, a) if model == "RGBA" else (r, a)))
    assert (blob.width, blob.height, blob.channels, blob.dtype) == (16, 12, 4 if model == "RGBA" else 2, "u8")
    assert bytes(blob.data) == want

    outcome = logic.plan_layers(req, fake_result(req, 3))
    pasted = logic.apply_outcome(req, outcome, krita.Krita.instance().documents())
    new = pasted.faces
    names = [n.name() for n in doc.topLevelNodes()]
    assert names == ["Background", "PULSE run 1 — 4 px blocks", "Above"]
    assert [n.name() for n in pasted.group.childNodes()] == ["PULSE face 3", "PULSE face 2", "PULSE face 1"]
    assert [n.visible() for n in new] == [True, False, False]
    assert doc.activeNode() is new[0]  # the visible best face, never a hidden one
    assert pasted.summary == "4 px blocks, 2×3 cells" and not pasted.masked  # Krita 5.1: no mask from a script
    assert doc.refreshed == 1
    # the best layer holds candidate 1 exactly at the selection, transparent elsewhere
    best = new[0]
    assert logic.krita_to_wire(best.pixelData(4, 3, 16, 12), req.fmt) == bytes(fake_result(req, 1).candidates[0].image.data)
    assert not any(best.pixelData(0, 0, w, 3)) and not any(best.pixelData(0, 15, w, 5))
    for node in doc.topLevelNodes():
        if node.name() in before:
            assert node.pixelData(0, 0, w, h) == before[node.name()], node.name()
    assert "not a recovery" in outcome.layers[0].comment
    notes = json.loads(doc.annotation("pulse_depixelate"))["layers"]
    assert [notes[str(n.uniqueId())]["name"] for n in new] == ["PULSE face 1", "PULSE face 2", "PULSE face 3"]
    assert all("not a recovery" in v["comment"] and v["model"] == "tiny-32" for v in notes.values())
    assert "PULSE face 2: error 2.6e-3" in notes[str(pasted.group.uniqueId())]["comment"]
    text = logic.done_message(pasted, outcome)
    assert "PULSE run 1 — 4 px blocks: found 4 px blocks, 2×3 cells" in text and "add a transparency mask" in text
    assert logic.candidates_text(pasted, outcome).splitlines()[0] == "PULSE face 1: error 1.3e-3, seed 100"
    # the docker's face list: name over error and seed, with a small picture of the candidate itself
    assert logic.face_label("PULSE face 1", outcome.layers[0]) == "PULSE face 1\nerror 1.3e-3 · seed 100"
    tw, th, thumb = outcome.layers[0].thumb
    assert (tw, th) == (16, 12) and len(thumb) == 16 * 12 * 4
    cand = bytes(fake_result(req, 1).candidates[0].image.data)
    px = cand[:4] if model == "RGBA" else bytes([cand[0]] * 3 + [cand[1]])
    assert thumb[:4] == px


def test_a_second_run_is_its_own_group_above_the_first_with_distinct_names():
    doc = make_doc()
    req = logic.build_request(doc, logic.Settings(candidates=2))
    logic.apply_outcome(req, logic.plan_layers(req, fake_result(req, 2)), krita.Krita.instance().documents())
    second = logic.apply_outcome(req, logic.plan_layers(req, fake_result(req, 2)), krita.Krita.instance().documents())
    assert [n.name() for n in doc.topLevelNodes()] == ["Background", "PULSE run 1 — 4 px blocks",
                                                       "PULSE run 2 — 4 px blocks"]
    assert [n.name() for n in second.faces] == ["PULSE face 1 (run 2)", "PULSE face 2 (run 2)"]


def test_with_krita_5_2s_api_each_face_gets_its_transparency_mask(monkeypatch):
    doc = make_doc()
    monkeypatch.setattr(doc, "createTransparencyMask", lambda name: doc.createNode(name, "transparencymask"),
                        raising=False)
    req = logic.build_request(doc, logic.Settings(candidates=2))
    outcome = logic.plan_layers(req, fake_result(req, 2))
    pasted = logic.apply_outcome(req, outcome, krita.Krita.instance().documents(), krita.Selection)
    assert pasted.masked and "Paint a face's transparency mask" in logic.done_message(pasted, outcome)
    r = req.rect
    for face in pasted.faces:
        (mask,) = face.childNodes()
        assert mask.type() == "transparencymask"
        assert mask.pixelData(r.x, r.y, r.w, r.h) == outcome.mask
    # opaque over the mosaic (x 4..11 of the 16×12 region), falling off around it
    row = list(outcome.mask[5 * 16:6 * 16])
    assert row[4:12] == [255] * 8 and 0 < row[3] < 255 and row[0] < row[3]


def test_linear_light_layers_are_solved_in_srgb_and_pasted_back_linear():
    doc = make_doc(model="RGBA", depth="U16")
    doc.activeNode().setColorSpace("RGBA", "U16", "sRGB-elle-V2-g10.icc")
    req = logic.build_request(doc, logic.Settings(candidates=1))
    assert req.profile == "sRGB-elle-V2-g10.icc" and req.work == "sRGB-elle-V2-srgbtrc.icc"
    assert ("pulse conversion", "sRGB-elle-V2-g10.icc", "sRGB-elle-V2-srgbtrc.icc") in doc.conversions
    (new,) = logic.apply_outcome(req, logic.plan_layers(req, fake_result(req, 1)), krita.Krita.instance().documents()).faces
    # pasted in the sRGB-curve profile, then converted to the layer's own linear profile
    assert doc.conversions[-1] == (new.name(), "sRGB-elle-V2-srgbtrc.icc", "sRGB-elle-V2-g10.icc")
    assert new.colorProfile() == "sRGB-elle-V2-g10.icc"
    # sRGB-curve images go as they are
    assert logic.build_request(make_doc(depth="U16"), logic.Settings()).work is None


def test_projection_source_uses_the_image_format_and_the_layer_keeps_the_layer_space():
    doc = make_doc(model="RGBA", depth="U16")
    bg = doc.activeNode()
    bg.setPixelData(bytes(range(256)) * (24 * 20 * 8 // 256) + bytes(24 * 20 * 8 % 256), 0, 0, 24, 20)
    req = logic.build_request(doc, logic.Settings(source="projection"))
    assert req.fmt.dtype == "u16" and len(bytes(req.image_blob().data)) == 16 * 12 * 8
    # a GRAYA layer inside an RGBA image: its own space is read and the candidates keep it
    grey = doc.createNode("grey", "paintlayer")
    grey.setColorSpace("GRAYA", "U8", "Gray-D50-elle-V2-srgbtrc.icc")
    doc.rootNode().addChildNode(grey, None)
    doc.setActiveNode(grey)
    req = logic.build_request(doc, logic.Settings(candidates=2))
    assert req.fmt.label == "GRAYA/U8" and req.profile == "Gray-D50-elle-V2-srgbtrc.icc"
    new = logic.apply_outcome(req, logic.plan_layers(req, fake_result(req, 2)), krita.Krita.instance().documents()).faces
    assert [(n.colorModel(), n.colorDepth()) for n in new] == [("GRAYA", "U8")] * 2


def test_the_group_lands_on_top_when_the_layer_was_deleted_meanwhile():
    doc = make_doc()
    top = doc.createNode("Top", "paintlayer")
    doc.rootNode().addChildNode(top, None)
    req = logic.build_request(doc, logic.Settings(candidates=3))
    doc.activeNode().remove()  # the user deletes the source layer while the daemon works
    pasted = logic.apply_outcome(req, logic.plan_layers(req, fake_result(req, 3)), krita.Krita.instance().documents())
    assert [n.name() for n in doc.topLevelNodes()] == ["Top", "PULSE run 1 — 4 px blocks"]
    assert [n.name() for n in pasted.group.childNodes()] == ["PULSE face 3", "PULSE face 2", "PULSE face 1"]


def test_a_failure_while_pasting_leaves_the_document_as_it_was(monkeypatch):
    doc = make_doc()
    req = logic.build_request(doc, logic.Settings(candidates=3))
    outcome = logic.plan_layers(req, fake_result(req, 3))
    before = [n.name() for n in doc.topLevelNodes()]

    def refuse(*_):
        raise RuntimeError("annotation refused")

    monkeypatch.setattr(doc, "setAnnotation", refuse)  # fails after every layer was added
    with pytest.raises(RuntimeError, match="refused"):
        logic.apply_outcome(req, outcome, krita.Krita.instance().documents())
    assert [n.name() for n in doc.topLevelNodes()] == before


def test_wrong_sized_result_and_closed_document_are_refused():
    doc = make_doc()
    req = logic.build_request(doc, logic.Settings())
    bad = Result(job_id="j", candidates=[Candidate(ImageBlob(2, 2, 4, "u8", bytes(16)), 1, 0.1, False, 1)])
    with pytest.raises(ProtocolError, match="returned") as info:
        logic.plan_layers(req, bad)
    assert "install-plugin krita" in logic.user_message(info.value)
    outcome = logic.plan_layers(req, fake_result(req, 1))
    with pytest.raises(logic.PluginError, match="closed"):
        logic.apply_outcome(req, outcome, [])


def test_masks_are_not_a_source():
    doc = make_doc()
    mask = doc.createNode("m", "transparencymask")
    doc.setActiveNode(mask)
    with pytest.raises(logic.PluginError, match="mask"):
        logic.build_request(doc, logic.Settings())


# ---------------------------------------------------------------------------------------------- with the real daemon


def test_messages_for_client_and_daemon_errors():
    from protocol.errors import DaemonNotRunning, JobFailed, ProtocolError, VersionMismatch

    assert "Press Start" in logic.user_message(DaemonNotRunning())
    assert "protocol version" in logic.user_message(VersionMismatch("server speaks 2", [2]))
    assert "same user" in logic.user_message(ProtocolError("wrong token", "BAD_TOKEN"))
    msg = logic.user_message(JobFailed("the selection is 3×3 pixels: too small to hold a face", "BAD_REGION"))
    assert msg.startswith("The selection is 3×3 pixels: too small to hold a face.") and "select the whole" in msg.lower()
    assert "(ODD_CODE): what" in logic.user_message(JobFailed("what", "ODD_CODE"))
    assert logic.user_message(logic.NoSelection("select it")) == "select it"
    assert "failed: KeyError" in logic.user_message(KeyError("x")) and "Krita's log" in logic.user_message(KeyError("x"))


@pytest.mark.parametrize("dtype, size", [("u8", 1), ("u16", 2), ("f32", 4)])
def test_thumbnails_are_small_8_bit_rgba_whatever_the_depth(dtype, size):
    w, h = 200, 100
    if dtype == "u8":
        data = bytes([10, 20, 30, 255]) * (w * h)
    elif dtype == "u16":
        data = struct.pack("<4H", 10 * 257, 20 * 257, 30 * 257, 65535) * (w * h)
    else:
        data = struct.pack("<4f", 10 / 255, 20 / 255, 30 / 255, 1.5) * (w * h)  # out of range: clamped
    tw, th, thumb = logic.thumbnail_rgba8(data, w, h, 4, dtype)
    assert (tw, th) == (48, 24) and thumb == bytes([10, 20, 30, 255]) * (48 * 24)
    assert logic.thumbnail_rgba8(bytes([7, 200]) * 4, 2, 2, 2, "u8") == (2, 2, bytes([7, 7, 7, 200]) * 4)


def test_no_mosaic_asks_once_and_yes_sends_the_same_region_forced():
    from protocol.errors import JobFailed

    doc = make_doc()
    req = logic.build_request(doc, logic.Settings(candidates=2, steps=5))
    refusal = JobFailed("no mosaic found in the selection (no grid of flat blocks in it: it looks like an "
                        "unpixelated picture); select the pixelated area, or pass --force / choose 'depixelate "
                        "anyway' to paint a face over it", "NO_MOSAIC")
    question, detail = logic.force_question(refusal, req)
    assert question == "No mosaic found in the selection: depixelate anyway?" and "--force" not in detail
    assert logic.force_question(JobFailed("too small", "BAD_REGION"), req) is None
    forced = logic.forced_request(req)
    assert forced.params == {**req.params, "force": True} and req.params["force"] is False
    assert forced.pixels is req.pixels and forced.rect == req.rect and forced.anchor_id == req.anchor_id
    assert logic.force_question(refusal, forced) is None  # a forced job is never asked about again
    assert logic.declined_message(detail) == ("Nothing was changed. No mosaic found in the selection (no grid of "
                                              "flat blocks in it: it looks like an unpixelated picture): select the "
                                              "pixelated area and try again.")


def test_dead_daemon_is_a_clear_message(tmp_path):
    from daemon_fixture import free_tcp_port

    doc = make_doc()
    req = logic.build_request(doc, logic.Settings(endpoint=f"tcp://127.0.0.1:{free_tcp_port()}"))
    with pytest.raises(Exception) as info:
        logic.run_job(req, timeout=1.0)
    text = logic.user_message(info.value, req.endpoint)
    assert "Press Start" in text and "not running" in text and text.count(req.endpoint) == 1
