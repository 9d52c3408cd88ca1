"""The daemon: one ROUTER socket owned by one loop; sessions, dispatch, heartbeats, shutdown.

Only this loop's thread touches the socket. Worker threads report through `_emit` (a deque plus a
one-byte wake-up on an inproc PAIR), so the socket never blocks on a solve and a solve never waits on a
slow client. Every send is non-blocking: RESULT/FAILED/state messages wait in a per-session outbox
when a client is slow; PROGRESS and PREVIEW are coalesced to the latest one per job and dropped when
they cannot go out at once (a slow client gets fewer updates, the daemon's memory does not grow).
"""

from __future__ import annotations

import errno
import hmac
import logging
import os
import secrets
import signal
import stat
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from protocol import endpoint as ep
from protocol.client import PLAIN_USERNAME, ZAP_DOMAIN, curve_client_keys
from protocol.codec import DEFAULT_LIMITS, MAGIC, Limits, copy_frames, decode, encode
from protocol.errors import ProtocolError
from protocol.messages import (
    CLIENT_TYPES, DTYPE_SIZES, PROTOCOL_VERSION, SUPPORTED_VERSIONS, Accepted, Bye, Cancel, Error, Failed, Fetch, Hello,
    JobState, Message, Ok, Ping, Pong, Result, Shutdown, Status, StatusReply, Submit, Welcome,
)

from . import __version__, paths
from .errors import PulseError
from .jobs import Job, JobParams, JobQueue, QueueFull
from .pools import make_pool

log = logging.getLogger("pulse.daemon")

MAX_OUTBOX = 256  # undelivered RESULT/FAILED/state messages per session before the oldest are dropped
MAX_ID_LEN = 128
MAX_STATUS_JOBS = 200
PROGRESS_INTERVAL = 0.05  # seconds between two PROGRESS of one job
SNDHWM = 100  # messages per client pipe before sends fail with EAGAIN (updates dropped, results wait)
AWAY_SLACK = 0.25  # seconds a loop turn may overrun its poll before the daemon counts itself away
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks a context's ZAP handler (RFC 27)
MAX_PLAIN_TOKEN = 255  # ZMTP PLAIN carries the password in a length-prefixed byte string


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
    max_steps: int = 100_000
    result_ttl: float = 120.0  # seconds a finished job's RESULT is kept for FETCH / idempotent SUBMIT
    max_result_bytes: int = 512 << 20
    max_queued_bytes: int = 2 << 30  # pixels of jobs waiting or running (they stay in memory until done)
    preload: bool = False
    cluster: str | None = None  # "ray" | "ray://ADDRESS": jobs run on a pool of Ray actors (pulse_server.cluster)
    actor_cpus: float = 1.0  # CPUs each actor takes where the cluster has no GPU
    actors: int = 0  # pool size; 0 = one per GPU, else as many CPU actors as the cluster's CPUs allow


@dataclass(eq=False)
class Session:
    sid: str
    identity: bytes | None
    client: str
    last_seen: float
    jobs: dict[str, Job] = field(default_factory=dict)  # active (queued / loading / running) jobs
    outbox: deque = field(default_factory=deque)
    progress: dict[str, list] = field(default_factory=dict)  # job_id -> latest PROGRESS frames
    previews: dict[str, list] = field(default_factory=dict)  # job_id -> latest PREVIEW frames
    last_progress: dict[str, float] = field(default_factory=dict)  # job_id -> when PROGRESS last left
    last_ping: float = 0.0


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.queue = JobQueue(config.max_queue, config.max_per_session)
        self.sessions: dict[str, Session] = {}
        self.by_identity: dict[bytes, Session] = {}
        # Finished jobs kept for FETCH, oldest first: (sid, job_id) -> Job with final_frames.
        self.results: OrderedDict[tuple[str, str], Job] = OrderedDict()
        self.result_bytes = 0
        self.token: str | None = None
        self.started = time.time()
        self._events: deque = deque()
        self._bad_log: deque[float] = deque()
        self._refused_log: deque[float] = deque()
        self.refused_peers = 0  # tcp handshakes the ZAP handler denied (in STATUS_REPLY's server info)
        self._curve_client_key: bytes | None = None  # raw 32-byte public key the token stands for
        self._zap: zmq.Socket | None = None
        self._stop = threading.Event()
        self._ctx: zmq.Context | None = None
        self._router: zmq.Socket | None = None
        self._wake_send: zmq.Socket | None = None
        self._wake_lock = threading.Lock()
        self._lock = paths.DaemonLock()
        self._ipc_file: Path | None = None
        self.worker = make_pool(config, self.queue, self._emit)  # the local thread, or the Ray actor pool
        self.bound_endpoint = config.endpoint
        self._handlers = {  # message type -> handler(session, msg), for every message after HELLO
            Submit: self._on_submit, Cancel: self._on_cancel, Status: self._on_status, Fetch: self._on_fetch,
            Ping: self._on_ping, Pong: lambda s, m: None, Bye: self._on_bye, Shutdown: self._on_shutdown,
        }

    # ---- lifecycle --------------------------------------------------------------------------------

    def request_stop(self, *_: Any) -> None:
        self._stop.set()

    def serve(self) -> int:
        """Bind, loop until stopped, clean up. Raises PulseError for a refused start (lock, bind)."""
        cfg = self.config
        self._check_endpoint(cfg.endpoint)
        self._check_device()
        self._lock.acquire(cfg.endpoint)
        try:
            self.worker.start()  # before the bind: an unreachable cluster refuses the start (exit 2)
            self._bind()
            self._lock_rewrite()
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGTERM, self.request_stop)
                signal.signal(signal.SIGINT, self.request_stop)
                if hasattr(signal, "SIGBREAK"):  # Windows: CTRL_BREAK_EVENT to a console process group
                    signal.signal(signal.SIGBREAK, self.request_stop)
            log.info("pulse-server %s listening on %s (pid %d, protocol %d, heartbeat %d ms)", __version__,
                     self.bound_endpoint, os.getpid(), PROTOCOL_VERSION, cfg.heartbeat_ms)
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _check_endpoint(self, endpoint: str) -> None:
        if not endpoint.startswith(("ipc://", "tcp://")):
            raise PulseError(f"unsupported endpoint {endpoint!r}: use ipc://PATH or tcp://HOST:PORT", "BAD_ENDPOINT")
        path = ep.ipc_path(endpoint)
        if path is not None and len(str(path).encode()) > ep.MAX_IPC_PATH:
            raise PulseError(f"ipc path {path} is longer than the OS allows ({ep.MAX_IPC_PATH} bytes); set PULSE_RUNTIME_DIR to a shorter directory", "BAD_ENDPOINT")
        if path is not None:
            _refuse_non_socket(path)  # before taking the lock: a typo must not even look like a daemon
        if ep.is_tcp(endpoint) and not ep.is_loopback(endpoint) and not self.config.allow_remote:
            raise PulseError(
                f"{endpoint} is reachable from other machines; pass --allow-remote to bind it (CURVE encryption and the token are then required)",
                "REMOTE_BIND",
            )

    def _check_device(self) -> None:
        # An autostart entry may bake in --device cuda: refuse to start (exit 2, no restart loop) rather
        # than run a daemon whose every job fails. `auto` cannot fail: the worker resolves it off this thread.
        if self.worker.noop or self.config.cluster or self.config.device in ("auto", None):
            return
        from .devices import resolve_device

        resolve_device(self.config.device)  # PulseError(NO_DEVICE | BAD_DEVICE)

    def _bind(self) -> None:
        cfg = self.config
        path = ep.ipc_path(cfg.endpoint)
        if path is not None:  # before any zmq socket exists: a refusal here must not leave one open
            if path.parent == paths.runtime_dir():
                paths.ensure_runtime_dir()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_socket(path, locked=self._lock.held)
        self._ctx = zmq.Context()
        r = self._ctx.socket(zmq.ROUTER)
        try:
            r.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise instead of vanishing
            r.setsockopt(zmq.LINGER, 0)
            r.setsockopt(zmq.SNDHWM, SNDHWM)
            r.setsockopt(zmq.RCVHWM, 1000)
            r.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(self.limits))  # libzmq drops a peer sending a bigger frame
            if ep.is_tcp(cfg.endpoint):
                self.token = paths.read_or_create_token()
                self._start_zap()  # before the bind: PLAIN with no ZAP handler would let everybody in
                r.zap_domain = ZAP_DOMAIN
                if ep.is_loopback(cfg.endpoint):
                    r.plain_server = True
                else:
                    self._setup_curve(r)
            try:
                r.bind(cfg.endpoint)
            except zmq.ZMQError as exc:
                raise PulseError(f"cannot listen on {cfg.endpoint}: {exc}", "BIND_FAILED") from exc
        except BaseException:
            r.close(0)  # an open socket would make Context.term() in _shutdown wait forever
            raise
        self.bound_endpoint = r.getsockopt_string(zmq.LAST_ENDPOINT) or cfg.endpoint
        if path is not None:
            self._ipc_file = path
            if os.name == "posix":
                os.chmod(path, 0o600)
        self._router = r
        wake_recv = self._ctx.socket(zmq.PAIR)
        wake_recv.bind(f"inproc://pulse-wake-{id(self)}")
        self._wake_send = self._ctx.socket(zmq.PAIR)
        self._wake_send.connect(f"inproc://pulse-wake-{id(self)}")
        self._wake_recv = wake_recv

    def _start_zap(self) -> None:
        """The ZAP handler (RFC 27) on this context: tcp peers must prove the token during the ZMTP
        handshake, so libzmq never delivers (nor buffers beyond the handshake) a message from a peer that
        lacks it. PLAIN (loopback): the password is the token. CURVE (--allow-remote): the client's public
        key is the one derived from the token (`protocol.client.curve_client_keys`). HELLO checks the token
        again (defence in depth). Answered by the loop itself (`_on_zap`): one thread owns every socket."""
        token = self.token.encode("utf-8")
        if not 1 <= len(token) <= MAX_PLAIN_TOKEN:
            raise PulseError(f"the token must be 1..{MAX_PLAIN_TOKEN} bytes (PULSE_TOKEN or {paths.token_path()})", "BAD_TOKEN")
        self._token_bytes = token
        if not ep.is_loopback(self.config.endpoint) and zmq.has("curve"):
            from zmq.utils import z85

            self._curve_client_key = z85.decode(curve_client_keys(self.token)[0])
        zap = self._ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        self._zap = zap

    def _on_zap(self) -> None:
        """Answer one ZAP request: [version, request id, domain, address, routing id, mechanism, *credentials]
        -> [version, request id, status code, status text, user id, metadata]."""
        frames = self._zap.recv_multipart(zmq.NOBLOCK)
        if len(frames) < 6 or frames[0] != b"1.0":  # not a ZAP 1.0 request: refuse (REP must still answer)
            self._zap.send_multipart([b"1.0", frames[1] if len(frames) > 1 else b"", b"500", b"bad ZAP request", b"", b""])
            return
        request_id, address, mechanism, creds = frames[1], frames[3], frames[5], frames[6:]
        if mechanism == b"PLAIN" and len(creds) == 2:
            ok = hmac.compare_digest(creds[1], self._token_bytes)
        elif mechanism == b"CURVE" and len(creds) == 1 and self._curve_client_key is not None:
            ok = hmac.compare_digest(creds[0], self._curve_client_key)
        else:
            ok = False
        if ok:
            self._zap.send_multipart([b"1.0", request_id, b"200", b"OK", PLAIN_USERNAME, b""])
            return
        self.refused_peers += 1
        log.log(_throttled_level(self._refused_log),
                "refused a %s peer from %s at the handshake: wrong or missing token",
                mechanism.decode("ascii", "replace")[:16], address.decode("ascii", "replace")[:64])
        self._zap.send_multipart([b"1.0", request_id, b"400", b"wrong or missing token", b"", b""])

    def _setup_curve(self, r: zmq.Socket) -> None:
        if not zmq.has("curve"):
            raise PulseError("this libzmq has no CURVE support; cannot bind a non-loopback address safely", "NO_CURVE")
        key_dir = paths.ensure_private_dir(paths.config_dir())
        secret_file, public_file = key_dir / "curve.secret", key_dir / "curve.public"
        if not secret_file.exists():
            public, secret = zmq.curve_keypair()
            fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(secret)
            public_file.write_bytes(public)
        r.curve_server = True
        r.curve_secretkey = secret_file.read_bytes().strip()
        log.warning("remote clients need PULSE_SERVER_KEY=%s (also in %s) and the token", public_file.read_text().strip(), public_file)

    def _lock_rewrite(self) -> None:
        # The lock file names the endpoint actually bound (a tcp port of "*" is resolved by now).
        if self.bound_endpoint != self.config.endpoint and self._lock.held:
            self._lock.write(self.bound_endpoint)

    def _shutdown(self) -> None:
        serving = self._router is not None  # a start refused at the bind never served: nothing to say
        if serving:
            log.info("stopping")
        self.queue.close()
        for job in self.queue.drain():
            self._finish(job, Failed(job.job_id, "SHUTDOWN", "the daemon is stopping", True))
        self.worker.stop()
        if self.worker.is_alive():
            self.worker.join(timeout=15.0)
        if self._router is not None:
            self._drain_events()
            self._flush()
            self._router.close(linger=500)  # a moment for the last FAILED/RESULT to leave
            with self._wake_lock:  # a worker still finishing must not touch a closed socket
                self._wake_send.close(0)
                self._wake_send = None
            self._wake_recv.close(0)
        if self._zap is not None:
            self._zap.close(0)
            self._zap = None
        if self._ctx is not None:
            self._ctx.term()
        if self._ipc_file is not None:
            try:
                self._ipc_file.unlink()
            except FileNotFoundError:
                pass
        self._lock.release()
        if serving:
            log.info("stopped")

    # ---- loop -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        r = self._router
        poller = zmq.Poller()
        poller.register(r, zmq.POLLIN)
        poller.register(self._wake_recv, zmq.POLLIN)
        if self._zap is not None:
            poller.register(self._zap, zmq.POLLIN)
        tick = self.config.heartbeat_ms / 1000.0
        next_tick = time.monotonic() + tick
        mark = time.monotonic()
        while not self._stop.is_set():
            timeout_ms = max(0, min(100, int((next_tick - time.monotonic()) * 1000)))
            ready = dict(poller.poll(timeout_ms))
            mark = self._note_absence(mark, timeout_ms / 1000.0)  # stopped while polling?
            if r in ready:
                for _ in range(256):  # bounded so worker events and heartbeats still get their turn
                    try:
                        frames = r.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._on_frames(frames)
            if self._zap is not None and self._zap in ready:
                for _ in range(64):
                    if not self._zap.poll(0):
                        break
                    self._on_zap()
            if self._wake_recv in ready:
                while True:
                    try:
                        self._wake_recv.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
            self._drain_events()
            self._flush()
            mark = self._note_absence(mark, 0.0)  # stopped (or stuck) while working?
            if time.monotonic() >= next_tick:
                self._heartbeat()
                next_tick = time.monotonic() + tick

    def _emit(self, kind: str, job: Job, payload: Any) -> None:
        """Called from worker threads."""
        self._events.append((kind, job, payload))
        with self._wake_lock:
            if self._wake_send is not None:
                try:
                    self._wake_send.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the loop polls at least every 100 ms anyway

    # ---- incoming ---------------------------------------------------------------------------------

    def _on_frames(self, frames: list) -> None:
        identity = frames[0].bytes
        session = self.by_identity.get(identity)
        try:
            msg = decode(frames[1:], self.limits, allowed=CLIENT_TYPES)
        except ProtocolError as exc:
            log.log(_throttled_level(self._bad_log), "bad message from %s: %s: %s", session.client if session else identity.hex(), exc.code, exc.message)
            self._reply(identity, Error(exc.code, exc.message))
            return
        if isinstance(msg, Hello):
            self._on_hello(identity, msg)
            return
        if session is None:
            self._reply(identity, Error("HANDSHAKE_REQUIRED", "send HELLO first (session unknown or expired)", retryable=True))
            return
        session.last_seen = time.monotonic()
        handler = self._handlers.get(type(msg))
        if handler is None:
            self._send(session, Error("UNEXPECTED_TYPE", f"{msg.TYPE} is not accepted by the daemon"))
            return
        try:
            handler(session, msg)
        except ProtocolError as exc:  # e.g. an answer that cannot be encoded within the limits
            self._send(session, Error(exc.code, exc.message))

    def _on_hello(self, identity: bytes, msg: Hello) -> None:
        if msg.min_protocol > PROTOCOL_VERSION or msg.protocol < min(SUPPORTED_VERSIONS):
            self._reply(identity, Error("VERSION_MISMATCH", f"client speaks protocol {msg.min_protocol}..{msg.protocol}, daemon speaks {SUPPORTED_VERSIONS}; update the plug-in or the daemon", supported=list(SUPPORTED_VERSIONS)))
            return
        if self.token is not None:
            given = (msg.token or "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, self.token.encode("utf-8")):
                log.warning("refused a client with a wrong or missing token (%s)", msg.client[:64])
                self._reply(identity, Error("BAD_TOKEN", "wrong or missing token: use the daemon's token file or PULSE_TOKEN"))
                return
        sid = msg.session or secrets.token_hex(16)
        if len(sid) > MAX_ID_LEN:
            self._reply(identity, Error("BAD_FIELD", "session id too long"))
            return
        old = self.by_identity.pop(identity, None)
        if old is not None and old.sid != sid:
            old.identity = None
        session = self.sessions.get(sid)
        now = time.monotonic()
        if session is None:
            session = self.sessions[sid] = Session(sid, identity, msg.client[:64], now)
            log.info("client %s %s connected", msg.client[:64], msg.client_version[:32])
        else:
            if session.identity is not None and session.identity != identity:
                self.by_identity.pop(session.identity, None)
            session.identity = identity
            session.last_seen = now
        self.by_identity[identity] = session
        self._send(session, Welcome(
            protocol=PROTOCOL_VERSION, server_version=__version__, session=sid, heartbeat_ms=self.config.heartbeat_ms,
            device=str(self.worker.device), limits=self.limits.to_dict(), models=self.worker.model_summaries(),
        ))

    def _on_submit(self, s: Session, msg: Submit) -> None:
        jid = msg.job_id
        if not 1 <= len(jid) <= MAX_ID_LEN:
            self._send(s, Error("BAD_FIELD", f"job_id must be 1..{MAX_ID_LEN} characters", job_id=jid[:MAX_ID_LEN]))
            return
        job = s.jobs.get(jid)
        if job is not None:  # idempotent: a re-sent SUBMIT (after a reconnect) just reports where it is
            self._send(s, Accepted(jid, self.queue.positions().get(job, 0), job.state, round(job.estimate_s, 1),
                                   round(self._wait_s(job), 1)))
            return
        done = self.results.get((s.sid, jid))
        if done is not None:
            self._send_frames(s, done.final_frames)
            return
        try:
            params = JobParams.from_wire(msg.params, max_steps=self.config.max_steps)
            _check_mask(msg)
        except PulseError as exc:
            self._send(s, Failed(jid, exc.code, exc.message, exc.retryable))
            return
        held = sum(_input_bytes(j) for sess in self.sessions.values() for j in sess.jobs.values())
        size = msg.image.nbytes + (msg.mask.nbytes if msg.mask is not None else 0)
        if size > self.config.max_queued_bytes:  # would not fit even alone: waiting cannot help
            self._send(s, Failed(jid, "TOO_LARGE", f"the region holds {size >> 20} MiB, more than this daemon keeps for "
                                 f"waiting jobs ({self.config.max_queued_bytes >> 20} MiB); select a smaller area"))
            return
        if held + size > self.config.max_queued_bytes:
            self._send(s, Failed(jid, "QUEUE_FULL", f"{(held + size) >> 20} MiB of regions would be waiting; try again when a job finishes", True))
            return
        job = Job(jid, s.sid, params, msg.image, msg.mask, preview_interval=max(0.0, min(msg.preview_interval, 3600.0)))
        try:
            position = self.queue.put(job)
        except QueueFull as exc:
            self._send(s, Failed(jid, exc.code, exc.message, True))
            return
        s.jobs[jid] = job
        job.estimate_s = self.worker.estimate(params, msg.image.width * msg.image.height)
        wait = self._wait_s(job)
        ahead = position - 1 + self.worker.running()  # queue position 1 still waits for a running job
        log.info("job %s from %s: %s %dx%dx%d %s, %d candidates x %d steps, %d job(s) ahead of it; estimate %.1f s, "
                 "starts in %.1f s (0: unknown)", jid, s.client, params.mode, msg.image.width, msg.image.height,
                 msg.image.channels, msg.image.dtype, params.candidates, params.steps, ahead, job.estimate_s, wait)
        self._send(s, Accepted(jid, position, "queued", round(job.estimate_s, 1), round(wait, 1)))

    def _wait_s(self, job: Job) -> float:
        """Seconds until `job` starts: the estimates of the queued jobs served before it and what remains of the
        jobs running now; 0 if it runs already or any of those is unknown."""
        positions = self.queue.positions()
        mine = positions.get(job)
        if mine is None:
            return 0.0
        now = time.monotonic()
        parts = [j.estimate_s if j.estimate_s > 0 else None for j, p in positions.items() if p < mine]
        parts += [_remaining(j, now) for sess in self.sessions.values() for j in sess.jobs.values()
                  if j not in positions and not j.done]  # taken by the worker (loading or running)
        if any(p is None for p in parts):
            return 0.0
        return sum(parts)

    def _on_cancel(self, s: Session, msg: Cancel) -> None:
        job = s.jobs.get(msg.job_id)
        if job is not None:
            self._cancel_job(job, "cancelled by the client")
        self._send(s, Ok("CANCEL", msg.job_id))

    def _cancel_job(self, job: Job, reason: str, keep: bool = True) -> None:
        if self.queue.remove(job):
            job.cancel(reason)
            self._finish(job, Failed(job.job_id, "CANCELLED", reason), keep=keep)
        else:
            job.cancel(reason)  # running: the worker stops at its next step and reports FAILED(CANCELLED)

    def _on_status(self, s: Session, msg: Status) -> None:
        positions = self.queue.positions()
        jobs = [{"job_id": j.job_id, "state": j.state, "position": positions.get(j, 0), "step": j.step, "total": j.total}
                for j in s.jobs.values()]
        jobs += [{"job_id": jid, "state": j.state, "position": 0, "step": j.step, "total": j.total}
                 for (sid, jid), j in self.results.items() if sid == s.sid]
        self._send(s, StatusReply(jobs[-MAX_STATUS_JOBS:], self._server_info()))  # newest, within the header cap

    def _server_info(self) -> dict[str, Any]:
        info = {
            "version": __version__, "protocol": PROTOCOL_VERSION, "pid": os.getpid(), "endpoint": self.bound_endpoint,
            "device": str(self.worker.device), "models": self.worker.model_summaries(), "queued": len(self.queue),
            "running": self.worker.running(), "sessions": len(self.sessions),
            "uptime": round(time.time() - self.started, 1), "kept_results": len(self.results),
            "refused_peers": self.refused_peers,
        }
        pool = self.worker.pool_info()
        if pool is not None:
            info["cluster"] = pool
        return info

    def _on_fetch(self, s: Session, msg: Fetch) -> None:
        job = s.jobs.get(msg.job_id)
        if job is not None:
            self._send(s, JobState(job.job_id, job.state, self.queue.positions().get(job, 0)))
            return
        done = self.results.get((s.sid, msg.job_id))
        if done is None:
            self._send(s, Failed(msg.job_id, "NOT_FOUND", f"no job {msg.job_id[:64]!r} here (results are kept {self.config.result_ttl:.0f} s)"))
        else:
            self._send_frames(s, done.final_frames)

    def _on_ping(self, s: Session, msg: Ping) -> None:
        self._send(s, Pong(msg.t), droppable=True)

    def _on_bye(self, s: Session, msg: Bye) -> None:
        self._drop_session(s, "client said goodbye")

    def _on_shutdown(self, s: Session, msg: Shutdown) -> None:
        log.info("shutdown requested by %s", s.client)
        self._send(s, Ok("SHUTDOWN"))
        self._flush()
        self.request_stop()

    # ---- worker events ----------------------------------------------------------------------------

    def _drain_events(self) -> None:
        while self._events:
            kind, job, payload = self._events.popleft()
            s = self._session_of(job)
            if kind == "final":
                self._finish(job, payload)
                continue
            if job.done:
                continue
            if kind == "state":
                job.state = payload
                if payload == "running":
                    job.started = time.monotonic()
                if s is not None:
                    self._send(s, JobState(job.job_id, payload, 0))
            elif kind == "progress":
                job.step, job.total = payload.step, payload.total
                job.eta_s, job.eta_at = payload.eta_s, time.monotonic()
                if s is not None:
                    s.progress[job.job_id] = encode(payload, self.limits)
            elif kind == "preview" and s is not None:
                s.previews[job.job_id] = encode(payload, self.limits)

    def _session_of(self, job: Job) -> Session | None:
        """The session that lists `job` as active, else None. A job cancelled by a dropped session may still
        report (the worker stops at its next step) after the client came back and re-submitted the same
        job id: those reports must not update, unlist, store or answer for the new job."""
        s = self.sessions.get(job.session)
        return s if s is not None and s.jobs.get(job.job_id) is job else None

    def _finish(self, job: Job, msg: Result | Failed, keep: bool = True) -> None:
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
        s = self._session_of(job)
        if s is not None:
            s.jobs.pop(job.job_id)
            s.progress.pop(job.job_id, None)
            s.previews.pop(job.job_id, None)
            s.last_progress.pop(job.job_id, None)
            if keep:
                self._keep_result(job)
            self._send_frames(s, frames)

    def _keep_result(self, job: Job) -> None:
        key = (job.session, job.job_id)
        old = self.results.pop(key, None)
        if old is not None:
            self.result_bytes -= old.final_bytes
        self.results[key] = job
        self.result_bytes += job.final_bytes
        while self.results and self.result_bytes > self.config.max_result_bytes:
            self._drop_oldest_result()

    def _drop_oldest_result(self) -> None:
        _, dropped = self.results.popitem(last=False)
        self.result_bytes -= dropped.final_bytes  # kept in step with `results` by this and _keep_result only

    # ---- heartbeats and expiry --------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = time.monotonic()
        hb = self.config.heartbeat_ms / 1000.0
        dead_after = hb * self.config.missed_heartbeats + 0.5
        for s in list(self.sessions.values()):
            if now - s.last_seen > dead_after:
                self._drop_session(s, "client vanished (no heartbeat)" if s.jobs else "idle")
            elif s.jobs and s.identity is not None:
                self._send(s, Ping(time.time()), droppable=True)
        while self.results:
            oldest = next(iter(self.results.values()))
            if now - (oldest.finished or now) <= self.config.result_ttl:
                break
            self._drop_oldest_result()

    def _note_absence(self, since: float, allowed: float) -> float:
        """Time the loop was away since `since`, beyond the `allowed` seconds of polling, is the daemon's own
        absence (paused by SIGSTOP or a debugger, a suspended VM, swapping, a slow turn): the clients'
        heartbeats of that time sit unread in the socket, so every session's deadline moves by it and a peer
        is expired only for silence while the daemon was listening. Returns now, the next `since`."""
        now = time.monotonic()
        away = now - since - allowed
        if away <= AWAY_SLACK:
            return now
        if away >= 1.0:
            log.warning("the daemon was stalled for %.1f s (paused, suspended or starved); its clients are not "
                        "blamed for that silence", away)
        for s in self.sessions.values():
            s.last_seen += away
        return now

    def _drop_session(self, s: Session, reason: str) -> None:
        if s.jobs:
            log.info("cancelling %d job(s) of %s: %s", len(s.jobs), s.client, reason)
        for job in list(s.jobs.values()):
            # Not kept for FETCH: if the client comes back, its re-SUBMIT runs the job again.
            self._cancel_job(job, reason, keep=False)
            job.release_inputs()
        s.jobs.clear()
        s.outbox.clear()
        s.progress.clear()
        s.previews.clear()
        self.sessions.pop(s.sid, None)
        if s.identity is not None and self.by_identity.get(s.identity) is s:
            del self.by_identity[s.identity]

    # ---- outgoing ---------------------------------------------------------------------------------

    def _reply(self, identity: bytes, msg: Message) -> None:
        """Answer a peer that has no session (errors before/at the handshake); dropped if it cannot go now."""
        self._try_send(identity, encode(msg, self.limits))

    def _send(self, s: Session, msg: Message, droppable: bool = False) -> None:
        frames = encode(msg, self.limits)
        if droppable:
            if s.identity is not None and not s.outbox:
                if self._try_send(s.identity, frames) == "gone":
                    self._lost(s)
            return
        self._send_frames(s, frames)

    def _send_frames(self, s: Session, frames: list) -> None:
        s.outbox.append(frames)
        while len(s.outbox) > MAX_OUTBOX:
            s.outbox.popleft()
            log.warning("client %s is not reading; dropped an old message", s.client)
        self._flush_session(s)

    def _flush(self) -> None:
        for s in list(self.sessions.values()):
            self._flush_session(s)

    def _flush_session(self, s: Session) -> None:
        while s.identity is not None and s.outbox:
            status = self._try_send(s.identity, s.outbox[0])
            if status == "ok":
                s.outbox.popleft()
            elif status == "gone":
                self._lost(s)
            else:
                return  # HWM reached: keep the rest for the next loop turn
        if s.identity is None:
            return
        # Droppable updates: only the latest per job, only when nothing more important is waiting, and
        # PROGRESS at most every PROGRESS_INTERVAL per job (the rest is superseded, never queued).
        now = time.monotonic()
        for pending, min_gap in ((s.progress, PROGRESS_INTERVAL), (s.previews, 0.0)):
            for jid in list(pending):
                if min_gap and now - s.last_progress.get(jid, 0.0) < min_gap:
                    continue
                frames = pending.pop(jid)
                if min_gap:
                    s.last_progress[jid] = now
                if s.identity is not None and self._try_send(s.identity, frames) == "gone":
                    self._lost(s)

    def _lost(self, s: Session) -> None:
        # Its connection is gone; the session (and its jobs) wait for a re-HELLO until heartbeats expire.
        if s.identity is not None:
            self.by_identity.pop(s.identity, None)
            s.identity = None

    def _try_send(self, identity: bytes, frames: list) -> str:
        try:
            self._router.send_multipart([identity, *frames], zmq.NOBLOCK, copy=copy_frames(frames))
            return "ok"
        except zmq.Again:
            return "again"
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH or exc.errno == zmq.EHOSTUNREACH:
                return "gone"
            raise


def max_frame_bytes(limits: Limits) -> int:
    """ZMQ_MAXMSGSIZE: the largest frame a legal client message has.

    libzmq applies MAXMSGSIZE to each frame, not to the multipart message (checked: 10 frames of 900
    bytes pass a 1000-byte cap). A client message is [magic][header ≤ max_header_bytes][image][mask], so
    the biggest frame is the header or the biggest image the limits allow: max_pixels × 4 channels × 4
    bytes (f32), capped by max_blob_bytes (the mask, 1 byte per pixel, is smaller). The frame count is
    only checked by the decoder once libzmq has the whole message (see PROTOCOL.md §2)."""
    largest_image = min(limits.max_blob_bytes, limits.max_pixels * 4 * max(DTYPE_SIZES.values()))
    return max(limits.max_header_bytes, largest_image, len(MAGIC))


def _refuse_non_socket(path: Path) -> None:
    """An ipc path may name nothing or a socket; anything else (a typo in --endpoint or PULSE_ENDPOINT
    pointing at a document, a directory, a symlink) is refused, never replaced."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise PulseError(f"cannot use {path} as the daemon's socket: {exc.strerror}", "BAD_ENDPOINT") from None
    if not stat.S_ISSOCK(st.st_mode):
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "a symlink" if stat.S_ISLNK(st.st_mode) else "a file"
        raise PulseError(f"{path} exists and is not a socket ({what}); it is left untouched: choose another ipc path "
                         f"for --endpoint / PULSE_ENDPOINT", "BAD_ENDPOINT")


def _remove_stale_socket(path: Path, *, locked: bool) -> None:
    """Unlink the socket a crashed daemon left behind: only a socket, and only while we hold the daemon
    lock. This must run before the bind: libzmq's ipc bind unlinks whatever file is at the path."""
    _refuse_non_socket(path)  # re-checked: the path may have changed since _check_endpoint
    if not os.path.lexists(path):
        return
    if not locked:
        raise PulseError(f"{path} exists and this process does not hold the daemon lock; not replacing it",
                         "ENDPOINT_IN_USE")
    if _socket_answers(path):  # e.g. a daemon of another runtime dir (another lock) listens there
        raise PulseError(f"{path} is in use: another process listens on it; stop it or choose another ipc path",
                         "ENDPOINT_IN_USE")
    path.unlink()


def _socket_answers(path: Path) -> bool:
    import socket

    if not hasattr(socket, "AF_UNIX"):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:  # ECONNREFUSED: nobody listens, the file is stale
            return False
    return True


def _throttled_level(recent: deque[float], most: int = 10, window: float = 10.0) -> int:
    """WARNING for the first `most` events in `window` seconds, DEBUG for the rest: a flood of bad
    messages or refused handshakes must not flood the log. `recent` holds the events' times."""
    now = time.monotonic()
    while recent and now - recent[0] > window:
        recent.popleft()
    recent.append(now)
    return logging.WARNING if len(recent) <= most else logging.DEBUG


def _remaining(job: Job, now: float) -> float | None:
    """Seconds a job the worker has taken still needs: its latest time left, else its estimate less the time it has
    run; None when neither is known. A job still loading its model counts its whole estimate (the load not known)."""
    if job.eta_s > 0:
        return max(0.0, job.eta_s - (now - job.eta_at))
    if job.estimate_s <= 0:
        return None
    if job.started is None:
        return job.estimate_s
    return max(0.0, job.estimate_s - (now - job.started))


def _input_bytes(job: Job) -> int:
    return sum(b.nbytes for b in (job.image, job.mask) if b is not None)


def _check_mask(msg: Submit) -> None:
    m = msg.mask
    if m is None:
        return
    if m.channels != 1 or m.dtype != "u8":
        raise PulseError("the mask must be 1 channel u8 (0 = not selected, 255 = selected)", "BAD_MASK")
    if (m.width, m.height) != (msg.image.width, msg.image.height):
        raise PulseError(f"mask is {m.width}x{m.height} but the image is {msg.image.width}x{msg.image.height}", "BAD_MASK")


def run_daemon(config: DaemonConfig) -> int:
    return Daemon(config).serve()


__all__ = ["Daemon", "DaemonConfig", "run_daemon"]
