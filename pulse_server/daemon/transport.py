"""The daemon's sockets: one ROUTER for every client and an inproc PAIR that wakes the loop.

Only the loop's thread touches the ROUTER. Worker threads call `wake()` (thread-safe) after queueing an
event, so the loop never blocks on a solve and a solve never waits on a slow client. Every send is
non-blocking: `send` says "ok", "again" (the peer's pipe is at SNDHWM: try later, or drop an update) or
"gone" (the peer disconnected: ROUTER_MANDATORY makes that an error instead of a silent drop).
"""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import zmq

from protocol import endpoint as ep
from protocol.codec import MAGIC, Limits, copy_frames
from protocol.messages import DTYPE_SIZES

from ..errors import PulseError
from .endpoint import prepare_ipc_path

SNDHWM = 100  # messages per client pipe before sends fail with EAGAIN (updates dropped, results wait)
RCVHWM = 1000
RECV_BATCH = 256  # messages read per loop turn, so worker events and heartbeats still get their turn

Secure = Callable[[zmq.Context, zmq.Socket], None]  # sets a tcp socket's security up before its bind


class Transport:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.ctx: zmq.Context | None = None
        self.router: zmq.Socket | None = None
        self.wake_recv: zmq.Socket | None = None
        self._wake_send: zmq.Socket | None = None
        self._wake_lock = threading.Lock()
        self._ipc_file: Path | None = None
        self.bound_endpoint = ""

    @property
    def open(self) -> bool:
        return self.router is not None

    def bind(self, endpoint: str, *, locked: bool, secure: Secure | None = None) -> str:
        """Bind the ROUTER (PulseError BIND_FAILED) and the wake-up pair; returns the endpoint bound (a tcp
        port 0 / "*" resolved). `secure(ctx, router)` runs for tcp, before the bind."""
        path = ep.ipc_path(endpoint)
        if path is not None:  # before any zmq socket exists: a refusal here must not leave one open
            prepare_ipc_path(path, locked=locked)
        self.ctx = zmq.Context()
        r = self.ctx.socket(zmq.ROUTER)
        try:
            r.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable sends raise instead of vanishing
            r.setsockopt(zmq.LINGER, 0)
            r.setsockopt(zmq.SNDHWM, SNDHWM)
            r.setsockopt(zmq.RCVHWM, RCVHWM)
            r.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes(self.limits))  # libzmq drops a peer sending a bigger frame
            if ep.is_tcp(endpoint) and secure is not None:
                secure(self.ctx, r)
            try:
                r.bind(endpoint)
            except zmq.ZMQError as exc:
                raise PulseError(f"cannot listen on {endpoint}: {exc}", "BIND_FAILED") from exc
        except BaseException:
            r.close(0)  # an open socket would make Context.term() in close() wait forever
            raise
        self.bound_endpoint = r.getsockopt_string(zmq.LAST_ENDPOINT) or endpoint
        if path is not None:
            self._ipc_file = path
            if os.name == "posix":
                os.chmod(path, 0o600)
        self.router = r
        self.wake_recv = self.ctx.socket(zmq.PAIR)
        self.wake_recv.bind(f"inproc://pulse-wake-{id(self)}")
        self._wake_send = self.ctx.socket(zmq.PAIR)
        self._wake_send.connect(f"inproc://pulse-wake-{id(self)}")
        return self.bound_endpoint

    def receive(self) -> Iterator[list[zmq.Frame]]:
        """The messages waiting now ([identity, *frames]), at most RECV_BATCH of them."""
        router = _bound(self.router)
        for _ in range(RECV_BATCH):
            try:
                yield router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return

    def send(self, identity: bytes, frames: list) -> str:
        """"ok", "again" (at the peer's high-water mark) or "gone" (the peer disconnected)."""
        router = _bound(self.router)
        try:
            router.send_multipart([identity, *frames], zmq.NOBLOCK, copy=copy_frames(frames))
            return "ok"
        except zmq.Again:
            return "again"
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH or exc.errno == zmq.EHOSTUNREACH:
                return "gone"
            raise

    def wake(self) -> None:
        """Any thread: make the loop's poll return now."""
        with self._wake_lock:
            if self._wake_send is not None:
                try:
                    self._wake_send.send(b"", zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the loop polls at least every 100 ms anyway

    def clear_wake(self) -> None:
        wake_recv = _bound(self.wake_recv)
        while True:
            try:
                wake_recv.recv(zmq.NOBLOCK)
            except zmq.Again:
                return

    def close_sockets(self, linger_ms: int = 500) -> None:
        """Close the ROUTER (`linger_ms` for the last messages to leave) and the wake-up pair."""
        if self.router is not None:
            self.router.close(linger=linger_ms)
            with self._wake_lock:  # a worker still finishing must not touch a closed socket
                _bound(self._wake_send).close(0)
                self._wake_send = None
            _bound(self.wake_recv).close(0)

    def terminate(self) -> None:
        """End the context (every socket on it closed first) and remove the ipc socket file."""
        if self.ctx is not None:
            self.ctx.term()
        if self._ipc_file is not None:
            try:
                self._ipc_file.unlink()
            except FileNotFoundError:
                pass


def _bound(sock: zmq.Socket | None) -> zmq.Socket:
    """One of the sockets bind() opens (all of them, or none yet)."""
    if sock is None:
        raise RuntimeError("the daemon's transport is not bound: bind() opens its sockets")
    return sock


def max_frame_bytes(limits: Limits) -> int:
    """ZMQ_MAXMSGSIZE: the largest frame a legal client message has.

    libzmq applies MAXMSGSIZE to each frame, not to the multipart message (checked: 10 frames of 900
    bytes pass a 1000-byte cap). A client message is [magic][header ≤ max_header_bytes][image][mask], so
    the biggest frame is the header or the biggest image the limits allow: max_pixels × 4 channels × 4
    bytes (f32), capped by max_blob_bytes (the mask, 1 byte per pixel, is smaller). The frame count is
    only checked by the decoder once libzmq has the whole message (see PROTOCOL.md §2)."""
    largest_image = min(limits.max_blob_bytes, limits.max_pixels * 4 * max(DTYPE_SIZES.values()))
    return max(limits.max_header_bytes, largest_image, len(MAGIC))
