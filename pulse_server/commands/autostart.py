"""`pulse-server install-autostart` / `uninstall-autostart`: start the daemon at login (see pulse_server.service)."""

from __future__ import annotations

import argparse
import os

METHOD_CHOICES = ("auto", "systemd", "xdg", "launchd", "windows")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "install-autostart",
        help="start the daemon at login (systemd user unit, XDG autostart, LaunchAgent or Startup folder)",
        description="Write a login autostart entry that runs `pulse-server run` with this Python, and enable "
                    "it where the OS has a service manager. Re-running it replaces the entry.")
    p.add_argument("--method", choices=METHOD_CHOICES, default="auto",
                   help="auto: systemd when a systemd user session is reachable, else XDG autostart on "
                        "Linux; launchd on macOS; windows on Windows")
    p.add_argument("--endpoint", default=None,
                   help="endpoint the daemon binds (default: its per-user default; $PULSE_ENDPOINT if set now)")
    p.add_argument("--model", "--weights", dest="weights", default=None, metavar="NAME|PATH",
                   help="face model name or checkpoint (default: ffhq-1024 on a GPU, ffhq-256 without one)")
    p.add_argument("--device", default=None, metavar="auto|cpu|cuda|cuda:N|mps|xpu", help="solver device (default: auto)")
    p.add_argument("--dry-run", action="store_true", help="print what would be written and run; change nothing")
    p.set_defaults(func=_install)

    u = subparsers.add_parser("uninstall-autostart", help="stop starting the daemon at login",
                              description="Disable and remove the autostart entry (all methods of this OS "
                                          "with --method auto). Succeeds when there is nothing to remove.")
    u.add_argument("--method", choices=METHOD_CHOICES, default="auto")
    u.add_argument("--dry-run", action="store_true", help="print what would be removed; change nothing")
    u.set_defaults(func=_uninstall)


def _install(args: argparse.Namespace) -> int:
    from ..service import DaemonOptions, install
    from ..service.common import resolve_weights

    # A login session does not see this shell's PULSE_ENDPOINT, so an endpoint set now is written down.
    endpoint = args.endpoint or os.environ.get("PULSE_ENDPOINT") or None
    options = DaemonOptions(endpoint=endpoint, weights=resolve_weights(args.weights), device=args.device)
    result = install(args.method, options, dry_run=args.dry_run)
    verb = "would run" if args.dry_run else "runs"
    print(f"autostart ({result.method}) {verb}: {' '.join(result.command.argv)}")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    from ..service import uninstall

    uninstall(args.method, dry_run=args.dry_run)
    return 0
