"""`pulse depixelate IMAGE --box X,Y,W,H -o OUT.png`: depixelate a face in an image file.

Runs the pipeline in-process (loads the prior itself) or, with --via-daemon, sends the region to the running
daemon like an editor plug-in does. Writes the whole image with the best candidate in place (OUT.png), the
others as OUT-2.png … OUT-K.png, and optionally a JSON report (mosaic analysis, per-candidate errors).
Everything that can be refused — the box, the output files, a box without a mosaic — is refused before a model
is loaded or a job is sent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import IO, Any

from ..devices import CHOICES as DEVICES
from ..jobs import solver_seed
from ..pipeline.pipeline import MIN_CONFIDENCE
from . import args as args_


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "depixelate",
        help="replace a pixelated face in an image with imagined faces (PULSE)",
        description="Find the mosaic inside --box, search K faces whose pixelation matches it, and write the image "
                    "with each face in place. The faces are imagined by the model, not the hidden person. A box "
                    "without a mosaic is refused (exit 2) unless --force.",
        epilog=args_.MOSAIC_TERMS.format(min_confidence=MIN_CONFIDENCE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("image", type=Path, help="input image (PNG, JPEG, TIFF, ...)")
    p.add_argument("--box", required=True, type=args_.box, metavar="X,Y,W,H", help="region holding the pixelated face")
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUT.png",
                   help="output image (best candidate); others go to OUT-2.png …; its folder must exist")
    p.add_argument("--model", "--weights", dest="weights", metavar="NAME|PATH", default=None,
                   help="face model: a registry name (ffhq-1024, ffhq-256, digiface-64) or a checkpoint file; "
                        "default: ffhq-1024 on a GPU, ffhq-256 without one (downloaded on first use)")
    args_.add_param(p, "candidates", metavar="K", help="number of faces")
    args_.add_param(p, "seed", metavar="N", help="seed of candidate 1 (candidate i: N+i-1); -1: a new random one")
    args_.add_param(p, "block", metavar="auto|N",
                    help="mosaic block size in pixels (auto or 0: detected, with its grid phase)")
    args_.add_param(p, "steps", metavar="S", help="solver steps per candidate")
    args_.add_param(p, "eps", metavar="E",
                    help=f"target downscale error: how closely each face, pixelated on the mosaic's grid, should "
                         f"reproduce your mosaic before the final correction (about "
                         f"{args_.rms_percent(args_.PARAMS['eps'].default):.1f} % RMS at the default; see terms below)")
    args_.add_param(p, "force", help="paint a face even where no mosaic is found in the box (it replaces what is there)")
    args_.add_param(p, "method", help="search: ilo = latent + placement, then intermediate features; pulse = no features")
    p.add_argument("--report", type=Path, default=None, metavar="R.json", help="write a JSON report here")
    p.add_argument("--device", default="auto", metavar="|".join(DEVICES),
                   help="in-process device; auto (default): cuda > mps > xpu > cpu")
    args_.add_param(p, "precision", help="solver precision")
    p.add_argument("--endpoint", default=None, help="daemon endpoint for --via-daemon (default: per-user; env PULSE_ENDPOINT)")
    p.add_argument("--via-daemon", action="store_true", help="send the job to the running pulse-server")
    p.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..pipeline.formats import require_finite

    image = read_image(args.image)
    require_finite(image)  # refused here, in-process or --via-daemon, as the daemon would
    region = _region(image, args.box)
    args.settings = args_.job_settings(args, "depixelate")
    args_.check_image_output(args.output, image, write_image)
    if args.report is not None:
        args_.check_output(args.report, "report")
    if not args.force:
        _require_mosaic(region, args.block)  # before a model loads (or downloads) or a job is sent

    bar = _progress_bar(args)
    try:
        if args.via_daemon:
            patches, cands, analysis, model = _via_daemon(args, region, bar)
        else:
            patches, cands, analysis, model = _in_process(args, region, bar)
    finally:
        if bar is not None:
            bar.close()

    x, y, bw, bh = args.box
    outputs = output_paths(args.output, len(patches))
    for path, patch in zip(outputs, patches):
        full = image.copy()
        full[y : y + bh, x : x + bw] = patch
        _write(path, full)
    report = _report(args, model, analysis, cands, outputs)
    if args.report is not None:
        _write_report(args.report, report)
    if not args.quiet:
        print("\n".join(summary_lines(report)), file=sys.stderr)
    return 0


def _region(image: Any, box: tuple[int, int, int, int]) -> Any:
    """The box's pixels; PipelineError(BAD_REGION) for a box that is empty or not inside the image."""
    import numpy as np

    from ..errors import PipelineError

    h, w = image.shape[:2]
    x, y, bw, bh = box
    if bw <= 0 or bh <= 0:
        raise PipelineError(f"box {x},{y},{bw},{bh} is empty: width and height must be positive", code="BAD_REGION")
    if x < 0 or y < 0 or x + bw > w or y + bh > h:
        raise PipelineError(f"box {x},{y},{bw},{bh} is not inside the {w}×{h} image "
                            f"(x and y must be >= 0, x+w <= {w}, y+h <= {h})", code="BAD_REGION")
    return np.ascontiguousarray(image[y : y + bh, x : x + bw])


def _require_mosaic(region: Any, block: int | None) -> None:
    """The pipeline's own NO_MOSAIC check, run here first: the daemon or the solver would make it only after
    loading the model (a download, the first time)."""
    from ..pipeline.pipeline import analyze_mosaic, require_mosaic

    require_mosaic(analyze_mosaic(region, None, block), block)


def _report(args: argparse.Namespace, model: str, analysis: dict, cands: list[dict], outputs: list[Path]) -> dict:
    x, y, bw, bh = args.box
    ax, ay, aw, ah = analysis["rect"]
    return {
        "image": str(args.image),
        "box": [x, y, bw, bh],
        "model": model,
        "mosaic": {
            "block": analysis["block"],
            "phase": list(analysis["phase"]),
            "rect": [ax, ay, aw, ah],  # inside the box
            "rect_in_image": [x + ax, y + ay, aw, ah],
            "confidence": analysis["confidence"],
            "detected": analysis["detected"],
        },
        "method": analysis.get("method", ""),
        "forced": bool(args.force),
        "eps": args.eps,
        "candidates": [dict(c, file=str(p), **_placement(analysis, i)) for i, (c, p) in enumerate(zip(cands, outputs))],
        "downscale_error": "how closely the face, pixelated on the mosaic's grid, reproduces the mosaic before the "
                           "final correction (mean squared difference per cell and colour channel, colours in 0..1); "
                           "eps_reached: at most eps",
        "note": "imagined faces consistent with the mosaic, not the identity of the person",
    }


def summary_lines(report: dict) -> list[str]:
    """The lines a person reads after a run: the mosaic, one line per face, what the error means."""
    m = report["mosaic"]
    if m["detected"]:
        px, py = m["phase"]
        x, y, w, h = m["rect_in_image"]
        lines = [f"mosaic: {m['block']}-px blocks, grid phase ({px}, {py}), at {x},{y} size {w}×{h} in the image; "
                 f"confidence {m['confidence']:.2f}"]
    else:
        lines = ["no mosaic found in the box (--force: the faces replace what was there)"]
    lines.append(f"faces by {report['model']} (imagined: none of them is the person in the photo):")
    for c in report["candidates"]:
        lines.append(f"  {c['file']}: seed {c['seed']}, "
                     f"{args_.fit_words(c['downscale_error'], report['eps'], c['eps_reached'])}")
    if m["block"] > 1:
        lines.append("downscale error: how closely each face, pixelated on the mosaic's grid, reproduced your mosaic "
                     "before the final correction; the images written re-pixelate to your mosaic exactly")
    else:
        lines.append("downscale error: how closely each face reproduced the box's pixels")
    advice = args_.fit_advice(any(not c["eps_reached"] for c in report["candidates"]))
    return lines + ([advice] if advice else [])


def _placement(analysis: dict, i: int) -> dict:
    """Candidate i's placement θ as found by the search, raw and in words (scale, degrees, shift)."""
    thetas = analysis.get("theta") or []
    if i >= len(thetas):
        return {}
    log_scale, angle, tx, ty = (float(v) for v in thetas[i])
    return {"theta": [log_scale, angle, tx, ty],
            "placement": {"scale": round(math.exp(log_scale), 4), "rotation_deg": round(math.degrees(angle), 2),
                          "shift": [round(tx, 4), round(ty, 4)]}}  # shift: fractions of the face frame's side


def _in_process(args: argparse.Namespace, region: Any, bar: Any) -> tuple[list, list[dict], dict, str]:
    from ..devices import resolve_device
    from ..models.loading import load_prior
    from ..pipeline import DepixParams
    from ..runner import depixelate
    from ..worker import depixelate_analysis

    prior, info = load_prior(args.weights, device=resolve_device(args.device))
    params = DepixParams(candidates=args.candidates, steps=args.steps, seed=solver_seed(args.seed),
                         block=args.block or None, eps=args.eps, precision=args.precision, method=args.method,
                         force=args.force)
    if not args.quiet:
        _say(bar, args_.cached_estimate_line(prior, info, "depixelate", args.candidates, args.steps, args.method,
                                             args.precision, region.shape[0] * region.shape[1]))

    def progress(p: Any) -> None:
        if bar is not None:
            bar.total = p.total
            bar.n = p.step
            bar.set_postfix(best=f"{p.best_error:.2e}", refresh=False)
            bar.refresh()

    res = depixelate(prior, region, None, params, progress=progress, model=info.name)
    cands = [{"seed": int(c.seed), "downscale_error": float(c.downscale_mse), "eps_reached": bool(c.eps_reached),
              "steps": int(c.steps)} for c in res.candidates]
    return res.patches, cands, depixelate_analysis(res), info.name


def _via_daemon(args: argparse.Namespace, region: Any, bar: Any) -> tuple[list, list[dict], dict, str]:
    import numpy as np

    from protocol.client import PulseClient
    from protocol.messages import ImageBlob

    from ..models.registry import REGISTRY
    from .daemon_job import run_daemon_job

    if args.weights is not None and args.weights not in REGISTRY:
        print("pulse: note: with --via-daemon --model takes a model name; the daemon does not open files for "
              "clients, so it uses its own model", file=sys.stderr)
    settings = args.settings
    if args.weights in REGISTRY:
        settings = args_.job_settings(args, "depixelate", model=args.weights)

    def progress(p: Any) -> None:
        if bar is not None:
            bar.total = p.total
            bar.n = p.step
            bar.refresh()

    endpoint = args.endpoint or os.environ.get("PULSE_ENDPOINT") or None
    with PulseClient(endpoint, client_name="pulse-cli", client_version=_version()) as client:
        client.connect()
        res = run_daemon_job(client, ImageBlob.from_numpy(region), None, settings, on_progress=progress,
                             on_estimate=None if args.quiet else lambda line: _say(bar, line))
    patches = []
    for c in res.candidates:
        patch = np.array(c.image.to_numpy())
        if patch.shape != region.shape:
            from ..errors import PipelineError

            raise PipelineError(f"daemon returned a {patch.shape} patch for a {region.shape} region", code="BAD_RESULT")
        patches.append(patch.astype(region.dtype, copy=False))
    cands = [{"seed": int(c.seed), "downscale_error": float(c.downscale_error), "eps_reached": bool(c.eps_reached),
              "steps": int(c.steps)} for c in res.candidates]
    a = dict(res.analysis)
    analysis = {"block": int(a.get("block", 1)), "phase": [int(v) for v in a.get("phase", (0, 0))],
                "rect": [int(v) for v in a.get("rect", (0, 0, region.shape[1], region.shape[0]))],
                "confidence": float(a.get("confidence", 0.0)), "detected": bool(a.get("detected", False)),
                "method": str(a.get("method", "")), "theta": [list(t) for t in a.get("theta", [])]}
    return patches, cands, analysis, res.model


def _say(bar: Any, line: str) -> None:
    """A line on stderr above the progress bar (tqdm redraws it below), or nothing for ""."""
    if not line:
        return
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr)


def _version() -> str:
    from .. import __version__

    return __version__


def _progress_bar(args: argparse.Namespace) -> Any:
    if args.quiet:
        return None
    from tqdm import tqdm

    # The first PROGRESS event sets the real total (K candidates share each step in the batched mode).
    return tqdm(total=args.steps, desc="solving", unit="step", file=sys.stderr, leave=False)


def output_paths(out: Path, k: int) -> list[Path]:
    """OUT.png, OUT-2.png, … OUT-K.png."""
    return [out] + [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(2, k + 1)]


def read_image(path: Path) -> Any:
    """An image file -> (H, W, C) array in the editor formats the pipeline takes (u8, u16 grey, f32 grey)."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from ..errors import PipelineError

    try:
        im = Image.open(path)
        im.load()
    except FileNotFoundError:
        raise PipelineError(f"image not found: {path}", code="BAD_IMAGE") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise PipelineError(f"cannot read image {path}: {exc}", code="BAD_IMAGE") from None
    mode = im.mode
    arr: np.ndarray  # u8, u16 or f32 by mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(im).astype(np.uint16)[..., None]
    elif mode == "I":
        arr = np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[..., None]
    elif mode == "F":
        arr = np.asarray(im).astype(np.float32)[..., None]
    elif mode in ("L", "LA", "RGB", "RGBA"):
        arr = np.asarray(im)
    elif mode == "1":
        arr = np.asarray(im.convert("L"))
    else:  # P, CMYK, YCbCr, ...: palette transparency survives as alpha
        has_alpha = "transparency" in im.info or mode in ("PA", "RGBa", "La")
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))
    if arr.ndim == 2:
        arr = arr[..., None]
    return np.ascontiguousarray(arr)


def write_image(target: Path | IO[bytes], arr: Any, fmt: str | None = None) -> None:
    """(H, W, C) u8 / u16 grey / f32 grey -> an image file of the same kind (float grey -> 16-bit); `fmt` is
    PIL's format name (None: from the file name)."""
    import numpy as np
    from PIL import Image

    c = arr.shape[2]
    if arr.dtype == np.float32:
        arr = np.rint(np.clip(arr, 0.0, 1.0) * 65535).astype(np.uint16)
    if arr.dtype == np.uint16:
        if c != 1:
            arr = (arr // 257).astype(np.uint8)  # PIL has no 16-bit RGB(A) PNG writer
        else:
            Image.fromarray(arr[..., 0]).save(target, fmt)
            return
    Image.fromarray(arr[..., 0] if c == 1 else arr).save(target, fmt)  # u8: L, LA, RGB, RGBA by channel count


def _write(path: Path, arr: Any) -> None:
    from ..errors import PulseError

    try:
        write_image(path, arr)
    except (OSError, ValueError) as exc:  # checked before the solve; a disk can still fill up meanwhile
        raise PulseError(f"cannot write the output {path}: {exc}", code="BAD_OUTPUT") from None


def _write_report(path: Path, report: dict) -> None:
    from ..errors import PulseError

    try:
        path.write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:
        raise PulseError(f"cannot write the report {path}: {exc}", code="BAD_OUTPUT") from None
