"""Selection → request → layers, without Qt: the part of the plug-in that a test can run without Krita.

Everything here talks to Krita only through the objects it is handed (Document, Node, Selection), calling
the libkis methods by name, so a small mock of those objects exercises the same code paths as real Krita.
Nothing here imports `krita` or PyQt5. The settings, messages and layer plan are the editor kit's in
`protocol` (stdlib-only modules, imported at the top); the protocol client is imported lazily (it needs
pyzmq + msgpack, which may be missing in a bundled Python: the docker explains that instead of failing to load).

Krita's pixel layouts (checked in Krita 5.1.5 through `Node.channels()`; see tests/krita_scripts):
    RGBA  U8/U16  B G R A   (KoBgrU8/U16 traits: the integer RGB spaces store blue first)
    RGBA  F16/F32 R G B A
    GRAYA any     G A
all in the machine's byte order. The protocol wants R G B A / G A, little-endian, float in [0, 1];
F16 has no protocol dtype and travels as f32.
"""

from __future__ import annotations

import dataclasses
import json
import struct
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .client_path import ensure_client_path

ensure_client_path()  # the `protocol` package the installer copied next to the plug-in (stdlib-only modules here)
from protocol import editor_settings as kit  # noqa: E402
from protocol import layers as names  # noqa: E402
from protocol.editor_messages import Editor, code_of  # noqa: E402
from protocol.editor_messages import user_message as kit_message  # noqa: E402
from protocol.job import JobSettings, Param  # noqa: E402
from protocol.layers import Rect  # noqa: E402

PLUGIN_ID = "pulse_depixelate"  # docker objectName, action name, settings group, kritarc key suffix
CLIENT_NAME = "krita"
PLUGIN_VERSION = "0.1.0"  # sent in HELLO


class PluginError(Exception):
    """A problem the user can fix; the message is shown in the docker as is."""


class NoSelection(PluginError):
    pass


class UnsupportedFormat(PluginError):
    pass


# ---------------------------------------------------------------------------------------------- formats


@dataclass(frozen=True)
class PixelFormat:
    model: str  # Krita colour model id: "RGBA", "GRAYA"
    depth: str  # Krita depth id: "U8", "U16", "F16", "F32"
    channels: int  # protocol channels: 4 RGBA, 2 GA
    dtype: str  # protocol dtype: "u8" | "u16" | "f32"
    krita_size: int  # bytes per sample inside Krita (F16: 2, sent as 4)
    order: tuple[int, ...]  # order[i] = Krita channel index of protocol channel i

    @property
    def krita_pixel_size(self) -> int:
        return self.channels * self.krita_size

    @property
    def label(self) -> str:
        return f"{self.model}/{self.depth}"


_BGRA = (2, 1, 0, 3)  # protocol R <- Krita[2], G <- Krita[1], B <- Krita[0], A <- Krita[3]
_RGBA = (0, 1, 2, 3)
_GA = (0, 1)
_FORMATS: dict[tuple[str, str], PixelFormat] = {
    (m, d): PixelFormat(m, d, len(o), t, s, o)
    for m, d, t, s, o in [
        ("RGBA", "U8", "u8", 1, _BGRA),
        ("RGBA", "U16", "u16", 2, _BGRA),
        ("RGBA", "F16", "f32", 2, _RGBA),
        ("RGBA", "F32", "f32", 4, _RGBA),
        ("GRAYA", "U8", "u8", 1, _GA),
        ("GRAYA", "U16", "u16", 2, _GA),
        ("GRAYA", "F16", "f32", 2, _GA),
        ("GRAYA", "F32", "f32", 4, _GA),
    ]
}


def pixel_format(model: str, depth: str) -> PixelFormat:
    """The layout of a Krita colour space, or a refusal that says what to do."""
    fmt = _FORMATS.get((model, depth))
    if fmt is None:
        raise UnsupportedFormat(
            f"PULSE works on RGB/Alpha or Grayscale/Alpha images; this one is {model}/{depth}. "
            "Convert it with Image ▸ Convert Image Color Space… (e.g. RGB/Alpha, 8-bit) and try again."
        )
    return fmt


def _swizzle(data: bytes, channels: int, size: int, order: Sequence[int]) -> bytes:
    """Reorder interleaved channels with strided byte slices (C speed, no numpy in Krita's Python)."""
    if tuple(order) == tuple(range(channels)):
        return bytes(data)
    stride = channels * size
    src, out = memoryview(data), bytearray(len(data))
    for dst_c, src_c in enumerate(order):
        for b in range(size):
            out[dst_c * size + b :: stride] = src[src_c * size + b :: stride]
    return bytes(out)


def _byteswap(data: bytes, size: int) -> bytes:
    """Native → little-endian (or back) for big-endian machines; a no-op everywhere Krita ships."""
    if sys.byteorder == "little" or size == 1:
        return bytes(data)
    out = bytearray(len(data))
    for b in range(size):
        out[b::size] = data[size - 1 - b :: size]
    return bytes(out)


def krita_to_wire(data: bytes, fmt: PixelFormat) -> bytes:
    """Krita pixel bytes (native layout) → protocol bytes (R G B A / G A, little-endian)."""
    if fmt.depth == "F16":  # no f16 on the wire: widen to f32
        n = len(data) // 2
        data = struct.pack(f"<{n}f", *struct.unpack(f"={n}e", data))
        size = 4
    else:
        data, size = _byteswap(data, fmt.krita_size), fmt.krita_size
    return _swizzle(data, fmt.channels, size, fmt.order)


def wire_to_krita(data: bytes, fmt: PixelFormat) -> bytes:
    """Protocol bytes → Krita pixel bytes; the inverse of krita_to_wire (the swizzles are involutions)."""
    wire_size = 4 if fmt.depth == "F16" else fmt.krita_size
    data = _swizzle(data, fmt.channels, wire_size, fmt.order)
    if fmt.depth == "F16":
        n = len(data) // 4
        values = struct.unpack(f"<{n}f", data)
        try:
            return struct.pack(f"={n}e", *values)
        except OverflowError:  # beyond half's range (±65504): saturate like a float→half conversion would
            return struct.pack(f"={n}e", *(min(max(v, -65504.0), 65504.0) for v in values))
    return _byteswap(data, fmt.krita_size)


# The face generators were trained on sRGB-encoded images. Krita's default profiles for U16/F16/F32 images
# are linear-light ("…-g10.icc"): such pixels are converted to the same primaries with the sRGB tone curve
# (by Krita itself, via a detached temporary layer) before they are sent, and the candidates back after.
WORK_PROFILES = {"RGBA": "sRGB-elle-V2-srgbtrc.icc", "GRAYA": "Gray-D50-elle-V2-srgbtrc.icc"}
_LINEAR_HINTS = ("g10", "linear")


def work_profile(fmt: PixelFormat, profile: str) -> str | None:
    """The sRGB-curve profile to solve in, or None when the pixels can be sent as they are."""
    name = (profile or "").lower()
    return WORK_PROFILES[fmt.model] if any(h in name for h in _LINEAR_HINTS) else None


def _convert_region(doc: Any, pixels: bytes, rect: Rect, fmt: PixelFormat, src: str, dst: str) -> bytes:
    """Krita's own colour conversion of a region, on a layer that is never added to the image."""
    tmp = doc.createNode("pulse conversion", "paintlayer")
    tmp.setColorSpace(fmt.model, fmt.depth, src)
    tmp.setPixelData(pixels, rect.x, rect.y, rect.w, rect.h)
    tmp.setColorSpace(fmt.model, fmt.depth, dst)
    return bytes(tmp.pixelData(rect.x, rect.y, rect.w, rect.h))


# ---------------------------------------------------------------------------------------------- geometry


MIN_SIDE = 4  # below this there is no face to find, and the mosaic detector has nothing to work on


def selection_region(doc: Any) -> tuple[Rect, bytes | None]:
    """Bounds of the document's selection clipped to the canvas, and its mask (None when fully selected).

    The mask is Krita's selection pixel data: one byte per pixel, 0 = not selected, 255 = selected.
    """
    sel = doc.selection()
    if sel is None:
        raise NoSelection("Nothing is selected: select the pixelated face (e.g. with the rectangle tool) first.")
    bounds = Rect(int(sel.x()), int(sel.y()), int(sel.width()), int(sel.height()))
    rect = bounds.intersect(Rect(0, 0, int(doc.width()), int(doc.height())))
    if rect.empty:
        raise NoSelection("The selection is empty or outside the canvas: select the pixelated face first.")
    if rect.w < MIN_SIDE or rect.h < MIN_SIDE:
        raise NoSelection(f"The selection is only {rect.w}×{rect.h} pixels: select the whole pixelated face.")
    mask = bytes(sel.pixelData(rect.x, rect.y, rect.w, rect.h))
    if not any(mask):
        raise NoSelection("The selection is empty: select the pixelated face first.")
    if mask.count(255) == len(mask):
        mask = None  # a plain rectangle: no mask on the wire
    return rect, mask


# ---------------------------------------------------------------------------------------------- settings


SOURCES = ("layer", "projection")  # the active layer's own pixels | the merged image


@dataclass
class Settings:
    """What the docker's fields hold; the action uses the same object. The job's fields are the contract's
    (`kit.FIELDS`: candidates, steps, seed, block, model), with its defaults; source and endpoint are Krita's."""

    candidates: int = kit.field("candidates").default
    steps: int = kit.field("steps").default
    seed: int = kit.field("seed").default  # -1 = random
    block: int = kit.field("block").default  # 0 = detect the mosaic block size
    model: str = kit.field("model").default  # "" = the daemon's own
    source: str = "layer"  # "layer" (the active layer's own pixels) | "projection" (the merged image)
    endpoint: str = ""  # "" = the daemon's per-user default (or $PULSE_ENDPOINT)

    def job(self, spec: dict[str, Param] | None = None) -> JobSettings:
        """The job's settings checked against `spec` (the daemon's, else the contract): ParamError if not."""
        return kit.job_settings({name: getattr(self, name) for name in kit.FIELDS}, spec)

    def params(self, spec: dict[str, Param] | None = None) -> dict[str, Any]:
        return self.job(spec).to_wire()

    def check(self, spec: dict[str, Param] | None = None) -> None:
        self.job(spec)
        if self.source not in SOURCES:
            raise PluginError(f"unknown pixel source {self.source!r}")


# ---------------------------------------------------------------------------------------------- request


_LAYER_TYPES = ("paintlayer", "grouplayer", "filelayer", "clonelayer", "vectorlayer", "filllayer", "filterlayer")


@dataclass
class Request:
    """Everything captured on the GUI thread when the user clicks; the worker thread only reads it."""

    doc: Any  # krita.Document the result goes back into
    anchor_id: Any  # uniqueId() of the active layer: the new layers go above it
    rect: Rect
    fmt: PixelFormat
    profile: str  # ICC profile name of the pixels read: the new layers keep it
    work: str | None  # profile the pixels were converted to for the solver (None: sent as read)
    pixels: bytes  # Krita layout
    mask: bytes | None
    params: dict[str, Any]
    endpoint: str | None
    source: str

    def image_blob(self) -> Any:
        ensure_client_path()
        from protocol.messages import ImageBlob

        return ImageBlob(self.rect.w, self.rect.h, self.fmt.channels, self.fmt.dtype,
                         krita_to_wire(self.pixels, self.fmt))

    def mask_blob(self) -> Any:
        if self.mask is None:
            return None
        ensure_client_path()
        from protocol.messages import ImageBlob

        return ImageBlob(self.rect.w, self.rect.h, 1, "u8", self.mask)


def build_request(doc: Any, settings: Settings, node: Any = None,
                  spec: dict[str, Param] | None = None) -> Request:
    """Read the selection and the pixels under it (GUI thread: these are Krita calls).

    `node` defaults to the document's active layer (a document without a view, as in kritarunner, has none);
    `spec`: the daemon's ranges from its last WELCOME (default: the contract's).
    """
    settings.check(spec)
    if doc is None:
        raise PluginError("Open an image first.")
    node = node if node is not None else doc.activeNode()
    if node is None:
        raise PluginError("Select a layer first.")
    if node.type() not in _LAYER_TYPES:  # masks have no pixels of their own to depixelate
        raise PluginError(f"The active node is a {node.type()}: select a layer instead of a mask.")
    rect, mask = selection_region(doc)
    if settings.source == "projection":
        fmt, profile = pixel_format(doc.colorModel(), doc.colorDepth()), doc.colorProfile()
        pixels = bytes(doc.pixelData(rect.x, rect.y, rect.w, rect.h))
    else:
        fmt, profile = pixel_format(node.colorModel(), node.colorDepth()), node.colorProfile()
        # A paint layer's own pixels; other layers (groups, file/vector layers) only have a projection.
        read = node.pixelData if node.type() == "paintlayer" else node.projectionPixelData
        pixels = bytes(read(rect.x, rect.y, rect.w, rect.h))
    if len(pixels) != rect.w * rect.h * fmt.krita_pixel_size:
        raise PluginError(f"Krita returned {len(pixels)} bytes for a {rect.w}×{rect.h} {fmt.label} region.")
    work = work_profile(fmt, profile)
    if work is not None:
        pixels = _convert_region(doc, pixels, rect, fmt, profile, work)
    return Request(doc=doc, anchor_id=node.uniqueId(), rect=rect, fmt=fmt, profile=profile, work=work,
                   pixels=pixels, mask=mask,
                   params=settings.params(spec), endpoint=settings.endpoint or None, source=settings.source)


# ---------------------------------------------------------------------------------------------- result


@dataclass
class LayerPlan:
    """One candidate, converted back to Krita's layout (worker thread) and ready to paste (GUI thread)."""

    face: names.Face  # rank (1 = lowest downscale error), seed, error, eps reached, steps
    comment: str
    pixels: bytes
    thumb: tuple[int, int, bytes] = (0, 0, b"")  # width, height, RGBA 8-bit: the docker's list icon

    @property
    def rank(self) -> int:
        return self.face.rank

    @property
    def visible(self) -> bool:
        return self.face.rank == 1

    @property
    def seed(self) -> int:
        return self.face.seed

    @property
    def error(self) -> float:
        return self.face.error


@dataclass
class Outcome:
    layers: list[LayerPlan]
    model: str
    analysis: dict = field(default_factory=dict)
    mask: bytes = b""  # the faces' transparency mask over the request's rect, one byte per pixel


def plan_layers(request: Request, result: Any) -> Outcome:
    """Check the daemon's candidates against the request and convert them (pure Python: worker thread)."""
    r, fmt = request.rect, request.fmt
    patches = names.checked_patches(result, r.w, r.h, fmt.channels, fmt.dtype)
    model = str(result.model)
    layers = [LayerPlan(face=face, comment=names.layer_comment(face, model), pixels=wire_to_krita(wire, fmt),
                        thumb=thumbnail_rgba8(wire, r.w, r.h, fmt.channels, fmt.dtype))
              for face, wire in zip(names.faces_of(result), patches)]
    analysis = dict(getattr(result, "analysis", {}) or {})
    mask = names.blend_mask(r.w, r.h, names.mosaic_rect(analysis, r.w, r.h), names.band_width(analysis),
                            request.mask)
    return Outcome(layers=layers, model=model, analysis=analysis, mask=mask)


THUMB_SIDE = 48


def _sample_u8(data: bytes, offset: int, dtype: str) -> int:
    if dtype == "u8":
        return data[offset]
    if dtype == "u16":
        return data[offset + 1]  # little-endian: the high byte is the 8-bit value (within rounding)
    value = struct.unpack_from("<f", data, offset)[0]
    return 0 if not value > 0 else 255 if value >= 1 else int(value * 255 + 0.5)


def thumbnail_rgba8(data: bytes, width: int, height: int, channels: int, dtype: str,
                    side: int = THUMB_SIDE) -> tuple[int, int, bytes]:
    """A small RGBA 8-bit picture of a wire image (R G B A / G A), nearest-neighbour, at most `side` px.

    Pure Python over at most side² pixels, so any region size costs the same; the candidates are on the
    sRGB curve on the wire (linear layers are converted before solving), which is what a screen shows."""
    if width <= 0 or height <= 0:
        return 0, 0, b""
    scale = max(width, height) / side if max(width, height) > side else 1.0
    tw, th = max(1, round(width / scale)), max(1, round(height / scale))
    size = {"u8": 1, "u16": 2}.get(dtype, 4)
    out = bytearray()
    for ty in range(th):
        y = min(height - 1, int((ty + 0.5) * scale))
        for tx in range(tw):
            x = min(width - 1, int((tx + 0.5) * scale))
            base = (y * width + x) * channels * size
            values = [_sample_u8(data, base + c * size, dtype) for c in range(channels)]
            grey = channels <= 2
            rgb = values[:1] * 3 if grey else values[:3]
            alpha = values[-1] if channels in (2, 4) else 255
            out += bytes(rgb + [alpha])
    return tw, th, bytes(out)


def find_node(root: Any, unique_id: Any) -> Any:
    """Depth-first search for a node by uniqueId() (the active layer may have changed meanwhile)."""
    stack = list(root.childNodes())
    while stack:
        node = stack.pop()
        if node.uniqueId() == unique_id:
            return node
        stack.extend(node.childNodes())
    return None


def _all_names(root: Any) -> list[str]:
    names, stack = [], list(root.childNodes())
    while stack:
        node = stack.pop()
        names.append(node.name())
        stack.extend(node.childNodes())
    return names


@dataclass
class Pasted:
    """What one run added: its group and the face layers inside it, best first."""

    group: Any
    faces: list[Any]
    group_name: str
    summary: str  # what the daemon found: "12 px blocks, 7×9 cells" / "no mosaic found"
    masked: bool = False  # each face has its transparency mask (Krita 5.2's API; 5.1 cannot fill one)


NO_MASK_NOTE = ("No transparency mask: this Krita's scripting API cannot fill one (Krita 5.2's can). To blend "
                "the face, add one yourself (Layer ▸ New ▸ Transparency Mask).")


def apply_outcome(request: Request, outcome: Outcome, documents: Sequence[Any],
                  new_selection: Callable[[], Any] | None = None) -> Pasted:
    """Paste one group, "PULSE run N — B px blocks", above the request's layer (GUI thread).

    Inside it, top to bottom: face 1 (best, visible), face 2, … each a paint layer with a transparency mask
    (opaque over the mosaic, a feathered band around it) where Krita's API can fill one (see `_add_mask`;
    `new_selection` makes an empty krita.Selection). The group is built complete before it enters the
    image, so adding it is a single step of the document's history (Krita 5.1's scripting API has no undo
    macro; every addChildNode on a node in the image is a step of its own). The best face is left active:
    the next stroke goes to the layer that shows. Nothing else changes: no pixels, visibility or selection.
    """
    doc = request.doc
    if not any(d == doc for d in documents):
        raise PluginError("The image was closed before the result arrived.")
    root = doc.rootNode()
    anchor = find_node(root, request.anchor_id)
    parent = anchor.parentNode() if anchor is not None else root
    if parent is None:
        parent = root
    run = names.plan_run([p.face for p in outcome.layers], outcome.model, outcome.analysis, _all_names(root))
    group = doc.createGroupLayer(run.group_name)
    faces = [_make_layer(doc, request, plan, layer.name) for plan, layer in zip(outcome.layers, run.layers)]
    masked = all([_add_mask(doc, face, request.rect, outcome.mask, new_selection) for face in faces])
    if not masked:  # the docker says so too (its message and each face's tooltip)
        print(f"PULSE Depixelate: {run.group_name}: {NO_MASK_NOTE}", file=sys.stderr)
    for node in reversed(faces):  # each on top of the previous: the best ends on top
        group.addChildNode(node, None)
    # Above the anchor and the earlier runs stacked right on it, so the new best face is the one that shows;
    # without an anchor (deleted during the job) on top of the stack.
    parent.addChildNode(group, _above_earlier_runs(parent, anchor))
    try:
        _record_provenance(doc, group, faces, run)
    except Exception:  # a face without its mask is still a result: paste it, log why
        group.remove()  # layers without their "imagined" notes are worse than none
        raise
    doc.setActiveNode(faces[0])
    doc.refreshProjection()
    return Pasted(group=group, faces=faces, group_name=run.group_name, summary=run.summary, masked=masked)


def _above_earlier_runs(parent: Any, anchor: Any) -> Any:
    """The node to insert above: `anchor`, or the last of the PULSE run groups sitting directly on it."""
    if anchor is None:
        return None
    siblings = parent.childNodes()  # bottom first
    ids = [n.uniqueId() for n in siblings]
    if anchor.uniqueId() not in ids:
        return anchor
    i = ids.index(anchor.uniqueId())
    while i + 1 < len(siblings) and siblings[i + 1].type() == "grouplayer" and \
            names.next_run_number([siblings[i + 1].name()]) > 1:  # named "PULSE run N …"
        i += 1
    return siblings[i]


def _make_layer(doc: Any, request: Request, plan: LayerPlan, name: str) -> Any:
    r = request.rect
    node = doc.createNode(name, "paintlayer")
    model, depth = request.fmt.model, request.fmt.depth
    space = (model, depth, request.work or request.profile)
    if (node.colorModel(), node.colorDepth(), node.colorProfile()) != space:
        node.setColorSpace(*space)  # the active layer may be in another space than the image
    node.setPixelData(plan.pixels, r.x, r.y, r.w, r.h)
    if request.work is not None:
        node.setColorSpace(model, depth, request.profile)  # back to the layer's linear-light profile
    node.setVisible(plan.visible)
    return node


def _add_mask(doc: Any, node: Any, rect: Rect, mask: bytes, new_selection: Callable[[], Any] | None) -> bool:
    """A transparency mask holding `mask` over `rect` on `node`; False where Krita's API cannot make one.

    Krita 5.1's scripting API cannot fill a transparency mask: createNode("transparencymask") makes one
    without a selection (its pixelData is empty, setPixelData does nothing), and createTransparencyMask /
    TransparencyMask.setSelection arrived in Krita 5.2. So on 5.1 the faces come without masks and the
    docker says how to add one.
    """
    if not mask or new_selection is None or not hasattr(doc, "createTransparencyMask"):
        return False
    try:
        selection = new_selection()
        selection.setPixelData(mask, rect.x, rect.y, rect.w, rect.h)
        blend = doc.createTransparencyMask("blend mask")
        blend.setSelection(selection)
        node.addChildNode(blend, None)
    except Exception:
        traceback.print_exc()
        return False
    return True


def candidates_text(pasted: Pasted, outcome: Outcome) -> str:
    """The run's candidate list with their errors (the docker message's tooltip)."""
    return "\n".join(f"{node.name()}: error {names.format_error(plan.error)}, seed {plan.seed}"
                     for node, plan in zip(pasted.faces, outcome.layers))


def face_label(name: str, plan: LayerPlan) -> str:
    """One line of the docker's face list: the layer's name over its error and seed (two short lines, so a
    300 px docker shows both whole)."""
    return f"{name}\nerror {names.format_error(plan.error)} · seed {plan.seed}"


def done_message(pasted: Pasted, outcome: Outcome) -> str:
    """What was found and made, how to compare and blend, and that the faces are invented."""
    # The group's name already says "no mosaic found"; a found mosaic gets its cell count too.
    found = "" if pasted.summary == "no mosaic found" else f": {names.found_text(pasted.summary)}"
    n = len(pasted.faces)
    blend = ("Paint a face's transparency mask to blend it." if pasted.masked else
             "To blend a face, add a transparency mask to it (this Krita's scripting API cannot).")
    return (f"{pasted.group_name}{found}. {n} face{'s' if n != 1 else ''} added, the best shown; tick a face "
            f"below to show it. {blend} {names.NOT_RECOVERED}")


ANNOTATION = PLUGIN_ID  # document annotation (saved in .kra) with each PULSE layer's provenance note


def _record_provenance(doc: Any, group: Any, faces: Sequence[Any], run: names.RunPlan) -> None:
    """Krita 5.1 layers have no comment field: the notes (imagined, not recovered; model, seed, error) go
    into one document annotation keyed by layer id, so they travel with the saved .kra."""
    try:
        notes = json.loads(bytes(doc.annotation(ANNOTATION)) or b"{}")
    except (ValueError, TypeError):
        notes = {}
    layers = notes.setdefault("layers", {})
    for node, layer in zip(faces, run.layers):
        layers[str(node.uniqueId())] = {**layer.meta, "name": node.name()}
    layers[str(group.uniqueId())] = {**run.meta, "name": group.name()}
    doc.setAnnotation(ANNOTATION, "PULSE Depixelate: notes on imagined faces (not recovered identities)",
                      json.dumps(notes, indent=1).encode("utf-8"))


KRITA = Editor(name="krita", title="PULSE Depixelate", start="press Start in the docker (or run `pulse-server run`)",
               force="answer Yes when asked “depixelate anyway?”", log="Krita's log")


def user_message(exc: BaseException, endpoint: str = "") -> str:
    """One message a user can act on, for what the plug-in, the client or the daemon can raise: the plug-in's
    own errors and missing modules here, everything with an error code from the kit's table (by code, so the
    docker needs no import of the possibly missing client). `endpoint`: the address tried."""
    if isinstance(exc, PluginError):
        return str(exc)
    if isinstance(exc, ImportError):
        from .client_path import dependency_help, missing_dependencies

        return dependency_help(missing_dependencies() or [getattr(exc, "name", None) or str(exc)])
    return kit_message(exc, KRITA, endpoint)


def force_question(exc: BaseException, request: Request) -> tuple[str, str] | None:
    """(question, detail) when the daemon refused the request for want of a mosaic and may be asked to paint
    anyway; None for every other failure (and for a request that was already forced)."""
    from protocol import no_mosaic

    return no_mosaic.question(exc) if no_mosaic.asks_to_force(exc, request.params) else None


def forced_request(request: Request) -> Request:
    """The same region and settings with `force: true`: what Yes to "depixelate anyway?" sends, as a new job."""
    from protocol import no_mosaic

    return dataclasses.replace(request, params=no_mosaic.forced(request.params))


def declined_message(question_detail: str) -> str:
    """The docker's line after No: the daemon's finding (the detail's first line) and that nothing changed."""
    finding = question_detail.split("\n", 1)[0].rstrip(".")
    return f"Nothing was changed. {finding}: select the pixelated area and try again."


def is_expected(exc: BaseException) -> bool:
    """A failure the user is told about plainly (no traceback in Krita's log): coded, the plug-in's, a module."""
    return code_of(exc) is not None or isinstance(exc, (PluginError, ImportError))


def run_job(request: Request, *, on_progress: Callable[[Any], None] | None = None,
            should_cancel: Callable[[], bool] | None = None,
            on_preview: Callable[[bytes], None] | None = None,
            on_accepted: Callable[[Any], None] | None = None,
            on_job_state: Callable[[Any], None] | None = None,
            on_welcome: Callable[[Any], None] | None = None, timeout: float = 10.0) -> Outcome:
    """Send the request to the daemon and plan the layers (worker thread: no Krita calls in here).

    The client checks the request's settings against the daemon's own ranges (its WELCOME, also given to
    `on_welcome`) before the pixels are sent: ParamError (BAD_PARAMS) names the field."""
    from protocol.client import PulseClient

    with PulseClient(request.endpoint, client_name=CLIENT_NAME, client_version=PLUGIN_VERSION,
                     timeout=timeout) as client:
        welcome = client.connect()
        if on_welcome is not None:
            on_welcome(welcome)
        result = client.run_job(request.image_blob(), request.mask_blob(), request.params,
                                on_progress=on_progress, should_cancel=should_cancel, on_preview=on_preview,
                                on_accepted=on_accepted, on_job_state=on_job_state)
    return plan_layers(request, result)
