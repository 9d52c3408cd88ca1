"""Linux with a systemd user session: a `systemd --user` unit, enabled for default.target.

The unit lives in $XDG_CONFIG_HOME/systemd/user/. `enable` only creates the default.target.wants/
symlink that [Install] describes, so when the user manager cannot be reached now (ssh without
lingering, a container) we create that symlink ourselves: the unit starts at the next login anyway.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .common import (
    DESCRIPTION,
    SERVICE_NAME,
    AutostartError,
    LaunchCommand,
    Say,
    remove_file,
    run_tool,
    tool_error,
    write_entry,
    xdg_config_home,
)

UNIT = f"{SERVICE_NAME}.service"
WANTED_BY = "default.target"
START_SETTLE_S = 1.5  # how long after `enable --now` we look whether the daemon stayed up
_SAFE = re.compile(r"[A-Za-z0-9_@%$+=:,./-]+")  # after doubling `%` and `$`


def unit_dir() -> Path:
    return xdg_config_home() / "systemd" / "user"


def unit_path() -> Path:
    return unit_dir() / UNIT


def wants_link() -> Path:
    return unit_dir() / f"{WANTED_BY}.wants" / UNIT


def quote_arg(arg: str) -> str:
    """One word of ExecStart: `%` is a specifier and `$` a variable in systemd, so both are doubled;
    anything else unusual goes into double quotes, where only backslash and the quote need escaping."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg == ";":  # a lone `;` separates commands in ExecStart
        return "\\;"
    if _SAFE.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render(command: LaunchCommand) -> str:
    exec_start = " ".join(quote_arg(a) for a in command.argv)
    return f"""\
# Written by `pulse-server install-autostart`; remove with `pulse-server uninstall-autostart`.
[Unit]
Description={DESCRIPTION}
# A daemon that keeps crashing stops being restarted after 5 tries in 2 minutes.
StartLimitIntervalSec=120
StartLimitBurst=5

[Service]
Type=simple
ExecStart={exec_start}
Restart=on-failure
RestartSec=5
# Exit status 2 is a usage error (bad weights, endpoint held by another daemon): retrying cannot help.
RestartPreventExitStatus=2
# Log lines reach the journal as they are written (the daemon also keeps its own log file).
Environment=PYTHONUNBUFFERED=1
# `stop` cancels the running job between two solver steps; give it time before SIGKILL.
TimeoutStopSec=30

[Install]
WantedBy={WANTED_BY}
"""


@dataclass(frozen=True)
class UserSession:
    available: bool
    reason: str  # why not, for the hint
    systemctl: str | None = None


def user_session() -> UserSession:
    """Is a systemd user manager reachable now? `show-environment` needs the manager over its bus
    ($XDG_RUNTIME_DIR/systemd/private or the session bus), so its exit status answers exactly that."""
    systemctl = shutil.which("systemctl")
    if not systemctl:
        return UserSession(False, "systemctl is not installed")
    proc = run_tool([systemctl, "--user", "show-environment"], timeout=10)
    if proc.returncode != 0:
        return UserSession(False, f"no systemd user session ({tool_error(proc)})", systemctl)
    return UserSession(True, "", systemctl)


def _systemctl(session: UserSession, *args: str, check: bool = True) -> bool:
    assert session.systemctl
    proc = run_tool([session.systemctl, "--user", *args], timeout=60)
    if proc.returncode != 0 and check:
        raise AutostartError(f"`systemctl --user {' '.join(args)}` failed: {tool_error(proc)}; "
                             f"see `journalctl --user -u {UNIT}`")
    return proc.returncode == 0


def install(command: LaunchCommand, say: Say, *, dry_run: bool = False, session: UserSession | None = None) -> Path:
    path = unit_path()
    text = render(command)
    session = session if session is not None else user_session()
    if not write_entry(path, text.encode("utf-8"), say, dry_run):
        if session.available:
            say(f"would run: systemctl --user daemon-reload && systemctl --user enable --now {UNIT}")
        else:
            say(f"would link {wants_link()} -> {path} ({session.reason})")
        return path
    say(f"wrote {path}")
    if not session.available:
        _link_wants(path)
        say(f"linked {wants_link()}: the daemon starts at your next login.\n"
            f"hint: systemctl was skipped ({session.reason}); in a login session run "
            f"`systemctl --user daemon-reload && systemctl --user enable --now {UNIT}` to start it now.")
        return path
    was_active = _systemctl(session, "is-active", "--quiet", UNIT, check=False)
    _systemctl(session, "daemon-reload")
    _systemctl(session, "enable", "--now", UNIT)
    if was_active:  # enable --now leaves a running daemon alone; restart it so the new flags apply
        _systemctl(session, "try-restart", UNIT)
    state = _state_after_start(session)
    if state == "active":
        say(f"enabled and started {UNIT}; check it with `systemctl --user status {UNIT}`")
    else:  # the entry is right, the daemon is not: say so instead of claiming success
        say(f"warning: {UNIT} is enabled but {state or 'not running'} right after start (another daemon "
            f"running? bad weights?); see `journalctl --user -u {UNIT} -n 30`")
    return path


def _state_after_start(session: UserSession) -> str:
    # Type=simple counts as started once forked; a daemon that exits at once (lock held by a daemon
    # started by hand, unreadable weights) shows up as failed/activating within a second or so.
    time.sleep(START_SETTLE_S)
    assert session.systemctl
    return run_tool([session.systemctl, "--user", "is-active", UNIT], timeout=30).stdout.strip()


def _link_wants(path: Path) -> None:
    link = wants_link()
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(path)


def uninstall(say: Say, *, dry_run: bool = False, session: UserSession | None = None) -> bool:
    path, link = unit_path(), wants_link()
    present = path.exists() or link.is_symlink()
    if not present:
        return False
    session = session if session is not None else user_session()
    if session.available:
        if dry_run:
            say(f"would run: systemctl --user disable --now {UNIT}")
        else:
            # Not fatal: the unit may be unknown to the manager (written while it was unreachable).
            if _systemctl(session, "disable", "--now", UNIT, check=False):
                say(f"stopped and disabled {UNIT}")
    removed = remove_file(link, say, dry_run)
    removed = remove_file(path, say, dry_run) or removed
    if not dry_run and link.parent.is_dir() and not any(link.parent.iterdir()):
        link.parent.rmdir()  # the .wants folder only held our link
    if session.available and not dry_run:
        _systemctl(session, "daemon-reload", check=False)
        _systemctl(session, "reset-failed", UNIT, check=False)
    elif not session.available:
        say(f"hint: systemctl was skipped ({session.reason}); if the daemon is running now, "
            "stop it with `pulse-server stop`.")
    return removed or present
