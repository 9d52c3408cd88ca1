"""How to start the daemon: `pulse-server run ...` as an argv, built in one place (standard library only).

Autostart entries, the Krita docker's Start button (via the installer's server.json), the demo, the benches
and the tests all build the command here. `program` is the argv prefix that stands for `pulse-server`: the
console script pip put next to the interpreter (when its shebang names that interpreter's folder), else
`<python> -m pulse_server.service`; on Windows always `pythonw.exe -m pulse_server.service` (the
`pulse-server.exe` launcher would open a console window).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

SCRIPT = "pulse-server"
ENTRY_MODULE = "pulse_server.service"  # `python -m pulse_server.service ARGS` == `pulse-server ARGS`


def run_args(*, endpoint: str | None = None, weights: str | None = None, device: str | None = None,
             extra: Sequence[str] = ()) -> list[str]:
    """`run [--endpoint E] [--weights W] [--device D] EXTRA...` (None: the daemon's own default)."""
    args = ["run"]
    if endpoint:
        args += ["--endpoint", endpoint]
    if weights:
        args += ["--weights", str(weights)]
    if device:
        args += ["--device", device]
    return args + list(extra)


def daemon_argv(program: Sequence[str], *, endpoint: str | None = None, weights: str | None = None,
                device: str | None = None, extra: Sequence[str] = ()) -> list[str]:
    """`program` (the `pulse-server` prefix) followed by `run_args(...)`."""
    return [*program, *run_args(endpoint=endpoint, weights=weights, device=device, extra=extra)]


def module_program(python: str | os.PathLike[str] | None = None) -> tuple[str, ...]:
    """`<python> -m pulse_server.service`: works wherever that interpreter can import pulse_server."""
    return (os.fspath(python or sys.executable), "-m", ENTRY_MODULE)


def server_program(python: str | os.PathLike[str] | None = None, platform: str | None = None) -> tuple[str, ...]:
    """The argv prefix equivalent to `pulse-server` for `python` (default: this interpreter); ValueError if there
    is no interpreter to name."""
    platform = platform or sys.platform
    raw = os.fspath(python or sys.executable or "")
    if not raw:
        raise ValueError("cannot tell which Python is running (sys.executable is empty)")
    exe = os.path.abspath(raw)  # not resolved: a venv's python is a symlink to the base interpreter
    if platform.startswith("win"):
        return (_pythonw(exe), "-m", ENTRY_MODULE)
    script = os.path.join(os.path.dirname(exe), SCRIPT)
    if _script_uses_folder_of(script, exe):
        return (script,)
    return (exe, "-m", ENTRY_MODULE)


def _pythonw(python: str) -> str:
    # python.exe and pythonw.exe sit side by side (also in a venv's Scripts folder).
    folder, name = os.path.split(python)
    stem = name[:-4] if name.lower().endswith(".exe") else name
    if stem.lower() == "pythonw":
        return python
    candidates = [os.path.join(folder, stem + "w.exe"), os.path.join(folder, "pythonw.exe")]
    return next((c for c in candidates if os.path.isfile(c)), candidates[-1])


def _script_uses_folder_of(script: str, python: str) -> bool:
    """True if `script` is an executable pip script whose shebang runs a Python in `python`'s folder.

    pip writes `#!<bin>/python3` even when we run as `<bin>/python`; comparing folders (not resolved
    files) keeps two venvs made from the same base interpreter apart.
    """
    if not (os.path.isfile(script) and os.access(script, os.X_OK)):
        return False
    try:
        with open(script, "rb") as f:
            first = f.readline(4096).decode("utf-8", "replace").strip()
    except OSError:
        return False
    if not first.startswith("#!"):
        return False
    interpreter = first[2:].strip().split(" ")[0]
    return os.path.dirname(interpreter) == os.path.dirname(python)
