"""Restoration quality on real mosaicked faces: a baseline revision vs the working tree, measured in one run.

    .venv/bin/python bench/quality.py                       # 24 cases, K=3, 100 steps, baseline bb25712
    .venv/bin/python bench/quality.py --cases 4 --images out/quality
    .venv/bin/python bench/quality.py --write               # also add the table to bench/RESULTS.md

Face photos (public domain / CC0, shipped inside installed packages: `pip install -e '.[bench]'`; a source
whose package is missing is left out and the run says so):
  astronaut  scikit-image `skimage.data.astronaut()`: Eileen Collins, NASA portrait, public domain
             ("no known copyright restrictions, released into the public domain", skimage's docstring).
  hopper     matplotlib `mpl-data/sample_data/grace_hopper.jpg`: Commodore Grace M. Hopper, official U.S.
             Navy portrait (1984), public domain as a work of the U.S. federal government.
  camera     scikit-image `skimage.data.camera()`: a man with a camera, grey, face in three-quarter view;
             CC0 by the photographer, Lav Varshney (skimage's docstring).

Cases (deterministic from --seed; the sources take turns): a crop around the face in which the face has
been moved by a random similarity transform (shift up to 20 % of the face, scale 0.8–1.25, rotation ±10°),
so it sits off-centre, scaled and tilted relative to the mosaic box as in a real photo. A rectangle of
9–14 cells of b ∈ [8, 24] px over the nominal face is pixelated with the grid aligned elsewhere (a random
phase: partial cells along the rectangle's edges, like GIMP's/Krita's layer-aligned Pixelize). The region
sent to the engine is the whole crop (the mosaic plus 10–30 % unpixelated context on each side: an editor
selection a bit larger than the mosaic); the unpixelated crop is the ground truth.

Engines: `--baseline REV` is extracted with `git archive` into a temp dir, the working tree is used as it
is; each runs in its own worker process (`--worker`, the engine's root first on sys.path) so the two
versions never share a process. The parent hands both workers the cases in turn (baseline case i, current
case i, ...), so load from other processes on a shared machine hits both engines alike. Same prior, cases,
seeds, K and steps for both.

Metrics per case and engine, computed here from the returned patches and the known truth on the TRUE grid
(nothing the engine reports is trusted, except the two "reported" columns):
  eps         the best candidate's reported downscale error <= eps (2e-3). The two engines report
              different errors (see RESULTS.md), hence the re-mosaic MAE beside it.
  cell err    the best candidate's reported downscale error (median).
  re-mosaic   mean over cells and channels of |patch cell mean - input cell mean|, in 1/255 units.
  blockiness  inside the mosaic rectangle: mean |intensity step| across cell edges / mean step inside
              cells, for the best patch and (beside it) for the unpixelated photo.
  PSNR, SSIM  best patch vs the unpixelated crop, inside the mosaic rectangle.
  outside     every pixel outside the mosaic rectangle identical to the input region.
  block hit   detected block size == true block size.
  diversity   median pairwise mean |difference| between the K patches inside the mosaic (1/255 units).
  s/job       wall time of one depixelate call (after one untimed warm-up job): median (mean).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
DEFAULT_PRIOR = REPO.parent / "shared" / "priors" / "celeba32-dcgan.pt"
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION = "## bench/quality.py"
EPS = 2e-3  # DepixParams' default; the issue's "eps reached" threshold
BLOCKS = (8, 24)  # block sizes, inclusive
CELLS = (9, 14)  # cells across the face, inclusive
SHIFT = 0.2  # of the face size, per axis
SCALE = (0.8, 1.25)
ROTATION = 10.0  # degrees, either way
CONTEXT = (0.10, 0.30)  # unpixelated margin per side around the mosaic, fraction of the mosaic width
STEP_FLOOR = 1e-6  # blockiness denominator floor: a perfect mosaic has no step inside its cells at all
# Done-when targets for the new engine (issue 10 §6), checked against the "current" row
TARGET_EPS_SHARE = 0.90
TARGET_BLOCKINESS = 1.15
TARGET_REMOSAIC = 1.0  # 1/255 units
TARGET_TIME_RATIO = 1.5


# ---------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class Source:
    """A face photo: how to load it (u8 RGB), its credit and licence, and the face's box in its pixels."""

    name: str
    credit: str
    load: Callable[[], np.ndarray]
    face: tuple[float, float, float]  # centre x, centre y, side: forehead to chin, ear to ear (by eye)
    needs: str  # the module that ships it


def _astronaut() -> np.ndarray:
    from skimage.data import astronaut

    return astronaut()


def _camera() -> np.ndarray:
    from skimage.data import camera

    return np.repeat(camera()[..., None], 3, axis=2)  # grey photo; the engines take RGB like an editor's layer


def _hopper() -> np.ndarray:
    # located without importing matplotlib (slow, and it would pick a GUI backend for nothing)
    spec = importlib.util.find_spec("matplotlib")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError("matplotlib")
    path = Path(spec.origin).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


SOURCES: tuple[Source, ...] = (
    Source("astronaut", "skimage.data.astronaut(): Eileen Collins, NASA, public domain", _astronaut,
           (224.0, 120.0, 115.0), "skimage"),
    Source("hopper", "matplotlib sample_data/grace_hopper.jpg: Grace M. Hopper, U.S. Navy, public domain", _hopper,
           (265.0, 232.0, 205.0), "matplotlib"),
    Source("camera", "skimage.data.camera(): Lav Varshney, CC0", _camera, (222.0, 155.0, 110.0), "skimage"),
)


def available_sources(names: Sequence[str] | None = None) -> tuple[list[Source], list[str]]:
    """(sources whose package is installed, in SOURCES order; notes on those left out)."""
    chosen = [s for s in SOURCES if names is None or s.name in names]
    found, missing = [], []
    for s in chosen:
        if importlib.util.find_spec(s.needs) is None:
            missing.append(f"{s.name} (needs {s.needs}: pip install -e '.[bench]')")
        else:
            found.append(s)
    return found, missing


# ------------------------------------------------------------------------------------------------ grid


def cell_index(height: int, width: int, block: int, origin: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(row (height,), col (width,)) cell index of each pixel row/column of a rectangle whose grid lines run
    every `block` px from `origin` (x, y, rectangle coordinates, any integer): partial cells at the edges."""
    ox, oy = origin[0] % block, origin[1] % block
    first_x = ox - block if ox else 0  # the grid line at or left of the rectangle's first column
    first_y = oy - block if oy else 0
    return (np.arange(height) - first_y) // block, (np.arange(width) - first_x) // block


def rect_grid(rect: tuple[int, int, int, int], block: int, phase: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """cell_index of a rectangle (region coords) with grid lines at x ≡ phase[0], y ≡ phase[1] (mod block)."""
    x, y, w, h = rect
    return cell_index(h, w, block, (phase[0] - x, phase[1] - y))


def cell_means(img: np.ndarray, row: np.ndarray, col: np.ndarray) -> np.ndarray:
    """(H, W, C) -> (ny, nx, C) float64 means per cell (partial cells: over their pixels)."""
    ny, nx = int(row[-1]) + 1, int(col[-1]) + 1
    labels = (row[:, None] * nx + col[None, :]).ravel()
    flat = img.reshape(labels.size, -1).astype(np.float64)
    count = np.bincount(labels, minlength=ny * nx).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=flat[:, c], minlength=ny * nx) for c in range(flat.shape[1])], 1)
    return (sums / count[:, None]).reshape(ny, nx, -1)


def pixelate(img: np.ndarray, block: int, rect: tuple[int, int, int, int], phase: tuple[int, int]) -> np.ndarray:
    """u8 copy of `img` with `rect` replaced by its rounded cell means: an editor's Pixelize on a selection,
    its grid at `phase` (region coords). Written here, not imported, so the cases do not depend on either
    engine's code."""
    x, y, w, h = rect
    row, col = rect_grid(rect, block, phase)
    means = np.rint(cell_means(img[y : y + h, x : x + w], row, col))
    out = img.copy()
    out[y : y + h, x : x + w] = means[row[:, None], col[None, :]].astype(img.dtype)
    return out


# --------------------------------------------------------------------------------------------- metrics


def _inside(img: np.ndarray, rect: tuple[int, int, int, int]) -> np.ndarray:
    x, y, w, h = rect
    return img[y : y + h, x : x + w]


def remosaic_mae(patch: np.ndarray, region: np.ndarray, rect: tuple[int, int, int, int], block: int,
                 phase: tuple[int, int]) -> float:
    """Mean over cells and channels of |patch cell mean - input cell mean| on the true grid, in 1/255 units
    (u8 images): 0 when re-pixelating the patch gives back the input mosaic."""
    row, col = rect_grid(rect, block, phase)
    a = cell_means(_inside(patch, rect), row, col)
    b = cell_means(_inside(region, rect), row, col)
    return float(np.abs(a - b).mean())


def blockiness(img: np.ndarray, rect: tuple[int, int, int, int], block: int, phase: tuple[int, int]) -> float:
    """Mean |intensity step| between neighbours on either side of a cell edge / mean step between neighbours
    inside one cell, over the rectangle on the true grid. A clean photo is ~1 (the grid means nothing to
    it), a mosaic is huge (flat cells), a patch that keeps the cells' steps is > 1."""
    row, col = rect_grid(rect, block, phase)
    lum = _inside(img, rect).astype(np.float64).mean(axis=2)
    dx, dy = np.abs(np.diff(lum, axis=1)), np.abs(np.diff(lum, axis=0))
    edge_x = np.broadcast_to((col[1:] != col[:-1])[None, :], dx.shape)
    edge_y = np.broadcast_to((row[1:] != row[:-1])[:, None], dy.shape)
    if not (edge_x.any() and edge_y.any() and (~edge_x).any() and (~edge_y).any()):
        return float("nan")
    # each axis weighs the same, however many pairs it has: a photo's horizontal and vertical steps differ,
    # and a non-square grid has different shares of edge pairs on the two axes
    edge = float(dx[edge_x].mean() + dy[edge_y].mean())
    inner = float(dx[~edge_x].mean() + dy[~edge_y].mean())
    return edge / max(inner, STEP_FLOOR)


def diversity(patches: Sequence[np.ndarray], rect: tuple[int, int, int, int]) -> float | None:
    """Median over candidate pairs of the mean |difference| inside the mosaic (1/255 units for u8); None for K < 2."""
    inner = [_inside(p, rect).astype(np.float64) for p in patches]
    pairs = [float(np.abs(a - b).mean()) for a, b in itertools.combinations(inner, 2)]
    return float(np.median(pairs)) if pairs else None


def outside_identical(patch: np.ndarray, region: np.ndarray, rect: tuple[int, int, int, int]) -> bool:
    """Every pixel outside the mosaic rectangle has the input's exact value."""
    x, y, w, h = rect
    keep = np.ones(region.shape[:2], bool)
    keep[y : y + h, x : x + w] = False
    return patch.shape == region.shape and bool(np.array_equal(patch[keep], region[keep]))


def psnr_ssim(patch: np.ndarray, truth: np.ndarray, rect: tuple[int, int, int, int]) -> tuple[float, float]:
    """PSNR (dB) and SSIM of the patch vs the unpixelated photo inside the mosaic rectangle (u8 range)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    a, b = _inside(truth, rect), _inside(patch, rect)
    return (float(peak_signal_noise_ratio(a, b, data_range=255)),
            float(structural_similarity(a, b, data_range=255, channel_axis=2)))


# ----------------------------------------------------------------------------------------------- cases


@dataclass
class Case:
    index: int
    source: str
    block: int
    rect: tuple[int, int, int, int]  # mosaic rectangle in region coords
    phase: tuple[int, int]  # grid lines at x ≡ phase[0], y ≡ phase[1] (mod block), region coords
    seed: int  # DepixParams.seed for both engines
    scale: float  # face size / mosaic width
    angle: float  # degrees
    shift: tuple[float, float]  # face centre - mosaic centre, fraction of the mosaic width
    truth: np.ndarray = field(repr=False)  # (H, W, 3) u8, the crop before pixelation
    region: np.ndarray = field(repr=False)  # (H, W, 3) u8, what the editor sends

    def meta(self) -> dict:
        d = asdict(self)
        del d["truth"], d["region"]
        d["size"] = list(self.region.shape[:2])
        return d


def _face_warp(image: np.ndarray, face: tuple[float, float, float], shape: tuple[int, int],
               centre: tuple[float, float], side: float, angle: float) -> np.ndarray:
    """Render `image` into an (h, w) crop so that its face box lands centred at `centre` with `side` px,
    rotated by `angle` degrees (counter-clockwise on screen). u8 in, u8 out."""
    from skimage.filters import gaussian
    from skimage.transform import AffineTransform, warp

    fx, fy, fside = face
    k = fside / side  # source px per crop px
    src = image.astype(np.float64)
    if k > 1:  # shrinking: low-pass first, or the fine texture aliases into the ground truth
        src = gaussian(src, sigma=(k - 1) / 2, channel_axis=2, preserve_range=True)
    t = np.deg2rad(angle)
    c, s = np.cos(t), np.sin(t)
    # crop (col, row) -> source (col, row): q = face centre + k·R·(p - centre); y points down, so this R
    # turns the face counter-clockwise on screen for a positive angle
    m = np.array([[k * c, -k * s, 0.0], [k * s, k * c, 0.0], [0.0, 0.0, 1.0]])
    m[:2, 2] = np.array([fx, fy]) - m[:2, :2] @ np.array(centre)
    out = warp(src, AffineTransform(matrix=m), output_shape=shape, order=3, mode="reflect", preserve_range=True)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def make_case(index: int, source: Source, image: np.ndarray, rng: np.random.Generator) -> Case:
    """One random mosaicked face; see the module doc for the distribution."""
    b = int(rng.integers(BLOCKS[0], BLOCKS[1] + 1))
    n = int(rng.integers(CELLS[0], CELLS[1] + 1))
    w = n * b + int(rng.integers(-(b // 2), b // 2 + 1))  # rarely a whole number of cells
    h = int(round(w * rng.uniform(1.0, 1.2)))  # faces are taller than wide
    left, top, right, bottom = (int(round(w * rng.uniform(*CONTEXT))) for _ in range(4))
    shape = (top + h + bottom, left + w + right)
    rect = (left, top, w, h)
    # grid lines never on the rectangle's corner: editors align the blocks to the layer, not to the selection
    px = (left + int(rng.integers(1, b))) % b
    py = (top + int(rng.integers(1, b))) % b
    scale = float(rng.uniform(*SCALE))
    angle = float(rng.uniform(-ROTATION, ROTATION))
    shift = (float(rng.uniform(-SHIFT, SHIFT)), float(rng.uniform(-SHIFT, SHIFT)))
    side = w * scale
    # face size, not mosaic width, is what the shift is relative to ("up to 20 % of the face")
    centre = (left + w / 2 + shift[0] * side - 0.5, top + h / 2 + shift[1] * side - 0.5)
    truth = _face_warp(image, source.face, shape, centre, side, angle)
    region = pixelate(truth, b, rect, (px, py))
    seed = int(rng.integers(0, 2**31 - 1))
    return Case(index, source.name, b, rect, (px, py), seed, scale, angle, (shift[0] * scale, shift[1] * scale),
                truth, region)


def make_cases(count: int, seed: int, sources: Sequence[Source]) -> list[Case]:
    """`count` cases; case i uses source i mod len(sources) and a generator seeded by (seed, i): a longer run
    starts with the same cases as a shorter one."""
    images = {s.name: s.load() for s in sources}
    cases = []
    for i in range(count):
        src = sources[i % len(sources)]
        cases.append(make_case(i, src, images[src.name], np.random.default_rng([seed, i])))
    return cases


def save_cases(cases: Sequence[Case], path: Path) -> None:
    np.savez(path, **{f"region_{c.index}": c.region for c in cases})
    path.with_suffix(".json").write_text(json.dumps([c.meta() for c in cases]))


# ---------------------------------------------------------------------------------------------- worker


def _engine_entry() -> Callable:
    """The engine's depixelate: pulse_server.runner's where that module exists (the rewritten engine), else
    the pipeline's. Looked up in the package's own folder: an editable install's import hook would find the
    working tree's runner.py beside an older pulse_server."""
    import pulse_server

    if (Path(pulse_server.__file__).parent / "runner.py").exists():
        from pulse_server.runner import depixelate  # type: ignore[import-not-found]
    else:
        from pulse_server.pipeline import depixelate
    return depixelate


def _jsonable(v: object) -> object:
    """Candidate attributes (floats, tuples, numpy arrays, dataclasses) as plain JSON values."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if hasattr(v, "__dataclass_fields__"):
        return _jsonable(asdict(v))  # type: ignore[arg-type]
    if hasattr(v, "tolist"):  # torch tensors, without importing torch here
        return _jsonable(v.tolist())
    return repr(v)


def _candidate_record(c: object) -> dict:
    return {"downscale_mse": float(c.downscale_mse), "eps_reached": bool(getattr(c, "eps_reached", False)),
            "seed": _jsonable(getattr(c, "seed", None)), "theta": _jsonable(getattr(c, "theta", None)),
            "method": _jsonable(getattr(c, "method", None))}


def worker_main(args: argparse.Namespace) -> int:
    """One engine: load the prior once, warm up, then depixelate the case indices read from stdin, one per
    line, writing the patches to --out/case_<i>.npz and one JSON line per case to stdout."""
    root = Path(args.root).resolve()
    sys.path[0] = str(root)  # in place of bench/: only the engine's own packages are importable by name
    # fd 1 is the result channel: anything the engine prints goes to stderr instead
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    import torch

    torch.set_num_threads(args.threads)
    import pulse_server
    from pulse_server.models.loading import load_prior
    from pulse_server.pipeline import DepixParams

    if not Path(pulse_server.__file__).resolve().is_relative_to(root):  # an installed copy would shadow it
        raise SystemExit(f"pulse_server imported from {pulse_server.__file__}, not from {root}")
    depixelate = _engine_entry()
    prior, _info = load_prior(args.prior, "cpu")
    metas = json.loads(Path(args.cases_path).with_suffix(".json").read_text())
    regions = np.load(args.cases_path)
    out = Path(args.out)

    def params(meta: dict, steps: int) -> DepixParams:
        return DepixParams(candidates=args.k, steps=steps, seed=meta["seed"], eps=args.eps,
                           block=meta["block"] if args.given_block else None)

    try:  # lazy imports, allocator and thread pools: not part of anyone's seconds per job
        depixelate(prior, regions[f"region_{metas[0]['index']}"], None, params(metas[0], 2))
    except Exception as e:  # the timed run reports it
        print(f"warm-up failed: {e!r}", file=sys.stderr)
    by_index = {m["index"]: m for m in metas}
    print(json.dumps({"ready": str(root), "engine": f"{depixelate.__module__}.depixelate"}), file=channel)
    for line in sys.stdin:
        meta = by_index[int(line)]
        region = regions[f"region_{meta['index']}"]
        rec: dict = {"index": meta["index"]}
        t0 = time.perf_counter()
        try:
            res = depixelate(prior, region, None, params(meta, args.steps))
            rec["seconds"] = time.perf_counter() - t0
            info = res.mosaic
            rec["mosaic"] = {"block": int(info.block), "phase": _jsonable(info.phase), "rect": _jsonable(info.rect),
                             "detected": bool(info.detected)}
            rec["candidates"] = [_candidate_record(c) for c in res.candidates]
            np.savez(out / f"case_{meta['index']}.npz", patches=np.stack([np.asarray(p) for p in res.patches]))
        except Exception as e:  # a failed case is a result (counted), not the end of the run
            rec["seconds"] = time.perf_counter() - t0
            rec["error"] = f"{type(e).__name__}: {e}"
        print(json.dumps(rec), file=channel)
    return 0


# ---------------------------------------------------------------------------------------------- parent


@dataclass
class Engine:
    label: str
    root: Path
    out: Path
    log: Path
    proc: subprocess.Popen | None = None
    entry: str = ""


def extract_revision(rev: str, dest: Path) -> Path:
    """`git archive REV pulse_server protocol` unpacked into dest: the baseline engine's root."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.Popen(["git", "archive", rev, "pulse_server", "protocol"], cwd=REPO, stdout=subprocess.PIPE)
    unpack = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=archive.stdout)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait() != 0 or unpack.returncode != 0:
        raise SystemExit(f"cannot extract pulse_server and protocol at revision {rev!r}")
    return dest


def start_engine(engine: Engine, cases_file: Path, args: argparse.Namespace) -> None:
    engine.out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--root", str(engine.root),
           "--cases-file", str(cases_file), "--out", str(engine.out), "--prior", str(Path(args.prior).resolve()),
           "-k", str(args.k), "--steps", str(args.steps), "--eps", repr(args.eps), "--threads", str(args.threads)]
    if args.given_block:
        cmd.append("--given-block")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONDONTWRITEBYTECODE": "1"}
    engine.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=engine.log.open("w"),
                                   text=True, bufsize=1, env=env, cwd=engine.root)


def _reply(engine: Engine) -> dict:
    assert engine.proc is not None and engine.proc.stdout is not None
    line = engine.proc.stdout.readline()
    if not line:
        tail = engine.log.read_text()[-3000:]
        raise RuntimeError(f"{engine.label} worker ended (rc {engine.proc.wait()}):\n{tail}")
    return json.loads(line)


def ask(engine: Engine, index: int) -> dict:
    assert engine.proc is not None and engine.proc.stdin is not None
    engine.proc.stdin.write(f"{index}\n")
    engine.proc.stdin.flush()
    return _reply(engine)


def stop_engine(engine: Engine) -> None:
    if engine.proc is None:
        return
    if engine.proc.stdin:
        engine.proc.stdin.close()
    try:
        engine.proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        engine.proc.kill()
        engine.proc.wait()


def case_metrics(case: Case, rec: dict, patches: np.ndarray | None, eps: float) -> dict:
    """Everything measured for one engine on one case (see the module doc)."""
    row: dict = {"index": case.index, "source": case.source, "block": case.block, "seconds": rec.get("seconds"),
                 "error": rec.get("error")}
    if patches is None or rec.get("error"):
        return row
    cands = rec["candidates"]
    best = patches[0]
    psnr, ssim = psnr_ssim(best, case.truth, case.rect)
    row.update(
        eps_reached=cands[0]["downscale_mse"] <= eps,
        cands_at_eps=sum(c["downscale_mse"] <= eps for c in cands),
        cands=len(cands),
        cell_error=cands[0]["downscale_mse"],
        remosaic=remosaic_mae(best, case.region, case.rect, case.block, case.phase),
        blockiness=blockiness(best, case.rect, case.block, case.phase),
        photo_blockiness=blockiness(case.truth, case.rect, case.block, case.phase),
        psnr=psnr,
        ssim=ssim,
        outside=all(outside_identical(p, case.region, case.rect) for p in patches),
        block_hit=rec["mosaic"]["block"] == case.block,
        grid_hit=rec["mosaic"]["block"] == case.block and tuple(rec["mosaic"]["phase"]) == case.phase,
        diversity=diversity(list(patches), case.rect),
        mosaic=rec["mosaic"],
        methods=[c.get("method") for c in cands],
    )
    return row


def _median(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not np.isnan(v)]
    return statistics.median(vals) if vals else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not np.isnan(v)]
    return statistics.fmean(vals) if vals else None


def summarise(label: str, rows: Sequence[dict]) -> dict:
    """Medians over the solved cases; shares over all cases (a failed case has not reached eps)."""
    ok = [r for r in rows if not r.get("error")]
    n = len(rows)
    cands = sum(r["cands"] for r in ok)
    return {
        "engine": label, "cases": n, "failed": n - len(ok),
        "eps_share": sum(r["eps_reached"] for r in ok) / n if n else None,
        "cands_eps_share": sum(r["cands_at_eps"] for r in ok) / cands if cands else None,
        "cell_error": _median(r["cell_error"] for r in ok),
        "remosaic": _median(r["remosaic"] for r in ok),
        "blockiness": _median(r["blockiness"] for r in ok),
        "photo_blockiness": _median(r["photo_blockiness"] for r in ok),
        "psnr": _median(r["psnr"] for r in ok),
        "ssim": _median(r["ssim"] for r in ok),
        "outside_share": sum(r["outside"] for r in ok) / len(ok) if ok else None,
        "block_hit_share": sum(r["block_hit"] for r in ok) / len(ok) if ok else None,
        "diversity": _median(r["diversity"] for r in ok),
        "seconds": _median(r["seconds"] for r in rows),
        "seconds_mean": _mean(r["seconds"] for r in rows),
        # the issue's target: where the best candidate matches eps, every candidate does
        "best_eps_cases": sum(r["eps_reached"] for r in ok),
        "all_eps_cases": sum(r["eps_reached"] and r["cands_at_eps"] == r["cands"] for r in ok),
    }


def _f(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def table(summaries: Sequence[dict]) -> str:
    head = ("| engine | cases (failed) | eps reached | candidates at eps | cell error (reported) | re-mosaic MAE /255 "
            "| blockiness (photo) | PSNR dB | SSIM | outside identical | block detected | diversity /255 | s/job (mean) |")
    lines = [head, "|" + "---|" * 13]
    for s in summaries:
        lines.append(
            f"| {s['engine']} | {s['cases']} ({s['failed']}) | {_f(s['eps_share'], '.0%')} | {_f(s['cands_eps_share'], '.0%')} "
            f"| {_f(s['cell_error'], '.2e')} | {_f(s['remosaic'], '.2f')} "
            f"| {_f(s['blockiness'], '.2f')} ({_f(s['photo_blockiness'], '.2f')}) | {_f(s['psnr'], '.2f')} "
            f"| {_f(s['ssim'], '.3f')} | {_f(s['outside_share'], '.0%')} | {_f(s['block_hit_share'], '.0%')} "
            f"| {_f(s['diversity'], '.1f')} | {_f(s['seconds'], '.2f')} ({_f(s.get('seconds_mean'), '.2f')}) |")
    return "\n".join(lines)


def verdict(base: dict | None, cur: dict) -> str:
    """The ratio of seconds and the done-when targets, judged on the current row."""
    parts = []
    ratio = cur["seconds"] / base["seconds"] if base and base["seconds"] and cur["seconds"] else None
    if ratio is not None:
        mean = (f" (mean {cur['seconds_mean'] / base['seconds_mean']:.2f}×)"
                if base.get("seconds_mean") and cur.get("seconds_mean") else "")
        parts.append(f"current / baseline s/job: {ratio:.2f}×{mean}")
    if cur.get("best_eps_cases") is not None:
        parts.append(f"every candidate at eps where the best is: {cur['all_eps_cases']}/{cur['best_eps_cases']} cases")

    def mark(ok: bool | None) -> str:
        return "?" if ok is None else ("yes" if ok else "NO")

    checks = [
        (f"eps reached ≥ {TARGET_EPS_SHARE:.0%}", None if cur["eps_share"] is None else cur["eps_share"] >= TARGET_EPS_SHARE),
        (f"median blockiness ≤ {TARGET_BLOCKINESS}", None if cur["blockiness"] is None else cur["blockiness"] <= TARGET_BLOCKINESS),
        (f"re-mosaic MAE ≤ {TARGET_REMOSAIC:g}/255", None if cur["remosaic"] is None else cur["remosaic"] <= TARGET_REMOSAIC),
        ("outside identical", None if cur["outside_share"] is None else cur["outside_share"] == 1.0),
        (f"time ≤ {TARGET_TIME_RATIO}× baseline", None if ratio is None else ratio <= TARGET_TIME_RATIO),
    ]
    parts.append("targets (current): " + ", ".join(f"{name} {mark(ok)}" for name, ok in checks))
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------- images


def _tile(img: np.ndarray | None, shape: tuple[int, int], label: str, height: int) -> Image.Image:
    """One labelled column of a strip; a missing patch (failed job) is a grey tile."""
    h, w = shape
    pic = Image.fromarray(img) if img is not None else Image.new("RGB", (w, h), (128, 128, 128))
    scale = max(1, -(-height // h))  # small regions are enlarged by whole pixels (nearest): cells stay crisp
    pic = pic.resize((w * scale, h * scale), Image.Resampling.NEAREST)
    tile = Image.new("RGB", (pic.width, pic.height + 14), (255, 255, 255))
    tile.paste(pic, (0, 14))
    ImageDraw.Draw(tile).text((2, 1), label, fill=(0, 0, 0))
    return tile


def save_strip(case: Case, columns: Sequence[tuple[str, np.ndarray | None]], path: Path, height: int = 256) -> None:
    """truth | mosaic | one column per (label, patch), side by side with 4 px gaps."""
    tiles = [_tile(case.truth, case.truth.shape[:2], "truth", height),
             _tile(case.region, case.region.shape[:2], f"mosaic b={case.block}", height)]
    tiles += [_tile(img, case.truth.shape[:2], label, height) for label, img in columns]
    strip = Image.new("RGB", (sum(t.width for t in tiles) + 4 * (len(tiles) - 1), max(t.height for t in tiles)),
                      (255, 255, 255))
    x = 0
    for t in tiles:
        strip.paste(t, (x, 0))
        x += t.width + 4
    strip.save(path, optimize=True)


# ----------------------------------------------------------------------------------------------- run


def machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.1f} at the end" if hasattr(os, "getloadavg") else ""
    return f"CPU: {cpu}, {os.cpu_count()} cores, {threads} thread(s) per engine{load}"


def git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def current_label() -> str:
    head = git("rev-parse", "--short", "HEAD") or "?"
    dirty = git("status", "--porcelain", "--", "pulse_server", "protocol")
    return f"current {head}{'+changes' if dirty else ''}"


def insert_section(text: str, block: str, intro: str) -> str:
    """RESULTS.md with `block` appended at the end of the quality section (created with `intro` if absent)."""
    if SECTION not in text:
        text = text.rstrip("\n") + "\n\n" + intro.rstrip("\n") + "\n"
    start = text.index(SECTION)
    nxt = text.find("\n## ", start + len(SECTION))
    end = len(text) if nxt < 0 else nxt + 1
    before, after = text[:end].rstrip("\n"), text[end:]
    return before + "\n\n" + block.rstrip("\n") + "\n" + ("\n" + after if after else "")


INTRO = f"""{SECTION} — restoration quality on mosaicked face photos

See the script's docstring for the cases and the metrics."""


def report(args: argparse.Namespace, sources: Sequence[Source], summaries: Sequence[dict], verdict_line: str,
           argv: Sequence[str]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cmd = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/quality.py", *argv])
    return "\n".join([
        f"### {when} — commit {git('rev-parse', '--short', 'HEAD') or '?'} — {machine(args.threads)}",
        "",
        f"`{cmd}` (prior {Path(args.prior).name}, K={args.k}, {args.steps} steps, eps {args.eps:g}, seed {args.seed}, "
        f"block {'given' if args.given_block else 'detected'}; sources: {', '.join(s.name for s in sources)})",
        "",
        table(summaries),
        "",
        verdict_line,
    ])


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    sources, missing = available_sources(args.sources)
    for m in missing:
        print(f"# left out: {m}", file=sys.stderr)
    if not sources:
        print("no face photo source is installed (scikit-image: pip install -e '.[bench]')", file=sys.stderr)
        return 2
    if not Path(args.prior).is_file():
        print(f"prior not found: {args.prior}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    cases = make_cases(args.cases, args.seed, sources)
    with tempfile.TemporaryDirectory(prefix="pulse-quality-") as tmp_s:
        tmp = Path(tmp_s)
        cases_file = tmp / "cases.npz"
        save_cases(cases, cases_file)
        engines = []
        if args.baseline.lower() != "none":
            root = extract_revision(args.baseline, tmp / "baseline")
            engines.append(Engine(f"baseline {args.baseline}", root, tmp / "out-baseline", tmp / "baseline.log"))
        engines.append(Engine(current_label(), REPO, tmp / "out-current", tmp / "current.log"))
        records: dict[str, list[dict]] = {e.label: [] for e in engines}
        try:
            for e in engines:
                start_engine(e, cases_file, args)
            for e in engines:
                e.entry = _reply(e)["engine"]
                print(f"# {e.label}: {e.entry} from {e.root}", flush=True)
            for case in cases:  # in turn, so both engines see the same machine load
                for e in engines:
                    rec = ask(e, case.index)
                    patch_file = e.out / f"case_{case.index}.npz"
                    patches = np.load(patch_file)["patches"] if patch_file.exists() else None
                    row = case_metrics(case, rec, patches, args.eps)
                    records[e.label].append(row)
                    _progress(e.label, case, row)
                if args.images and case.index < args.image_cases:
                    _strip(args.images, case, engines)
        finally:
            for e in engines:
                stop_engine(e)
    summaries = [summarise(e.label, records[e.label]) for e in engines]
    verdict_line = verdict(summaries[0] if len(summaries) > 1 else None, summaries[-1])
    text = report(args, sources, summaries, verdict_line, argv)
    print()
    print(text)
    print(f"\n# {len(cases)} cases in {time.perf_counter() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"summaries": summaries, "cases": [c.meta() for c in cases],
                                               "rows": records}, indent=1, default=_jsonable))
    if args.write:
        RESULTS.write_text(insert_section(RESULTS.read_text(), text, INTRO))
        print(f"# added to {RESULTS.relative_to(REPO)}")
    return 0


def _progress(label: str, case: Case, row: dict) -> None:
    if row.get("error"):
        print(f"  case {case.index:2d} {case.source:9s} b={case.block:2d}  {label}: FAILED {row['error']}", flush=True)
        return
    print(f"  case {case.index:2d} {case.source:9s} b={case.block:2d}  {label}: err {row['cell_error']:.2e} "
          f"re-mosaic {row['remosaic']:.2f} blocky {row['blockiness']:.2f} (photo {row['photo_blockiness']:.2f}) "
          f"PSNR {row['psnr']:.1f} SSIM {row['ssim']:.3f} block {row['mosaic']['block']} "
          f"{row['seconds']:.1f} s", flush=True)


def _strip(folder: str, case: Case, engines: Sequence[Engine]) -> None:
    """truth | mosaic | each engine's best | the last engine's other candidates."""
    columns: list[tuple[str, np.ndarray | None]] = []
    last = None
    for e in engines:
        f = e.out / f"case_{case.index}.npz"
        patches = np.load(f)["patches"] if f.exists() else None
        columns.append((f"{e.label.split()[0]} best", None if patches is None else patches[0]))
        last = patches
    if last is not None:
        columns += [(f"{engines[-1].label.split()[0]} #{i + 1}", p) for i, p in enumerate(last[1:], start=1)]
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    save_strip(case, columns, out / f"case{case.index:02d}-{case.source}-b{case.block}.png")


def parse(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=24, help="number of cases (default 24)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the cases (and of each case's engine seed)")
    ap.add_argument("--baseline", default="bb25712", help="git revision of the baseline engine; 'none' to skip")
    ap.add_argument("--prior", default=str(DEFAULT_PRIOR), help="face prior checkpoint (default: the 32² DCGAN)")
    ap.add_argument("-k", "--candidates", dest="k", type=int, default=3, help="K (default 3)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eps", type=float, default=EPS)
    ap.add_argument("--given-block", action="store_true", help="tell the engines the true block size (no detection)")
    ap.add_argument("--sources", nargs="+", choices=[s.name for s in SOURCES], default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per engine (default 1: a shared machine)")
    ap.add_argument("--images", metavar="DIR", default=None, help="save a PNG strip per case for the first cases")
    ap.add_argument("--image-cases", type=int, default=6, help="how many cases get a strip (default 6)")
    ap.add_argument("--json", metavar="PATH", default=None, help="also write per-case rows as JSON")
    ap.add_argument("--write", action="store_true", help=f"add the table to {RESULTS.name}")
    # worker side (internal)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--cases-file", dest="cases_path", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        return worker_main(args)
    return run(args, argv)


if __name__ == "__main__":
    sys.exit(main())
