"""What every autostart entry shares: the daemon's command line, its checks, and the per-user folders.

The entry must start the daemon with the interpreter that ran `install-autostart` (the one whose
environment has pulse installed), not whatever `python3` is first on the login PATH. So the command is
either the `pulse-server` script that pip put next to `sys.executable` (when its shebang names that
interpreter's folder), or `<sys.executable> -m pulse_server.service` (same as `pulse-server`). On Windows
it is always `pythonw.exe -m pulse_server.service`: the `pulse-server.exe` launcher would open a console.
That choice and the `run` flags are `protocol.launch`'s, shared with everything else that starts the daemon.

Everything here takes the target platform and interpreter as arguments so the macOS and Windows writers
run (and are tested) on Linux; folders come from HOME / XDG_CONFIG_HOME / APPDATA at call time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from protocol import launch
from protocol.endpoint import APP

from ..errors import PulseError

APP_NAME = APP  # platformdirs app name (user log dir), shared with the daemon
SERVICE_NAME = launch.SCRIPT  # file stem of every entry: pulse-server.service / .desktop / .cmd
LAUNCHD_LABEL = "org.pulse-depixelate.pulse-server"
ENTRY_MODULE = launch.ENTRY_MODULE  # `python -m pulse_server.service ARGS` == `pulse-server ARGS`
DESCRIPTION = "pulse face depixelation solver daemon"
PROBE_TIMEOUT_S = 60.0  # the probe imports the CLI with a cold disk cache at worst

Say = Callable[[str], None]


class AutostartError(PulseError):
    """An autostart entry cannot be written, checked or removed; the message says what to do."""

    code = "AUTOSTART"


@dataclass(frozen=True)
class DaemonOptions:
    """The `pulse-server run` flags baked into the entry (None: the daemon's own default)."""

    endpoint: str | None = None
    weights: str | None = None
    device: str | None = None

    def run_args(self) -> list[str]:
        return launch.run_args(endpoint=self.endpoint, weights=self.weights, device=self.device)


def is_windows(platform: str) -> bool:
    return platform.startswith("win")


def home() -> Path:
    """HOME (or USERPROFILE on Windows); read at call time so tests can point it at a temporary folder."""
    value = os.environ.get("HOME") or os.environ.get("USERPROFILE")
    if not value:
        raise AutostartError("neither HOME nor USERPROFILE is set: cannot find the per-user config folder")
    return Path(value)


def xdg_config_home() -> Path:
    # The XDG spec: an unset, empty or relative XDG_CONFIG_HOME means ~/.config.
    value = os.environ.get("XDG_CONFIG_HOME", "")
    return Path(value) if os.path.isabs(value) else home() / ".config"


@dataclass(frozen=True)
class LaunchCommand:
    """`program` is the argv prefix equivalent to `pulse-server`; `args` the sub-command and its flags."""

    program: tuple[str, ...]
    args: tuple[str, ...] = ()

    @property
    def argv(self) -> list[str]:
        return [*self.program, *self.args]


def server_command(python: str | os.PathLike[str] | None = None, platform: str | None = None) -> tuple[str, ...]:
    """The argv prefix equivalent to `pulse-server` for this interpreter (without sub-command)."""
    try:
        return launch.server_program(python, platform)
    except ValueError as exc:
        raise AutostartError(str(exc), code="BAD_INTERPRETER") from None


def daemon_command(options: DaemonOptions, python: str | os.PathLike[str] | None = None,
                   platform: str | None = None) -> LaunchCommand:
    """What an entry runs at login: `<pulse-server> run [--endpoint E] [--weights W] [--device D]`."""
    return LaunchCommand(server_command(python, platform), tuple(options.run_args()))


def resolve_weights(weights: str | None, cwd: Path | None = None) -> str | None:
    """Make a weights path absolute (the daemon starts in HOME, not here); keep a bare registry name.

    A value that names a file that does not exist is an error now rather than a daemon that fails at
    every login.
    """
    if not weights:
        return None
    path = Path(weights).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    if path.exists():
        return str(path.resolve())
    looks_like_path = any(s in weights for s in ("/", "\\", "~")) or Path(weights).suffix != ""
    if looks_like_path:
        raise AutostartError(f"weights file not found: {path}", code="NO_WEIGHTS")
    return weights


def check_command(command: LaunchCommand, platform: str | None = None) -> None:
    """Fail clearly unless the entry's command can run: no control characters, the program exists.

    On the platform we run on, the program is also probed (`... --version` from HOME without
    PYTHONPATH, as at login) so an interpreter that cannot import pulse is caught at install time.
    """
    platform = platform or sys.platform
    for arg in command.argv:
        if any(ord(c) < 32 or c == "\x7f" for c in arg):
            raise AutostartError(f"cannot put a control character into an autostart entry: {arg!r}")
    exe = command.program[0]
    if not (os.path.isabs(exe) or (is_windows(platform) and _looks_like_windows_abs(exe))):
        raise AutostartError(f"the autostart command must be an absolute path, got {exe!r}", code="BAD_INTERPRETER")
    if not os.path.isfile(exe):
        raise AutostartError(
            f"the autostart command {exe} does not exist; run install-autostart with the Python "
            "that has pulse installed (e.g. .venv/bin/pulse-server install-autostart)", code="BAD_INTERPRETER")
    if not is_windows(platform) and not os.access(exe, os.X_OK):
        raise AutostartError(f"the autostart command {exe} is not executable", code="BAD_INTERPRETER")
    if platform == sys.platform:
        probe(command.program)


def _looks_like_windows_abs(path: str) -> bool:
    return len(path) > 2 and path[1] == ":" and path[2] in "\\/"


def probe(program: Sequence[str]) -> None:
    """Run the entry's program with `--version` the way a login would, and check it is pulse-server."""
    prefix = list(program)
    if is_windows(sys.platform) and os.path.basename(prefix[0]).lower() == "pythonw.exe":
        # pythonw has no stdout to read the version from; its console twin runs the same code.
        prefix[0] = os.path.join(os.path.dirname(prefix[0]), "python.exe")
    try:
        proc = subprocess.run(prefix + ["--version"], cwd=str(home()), env=login_like_env(),
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AutostartError(f"cannot run the autostart command {prefix[0]}: {exc}", code="BAD_INTERPRETER") from exc
    output = (proc.stdout + proc.stderr).strip()
    if proc.returncode != 0 or SERVICE_NAME not in output:
        last = output.splitlines()[-1] if output else f"exit status {proc.returncode}"
        raise AutostartError(
            f"`{' '.join(prefix)} --version` fails when run as at login ({last}); install pulse into that "
            "Python (pip install -e . in the checkout) rather than relying on the current folder or PYTHONPATH",
            code="BAD_INTERPRETER")


def login_like_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment without what a login session would not have (PYTHONPATH, venv activation)."""
    env = dict(os.environ if environ is None else environ)
    for key in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "PYTHONSAFEPATH"):
        env.pop(key, None)
    return env


def write_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write atomically (temp file + rename in the same folder) so a crash never leaves half an entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_entry(path: Path, data: bytes, say: Say, dry_run: bool) -> bool:
    """Write an autostart entry, or on a dry run show what would be written; True when written."""
    if dry_run:
        say(f"would write {path}:\n{data.decode('utf-8')}")
        return False
    write_file(path, data)
    return True


def remove_file(path: Path, say: Say, dry_run: bool) -> bool:
    """Remove `path` (file or symlink, even a dangling one); False when there was nothing to remove."""
    if not (path.is_symlink() or path.exists()):
        return False
    say(f"{'would remove' if dry_run else 'removed'} {path}")
    if not dry_run:
        path.unlink()
    return True


def run_tool(argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a service manager command (systemctl, launchctl); never raises for a non-zero exit."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return subprocess.CompletedProcess(list(argv), 124, "", f"timed out after {timeout:.0f} s: {exc}")
    except OSError as exc:
        return subprocess.CompletedProcess(list(argv), 127, "", str(exc))


def tool_error(proc: subprocess.CompletedProcess[str]) -> str:
    text = (proc.stderr or proc.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit status {proc.returncode}"
