"""`pulse solve LOWRES.png -o OUT.png`: PULSE on a whole low-res face image, in-process or via the daemon.

The scale factor follows from the input size and the generator's resolution (a 4×4 input on a 32×32
generator: ×8). Writes the best candidate to OUT.png and the others to OUT-2.png … OUT-K.png, best first;
`--report` writes per-candidate file, seed, downscale_error, eps_reached and steps as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any

from ..devices import CHOICES as DEVICES
from ..jobs import solver_seed
from . import args as args_


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("solve", help="imagine high-resolution faces whose downscaled versions match LOWRES",
                       description="PULSE latent search on a whole low-resolution face image. The faces are "
                                   "imagined by the model: they are not the identity of the person pictured.",
                       epilog=args_.SOLVE_TERMS, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="LOWRES", help="low-resolution face image (square; its size must divide the "
                                                   "generator resolution)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.png",
                   help="best candidate; others go to OUT-2.png …; its folder must exist")
    p.add_argument("--model", "--weights", dest="weights", metavar="NAME|PATH", default=None,
                   help="face model: a registry name (ffhq-1024, ffhq-256, digiface-64) or a checkpoint file; "
                        "default: ffhq-1024 on a GPU, ffhq-256 without one (downloaded on first use)")
    args_.add_param(p, "candidates", "--candidates", "-k", metavar="K", help="faces to produce")
    args_.add_param(p, "steps", metavar="S", help="optimizer steps")
    args_.add_param(p, "eps", metavar="E",
                    help=f"target downscale error: how closely each face, downscaled to LOWRES's size, should reproduce "
                         f"it (about {args_.rms_percent(args_.PARAMS['eps'].default):.1f} % RMS at the default; see "
                         f"terms below)")
    args_.add_param(p, "seed", metavar="N", help="seed of candidate 1 (candidate i: N+i-1); -1: a new random one")
    p.add_argument("--device", default="auto", metavar="|".join(DEVICES),
                   help="auto (default): cuda > mps > xpu > cpu")
    args_.add_param(p, "precision", help="default: fast batched path; fp32: the original loop's structure (baseline)")
    p.add_argument("--report", metavar="REPORT.json", default=None, help="write a JSON report of the candidates")
    p.add_argument("--endpoint", default=None, help="daemon endpoint for --via-daemon (default: $PULSE_ENDPOINT, "
                                                    "else the per-user default)")
    p.add_argument("--via-daemon", action="store_true", help="run the job on the running `pulse-server` daemon")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


# ------------------------------------------------------------------------------------------------ files


def read_image(path: str | Path) -> Any:
    """-> (h, w, 3) float32 in [0, 1]; PulseError(BAD_INPUT) for anything that is not a readable image."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from ..errors import PulseError

    path = Path(path)
    if not path.is_file():
        raise PulseError(f"input not found: {path}", code="BAD_INPUT")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "F":  # float pixels in [0, 1]
                a = np.repeat(np.asarray(im, dtype=np.float32)[:, :, None], 3, axis=2)
            elif im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float32) / (65535.0 if im.mode.startswith("I;16") else max(1, im.getextrema()[1]))
                a = np.repeat(a[:, :, None], 3, axis=2)
            else:
                a = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise PulseError(f"cannot read {path} as an image: {exc}", code="BAD_INPUT") from None
    if a.size == 0:
        raise PulseError(f"{path} is an empty image", code="BAD_INPUT")
    from ..pipeline.formats import require_finite

    require_finite(a)  # before the clip below
    h, w = a.shape[:2]
    if h != w:
        raise PulseError(f"{path} is {w}×{h}: the low-res face must be square", code="BAD_SIZE")
    return np.ascontiguousarray(a.clip(0, 1))


def output_paths(out: str | Path, k: int) -> list[Path]:
    """OUT.png, OUT-2.png, …, OUT-K.png."""
    out = Path(out)
    return [out] + [out.with_name(f"{out.stem}-{i}{out.suffix or '.png'}") for i in range(2, k + 1)]


def to_file(target: Path | IO[bytes], image: Any, fmt: str | None = None) -> None:
    """(h, w, 3) float RGB in [0, 1] -> an 8-bit RGB image file; `fmt`: PIL's format name (None: from the name)."""
    import numpy as np
    from PIL import Image

    Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), "RGB").save(target, fmt)


def write_png(path: Path, image: Any) -> None:
    from ..errors import PulseError

    try:
        to_file(path, image)
    except (OSError, ValueError) as exc:  # checked before the solve; a disk can still fill up meanwhile
        raise PulseError(f"cannot write {path}: {exc}", code="BAD_OUTPUT") from None


# ------------------------------------------------------------------------------------------------- run


def run(args: argparse.Namespace) -> int:
    lowres = read_image(args.input)
    args.settings = args_.job_settings(args, "solve")
    args_.check_image_output(Path(args.output), lowres, to_file)
    if args.report:
        args_.check_output(Path(args.report), "report")
    if args.via_daemon:
        rows, meta = _solve_via_daemon(args, lowres)
    else:
        rows, meta = _solve_here(args, lowres)
    paths = output_paths(args.output, len(rows))
    report = []
    for path, row in zip(paths, rows):
        write_png(path, row.pop("image"))
        report.append({"file": str(path), **row})
    for line in summary_lines(report, args.eps):
        print(line)
    if args.report:
        doc = {"input": str(args.input), **meta, "eps": args.eps, "candidates": report,
               "downscale_error": "how closely the face, downscaled to the input's size, reproduces the input (mean "
                                "squared difference per pixel and colour channel, colours in 0..1); eps_reached: at "
                                "most eps"}
        try:
            Path(args.report).write_text(json.dumps(doc, indent=2) + "\n")
        except OSError as exc:
            from ..errors import PulseError

            raise PulseError(f"cannot write {args.report}: {exc}", code="BAD_OUTPUT") from None
    return 0


def summary_lines(report: list[dict], eps: float) -> list[str]:
    """One line per face, then what its error means and, if one stayed above eps, what to do."""
    lines = [f"{r['file']}: seed {r['seed']}, {args_.fit_words(r['downscale_error'], eps, r['eps_reached'])}, "
             f"best at step {r['steps']}" for r in report]
    lines.append("downscale error: how closely each face, downscaled to the input's size, reproduces the input")
    advice = args_.fit_advice(any(not r["eps_reached"] for r in report))
    return lines + ([advice] if advice else [])


class _Bar:
    """A tqdm bar opened on the first progress event (a bad input fails before any bar is drawn)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, p: Any) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(total=p.total, unit="step", desc="solving", disable=self.quiet, file=sys.stderr,
                            leave=False)
        self.bar.total = p.total
        self.bar.update(p.step - self.bar.n)
        self.bar.set_postfix(best=f"{p.best_error:.2e}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _solve_here(args: argparse.Namespace, lowres: Any) -> tuple[list[dict], dict]:
    from ..devices import resolve_device
    from ..models.loading import load_prior
    from ..runner import solve
    from ..solver import SolveConfig

    prior, info = load_prior(args.weights, resolve_device(args.device))
    cfg = SolveConfig(candidates=args.candidates, steps=args.steps, eps=args.eps, seed=solver_seed(args.seed),
                      precision=args.precision)
    line = args_.cached_estimate_line(prior, info, "solve", args.candidates, args.steps, "ilo", args.precision,
                                      lowres.shape[0] * lowres.shape[1])
    if line and not args.quiet:
        print(line, file=sys.stderr)
    bar = _Bar(args.quiet)
    try:
        result = solve(prior, lowres, cfg, progress=bar)
    finally:
        bar.close()
    rows = [{"image": c.image, "seed": c.seed, "downscale_error": c.downscale_mse, "eps_reached": c.eps_reached,
             "steps": c.steps} for c in result.candidates]
    meta = {"model": info.name, "weights": info.source, "factor": result.factor, "resolution": result.resolution,
            "seconds": round(result.seconds, 3), "precision": args.precision, "device": str(prior.device)}
    return rows, meta


def _solve_via_daemon(args: argparse.Namespace, lowres: Any) -> tuple[list[dict], dict]:
    from protocol.client import PulseClient
    from protocol.messages import ImageBlob

    from ..models.registry import REGISTRY
    from .daemon_job import run_daemon_job

    if args.weights and args.weights not in REGISTRY:
        print("pulse: note: with --via-daemon --model takes a model name; the daemon does not open files for "
              "clients, so it uses its own model", file=sys.stderr)
    h, w = lowres.shape[:2]
    blob = ImageBlob(width=w, height=h, channels=3, dtype="f32", data=lowres.astype("<f4").tobytes())
    settings = args.settings
    if args.weights in REGISTRY:
        settings = args_.job_settings(args, "solve", model=args.weights)

    bar = _Bar(args.quiet)
    with PulseClient(args.endpoint, client_name="pulse-cli") as client:
        try:
            result = run_daemon_job(client, blob, None, settings, on_progress=bar,
                                    on_estimate=None if args.quiet else lambda line: print(line, file=sys.stderr))
        finally:
            bar.close()
    rows = [{"image": blob_to_rgb(c.image), "seed": c.seed, "downscale_error": c.downscale_error,
             "eps_reached": c.eps_reached, "steps": c.steps} for c in result.candidates]
    size = rows[0]["image"].shape[0] if rows else 0
    meta = {"model": result.model, "endpoint": client.endpoint, "factor": size // h if h else 0,
            "resolution": size, "precision": args.precision, "via_daemon": True}
    return rows, meta


def blob_to_rgb(blob: Any) -> Any:
    """ImageBlob (any channels/dtype) -> (h, w, 3) float32 in [0, 1]."""
    import numpy as np

    dt = {"u8": "<u1", "u16": "<u2", "f32": "<f4"}[blob.dtype]
    a = np.frombuffer(blob.data, dtype=dt).reshape(blob.height, blob.width, blob.channels).astype(np.float32)
    if blob.dtype == "u8":
        a /= 255.0
    elif blob.dtype == "u16":
        a /= 65535.0
    if blob.channels in (1, 2):
        a = np.repeat(a[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(a[:, :, :3])
