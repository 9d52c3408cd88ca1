"""`pulse` (solve / depixelate in-process or via the daemon) and `pulse-server` (daemon, autostart, plug-ins).

Only argument parsing and error mapping live here: the sub-commands are in `pulse_server.commands.*`.
Expected failures (any PulseError or protocol error) print one line on stderr and exit with code 2.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .devices import enable_mps_fallback

# Sub-command modules of each program, in help order.
PULSE_COMMANDS = ("pulse_server.commands.solve", "pulse_server.commands.depixelate")
SERVER_COMMANDS = (
    "pulse_server.commands.server",  # run, status, stop
    "pulse_server.commands.autostart",  # install-autostart, uninstall-autostart
    "pulse_server.commands.plugins",  # install-plugin, uninstall-plugin
)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (naming the option and what it takes, exit 2), like every other
    error of these programs, and which takes values that start with a minus (`--box -5,0,20,20`, `--seed -1`)."""

    def __init__(self, *args, **kwargs) -> None:  # argparse's own signature
        super().__init__(*args, **kwargs)
        # argparse takes "-5,0,20,20" for an unknown option ("expected one argument") unless it looks like a
        # number; no option of ours starts with a digit, so anything that does is a value.
        self._negative_number_matcher = re.compile(r"^-\d")

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _build_parser(prog: str, modules: Sequence[str], description: str) -> argparse.ArgumentParser:
    parser = OneLineParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt as exc:  # Ctrl-C, or commands.daemon_job.Interrupted (SIGINT/SIGTERM)
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", 2)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    except Exception as exc:  # only our own error types are turned into one line
        if _is_user_error(exc):
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
        raise


def _is_user_error(exc: BaseException) -> bool:
    from .errors import PulseError

    if isinstance(exc, PulseError):
        return True
    try:
        from protocol.errors import ProtocolError
    except ImportError:  # the protocol package always ships with the server; be robust anyway
        return False
    return isinstance(exc, ProtocolError)


def main_pulse(argv: Sequence[str] | None = None) -> int:
    enable_mps_fallback()
    parser = _build_parser("pulse", PULSE_COMMANDS, "Depixelate faces with PULSE (imagined faces, not recovered identities).")
    return _run(parser, argv)


def main_server(argv: Sequence[str] | None = None) -> int:
    enable_mps_fallback()
    parser = _build_parser("pulse-server", SERVER_COMMANDS, "The pulse solver daemon and its editor plug-ins.")
    return _run(parser, argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_pulse())
