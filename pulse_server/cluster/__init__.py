"""Studio scale: the daemon's jobs on a pool of Ray actors (`pulse-server run --cluster ray[://ADDRESS]`).

    daemon process                         bridge process (Ray driver)           Ray actors (any node)
    loop ─ JobQueue ─ RayPool ── socket pair ── Bridge ── actor method calls ── SolverActor (JobExecutor)

The daemon never imports Ray: `RayPool` schedules from the daemon's fair queue and talks to `bridge`, a
child process that is the Ray driver (a driver whose cluster vanishes is ended by Ray, so it must not be
the daemon). Install with `pip install 'pulse-depixelate[cluster]'`.
"""

from __future__ import annotations

from .pool import INSTALL_HINT, RayPool

__all__ = ["INSTALL_HINT", "RayPool"]
