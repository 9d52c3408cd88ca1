"""The daemon, by concern: see loop.py for how the parts fit. `pulse-server run` starts `run_daemon`."""

from __future__ import annotations

from .config import DaemonConfig
from .loop import Daemon, run_daemon
from .sessions import Session
from .transport import max_frame_bytes

__all__ = ["Daemon", "DaemonConfig", "Session", "max_frame_bytes", "run_daemon"]
