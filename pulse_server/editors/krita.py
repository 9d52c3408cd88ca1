"""Install the Krita plug-in: `pulse-server install-plugin krita [--dest DIR]`.

Krita loads Python plug-ins from `<resources>/pykrita/`: a `<name>.desktop` file (ServiceTypes=Krita/PythonPlugin,
X-KDE-Library=<name>) next to the `<name>/` package, enabled in Settings ▸ Configure Krita ▸ Python Plugin
Manager (kritarc `[python] enable_<name>=true`). Action files (menu text, shortcuts) live in
`<resources>/actions/`. Into the package the installer adds the `protocol` client (`_client/protocol`),
pyzmq + msgpack wheels for Krita's own Python where it bundles one (`_client/pyXY/_vendor`: AppImage,
Windows, macOS — 3.10, 3.13 in recent builds) and `server.json`, the command the docker's Start button runs.
With a distribution's Krita (system Python) it checks that zmq and msgpack import and names the packages.

`--dest DIR` is the `pykrita` folder to install into; the action file goes to its sibling `actions/` when
DIR is named `pykrita` (Krita's layout) and stays inside the package otherwise.
Override the Python detection with `--python-version X.Y` (Krita's bundled CPython) or PULSE_KRITA_PYTHON:
`system`, a path to a python, or a version (`3.10`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PulseError
from .common import check_python_version, copy_client, missing_system_deps, replace_tree, vendor_or_warn, xdg_base

NAME = "pulse_depixelate"
FLATPAK_ID = "org.kde.krita"
# Krita's bundled CPython when we cannot read it from an installation: 5.1/5.2 ship 3.10, newer builds 3.13.
DEFAULT_BUNDLED = ("3.10", "3.13")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", "_client", "server.json", "*.action")


@dataclass
class PythonTarget:
    """Which Python runs Krita's plug-ins: the system one (check it) or bundled ones (vendor wheels)."""

    kind: str  # "system" | "bundled"
    python: str = "python3"  # system: the interpreter to check
    versions: tuple[str, ...] = ()  # bundled: CPython versions to vendor for
    platforms: list[str] = field(default_factory=list)  # bundled: wheel platform tags


def plugin_source() -> Path:
    import krita_plugin

    src = Path(next(iter(krita_plugin.__path__))).resolve()
    if not (src / NAME / "__init__.py").is_file() or not (src / f"{NAME}.desktop").is_file():
        raise PulseError(f"the Krita plug-in is missing from this installation ({src})", code="NO_PLUGIN")
    return src


def flatpak_resources_dir() -> Path:
    """The Flatpak's resource folder: its XDG_DATA_HOME is ~/.var/app/org.kde.krita/data."""
    return Path.home() / ".var/app" / FLATPAK_ID / "data/krita"


def is_flatpak_dir(pykrita: Path) -> bool:
    """Whether a pykrita folder belongs to the Flatpak (lies under ~/.var/app/org.kde.krita)."""
    sandbox = Path.home() / ".var/app" / FLATPAK_ID
    return Path(os.path.abspath(Path(pykrita).expanduser())).is_relative_to(os.path.abspath(sandbox))


def resources_dir(flatpak: bool | None = None) -> Path:
    """Krita's per-user resource folder (QStandardPaths::AppDataLocation for the app "krita").

    `flatpak` True/False picks the Flatpak's or the native one on Linux; None detects."""
    home = Path.home()
    if flatpak:
        return flatpak_resources_dir()
    if sys.platform.startswith("win"):
        return Path(os.environ.get("APPDATA") or home / "AppData/Roaming") / "krita"
    if sys.platform == "darwin":
        return home / "Library/Application Support/krita"
    native = xdg_base("XDG_DATA_HOME", home / ".local/share") / "krita"
    sandboxed = flatpak_resources_dir()
    if flatpak is None and sandboxed.parent.parent.is_dir() and not native.exists() and not shutil.which("krita"):
        return sandboxed  # only the Flatpak is installed
    return native


def pykrita_dir(flatpak: bool | None = None) -> Path:
    return resources_dir(flatpak) / "pykrita"


# ---------------------------------------------------------------------------------------------- Krita's Python


def _linux_system_python() -> str | None:
    """The python3.X a distribution Krita embeds (read from its pykrita plug-in), or None without one."""
    for pattern in ("/usr/lib/*/kritaplugins/kritapykrita.so", "/usr/lib*/kritaplugins/kritapykrita.so",
                    "/usr/lib*/qt5/plugins/krita/kritapykrita.so", "/usr/lib/*/qt5/plugins/krita/kritapykrita.so"):
        for lib in sorted(Path("/").glob(pattern.lstrip("/"))):
            found = re.search(rb"libpython(3\.\d+)", lib.read_bytes())
            if found:  # the distribution's libpython: its interpreter is the distribution's too (not pyenv's)
                exe = f"python{found.group(1).decode()}"
                return str(Path("/usr/bin") / exe) if (Path("/usr/bin") / exe).exists() else shutil.which(exe) or exe
    krita = shutil.which("krita")
    if krita and Path(krita).resolve().is_relative_to("/usr"):
        return "/usr/bin/python3" if Path("/usr/bin/python3").exists() else shutil.which("python3") or "python3"
    return None


def _bundled_versions(candidates: list[Path]) -> tuple[str, ...]:
    """Python versions found as pythonXY.dll / Python.framework/Versions/X.Y / libpythonX.Y under Krita."""
    found: set[str] = set()
    for root in candidates:
        if not root.is_dir():
            continue
        for path in list(root.glob("bin/python3*.dll")) + list(root.glob("Contents/Frameworks/Python.framework/Versions/3.*")):
            m = re.search(r"python(3)(\d+)\.dll$", path.name, re.I) or re.fullmatch(r"(3)\.(\d+)", path.name)
            if m:
                found.add(f"{m.group(1)}.{m.group(2)}")
    return tuple(sorted(found)) or DEFAULT_BUNDLED


def _machine_tags() -> list[str]:
    arch = platform.machine().lower()
    if sys.platform.startswith("win"):
        return ["win_arm64"] if arch in ("arm64", "aarch64") else ["win_amd64"]
    if sys.platform == "darwin":
        return ["macosx_11_0_arm64", "macosx_10_9_universal2", "macosx_10_15_universal2", "macosx_10_9_x86_64"]
    arch = "aarch64" if arch in ("arm64", "aarch64") else "x86_64"
    return [f"manylinux_2_28_{arch}", f"manylinux_2_17_{arch}", f"manylinux2014_{arch}"]


def bundled_python(version: str) -> PythonTarget:
    """Krita's own CPython `version` (`--python-version X.Y`) on this machine's wheel platform."""
    return PythonTarget("bundled", versions=(check_python_version(version),), platforms=_machine_tags())


def detect_python(flatpak: bool = False) -> PythonTarget:
    """Which Python runs Krita's plug-ins here (PULSE_KRITA_PYTHON overrides); the Flatpak has its own."""
    override = os.environ.get("PULSE_KRITA_PYTHON", "").strip()
    if override == "system":
        return PythonTarget("system", python=shutil.which("python3") or "python3")
    if override and re.fullmatch(r"3\.\d+", override):
        return bundled_python(override)
    if override:
        return PythonTarget("system", python=override)
    if sys.platform.startswith("win"):
        roots = [Path(os.environ.get(v, "")) / "Krita (x64)" for v in ("ProgramFiles", "ProgramW6432")]
        return PythonTarget("bundled", versions=_bundled_versions(roots), platforms=_machine_tags())
    if sys.platform == "darwin":
        roots = [Path("/Applications/krita.app"), Path.home() / "Applications/krita.app"]
        return PythonTarget("bundled", versions=_bundled_versions(roots), platforms=_machine_tags())
    system = None if flatpak else _linux_system_python()
    if system:
        return PythonTarget("system", python=system)
    # No distribution Krita: an AppImage (or the Flatpak), each with its own CPython.
    return PythonTarget("bundled", versions=DEFAULT_BUNDLED, platforms=_machine_tags())


# ---------------------------------------------------------------------------------------------- install


def _server_command() -> list[str]:
    """How the docker's Start button runs `pulse-server` from this very installation (the plug-in adds `run`)."""
    from protocol.launch import server_program

    return list(server_program())


def _actions_dir(pykrita: Path) -> Path | None:
    return pykrita.parent / "actions" if pykrita.name == "pykrita" else None


def install(dest: Path | None = None, *, python: PythonTarget | None = None) -> Path:
    """Copy the plug-in into `dest` (default: Krita's per-user pykrita folder); returns the package folder."""
    src = plugin_source()
    pykrita = Path(dest).expanduser() if dest is not None else pykrita_dir()
    python = python or detect_python()
    if python.kind == "bundled":  # refuse a bad version before touching the pykrita folder
        python = dataclasses.replace(python, versions=tuple(check_python_version(v) for v in python.versions))
    pykrita.mkdir(parents=True, exist_ok=True)
    target = pykrita / NAME
    replace_tree(src / NAME, target, ignore=_IGNORE)
    shutil.copy2(src / f"{NAME}.desktop", pykrita / f"{NAME}.desktop")
    # The action file (menu text, shortcut slot) belongs in <resources>/actions/ only: Krita reads it from there.
    actions = _actions_dir(pykrita) or target
    actions.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src / NAME / f"{NAME}.action", actions / f"{NAME}.action")
    client = target / "_client"
    copy_client(client)
    (target / "server.json").write_text(json.dumps({"command": _server_command()}, indent=1) + "\n", "utf-8")

    if python.kind == "system":
        missing = missing_system_deps(python.python)
        if missing:
            print(f"Krita's Python ({python.python}) cannot import zmq/msgpack yet: install {' '.join(missing)} "
                  f"(e.g. `sudo apt install {' '.join(missing)}`), then restart Krita.")
    else:
        for version in python.versions:
            digits = version.replace(".", "")
            fix = f"pulse-server install-plugin krita --python-version {version}"
            fix += f" --dest {shlex.quote(str(pykrita))}" if dest is not None else ""
            # Offline: the plug-in still loads and its docker names what Krita's Python lacks.
            wheels = vendor_or_warn(client / f"py{digits}", version, python.platforms, editor="Krita",
                                    fix_command=fix)
            if wheels:
                print(f"bundled for Krita's Python {version}: {', '.join(wheels)}")
    print("Enable “PULSE Depixelate” in Krita: Settings ▸ Configure Krita ▸ Python Plugin Manager, restart Krita, "
          "then show Settings ▸ Dockers ▸ PULSE Depixelate (or use Tools ▸ Scripts ▸ Depixelate Face (PULSE)).")
    return target


def uninstall(dest: Path | None = None) -> None:
    """Remove what install() put there (idempotent)."""
    pykrita = Path(dest).expanduser() if dest is not None else pykrita_dir()
    shutil.rmtree(pykrita / NAME, ignore_errors=True)
    actions = _actions_dir(pykrita)
    for path in (pykrita / f"{NAME}.desktop", *([actions / f"{NAME}.action"] if actions else [])):
        try:
            path.unlink()
        except FileNotFoundError:
            pass
