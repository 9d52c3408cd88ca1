"""What `pulse solve` and `pulse depixelate` share: the job parameters' options, built from the job contract
(protocol/job.py PARAMS: default, range and help declared there once, values checked by the same code the daemon
runs), argument types whose errors name the allowed values, the words their output uses (block, grid phase,
confidence, downscale error, eps), and the checks on output files that run before any solving, so a typo in `-o`
costs a second, not a whole solve.
"""

from __future__ import annotations

import argparse
import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protocol.job import PARAMS, JobSettings, Param, ParamError

from ..errors import PulseError

# ------------------------------------------------------------------------------------- argument types
# argparse reports an ArgumentTypeError as "argument --steps: <message>"; anything else it would report as
# "invalid _positive value", naming a private function instead of what the option takes.


def param_type(p: Param) -> Callable[[str], Any]:
    """argparse `type=` for the job parameter `p`: the text parsed as its kind, then `p.check` (the contract's own
    check), so a value is refused with the words the daemon uses. `block` also takes "auto" (= 0, detect)."""

    def parse(text: str) -> Any:
        if p.kind is int and p.name == "block" and text.strip().lower() == "auto":
            text = "0"
        try:
            value = p.kind(text) if p.kind is not bool else text
        except ValueError:
            auto = "auto or " if p.name == "block" else ""
            raise argparse.ArgumentTypeError(f"expected {auto}{_KIND_WORDS[p.kind]} {p.range_text()}, "
                                             f"got {text!r}") from None
        try:
            return p.check(value)
        except ParamError as exc:
            raise argparse.ArgumentTypeError(exc.problem) from None

    parse.__name__ = p.name  # argparse names the type in some messages
    return parse


_KIND_WORDS = {int: "a whole number", float: "a number"}


def add_param(parser: argparse.ArgumentParser, name: str, *flags: str, help: str | None = None,
              metavar: str | None = None) -> None:
    """An option for the job parameter `name` (dest = the name): default, range, choices and help from PARAMS."""
    p = PARAMS[name]
    flags = flags or (f"--{name}",)
    text = (help or p.help).replace("%", "%%")
    if p.kind is bool:
        parser.add_argument(*flags, dest=name, action="store_true", default=p.default, help=text)
        return
    if p.choices is not None:
        text += f" (default {p.default})"
    else:
        text += f" (default {_shown(p, p.default)}; {p.range_text()})"
    parser.add_argument(*flags, dest=name, type=param_type(p), default=p.default, choices=p.choices,
                        metavar=metavar, help=text)


def _shown(p: Param, value: Any) -> str:
    if p.name == "block" and value == 0:
        return "auto"
    return f"{value:g}" if isinstance(value, float) else str(value)


def job_settings(args: argparse.Namespace, mode: str, **extra: Any) -> JobSettings:
    """The job's settings from the parsed options (any parameter the command has no option for: its default),
    checked against the contract again (ParamError: BAD_PARAMS)."""
    values = {name: getattr(args, name) for name in PARAMS if hasattr(args, name) and name != "model"}
    return JobSettings.from_wire({**values, **extra, "mode": mode})


def positive_int(text: str) -> int:
    value = _int(text, "a whole number of 1 or more")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of 1 or more, got {text!r}")
    return value


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
