"""Everything the GIMP plug-in decides, without GIMP: testable with plain Python.

`pulse-depixelate.py` is a thin adapter: it asks GIMP for numbers and bytes, hands them to the functions
here, and turns their answers back into GIMP calls. The settings, messages, progress text and layer plan
come from the editor kit in `protocol` (editor_settings, editor_messages, editor_progress, layers), which the
installer copies next to this file; what is left here is GIMP's own: its procedure arguments, pixel formats,
geometry and layer stack. Only stdlib-only `protocol` modules are imported at the top, so the plug-in's menu
entry registers even where pyzmq is missing (the client is imported when the procedure runs).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import editor_settings as kit
from protocol import layers
from protocol.editor_messages import Editor
from protocol.editor_messages import user_message as kit_message
from protocol.job import PARAMS, JobSettings

PROC_NAME = "python-fu-pulse-depixelate"
MENU_PATH = "<Image>/Filters/Enhance"
MENU_LABEL = "Depixelate Face (PULSE)…"
IMAGE_TYPES = "RGB*, GRAY*"
PARASITE_NAME = "pulse-depixelate"
CLIENT_NAME = "gimp"
PLUGIN_VERSION = "0.1.0"
# Babl format of the selection mask: the selection channel is linear coverage, 0 = not selected.
MASK_FORMAT = "Y u8"
HOW_TO_FORCE = f"call {PROC_NAME} with force TRUE"
QUESTION_TITLE = "No mosaic found — Depixelate Face (PULSE)"
DESCRIPTION = kit.DESCRIPTION
ADVANCED_LABEL = kit.ADVANCED_LABEL
GIMP = Editor(name="gimp", title="Depixelate Face (PULSE)",
              start="start it with `pulse-server run` (or once: `pulse-server install-autostart`)",
              force=HOW_TO_FORCE, log="GIMP's error console")
# Mnemonic letters the procedure dialog's own buttons use (Help, Reset, Cancel, OK, Load Saved Settings,
# Save Settings): a field must not take them.
RESERVED_MNEMONICS = "hrcols"


@dataclass(frozen=True)
class Arg:
    """One argument of the procedure: a job parameter of the contract, or the endpoint.

    GIMP registers the procedure without a daemon, so the ranges are the contract's declared ones; a daemon
    with narrower ones refuses a value before the job is sent (`check_against`)."""

    name: str
    kind: type
    label: str  # with its mnemonic ("_Faces to generate")
    blurb: str
    default: Any
    minimum: float | None = None
    maximum: float | None = None


ENDPOINT = "endpoint"
FORCE = "force"


def mnemonic_labels(labels: Sequence[str], reserved: str = RESERVED_MNEMONICS) -> list[str]:
    """Each label with a distinct mnemonic ("_"), none of `reserved`: a word's first letter where free, else
    the first free letter of the label."""
    taken, out = set(reserved.lower()), []
    for label in labels:
        starts = [i for i, ch in enumerate(label) if ch.isalpha() and (i == 0 or label[i - 1] == " ")]
        others = [i for i, ch in enumerate(label) if ch.isalpha() and i not in starts]
        pick = next((i for i in starts + others if label[i].lower() not in taken), None)
        if pick is None:
            out.append(label)
            continue
        taken.add(label[pick].lower())
        out.append(label[:pick] + "_" + label[pick:])
    return out


def _args() -> tuple[Arg, ...]:
    shown = kit.fields()  # the everyday job parameters, in the contract's order
    force = PARAMS[FORCE]
    labels = mnemonic_labels([f.label for f in shown] + [kit.ENDPOINT_LABEL, force.label])
    args = [Arg(f.name, f.kind, label, f.help, f.default, f.low, f.high) for f, label in zip(shown, labels)]
    args.append(Arg(ENDPOINT, str, labels[len(shown)], kit.ENDPOINT_HELP, ""))
    # Scripts only (the dialog asks instead): paint faces even where the daemon finds no mosaic.
    args.append(Arg(FORCE, bool, labels[-1], f"{force.help} (interactive runs ask instead)", force.default))
    return tuple(args)


ARGS: tuple[Arg, ...] = _args()
DIALOG_FIELDS: tuple[str, ...] = kit.FIELDS  # shown up front; the endpoint under "Advanced"; force: scripts only


class UserError(Exception):
    """A problem the user can fix; shown as a GIMP message, the image stays untouched."""


# ----------------------------------------------------------------------------------------- pixel formats


@dataclass(frozen=True)
class PixelFormat:
    babl: str  # Babl format name for Gegl.Buffer.get/set
    dtype: str  # protocol dtype: u8 | u16 | f32
    channels: int
    itemsize: int

    @property
    def layer_type_name(self) -> str:
        """Name of the Gimp.ImageType for a new layer holding these pixels."""
        base = "GRAY" if self.channels <= 2 else "RGB"
        return f"{base}A_IMAGE" if self.channels in (2, 4) else f"{base}_IMAGE"


def pixel_format(precision: str, is_gray: bool, has_alpha: bool) -> PixelFormat:
    """The Babl format to read a drawable in, keeping its bit depth where the protocol can carry it.

    `precision` is a Gimp.Precision name or nick ("U16_LINEAR", "u8-non-linear"). We always ask Babl for
    perceptual (gamma) values ("R'G'B'"): face generators are trained on sRGB pictures, and reading a linear
    drawable this way is an exact conversion done by Babl, not by us. u8 and u16 keep their depth; half, u32,
    float and double travel as 32-bit float.
    """
    depth = precision.replace("-", "_").split("_")[0].lower()
    if depth == "u8":
        babl_type, dtype, size = "u8", "u8", 1
    elif depth == "u16":
        babl_type, dtype, size = "u16", "u16", 2
    elif depth in ("u32", "half", "float", "double"):
        babl_type, dtype, size = "float", "f32", 4
    else:
        raise UserError(f"unsupported image precision {precision!r}")
    model = ("Y'A" if has_alpha else "Y'") if is_gray else ("R'G'B'A" if has_alpha else "R'G'B'")
    channels = (1 if is_gray else 3) + (1 if has_alpha else 0)
    return PixelFormat(f"{model} {babl_type}", dtype, channels, size)


# ----------------------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Region:
    """The rectangle we send: image coordinates (x, y) and its origin in the drawable's own coordinates."""

    x: int
    y: int
    width: int
    height: int
    src_x: int
    src_y: int
    has_selection: bool


def plan_region(
    drawable_offsets: tuple[int, int],
    drawable_size: tuple[int, int],
    selection: tuple[bool, int, int, int, int],
) -> Region:
    """Selection bounds ∩ drawable extent; no selection → the whole drawable.

    `selection` is (non_empty, x1, y1, x2, y2) as Gimp.Selection.bounds returns it (x2/y2 exclusive).
    """
    ox, oy = drawable_offsets
    w, h = drawable_size
    non_empty, x1, y1, x2, y2 = selection
    if not non_empty:
        x1, y1, x2, y2 = ox, oy, ox + w, oy + h
    left, top = max(x1, ox), max(y1, oy)
    right, bottom = min(x2, ox + w), min(y2, oy + h)
    if right <= left or bottom <= top:
        raise UserError(
            "The selection does not overlap the active layer. Select the pixelated face on this layer "
            "(or select nothing to use the whole layer) and try again."
        )
    return Region(left, top, right - left, bottom - top, left - ox, top - oy, bool(non_empty))


def mask_or_none(mask: bytes) -> bytes | None:
    """A fully selected rectangle needs no mask frame; an all-zero one is an empty selection."""
    if not mask or mask.count(0) == len(mask):
        raise UserError("The selection is empty inside the active layer: select the pixelated face first.")
    return None if mask.count(255) == len(mask) else mask


# ----------------------------------------------------------------------------------------- request


@dataclass(frozen=True)
class Settings:
    """The job's settings (the contract's JobSettings) and where to send it."""

    job: JobSettings
    endpoint: str = ""

    def params(self) -> dict[str, Any]:
        """The SUBMIT parameters."""
        return self.job.to_wire()


def settings_from(get: Callable[[str], Any], interactive: bool = False) -> Settings:
    """Read the procedure config (`config.get_property`) into Settings, checked against the contract.

    A value out of range is refused (ParamError, code BAD_PARAMS), never clamped: the daemon would refuse it
    the same way. (Registered without a daemon, the arguments carry the contract's declared ranges; the client
    checks the settings against the connected daemon's own before it sends anything.)
    `force` counts for scripts only: the dialog does not show it, so a value left in GIMP's saved settings by
    an earlier script must not silently paint over a region the user would have been asked about.
    """
    values = {arg.name: get(arg.name) for arg in ARGS if arg.name in PARAMS}
    values[FORCE] = False if interactive else bool(get(FORCE))
    return Settings(kit.job_settings(values), str(get(ENDPOINT) or "").strip())


def asks_before_forcing(run_mode: str) -> bool:
    """Whether a no-mosaic refusal is a question (a person started the run) or an error (a script).

    `run_mode` is the Gimp.RunMode's nick: "interactive", "noninteractive" or "with-last-vals" (Filters ▸
    Repeat, also a person at the GUI)."""
    return run_mode != "noninteractive"


# ----------------------------------------------------------------------------------------- which layer


@dataclass(frozen=True)
class Source:
    """The layer to depixelate, and why it is not the active one (empty when it is)."""

    index: int  # into the candidates below the PULSE result; -1: the active layer itself
    note: str = ""


def pick_source(active_name: str, active_is_result: bool, below: Sequence[tuple[str, bool, bool]]) -> Source:
    """Where to read the photo from when the active layer may be one of our own results.

    `below` lists the active result's siblings under it, top down, as (name, is a PULSE result, is a group).
    Depixelating a PULSE face again would solve for its own imagined pixels (after Ctrl+Y the active layer
    is "PULSE face 1"), so a result hands over to the first photo layer beneath it, and says so.
    """
    if not active_is_result:
        return Source(-1)
    for i, (name, is_result, is_group) in enumerate(below):
        if is_result:
            continue  # an earlier run's group sits between this one and the photo
        if is_group:
            raise UserError(f"“{active_name}” is a PULSE result and the layer beneath it, “{name}”, is a group: "
                            "select the photo layer to depixelate.")
        return Source(i, f"“{active_name}” is a PULSE result: depixelating the layer beneath it, “{name}”")
    raise UserError(f"“{active_name}” is a PULSE result and there is no photo layer beneath it: select the "
                    "photo layer to depixelate.")


def insert_position(is_result: Sequence[bool], photo: int) -> int:
    """Where a run's group goes among the photo's siblings (`is_result`, top down): above the photo and above
    the earlier runs stacked right on it, so the new best face is the one that shows."""
    position = photo
    while position > 0 and is_result[position - 1]:
        position -= 1
    return position


# ----------------------------------------------------------------------------------------- result → layers


@dataclass
class LayerPlan:
    name: str
    visible: bool
    x: int
    y: int
    width: int
    height: int
    data: bytes = field(repr=False)
    mask: bytes = field(repr=False, default=b"")  # one byte of coverage per pixel (MASK_FORMAT)
    error: float = float("nan")  # the candidate's downscale error
    seed: int = 0
    comment: str = ""
    parasite: bytes = b""


@dataclass
class PastePlan:
    """One group per run, named for it, with one masked layer per candidate (best first)."""

    run: int
    group_name: str
    group_parasite: bytes
    layers: list[LayerPlan]
    summary: str  # what the daemon found: "12 px blocks, 7×9 cells" / "no mosaic found"
    lines: list[str] = field(default_factory=list)  # one per face: "PULSE face 1: error 1.3e-3, seed 10"


def _json(meta: dict) -> bytes:
    return json.dumps(meta, sort_keys=True, default=str).encode("utf-8")


def plan_paste(result: Any, region: Region, fmt: PixelFormat, existing_names: Sequence[str],
               selection: bytes | None) -> PastePlan:
    """The group and its layers for a protocol Result, checked against the region we sent (ResultError).

    `existing_names` are all layer names in the image (run number, names GIMP would otherwise suffix "#1");
    `selection` the selection's coverage over the region (None: all of it), which clips the layer masks.
    """
    patches = layers.checked_patches(result, region.width, region.height, fmt.channels, fmt.dtype)
    analysis = dict(getattr(result, "analysis", None) or {})
    run = layers.plan_run(layers.faces_of(result), str(result.model), analysis, existing_names)
    rect = layers.mosaic_rect(analysis, region.width, region.height)
    mask = layers.blend_mask(region.width, region.height, rect, layers.band_width(analysis), selection)
    plans = [LayerPlan(name=face.name, visible=face.visible, x=region.x, y=region.y, width=region.width,
                       height=region.height, data=data, mask=mask, error=face.face.error, seed=face.face.seed,
                       comment=face.comment, parasite=_json(face.meta))
             for face, data in zip(run.layers, patches)]
    return PastePlan(run=run.run, group_name=run.group_name, group_parasite=_json(run.meta), layers=plans,
                     summary=run.summary, lines=[layers.face_line(face) for face in run.layers])


def done_message(plan: PastePlan, source_note: str = "") -> str:
    """What the user reads when the layers are in: what was found, each face's layer, error and seed (one line
    each: GIMP's message box wraps long lines mid-name), how to blend them, and that they are invented."""
    faces = "\n".join(f"  {line}{' (shown)' if p.visible else ''}" for line, p in zip(plan.lines, plan.layers))
    note = f"{source_note}.\n" if source_note else ""
    count = f"{len(plan.layers)} face" + ("s" if len(plan.layers) != 1 else "")
    return (f"{note}PULSE run {plan.run}: {layers.found_text(plan.summary)}; imagined {count} in "
            f"“{plan.group_name}”:\n{faces}\nToggle a face's eye to compare; paint its layer mask to blend it. "
            f"{layers.NOT_RECOVERED}")


# ----------------------------------------------------------------------------------------- messages


def missing_dependency_message(exc: BaseException) -> str:
    name = getattr(exc, "name", None) or str(exc)
    return (
        f"Depixelate Face (PULSE) needs the Python module '{name}', which GIMP's Python cannot import "
        f"({exc}). On Linux install python3-zmq and python3-msgpack with your package manager; on Windows and "
        "macOS re-run `pulse-server install-plugin gimp`, which bundles them with the plug-in."
    )


def user_message(exc: BaseException, endpoint: str = "") -> str:
    """What to tell the user for any failure (the image is left untouched); `endpoint`: the address tried.

    The plug-in's own errors and a missing pyzmq here; everything with an error code from the kit's table."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, ImportError):
        return missing_dependency_message(exc)
    return kit_message(exc, GIMP, endpoint)
