"""The daemon's settings (`pulse-server run`'s flags) and the log throttle its parts share."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

from protocol.codec import DEFAULT_LIMITS, Limits
from protocol.job import PARAMS


def _contract_max_steps() -> int:
    high = PARAMS["steps"].high
    if high is None:  # the contract bounds steps; without a bound --max-steps would have no default
        raise RuntimeError("the job contract gives steps no upper bound")
    return int(high)


@dataclass
class DaemonConfig:
    endpoint: str
    weights: str | None = None
    device: str = "auto"
    precision: str = "default"
    heartbeat_ms: int = 1000
    missed_heartbeats: int = 3
    allow_remote: bool = False
    limits: Limits = DEFAULT_LIMITS
    max_queue: int = 32
    max_per_session: int = 8
    max_steps: int = _contract_max_steps()  # --max-steps: narrows the job contract's steps (WELCOME params)
    result_ttl: float = 120.0  # seconds a finished job's RESULT is kept for FETCH / idempotent SUBMIT
    max_result_bytes: int = 512 << 20
    max_queued_bytes: int = 2 << 30  # pixels of jobs waiting or running (they stay in memory until done)
    preload: bool = False
    cluster: str | None = None  # "ray" | "ray://ADDRESS": jobs run on a pool of Ray actors (pulse_server.cluster)
    actor_cpus: float = 1.0  # CPUs each actor takes where the cluster has no GPU
    actors: int = 0  # pool size; 0 = one per GPU, else as many CPU actors as the cluster's CPUs allow


@dataclass
class LogThrottle:
    """WARNING for the first `most` events in `window` seconds, DEBUG for the rest: a flood of bad messages
    or refused handshakes must not flood the log."""

    most: int = 10
    window: float = 10.0
    recent: deque[float] = field(default_factory=deque)  # the events' times

    def level(self) -> int:
        now = time.monotonic()
        while self.recent and now - self.recent[0] > self.window:
            self.recent.popleft()
        self.recent.append(now)
        return logging.WARNING if len(self.recent) <= self.most else logging.DEBUG
