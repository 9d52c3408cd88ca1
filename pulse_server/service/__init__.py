"""Start the daemon at login: one writer per OS, and `install` / `uninstall` that pick among them.

- Linux with a systemd user session: a `systemd --user` unit (Restart=on-failure), enabled and started.
- Other Linux/BSD desktops: an XDG autostart .desktop entry.
- macOS: a LaunchAgent plist (PATH set, logs in ~/Library/Logs/pulse), loaded with launchctl.
- Windows: a .cmd in the Startup folder that starts the daemon with pythonw.exe.

Every entry runs `pulse-server run ...` with the interpreter that runs the install, checked first.
Nothing here imports the daemon: the entry only needs its command line.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from . import launchd, systemd, windows, xdg
from .common import AutostartError, DaemonOptions, LaunchCommand, Say, check_command, daemon_command

__all__ = ["METHODS", "AutostartError", "DaemonOptions", "InstallResult", "install", "uninstall",
           "methods_for", "choose_method"]

METHODS = ("systemd", "xdg", "launchd", "windows")


@dataclass(frozen=True)
class InstallResult:
    method: str
    path: Path  # the entry written (or that would be, with dry_run)
    command: LaunchCommand


def methods_for(platform: str) -> tuple[str, ...]:
    if platform == "darwin":
        return ("launchd",)
    if platform.startswith("win"):
        return ("windows",)
    return ("systemd", "xdg")


def choose_method(method: str, platform: str) -> tuple[str, systemd.UserSession | None]:
    """Resolve "auto" for `platform`; refuse a method that has no meaning there."""
    allowed = methods_for(platform)
    if method == "auto":
        if allowed == ("systemd", "xdg"):
            session = systemd.user_session()
            return ("systemd" if session.available else "xdg"), session
        return allowed[0], None
    if method not in METHODS:
        raise AutostartError(f"unknown autostart method {method!r}; choose one of auto, {', '.join(METHODS)}")
    if method not in allowed:
        raise AutostartError(f"the {method} autostart method does not apply on {platform}; "
                             f"use {' or '.join(allowed)} (or auto)")
    return method, (systemd.user_session() if method == "systemd" else None)


def install(method: str = "auto", options: DaemonOptions = DaemonOptions(),  # noqa: B008 - frozen: safe to share
            *, python: str | None = None, platform: str | None = None, dry_run: bool = False,
            say: Say = print) -> InstallResult:
    """Check the command, write the entry for `method` and (where the OS has a manager) enable it.

    `python` and `platform` default to this process's; tests pass them to run the macOS/Windows writers.
    An entry of another method on the same OS is removed, so the daemon is never started twice.
    """
    platform = platform or sys.platform
    command = daemon_command(options, python, platform)
    check_command(command, platform)
    method, session = choose_method(method, platform)
    for other in methods_for(platform):
        if other != method:
            _uninstall_one(other, platform, say, dry_run)
    if method == "systemd":
        path = systemd.install(command, say, dry_run=dry_run, session=session)
    elif method == "xdg":
        path = xdg.install(command, say, dry_run=dry_run)
    elif method == "launchd":
        path = launchd.install(command, say, dry_run=dry_run, load=_native(platform),
                               extra_env=launchd.login_env(platform))
    else:
        path = windows.install(command, say, dry_run=dry_run)
    return InstallResult(method, path, command)


def uninstall(method: str = "auto", *, platform: str | None = None, dry_run: bool = False,
              say: Say = print) -> list[str]:
    """Disable and remove the entry of `method` (auto: every method of this OS). Idempotent; returns
    the methods whose entries were found."""
    platform = platform or sys.platform
    methods = methods_for(platform) if method == "auto" else (choose_method(method, platform)[0],)
    found = [m for m in methods if _uninstall_one(m, platform, say, dry_run)]
    if not found:
        say("no autostart entry found; nothing to remove")
    elif platform != "darwin" and "systemd" not in found and not dry_run:
        say("hint: a daemon that is running now keeps running; stop it with `pulse-server stop`.")
    return found


def _uninstall_one(method: str, platform: str, say: Say, dry_run: bool) -> bool:
    if method == "systemd":
        return systemd.uninstall(say, dry_run=dry_run)
    if method == "xdg":
        return xdg.uninstall(say, dry_run=dry_run)
    if method == "launchd":
        return launchd.uninstall(say, dry_run=dry_run, load=_native(platform))
    return windows.uninstall(say, dry_run=dry_run)


def _native(platform: str) -> bool:
    """Only touch the OS service manager when the entry is for the OS we run on."""
    return platform == sys.platform
