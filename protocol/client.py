"""PulseClient: the one client of the daemon (GIMP, Krita, `pulse --via-daemon`, `pulse-server status|stop`).

A DEALER socket, used from one thread (plug-ins call it from a worker thread, never the UI thread).
Blocking calls with timeouts; while a job runs the client answers the daemon's PINGs and sends its own,
and if the daemon falls silent it reconnects, says HELLO with the same session id and re-sends the
(idempotent) SUBMIT, which either resumes the job, re-sends its kept result, or starts it again on a
restarted daemon.

    with PulseClient() as c:
        c.connect()
        res = c.run_job(ImageBlob(...), None, JobSettings(candidates=3),
                        on_progress=lambda p: print(p.step, p.total))

A job's settings are checked against the daemon's contract (WELCOME `params`: job.spec_from_wire) before they
are sent: a request the daemon would refuse raises ParamError (BAD_PARAMS) here, without a round trip.
"""

from __future__ import annotations

import os
import secrets
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import zmq

from . import endpoint as ep
from .auth import PLAIN_USERNAME, ZAP_DOMAIN, curve_client_keys, plain_password, token_fits  # noqa: F401 - re-exported
from .codec import DEFAULT_LIMITS, Limits, copy_frames, decode, encode
from .errors import DaemonNotRunning, ErrorCode, JobCancelled, JobFailed, ProtocolError, VersionMismatch
from .job import MAX_REGION_SIDE, JobSettings, Param, spec_from_wire
from .messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SERVER_TYPES,
    Accepted,
    Bye,
    Cancel,
    Error,
    Failed,
    Fetch,
    Hello,
    ImageBlob,
    JobState,
    Message,
    Ok,
    Ping,
    Pong,
    Preview,
    Progress,
    Result,
    Shutdown,
    Status,
    StatusReply,
    Submit,
    Welcome,
)

POLL_MS = 100  # granularity of should_cancel() checks and heartbeats
# tcp peers authenticate during the ZMTP handshake (the daemon's ZAP handler, see auth.py).
_AUTH_OK = getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0)  # libzmq >= 4.3 (Debian 11+); 0: not reported
_AUTH_FAILED = getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", 0)
_PROTOCOL_FAILED = getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0)  # e.g. PLAIN client, CURVE daemon: final
_HANDSHAKE_FAILED = _PROTOCOL_FAILED | getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0)
_JOB_EVENTS = (Accepted, JobState, Progress, Preview, Result, Failed)


class _Lost(Exception):
    """The daemon stopped answering (or forgot our session): reconnect and re-submit."""


class PulseClient:
    def __init__(self, endpoint: str | None = None, *, token: str | None = None, client_name: str = "cli",
                 client_version: str = "0", timeout: float = 10.0, server_key: str | None = None,
                 limits: Limits = DEFAULT_LIMITS) -> None:
        self.endpoint = endpoint or ep.default_endpoint()
        self.timeout = float(timeout)
        self.client_name = client_name
        self.client_version = client_version
        self.limits = limits
        self.session = secrets.token_hex(16)  # secret: lets a reconnect find this client's jobs again
        self.welcome: Welcome | None = None
        self._token = token
        self._server_key = server_key or os.environ.get("PULSE_SERVER_KEY")
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._stash: deque[Message] = deque()  # job events that arrived while waiting for another reply
        self._submits: dict[str, Submit] = {}  # unfinished jobs, re-sent after a reconnect
        self._last_recv = 0.0
        self._last_send = 0.0
        self._spec: tuple[Welcome | None, dict[str, Param]] | None = None

    # ---- context manager --------------------------------------------------------------------------

    def __enter__(self) -> PulseClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def heartbeat(self) -> float:
        return (self.welcome.heartbeat_ms if self.welcome else 1000) / 1000.0

    @property
    def spec(self) -> dict[str, Param]:
        """The job contract as the connected daemon applies it (its WELCOME `params`); the declared one before."""
        if self._spec is None or self._spec[0] is not self.welcome:
            self._spec = (self.welcome, spec_from_wire(self.welcome.params if self.welcome else None))
        return self._spec[1]

    # ---- connection -------------------------------------------------------------------------------

    def connect(self) -> Welcome:
        """Open the socket and shake hands. DaemonNotRunning if nobody listens; VersionMismatch; BAD_TOKEN."""
        self._close_socket()
        path = ep.ipc_path(self.endpoint)
        if path is not None and not path.exists():
            raise DaemonNotRunning()
        deadline = time.monotonic() + self.timeout  # the whole call, socket and handshake, within the timeout
        if not self._open_socket(wait=min(self.timeout, 3.0), verdict_by=deadline):
            self._close_socket()
            raise DaemonNotRunning()
        try:
            return self._hello(max(0.0, deadline - time.monotonic()))
        except ProtocolError as exc:
            if exc.code != ErrorCode.TIMEOUT:
                raise
            raise DaemonNotRunning(f"no answer from {self.endpoint} within {self.timeout:g} s — is `pulse-server run` "
                                   "running there (and, for a remote daemon, is PULSE_SERVER_KEY right)?") from None

    def _token_value(self) -> str | None:
        return self._token if self._token is not None else ep.read_token()

    def _token_source(self) -> str:
        if self._token is not None:
            return "the token given to the client"
        if os.environ.get("PULSE_TOKEN"):
            return "PULSE_TOKEN"
        path = ep.token_path()
        return f"the token file {path}" if path.exists() else f"no token (the daemon writes it to {path})"

    def _bad_token(self) -> ProtocolError:
        return ProtocolError(
            f"the daemon at {self.endpoint} refused this client's token ({self._token_source()}): use the token "
            f"the daemon uses — its file {ep.token_path()} (the daemon's user and runtime dir) or PULSE_TOKEN",
            ErrorCode.BAD_TOKEN)

    def _cannot_talk(self) -> ProtocolError:
        if self._server_key:
            hint = ("PULSE_SERVER_KEY is set, so this client speaks CURVE, which only a daemon started with "
                    "--allow-remote does: unset it for a local daemon")
        else:
            hint = ("a remote daemon (started with --allow-remote) speaks CURVE: set PULSE_SERVER_KEY to its public "
                    "key (its curve.public file, also in its log)")
        return ProtocolError(f"a daemon listens on {self.endpoint} but refused this client's handshake: {hint}",
                             ErrorCode.HANDSHAKE_FAILED)

    def _set_credentials(self, s: zmq.Socket) -> bool:
        """tcp: credentials checked by the daemon's ZAP handler at the handshake. True if they are."""
        if not ep.is_tcp(self.endpoint):
            return False  # ipc: the socket file's permissions authenticate
        token = self._token_value() or ""
        if token and not token_fits(token):
            raise ProtocolError("the token is longer than 255 bytes (ZMQ PLAIN's limit)", ErrorCode.BAD_TOKEN)
        if self._server_key:
            public, secret = curve_client_keys(token) if token else zmq.curve_keypair()
            s.curve_serverkey = self._server_key.encode("ascii")
            s.curve_publickey = public
            s.curve_secretkey = secret
        else:
            s.plain_username = PLAIN_USERNAME
            s.plain_password = plain_password(token)
        return True

    def _open_socket(self, wait: float, verdict_by: float | None = None) -> bool:
        """Connect a DEALER; True once a connection to a listener exists (within `wait` seconds) and, on tcp,
        its handshake passed (or no verdict came by the monotonic time `verdict_by`, default: `wait`).

        Not ZMQ_IMMEDIATE: with it, libzmq discards messages already received but not yet read when the
        connection drops, and the daemon's last FAILED(SHUTDOWN) would be lost. A socket monitor tells
        instead whether anybody listens.
        """
        if self._ctx is None:
            self._ctx = zmq.Context()
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.MAXMSGSIZE, self.limits.max_blob_bytes + (1 << 20))
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        try:
            secure = self._set_credentials(s) and bool(_AUTH_OK and _AUTH_FAILED)
        except BaseException:
            s.close(0)
            raise
        monitor = s.get_monitor_socket(zmq.EVENT_CONNECTED | _AUTH_OK | _AUTH_FAILED | _HANDSHAKE_FAILED)
        try:
            s.connect(self.endpoint)
            self._sock = s
            return self._await_handshake(monitor, wait, secure, verdict_by)
        finally:
            if not s.closed:  # closed on BAD_TOKEN
                s.disable_monitor()
            monitor.close(0)

    def _await_handshake(self, monitor: zmq.Socket, wait: float, secure: bool, verdict_by: float | None) -> bool:
        """True once connected (ipc) or once the handshake passed (tcp); BAD_TOKEN if the daemon's ZAP
        handler refused our credentials — libzmq itself would just retry silently forever.

        Nobody listening shows within `wait`; once somebody does, a loaded daemon may take longer to judge
        the handshake, and its verdict is awaited until `verdict_by` (a BAD_TOKEN seen after the HELLO was
        sent would pass unnoticed: the monitor is closed by then)."""
        from zmq.utils.monitor import recv_monitor_message

        deadline = time.monotonic() + wait
        connected = failed = False
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not monitor.poll(max(1, int(remaining * 1000))):
                if failed:  # every handshake until now failed, none passed
                    self._close_socket()
                    raise self._cannot_talk()
                return connected  # connected but no verdict yet: HELLO's own timeout decides
            event = recv_monitor_message(monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                connected = True
                if not secure:
                    return True
                if verdict_by is not None:
                    deadline = max(deadline, verdict_by)
            elif event == _AUTH_OK:
                return True
            elif event == _AUTH_FAILED:
                self._close_socket()
                raise self._bad_token()
            elif _PROTOCOL_FAILED and event == _PROTOCOL_FAILED:
                # Somebody listens but speaks another security mechanism (a CURVE daemon and no PULSE_SERVER_KEY
                # here, or the reverse); libzmq drops the connection for good and never retries.
                self._close_socket()
                raise self._cannot_talk()
            elif event & _HANDSHAKE_FAILED:
                # No detail: the daemon closed the connection mid-handshake (it refuses our mechanism, or was
                # stopping). libzmq retries; the next attempt may pass, or fail with a reason.
                failed = True

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(0)
            self._sock = None
        self.welcome = None

    def _hello(self, timeout: float | None = None) -> Welcome:
        """HELLO and its answer, both within `timeout` (default: the client's)."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        self._send(Hello(PROTOCOL_VERSION, MIN_PROTOCOL_VERSION, self.client_name, self.client_version,
                         self._token_value(), self.session), max(0.0, deadline - time.monotonic()))
        reply = self._wait(lambda m: isinstance(m, (Welcome, Error)) and not _is_job_error(m),
                           max(0.0, deadline - time.monotonic()), "WELCOME")
        if isinstance(reply, Error):
            self._close_socket()
            if reply.code == ErrorCode.VERSION_MISMATCH:
                raise VersionMismatch(_version_advice(reply), reply.supported)
            raise ProtocolError(reply.message, reply.code, retryable=reply.retryable)
        self.welcome = cast(Welcome, reply)  # the predicate above: a WELCOME or an ERROR
        return self.welcome

    def _ensure(self) -> None:
        """Connected, with a session the daemon has not expired for silence."""
        if self._sock is None or self.welcome is None:
            self.connect()
        elif time.monotonic() - max(self._last_recv, self._last_send) > 2 * self.heartbeat:
            self._hello()  # idle for a while: the daemon may have dropped the session; HELLO is cheap

    def close(self) -> None:
        if self._sock is not None and self.welcome is not None:
            try:
                self._sock.send_multipart(encode(Bye()), zmq.NOBLOCK)
                self._sock.setsockopt(zmq.LINGER, 200)
            except zmq.ZMQError:
                pass
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self.welcome = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None

    # ---- low level --------------------------------------------------------------------------------

    def _socket(self) -> zmq.Socket:
        """The connected socket; only the request paths below call this, each after `_ensure()`/`connect()`."""
        if self._sock is None:
            raise ProtocolError("not connected to the daemon", ErrorCode.DAEMON_NOT_RUNNING, retryable=True)
        return self._sock

    def _send(self, msg: Message, timeout: float | None = None) -> None:
        """Send within `timeout` (default: the client's) or raise TIMEOUT.

        Never a blocking send: libzmq may drop the connection between a poll that says "writable" and the
        send (a failed handshake removes a DEALER's only pipe for good), and a blocking send would then wait
        for a pipe forever — an editor's plug-in frozen. Non-blocking tries, with polls in between, instead.
        """
        frames = encode(msg, self.limits)
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            try:
                self._socket().send_multipart(frames, zmq.NOBLOCK, copy=copy_frames(frames))
                break
            except zmq.Again:  # at the high-water mark, or no connection (yet)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ProtocolError(f"cannot send to the daemon within {limit:g} s", ErrorCode.TIMEOUT, retryable=True) from None
                self._socket().poll(max(1, min(POLL_MS, int(remaining * 1000))), zmq.POLLOUT)
        self._last_send = time.monotonic()

    def _send_nowait(self, msg: Message) -> None:
        """Best effort (heartbeats): silently skipped while no connection is up."""
        try:
            self._socket().send_multipart(encode(msg, self.limits), zmq.NOBLOCK)
            self._last_send = time.monotonic()
        except zmq.Again:  # at the high-water mark: a heartbeat can be skipped
            pass

    def _recv(self, timeout: float) -> Message | None:
        """One message (PINGs answered here), or None after `timeout` seconds."""
        if not self._socket().poll(int(max(0.0, timeout) * 1000), zmq.POLLIN):
            return None
        frames = self._socket().recv_multipart(copy=False)
        self._last_recv = time.monotonic()
        try:
            msg = decode(frames, self.limits, allowed=SERVER_TYPES)
        except ProtocolError as exc:
            if exc.code == ErrorCode.UNKNOWN_TYPE:  # a newer daemon's extra message: not for us
                return None
            raise
        if isinstance(msg, Ping):
            self._send_nowait(Pong(msg.t))
        return msg

    def _wait(self, accept: Callable[[Message], bool], timeout: float, what: str) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ProtocolError(f"the daemon did not answer ({what}) within {timeout:g} s", ErrorCode.TIMEOUT, retryable=True)
            msg = self._recv(remaining)
            if msg is None or isinstance(msg, (Ping, Pong)):
                continue
            if accept(msg):
                return msg
            if isinstance(msg, _JOB_EVENTS) or _is_job_error(msg):
                self._stash.append(msg)

    def _request(self, msg: Message, accept: Callable[[Message], bool], what: str) -> Message:
        self._ensure()
        for attempt in range(2):
            self._send(msg)
            reply = self._wait(lambda m: accept(m) or (isinstance(m, Error) and not _is_job_error(m)), self.timeout, what)
            if isinstance(reply, Error):
                if reply.code == ErrorCode.HANDSHAKE_REQUIRED and attempt == 0:
                    self._hello()
                    continue
                raise ProtocolError(reply.message, reply.code, retryable=reply.retryable)
            return reply
        raise ProtocolError("the daemon keeps forgetting this session", ErrorCode.HANDSHAKE_REQUIRED)

    # ---- jobs -------------------------------------------------------------------------------------

    def submit(self, image: ImageBlob, mask: ImageBlob | None = None,
               settings: JobSettings | Mapping[str, Any] | None = None, *, job_id: str | None = None,
               preview_interval: float = 0.0) -> Accepted:
        """Queue a job; returns ACCEPTED (job id, queue position) or raises JobFailed (QUEUE_FULL, NO_MOSAIC...).

        `settings`: a JobSettings (a plain params map is still taken: missing keys take the daemon's defaults).
        ParamError (BAD_PARAMS) or TOO_LARGE, before anything is sent, for what the daemon would refuse."""
        job_id = job_id or uuid.uuid4().hex
        self._ensure()
        params = self.checked(settings).to_wire()
        self._check_size(image)
        msg = Submit(job_id, image, mask, params, float(preview_interval))
        reply = self._request(msg, lambda m: isinstance(m, (Accepted, Failed, Result, Error)) and m.job_id == job_id,
                              "ACCEPTED")
        if isinstance(reply, (Failed, Error)):  # an ERROR naming the job (e.g. a bad job id) refuses it too
            raise _job_error(_failure(reply))
        self._submits[job_id] = msg
        if isinstance(reply, Result):  # an idempotent re-submit of a finished job: keep it for events()
            self._stash.appendleft(reply)
            return Accepted(job_id, 0, "done")
        return cast(Accepted, reply)

    def checked(self, settings: JobSettings | Mapping[str, Any] | None) -> JobSettings:
        """`settings` checked against the connected daemon's contract (ParamError names the first bad one)."""
        if isinstance(settings, JobSettings):
            return settings.checked(self.spec)
        return JobSettings.from_wire(settings or {}, self.spec)

    def _check_size(self, image: ImageBlob) -> None:
        """Refuse locally what the daemon would refuse (WELCOME limits), before sending up to a GiB."""
        lim = (self.welcome.limits if self.welcome else None) or {}
        side = min(lim.get("max_side") or MAX_REGION_SIDE, lim.get("max_region_side") or MAX_REGION_SIDE)
        pixels, nbytes = lim.get("max_pixels"), lim.get("max_blob_bytes")
        w, h = image.width, image.height
        if (side and max(w, h) > side) or (pixels and w * h > pixels) or (nbytes and image.expected_nbytes > nbytes):
            raise ProtocolError(f"the region is {w}x{h} pixels, more than the daemon accepts "
                                f"({side} px per side, {pixels} pixels); select a smaller area", ErrorCode.TOO_LARGE)

    def events(self, job_id: str, *, idle_timeout: float | None = None) -> Iterator[Message | None]:
        """This job's events until (and including) RESULT or FAILED; None every POLL_MS while nothing happens.

        Heartbeats are sent while waiting; a silent daemon triggers a reconnect and an idempotent re-submit.
        """
        # The daemon PINGs every heartbeat while we have a job: a few missed ones mean it is gone.
        silent_limit = idle_timeout if idle_timeout is not None else max(2.0, 4 * self.heartbeat)
        lost_since: float | None = None
        while True:
            try:
                msg = self._next_event(job_id, silent_limit)
                lost_since = None
            except _Lost:
                lost_since = lost_since or time.monotonic()
                if time.monotonic() - lost_since > self.timeout:
                    self._submits.pop(job_id, None)
                    raise DaemonNotRunning("the daemon stopped answering — is `pulse-server run` still running?") from None
                self._resume(job_id)
                continue
            yield msg
            if isinstance(msg, (Result, Failed)):
                self._submits.pop(job_id, None)
                return

    def _next_event(self, job_id: str, silent_limit: float) -> Message | None:
        for i, m in enumerate(self._stash):
            if getattr(m, "job_id", None) == job_id:
                del self._stash[i]
                return _as_event(m)
        if self._sock is None:
            raise _Lost()
        # Receive first: a daemon that sent FAILED(SHUTDOWN) and closed must still be heard.
        msg = self._recv(POLL_MS / 1000.0)
        if msg is None:
            now = time.monotonic()
            if now - self._last_recv > silent_limit:
                raise _Lost()
            if now - self._last_send >= self.heartbeat:
                self._send_nowait(Ping(time.time()))
            return None
        if isinstance(msg, (Ping, Pong, Ok, Welcome, StatusReply)):
            return None
        if isinstance(msg, Error):
            if msg.code == ErrorCode.HANDSHAKE_REQUIRED:
                raise _Lost()
            if msg.job_id not in (None, job_id):
                return None
            return _as_event(msg)
        if getattr(msg, "job_id", None) != job_id:
            self._stash.append(msg)  # another job's event (several jobs in flight)
            return None
        return msg

    def _resume(self, job_id: str) -> None:
        """Reconnect, HELLO with the same session, re-send the SUBMIT (idempotent on the daemon)."""
        try:
            self.connect()
            msg = self._submits.get(job_id)
            if msg is not None:
                self._send(msg)
            else:
                self._send(Fetch(job_id))
        except DaemonNotRunning:
            time.sleep(min(0.5, self.timeout / 10))
        except ProtocolError as exc:
            if exc.code != ErrorCode.TIMEOUT:
                raise

    def run_job(self, image: ImageBlob, mask: ImageBlob | None, settings: JobSettings | Mapping[str, Any] | None, *,
                on_progress: Callable[[Progress], None] | None = None, should_cancel: Callable[[], bool] | None = None,
                on_preview: Callable[[bytes], None] | None = None, job_id: str | None = None,
                on_state: Callable[[str], None] | None = None, preview_interval: float = 0.5,
                on_accepted: Callable[[Accepted], None] | None = None,
                on_job_state: Callable[[JobState], None] | None = None) -> Result:
        """Submit and wait: RESULT, or JobFailed / JobCancelled (should_cancel() True sends CANCEL).

        `on_accepted` gets the daemon's ACCEPTED (queue position, `estimate_s`, `wait_s`) before the job runs.
        `on_state` gets each state's name; `on_job_state` each whole JOB_STATE, with its `message` and, once a
        depixelate job's mosaic is analysed, its `analysis` (block, cells, confidence, detected)."""
        accepted = self.submit(image, mask, settings, job_id=job_id,
                               preview_interval=preview_interval if on_preview else 0.0)
        job_id = accepted.job_id
        if on_accepted is not None:
            on_accepted(accepted)
        if on_state is not None:
            on_state(accepted.state)
        cancel_sent = False
        for ev in self.events(job_id):
            if should_cancel is not None and not cancel_sent and should_cancel():
                self._send(Cancel(job_id))
                cancel_sent = True
            if ev is None:
                continue
            if isinstance(ev, Progress) and on_progress is not None:
                on_progress(ev)
            elif isinstance(ev, Preview) and on_preview is not None:
                on_preview(bytes(ev.image.data))
            elif isinstance(ev, (JobState, Accepted)):
                if on_state is not None:
                    on_state(ev.state)
                if isinstance(ev, JobState) and on_job_state is not None:
                    on_job_state(ev)
            elif isinstance(ev, Result):
                if cancel_sent:
                    raise JobCancelled("job cancelled", job_id)
                return ev
            elif isinstance(ev, Failed):
                raise _job_error(ev)
        raise ProtocolError("job ended without a result", ErrorCode.INTERNAL)  # pragma: no cover

    def cancel(self, job_id: str) -> None:
        """Cancel a queued or running job (idempotent; unknown or finished jobs are fine)."""
        self._request(Cancel(job_id), lambda m: isinstance(m, Ok) and m.request == "CANCEL", "OK")

    def cancel_nowait(self, job_id: str) -> None:
        """Send CANCEL without waiting for its answer: for a process about to exit (Ctrl-C), which must not
        wait on a slow daemon. Best effort; it leaves during close()'s short linger."""
        if self._sock is None or self.welcome is None:
            return
        try:
            self._send_nowait(Cancel(job_id))
        except zmq.ZMQError:
            pass

    def status(self) -> StatusReply:
        return cast(StatusReply, self._request(Status(), lambda m: isinstance(m, StatusReply), "STATUS_REPLY"))

    def fetch(self, job_id: str) -> Result:
        """A finished job's result again (kept a while by the daemon); JobFailed(NOT_FOUND) if gone."""
        reply = self._request(Fetch(job_id), lambda m: isinstance(m, (Result, Failed, JobState)) and m.job_id == job_id, "RESULT")
        if isinstance(reply, Failed):
            raise _job_error(reply)
        if isinstance(reply, JobState):
            raise ProtocolError(f"job {job_id} is still {reply.state}", ErrorCode.NOT_READY, retryable=True)
        return cast(Result, reply)

    def shutdown(self) -> None:
        """Ask the daemon to stop gracefully (running job cancelled, socket and lock removed)."""
        self._request(Shutdown(), lambda m: isinstance(m, Ok) and m.request == "SHUTDOWN", "OK")


def _is_job_error(m: Message) -> bool:
    return isinstance(m, Error) and m.job_id is not None


def _as_event(m: Message) -> Message:
    return _failure(m) if isinstance(m, Error) else m


def _failure(m: Failed | Error) -> Failed:
    """An ERROR about our job (e.g. BAD_FIELD) ends it like FAILED."""
    return m if isinstance(m, Failed) else Failed(m.job_id or "", m.code, m.message, m.retryable)


def _version_advice(reply: Error) -> str:
    """VERSION_MISMATCH in words: which side is older, and what to update."""
    theirs = sorted(v for v in (reply.supported or []) if isinstance(v, int))
    if theirs and max(theirs) < MIN_PROTOCOL_VERSION:
        what = "the daemon is older than this plug-in: update pulse-server (and restart it)"
    else:
        what = "update the plug-in: `pulse-server install-plugin gimp` or `pulse-server install-plugin krita`"
    spoken = "/".join(map(str, theirs)) or "?"
    return (f"this client speaks protocol {PROTOCOL_VERSION}, the daemon speaks {spoken}; {what} "
            f"(the daemon said: {reply.message})")


def _job_error(f: Failed) -> JobFailed:
    if f.code == ErrorCode.CANCELLED:
        return JobCancelled(f.message, f.job_id)
    return JobFailed(f.message, f.code, f.retryable, f.job_id)
