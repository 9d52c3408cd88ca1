"""Jobs, the daemon's view of the job contract, and the bounded queue that is fair between clients.

The daemon loop creates jobs and cancels them; worker threads take them. Each job has its own cancel
event (checked by the solver every step) — never one global interrupt flag, so cancelling one client's
job cannot touch another's. Fairness: one FIFO per session, served round-robin, so a client that queues
eight jobs cannot starve a client that queues one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from protocol.job import PARAMS, JobSettings, Param, narrowed
from protocol.messages import FINAL_STATES, ImageBlob

from .errors import ErrorCode, PulseError


def daemon_spec(max_steps: int | None = None) -> dict[str, Param]:
    """The job contract as this daemon applies it (WELCOME `params`, SUBMIT's second check): the declared ranges,
    steps capped by --max-steps, and `model` one of the names it can load ("" = its own). Names only, never
    paths: a client must not make the daemon open files of its choosing."""
    from .models.registry import REGISTRY

    steps = PARAMS["steps"]
    return narrowed(steps=(steps.low, steps.high if max_steps is None else max_steps), model=["", *REGISTRY])


def solver_seed(seed: int) -> int | None:
    """The contract's seed -1 ("a new one each run") is the solver's None."""
    return None if seed < 0 else seed


@dataclass(eq=False)
class Job:
    job_id: str
    session: str
    params: JobSettings  # checked against the daemon's spec; seed -1, block 0, model "" are resolved where used
    image: ImageBlob | None
    mask: ImageBlob | None
    preview_interval: float = 0.0
    state: str = "queued"
    step: int = 0
    total: int = 0
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    cancel_reason: str = "cancelled"
    # Time estimates (loop thread): seconds the job takes once running (0 = unknown), when it started running,
    # and the worker's latest time left with when it arrived.
    estimate_s: float = 0.0
    started: float | None = None
    eta_s: float = 0.0
    eta_at: float = 0.0
    # Set by the loop when the job ends: the encoded RESULT/FAILED frames, kept for FETCH.
    final_frames: list | None = None
    final_bytes: int = 0

    @property
    def done(self) -> bool:
        return self.state in FINAL_STATES

    def cancel(self, reason: str = "cancelled") -> None:
        if not self.cancel_event.is_set():
            self.cancel_reason = reason
            self.cancel_event.set()

    def release_inputs(self) -> None:
        """Drop the pixels (they pin the received zmq frames) once they are no longer needed."""
        self.image = None
        self.mask = None


class QueueFull(PulseError):
    code = ErrorCode.QUEUE_FULL
    retryable = True


class JobQueue:
    """Bounded, round-robin-between-sessions FIFO; `take()` blocks a worker thread until a job or stop."""

    def __init__(self, max_jobs: int = 32, max_per_session: int = 8) -> None:
        self.max_jobs = max_jobs
        self.max_per_session = max_per_session
        self._by_session: OrderedDict[str, deque[Job]] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False

    def __len__(self) -> int:
        with self._cond:
            return sum(len(q) for q in self._by_session.values())

    def put(self, job: Job) -> int:
        """Enqueue and return the job's 1-based position, or raise QueueFull."""
        with self._cond:
            total = sum(len(q) for q in self._by_session.values())
            mine = self._by_session.get(job.session)
            if total >= self.max_jobs:
                raise QueueFull(f"the daemon's queue is full ({self.max_jobs} jobs); try again shortly")
            if mine is not None and len(mine) >= self.max_per_session:
                raise QueueFull(f"you already have {self.max_per_session} jobs queued; wait for one to finish")
            self._by_session.setdefault(job.session, deque()).append(job)
            self._cond.notify()
            return self._position_locked(job)

    def take(self, timeout: float | None = None) -> Job | None:
        """Next job, round-robin over sessions; None on close or timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                if self._by_session:  # holds only non-empty FIFOs: put/take/remove drop emptied ones
                    session, q = next(iter(self._by_session.items()))
                    job = q.popleft()
                    # Move this session to the back: the next take() serves someone else first.
                    self._by_session.move_to_end(session)
                    if not q:
                        del self._by_session[session]
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            return None

    def remove(self, job: Job) -> bool:
        with self._cond:
            q = self._by_session.get(job.session)
            if q is None or job not in q:
                return False
            q.remove(job)
            if not q:
                del self._by_session[job.session]
            return True

    def drain(self) -> list[Job]:
        with self._cond:
            jobs = [j for q in self._by_session.values() for j in q]
            self._by_session.clear()
            return jobs

    def positions(self) -> dict[Job, int]:
        """job -> 1-based position in the order take() will serve them."""
        with self._cond:
            return self._positions_locked()

    def _positions_locked(self) -> dict[Job, int]:
        queues = [list(q) for q in self._by_session.values()]
        order: dict[Job, int] = {}
        depth = 0
        while any(depth < len(q) for q in queues):
            for q in queues:
                if depth < len(q):
                    order[q[depth]] = len(order) + 1
            depth += 1
        return order

    def _position_locked(self, job: Job) -> int:
        return self._positions_locked().get(job, 0)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
