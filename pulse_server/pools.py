"""What the daemon loop needs from whatever runs its jobs, and the choice between the two that exist.

    local (default)   worker.Worker: one thread on this machine's device
    --cluster ray     cluster.RayPool: one Ray actor per GPU (or per N CPUs) anywhere in a Ray cluster

Both take jobs from the daemon's fair `JobQueue` and report through the same `emit(kind, job, payload)`
events, so the loop, the protocol and the editors cannot tell them apart (except in STATUS's `cluster`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from protocol.job import JobSettings

from .jobs import Job, JobQueue

if TYPE_CHECKING:
    from .daemon import DaemonConfig

Emit = Callable[[str, Job, Any], None]


class WorkerPool(Protocol):
    noop: bool  # the model-free echo backend (no device to check at start)

    @property
    def device(self) -> Any:
        """WELCOME/STATUS `device` (read only: the Ray pool's is a summary of its actors')."""

    def start(self) -> None:
        """Begin taking jobs; raises PulseError when the pool cannot run at all (the daemon then exits 2)."""

    def stop(self) -> None:
        """Cancel what runs (reported as SHUTDOWN) and stop taking jobs."""

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def model_summaries(self) -> list[dict[str, Any]]: ...

    def running(self) -> int:
        """Jobs being solved right now."""

    def estimate(self, params: JobSettings, pixels: int) -> float:
        """Seconds a job with `params` on a region of `pixels` takes once it runs; 0 = unknown. Called from the
        daemon's loop: must answer at once."""

    def pool_info(self) -> dict[str, Any] | None:
        """STATUS's `cluster` map, or None for the local worker."""


def make_pool(config: DaemonConfig, queue: JobQueue, emit: Emit) -> WorkerPool:
    if config.cluster:
        from .cluster import RayPool  # no Ray import: the pool drives Ray from a child process

        return RayPool(config, queue, emit)
    from .worker import Worker

    return Worker(queue, emit, weights=config.weights, device=config.device, precision=config.precision,
                  preload=config.preload)
