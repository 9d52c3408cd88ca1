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


# Labels carry mnemonics that clash neither with each other nor with the dialog's buttons.
INT_ARGS: tuple[IntArg, ...] = (
    IntArg("candidates", "Ca_ndidates", "Number of faces to imagine (one layer each)", 1, 16, 3),
    IntArg("steps", "Solver s_teps", "Optimisation steps per candidate", 1, 5000, 100),
    IntArg("seed", "Ran_dom seed", "Random seed (-1 = random)", -1, 2**31 - 1, -1),
    IntArg("block-size", "_Block size", "Mosaic block size in pixels (0 = detect)", 0, 512, 0),
)
ENDPOINT_ARG = ("endpoint", "Daemon end_point", "Daemon endpoint (empty = the default one)", "")


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

    def params(self) -> dict[str, Any]:
        """The SUBMIT parameters (protocol spec: mode, candidates, steps, seed -1 random, block 0 auto)."""
        return {
            "mode": "depixelate",
            "candidates": int(self.candidates),
            "steps": int(self.steps),
            "seed": int(self.seed),
            "block": int(self.block_size),
        }


def settings_from(get: Callable[[str], Any]) -> Settings:
    """Read the procedure config (`config.get_property`) into Settings, clamping to the declared ranges."""
    values = {}
    for arg in INT_ARGS:
        values[arg.name.replace("-", "_")] = min(max(int(get(arg.name)), arg.minimum), arg.maximum)
    endpoint = get(ENDPOINT_ARG[0]) or ""
    return Settings(endpoint=str(endpoint).strip(), **values)


def progress_fraction(step: int, total: int) -> float:
    return 0.0 if total <= 0 else min(max(step / total, 0.0), 1.0)


def progress_text(step: int, total: int, best_error: float) -> str:
    err = "" if best_error != best_error or best_error == float("inf") else f", best error {best_error:.2e}"
    return f"PULSE: step {step}/{total}{err}"


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
    comment: str = ""
    parasite: bytes = b""


def plan_layers(result: Any, region: Region, fmt: PixelFormat) -> list[LayerPlan]:
    """One layer per candidate (best first), checked against the region we sent.

    `result` is a protocol Result; the plans come in rank order (best first, visible), each placed at the
    region's image position. The adapter inserts them in `insertion_order`.
    """
    from protocol.layers import layer_comment, layer_name

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
            "model": result.model,
            "seed": cand.seed,
            "downscale_error": cand.downscale_error,
            "eps_reached": cand.eps_reached,
            "steps": cand.steps,
            "rank": i + 1,
            "analysis": result.analysis,
            "comment": layer_comment(cand, result.model),
        }
        plans.append(
            LayerPlan(
                name=layer_name(i + 1, cand.downscale_error),
                visible=(i == 0),
                x=region.x,
                y=region.y,
                width=region.width,
                height=region.height,
                data=data,
                comment=meta["comment"],
                parasite=json.dumps(meta, sort_keys=True, default=str).encode("utf-8"),
            )
        )
    if not plans:
        raise UserError("The daemon returned no candidates.")
    return plans


def insertion_order(plans: Sequence[LayerPlan]) -> list[LayerPlan]:
    """Insert worst first at the active layer's position: each insert pushes the previous ones down, so the
    stack reads best, 2nd, …, then the original layer."""
    return list(reversed(plans))


# ----------------------------------------------------------------------------------------- messages


def missing_dependency_message(exc: BaseException) -> str:
    name = getattr(exc, "name", None) or str(exc)
    return (
        f"Depixelate Face (PULSE) needs the Python module '{name}', which GIMP's Python cannot import "
        f"({exc}). On Linux install python3-zmq and python3-msgpack with your package manager; on Windows and "
        "macOS re-run `pulse-server install-plugin gimp`, which bundles them with the plug-in."
    )


def user_message(exc: BaseException) -> str:
    """What to tell the user for any failure (the image is left untouched)."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, ImportError):
        return missing_dependency_message(exc)
    code = getattr(exc, "code", None)
    text = getattr(exc, "message", None) or str(exc)
    if code == "DAEMON_NOT_RUNNING":
        return (
            "The PULSE daemon is not running or not reachable. Start it with `pulse-server run` "
            "(or once: `pulse-server install-autostart`), then try again."
            + (f"\n\nDetails: {text}" if text else "")
        )
    if code == "VERSION_MISMATCH":
        return (
            "This plug-in and the running PULSE daemon speak different protocol versions. Update both and "
            f"reinstall the plug-in: `pulse-server install-plugin gimp`.\n\nDetails: {text}"
        )
    if code == "CANCELLED":
        return "Depixelation cancelled."
    if code is not None:
        return f"PULSE could not depixelate this region ({code}): {text}"
    return f"Depixelate Face (PULSE) failed: {type(exc).__name__}: {text}"
