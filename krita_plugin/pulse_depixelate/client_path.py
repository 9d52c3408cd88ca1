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


def server_command(endpoint: str | None = None) -> list[str] | None:
    """The command that starts the daemon: the installer's recorded `pulse-server` prefix, else `pulse-server`
    on PATH, followed by protocol.launch's `run` arguments."""
    program: list[str] | None = None
    try:
        recorded = json.loads(SERVER_JSON.read_text(encoding="utf-8")).get("command")
        if recorded and Path(recorded[0]).exists():
            program = list(recorded)
    except (OSError, ValueError, AttributeError):
        pass
    if program is None:
        exe = shutil.which("pulse-server")
        program = [exe] if exe else None
    if program is None:
        return None
    ensure_client_path()
    from protocol.launch import daemon_argv

    return daemon_argv(program, endpoint=endpoint)


# Always wrong for the daemon's own interpreter (an AppImage's or a bundled Python's settings, or the venv of
# the terminal Krita was started from: the recorded command names its own interpreter).
_PYTHON_VARS = ("PYTHONHOME", "PYTHONPATH", "PYTHONEXECUTABLE", "PYTHONNOUSERSITE", "VIRTUAL_ENV")
# What an AppImage's runtime and Krita's AppRun set for the bundled libraries: passed on, the system daemon's
# numpy/torch would load the AppImage's older libstdc++/libgomp, and Qt paths or APPDIR would point into it.
_APPIMAGE_VARS = ("LD_LIBRARY_PATH", "QT_PLUGIN_PATH", "QML2_IMPORT_PATH", "QT_QPA_PLATFORM_PLUGIN_PATH",
                  "APPDIR", "APPIMAGE", "ARGV0", "OWD")


def daemon_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a daemon started from Krita (default: this process's): without the editor's Python
    settings, and when Krita runs from an AppImage (APPIMAGE/APPDIR set) without its library environment:
    every PYTHON* variable, the loader/Qt paths above, and PATH/XDG_DATA_DIRS entries inside the AppImage."""
    env = dict(os.environ if environ is None else environ)
    appdir = env.get("APPDIR", "")
    appimage = bool(env.get("APPIMAGE") or appdir)
    for key in list(env):
        if key in _PYTHON_VARS or (appimage and (key in _APPIMAGE_VARS or key.startswith("PYTHON"))):
            del env[key]
    if appdir:
        inside = os.path.join(os.path.normpath(appdir), "")
        for key in ("PATH", "XDG_DATA_DIRS"):
            if key in env:
                kept = [p for p in env[key].split(os.pathsep)
                        if p and not os.path.join(os.path.normpath(p), "").startswith(inside)]
                env[key] = os.pathsep.join(kept)
    return env
