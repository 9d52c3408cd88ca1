"""How long a job takes on this machine: a cost model per (model, device), measured once, cached, kept honest.

    seconds(job) ≈ overhead + scale[mode] · (search_fixed + Σ over the search's phases steps × per_step(kind, B))

    per_step(kind, B)  kind: "latent" (PULSE's latent search, the placement warm-up) or "feature" (ILO's feature
                       refinement), B: the batch the phase runs (K candidates; K × starts in the warm-up). Linear
                       in B through the figures measured at B = 1 and B = 4, and along the same line beyond: a
                       CPU batches almost linearly, a GPU far below it, and the two points capture either.
    overhead           depixelate: job_fixed + prepare(P) + K · finish(P), P the region's pixels — the mosaic
                       analysis and the K patches' placement and blend grow with the region (seconds on a 1000²
                       selection, more than the 32² prior's whole search); each a power law through two measured
                       sizes, t(P) = t(P0) · (P / P0)^e, P0 = 240², the other 480² (e ≈ 0.9 for both on a CPU;
                       between 120² and 240² fixed costs hid the growth: e ≈ 0.4–0.6, and 1000² selections took twice
                       their estimate); solve: job_fixed.

The figures come from `calibrate.py`, run by the worker right after a model's first load on a device, and are
cached as JSON under the user cache folder, one file per model (name + checkpoint size), device name and torch
version. After every finished job the two scales of its mode move toward what the job measured (an EMA), so
estimates follow the machine: its load, its clocks, what the calibration's short runs miss.

The estimate covers the whole step budget. The search stops early once every face matches and stops improving
(mosaic_search's early stop), so a job often ends a little sooner; and a candidate that misses eps where the
best one matches is searched once more (mosaic_search's retry), so a job sometimes runs longer (on the 32²
prior's bench cases: 3 jobs in 24, each about twice its search). The scales' EMA averages both in.

Torch-free, so the daemon's loop can answer SUBMIT without importing it; `segments` reads the solver's phase
split (`mosaic_search.phase_steps`), which the worker imports before it creates an `Estimates`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from protocol.job import MODES, PARAMS

log = logging.getLogger("pulse.estimate")

FORMAT = 2  # of the cache files; a change of the cost model's terms bumps it (old files are then ignored)
# 2: the pixel terms' exponents measured between 240² and 480² (1: 120² and 240², too low for large regions)
EMA = 0.25  # weight of the latest job in the scales: a few jobs to converge, one outlier moves them a quarter
RATIO_CLAMP = (0.1, 10.0)  # one job's measured/predicted ratio, bounded: a job paused by a debugger is not the norm
BATCH_POINTS = (1, 4)  # the batches calibrate.py measures


@dataclass(frozen=True)
class ModelId:
    """A checkpoint as the cache knows it: its name and its size in bytes (a re-download or another file of the
    same name changes the size, and so the key)."""

    name: str
    size: int


@dataclass(frozen=True)
class JobShape:
    """What a job's cost depends on: its parameters and its region's size."""

    mode: str = PARAMS["mode"].default
    candidates: int = PARAMS["candidates"].default
    steps: int = PARAMS["steps"].default
    method: str = PARAMS["method"].default
    precision: str = PARAMS["precision"].default
    pixels: int = 0  # width × height of the region (depixelate); the low-res face's (solve)

    @classmethod
    def of(cls, params: Any, pixels: int, precision: str | None = None) -> JobShape:
        """From a `protocol.job.JobSettings` (or anything with its fields), the region's pixel count and the precision the
        job runs at (its own unless "default", which means the daemon's)."""
        return cls(params.mode, params.candidates, params.steps, params.method, precision or params.precision,
                   int(pixels))


@dataclass(frozen=True)
class Segment:
    steps: int
    batch: int
    kind: str  # "latent" | "feature"


@dataclass
class Calibration:
    """One model's speed on one device (the cache file's payload)."""

    latent: tuple[float, float]  # seconds per latent-search step at batch 1 and batch 4
    feature: tuple[float, float]  # seconds per feature-refinement step at batch 1 and 4 (= latent without stages)
    refines: bool  # the model has stages: "ilo" jobs may run the feature phase
    search_fixed: float  # seconds per search outside its steps (start latents, forward model, first-step warm-up)
    pixels: int  # P0: the size of the region the pixel terms were measured on
    prepare: tuple[float, float]  # (seconds at P0, exponent): checks, mosaic analysis, cell means
    finish: tuple[float, float]  # (seconds per candidate at P0, exponent): placement, correction, blend
    job_fixed: float = 0.02  # seconds per job outside the search and the pixel terms
    scale: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in MODES})  # search: measured/model
    overhead_scale: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in MODES})
    jobs: int = 0  # finished jobs folded into the scales
    seconds: float = 0.0  # how long the calibration took

    # ---- the model ------------------------------------------------------------------------------------

    def per_step(self, kind: str, batch: int) -> float:
        b1, b4 = BATCH_POINTS
        c1, c4 = self.feature if kind == "feature" else self.latent
        slope = max(0.0, (c4 - c1) / (b4 - b1))  # a noisy GPU measurement must not make batches cheaper
        return c1 + slope * (max(1, batch) - b1)

    def search_seconds(self, shape: JobShape, steps: int | None = None) -> float:
        """Model seconds (before `scale`) of the search's first `steps` steps (default: all of them)."""
        return self.search_fixed + sum(s.steps * self.per_step(s.kind, s.batch)
                                       for s in first_steps(segments(shape, self.refines), steps))

    def prepare_seconds(self, shape: JobShape) -> float:
        """Model seconds (before `overhead_scale`) spent before the search's first step."""
        return self.job_fixed / 2 + (self._at(self.prepare, shape.pixels) if shape.mode == "depixelate" else 0.0)

    def overhead_seconds(self, shape: JobShape) -> float:
        """Model seconds (before `overhead_scale`) outside the search."""
        finish = shape.candidates * self._at(self.finish, shape.pixels) if shape.mode == "depixelate" else 0.0
        return self.prepare_seconds(shape) + self.job_fixed / 2 + finish

    def _at(self, term: tuple[float, float], pixels: int) -> float:
        seconds, exponent = term
        return seconds * (max(1, pixels) / max(1, self.pixels)) ** exponent

    def estimate(self, shape: JobShape) -> float:
        """Seconds for the whole job once it runs (its full step budget)."""
        return (self.scale.get(shape.mode, 1.0) * self.search_seconds(shape)
                + self.overhead_scale.get(shape.mode, 1.0) * self.overhead_seconds(shape))

    def observe(self, shape: JobShape, search_s: float, steps_run: int | None, total_s: float) -> None:
        """Fold a finished job in: its search took `search_s` for `steps_run` steps (None: all), the whole job
        `total_s`."""
        predicted = self.search_seconds(shape, steps_run)
        if predicted > 0 and search_s > 0:
            self.scale[shape.mode] = _ema(self.scale.get(shape.mode, 1.0), search_s / predicted)
        overhead, predicted_overhead = total_s - search_s, self.overhead_seconds(shape)
        if predicted_overhead > 0 and overhead > 0:
            self.overhead_scale[shape.mode] = _ema(self.overhead_scale.get(shape.mode, 1.0), overhead / predicted_overhead)
        self.jobs += 1

    # ---- JSON -------------------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Calibration:
        cal = cls(latent=_pair(raw["latent"]), feature=_pair(raw["feature"]), refines=bool(raw["refines"]),
                  search_fixed=float(raw["search_fixed"]), pixels=int(raw["pixels"]), prepare=_pair(raw["prepare"]),
                  finish=_pair(raw["finish"]), job_fixed=float(raw.get("job_fixed", 0.02)),
                  jobs=int(raw.get("jobs", 0)), seconds=float(raw.get("seconds", 0.0)))
        for name in ("scale", "overhead_scale"):
            for mode, value in dict(raw.get(name) or {}).items():
                if mode in MODES and _positive(value):
                    getattr(cal, name)[mode] = float(value)
        if (not all(_positive(v) for v in (*cal.latent, *cal.feature, *cal.prepare, *cal.finish, cal.pixels))
                or min(cal.search_fixed, cal.job_fixed) < 0 or not all(e <= 2 for e in (cal.prepare[1], cal.finish[1]))):
            raise ValueError("calibration figures out of range")
        return cal


def _ema(old: float, ratio: float) -> float:
    """The scale after one job whose measured/model-predicted ratio (before scaling) was `ratio`."""
    return (1 - EMA) * old + EMA * min(max(ratio, RATIO_CLAMP[0]), RATIO_CLAMP[1])


def _pair(v: Any) -> tuple[float, float]:
    a, b = v
    return float(a), float(b)


def _positive(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0


# ---- the search's structure ------------------------------------------------------------------------------


def segments(shape: JobShape, refines: bool) -> list[Segment]:
    """The search's phases as (steps, batch, kind), in order (solver/mosaic_search.py, solver/pulse.py)."""
    k = shape.candidates
    if shape.mode == "solve":
        # the default path batches the K candidates; fp32 runs them one after another (pulse.py)
        return [Segment(shape.steps * k, 1, "latent")] if shape.precision == "fp32" else [Segment(shape.steps, k, "latent")]
    from .solver.mosaic_search import MosaicConfig, phase_steps

    cfg = MosaicConfig(candidates=k, steps=shape.steps, method=shape.method)
    warm, latent, feats = phase_steps(cfg, refines and shape.method == "ilo")
    starts = cfg.starts_per_candidate if warm else 1
    return [s for s in (Segment(warm, k * starts, "latent"), Segment(latent, k, "latent"), Segment(feats, k, "feature"))
            if s.steps > 0]


def first_steps(segs: list[Segment], steps: int | None) -> list[Segment]:
    """The segments cut after `steps` steps in all (None: all of them)."""
    if steps is None:
        return segs
    out, left = [], max(0, steps)
    for s in segs:
        if left <= 0:
            break
        out.append(Segment(min(s.steps, left), s.batch, s.kind))
        left -= s.steps
    return out


# ---- time left of a running job ------------------------------------------------------------------------


class JobClock:
    """Time left for one running job from its own pace: what the model says remains, times how much slower or
    faster than the model this job has run so far. Without a calibration: steps left at the pace so far."""

    def __init__(self, cal: Calibration | None, shape: JobShape, started: float) -> None:
        self.cal, self.shape, self.started = cal, shape, started

    def eta(self, step: int, total: int, now: float) -> float:
        """Seconds left after `step` of `total` steps, `now` on the clock `started` was read from; 0 = unknown."""
        elapsed = max(0.0, now - self.started)
        if step <= 0 or total <= 0 or elapsed <= 0:
            return 0.0
        step = min(step, total)
        cal, shape = self.cal, self.shape
        if cal is None:
            return elapsed * (total - step) / step
        s_scale = cal.scale.get(shape.mode, 1.0)
        o_scale = cal.overhead_scale.get(shape.mode, 1.0)
        done = o_scale * cal.prepare_seconds(shape) + s_scale * cal.search_seconds(shape, step)
        whole = cal.estimate(shape)
        if done <= 0:
            return 0.0
        return max(0.0, whole - done) * elapsed / done


# ---- the cache -------------------------------------------------------------------------------------------


def cache_folder() -> Path:
    from .models.registry import cache_dir

    return cache_dir() / "estimates"


def cache_key(model: ModelId, device: str, torch_version: str) -> str:
    return f"{model.name}|{model.size}|{device}|torch {torch_version}|format {FORMAT}"


def cache_file(model: ModelId, device: str, torch_version: str, folder: Path | None = None) -> Path:
    key = cache_key(model, device, torch_version)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", model.name)[:48] or "model"
    return (folder or cache_folder()) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"


class Estimates:
    """The calibrations of one device, in memory and in the cache folder; safe to share between the worker
    thread (calibrates, observes) and the daemon's loop (asks for estimates)."""

    def __init__(self, device: str, torch_version: str, folder: Path | None = None) -> None:
        self.device, self.torch_version = device, torch_version
        self.folder = folder
        self._known: dict[ModelId, Calibration | None] = {}  # None: no file (this process writes the only one)
        self._lock = threading.Lock()

    def get(self, model: ModelId) -> Calibration | None:
        with self._lock:
            if model not in self._known:
                self._known[model] = self._read(model)
            return self._known[model]

    def put(self, model: ModelId, cal: Calibration) -> None:
        with self._lock:
            self._known[model] = cal
            self._write(model, cal)

    def estimate(self, model: ModelId, shape: JobShape) -> float:
        """Seconds for the job once it runs; 0 when this model has not been measured on this device."""
        cal = self.get(model)
        if cal is None:
            return 0.0
        with self._lock:
            return cal.estimate(shape)

    def clock(self, model: ModelId | None, shape: JobShape, started: float) -> JobClock:
        cal = self.get(model) if model is not None else None
        with self._lock:  # a copy: observe() changes the scales under a running job's clock otherwise
            snapshot = copy.deepcopy(cal)
        return JobClock(snapshot, shape, started)

    def observe(self, model: ModelId, shape: JobShape, search_s: float, steps_run: int | None, total_s: float) -> None:
        cal = self.get(model)
        if cal is None:
            return
        with self._lock:
            cal.observe(shape, search_s, steps_run, total_s)
            self._write(model, cal)

    def path(self, model: ModelId) -> Path:
        return cache_file(model, self.device, self.torch_version, self.folder)

    def _read(self, model: ModelId) -> Calibration | None:
        path = self.path(model)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("key") != cache_key(model, self.device, self.torch_version):
                return None  # a hash collision, or a file of another format
            return Calibration.from_json(raw["calibration"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:  # unreadable or damaged: measured again
            log.warning("ignoring the speed measurements in %s: %s", path, exc)
            return None

    def _write(self, model: ModelId, cal: Calibration) -> None:
        """Atomically (a reader never sees half a file); a cache that cannot be written costs only the reuse."""
        path = self.path(model)
        doc = {"key": cache_key(model, self.device, self.torch_version), "model": model.name, "size": model.size,
               "device": self.device, "torch": self.torch_version, "format": FORMAT, "calibration": cal.to_json()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(doc, fh, indent=1)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("cannot cache speed measurements in %s: %s", path, exc)


# ---- which checkpoint a job will run ---------------------------------------------------------------------


def model_id_of(info: Any) -> ModelId | None:
    """A loaded model's id, from its `PriorInfo` (name, source file)."""
    try:
        return ModelId(str(info.name), Path(info.source).stat().st_size)
    except (OSError, TypeError, ValueError):
        return None


def model_id_for(weights: str | None, device: str) -> ModelId | None:
    """The id of the model `load_prior(weights, device)` would load, without loading it (nor importing torch);
    None when its file is not here yet (a model still to be downloaded has never been measured)."""
    from .models.registry import REGISTRY, default_model, get_spec, is_present, weights_path

    if weights is None:
        weights = default_model(device)
    if weights in REGISTRY and not Path(weights).exists():  # load_prior's own rule
        if not is_present(weights):
            return None
        try:
            return ModelId(get_spec(weights).model_name, weights_path(weights).stat().st_size)
        except OSError:
            return None
    path = Path(weights).expanduser()
    try:
        return ModelId(path.stem, path.stat().st_size)
    except OSError:
        return None


def cached_estimate(info: Any, device: str, torch_version: str, shape: JobShape) -> float:
    """For an in-process run: the estimate from a calibration the daemon cached for this model and device, or 0.
    Never measures anything itself."""
    model = model_id_of(info)
    if model is None:
        return 0.0
    return Estimates(device, torch_version).estimate(model, shape)


__all__ = ["Calibration", "Estimates", "JobClock", "JobShape", "ModelId", "Segment", "cached_estimate",
           "model_id_for", "model_id_of", "segments"]
