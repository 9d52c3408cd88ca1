"""Per-user directories and files of the daemon: runtime dir (0700, owner-checked), token (0600), lock, logs.

The runtime dir, socket, token and lock locations come from `protocol.endpoint` (stdlib only) so the
editors' client and the daemon always agree; platformdirs gives the log and config dirs, which only the
server needs. platformdirs sets no modes, so directories that hold secrets are created and checked here.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import TextIO

from protocol import auth
from protocol import endpoint as ep

from .errors import PulseError

APP = ep.APP


def runtime_dir() -> Path:
    return ep.runtime_dir()


def log_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_log_dir(APP, appauthor=False))


def config_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_config_dir(APP, appauthor=False))


def token_path() -> Path:
    return ep.token_path()


def lock_path() -> Path:
    return ep.lock_path()


def ensure_private_dir(path: Path) -> Path:
    """Create `path` 0700 (parents as needed); refuse it if another user owns it or can write to it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sys.platform == "win32":  # per-user %LOCALAPPDATA% is already private
        return path
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise PulseError(f"{path} is not a directory; remove it and retry", "UNSAFE_RUNTIME_DIR")
    if st.st_uid != os.getuid():
        raise PulseError(f"{path} belongs to another user (uid {st.st_uid}); set XDG_RUNTIME_DIR or PULSE_RUNTIME_DIR", "UNSAFE_RUNTIME_DIR")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)  # ours, merely too open (e.g. made by an old version or by hand)
    return path


def ensure_runtime_dir() -> Path:
    return ensure_private_dir(runtime_dir())


def read_or_create_token(path: Path | None = None) -> str:
    """`PULSE_TOKEN`, else the 0600 token file (created with a fresh random token if missing)."""
    env = os.environ.get("PULSE_TOKEN")
    if env:
        return env
    path = path or token_path()
    ensure_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if sys.platform != "win32" and os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)
        token = auth.token_from_file_text(path.read_text(encoding=auth.TOKEN_ENCODING))
        if token:
            return token
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC, 0o600)
    token = auth.new_token()
    with os.fdopen(fd, "w", encoding=auth.TOKEN_ENCODING) as fh:
        fh.write(auth.token_file_text(token))
    return token


class DaemonLock:
    """An exclusive OS lock on `daemon.lock` (freed by the kernel if the daemon dies) holding pid + endpoint.

    ZeroMQ lets a second process bind the same ipc path and silently steal it, so the lock, not the bind,
    decides who runs. The file also tells `pulse-server status|stop` which endpoint the daemon uses.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or lock_path()
        self._fh: TextIO | None = None

    def acquire(self, endpoint: str, retry_s: float = 0.5) -> None:
        ensure_private_dir(self.path.parent)
        fh = open(self.path, "a+", encoding="utf-8")
        try:
            _lock_retrying(fh, retry_s)
        except OSError:
            fh.close()
            info = read_lock_info(self.path)
            pid = info.get("pid", "?")
            where = info.get("endpoint", "?")
            raise PulseError(
                f"another pulse-server is already running (pid {pid}, endpoint {where}); stop it with `pulse-server stop`",
                "ALREADY_RUNNING",
            ) from None
        if sys.platform != "win32" and not _same_file(fh, self.path):
            fh.close()  # we locked a file a stopping daemon had just unlinked: lock the new one
            return self.acquire(endpoint)
        self._fh = fh
        self.write(endpoint)

    @property
    def held(self) -> bool:
        return self._fh is not None

    def write(self, endpoint: str) -> None:
        """(Re)write the held lock file's pid + endpoint (the daemon names the endpoint it actually bound)."""
        fh = self._fh
        if fh is None:
            raise RuntimeError("the daemon lock is not held: acquire() it before writing the endpoint")
        fh.seek(0)
        fh.truncate()
        fh.write(json.dumps({"pid": os.getpid(), "endpoint": endpoint}))
        fh.flush()

    def release(self) -> None:
        if self._fh is None:
            return
        try:
            self.path.unlink()  # while still holding the lock, so no newcomer's file is removed
        except OSError:
            pass
        self._fh.close()
        self._fh = None


def read_lock_info(path: Path | None = None) -> dict:
    try:
        info = json.loads((path or lock_path()).read_text(encoding="utf-8") or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError):
        return {}


def running_lock_info(path: Path | None = None) -> dict:
    """The running daemon's pid + endpoint; {} when no process holds the lock (a stale file is ignored)."""
    return read_lock_info(path) if is_locked(path) else {}


def is_locked(path: Path | None = None) -> bool:
    """True while some process holds the daemon lock."""
    path = path or lock_path()
    if not path.exists():
        return False
    try:
        fh = open(path, "a+", encoding="utf-8")
    except OSError:
        return False
    try:
        _lock(fh)
    except OSError:
        return True
    finally:
        fh.close()  # closing drops a lock we may have just taken
    return False


def _lock_retrying(fh, retry_s: float) -> None:
    """`_lock`, retried for `retry_s`: `is_locked()` (e.g. `pulse-server stop` waiting for the old daemon)
    holds the lock for a moment while probing; a daemon starting just then must not give up at once."""
    import time

    deadline = time.monotonic() + retry_s
    while True:
        try:
            _lock(fh)
            return
        except OSError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _same_file(fh, path: Path) -> bool:
    try:
        a, b = os.fstat(fh.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


# Windows locks are mandatory byte ranges: a lock on byte 0 would make the JSON unreadable to
# `pulse-server status` and to a second daemon naming the first's pid. Lock one byte far past it instead
# (LockFile accepts a range beyond the end of the file; the file does not grow).
WIN_LOCK_OFFSET = 1 << 20


def _lock(fh, platform: str | None = None) -> None:
    if (platform or sys.platform) == "win32":
        import msvcrt

        fh.flush()
        os.lseek(fh.fileno(), WIN_LOCK_OFFSET, os.SEEK_SET)  # msvcrt.locking starts at the fd's position
        try:
            # typeshed declares msvcrt's functions for win32 only, and mypy checks this file as Linux
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        finally:
            fh.seek(0)  # back to the JSON, and the text layer's position in sync with the fd's
    else:
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
