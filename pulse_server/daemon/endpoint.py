"""Checks on the endpoint before the daemon binds it: the scheme, the ipc path, a remote tcp address, and the
socket file a crashed daemon left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from protocol import endpoint as ep

from .. import paths
from ..errors import PulseError


def check_endpoint(endpoint: str, *, allow_remote: bool) -> None:
    """Refuse (PulseError) an endpoint the daemon must not bind; runs before the daemon lock is taken."""
    if not endpoint.startswith(("ipc://", "tcp://")):
        raise PulseError(f"unsupported endpoint {endpoint!r}: use ipc://PATH or tcp://HOST:PORT", "BAD_ENDPOINT")
    path = ep.ipc_path(endpoint)
    if path is not None and len(str(path).encode()) > ep.MAX_IPC_PATH:
        raise PulseError(f"ipc path {path} is longer than the OS allows ({ep.MAX_IPC_PATH} bytes); set PULSE_RUNTIME_DIR to a shorter directory", "BAD_ENDPOINT")
    if path is not None:
        refuse_non_socket(path)  # before taking the lock: a typo must not even look like a daemon
    if ep.is_tcp(endpoint) and not ep.is_loopback(endpoint) and not allow_remote:
        raise PulseError(
            f"{endpoint} is reachable from other machines; pass --allow-remote to bind it (CURVE encryption and the token are then required)",
            "REMOTE_BIND",
        )


def prepare_ipc_path(path: Path, *, locked: bool) -> None:
    """The socket's folder exists (the runtime dir 0700, owner-checked) and no stale socket is in the way."""
    if path.parent == paths.runtime_dir():
        paths.ensure_runtime_dir()
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_socket(path, locked=locked)


def refuse_non_socket(path: Path) -> None:
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


def remove_stale_socket(path: Path, *, locked: bool) -> None:
    """Unlink the socket a crashed daemon left behind: only a socket, and only while we hold the daemon
    lock. This must run before the bind: libzmq's ipc bind unlinks whatever file is at the path."""
    refuse_non_socket(path)  # re-checked: the path may have changed since check_endpoint
    if not os.path.lexists(path):
        return
    if not locked:
        raise PulseError(f"{path} exists and this process does not hold the daemon lock; not replacing it",
                         "ENDPOINT_IN_USE")
    if socket_answers(path):  # e.g. a daemon of another runtime dir (another lock) listens there
        raise PulseError(f"{path} is in use: another process listens on it; stop it or choose another ipc path",
                         "ENDPOINT_IN_USE")
    path.unlink()


def socket_answers(path: Path) -> bool:
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
