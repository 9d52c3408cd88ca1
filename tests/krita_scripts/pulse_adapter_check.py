"""Runs inside `kritarunner -s pulse_adapter_check -f main CONFIG.json` (real Krita, no window, no daemon).

Drives the installed plug-in's logic module against real libkis objects: the channel layouts it assumes, reading
a selection's pixels in every supported depth, pasting candidates as layers, refusing other colour models.
kritarunner exits 0 even when this raises, so everything (including a traceback) goes to the JSON result
that the pytest side reads; raw pixel buffers go to files next to it.
"""

import json
import sys
import traceback
from pathlib import Path


def _channels(node):
    return [(c.name(), c.position(), c.channelSize()) for c in node.channels()]


def _max_diff(a, b, dtype):
    """Largest difference between two wire buffers, in [0, 1] units."""
    from array import array

    code, scale = {"u8": ("B", 255.0), "u16": ("H", 65535.0), "f32": ("f", 1.0)}[dtype]
    xa, xb = array(code, a), array(code, b)
    return max(abs(p - q) for p, q in zip(xa, xb)) / scale


def run(cfg, out_dir):
    from krita import Krita, Selection

    sys.path.insert(0, cfg["pykrita"])
    from pulse_depixelate import client_path, logic

    client_path.ensure_client_path()  # the installed protocol client, as the docker does
    from protocol.messages import Candidate, ImageBlob, Result

    app = Krita.instance()
    res = {"layouts": {}, "cases": {}, "version": app.version()}

    # 0. Why Krita 5.1 gets no masks: a transparency mask made with createNode (the only way before 5.2's
    #    createTransparencyMask) has no selection behind it, so writing its pixels does nothing.
    doc = app.createDocument(8, 8, "probe", "RGBA", "U8", "", 72.0)
    layer = doc.createNode("probe layer", "paintlayer")
    doc.rootNode().addChildNode(layer, None)
    probe = doc.createNode("probe mask", "transparencymask")
    layer.addChildNode(probe, None)
    probe.setPixelData(bytes([128]) * 16, 0, 0, 4, 4)
    res["created_mask_holds"] = list(bytes(probe.pixelData(0, 0, 4, 4)))
    res["api_fills_masks"] = hasattr(doc, "createTransparencyMask")
    doc.close()

    # 1. Krita's channel order per colour space vs. what the plug-in assumes.
    names = {"RGBA": ["Red", "Green", "Blue", "Alpha"], "GRAYA": ["Gray", "Alpha"]}
    for (model, depth), fmt in sorted(logic._FORMATS.items()):
        doc = app.createDocument(4, 4, "layout", model, depth, "", 72.0)
        chans = _channels(doc.topLevelNodes()[0])
        by_name = {n: pos // s for n, pos, s in chans}
        res["layouts"][fmt.label] = {"krita": chans, "assumed": [by_name.get(n) for n in names[model]],
                                     "order": list(fmt.order), "size": chans[0][2]}
        doc.close()

    # 2. Read a selection of a real image (a PNG the test wrote) in each depth and paste fake candidates.
    x, y, w, h = cfg["rect"]
    for model, depth, profile, png in cfg["spaces"]:
        label = f"{model}-{depth}-{profile}"
        doc = app.openDocument(png)
        if model != "RGBA" or depth != "U8":
            doc.setColorSpace(model, depth, profile)
        doc.waitForDone()
        bg = doc.topLevelNodes()[0]
        before = bytes(bg.pixelData(0, 0, doc.width(), doc.height()))
        sel = Selection()
        sel.select(x, y, w, h, 255)
        doc.setSelection(sel)
        case = {"space": [doc.colorModel(), doc.colorDepth(), doc.colorProfile()]}
        req = logic.build_request(doc, logic.Settings(candidates=3), node=bg)
        wire = bytes(req.image_blob().data)
        # one opaque-or-not normal layer: the merged image is that layer's pixels
        proj = logic.build_request(doc, logic.Settings(source="projection"), node=bg)
        case["projection_same"] = bytes(proj.image_blob().data) == wire and proj.fmt == req.fmt
        (out_dir / f"{label}.wire").write_bytes(wire)
        case["request"] = {"rect": [req.rect.x, req.rect.y, req.rect.w, req.rect.h], "dtype": req.fmt.dtype,
                           "channels": req.fmt.channels, "mask": req.mask is not None}
        # candidate i = the request's own pixels shifted by i pixels: every layer distinct and checkable
        ps = len(wire) // (w * h)
        cands = [Candidate(ImageBlob(w, h, req.fmt.channels, req.fmt.dtype, wire[i * ps:] + wire[:i * ps]),
                           seed=i, downscale_error=0.001 * (i + 1), eps_reached=False, steps=1) for i in range(3)]
        analysis = {"block": 4, "phase": [0, 0], "rect": [4, 4, w - 8, h - 8], "detected": True, "method": "ilo"}
        outcome = logic.plan_layers(req, Result(job_id="t", candidates=cands, model="fake", analysis=analysis))
        pasted = logic.apply_outcome(req, outcome, app.documents(), Selection)
        created = pasted.faces
        case["masked"] = pasted.masked
        doc.waitForDone()
        case["stack"] = [[n.name(), n.type(), bool(n.visible())] for n in doc.topLevelNodes()]
        case["group"] = {"name": pasted.group.name(), "type": pasted.group.type(),
                         "children": [[n.name(), n.type()] for n in pasted.group.childNodes()]}
        case["active"] = doc.activeNode().name() if doc.activeNode() is not None else None
        case["layers"] = []
        for i, node in enumerate(created):
            b = node.bounds()
            raw = bytes(node.pixelData(x, y, w, h))
            if req.work:  # the layer holds linear light: compare on the sRGB curve the candidate was made on
                raw = logic._convert_region(doc, raw, req.rect, req.fmt, req.profile, req.work)
            back = logic.krita_to_wire(raw, req.fmt)
            masks = [m for m in node.childNodes() if m.type() == "transparencymask"]
            mask = bytes(masks[0].pixelData(x, y, w, h)) if masks else b""
            if masks and node.visible() and label == "RGBA-U8-" + cfg["spaces"][0][2]:
                # what the mask does: the layer's projection is its pixels with the mask's coverage as alpha
                # (visible layers only: Krita does not compute a hidden layer's projection)
                row = h // 2
                shown = bytes(node.projectionPixelData(x, y + row, w, 1))[3::4]
                case.setdefault("shown_alpha", []).append(list(shown))
                case.setdefault("mask_row", []).append(list(mask[row * w:(row + 1) * w]))
            case["layers"].append({"name": node.name(), "visible": bool(node.visible()),
                                   "bounds": [b.x(), b.y(), b.width(), b.height()],
                                   "space": [node.colorModel(), node.colorDepth(), node.colorProfile()],
                                   "roundtrip": _max_diff(back, bytes(cands[i].image.data), req.fmt.dtype),
                                   "children": [c.type() for c in node.childNodes()],
                                   "mask_is_plan": mask == outcome.mask})
        if label == "RGBA-U8-" + cfg["spaces"][0][2]:
            # a second run on the same layer: numbered on, its names distinct from the first run's
            second = logic.apply_outcome(req, logic.plan_layers(req, Result(job_id="t2", candidates=cands, model="fake",
                                                                             analysis=analysis)), app.documents())
            doc.waitForDone()
            case["second"] = {"group": second.group.name(), "faces": [n.name() for n in second.faces],
                              "stack": [n.name() for n in doc.topLevelNodes()]}
            (out_dir / "mask.raw").write_bytes(outcome.mask)
        case["work"] = req.work
        notes = json.loads(bytes(doc.annotation("pulse_depixelate")) or b"{}").get("layers", {})
        case["notes"] = [notes.get(n.uniqueId().toString(), notes.get(str(n.uniqueId()), {})).get("name")
                         for n in created]
        case["original_unchanged"] = bytes(bg.pixelData(0, 0, doc.width(), doc.height())) == before
        res["cases"][label] = case
        doc.setModified(False)
        doc.close()

    # 3. Other colour models are refused with a message that says what to do; no selection likewise.
    doc = app.createDocument(16, 16, "cmyk", "CMYKA", "U8", "", 72.0)
    sel = Selection()
    sel.select(0, 0, 8, 8, 255)
    doc.setSelection(sel)
    try:
        logic.build_request(doc, logic.Settings(), node=doc.topLevelNodes()[0])
        res["cmyk"] = "accepted"
    except logic.UnsupportedFormat as exc:
        res["cmyk"] = str(exc)
    doc.close()
    doc = app.createDocument(16, 16, "nosel", "RGBA", "U8", "", 72.0)
    try:
        logic.build_request(doc, logic.Settings(), node=doc.topLevelNodes()[0])
        res["nosel"] = "accepted"
    except logic.NoSelection as exc:
        res["nosel"] = str(exc)
    doc.close()
    return res


def main(args):
    cfg_path = Path(args[0])
    cfg = json.loads(cfg_path.read_text())
    out_dir = Path(cfg["out"])
    try:
        res = run(cfg, out_dir)
    except BaseException:  # reported to the test, which fails with it
        res = {"error": traceback.format_exc()}
    (out_dir / "result.json").write_text(json.dumps(res, indent=1))
