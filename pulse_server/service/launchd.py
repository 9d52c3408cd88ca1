"""macOS: a per-user LaunchAgent in ~/Library/LaunchAgents, loaded into the GUI domain (gui/<uid>).

launchd starts agents with a bare environment (PATH=/usr/bin:/bin:/usr/sbin:/sbin), so the plist sets PATH
with the interpreter's folder first. stdout/stderr go to the user log dir: they catch what happens before
the daemon opens its own log file (import errors, a missing package).
"""

from __future__ import annotations

import os
import plistlib
import shutil
import sys
import time
from pathlib import Path

from platformdirs.macos import MacOS

from .common import (
    APP_NAME,
    LAUNCHD_LABEL,
    SERVICE_NAME,
    AutostartError,
    LaunchCommand,
    Say,
    home,
    remove_file,
    run_tool,
    tool_error,
    write_entry,
)

# Where Homebrew (Apple silicon, Intel) and the system keep tools, after the interpreter's own folder.
_BASE_PATH = ["/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"]


def plist_path() -> Path:
    return home() / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"


def log_dir() -> Path:
    # platformdirs' macOS rule (~/Library/Logs/<app>), computed even when we are not on macOS (tests).
    return Path(MacOS(APP_NAME).user_log_dir)


def login_env(platform: str) -> dict[str, str]:
    """Variables to pin from the installing session. The default socket no longer depends on $TMPDIR
    (protocol.endpoint uses ~/Library/Caches), but the daemon's temporary files (tempfile, torch) should
    stay in the per-user /var/folders TMPDIR rather than the shared /tmp a bare launchd job falls back to."""
    tmpdir = os.environ.get("TMPDIR")
    if platform != "darwin" or sys.platform != "darwin" or not tmpdir:
        return {}
    return {"TMPDIR": tmpdir}


def render(command: LaunchCommand, extra_env: dict[str, str] | None = None) -> bytes:
    folder = os.path.dirname(command.program[0])
    path = [folder] + [p for p in _BASE_PATH if p != folder]
    logs = log_dir()
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": command.argv,
        "RunAtLoad": True,
        # Restart after a crash or a non-zero exit, not after a clean `pulse-server stop`.
        "KeepAlive": {"SuccessfulExit": False},
        "ThrottleInterval": 30,  # seconds between restarts, so a broken install does not spin
        "WorkingDirectory": str(home()),
        "EnvironmentVariables": {"PATH": ":".join(path), "PYTHONUNBUFFERED": "1", **(extra_env or {})},
        "StandardOutPath": str(logs / f"{SERVICE_NAME}.out.log"),
        "StandardErrorPath": str(logs / f"{SERVICE_NAME}.err.log"),
    }
    return plistlib.dumps(plist, fmt=plistlib.FMT_XML)


def _domain() -> str:
    return f"gui/{os.getuid()}"


def install(command: LaunchCommand, say: Say, *, dry_run: bool = False, load: bool = True,
            extra_env: dict[str, str] | None = None) -> Path:
    """Write the plist; with `load` (on macOS) also (re)load it so it runs now, not only at next login."""
    path, data = plist_path(), render(command, extra_env)
    if not write_entry(path, data, say, dry_run):
        if load:
            say(f"would run: launchctl bootstrap {_domain()} {path}")
        return path
    log_dir().mkdir(parents=True, exist_ok=True)  # launchd creates the log files, not their folder
    say(f"wrote {path}")
    launchctl = shutil.which("launchctl") if load else None
    if load and not launchctl:
        say("hint: launchctl not found; the agent loads at your next login.")
    if launchctl:
        run_tool([launchctl, "bootout", f"{_domain()}/{LAUNCHD_LABEL}"])  # an older copy; fails if none
        for _ in range(5):
            proc = run_tool([launchctl, "bootstrap", _domain(), str(path)])
            if proc.returncode == 0:
                break
            time.sleep(0.5)  # bootout returns before the old job is gone ("Bootstrap failed: 5")
        if proc.returncode != 0:
            raise AutostartError(f"`launchctl bootstrap {_domain()} {path}` failed: {tool_error(proc)}")
        say(f"loaded {LAUNCHD_LABEL}; logs in {log_dir()}")
    return path


def uninstall(say: Say, *, dry_run: bool = False, load: bool = True) -> bool:
    path = plist_path()
    if not path.exists():
        return False
    launchctl = shutil.which("launchctl") if load else None
    if launchctl:
        if dry_run:
            say(f"would run: launchctl bootout {_domain()}/{LAUNCHD_LABEL}")
        else:
            run_tool([launchctl, "bootout", f"{_domain()}/{LAUNCHD_LABEL}"])  # fails harmlessly if not loaded
    return remove_file(path, say, dry_run)
