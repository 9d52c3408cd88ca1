"""The Ray driver: a child process of the daemon, the only process of pulse that imports Ray.

Why a separate process: a Ray driver whose cluster goes away does not get an exception it could handle —
Ray ends the whole process once the GCS has been unreachable for a minute (and at once when its local
raylet dies). The daemon must outlive that, so the driver lives here: when Ray goes, this process goes,
the daemon fails the running jobs cleanly and starts a new bridge until the cluster answers again.

    python -m pulse_server.cluster.bridge FD      FD: this end of the daemon's socket pair (see link.py)

It owns the actors (one `SolverActor` per GPU, or per `actor_cpus` CPUs), runs a job on the actor the
daemon names (the daemon schedules), polls the actor for events every EVENT_POLL seconds, forwards
cancels, and reports an actor that died mid-job ("lost") before replacing it.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .actor import JobSpec, SolverActor
from .link import BridgeConfig

log = logging.getLogger("pulse.cluster.bridge")

EVENT_POLL = 0.1  # seconds between two event polls of a running job (progress reaches the editor at 10 Hz)
MONITOR_EVERY = 2.0  # seconds between two health checks (GCS reachable, idle actors alive)
ACTOR_CONCURRENCY = 4  # run + events + cancel + info served at once by one actor
EXIT_DOWN = 3


@dataclass
class Slot:
    actor_id: str
    handle: Any
    state: str = "starting"  # starting | idle | busy | dead
    info: dict[str, Any] = field(default_factory=dict)
    ticket: str | None = None
    done: int = 0

    def row(self) -> dict[str, Any]:
        return {"id": self.actor_id, "state": self.state, "done": self.done, **self.info}


class Bridge:
    def __init__(self, conn: Connection, cfg: BridgeConfig) -> None:
        self.conn = conn
        self.cfg = cfg
        self.slots: dict[str, Slot] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._next_id = 0
        self._remote: Any = None
        self._options: dict[str, Any] = {}
        self._gcs: tuple[str, int] | None = None

    # ---- talking to the daemon -------------------------------------------------------------------

    def send(self, *msg: Any) -> None:
        with self._send_lock:
            try:
                self.conn.send(msg)
            except (OSError, EOFError):
                os._exit(0)  # the daemon is gone: nobody to work for (Ray ends this driver's actors)

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:
            return [s.row() for s in self.slots.values()]

    # ---- start ------------------------------------------------------------------------------------

    def main(self) -> int:
        try:
            self._connect()
        except Exception as exc:  # whatever Ray raises, the daemon gets one clear line
            self.send("error", "CLUSTER_UNREACHABLE", f"cannot reach the Ray cluster at {self.cfg.address}: "
                      f"{_first_line(exc)}")
            return 2
        count, error = self._start_pool()
        if error:
            self.send("error", "NO_ACTORS", error)
            return 2
        self.send("ready", self.rows())
        threading.Thread(target=self._monitor, name="pulse-bridge-monitor", daemon=True).start()
        return self._serve()

    def _connect(self) -> None:
        address = self.cfg.address
        if not address.startswith("ray://") and address != "auto":
            host, _, port = address.rpartition(":")
            if not _tcp_reachable(host, int(port)):  # ray.init would wait a long time before giving up
                raise ConnectionError(f"nothing answers on {address}")
        import ray

        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False, namespace="pulse-depixelate")
        # What tells "an actor died" from "Ray is gone": the GCS port, or for Ray Client the head's client port.
        gcs = address[len("ray://"):] if address.startswith("ray://") else ray.get_runtime_context().gcs_address
        host, _, port = gcs.rpartition(":")
        self._gcs = (host, int(port))

    def _start_pool(self) -> tuple[int, str]:
        import ray

        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = float(resources.get("CPU", 0))
        count = self.cfg.actors or gpus or int(cpus // max(self.cfg.actor_cpus, 0.01))
        if count < 1:
            return 0, (f"the Ray cluster has no GPU and {cpus:g} CPUs, fewer than one actor's --actor-cpus "
                       f"{self.cfg.actor_cpus:g}")
        self._options = {"num_gpus": 1 if gpus else 0, "num_cpus": self.cfg.actor_cpus,
                         "max_concurrency": ACTOR_CONCURRENCY, "max_restarts": 0, "max_task_retries": 0}
        self._remote = ray.remote(SolverActor)
        waiters = [self._spawn() for _ in range(count)]
        for t in waiters:
            t.join()
        alive = [r for r in self.rows() if r["state"] == "idle"]
        if not alive:
            return 0, (f"none of the {count} actors started within {self.cfg.actor_start_timeout:g} s "
                       f"(each needs {'1 GPU' if gpus else f'{self.cfg.actor_cpus:g} CPUs'}; see the Ray logs)")
        return len(alive), ""

    def _spawn(self) -> threading.Thread:
        """Create one actor; a thread waits for it to answer, then reports the pool."""
        with self._lock:
            actor_id = f"actor-{self._next_id}"
            self._next_id += 1
        handle = self._remote.options(**self._options).remote(self.cfg.weights, self.cfg.device, self.cfg.precision)
        slot = Slot(actor_id, handle)
        with self._lock:
            self.slots[actor_id] = slot
        t = threading.Thread(target=self._await_start, args=(slot,), daemon=True)
        t.start()
        return t

    def _await_start(self, slot: Slot) -> None:
        import ray

        try:
            slot.info = ray.get(slot.handle.info.remote(), timeout=self.cfg.actor_start_timeout)
            slot.state = "idle"
        except Exception as exc:  # no resources, a crash at import, a lost node
            log.error("actor %s did not start: %s", slot.actor_id, _first_line(exc))
            self._kill(slot)
            slot.state = "dead"
        self.send("actors", self.rows())

    # ---- jobs -------------------------------------------------------------------------------------

    def _serve(self) -> int:
        while True:
            try:
                msg = self.conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] == "run":
                _, actor_id, spec = msg
                threading.Thread(target=self._drive, args=(actor_id, spec), daemon=True).start()
            elif msg[0] == "cancel":
                _, actor_id, ticket, reason = msg
                slot = self.slots.get(actor_id)
                if slot is not None and slot.state != "dead":
                    slot.handle.cancel.remote(ticket, reason)
            elif msg[0] == "stop":
                break
        import ray

        ray.shutdown()
        return 0

    def _drive(self, actor_id: str, spec: JobSpec) -> None:
        import ray

        with self._lock:
            slot = self.slots.get(actor_id)
            if slot is not None and slot.state == "idle":
                slot.state, slot.ticket = "busy", spec.ticket
            else:
                slot = None
        if slot is None:  # died between the daemon's choice and now: the job never started
            self.send("lost", spec.ticket, actor_id, "the actor was gone before the job started", False)
            return
        try:
            ref = slot.handle.run.remote(spec)
            while True:
                done, _ = ray.wait([ref], timeout=EVENT_POLL)
                self._forward(slot, spec.ticket)
                if done:
                    break
            final, models = ray.get(ref)
            self._forward(slot, spec.ticket)  # what came between the last poll and the end
        except ray.exceptions.RayActorError as exc:
            self._lost(slot, spec.ticket, exc)
            return
        except Exception as exc:  # e.g. the object store lost the result with its node
            self._lost(slot, spec.ticket, exc)
            return
        with self._lock:
            slot.info["models"] = models
            slot.state, slot.ticket = "idle", None
            slot.done += 1
        self.send("final", spec.ticket, actor_id, final, models)

    def _forward(self, slot: Slot, ticket: str) -> None:
        import ray

        for kind, payload in ray.get(slot.handle.events.remote(ticket), timeout=30):
            self.send("event", ticket, kind, payload)

    def _lost(self, slot: Slot, ticket: str, exc: BaseException) -> None:
        if not self._gcs_reachable():
            self._down(f"the Ray cluster went away ({_first_line(exc)})")
        log.warning("actor %s lost with job %s: %s", slot.actor_id, ticket, _first_line(exc))
        # An unavailable actor may still be solving: kill it before the daemon runs the job elsewhere.
        self._retire(slot)
        self.send("lost", ticket, slot.actor_id, _first_line(exc), True)
        self.send("actors", self.rows())

    def _retire(self, slot: Slot) -> None:
        """Mark dead (once), kill, start a replacement."""
        with self._lock:
            if slot.state == "dead":
                return
            slot.state, slot.ticket = "dead", None
        self._kill(slot)
        with self._lock:
            self.slots.pop(slot.actor_id, None)
        self._spawn()

    def _kill(self, slot: Slot) -> None:
        try:
            import ray

            ray.kill(slot.handle, no_restart=True)
        except Exception:  # already dead
            pass

    # ---- health -----------------------------------------------------------------------------------

    def _monitor(self) -> None:
        import ray

        misses = 0
        while True:
            time.sleep(MONITOR_EVERY)
            misses = 0 if self._gcs_reachable() else misses + 1
            if misses >= 2:
                self._down("the Ray cluster stopped answering")
            for slot in [s for s in list(self.slots.values()) if s.state == "idle"]:
                try:
                    ray.get(slot.handle.info.remote(), timeout=10)
                except ray.exceptions.RayActorError as exc:
                    log.warning("idle actor %s died: %s", slot.actor_id, _first_line(exc))
                    self._retire(slot)
                    self.send("actors", self.rows())
                except Exception:  # slow, not dead: look again next time
                    pass

    def _gcs_reachable(self) -> bool:
        return self._gcs is None or _tcp_reachable(*self._gcs)

    def _down(self, message: str) -> None:
        self.send("down", message)
        os._exit(EXIT_DOWN)  # ray.shutdown() would wait on the dead GCS; the daemon starts a new bridge


def _tcp_reachable(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    conn = Connection(int(argv[0]))
    cfg = conn.recv()
    return Bridge(conn, cfg).main()


if __name__ == "__main__":
    sys.exit(main())
