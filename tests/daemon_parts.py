"""The daemon's parts wired in-process over a real ipc socket, for tests of one part at a time.

    t = bound_transport()                 # a Transport bound to a fresh ipc path
    peer = connect(t)                     # a DEALER connected to it (the client side)
    frames = receive_one(t)               # [identity, *frames] the daemon's side got
    msg = read(peer)                      # a decoded message the client side got
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import zmq

from protocol.codec import DEFAULT_LIMITS, Limits, decode, encode
from protocol.messages import Message
from pulse_server.daemon.transport import Transport

_DIRS: list[str] = []


def bound_transport(limits: Limits = DEFAULT_LIMITS) -> Transport:
    folder = tempfile.mkdtemp(prefix="pd-", dir="/tmp")  # short: ipc paths are limited to ~100 bytes
    _DIRS.append(folder)
    t = Transport(limits)
    t.bind(f"ipc://{Path(folder) / 'd.sock'}", locked=True)
    return t


def close(t: Transport, *peers: zmq.Socket) -> None:
    for p in peers:
        p.close(0)
    t.close_sockets(linger_ms=0)
    t.terminate()
    while _DIRS:
        shutil.rmtree(_DIRS.pop(), ignore_errors=True)


def connect(t: Transport, **sockopts: int) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    for name, value in sockopts.items():
        s.setsockopt(getattr(zmq, name), value)
    s.connect(t.bound_endpoint)
    return s


def say(peer: zmq.Socket, msg: Message) -> None:
    peer.send_multipart(encode(msg))


def receive_one(t: Transport, timeout: float = 5.0) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if t.router.poll(50):
            return t.router.recv_multipart(copy=False)
    raise AssertionError("the daemon's socket received nothing")


def read(peer: zmq.Socket, timeout: float = 5.0) -> Message:
    if not peer.poll(int(timeout * 1000)):
        raise AssertionError("the client received nothing")
    return decode(peer.recv_multipart(), DEFAULT_LIMITS)


def read_all(peer: zmq.Socket, settle: float = 0.2) -> list[Message]:
    out = []
    while peer.poll(int(settle * 1000)):
        out.append(decode(peer.recv_multipart(), DEFAULT_LIMITS))
    return out
