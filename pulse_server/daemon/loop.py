"""The daemon: one loop on one thread owns every socket and wires the parts together.

    transport   the ROUTER and the loop's wake-up        auth       token, ZAP handler (PLAIN/CURVE)
    sessions    who is connected, heartbeats            outbox     per-session flow control
    handlers    client requests                         admission  SUBMIT checks, wait estimates
    events      worker reports, job endings             results    kept RESULT/FAILED for FETCH

Each loop turn: read client messages (bounded), answer handshakes, apply the worker's reports, send what
can leave, and once per heartbeat PING the sessions with jobs, expire the silent ones and old results.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from typing import Any

import zmq

from protocol.messages import PROTOCOL_VERSION, Failed, Ping

from .. import __version__, paths
from ..jobs import Job, JobQueue
from ..pools import make_pool
from .auth import Auth
from .config import DaemonConfig
from .endpoint import check_endpoint
from .events import JobTracker
from .handlers import Requests
from .outbox import Outbox
from .results import ResultStore
from .sessions import Session, SessionTable
from .transport import Transport

log = logging.getLogger("pulse.daemon")

MAX_POLL_MS = 100


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.queue = JobQueue(config.max_queue, config.max_per_session)
        self.table = SessionTable()
        self.sessions: dict[str, Session] = self.table.sessions  # the table's own dict (tests fill it directly)
        self.results = ResultStore(config.max_result_bytes, config.result_ttl)
        self.transport = Transport(config.limits)
        self.auth = Auth(config.endpoint)
        self.outbox = Outbox(self.transport, self.limits, self.table.lost)
        self.tracker = JobTracker(self.queue, self.table, self.results, self.outbox, self.limits, self.transport.wake)
        self.worker = make_pool(config, self.queue, self.tracker.emit)  # the local thread, or the Ray actor pool
        self.requests = Requests(config, self.queue, self.table, self.results, self.outbox, self.tracker, self.auth,
                                 self.worker, drop_session=self._drop_session, stop=self.request_stop)
        self._stop = threading.Event()
        self._lock = paths.DaemonLock()

    @property
    def bound_endpoint(self) -> str:
        return self.requests.bound_endpoint

    @property
    def _events(self) -> deque[tuple[str, Job, Any]]:
        return self.tracker.events

    def _drain_events(self) -> None:
        self.tracker.drain()

    # ---- lifecycle --------------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def serve(self) -> int:
        """Bind, loop until stopped, clean up. Raises PulseError for a refused start (lock, bind)."""
        cfg = self.config
        check_endpoint(cfg.endpoint, allow_remote=cfg.allow_remote)
        self._check_device()
        self._lock.acquire(cfg.endpoint)
        try:
            self.worker.start()  # before the bind: an unreachable cluster refuses the start (exit 2)
            bound = self.transport.bind(cfg.endpoint, locked=self._lock.held, secure=self.auth.secure)
            self.requests.bound_endpoint = bound
            if bound != cfg.endpoint and self._lock.held:  # the lock file names the endpoint actually bound
                self._lock.write(bound)
            self._handle_signals()
            log.info("pulse-server %s listening on %s (pid %d, protocol %d, heartbeat %d ms)", __version__,
                     bound, os.getpid(), PROTOCOL_VERSION, cfg.heartbeat_ms)
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _check_device(self) -> None:
        # An autostart entry may bake in --device cuda: refuse to start (exit 2, no restart loop) rather
        # than run a daemon whose every job fails. `auto` cannot fail: the worker resolves it off this thread.
        if self.worker.noop or self.config.cluster or self.config.device in ("auto", None):
            return
        from ..devices import resolve_device

        resolve_device(self.config.device)  # PulseError(NO_DEVICE | BAD_DEVICE)

    def _handle_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT to a console process group
            signal.signal(signal.SIGBREAK, self.request_stop)

    def _shutdown(self) -> None:
        serving = self.transport.open  # a start refused at the bind never served: nothing to say
        if serving:
            log.info("stopping")
        self.queue.close()
        for job in self.queue.drain():
            self.tracker.finish(job, Failed(job.job_id, "SHUTDOWN", "the daemon is stopping", True))
        self.worker.stop()
        if self.worker.is_alive():
            self.worker.join(timeout=15.0)
        if serving:
            self.tracker.drain()
            self.outbox.flush(self.table)
        self.transport.close_sockets(linger_ms=500)  # a moment for the last FAILED/RESULT to leave
        self.auth.close()
        self.transport.terminate()
        self._lock.release()
        if serving:
            log.info("stopped")

    # ---- loop -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        t = self.transport
        poller = zmq.Poller()
        poller.register(t.router, zmq.POLLIN)
        poller.register(t.wake_recv, zmq.POLLIN)
        if self.auth.zap is not None:
            poller.register(self.auth.zap, zmq.POLLIN)
        tick = self.config.heartbeat_ms / 1000.0
        next_tick = time.monotonic() + tick
        mark = time.monotonic()
        while not self._stop.is_set():
            timeout_ms = max(0, min(MAX_POLL_MS, int((next_tick - time.monotonic()) * 1000)))
            ready = dict(poller.poll(timeout_ms))
            mark = self.table.note_absence(mark, timeout_ms / 1000.0)  # stopped while polling?
            if t.router in ready:
                for frames in t.receive():
                    self.requests.on_frames(frames)
            if self.auth.zap is not None and self.auth.zap in ready:
                self.auth.answer_zap()
            if t.wake_recv in ready:
                t.clear_wake()
            self.tracker.drain()
            self.outbox.flush(self.table)
            mark = self.table.note_absence(mark, 0.0)  # stopped (or stuck) while working?
            if time.monotonic() >= next_tick:
                self._heartbeat()
                next_tick = time.monotonic() + tick

    def _heartbeat(self) -> None:
        """Expire silent sessions, PING the connected ones with jobs, drop results kept too long."""
        now = time.monotonic()
        for s, reason in self.table.silent(now, self.config.heartbeat_ms / 1000.0, self.config.missed_heartbeats):
            self._drop_session(s, reason)
        for s in self.table:
            if s.jobs and s.identity is not None:
                self.outbox.send(s, Ping(time.time()), droppable=True)
        self.results.expire(now)

    def _drop_session(self, s: Session, reason: str) -> None:
        if s.jobs:
            log.info("cancelling %d job(s) of %s: %s", len(s.jobs), s.client, reason)
        self.tracker.drop_session(s, reason)


def run_daemon(config: DaemonConfig) -> int:
    return Daemon(config).serve()
