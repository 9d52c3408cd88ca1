"""Everything the GIMP plug-in decides, without GIMP: testable with plain Python.

`pulse-depixelate.py` is a thin adapter: it asks GIMP for numbers and bytes, hands them to the functions
here, and turns their answers back into GIMP calls. This module imports only the standard library and (lazily,
inside functions) the `protocol` package that the installer copies next to it, so the plug-in's menu entry
registers even where pyzmq is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

PROC_NAME = "python-fu-pulse-depixelate"
MENU_PATH = "<Image>/Filters/Enhance"
MENU_LABEL = "Depixelate Face (PULSE)…"
IMAGE_TYPES = "RGB*, GRAY*"
PARASITE_NAME = "pulse-depixelate"
CLIENT_NAME = "gimp"
PLUGIN_VERSION = "0.1.0"
# Babl format of the selection mask: the selection channel is linear coverage, 0 = not selected.
MASK_FORMAT = "Y u8"


@dataclass(frozen=True)
class IntArg:
    """One integer argument of the procedure (and field of its dialog)."""

    name: str
    label: str
    blurb: str
    minimum: int
    maximum: int
    default: int


# Plain labels whose mnemonics clash neither with each other nor with the dialog's buttons (Help, Reset,
# Cancel, OK, Load Saved Settings, Save Settings); the blurbs become their tooltips.
INT_ARGS: tuple[IntArg, ...] = (
    IntArg("candidates", "_Faces to generate", "How many faces to imagine: one layer each, the best one shown",
           1, 16, 3),
    IntArg("steps", "Search s_teps", "Steps of the search per face: more fit the mosaic closer, and take longer",
           1, 5000, 100),
    IntArg("seed", "Random s_eed", "The same seed gives the same faces again (-1 = a new seed each run)",
           -1, 2**31 - 1, -1),
    IntArg("block-size", "Mosaic _block size", "Side of one mosaic cell in pixels (0 = detect it)", 0, 512, 0),
)
ENDPOINT_ARG = ("endpoint", "Daemon _address", "Where the PULSE daemon listens (empty = the default one)", "")
# Scripts only (the dialog asks instead): paint faces even where the daemon finds no mosaic.
FORCE_ARG = ("force", "Depixelate an_yway", "Paint faces even where no mosaic is found in the selection "
             "(interactive runs ask instead)", False)
HOW_TO_FORCE = f"call {PROC_NAME} with force TRUE"
QUESTION_TITLE = "No mosaic found — Depixelate Face (PULSE)"
DESCRIPTION = ("Imagines faces that pixelate back to the selected mosaic, as new layers you can blend; "
               "they are invented, not the person's real face.")
ADVANCED_LABEL = "Advanced"


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


def mask_or_none(mask: bytes) -> Optional[bytes]:
    """A fully selected rectangle needs no mask frame; an all-zero one is an empty selection."""
    if not mask or mask.count(0) == len(mask):
        raise UserError("The selection is empty inside the active layer: select the pixelated face first.")
    return None if mask.count(255) == len(mask) else mask


# ----------------------------------------------------------------------------------------- request


@dataclass(frozen=True)
class Settings:
    candidates: int = 3
    steps: int = 100
    seed: int = -1
    block_size: int = 0
    endpoint: str = ""
    force: bool = False

    def params(self) -> dict[str, Any]:
        """The SUBMIT parameters (protocol spec: mode, candidates, steps, seed -1 random, block 0 auto;
        `force` only when set, so a daemon that predates it sees the same job as before)."""
        params: dict[str, Any] = {
            "mode": "depixelate",
            "candidates": int(self.candidates),
            "steps": int(self.steps),
            "seed": int(self.seed),
            "block": int(self.block_size),
        }
        if self.force:
            params["force"] = True
        return params


def settings_from(get: Callable[[str], Any], interactive: bool = False) -> Settings:
    """Read the procedure config (`config.get_property`) into Settings, clamping to the declared ranges.

    `force` counts for scripts only: the dialog does not show it, so a value left in GIMP's saved settings by
    an earlier script must not silently paint over a region the user would have been asked about.
    """
    values = {}
    for arg in INT_ARGS:
        values[arg.name.replace("-", "_")] = min(max(int(get(arg.name)), arg.minimum), arg.maximum)
    endpoint = get(ENDPOINT_ARG[0]) or ""
    force = False if interactive else bool(get(FORCE_ARG[0]))
    return Settings(endpoint=str(endpoint).strip(), force=force, **values)


def asks_before_forcing(run_mode: str) -> bool:
    """Whether a no-mosaic refusal is a question (a person started the run) or an error (a script).

    `run_mode` is the Gimp.RunMode's nick: "interactive", "noninteractive" or "with-last-vals" (Filters ▸
    Repeat, also a person at the GUI)."""
    return run_mode != "noninteractive"


def progress_fraction(step: int, total: int) -> float:
    return 0.0 if total <= 0 else min(max(step / total, 0.0), 1.0)


def progress_text(step: int, total: int, best_error: float) -> str:
    err = "" if best_error != best_error or best_error == float("inf") else f", best error {best_error:.2e}"
    return f"PULSE: step {step}/{total}{err}"


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


def plan_paste(result: Any, region: Region, fmt: PixelFormat, existing_names: Sequence[str],
               selection: Optional[bytes]) -> PastePlan:
    """The group and its layers for a protocol Result, checked against the region we sent.

    `existing_names` are all layer names in the image (run number, names GIMP would otherwise suffix "#1");
    `selection` the selection's coverage over the region (None: all of it), which clips the layer masks.
    """
    from protocol import layers

    analysis = dict(getattr(result, "analysis", None) or {})
    run = layers.next_run_number(existing_names)
    rect = layers.mosaic_rect(analysis, region.width, region.height)
    mask = layers.blend_mask(region.width, region.height, rect, layers.band_width(analysis), selection)
    plans = []
    expected = region.width * region.height * fmt.channels * fmt.itemsize
    for i, cand in enumerate(result.candidates):
        blob = cand.image
        if (blob.width, blob.height, blob.channels, blob.dtype) != (region.width, region.height, fmt.channels, fmt.dtype):
            raise UserError(
                f"The daemon returned a {blob.width}×{blob.height}×{blob.channels} {blob.dtype} patch for a "
                f"{region.width}×{region.height}×{fmt.channels} {fmt.dtype} region; update pulse-server "
                "and the plug-in together (`pulse-server install-plugin gimp`)."
            )
        data = bytes(blob.data)
        if len(data) != expected:
            raise UserError(f"The daemon returned {len(data)} bytes of pixels, expected {expected}.")
        meta = {
            "kind": "face",
            "run": run,
            "model": result.model,
            "seed": cand.seed,
            "downscale_error": cand.downscale_error,
            "eps_reached": cand.eps_reached,
            "steps": cand.steps,
            "rank": i + 1,
            "analysis": analysis,
            "comment": layers.layer_comment(cand, result.model),
        }
        plans.append(
            LayerPlan(
                name=layers.face_name(i + 1, run, existing_names),
                visible=(i == 0),
                x=region.x,
                y=region.y,
                width=region.width,
                height=region.height,
                data=data,
                mask=mask,
                error=float(cand.downscale_error),
                seed=int(cand.seed),
                comment=meta["comment"],
                parasite=json.dumps(meta, sort_keys=True, default=str).encode("utf-8"),
            )
        )
    if not plans:
        raise UserError("The daemon returned no candidates.")
    errors = [float(c.downscale_error) for c in result.candidates]
    seeds = [int(c.seed) for c in result.candidates]
    group_meta = {"kind": "run", "run": run, "model": result.model, "analysis": analysis,
                  "candidates": [{"name": p.name, "downscale_error": e, "seed": s}
                                 for p, e, s in zip(plans, errors, seeds)],
                  "comment": layers.group_comment(run, str(result.model), analysis, errors, seeds)}
    return PastePlan(run=run, group_name=layers.group_name(run, analysis),
                     group_parasite=json.dumps(group_meta, sort_keys=True, default=str).encode("utf-8"),
                     layers=plans, summary=layers.mosaic_summary(analysis))


def done_message(plan: PastePlan, source_note: str = "") -> str:
    """What the user reads when the layers are in: what was found, each face's layer, error and seed (one line
    each: GIMP's message box wraps long lines mid-name), how to blend them, and that they are invented."""
    from protocol.layers import format_error

    faces = "\n".join(f"  {p.name}: error {format_error(p.error)}, seed {p.seed}{' (shown)' if p.visible else ''}"
                      for p in plan.layers)
    note = f"{source_note}.\n" if source_note else ""
    found = "no mosaic found" if plan.summary == "no mosaic found" else f"found {plan.summary}"
    count = f"{len(plan.layers)} face" + ("s" if len(plan.layers) != 1 else "")
    return (f"{note}PULSE run {plan.run}: {found}; imagined {count} in “{plan.group_name}”:\n{faces}\n"
            "Toggle a face's eye to compare; paint its layer mask to blend it. These faces are invented by a "
            "model, not the person's real face.")


# ----------------------------------------------------------------------------------------- messages


def missing_dependency_message(exc: BaseException) -> str:
    name = getattr(exc, "name", None) or str(exc)
    return (
        f"Depixelate Face (PULSE) needs the Python module '{name}', which GIMP's Python cannot import "
        f"({exc}). On Linux install python3-zmq and python3-msgpack with your package manager; on Windows and "
        "macOS re-run `pulse-server install-plugin gimp`, which bundles them with the plug-in."
    )


def user_message(exc: BaseException, endpoint: str = "") -> str:
    """What to tell the user for any failure (the image is left untouched); `endpoint`: the address tried."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, ImportError):
        return missing_dependency_message(exc)
    code = getattr(exc, "code", None)
    text = getattr(exc, "message", None) or str(exc)
    if code == "DAEMON_NOT_RUNNING":
        # The client's own text repeats the advice below; only a different cause (no answer) is worth adding.
        detail = f" ({text})" if text and "no answer" in text else ""
        return (f"No PULSE daemon answered at {endpoint or 'the default address'}{detail}. Start it with "
                "`pulse-server run` (or once: `pulse-server install-autostart`), then try again.")
    if code == "VERSION_MISMATCH":
        return (
            "This plug-in and the running PULSE daemon speak different protocol versions. Update both and "
            f"reinstall the plug-in: `pulse-server install-plugin gimp`.\n\nDetails: {text}"
        )
    if code == "CANCELLED":
        return "Depixelation cancelled."
    if code == "NO_MOSAIC_DECLINED":
        return str(exc)
    if code == "NO_MOSAIC":
        from protocol.no_mosaic import refusal

        return f"PULSE did not depixelate this region: {refusal(exc, HOW_TO_FORCE)}"
    if code is not None:
        return f"PULSE could not depixelate this region ({code}): {text}"
    return f"Depixelate Face (PULSE) failed: {type(exc).__name__}: {text}"
