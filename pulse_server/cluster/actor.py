"""The solver that runs inside a Ray actor: the daemon's own `JobExecutor`, fed by actor method calls.

Plain Python, no Ray import: the bridge wraps it with `ray.remote(SolverActor).options(...)` and Ray runs
it as a threaded actor (`max_concurrency` > 1), so `events` and `cancel` are served while `run` solves.

    run(spec)          -> (final, models)   one job, the same JobExecutor.run_job as the local worker
    events(ticket)     -> [(kind, payload)]  state/progress/preview since the last call (progress coalesced)
    cancel(ticket, r)                       sets the job's cancel flag: the solver stops at its next step
    info()             -> ActorInfo dict     pid, host, device, loaded models
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, overload

from protocol.job import JobSettings
from protocol.messages import ImageBlob, Result

from ..jobs import Job
from ..worker import JobExecutor


@dataclass(frozen=True)
class JobSpec:
    """What crosses to the actor: a job without the daemon's session, events or frames."""

    ticket: str  # unique per attempt: a retried job gets a new ticket, a late event of the old one is ignored
    job_id: str
    params: JobSettings
    image: ImageBlob  # data as bytes (a received zmq frame's memoryview does not pickle)
    mask: ImageBlob | None
    preview_interval: float


@overload
def portable_blob(blob: ImageBlob) -> ImageBlob: ...
@overload
def portable_blob(blob: None) -> None: ...
def portable_blob(blob: ImageBlob | None) -> ImageBlob | None:
    return None if blob is None else dataclasses.replace(blob, data=bytes(blob.data))


def portable(payload: Any) -> Any:
    """A RESULT's candidate images as bytes, so it pickles (actor -> bridge -> daemon)."""
    if isinstance(payload, Result):
        cands = [dataclasses.replace(c, image=portable_blob(c.image)) for c in payload.candidates]
        return dataclasses.replace(payload, candidates=cands)
    return payload


class SolverActor:
    def __init__(self, weights: str | None, device: str = "auto", precision: str = "default",
                 max_models: int = 2) -> None:
        self._lock = threading.Lock()  # guards the per-ticket state below; `run` holds _busy for a whole job
        self._busy = threading.Lock()
        self._events: dict[str, list[tuple[str, Any]]] = {}
        self._jobs: dict[str, Job] = {}
        self._early_cancels: dict[str, str] = {}  # a cancel may overtake its run (threaded actor: no ordering)
        self.executor = JobExecutor(self._emit, weights=weights, device=device, precision=precision,
                                    max_models=max_models)
        self.executor.prepare()
        self._finals: dict[str, Any] = {}
        self._ticket = ""  # the running job's: one job at a time, so the executor's emits are all for it

    def info(self) -> dict[str, Any]:
        with self.executor._models_lock:
            models = list(self.executor.models)
        return {"pid": os.getpid(), "host": socket.gethostname(), "device": str(self.executor.device),
                "models": models, "gpus": os.environ.get("CUDA_VISIBLE_DEVICES", "")}

    def run(self, spec: JobSpec) -> tuple[Any, list[str]]:
        if not self._busy.acquire(blocking=False):  # the pool sends one job per actor; refuse, never overlap
            raise RuntimeError("this actor is already running a job")
        try:
            job = Job(spec.job_id, "", spec.params, spec.image, spec.mask, preview_interval=spec.preview_interval)
            with self._lock:
                self._events[spec.ticket] = []
                self._jobs[spec.ticket] = job
                early = self._early_cancels.pop(spec.ticket, None)
            if early is not None:
                job.cancel(early)
            self._ticket = spec.ticket
            self.executor.run_job(job)
            with self._lock:
                self._jobs.pop(spec.ticket, None)
                final = self._finals.pop(spec.ticket)
            return portable(final), self.info()["models"]
        finally:
            self._busy.release()

    def events(self, ticket: str) -> list[tuple[str, Any]]:
        with self._lock:
            pending = self._events.get(ticket)
            if pending is None:
                return []
            if ticket not in self._jobs:  # finished: this is the last call for it
                del self._events[ticket]
            else:
                self._events[ticket] = []
            return pending

    def cancel(self, ticket: str, reason: str) -> None:
        with self._lock:
            job = self._jobs.get(ticket)
            if job is None:
                self._early_cancels[ticket] = reason
        if job is not None:
            job.cancel(reason)

    def _emit(self, kind: str, job: Job, payload: Any) -> None:
        ticket = self._ticket
        with self._lock:
            if kind == "final":
                self._finals[ticket] = payload
                return
            pending = self._events.setdefault(ticket, [])
            # Only the latest PROGRESS matters (the daemon coalesces them too): keep the buffer short.
            if kind == "progress" and pending and pending[-1][0] == "progress":
                pending[-1] = (kind, payload)
            else:
                pending.append((kind, portable(payload)))


__all__ = ["JobSpec", "SolverActor", "portable", "portable_blob"]
