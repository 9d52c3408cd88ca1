"""Helpers shared by the GIMP and Krita installers.

Plug-ins run inside the editor's own Python, which has neither our package nor (usually) pyzmq/msgpack:
- `copy_client` puts the `protocol` package (pure Python, needs only pyzmq + msgpack) next to the plug-in;
- `vendor_wheels` downloads binary pyzmq/msgpack wheels for a *bundled* Python (GIMP/Krita on Windows and
  macOS, Krita's AppImage) with pip and unpacks them into `<dest>/_vendor`, which the plug-in puts on sys.path;
- `missing_system_deps` checks a *system* Python (Linux distribution builds) and names the packages to install.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import PulseError

# Import name -> (pip requirement, Debian/Ubuntu/Fedora-style package name) of what the plug-ins need.
CLIENT_DEPS: dict[str, tuple[str, str]] = {
    "zmq": ("pyzmq>=25", "python3-zmq"),
    "msgpack": ("msgpack>=1.0", "python3-msgpack"),
}
VENDOR_DIR = "_vendor"
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def protocol_source() -> Path:
    """The installed `protocol` package (a sibling of pulse_server in this distribution)."""
    import protocol

    return Path(protocol.__file__).resolve().parent


def copy_client(dest: Path) -> Path:
    """Copy the `protocol` package to `dest/protocol` (replacing an older copy); returns that folder."""
    dest = Path(dest)
    target = dest / "protocol"
    if target.exists():
        shutil.rmtree(target)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(protocol_source(), target, ignore=_IGNORE)
    return target


def _python_tag(python_tag: str) -> tuple[str, str]:
    """'3.12' | '312' | 'cp312' -> ('312', 'cp312')."""
    digits = python_tag.lower().removeprefix("cp").replace(".", "")
    if not digits.isdigit() or len(digits) < 2:
        raise PulseError(f"bad Python version {python_tag!r}: expected e.g. 3.12", code="BAD_PYTHON")
    return digits, f"cp{digits}"


def vendor_wheels(dest: Path, python_tag: str, platform_tags: list[str]) -> list[str]:
    """Download pyzmq + msgpack binary wheels for CPython `python_tag` on `platform_tags` and unpack them.

    Wheels are zip files laid out like site-packages, so unpacking into `dest/_vendor` is an install
    (pyzmq's wheels carry libzmq inside: delvewheel/delocate/auditwheel). Returns the wheel file names.
    Uses this interpreter's pip and its configured index (no registry named here).
    """
    digits, cp = _python_tag(python_tag)
    vendor = Path(dest) / VENDOR_DIR
    with tempfile.TemporaryDirectory(prefix="pulse-wheels-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
               "--only-binary=:all:", "--no-deps", "--implementation", "cp", "--python-version", digits,
               "--abi", cp, "--abi", "abi3", "--abi", "none", "--dest", tmp]
        for tag in platform_tags:
            cmd += ["--platform", tag]
        cmd += [req for req, _ in CLIENT_DEPS.values()]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise PulseError(
                f"could not download pyzmq/msgpack wheels for Python {digits[0]}.{digits[1:]} on "
                f"{', '.join(platform_tags)}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}",
                code="VENDOR_FAILED",
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if len(wheels) != len(CLIENT_DEPS):
            raise PulseError(f"expected {len(CLIENT_DEPS)} wheels, pip gave {[w.name for w in wheels]}",
                             code="VENDOR_FAILED")
        if vendor.exists():
            shutil.rmtree(vendor)
        vendor.mkdir(parents=True)
        for wheel in wheels:
            with zipfile.ZipFile(wheel) as zf:
                zf.extractall(vendor)
        return [w.name for w in wheels]


def missing_system_deps(python: str) -> list[str]:
    """Distribution package names (python3-zmq, python3-msgpack) whose modules `python` cannot import."""
    missing = []
    for module, (_, package) in CLIENT_DEPS.items():
        try:
            ok = subprocess.run([python, "-c", f"import {module}"], capture_output=True, timeout=60).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if not ok:
            missing.append(package)
    return missing
