"""Whether a SUBMIT becomes a queued job, and when a queued job will start.

A job is admitted when its params are within the daemon's contract (`jobs.daemon_spec`: the codec checked the
declared ranges already), its mask is valid, its region within MAX_REGION_SIDE, and the regions waiting (queued or running jobs hold
their pixels until done) stay within `max_queued_bytes`; the queue itself (`jobs.JobQueue`) then bounds the
number of jobs, fairly between sessions. The wait is the estimates of the jobs served before it plus what
remains of those running.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from protocol.job import MAX_REGION_SIDE, JobSettings, Param
from protocol.messages import Failed, Submit

from ..errors import ErrorCode, PulseError
from ..jobs import Job, daemon_spec
from .config import DaemonConfig

MAX_ID_LEN = 128  # job and session ids


def admit(msg: Submit, sid: str, config: DaemonConfig, held_bytes: int,
          spec: Mapping[str, Param] | None = None) -> Job | Failed:
    """A new job for session `sid`, or the FAILED that refuses it. `held_bytes`: the regions active jobs hold;
    `spec`: the daemon's contract (default: the one `config` makes)."""
    jid = msg.job_id
    try:
        params = JobSettings.from_wire(msg.params, daemon_spec(config.max_steps) if spec is None else spec)
        check_mask(msg)
        check_region_size(msg)
    except PulseError as exc:
        return Failed(jid, exc.code, exc.message, exc.retryable)
    size = msg.image.nbytes + (msg.mask.nbytes if msg.mask is not None else 0)
    if size > config.max_queued_bytes:  # would not fit even alone: waiting cannot help
        return Failed(jid, "TOO_LARGE", f"the region holds {size >> 20} MiB, more than this daemon keeps for "
                      f"waiting jobs ({config.max_queued_bytes >> 20} MiB); select a smaller area")
    if held_bytes + size > config.max_queued_bytes:
        return Failed(jid, "QUEUE_FULL", f"{(held_bytes + size) >> 20} MiB of regions would be waiting; try again "
                      "when a job finishes", True)
    return Job(jid, sid, params, msg.image, msg.mask, preview_interval=max(0.0, min(msg.preview_interval, 3600.0)))


def check_mask(msg: Submit) -> None:
    m = msg.mask
    if m is None:
        return
    if m.channels != 1 or m.dtype != "u8":
        raise PulseError("the mask must be 1 channel u8 (0 = not selected, 255 = selected)", "BAD_MASK")
    if (m.width, m.height) != (msg.image.width, msg.image.height):
        raise PulseError(f"mask is {m.width}x{m.height} but the image is {msg.image.width}x{msg.image.height}", "BAD_MASK")


def check_region_size(msg: Submit) -> None:
    """TOO_LARGE before the job is queued (it would wait holding its bytes, then fail in the pipeline)."""
    w, h = msg.image.width, msg.image.height
    if max(w, h) > MAX_REGION_SIDE:
        raise PulseError(f"the selection is {w}×{h} pixels: larger than the limit of {MAX_REGION_SIDE} per side; "
                         f"select just the face", ErrorCode.TOO_LARGE)


def input_bytes(job: Job) -> int:
    return sum(b.nbytes for b in (job.image, job.mask) if b is not None)


def wait_s(job: Job, positions: dict[Job, int], active: Iterable[Job], now: float | None = None) -> float:
    """Seconds until `job` starts: the estimates of the queued jobs served before it (`positions`, the queue's
    order) and what remains of the `active` jobs the worker has taken; 0 if it runs already or any of those
    is unknown."""
    mine = positions.get(job)
    if mine is None:
        return 0.0
    now = time.monotonic() if now is None else now
    parts = [j.estimate_s if j.estimate_s > 0 else None for j, p in positions.items() if p < mine]
    parts += [remaining(j, now) for j in active if j not in positions and not j.done]  # loading or running
    known = [p for p in parts if p is not None]
    if len(known) < len(parts):
        return 0.0
    return sum(known)


def remaining(job: Job, now: float) -> float | None:
    """Seconds a job the worker has taken still needs: its latest time left, else its estimate less the time it has
    run; None when neither is known. A job still loading its model counts its whole estimate (the load not known)."""
    if job.eta_s > 0:
        return max(0.0, job.eta_s - (now - job.eta_at))
    if job.estimate_s <= 0:
        return None
    if job.started is None:
        return job.estimate_s
    return max(0.0, job.estimate_s - (now - job.started))
