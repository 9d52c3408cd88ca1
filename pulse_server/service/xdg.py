"""Linux/BSD desktops without a systemd user session: an XDG autostart entry.

$XDG_CONFIG_HOME/autostart/pulse-server.desktop is started by the desktop session (GNOME, KDE, Xfce, ...)
at login. There is no restart policy here: a daemon that crashes stays down until the next login.
"""

from __future__ import annotations

from pathlib import Path

from .common import DESCRIPTION, SERVICE_NAME, LaunchCommand, Say, remove_file, write_entry, xdg_config_home

# Desktop Entry spec, "The Exec key": an argument with one of these must be quoted.
_RESERVED = set(" \t\n\"'\\><~|&;$*?#`()")


def entry_path() -> Path:
    return xdg_config_home() / "autostart" / f"{SERVICE_NAME}.desktop"


def _escape_string(value: str) -> str:
    # Values of type string: backslash escapes (applied before Exec's own quoting is read back).
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")


def quote_arg(arg: str) -> str:
    """One Exec argument: `%` doubled (field codes), quoted if it has a reserved character, and inside
    quotes `"`, `` ` ``, `$` and `\\` escaped with a backslash."""
    arg = arg.replace("%", "%%")
    if arg and not (_RESERVED & set(arg)):
        return arg
    inner = "".join("\\" + c if c in '"`$\\' else c for c in arg)
    return f'"{inner}"'


def exec_line(argv: list[str]) -> str:
    return _escape_string(" ".join(quote_arg(a) for a in argv))


def render(command: LaunchCommand) -> str:
    return f"""\
[Desktop Entry]
Type=Application
Version=1.5
Name=pulse solver daemon
Comment={DESCRIPTION} (written by pulse-server install-autostart)
TryExec={_escape_string(command.program[0])}
Exec={exec_line(command.argv)}
Terminal=false
NoDisplay=true
Hidden=false
X-GNOME-Autostart-enabled=true
"""


def install(command: LaunchCommand, say: Say, *, dry_run: bool = False) -> Path:
    path = entry_path()
    if write_entry(path, render(command).encode("utf-8"), say, dry_run):
        say(f"wrote {path}: your desktop session starts the daemon at the next login "
            "(start it now with `pulse-server run`).")
    return path


def uninstall(say: Say, *, dry_run: bool = False) -> bool:
    return remove_file(entry_path(), say, dry_run)
