"""Where the plug-in finds the protocol client and its pyzmq/msgpack (no Qt, no krita: importable anywhere).

The installer lays out, next to this file:
    _client/protocol/            the `protocol` package (pure Python)
    _client/py310/_vendor/       pyzmq + msgpack wheels for a bundled CPython 3.10 (one folder per version)
    server.json                  {"command": [...]} how to start `pulse-server run` on this machine
A development checkout has none of these: `protocol` is then importable from the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
CLIENT_DIR = HERE / "_client"
SERVER_JSON = HERE / "server.json"


def vendor_dir() -> Path:
    return CLIENT_DIR / f"py{sys.version_info[0]}{sys.version_info[1]}" / "_vendor"


def ensure_client_path() -> None:
    """Put the bundled client (and vendored wheels for this very Python, if any) on sys.path, once."""
    for path in (vendor_dir(), CLIENT_DIR):
        if path.is_dir() and str(path) not in sys.path:
            sys.path.insert(0, str(path))


def missing_dependencies() -> list[str]:
    """Modules the client needs that this Python cannot import (checked without importing them)."""
    ensure_client_path()
    return [m for m in ("zmq", "msgpack", "protocol") if importlib.util.find_spec(m) is None]


def dependency_help(missing: list[str]) -> str:
    pkgs = {"zmq": "python3-zmq", "msgpack": "python3-msgpack"}
    names = [pkgs[m] for m in missing if m in pkgs]
    text = f"Krita's Python cannot import {', '.join(missing)}. "
    if "protocol" in missing:
        text += "Reinstall the plug-in with `pulse-server install-plugin krita`. "
    if names:
        text += (f"Install {' and '.join(names)} (e.g. `sudo apt install {' '.join(names)}`), or, for a Krita "
                 "with its own Python (AppImage, Windows, macOS), re-run `pulse-server install-plugin krita` "
                 "so it bundles them; then restart Krita.")
    return text


def server_command(endpoint: Optional[str] = None) -> Optional[list[str]]:
    """The command that starts the daemon, as recorded by the installer, else `pulse-server` on PATH."""
    cmd: Optional[list[str]] = None
    try:
        recorded = json.loads(SERVER_JSON.read_text(encoding="utf-8")).get("command")
        if recorded and Path(recorded[0]).exists():
            cmd = list(recorded)
    except (OSError, ValueError, AttributeError):
        pass
    if cmd is None:
        exe = shutil.which("pulse-server")
        cmd = [exe] if exe else None
    if cmd is None:
        return None
    cmd += ["run"] + (["--endpoint", endpoint] if endpoint else [])
    return cmd


def daemon_env() -> dict[str, str]:
    """The environment for a daemon started from Krita: without the editor's Python settings
    (an AppImage's PYTHONHOME/PYTHONPATH would break the daemon's own interpreter)."""
    env = dict(os.environ)
    for key in ("PYTHONHOME", "PYTHONPATH", "PYTHONEXECUTABLE", "PYTHONNOUSERSITE"):
        env.pop(key, None)
    return env
