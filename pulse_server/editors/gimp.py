"""Install the GIMP 3 plug-in: `pulse-server install-plugin gimp [--dest DIR]`.

GIMP 3 loads `plug-ins/<name>/<name>.py` only if the folder and file share the name and the file is
executable (it silently skips it otherwise). Next to it go `pulse_gimp.py` (the plug-in's logic) and the
`protocol` client. Where GIMP runs on its own bundled Python (Windows, macOS, Flatpak) the installer also
unpacks pyzmq + msgpack wheels for that Python into `_vendor/`; with a distribution's GIMP (system Python) it
checks that zmq and msgpack import and names the packages to install.
"""

from __future__ import annotations

import glob
import os
import shlex
import shutil
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PulseError
from .common import (
    PIP_SOCKET_TIMEOUT_S,
    VENDOR_DIR,
    check_python_version,
    copy_client,
    missing_system_deps,
    replace_tree,
    vendor_or_warn,
    xdg_base,
)

PLUGIN_NAME = "pulse-depixelate"
GIMP_API = "3.0"
FLATPAK_ID = "org.gimp.GIMP"
TARGETS = ("auto", "linux", "flatpak", "windows", "macos")
# Python that GIMP 3.0's own packages bundle, when we cannot read it from an installation.
DEFAULT_BUNDLED_PYTHON = {"windows": "3.12", "macos": "3.10", "flatpak": "3.12"}
PLATFORM_TAGS = {
    "windows": ["win_amd64"],
    "macos": ["macosx_11_0_arm64", "macosx_10_9_universal2", "macosx_10_15_universal2", "macosx_10_9_x86_64"],
    "flatpak": ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"],
}


@dataclass
class InstallReport:
    dest: Path
    target: str
    vendored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # distribution packages to install (system Python)


def plugin_source() -> Path:
    import gimp_plugin

    # __path__, not __file__: an editable install may expose gimp_plugin as a namespace package.
    src = Path(next(iter(gimp_plugin.__path__))).resolve() / PLUGIN_NAME
    if not (src / f"{PLUGIN_NAME}.py").is_file():
        raise PulseError(f"the GIMP plug-in is missing from this installation ({src})", code="NO_PLUGIN")
    return src


def detect_target() -> str:
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    native = shutil.which("gimp-3.0") or shutil.which("gimp")
    flatpak = (Path.home() / ".var/app" / FLATPAK_ID).is_dir()
    return "flatpak" if flatpak and not native else "linux"


def plugins_dir(target: str) -> Path:
    """The per-user GIMP 3 plug-ins folder of each kind of installation."""
    home = Path.home()
    if target == "linux":
        root = xdg_base("XDG_CONFIG_HOME", home / ".config") / "GIMP"
    elif target == "flatpak":
        root = home / ".var/app" / FLATPAK_ID / "config/GIMP"
    elif target == "windows":
        root = Path(os.environ.get("APPDATA") or home / "AppData/Roaming") / "GIMP"
    elif target == "macos":
        root = home / "Library/Application Support/GIMP"
    else:
        raise PulseError(f"unknown GIMP target {target!r} (one of {', '.join(TARGETS[1:])})", code="BAD_TARGET")
    return root / _user_series(root) / "plug-ins"


def _user_series(root: Path) -> str:
    """GIMP names its user folder after its major.minor series (3.0, 3.2, ...) and creates it on first run:
    take the newest 3.x folder that exists, else 3.0 (the folder GIMP 3.0 reads)."""
    series = []
    for d in root.glob("3.*") if root.is_dir() else []:
        minor = d.name[2:]
        if d.is_dir() and minor.isdigit():
            series.append((int(minor), d.name))
    return max(series)[1] if series else GIMP_API


def bundled_python_version(target: str) -> str:
    """Python version of GIMP's bundled interpreter: read from an installation if found, else the default."""
    patterns = {
        # The installer's per-machine and per-user locations (bin\pythonw.exe, lib\python3.X\site-packages).
        "windows": [os.path.join(os.environ.get("ProgramFiles", r"C:\Program Files"), "GIMP 3*", "lib", "python3.*"),
                    os.path.join(os.environ.get("LOCALAPPDATA", str(Path.home() / "AppData/Local")), "Programs",
                                 "GIMP 3*", "lib", "python3.*")],
        "macos": ["/Applications/GIMP*.app/Contents/Resources/lib/python3.*"],
        # GIMP's Flatpak runs on the GNOME runtime's Python.
        "flatpak": [f"{root}/runtime/org.gnome.Platform/x86_64/*/active/files/lib/python3.*"
                    for root in ("/var/lib/flatpak", str(Path.home() / ".local/share/flatpak"))],
    }
    for pattern in patterns.get(target, []):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[-1]).name.removeprefix("python")
    return DEFAULT_BUNDLED_PYTHON[target]


def _make_executable(path: Path) -> None:
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def install_plugin(dest: Path | None = None, *, target: str = "auto", python_version: str | None = None,
                   system_python: str | None = None, pip_timeout: float = PIP_SOCKET_TIMEOUT_S) -> InstallReport:
    """Copy the plug-in folder + protocol client into `dest` (a plug-ins folder); returns what was done.

    For a bundled Python the wheels are vendored; when that fails (offline) the plug-in stays installed and a
    warning on stderr says how to finish (like the Krita installer)."""
    target = detect_target() if target == "auto" else target
    base = Path(dest) if dest is not None else plugins_dir(target)
    version = None
    if target in PLATFORM_TAGS:  # refuse a bad --python-version before touching the plug-ins folder
        version = check_python_version(python_version or bundled_python_version(target))
    folder = base / PLUGIN_NAME
    src = plugin_source()
    replace_tree(src, folder)
    _make_executable(folder / f"{PLUGIN_NAME}.py")
    copy_client(folder)
    report = InstallReport(dest=folder, target=target)
    if version is not None:
        fix = f"pulse-server install-plugin gimp --target {target} --python-version {version}"
        fix += f" --dest {shlex.quote(str(base))}" if dest is not None else ""
        report.vendored = vendor_or_warn(folder, version, PLATFORM_TAGS[target], editor="GIMP", fix_command=fix,
                                         timeout=pip_timeout)
    else:
        # A distribution's GIMP runs plug-ins with /usr/bin/python3 (not whatever python3 is first on PATH).
        system_python = system_python or ("/usr/bin/python3" if Path("/usr/bin/python3").exists() else "python3")
        report.missing = missing_system_deps(system_python)
    return report


def uninstall_plugin(dest: Path | None = None, *, target: str = "auto") -> Path | None:
    """Remove the plug-in folder; returns it, or None when nothing was installed there."""
    target = detect_target() if target == "auto" else target
    folder = (Path(dest) if dest is not None else plugins_dir(target)) / PLUGIN_NAME
    if not folder.exists():
        return None
    shutil.rmtree(folder)
    return folder


# Same shape as the Krita installer (pulse_server.editors.krita): install(dest) -> Path, uninstall(dest).
def install(dest: Path | None = None) -> Path:
    return install_plugin(dest).dest


def uninstall(dest: Path | None = None) -> None:
    uninstall_plugin(dest)


__all__ = ["install", "uninstall", "install_plugin", "uninstall_plugin", "plugins_dir", "InstallReport",
           "VENDOR_DIR"]
