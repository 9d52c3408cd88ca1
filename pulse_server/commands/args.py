"""What `pulse solve` and `pulse depixelate` share: argument types whose errors name the allowed values, the
words their output uses (block, grid phase, confidence, downscale error, eps), and the checks on output files
that run before any solving, so a typo in `-o` costs a second, not a whole solve.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from pathlib import Path
from typing import Any

from ..errors import PulseError

# ------------------------------------------------------------------------------------- argument types
# argparse reports an ArgumentTypeError as "argument --steps: <message>"; anything else it would report as
# "invalid _positive value", naming a private function instead of what the option takes.


def positive_int(text: str) -> int:
    value = _int(text, "a whole number of 1 or more")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


def seed(text: str) -> int | None:
    """-1 -> None (random, as in the editors' dialogs); else a seed of 0 or more."""
    value = _int(text, "-1 (random) or a whole number of 0 or more")
    if value == -1:
        return None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected -1 (random) or a whole number of 0 or more, got {text!r}")
    return value


def eps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 < value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1 (e.g. 2e-3), got {text!r}")
    return value


def block(text: str) -> int | None:
    """auto / 0 -> None (detect); else a block size of at least 1 pixel."""
    if text.strip().lower() in ("auto", "0"):
        return None
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected auto or a block size in pixels (1 or more), got {text!r}") from None


def box(text: str) -> tuple[int, int, int, int]:
    try:
        parts = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H as 4 whole numbers, got {text!r}") from None
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H as 4 whole numbers, got {text!r}")
    return parts[0], parts[1], parts[2], parts[3]


def _int(text: str, expected: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


# ------------------------------------------------------------------------------------------- words

MOSAIC_TERMS = """\
terms:
  block            the side of one mosaic cell in pixels (detected, or --block N)
  grid phase       where the cell borders fall: (x, y) of the first border inside the box, 0..block-1
  confidence       how sure the mosaic analysis is of its answer, 0..1; a mosaic found with less than
                   {min_confidence:.2f} is not trusted: depixelate stops unless --force
  downscale error  how closely a face, pixelated on the mosaic's grid, reproduces your mosaic before the
                   final correction: the mean squared difference per cell and colour channel, colours in
                   0..1 (2e-3 is about 4.5 % RMS). The final correction then makes every written face
                   re-pixelate to your mosaic exactly; the error says how little it had to change.
  eps              the target for the downscale error (--eps). A face above it fits the mosaic loosely:
                   try more --steps, another --seed or a bigger --model."""

SOLVE_TERMS = """\
terms:
  downscale error  how closely a face, downscaled to LOWRES's size, reproduces LOWRES: the mean squared
                   difference per pixel and colour channel, colours in 0..1 (2e-3 is about 4.5 % RMS)
  eps              the target for the downscale error (--eps). A face above it matches LOWRES loosely:
                   try more --steps, another --seed or a bigger --model."""


def rms_percent(mse: float) -> float:
    """A mean squared error of colours in 0..1 as the root-mean-square difference in percent."""
    return 100.0 * math.sqrt(max(float(mse), 0.0))


def fit_words(error: float, eps_value: float, reached: bool) -> str:
    """'downscale error 1.4e-03 (3.7 % RMS), within eps 0.002 (4.5 %)' for one candidate."""
    where = "within" if reached else "above"
    return (f"downscale error {error:.1e} ({rms_percent(error):.1f} % RMS), {where} eps {eps_value:.2g} "
            f"({rms_percent(eps_value):.1f} %)")


def fit_advice(any_missed: bool) -> str:
    """The one line after the candidates: what to do when a face stayed above eps."""
    if not any_missed:
        return ""
    return ("above eps: such a face fits loosely before the correction; more --steps, another --seed or a bigger "
            "--model get closer (see --help)")


# ------------------------------------------------------------------------------------------- output files


def check_output(path: Path, what: str = "output") -> None:
    """PulseError(BAD_OUTPUT) if `path` cannot be written: its folder is missing or read-only, or it is a folder."""
    folder = path.parent
    if not folder.is_dir():
        raise PulseError(f"cannot write the {what} {path}: the folder {folder} does not exist (create it first)",
                         code="BAD_OUTPUT")
    if path.is_dir():
        raise PulseError(f"cannot write the {what} {path}: it is a folder", code="BAD_OUTPUT")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PulseError(f"cannot write the {what} {path}: the folder {folder} is not writable", code="BAD_OUTPUT")
    if path.exists() and not os.access(path, os.W_OK):
        raise PulseError(f"cannot write the {what} {path}: the file is read-only", code="BAD_OUTPUT")


def check_image_output(path: Path, sample: Any, write: Any) -> None:
    """check_output, then `write(buffer, sample, format)` of a 1×1 crop in the format the name asks for: an
    unknown extension, or alpha / 16 bits the format cannot hold, fail now instead of after the solve."""
    from PIL import Image

    check_output(path)
    Image.init()
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise PulseError(f"cannot write the output {path}: {path.suffix or 'no extension'} is not an image type "
                         f"pulse can write (use .png, .tif, .webp or .jpg)", code="BAD_OUTPUT")
    try:
        write(io.BytesIO(), sample[:1, :1], fmt)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PulseError(f"cannot write the output {path} as {fmt}: {exc} (use .png)", code="BAD_OUTPUT") from None


# ------------------------------------------------------------------------------------------- estimates


def cached_estimate_line(prior: Any, info: Any, mode: str, candidates: int, steps: int, method: str, precision: str,
                         pixels: int) -> str:
    """An in-process run's "pulse: estimate: about 40 s" line, from the speed the daemon measured for this model
    on this device (cached); "" when none was measured. Never measures anything itself: that costs a second or
    two the user did not ask for."""
    import torch

    from protocol.estimate_text import describe_estimate

    from ..devices import device_label
    from ..estimate import JobShape, cached_estimate
    from .daemon_job import estimate_words

    shape = JobShape(mode, candidates, steps, method, precision, pixels)
    seconds = cached_estimate(info, device_label(prior.device), torch.__version__, shape)
    return estimate_words(describe_estimate(seconds, 0.0, prior.device.type, info.name), mode)
