"""Windows: a `pulse-server.cmd` in the user's Startup folder that launches the daemon with pythonw.exe.

pythonw.exe has no console, so nothing stays open after login; the .cmd only shows for the instant it takes
`start` to hand the daemon off (a batch file waits for a program it runs directly, even a windowless one).
A .cmd needs neither pywin32 (a .lnk) nor VBScript, which Windows is phasing out.
"""

from __future__ import annotations

import os
from pathlib import Path

from .common import DESCRIPTION, SERVICE_NAME, AutostartError, LaunchCommand, Say, remove_file, write_entry

# Characters cmd.exe treats specially outside quotes, plus what the C runtime splits arguments on.
_SPECIAL = set(" \t&|<>^(),;=%!")


def startup_dir() -> Path:
    appdata = os.environ.get("APPDATA")
    if not appdata:
        raise AutostartError("APPDATA is not set: cannot find the Startup folder")
    return Path(appdata) / "Microsoft" / "Windows" / "Start Menu" / "Programs" / "Startup"


def entry_path() -> Path:
    return startup_dir() / f"{SERVICE_NAME}.cmd"


def quote_arg(arg: str) -> str:
    """One argument as both cmd.exe and the C runtime's argv parser read it back unchanged.

    Inside double quotes cmd only expands `%` (written `%%` in a batch file); the C runtime takes
    backslashes literally except before a quote, so trailing ones are doubled before the closing quote.
    A double quote itself has no safe spelling through both parsers, so it is refused.
    """
    if '"' in arg:
        raise AutostartError(f"cannot put a double quote into a Windows autostart command: {arg!r}")
    if arg and not (_SPECIAL & set(arg)):
        return arg
    body = arg.replace("%", "%%")
    trailing = len(body) - len(body.rstrip("\\"))
    return '"' + body + "\\" * trailing + '"'


def render(command: LaunchCommand) -> str:
    line = " ".join(quote_arg(a) for a in command.argv)
    lines = [
        "@echo off",
        f"rem {DESCRIPTION}, started at login.",
        "rem Written by `pulse-server install-autostart`; remove with `pulse-server uninstall-autostart`.",
        "setlocal DisableDelayedExpansion",
    ]
    if not line.isascii():
        lines.append("chcp 65001 >nul")  # the rest of this UTF-8 file names a non-ASCII path
    lines += [
        'cd /d "%USERPROFILE%"',
        f'start "{SERVICE_NAME}" {line}',
    ]
    return "\r\n".join(lines) + "\r\n"


def install(command: LaunchCommand, say: Say, *, dry_run: bool = False) -> Path:
    path = entry_path()
    if write_entry(path, render(command).encode("utf-8"), say, dry_run):
        say(f"wrote {path}: Windows starts the daemon at your next login (start it now with `pulse-server run`).")
    return path


def uninstall(say: Say, *, dry_run: bool = False) -> bool:
    return remove_file(entry_path(), say, dry_run)
