"""One worker thread per device: loads the face prior once, then runs jobs one at a time.

A job may name another registry model (`params.model`): it is loaded on first use and the two most
recently used stay warm (`max_models`), so switching back and forth between two models costs nothing.

The worker never touches the socket: it reports through `emit(kind, job, payload)` (thread-safe, wakes
the daemon loop). Per job it calls the runner (`runner.depixelate` or `runner.solve`, as the CLIs do)
with `cancel=job.cancel_event.is_set`, so a cancel lands within one solver step. A failing job (bad
region, GPU out of memory, a bug) becomes one FAILED; the worker and the warm model carry on.

`weights="noop"` (`models.noop`: also `noop:<seconds per step>`) is a model-free echo used by
bench/transport.py and transport tests: the result is the submitted region, unchanged.

`JobExecutor` is everything above but the thread: a cluster actor (`pulse_server.cluster.actor`) wraps the
same executor, so a job runs through the same code on the daemon's own device and on a pool of actors.

Estimates (`estimate.py`): a model's first load on a device is followed by a short measurement of its speed
(`calibrate.py`, still in the job's "loading" state), cached per model and device; `estimate()` answers the
daemon's SUBMIT from it, PROGRESS carries the running job's time left, and each finished job corrects the figures.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import traceback
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from protocol.job import JobSettings
from protocol.messages import Candidate, Failed, ImageBlob, JpegBlob, Preview, Progress, Result

from . import runner
from .devices import free_memory, is_out_of_memory
from .errors import Cancelled, PulseError
from .estimate import Estimates, JobClock, JobShape, ModelId, model_id_for, model_id_of
from .jobs import Job, JobQueue, solver_seed
from .models import noop

log = logging.getLogger("pulse.worker")

Emit = Callable[[str, Job, Any], None]
PREVIEW_MAX_SIDE = 256


class JobExecutor:
    """Runs one job at a time on one device with warm models, reporting through `emit`: the part of the
    worker that the daemon's thread (`Worker`) and a cluster actor (`cluster.actor`) share."""

    def __init__(self, emit: Emit, *, weights: str | None, device: str = "auto", precision: str = "default",
                 preload: bool = False, max_models: int = 2) -> None:
        self.emit = emit
        self.weights = weights
        self.requested_device = device
        self.precision = precision
        self.preload = preload
        self.noop_model = noop.parse(weights)  # the model-free echo backend, else None
        self.noop = self.noop_model is not None
        self.device = "cpu" if self.noop else device  # resolved ("cuda:0"/"cpu") once torch is imported
        self.prior: Any = None  # the current job's model
        self.info: Any = None
        # Loaded models, least recently used first: "" = the daemon's own (--model), else a registry name a
        # job asked for. At most `max_models` stay warm (each StyleGAN2 holds its weights and noise buffers).
        self.models: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self.max_models = max(1, max_models)
        self._models_lock = threading.Lock()  # the loop thread reads `models` for WELCOME/STATUS
        self.current: Job | None = None
        self._stopping = threading.Event()
        # Set in prepare(), once torch and the solver are imported: until then nothing is known (estimate() 0).
        self.estimates: Estimates | None = None
        self._uncalibrated: set[ModelId] = set()  # calibrations that failed: not retried on every job

    # ---- public, called from the loop thread ----------------------------------------------------

    def model_summaries(self) -> list[dict[str, Any]]:
        """WELCOME/STATUS `models`: the daemon's own model first, then the other loaded ones, then the
        registry's others (not loaded); `id` is what a job's `model` param names ("" = the daemon's own)."""
        if self.noop_model is not None:
            return [self.noop_model.summary()]
        from .models.registry import REGISTRY

        with self._models_lock:
            loaded = list(self.models.items())
        own = dict(loaded).get("")
        if own is not None:
            first = _summary("", own[1])
        else:
            name = str(self.weights or "default").replace("\\", "/").rsplit("/", 1)[-1]
            first = {"name": name, "id": "", "family": "", "resolution": 0, "loaded": False}
        rows = [first] + [_summary(key, info) for key, (_, info) in loaded if key]
        own_name = self._own_model_name()
        rows += [{"name": spec.model_name, "id": key, "family": spec.family, "resolution": spec.resolution,
                  "loaded": False} for key, spec in REGISTRY.items()
                 if key != own_name and all(r["id"] != key for r in rows)]
        return rows

    def stop(self) -> None:
        self._stopping.set()
        job = self.current
        if job is not None:
            job.cancel("the daemon is stopping")

    def prepare(self) -> None:
        """Resolve the device and, with `preload`, load the model (and measure it); failures are reported on the
        first job."""
        if not self.noop:
            self._resolve_device()
            self._open_estimates()
            if self.preload:
                try:
                    self._load()
                    self._calibrate(None)
                except Exception as exc:  # retried (and reported) on the first job
                    log.error("preloading the model failed: %s", exc)

    def estimate(self, params: JobSettings, pixels: int) -> float:
        """Seconds `params` will take once it runs (its whole step budget); 0 = unknown. Loop thread: no torch."""
        estimates = self.estimates
        if estimates is None or self.noop:
            return 0.0
        model = self._model_id(params.model)
        shape = JobShape.of(params, pixels, self._precision_of(params))
        return estimates.estimate(model, shape) if model is not None else 0.0

    def run_job(self, job: Job) -> None:
        """Run `job` to its one "final" event (RESULT or FAILED); never raises."""
        self.current = job
        if self._stopping.is_set():  # stop() may have looked at `current` before it was set
            job.cancel("the daemon is stopping")
        try:
            self._run_job(job)
        finally:
            self.current = None
            job.release_inputs()

    def _resolve_device(self) -> None:
        try:
            from .devices import resolve_device

            self.device = str(resolve_device(self.requested_device))
        except Exception as exc:  # reported on the first job instead
            log.error("cannot use device %s: %s", self.requested_device, exc)

    def _open_estimates(self) -> None:
        try:
            import torch

            from .devices import device_label
            from .solver import mosaic_search  # noqa: F401 - estimates read its phase split; imported off the loop

            self.estimates = Estimates(device_label(self.device), torch.__version__)
        except Exception as exc:  # jobs run without estimates
            log.warning("no time estimates on %s: %s", self.device, exc)

    def _model_id(self, model: str | None) -> ModelId | None:
        """The checkpoint a job naming `model` runs: the loaded one's, else the file it would load (no torch)."""
        key = self._key(model)
        with self._models_lock:
            entry = self.models.get(key)
        if entry is not None:
            return model_id_of(entry[1])
        if not key and self.prior is not None and self.info is not None and not self.models:
            return model_id_of(self.info)  # a model handed in directly is the daemon's own
        return model_id_for(self.weights if not key else key, self.device)

    def _run_job(self, job: Job) -> None:
        t0 = time.monotonic()
        try:
            if job.cancel_event.is_set():  # cancelled while queued, after take(): same report as mid-run
                raise Cancelled(job.cancel_reason)
            if not self.noop:
                loading = not self._select(job.params.model)
                if loading:
                    self.emit("state", job, "loading")
                    self._load(job.params.model)
                self._calibrate(job, loading)
            # Loading takes seconds: the client may have cancelled or vanished meanwhile (its session
            # dropped, the region's frames released). Stop here rather than run on a freed region.
            if job.cancel_event.is_set():
                raise Cancelled(job.cancel_reason)
            image = job.image  # the loop thread may release it at any moment
            shape = JobShape.of(job.params, image.width * image.height if image is not None else 0,
                                self._precision_of(job.params))
            self.emit("state", job, "running")
            started = time.monotonic()
            if self.noop_model is not None:
                result = self._noop(job, self.noop_model)
            else:
                result, search_s, steps_run = self._execute(job, self._clock(shape, started))
            if job.cancel_event.is_set():
                raise Cancelled(job.cancel_reason)
            self.emit("final", job, result)
            if not self.noop:
                self._observe(shape, search_s, steps_run, time.monotonic() - started)
            log.info("job %s done in %.2f s, after %.2f s waiting to start", job.job_id, time.monotonic() - t0,
                     t0 - job.created)
        except Cancelled:
            log.info("job %s cancelled (%s)", job.job_id, job.cancel_reason)
            if self._stopping.is_set():  # not the user's doing: the client may retry on a new daemon
                self.emit("final", job, Failed(job.job_id, "SHUTDOWN", job.cancel_reason, True))
            else:
                self.emit("final", job, Failed(job.job_id, "CANCELLED", job.cancel_reason))
        except PulseError as exc:
            log.warning("job %s failed: %s: %s", job.job_id, exc.code, exc.message)
            self.emit("final", job, Failed(job.job_id, exc.code, exc.message, exc.retryable))
        except Exception as exc:  # one job's failure must not kill the worker
            if is_out_of_memory(exc):
                free_memory()
                log.warning("job %s ran out of memory: %s", job.job_id, exc)
                self.emit("final", job, Failed(job.job_id, "OUT_OF_MEMORY",
                          "the device ran out of memory: try fewer candidates, a smaller selection, or --device cpu", True))
            else:
                log.error("job %s crashed:\n%s", job.job_id, traceback.format_exc())
                self.emit("final", job, Failed(job.job_id, "INTERNAL", f"internal error: {type(exc).__name__}: {exc}"))

    # ---- estimates --------------------------------------------------------------------------------

    def _calibrate(self, job: Job | None, loading: bool = True) -> None:
        """Measure the current model on this device unless its figures are cached (calibrate.py). A job waits in
        its "loading" state meanwhile and may cancel it; a failed measurement only leaves estimates unknown."""
        model = model_id_of(self.info) if self.info is not None else None
        if self.estimates is None or model is None or model in self._uncalibrated or self.estimates.get(model):
            return
        from .calibrate import calibrate

        if job is not None and not loading:  # its model was loaded without a measurement (one that failed)
            self.emit("state", job, "loading")
        cancel = job.cancel_event.is_set if job is not None else self._stopping.is_set
        try:
            cal = calibrate(self.prior, cancel)
        except Cancelled:
            if job is None:
                return
            raise Cancelled(job.cancel_reason) from None
        except Exception as exc:  # the job itself may still run (an OOM here is not its fault)
            self._uncalibrated.add(model)
            free_memory()
            log.warning("measuring %s on %s failed, no time estimates for it: %s", self.info.name, self.device, exc)
            return
        self.estimates.put(model, cal)
        log.info("measured %s on %s in %.1f s: %.1f ms per step for 1 face, %.1f ms for 4", self.info.name,
                 self.estimates.device, cal.seconds, cal.latent[0] * 1e3, cal.latent[1] * 1e3)

    def _clock(self, shape: JobShape, started: float) -> JobClock:
        model = model_id_of(self.info) if self.info is not None else None
        if self.estimates is None:
            return JobClock(None, shape, started)
        return self.estimates.clock(model, shape, started)

    def _observe(self, shape: JobShape, search_s: float, steps_run: int | None, total_s: float) -> None:
        model = model_id_of(self.info) if self.info is not None else None
        if self.estimates is not None and model is not None:
            self.estimates.observe(model, shape, search_s, steps_run, total_s)

    # ---- model ------------------------------------------------------------------------------------

    def _own_model_name(self) -> str | None:
        """The registry name the daemon's own model has (its --model, or the device's default), if any."""
        from .models.registry import REGISTRY, default_model

        if self.weights is None and self.device in ("auto", None):
            return None  # not resolved yet
        own = self.weights if self.weights is not None else default_model(self.device)
        return own if own in REGISTRY else None

    def _key(self, model: str | None) -> str:
        return "" if not model or model == self._own_model_name() else model

    def _select(self, model: str | None) -> bool:
        """Make the job's model current if it is loaded; False if it must be loaded first."""
        key = self._key(model)
        with self._models_lock:
            if not self.models and not key and self.prior is not None:
                self.models[""] = (self.prior, self.info)  # a model handed in directly is the daemon's own
            entry = self.models.get(key)
            if entry is None:
                return False
            self.models.move_to_end(key)
        self.prior, self.info = entry
        return True

    def _load(self, model: str | None = None) -> None:
        t0 = time.monotonic()
        from .devices import resolve_device
        from .models.loading import load_prior

        device = resolve_device(self.device)  # resolved at start; a device gone since fails here (NO_DEVICE)
        key = self._key(model)
        self.prior, self.info = load_prior(model if key else self.weights, device)
        with self._models_lock:
            self.models[key] = (self.prior, self.info)
            evicted = [self.models.popitem(last=False) for _ in range(len(self.models) - self.max_models)]
        if evicted:
            log.info("unloaded %s (keeping %d models warm)", ", ".join(info.name for _, (_, info) in evicted),
                     self.max_models)
            del evicted
            free_memory()
        log.info("model %s (%s, %d px) loaded on %s in %.1f s", self.info.name, self.info.family,
                 self.info.resolution, device, time.monotonic() - t0)

    # ---- jobs -------------------------------------------------------------------------------------

    def _precision(self, job: Job) -> str:
        return self._precision_of(job.params)

    def _precision_of(self, params: JobSettings) -> str:
        return self.precision if params.precision == "default" else params.precision

    def _callbacks(self, job: Job, clock: JobClock) -> tuple[Callable[[Any], None], Callable[[], bool]]:
        last_preview = [0.0]

        def progress(p: Any) -> None:
            losses = {str(k): float(v) for k, v in dict(getattr(p, "losses", {}) or {}).items()}
            now = time.monotonic()
            eta = round(clock.eta(int(p.step), int(p.total), now), 2)
            self.emit("progress", job, Progress(job.job_id, int(p.step), int(p.total), losses, float(p.best_error), eta))
            preview = getattr(p, "preview", None)
            if preview is not None and job.preview_interval > 0 and now - last_preview[0] >= job.preview_interval:
                last_preview[0] = now
                jpeg = _jpeg(preview)
                if jpeg is not None:
                    self.emit("preview", job, Preview(job.job_id, int(p.step), jpeg))

        return progress, job.cancel_event.is_set

    def _execute(self, job: Job, clock: JobClock) -> tuple[Result, float, int | None]:
        """-> (RESULT, seconds of the search alone, steps it ran or None for all) — the last two correct the
        estimates."""
        import numpy as np

        params = job.params
        progress, cancel = self._callbacks(job, clock)
        image, mask_blob = job.image, job.mask  # the loop thread may release them at any moment
        if image is None:  # released: the job was cancelled (cancel is set before inputs are released)
            raise Cancelled(job.cancel_reason)
        region = np.array(image.to_numpy())  # own, writable copy: the frame is read-only
        if params.mode == "solve":
            from .solver import SolveConfig

            lowres = _to_rgb_float(region)
            config = SolveConfig(candidates=params.candidates, steps=params.steps, eps=params.eps,
                                 seed=solver_seed(params.seed), precision=self._precision(job),
                                 preview_every=_preview_every(job))
            res = runner.solve(self.prior, lowres, config, progress=progress, cancel=cancel)
            cands = [_candidate(np.asarray(c.image, dtype=np.float32), c) for c in res.candidates]
            analysis = {"factor": int(res.factor), "resolution": int(res.resolution)}
            return Result(job.job_id, cands, self.info.name, analysis), float(res.seconds), None  # no early stop
        from .pipeline import DepixParams

        mask = None if mask_blob is None else np.array(mask_blob.to_numpy()[:, :, 0])
        dp = DepixParams(candidates=params.candidates, steps=params.steps, seed=solver_seed(params.seed),
                         block=params.block or None, eps=params.eps, precision=self._precision(job),
                         method=params.method, force=params.force, preview_every=_preview_every(job))
        res = runner.depixelate(self.prior, region, mask, dp, progress=progress, cancel=cancel, model=self.info.name,
                                on_prepared=lambda prep: self.emit("analysis", job, mosaic_analysis(prep)))
        cands = [_candidate(patch, c) for patch, c in zip(res.patches, res.candidates)]
        return Result(job.job_id, cands, str(res.model), depixelate_analysis(res)), res.search_seconds, res.steps_run

    def _noop(self, job: Job, model: noop.NoopModel) -> Result:
        """Echo the region back: measures transport, queueing and cancellation without a model."""
        delay = model.step_delay
        total = job.params.steps if delay > 0 else 1
        for step in range(1, total + 1):
            if job.cancel_event.is_set():
                raise Cancelled(job.cancel_reason)
            if delay > 0:
                time.sleep(delay)
            self.emit("progress", job, Progress(job.job_id, step, total, {}, 0.0))
        image = job.image
        if image is None:  # released by a dropped session
            raise Cancelled(job.cancel_reason)
        cands = [Candidate(image, i, 0.0, True, total) for i in range(job.params.candidates)]
        return Result(job.job_id, cands, noop.NAME, {})


class Worker(JobExecutor, threading.Thread):
    """The daemon's local pool: one thread taking jobs from the shared queue, one at a time."""

    def __init__(self, queue: JobQueue, emit: Emit, *, weights: str | None, device: str = "auto",
                 precision: str = "default", preload: bool = False, index: int = 0, max_models: int = 2) -> None:
        threading.Thread.__init__(self, name=f"pulse-worker-{index}", daemon=True)
        JobExecutor.__init__(self, emit, weights=weights, device=device, precision=precision, preload=preload,
                             max_models=max_models)
        self.queue = queue

    def running(self) -> int:
        job = self.current
        return 0 if job is None or job.done else 1

    def pool_info(self) -> dict[str, Any] | None:
        return None  # no pool beyond this thread: STATUS shows `device` and `models`

    def run(self) -> None:
        self.prepare()
        while not self._stopping.is_set():
            job = self.queue.take(timeout=0.5)
            if job is not None:
                self.run_job(job)


def depixelate_analysis(res: Any) -> dict[str, Any]:
    """RESULT's `analysis` of a depixelate job: the mosaic found, the search method and each candidate's
    placement θ (log-scale, angle in radians, shift as fractions of the base frame), best first."""
    m = res.mosaic
    return {"block": int(m.block), "phase": [int(v) for v in m.phase], "rect": [int(v) for v in m.rect],
            "confidence": float(m.confidence), "detected": bool(m.detected), "method": str(res.method),
            "theta": [[round(float(v), 5) for v in c.theta] for c in res.candidates]}


def mosaic_analysis(prep: Any) -> dict[str, Any]:
    """JOB_STATE's `analysis` once a depixelate job's region is analysed (before the search): block size, the
    cells the faces must match as [cols, rows], the detection's confidence and whether a mosaic was found."""
    m = prep.mosaic
    rows, cols = prep.observation.grid
    return {"block": int(m.block), "cells": [int(cols), int(rows)], "confidence": round(float(m.confidence), 4),
            "detected": bool(m.detected)}


def _summary(key: str, info: Any) -> dict[str, Any]:
    return {"name": info.name, "id": key, "family": info.family, "resolution": info.resolution, "loaded": True}


def _candidate(pixels: Any, c: Any) -> Candidate:
    """A solver CandidateResult's numbers with `pixels` (its image, or the pipeline's patch) as the wire image."""
    return Candidate(ImageBlob.from_numpy(pixels), int(c.seed), float(c.downscale_mse), bool(c.eps_reached), int(c.steps))


def _preview_every(job: Job) -> int:
    # Render a preview often enough that the time throttle (client's rate) decides, not the step count.
    return max(1, job.params.steps // 50) if job.preview_interval > 0 else 0


def _to_rgb_float(region: Any) -> Any:
    """Editor pixels (H, W, C) u8/u16/f32 -> (H, W, 3) float32 in [0, 1] for the solver (alpha dropped)."""
    import numpy as np

    from .pipeline.formats import require_finite

    require_finite(region)
    x = region.astype(np.float32)
    if region.dtype == np.uint8:
        x /= 255.0
    elif region.dtype == np.uint16:
        x /= 65535.0
    c = x.shape[2]
    rgb = x[:, :, :3] if c >= 3 else np.repeat(x[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(np.clip(rgb, 0.0, 1.0), dtype=np.float32)


def _jpeg(preview: Any) -> JpegBlob | None:
    try:
        import numpy as np
        from PIL import Image

        img = Image.fromarray(np.asarray(preview, dtype=np.uint8)[:, :, :3])
        img.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=80)
        return JpegBlob(img.width, img.height, buf.getvalue())
    except Exception as exc:  # a preview is optional
        log.debug("preview encoding failed: %s", exc)
        return None
