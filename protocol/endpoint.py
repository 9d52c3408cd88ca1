"""Where the daemon listens and where its token lives, with the standard library only.

The editors' Python has no platformdirs, so this module is the one place that decides the per-user
runtime directory, the default endpoint and the token file; `pulse_server.paths` reuses it so both
sides always agree.

  * POSIX: `ipc://<runtime dir>/daemon.sock`, runtime dir = `$XDG_RUNTIME_DIR/pulse-depixelate`, else `/tmp/pulse-depixelate-<uid>`;
    macOS: `~/Library/Caches/pulse-depixelate/run` (not `$TMPDIR`: ssh, sudo and some launchd jobs have no TMPDIR and
    would fall back to /tmp, so client and daemon would disagree). The daemon creates it 0700 and checks
    its owner.
  * Windows: `tcp://127.0.0.1:47474` (no ipc transport), token file in `%LOCALAPPDATA%\\pulse-depixelate\\run`.
  * `PULSE_ENDPOINT`, `PULSE_TOKEN` and `PULSE_RUNTIME_DIR` override.
"""

from __future__ import annotations

import ipaddress
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from .auth import TOKEN_ENCODING, token_from_file_text

APP = "pulse-depixelate"  # not "pulse": that is PulseAudio's runtime/config folder name
DEFAULT_TCP_PORT = 47474
SOCKET_NAME = "daemon.sock"
TOKEN_NAME = "token"
LOCK_NAME = "daemon.lock"
# sun_path is 108 bytes on Linux, 104 on macOS; ZeroMQ needs the terminating NUL.
MAX_IPC_PATH = 103


def runtime_dir(platform: str | None = None) -> Path:
    """The per-user directory for the socket, token and lock (not created here).

    `platform` (a `sys.platform` value) defaults to this machine's; tests pass it explicitly."""
    platform = platform or sys.platform
    override = os.environ.get("PULSE_RUNTIME_DIR")
    if override:
        return Path(override)
    if platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / APP / "run"
    if platform == "darwin":
        # Stable for every process of the user (GUI apps, ssh, sudo -u, launchd), unlike $TMPDIR, and
        # short enough for sun_path (104 bytes) with any ordinary user name.
        return Path.home() / "Library" / "Caches" / APP / "run"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and os.path.isabs(xdg) and _owned_dir(xdg):
        return Path(xdg) / APP
    # Predictable name in a shared /tmp: the daemon refuses it unless we own it (paths.ensure_private_dir).
    return Path("/tmp") / f"{APP}-{os.getuid()}"


def _owned_dir(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return os.path.isdir(path) and (not hasattr(os, "getuid") or st.st_uid == os.getuid())


def token_path() -> Path:
    return runtime_dir() / TOKEN_NAME


def lock_path() -> Path:
    return runtime_dir() / LOCK_NAME


def default_endpoint() -> str:
    """`PULSE_ENDPOINT`, else ipc in the runtime dir (POSIX) or tcp on loopback (Windows)."""
    env = os.environ.get("PULSE_ENDPOINT")
    if env:
        return env
    if sys.platform == "win32":
        return f"tcp://127.0.0.1:{DEFAULT_TCP_PORT}"
    return f"ipc://{runtime_dir() / SOCKET_NAME}"


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an `ipc://` endpoint, else None."""
    if endpoint.startswith("ipc://"):
        return Path(endpoint[len("ipc://") :])
    return None


def is_tcp(endpoint: str) -> bool:
    return endpoint.startswith("tcp://")


def tcp_host(endpoint: str) -> str:
    """Host part of `tcp://HOST:PORT` (brackets stripped for IPv6)."""
    netloc = urlsplit(endpoint).netloc
    host = netloc.rsplit(":", 1)[0] if ":" in netloc else netloc
    return host.strip("[]")


def is_loopback(endpoint: str) -> bool:
    """True for ipc/inproc endpoints and tcp endpoints bound to a loopback address."""
    if not is_tcp(endpoint):
        return endpoint.startswith(("ipc://", "inproc://"))
    host = tcp_host(endpoint)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface name or "*": not loopback
        return False


def read_token(path: Path | None = None) -> str | None:
    """`PULSE_TOKEN`, else the token file's content, else None (no daemon has made one yet)."""
    env = os.environ.get("PULSE_TOKEN")
    if env:
        return env
    try:
        return token_from_file_text((path or token_path()).read_text(encoding=TOKEN_ENCODING))
    except (OSError, UnicodeDecodeError):
        return None
