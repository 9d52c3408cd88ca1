"""The daemon's side of the Ray pool: schedules from the daemon's fair queue onto the bridge's actors.

Scheduling happens here, where the queue is: one dispatcher thread waits for a free actor, takes the next
job in the queue's round-robin order (a retried job first) and gives it to a free actor that already has
its model loaded, else to any free actor. An actor runs one job at a time and a job runs on one actor at a
time: it is sent again only after the bridge reported its actor dead (and killed it).

Faults: an actor lost mid-job -> the job runs once more on another actor, then FAILED(WORKER_LOST). The
bridge process gone (Ray went away, or the bridge crashed) -> running jobs FAILED(CLUSTER_DOWN, retryable),
jobs taken meanwhile fail the same way, and a new bridge is started with a growing pause until one
connects. STATUS's `cluster` shows all of it.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.job import JobSettings
from protocol.messages import Failed

from ..errors import PulseError
from ..jobs import Job, JobQueue
from .actor import JobSpec, portable_blob
from .link import BridgeConfig, parse_cluster

if TYPE_CHECKING:
    from ..daemon import DaemonConfig

log = logging.getLogger("pulse.cluster")

INSTALL_HINT = "pip install 'pulse-depixelate[cluster]'  (Ray 2.9 or later, on the daemon's machine and every node)"
MAX_TRIES = 2  # a job whose actor dies under it runs once more elsewhere
RECONNECT_FIRST, RECONNECT_MAX = 2.0, 15.0  # seconds between attempts to reach a cluster that went away
WATCH_EVERY = 0.1  # seconds: how soon a CANCEL (or a vanished client) reaches the actor, at most
START_SLACK = 60.0  # seconds a bridge may take beyond the actors' own start timeout (Python, Ray, the GCS)

Emit = Callable[[str, Job, Any], None]


@dataclass(eq=False)
class Attempt:
    job: Job
    actor_id: str
    cancel_sent: bool = False


class RayPool:
    noop = False  # the device check at start is the actors' business

    def __init__(self, config: DaemonConfig, queue: JobQueue, emit: Emit) -> None:
        self.queue = queue
        self.emit = emit
        self.address = parse_cluster(config.cluster or "ray")
        self.bridge_config = BridgeConfig(self.address, config.weights, config.device, config.precision,
                                          config.actor_cpus, config.actors)
        self.weights = config.weights
        self.state = "connecting"  # connecting | up | down | stopped
        self.message = ""
        self.actors: dict[str, dict[str, Any]] = {}  # the bridge's rows, by actor id
        self.busy: dict[str, str] = {}  # actor id -> ticket
        self.attempts: dict[str, Attempt] = {}  # ticket -> the job running under it
        self.retry: deque[Job] = deque()
        self.tries: dict[Job, int] = {}  # runs lost with their actor, per job
        self.retried = 0
        self.lost = 0
        self._cond = threading.Condition()
        self._stopping = False
        self._tickets = 0
        self._conn: Connection | None = None
        self._proc: subprocess.Popen | None = None
        self._send_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # ---- WorkerPool -------------------------------------------------------------------------------

    @property
    def device(self) -> str:
        with self._cond:
            devices = [str(a.get("device", "?")) for a in self.actors.values() if a.get("state") != "dead"]
        if not devices:
            return f"ray ({self.state})"
        counts = {d: devices.count(d) for d in sorted(set(devices))}
        return "ray: " + ", ".join(f"{n} × {d}" for d, n in counts.items())

    def start(self) -> None:
        if not _ray_installed():
            raise PulseError(f"--cluster needs Ray, which is not installed here: {INSTALL_HINT}", "NO_RAY")
        self._connect()  # raises: the daemon exits 2 with the bridge's reason
        for target, name in ((self._dispatch_loop, "dispatch"), (self._watch_loop, "watch")):
            t = threading.Thread(target=target, name=f"pulse-cluster-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            attempts = list(self.attempts.items())
            self.attempts.clear()
            self.busy.clear()
            leftovers = list(self.retry)
            self.retry.clear()
            self.state = "stopped"
            self._cond.notify_all()
        for ticket, a in attempts:
            self._send(("cancel", a.actor_id, ticket, "the daemon is stopping"))
        for job in [a.job for _, a in attempts] + leftovers:
            self._final(job, Failed(job.job_id, "SHUTDOWN", "the daemon is stopping", True))
        self._send(("stop",))

    def is_alive(self) -> bool:
        return any(t.is_alive() for t in self._threads) or (self._proc is not None and self._proc.poll() is None)

    def join(self, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or 15.0)
        if self._proc is not None:
            try:
                self._proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))

    def running(self) -> int:
        with self._cond:
            return len(self.attempts)

    def estimate(self, params: JobSettings, pixels: int) -> float:
        return 0.0  # unknown: the actors measure their own devices, and which one a job gets is decided later

    def model_summaries(self) -> list[dict[str, Any]]:
        from ..models.registry import REGISTRY

        with self._cond:
            loaded = {m for a in self.actors.values() if a.get("state") != "dead" for m in a.get("models", [])}
        own = str(self.weights or "default").replace("\\", "/").rsplit("/", 1)[-1]
        rows = [{"name": own, "id": "", "family": "", "resolution": 0, "loaded": "" in loaded}]
        rows += [{"name": spec.model_name, "id": key, "family": spec.family, "resolution": spec.resolution,
                  "loaded": key in loaded} for key, spec in REGISTRY.items() if key != self.weights]
        return rows

    def pool_info(self) -> dict[str, Any]:
        with self._cond:
            by_actor = {actor: self.attempts.get(ticket) for actor, ticket in self.busy.items()}
            actors = []
            for actor_id, row in sorted(self.actors.items()):
                attempt = by_actor.get(actor_id)
                job = attempt.job if attempt is not None else None
                actors.append({"id": actor_id, "state": row.get("state", "?"), "host": row.get("host", ""),
                               "pid": row.get("pid", 0), "device": row.get("device", ""), "gpus": row.get("gpus", ""),
                               "models": list(row.get("models", [])), "done": row.get("done", 0),
                               "job": job.job_id if job else None, "step": job.step if job else 0,
                               "total": job.total if job else 0})
            return {"backend": "ray", "address": self.address, "state": self.state, "message": self.message,
                    "actors": actors, "waiting_retry": len(self.retry), "retried": self.retried, "lost": self.lost}

    # ---- the bridge process -----------------------------------------------------------------------

    def _connect(self) -> None:
        """Start a bridge and wait until its actors are up; PulseError if the cluster cannot be used."""
        here, there = socket.socketpair()
        env = dict(os.environ)
        env.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # nothing leaves the studio unless its admin wants it
        repo = str(Path(__file__).resolve().parents[2])  # the bridge imports this very package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen([sys.executable, "-m", "pulse_server.cluster.bridge", str(there.fileno())],
                                pass_fds=(there.fileno(),), stdin=subprocess.DEVNULL, env=env)
        there.close()
        conn = Connection(here.detach())
        try:
            conn.send(self.bridge_config)
            rows = self._await_ready(conn, proc)
        except BaseException:
            conn.close()
            _end(proc)
            raise
        with self._cond:
            self._conn, self._proc = conn, proc
            self.actors = {r["id"]: r for r in rows}
            self.busy.clear()
            self.state, self.message = "up", ""
            self._cond.notify_all()
        t = threading.Thread(target=self._read_loop, args=(conn, proc), name="pulse-cluster-read", daemon=True)
        t.start()
        self._threads.append(t)
        log.info("Ray pool at %s: %s", self.address, self.device)

    def _await_ready(self, conn: Connection, proc: subprocess.Popen) -> list[dict[str, Any]]:
        deadline = time.monotonic() + self.bridge_config.actor_start_timeout + START_SLACK
        while time.monotonic() < deadline:
            if not conn.poll(0.5):
                if proc.poll() is not None:
                    raise PulseError(f"the Ray bridge exited with code {proc.returncode} before connecting to "
                                     f"{self.address}", "CLUSTER_UNREACHABLE")
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                raise PulseError(f"the Ray bridge exited before connecting to {self.address}",
                                 "CLUSTER_UNREACHABLE") from None
            if msg[0] == "ready":
                return msg[1]
            if msg[0] == "error":
                raise PulseError(msg[2], msg[1])
        raise PulseError(f"the Ray cluster at {self.address} did not start the pool within "
                         f"{deadline - time.monotonic() + self.bridge_config.actor_start_timeout:.0f} s",
                         "CLUSTER_UNREACHABLE")

    def _send(self, msg: tuple) -> bool:
        conn = self._conn
        if conn is None:
            return False
        with self._send_lock:
            try:
                conn.send(msg)
                return True
            except (OSError, ValueError):
                return False

    def _read_loop(self, conn: Connection, proc: subprocess.Popen) -> None:
        reason = "the Ray bridge process ended"
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "down":
                reason = msg[1]
                break
            self._on_message(msg)
        code = _end(proc)
        conn.close()
        if not self._stopping:
            self._on_down(f"{reason} (bridge exit code {code})")

    def _on_message(self, msg: tuple) -> None:
        kind = msg[0]
        if kind == "actors":
            with self._cond:
                self.actors = {r["id"]: r for r in msg[1]}
                self._cond.notify_all()
        elif kind == "event":
            _, ticket, what, payload = msg
            with self._cond:
                attempt = self.attempts.get(ticket)
            if attempt is not None:
                self.emit(what, attempt.job, payload)
        elif kind == "final":
            _, ticket, actor_id, payload, models = msg
            with self._cond:
                attempt = self.attempts.pop(ticket, None)
                self.busy.pop(actor_id, None)
                if actor_id in self.actors:
                    self.actors[actor_id] = {**self.actors[actor_id], "models": models, "state": "idle",
                                             "done": self.actors[actor_id].get("done", 0) + 1}
                self._cond.notify_all()
            if attempt is not None:
                self._final(attempt.job, payload)
        elif kind == "lost":
            _, ticket, actor_id, reason, ran = msg
            with self._cond:
                attempt = self.attempts.pop(ticket, None)
                self.busy.pop(actor_id, None)
                self.actors.pop(actor_id, None)
                self._cond.notify_all()
            if attempt is not None:
                self._on_lost(attempt.job, actor_id, reason, ran)

    def _on_lost(self, job: Job, actor_id: str, reason: str, ran: bool) -> None:
        if ran:
            self.tries[job] = self.tries.get(job, 0) + 1
        if job.cancel_event.is_set() or job.image is None:
            self._final(job, Failed(job.job_id, "CANCELLED", job.cancel_reason))
        elif self.tries.get(job, 0) < MAX_TRIES:
            log.warning("job %s: %s died under it (%s); running it again on another actor", job.job_id, actor_id, reason)
            with self._cond:
                self.retried += 1
                self.retry.appendleft(job)
                self._cond.notify_all()
        else:
            self.lost += 1
            self._final(job, Failed(job.job_id, "WORKER_LOST",
                                    f"the solver died under this job {MAX_TRIES} times (last: {reason}); "
                                    f"try again or look at the Ray logs of the pool's nodes", True))

    def _on_down(self, reason: str) -> None:
        with self._cond:
            if self._stopping:
                return
            attempts = list(self.attempts.values())
            self.attempts.clear()
            self.busy.clear()
            self.actors.clear()
            retry = list(self.retry)
            self.retry.clear()
            self.state, self.message = "down", reason
            self._conn = None
            self._cond.notify_all()
        log.error("Ray pool at %s is down: %s; %d running job(s) failed; reconnecting", self.address, reason,
                  len(attempts))
        for job in [a.job for a in attempts] + retry:
            self._final(job, self._down_failure(job))

    def _down_failure(self, job: Job) -> Failed:
        return Failed(job.job_id, "CLUSTER_DOWN", f"the Ray cluster at {self.address} is unreachable ({self.message}); "
                      f"the daemon reconnects when it is back: try again then", True)

    # ---- dispatch ---------------------------------------------------------------------------------

    def _dispatch_loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and self.state == "up" and self._free() == []:
                    self._cond.wait(0.5)
                if self._stopping:
                    return
                job = self.retry.popleft() if self.retry else None
            if job is None:
                job = self.queue.take(timeout=0.5)
            if job is None:
                continue
            with self._cond:
                up = self.state == "up"  # now, not before take(): the pool may have come back meanwhile
            if job.cancel_event.is_set() or job.image is None:  # cancelled while queued, after take()
                self._final(job, Failed(job.job_id, "CANCELLED", job.cancel_reason))
            elif not up:
                self._final(job, self._down_failure(job))
            elif not self._assign(job):
                with self._cond:
                    self.retry.appendleft(job)  # the free actor vanished meanwhile: first in line again

    def _free(self) -> list[str]:
        return [a for a, row in self.actors.items() if row.get("state") == "idle" and a not in self.busy]

    def _assign(self, job: Job) -> bool:
        key = job.params.model or ""
        image, mask = job.image, job.mask  # the loop thread may release them at any moment
        if image is None:
            return True
        spec_blobs = (portable_blob(image), portable_blob(mask))
        with self._cond:
            free = self._free()
            if not free:
                return False
            warm = [a for a in free if key in self.actors[a].get("models", [])]
            actor_id = (warm or free)[0]
            self._tickets += 1
            ticket = f"t{self._tickets}"
            self.attempts[ticket] = Attempt(job, actor_id)
            self.busy[actor_id] = ticket
        spec = JobSpec(ticket, job.job_id, job.params, spec_blobs[0], spec_blobs[1], job.preview_interval)
        if not self._send(("run", actor_id, spec)):
            with self._cond:
                self.attempts.pop(ticket, None)
                self.busy.pop(actor_id, None)
            return False
        return True

    def _final(self, job: Job, payload: Any) -> None:
        self.tries.pop(job, None)
        self.emit("final", job, payload)

    # ---- cancels and reconnects -------------------------------------------------------------------

    def _watch_loop(self) -> None:
        pause, next_try = RECONNECT_FIRST, 0.0
        while not self._stopping:
            time.sleep(WATCH_EVERY)
            with self._cond:
                due = [(t, a) for t, a in self.attempts.items() if a.job.cancel_event.is_set() and not a.cancel_sent]
                for _, a in due:
                    a.cancel_sent = True
                state = self.state
            for ticket, a in due:
                self._send(("cancel", a.actor_id, ticket, a.job.cancel_reason))
            if state != "down":
                pause, next_try = RECONNECT_FIRST, 0.0
                continue
            now = time.monotonic()
            if next_try == 0.0:
                next_try = now + pause
            if now < next_try:
                continue
            try:
                self._connect()
                log.info("Ray pool at %s is back", self.address)
            except PulseError as exc:
                with self._cond:
                    self.message = exc.message
                pause = min(pause * 2, RECONNECT_MAX)
                next_try = time.monotonic() + pause


def _ray_installed() -> bool:
    try:
        return importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken install, or an import hook that refuses it
        return False


def _end(proc: subprocess.Popen, timeout: float = 10.0) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)
