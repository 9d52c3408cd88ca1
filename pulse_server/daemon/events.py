"""Jobs from the loop's side: the worker's reports applied to them, and their endings (result, failure, cancel).

Worker threads (or the Ray pool's reader) call `emit(kind, job, payload)`: a deque plus a wake-up of the loop,
which applies the events in order (`drain`). Kinds: "state" (loading/running), "analysis" (a depixelate
job's mosaic, found before the search starts), "progress", "preview", "final" (RESULT or FAILED).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from protocol.codec import Limits, encode
from protocol.errors import ProtocolError
from protocol.messages import Failed, JobState, Result

from ..jobs import Job, JobQueue
from .outbox import Outbox
from .results import ResultStore
from .sessions import Session, SessionTable


class JobTracker:
    def __init__(self, queue: JobQueue, sessions: SessionTable, results: ResultStore, outbox: Outbox, limits: Limits,
                 wake: Callable[[], None]) -> None:
        self.queue = queue
        self.sessions = sessions
        self.results = results
        self.outbox = outbox
        self.limits = limits
        self.wake = wake
        self.events: deque[tuple[str, Job, Any]] = deque()

    def emit(self, kind: str, job: Job, payload: Any) -> None:
        """Called from worker threads."""
        self.events.append((kind, job, payload))
        self.wake()

    def drain(self) -> None:
        """Apply the reports that arrived (loop thread)."""
        while self.events:
            kind, job, payload = self.events.popleft()
            if kind == "final":
                self.finish(job, payload)
            elif not job.done:
                self._apply(kind, job, payload, self.sessions.session_of(job))

    def _apply(self, kind: str, job: Job, payload: Any, s: Session | None) -> None:
        if kind == "state":
            job.state = payload
            if payload == "running":
                job.started = time.monotonic()
            if s is not None:
                self.outbox.send(s, JobState(job.job_id, payload, 0))
        elif kind == "analysis":
            if s is not None:
                self.outbox.send(s, JobState(job.job_id, job.state, 0, analysis_message(payload), dict(payload)))
        elif kind == "progress":
            job.step, job.total = payload.step, payload.total
            job.eta_s, job.eta_at = payload.eta_s, time.monotonic()
            if s is not None:
                self.outbox.update(s, job.job_id, payload)
        elif kind == "preview" and s is not None:
            self.outbox.update(s, job.job_id, payload, preview=True)

    def finish(self, job: Job, msg: Result | Failed, keep: bool = True) -> None:
        """A job ended (result, failure, cancel): store its final frames for FETCH and send them."""
        if job.done:
            return
        if isinstance(msg, Result):
            job.state = "done"
        else:
            job.state = "cancelled" if msg.code == "CANCELLED" else "failed"
        job.finished = time.monotonic()
        try:
            frames = encode(msg, self.limits)
        except ProtocolError as exc:
            frames = encode(Failed(job.job_id, exc.code, f"result cannot be sent: {exc.message}"), self.limits)
            job.state = "failed"
        job.final_frames = frames
        job.final_bytes = sum(memoryview(f).nbytes for f in frames)
        job.release_inputs()
        s = self.sessions.session_of(job)
        if s is not None:
            s.forget_job(job.job_id)
            if keep:
                self.results.keep(job)
            self.outbox.send_frames(s, frames)

    def cancel(self, job: Job, reason: str, keep: bool = True) -> None:
        if self.queue.remove(job):
            job.cancel(reason)
            self.finish(job, Failed(job.job_id, "CANCELLED", reason), keep=keep)
        else:
            job.cancel(reason)  # running: the worker stops at its next step and reports FAILED(CANCELLED)

    def drop_session(self, s: Session, reason: str) -> list[Job]:
        """Forget a session and cancel its jobs; returns them."""
        jobs = list(s.jobs.values())
        for job in jobs:
            # Not kept for FETCH: if the client comes back, its re-SUBMIT runs the job again.
            self.cancel(job, reason, keep=False)
            job.release_inputs()
        s.jobs.clear()
        self.sessions.remove(s)
        return jobs


def analysis_message(a: dict[str, Any]) -> str:
    """What the analysis found, in words: "12 px blocks, 14×16 cells detected"."""
    cols, rows = a.get("cells", (0, 0))
    found = f"{a.get('block', 0)} px blocks, {cols}×{rows} cells"
    return f"{found} detected" if a.get("detected") else f"no mosaic detected; {found} assumed"
