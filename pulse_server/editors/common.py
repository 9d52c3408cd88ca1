"""Helpers shared by the GIMP and Krita installers.

Plug-ins run inside the editor's own Python, which has neither our package nor (usually) pyzmq/msgpack:
- `copy_client` puts the `protocol` package (pure Python, needs only pyzmq + msgpack) next to the plug-in;
- `vendor_wheels` downloads binary pyzmq/msgpack wheels for a *bundled* Python (GIMP/Krita on Windows and
  macOS, Krita's AppImage) with pip and unpacks them into `<dest>/_vendor`, which the plug-in puts on sys.path;
- `vendor_or_warn` is what both installers call: vendor, or (offline, stalled mirror) leave the plug-in installed
  and say clearly what is missing and which command fixes it;
- `missing_system_deps` checks a *system* Python (Linux distribution builds) and names the packages to install;
- `flatpak_access` tells (or, asked to, runs) the `flatpak override` a sandboxed editor needs to see the daemon.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from protocol.endpoint import APP

from ..errors import PulseError

# Import name -> (pip requirement, Debian/Ubuntu/Fedora-style package name) of what the plug-ins need.
CLIENT_DEPS: dict[str, tuple[str, str]] = {
    "zmq": ("pyzmq>=25", "python3-zmq"),
    "msgpack": ("msgpack>=1.0", "python3-msgpack"),
}
VENDOR_DIR = "_vendor"
# pip's per-socket timeout (connect/read) and retries: a mirror that accepts but never answers fails in
# about (1 + retries) * timeout instead of hanging the installer. The whole download has a hard cap as well.
PIP_SOCKET_TIMEOUT_S = 20.0
PIP_RETRIES = 2
PIP_TOTAL_TIMEOUT_S = 300.0
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo")


def xdg_base(var: str, fallback: Path) -> Path:
    """An XDG base directory: `$var` when it is an absolute path, else `fallback`. The XDG Base Directory
    spec says a relative value is invalid and must be ignored (and the editors do ignore it)."""
    value = os.environ.get(var, "")
    return Path(value) if value and os.path.isabs(value) else fallback


def protocol_source() -> Path:
    """The installed `protocol` package (a sibling of pulse_server in this distribution)."""
    import protocol

    return Path(protocol.__file__).resolve().parent


def replace_tree(src: Path, target: Path, ignore: Callable[[str, list[str]], Iterable[str]] = _IGNORE) -> Path:
    """Copy the folder `src` to `target` (parents created), replacing an older copy; caches left out."""
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(src, target, ignore=ignore)
    return target


def copy_client(dest: Path) -> Path:
    """Copy the `protocol` package to `dest/protocol` (replacing an older copy); returns that folder."""
    return replace_tree(protocol_source(), Path(dest) / "protocol")


def _python_tag(python_tag: str) -> tuple[str, str]:
    """'3.12' | '312' | 'cp312' -> ('312', 'cp312')."""
    digits = python_tag.lower().removeprefix("cp").replace(".", "")
    if not digits.isdigit() or len(digits) < 2:
        raise PulseError(f"bad Python version {python_tag!r}: expected e.g. 3.12", code="BAD_PYTHON")
    return digits, f"cp{digits}"


def check_python_version(python_tag: str) -> str:
    """Validate a bundled-Python version before anything is copied; returns it as 'X.Y'."""
    digits, _ = _python_tag(python_tag)
    return f"{digits[0]}.{digits[1:]}"


def vendor_wheels(dest: Path, python_tag: str, platform_tags: list[str], *,
                  timeout: float = PIP_SOCKET_TIMEOUT_S, total_timeout: float = PIP_TOTAL_TIMEOUT_S) -> list[str]:
    """Download pyzmq + msgpack binary wheels for CPython `python_tag` on `platform_tags` and unpack them.

    Wheels are zip files laid out like site-packages, so unpacking into `dest/_vendor` is an install
    (pyzmq's wheels carry libzmq inside: delvewheel/delocate/auditwheel). Returns the wheel file names.
    Uses this interpreter's pip and its configured index (no registry named here). `timeout` is pip's
    per-socket timeout (overrides PIP_DEFAULT_TIMEOUT / pip.conf), `total_timeout` caps the whole download.
    """
    digits, cp = _python_tag(python_tag)
    vendor = Path(dest) / VENDOR_DIR
    with tempfile.TemporaryDirectory(prefix="pulse-wheels-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
               "--only-binary=:all:", "--no-deps", "--implementation", "cp", "--python-version", digits,
               "--abi", cp, "--abi", "abi3", "--abi", "none", "--dest", tmp,
               "--timeout", f"{timeout:g}", "--retries", str(PIP_RETRIES)]
        for tag in platform_tags:
            cmd += ["--platform", tag]
        cmd += [req for req, _ in CLIENT_DEPS.values()]
        where = f"Python {digits[0]}.{digits[1:]} on {', '.join(platform_tags)}"
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=total_timeout)
        except subprocess.TimeoutExpired:
            raise PulseError(f"could not download pyzmq/msgpack wheels for {where}: pip did not finish within "
                             f"{total_timeout:g} s (stalled package index?)", code="VENDOR_FAILED") from None
        if proc.returncode != 0:
            raise PulseError(
                f"could not download pyzmq/msgpack wheels for {where}: "
                f"{(proc.stderr.strip().splitlines() or [f'pip exited with {proc.returncode}'])[-1]}",
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


def vendor_or_warn(dest: Path, version: str, platform_tags: list[str], *, editor: str, fix_command: str,
                   timeout: float = PIP_SOCKET_TIMEOUT_S, total_timeout: float = PIP_TOTAL_TIMEOUT_S) -> list[str]:
    """Vendor the wheels for a bundled Python; when that fails (offline, stalled or missing mirror) keep the
    installed plug-in, which loads anyway and names the missing modules, and warn on stderr how to finish.

    Returns the wheel names, [] after a warning. Other errors (a bad version) still raise."""
    try:
        return vendor_wheels(dest, version, platform_tags, timeout=timeout, total_timeout=total_timeout)
    except PulseError as exc:
        if exc.code != "VENDOR_FAILED":
            raise
        print(vendor_warning(editor, version, exc.message, fix_command), file=sys.stderr)
        return []


def vendor_warning(editor: str, version: str, reason: str, fix_command: str) -> str:
    deps = " and ".join(req.split(">")[0] for req, _ in CLIENT_DEPS.values())
    return (f"warning: the {editor} plug-in is installed, but {deps} for {editor}'s own Python {version} could not "
            f"be vendored into it ({reason}).\n"
            f"  Until they are, the plug-in loads but cannot reach the daemon and says which modules are missing.\n"
            f"  Fix: once the package index is reachable (pip's own settings apply: `pip config list`), run\n"
            f"      {fix_command}\n"
            f"  and restart {editor}.")


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


# ---------------------------------------------------------------------------------------------- Flatpak


def flatpak_override_args(app_id: str) -> list[str]:
    """`flatpak override` that shows the sandbox the host's $XDG_RUNTIME_DIR/pulse-depixelate (the daemon's
    socket and token, protocol.endpoint.runtime_dir); `:create` lets the sandbox see it even when the
    daemon has not created it yet. Without it the sandbox has a private runtime dir and finds no daemon."""
    return ["flatpak", "override", "--user", f"--filesystem=xdg-run/{APP}:create", app_id]


def flatpak_access(app_id: str, editor: str, *, apply: bool = False) -> None:
    """Print the override a Flatpak editor needs, or with `apply` run it (needs `flatpak` on PATH).

    Raises PulseError("FLATPAK_OVERRIDE") when asked to apply and that is impossible or fails; the plug-in is
    installed either way, so the message says what to run by hand."""
    cmd = flatpak_override_args(app_id)
    restart = f"then restart {editor} (quit it fully: `flatpak kill {app_id}`)"
    if not apply:
        print(f"Flatpak {editor}: its sandbox does not see the daemon's socket in $XDG_RUNTIME_DIR/{APP}. "
              f"Allow it once with\n    {shlex.join(cmd)}\n{restart}, or re-run this install with "
              f"--flatpak-override to have it done for you.")
        return
    exe = shutil.which("flatpak")
    if exe is None:
        raise PulseError(f"the plug-in is installed, but `flatpak` is not on PATH, so the override was not set: run "
                         f"`{shlex.join(cmd)}` where flatpak is available, {restart}", code="FLATPAK_OVERRIDE")
    try:
        proc = subprocess.run([exe, *cmd[1:]], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PulseError(f"the plug-in is installed, but `{shlex.join(cmd)}` failed ({exc}): run it yourself, "
                         f"{restart}", code="FLATPAK_OVERRIDE") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise PulseError(f"the plug-in is installed, but `{shlex.join(cmd)}` failed ({why}): run it yourself, "
                         f"{restart}", code="FLATPAK_OVERRIDE")
    print(f"Flatpak {editor} may now reach the daemon (ran `{shlex.join(cmd)}`); {restart}.")
