"""`pulse-server install-plugin {gimp,krita}` / `uninstall-plugin {gimp,krita}`."""

from __future__ import annotations

import argparse
from pathlib import Path

from protocol.endpoint import APP

EDITORS = ("gimp", "krita")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "install-plugin", help="install the GIMP 3 or Krita plug-in for this user",
        description="Copy the editor plug-in and the protocol client it needs into the editor's per-user "
                    "plug-in folder. Where the editor bundles its own Python (Windows, macOS, Flatpak, "
                    "AppImage) pyzmq and msgpack wheels for that Python are downloaded into the plug-in; with "
                    "a system Python the installer checks they import and names the packages to install.")
    p.add_argument("editor", choices=EDITORS)
    p.add_argument("--dest", type=Path, default=None, metavar="DIR",
                   help="plug-in folder to install into (default: the editor's per-user folder)")
    p.add_argument("--target", choices=("auto", "linux", "flatpak", "windows", "macos"), default="auto",
                   help="which kind of editor installation to install for (default: detect; Krita: auto, linux "
                        "or flatpak)")
    p.add_argument("--python-version", default=None, metavar="X.Y",
                   help="the editor's bundled Python (GIMP on Windows/macOS/Flatpak; Krita's AppImage, Windows, "
                        "macOS, Flatpak builds): vendor pyzmq/msgpack wheels for CPython X.Y")
    p.add_argument("--flatpak-override", action="store_true",
                   help="Flatpak editors: also run `flatpak override --user --filesystem=xdg-run/"
                        f"{APP}:create <app>` so the sandbox sees the daemon (implies --target flatpak)")
    p.set_defaults(func=_install)

    u = subparsers.add_parser("uninstall-plugin", help="remove the GIMP 3 or Krita plug-in",
                              description="Remove the plug-in folder installed by install-plugin.")
    u.add_argument("editor", choices=EDITORS)
    u.add_argument("--dest", type=Path, default=None, metavar="DIR")
    u.add_argument("--target", choices=("auto", "linux", "flatpak", "windows", "macos"), default="auto")
    u.set_defaults(func=_uninstall)


def _install(args: argparse.Namespace) -> int:
    from ..editors import common
    from ..errors import PulseError

    target = args.target
    if args.flatpak_override:
        if target not in ("auto", "flatpak"):
            raise PulseError(f"--flatpak-override is for Flatpak editors, not --target {target}", code="BAD_TARGET")
        target = "flatpak"
    if args.editor == "krita":
        from ..editors import krita

        if target not in ("auto", "linux", "flatpak"):
            raise PulseError(f"Krita: --target is auto, linux or flatpak (not {target}); install on that machine",
                             code="BAD_TARGET")
        flatpak = {"auto": None, "linux": False, "flatpak": True}[target]
        dest = args.dest if args.dest is not None or flatpak is None else krita.pykrita_dir(flatpak)
        sandboxed = flatpak or (flatpak is None
                                and krita.is_flatpak_dir(dest if dest is not None else krita.pykrita_dir()))
        python = (krita.bundled_python(args.python_version) if args.python_version
                  else krita.detect_python(flatpak=sandboxed))
        print(f"installed the Krita plug-in into {krita.install(dest, python=python)}")
        if sandboxed:
            common.flatpak_access(krita.FLATPAK_ID, "Krita", apply=args.flatpak_override)
        return 0
    from ..editors import gimp

    report = gimp.install_plugin(args.dest, target=target, python_version=args.python_version)
    print(f"installed the GIMP 3 plug-in into {report.dest}")
    if report.vendored:
        print(f"bundled for GIMP's own Python: {', '.join(report.vendored)}")
    if report.missing:
        print("GIMP's Python cannot import zmq/msgpack yet: install "
              f"{' '.join(report.missing)} with your package manager (e.g. apt install {' '.join(report.missing)})")
    if report.target == "flatpak":
        common.flatpak_access(gimp.FLATPAK_ID, "GIMP", apply=args.flatpak_override)
    print("restart GIMP, then use Filters ▸ Enhance ▸ Depixelate Face (PULSE)… with `pulse-server run` going")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    if args.editor == "krita":
        from ..editors import krita

        krita.uninstall(args.dest if args.dest is not None or args.target != "flatpak" else krita.pykrita_dir(True))
        print("removed the Krita plug-in")
        return 0
    from ..editors import gimp

    removed = gimp.uninstall_plugin(args.dest, target=args.target)
    print(f"removed {removed}" if removed else "the GIMP plug-in was not installed; nothing to remove")
    return 0
