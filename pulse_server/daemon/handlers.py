"""Client requests: decode, check the handshake, dispatch one message type to its handler, answer.

Every handler runs on the loop's thread and answers through the outbox; none blocks. A malformed message is
answered ERROR (logged, throttled); anything but HELLO from a peer without a session is HANDSHAKE_REQUIRED.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable
from typing import Any

from protocol.codec import Limits, decode
from protocol.errors import ErrorCode, ProtocolError
from protocol.job import MAX_REGION_SIDE, ParamError, spec_to_wire
from protocol.messages import (
    CLIENT_TYPES,
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Accepted,
    Bye,
    Cancel,
    Error,
    Failed,
    Fetch,
    Hello,
    JobState,
    Ok,
    Ping,
    Pong,
    Shutdown,
    Status,
    StatusReply,
    Submit,
    Welcome,
)

from .. import __version__
from ..jobs import Job, JobQueue, QueueFull, daemon_spec
from ..pools import WorkerPool
from .admission import MAX_ID_LEN, admit, input_bytes, wait_s
from .auth import Auth
from .config import DaemonConfig, LogThrottle
from .events import JobTracker
from .outbox import Outbox
from .results import ResultStore
from .sessions import Session, SessionTable

log = logging.getLogger("pulse.daemon")

MAX_STATUS_JOBS = 200


class Requests:
    def __init__(self, config: DaemonConfig, queue: JobQueue, sessions: SessionTable, results: ResultStore,
                 outbox: Outbox, tracker: JobTracker, auth: Auth, worker: WorkerPool, *,
                 drop_session: Callable[[Session, str], None], stop: Callable[[], None]) -> None:
        self.config, self.limits, self.queue, self.sessions = config, config.limits, queue, sessions
        self.results, self.outbox, self.tracker, self.auth, self.worker = results, outbox, tracker, auth, worker
        self.drop_session, self.stop = drop_session, stop
        self.bound_endpoint = config.endpoint
        self.spec = daemon_spec(config.max_steps)  # the job contract as this daemon applies it (WELCOME, SUBMIT)
        self.started = time.time()
        self._throttle = LogThrottle()
        self._handlers: dict[type, Callable[[Session, Any], None]] = {  # for every message after HELLO
            Submit: self.on_submit, Cancel: self.on_cancel, Status: self.on_status, Fetch: self.on_fetch,
            Ping: self.on_ping, Pong: lambda s, m: None, Bye: self.on_bye, Shutdown: self.on_shutdown,
        }

    def on_frames(self, frames: list) -> None:
        identity = frames[0].bytes
        session = self.sessions.of_identity(identity)
        try:
            msg = decode(frames[1:], self.limits, allowed=CLIENT_TYPES)
        except ProtocolError as exc:
            log.log(self._throttle.level(), "bad message from %s: %s: %s", session.client if session else identity.hex(),
                    exc.code, exc.message)
            if isinstance(exc, ParamError) and exc.job_id and session is not None:  # a SUBMIT's params: refuse the job
                self.outbox.send(session, Failed(exc.job_id[:MAX_ID_LEN], exc.code, exc.message))
            else:
                self.outbox.reply(identity, Error(exc.code, exc.message))
            return
        if isinstance(msg, Hello):
            self.on_hello(identity, msg)
            return
        if session is None:
            self.outbox.reply(identity, Error("HANDSHAKE_REQUIRED", "send HELLO first (session unknown or expired)",
                                              retryable=True))
            return
        session.last_seen = time.monotonic()
        handler = self._handlers.get(type(msg))
        if handler is None:
            self.outbox.send(session, Error("UNEXPECTED_TYPE", f"{msg.TYPE} is not accepted by the daemon"))
            return
        try:
            handler(session, msg)
        except ProtocolError as exc:  # e.g. an answer that cannot be encoded within the limits
            self.outbox.send(session, Error(exc.code, exc.message))

    def on_hello(self, identity: bytes, msg: Hello) -> None:
        if msg.min_protocol > PROTOCOL_VERSION or msg.protocol < min(SUPPORTED_VERSIONS):
            self.outbox.reply(identity, Error(ErrorCode.VERSION_MISMATCH, version_mismatch(msg),
                                              supported=list(SUPPORTED_VERSIONS)))
            return
        if not self.auth.hello_ok(msg.token):
            log.warning("refused a client with a wrong or missing token (%s)", msg.client[:64])
            self.outbox.reply(identity, Error("BAD_TOKEN", "wrong or missing token: use the daemon's token file or PULSE_TOKEN"))
            return
        sid = msg.session or secrets.token_hex(16)
        if len(sid) > MAX_ID_LEN:
            self.outbox.reply(identity, Error("BAD_FIELD", "session id too long"))
            return
        session, new = self.sessions.attach(identity, sid, msg.client[:64], time.monotonic())
        if new:
            log.info("client %s %s connected", msg.client[:64], msg.client_version[:32])
        self.outbox.send(session, Welcome(
            protocol=PROTOCOL_VERSION, server_version=__version__, session=sid, heartbeat_ms=self.config.heartbeat_ms,
            device=str(self.worker.device), limits=welcome_limits(self.limits), models=self.worker.model_summaries(),
            params=spec_to_wire(self.spec),
        ))

    def on_submit(self, s: Session, msg: Submit) -> None:
        jid = msg.job_id
        if not 1 <= len(jid) <= MAX_ID_LEN:
            self.outbox.send(s, Error("BAD_FIELD", f"job_id must be 1..{MAX_ID_LEN} characters", job_id=jid[:MAX_ID_LEN]))
            return
        known = s.jobs.get(jid)
        if known is not None:  # idempotent: a re-sent SUBMIT (after a reconnect) just reports where it is
            self.outbox.send(s, Accepted(jid, self.queue.positions().get(known, 0), known.state,
                                         round(known.estimate_s, 1), round(self._wait_s(known), 1)))
            return
        done = self.results.get(s.sid, jid)
        if done is not None:
            self._send_kept(s, done)
            return
        job = admit(msg, s.sid, self.config, sum(input_bytes(j) for j in self.sessions.active_jobs()), self.spec)
        if isinstance(job, Failed):
            self.outbox.send(s, job)
            return
        try:
            position = self.queue.put(job)
        except QueueFull as exc:
            self.outbox.send(s, Failed(jid, exc.code, exc.message, True))
            return
        s.jobs[jid] = job
        params = job.params
        job.estimate_s = self.worker.estimate(params, msg.image.width * msg.image.height)
        wait = self._wait_s(job)
        ahead = position - 1 + self.worker.running()  # queue position 1 still waits for a running job
        log.info("job %s from %s: %s %dx%dx%d %s, %d candidates x %d steps, %d job(s) ahead of it; estimate %.1f s, "
                 "starts in %.1f s (0: unknown)", jid, s.client, params.mode, msg.image.width, msg.image.height,
                 msg.image.channels, msg.image.dtype, params.candidates, params.steps, ahead, job.estimate_s, wait)
        self.outbox.send(s, Accepted(jid, position, "queued", round(job.estimate_s, 1), round(wait, 1)))

    def _wait_s(self, job: Job) -> float:
        return wait_s(job, self.queue.positions(), self.sessions.active_jobs())

    def on_cancel(self, s: Session, msg: Cancel) -> None:
        job = s.jobs.get(msg.job_id)
        if job is not None:
            self.tracker.cancel(job, "cancelled by the client")
        self.outbox.send(s, Ok("CANCEL", msg.job_id))

    def on_status(self, s: Session, msg: Status) -> None:
        positions = self.queue.positions()
        jobs = [{"job_id": j.job_id, "state": j.state, "position": positions.get(j, 0), "step": j.step, "total": j.total}
                for j in s.jobs.values()]
        jobs += [{"job_id": j.job_id, "state": j.state, "position": 0, "step": j.step, "total": j.total}
                 for j in self.results.of_session(s.sid)]
        self.outbox.send(s, StatusReply(jobs[-MAX_STATUS_JOBS:], self.server_info()))  # newest, within the header cap

    def server_info(self) -> dict[str, Any]:
        info = {
            "version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid(), "endpoint": self.bound_endpoint,
            "device": str(self.worker.device), "models": self.worker.model_summaries(), "queued": len(self.queue),
            "running": self.worker.running(), "sessions": len(self.sessions),
            "uptime": round(time.time() - self.started, 1), "kept_results": len(self.results),
            "refused_peers": self.auth.refused_peers,
        }
        pool = self.worker.pool_info()
        if pool is not None:
            info["cluster"] = pool
        return info

    def on_fetch(self, s: Session, msg: Fetch) -> None:
        job = s.jobs.get(msg.job_id)
        if job is not None:
            self.outbox.send(s, JobState(job.job_id, job.state, self.queue.positions().get(job, 0)))
            return
        done = self.results.get(s.sid, msg.job_id)
        if done is None:
            self.outbox.send(s, Failed(msg.job_id, "NOT_FOUND", f"no job {msg.job_id[:64]!r} here (results are kept "
                                                                f"{self.config.result_ttl:.0f} s)"))
        else:
            self._send_kept(s, done)

    def _send_kept(self, s: Session, done: Job) -> None:
        """A finished job's RESULT/FAILED frames once more (FETCH, or a SUBMIT sent again)."""
        if done.final_frames is None:  # the store only keeps jobs whose frames the loop has set
            raise RuntimeError(f"kept job {done.job_id!r} has no final frames")
        self.outbox.send_frames(s, done.final_frames)

    def on_ping(self, s: Session, msg: Ping) -> None:
        self.outbox.send(s, Pong(msg.t), droppable=True)

    def on_bye(self, s: Session, msg: Bye) -> None:
        self.drop_session(s, "client said goodbye")

    def on_shutdown(self, s: Session, msg: Shutdown) -> None:
        log.info("shutdown requested by %s", s.client)
        self.outbox.send(s, Ok("SHUTDOWN"))
        self.outbox.flush(self.sessions)
        self.stop()


def welcome_limits(limits: Limits) -> dict[str, int]:
    """WELCOME `limits`: the codec's caps, with the region size the pipeline takes (not the larger frame caps) as
    max_side, and as max_region_side: what the editors check a selection against before sending it."""
    out = limits.to_dict()
    out["max_side"] = min(limits.max_side, MAX_REGION_SIDE)
    out["max_pixels"] = min(limits.max_pixels, MAX_REGION_SIDE * MAX_REGION_SIDE)
    out["max_region_side"] = out["max_side"]
    return out


def version_mismatch(hello: Hello) -> str:
    """VERSION_MISMATCH's message: both sides' versions, and what to update."""
    spoken = "/".join(map(str, SUPPORTED_VERSIONS))
    client = f"{hello.client[:64] or 'this client'} {hello.client_version[:32]}".strip()
    said = f"{client} speaks protocol {hello.min_protocol}..{hello.protocol}, this daemon (pulse-server {__version__}) "
    if hello.protocol < min(SUPPORTED_VERSIONS):
        return (f"{said}speaks {spoken}: update the plug-in — `pulse-server install-plugin gimp` or "
                f"`pulse-server install-plugin krita`, then restart the editor")
    return f"{said}speaks {spoken}: update pulse-server and restart it"
