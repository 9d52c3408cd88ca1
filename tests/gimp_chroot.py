"""A cached Debian 13 (trixie) chroot with GIMP 3 and Krita 5.2 for the real-editor tests.

Debian 12 (the CI host) has no GIMP 3 and an older Krita (5.1.5); Debian 13 ships GIMP 3.0 with its Python 3
plug-in support and Krita 5.2.9, the Krita most users run. We build a minimal trixie root once with
`debootstrap`, install both editors there, and keep it outside the clone (`PULSE_GIMP_CHROOT`, default
/var/cache/pulse-ci/gimp-trixie) so that later runs start in seconds. A root cached before a package was added
to PACKAGES gets the missing ones installed in place instead of being rebuilt.

Safety rules, because a chroot with a bind-mounted /dev must never be `rm -rf`ed:
- /proc and /dev are mounted only inside `mounted()` and unmounted in its `finally`;
- `remove_tree()` refuses to delete a tree that still has anything mounted below it.

The mirror comes from the host's APT configuration (never a host name written here).

    python -m tests.gimp_chroot build      # build (or reuse) the chroot, print timings
    python -m tests.gimp_chroot status
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "trixie"
# GIMP 3 with its GObject-introspection Python API, the plug-in's two dependencies, and for the one GUI test
# (the interactive dialog) a virtual X server plus xdotool to press its OK button.
GIMP_PACKAGES = ("gimp", "gir1.2-gimp-3.0", "python3-gi", "python3-zmq", "python3-msgpack", "xvfb", "xdotool")
# Krita 5.2 with what its Python plug-ins need: PyQt5 (only a Recommends of krita, and recommends are not
# installed), xauth for xvfb-run, and one font so that Qt lays real text out in the docker.
KRITA_PACKAGES = ("krita", "python3-pyqt5", "xauth", "fonts-dejavu-core")
PACKAGES = GIMP_PACKAGES + KRITA_PACKAGES
DEFAULT_ROOT = Path("/var/cache/pulse-ci/gimp-trixie")
MARKER = ".pulse-chroot.json"  # written last: a root without it is incomplete
DEB822_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
LEGACY_SOURCES = Path("/etc/apt/sources.list")
GIMP_CONSOLE = "/usr/bin/gimp-console-3.0"
KRITA = "/usr/bin/krita"


class ChrootUnavailable(RuntimeError):
    """The chroot cannot be built here (not root, no debootstrap, no mirror, no network); tests skip."""


def chroot_root() -> Path:
    return Path(os.environ.get("PULSE_GIMP_CHROOT") or DEFAULT_ROOT)


# --------------------------------------------------------------------------------------------- mirror


def debian_mirror(deb822: Path = DEB822_SOURCES, legacy: Path = LEGACY_SOURCES) -> str:
    """The host's main Debian archive URI (not the security archive), from deb822 or one-line sources."""
    env = os.environ.get("PULSE_DEBIAN_MIRROR")
    if env:
        return env
    candidates: list[str] = []
    if deb822.is_file():
        for stanza in re.split(r"\n\s*\n", deb822.read_text()):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, v in (line.split(":", 1) for line in stanza.splitlines() if ":" in line and not line.startswith("#"))
            )
            suites = fields.get("suites", "").split()
            if fields.get("uris") and not any(s.endswith("-security") for s in suites):
                candidates += fields["uris"].split()
    if not candidates and legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb" and not parts[2].endswith("-security"):
                uri = next((p for p in parts[1:] if "://" in p), None)
                if uri:
                    candidates.append(uri)
    candidates = [c for c in candidates if "security" not in c]
    if not candidates:
        raise ChrootUnavailable(f"no Debian mirror in {deb822} or {legacy} (set PULSE_DEBIAN_MIRROR)")
    return candidates[0].rstrip("/")


# --------------------------------------------------------------------------------------------- mounts


def mounts_below(root: Path) -> list[str]:
    """Mount points at or below `root` (from /proc/self/mountinfo; octal escapes decoded)."""
    real = os.path.realpath(root)
    found = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].encode().decode("unicode_escape")
            if point == real or point.startswith(real.rstrip("/") + "/"):
                found.append(point)
    return found


def _umount(point: str) -> None:
    if subprocess.run(["umount", point], capture_output=True).returncode != 0:
        # Busy (a straggling process): detach lazily so nothing stays reachable through the chroot.
        subprocess.run(["umount", "-l", point], capture_output=True)


def unmount_all(root: Path) -> None:
    for point in sorted(mounts_below(root), key=len, reverse=True):  # deepest first
        _umount(point)


def _mount_lock(root: Path):
    """Held while anything runs inside `root` (and while `root` is deleted): an open, flock()ed file."""
    lock = open(root.parent / f".{root.name}.mount.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    return lock


@contextlib.contextmanager
def mounted(root: Path, shared: Sequence[Path] = ()) -> Iterator[Path]:
    """/proc and a bind of /dev inside `root`, for exactly as long as the `with` block runs.

    Each host folder in `shared` is bound at the same path inside, so paths written into a test's config
    mean the same file on both sides; the mount points this creates are removed again (empty folders only).
    Serialised per root by a lock file: a second user must not unmount under the first one's feet.
    """
    lock = _mount_lock(root)
    made: list[Path] = []
    try:
        binds = [(root / "proc", ["mount", "-t", "proc", "proc"]), (root / "dev", ["mount", "--bind", "/dev"])]
        binds += [(root / Path(host).resolve().relative_to("/"), ["mount", "--bind", str(Path(host).resolve())])
                  for host in shared]
        for target, cmd in binds:
            made += [p for p in (target, *target.parents) if p.is_relative_to(root) and not p.exists()]
            target.mkdir(parents=True, exist_ok=True)
            if os.path.ismount(target):
                continue  # left over from a killed run: reuse it, the finally still unmounts it
            subprocess.run([*cmd, str(target)], check=True, capture_output=True)
        yield root
    finally:
        unmount_all(root)
        for path in sorted(set(made), key=lambda p: len(p.parts), reverse=True):
            if path not in (root / "proc", root / "dev") and not os.path.ismount(path):
                with contextlib.suppress(OSError):
                    path.rmdir()  # only ever an empty mount point: rmdir refuses anything else
        lock.close()  # releases the flock


def remove_tree(root: Path) -> None:
    """rm -rf `root`, but never through a live mount (that would wipe the host's /dev)."""
    if not root.exists():
        return
    unmount_all(root)
    live = mounts_below(root)
    if live:
        raise RuntimeError(f"refusing to delete {root}: still mounted: {', '.join(live)}")
    shutil.rmtree(root)


# --------------------------------------------------------------------------------------------- build


def _check_can_build() -> None:
    if os.geteuid() != 0:
        raise ChrootUnavailable("building the Debian 13 editors chroot needs root (debootstrap, chroot, mount)")
    if not shutil.which("debootstrap"):
        raise ChrootUnavailable("debootstrap is not installed (apt-get install debootstrap)")


def _marker(root: Path) -> dict | None:
    try:
        return json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _packages_fields() -> dict[str, list[str]]:
    """The marker's package lists. GIMP's stay alone under "packages", as before Krita joined: a checkout
    from before then compares that list for equality, and would otherwise delete and rebuild a shared root."""
    return {"packages": list(GIMP_PACKAGES), "krita_packages": list(KRITA_PACKAGES)}


def missing_packages(root: Path) -> list[str]:
    """PACKAGES a complete root was built without (it predates them); all of them for an incomplete root."""
    info = _marker(root) or {}
    have = set(info.get("packages", ())) | set(info.get("krita_packages", ()))
    return [p for p in PACKAGES if p not in have]


def is_ready(root: Path | None = None) -> bool:
    root = root or chroot_root()
    return (not missing_packages(root) and (root / GIMP_CONSOLE.lstrip("/")).exists()
            and (root / KRITA.lstrip("/")).exists())


def _write_marker(root: Path, info: dict) -> None:
    tmp = root / (MARKER + ".tmp")
    tmp.write_text(json.dumps(info))
    tmp.rename(root / MARKER)  # atomic: a reader sees the old marker or the new one


def _run_logged(cmd: Sequence[str], log, timeout: float) -> None:
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(list(cmd), stdout=log, stderr=subprocess.STDOUT, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed with exit code {proc.returncode} (log: {log.name})")


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def chroot_env() -> dict[str, str]:
    return {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "LANG": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
        "HOME": "/root",
    }


def build(root: Path | None = None, *, mirror: str | None = None, timeout: float = 3000) -> dict:
    """Build the chroot unless a complete one is cached; returns {"cached": bool, "seconds": float, ...}.

    Serialised by a lock file next to the root, so two test sessions never debootstrap the same tree.
    The tree is built under `<root>.partial` and renamed at the end: an interrupted build never looks ready.
    """
    root = root or chroot_root()
    t0 = time.monotonic()
    if is_ready(root):
        return {"cached": True, "seconds": 0.0, "root": str(root)}
    _check_can_build()
    mirror = mirror or debian_mirror()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_ready(root):  # someone else finished while we waited
            return {"cached": True, "seconds": time.monotonic() - t0, "root": str(root)}
        if _marker(root) is not None and (root / GIMP_CONSOLE.lstrip("/")).exists():
            return _add_packages(root, mirror, timeout, t0)
        partial = root.with_name(root.name + ".partial")
        remove_tree(partial)
        if root.exists():  # never under an editor that another test is running in it (remove_tree unmounts)
            with _mount_lock(root):
                remove_tree(root)
        log_path = root.with_name(root.name + ".log")
        with open(log_path, "w") as log:
            timings = {}
            t = time.monotonic()
            try:
                _run_logged(["debootstrap", "--variant=minbase", SUITE, str(partial), mirror], log, timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                unmount_all(partial)  # debootstrap's second stage mounts /proc itself
                raise ChrootUnavailable(f"debootstrap {SUITE} from {mirror} failed: {exc}; {_tail(log_path)}") from exc
            timings["debootstrap_s"] = round(time.monotonic() - t, 1)
            # The chroot shares the host's network namespace; it needs the host's resolver and APT tweaks.
            shutil.copy2("/etc/resolv.conf", partial / "etc/resolv.conf")
            for conf in Path("/etc/apt/apt.conf.d").glob("*"):
                if conf.is_file() and "proxy" in conf.read_text(errors="replace").lower():
                    shutil.copy2(conf, partial / "etc/apt/apt.conf.d" / conf.name)
            t = time.monotonic()
            try:
                with mounted(partial):
                    _apt_install(partial, PACKAGES, log, timeout)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:  # typically the registry is unreachable
                raise ChrootUnavailable(f"installing the editors in the {SUITE} chroot failed: {exc}; "
                                        f"{_tail(log_path)}") from exc
            timings["apt_s"] = round(time.monotonic() - t, 1)
        info = {**_packages_fields(), "suite": SUITE, "built": time.time(), **timings}
        _write_marker(partial, info)
        if mounts_below(partial):
            raise RuntimeError(f"{partial} still has mounts after the build")
        partial.rename(root)
        return {"cached": False, "seconds": round(time.monotonic() - t0, 1), "root": str(root), **timings}


def _apt_install(root: Path, packages: Sequence[str], log, timeout: float) -> None:
    base = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in chroot_env().items())]
    _run_logged([*base, "apt-get", "update", "-q"], log, timeout)
    _run_logged([*base, "apt-get", "install", "-y", "-q", "--no-install-recommends", *packages], log, timeout)
    _run_logged([*base, "apt-get", "clean"], log, timeout)


def _add_packages(root: Path, mirror: str, timeout: float, t0: float) -> dict:
    """Install the PACKAGES a cached root lacks, in place (caller holds the build lock).

    Under `mounted()`, whose lock also serialises this with the tests that run an editor in the root."""
    missing = missing_packages(root)
    log_path = root.with_name(root.name + ".log")
    with open(log_path, "a") as log:
        try:
            with mounted(root):
                _apt_install(root, missing, log, timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            raise ChrootUnavailable(f"adding {' '.join(missing)} to the {SUITE} chroot failed: {exc}; "
                                    f"{_tail(log_path)}") from exc
    info = {**(_marker(root) or {}), **_packages_fields(), "added": missing,
            "add_s": round(time.monotonic() - t0, 1)}
    _write_marker(root, info)
    return {"cached": False, "upgraded": True, "seconds": info["add_s"], "root": str(root), "added": missing}


def gimp_version(root: Path | None = None) -> str:
    root = root or chroot_root()
    with mounted(root):
        out = subprocess.run(
            ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in chroot_env().items()),
             GIMP_CONSOLE, "--version"],
            capture_output=True, text=True, timeout=120,
        )
    return out.stdout.strip()


def gimp_batch(root: Path, script: Path, *, home: Path, env: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the Python file `script` (a path inside the chroot) in headless GIMP 3: exit 64 on an exception.

    HOME is `home` (inside the chroot), so GIMP reads plug-ins from home/.config/GIMP/3.0/plug-ins and writes
    its profile there, never into the cached tree's /root. /proc and /dev are mounted only for the run.
    """
    inner_env = {**chroot_env(), "HOME": str(home), "XDG_CONFIG_HOME": f"{home}/.config",
                 "XDG_CACHE_HOME": f"{home}/.cache", "XDG_DATA_HOME": f"{home}/.local/share",
                 "GEGL_SWAP": f"{home}/.cache/gegl-swap", **(env or {})}
    code = f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))"
    cmd = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in inner_env.items()),
           GIMP_CONSOLE, "-i", "--no-fonts", "--batch-interpreter", "python-fu-eval", "-b", code, "--quit"]
    with mounted(root):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def chroot_command(root: Path, argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """`argv` run inside `root` with exactly `env` (on top of a plain PATH/LANG), as root's chroot(8) does."""
    return ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in {**chroot_env(), **env}.items()),
            *argv]


def free_display(root: Path, first: int = 400) -> int:
    """An X display number free both here and in `root`: Xvfb's socket is also an abstract one, shared by all
    processes of the network namespace, so a lock file in one /tmp does not tell about the other."""
    with open("/proc/net/unix") as fh:
        abstract = fh.read()
    for n in range(first, first + 200):
        if f"@/tmp/.X11-unix/X{n}\n" in abstract + "\n":
            continue
        if any((base / f"tmp/.X{n}-lock").exists() or (base / f"tmp/.X11-unix/X{n}").exists()
               for base in (Path("/"), root)):
            continue
        return n
    raise RuntimeError("no free X display number")


def _free_display(root: Path) -> int:
    for n in range(90, 200):
        if not (root / f"tmp/.X11-unix/X{n}").exists() and not (root / f"tmp/.X{n}-lock").exists():
            return n
    raise RuntimeError("no free X display number")


def gimp_gui_batch(root: Path, script: Path, *, home: Path, dialog_title: str, env: dict[str, str] | None = None,
                   timeout: float = 300, after_dialog=None,
                   before_return=None) -> tuple[subprocess.CompletedProcess, float | None]:
    """Like `gimp_batch`, but the full GIMP GUI on a private Xvfb display, answering one dialog.

    When a window titled `dialog_title` appears, xdotool focuses it and presses Return (the dialog's default
    button, OK); `before_return(x11, display)` runs just before that and `after_dialog(x11, display)` after it,
    if given, where `x11(*argv)` runs a command (xdotool) on that display inside the chroot and `display` is
    its name (":90"; the host reaches it too, through X's abstract socket). Returns GIMP's result and how many seconds after start the dialog appeared.
    Xvfb and GIMP are stopped before /proc and /dev are unmounted.
    """
    with mounted(root):
        display = f":{_free_display(root)}"
        inner_env = {**chroot_env(), "HOME": str(home), "XDG_CONFIG_HOME": f"{home}/.config",
                     "XDG_CACHE_HOME": f"{home}/.cache", "XDG_DATA_HOME": f"{home}/.local/share",
                     "GEGL_SWAP": f"{home}/.cache/gegl-swap", "DISPLAY": display, "NO_AT_BRIDGE": "1",
                     **(env or {})}
        base = ["chroot", str(root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in inner_env.items())]
        code = f"exec(compile(open({str(script)!r}).read(), {str(script)!r}, 'exec'))"
        xvfb = subprocess.Popen([*base, "Xvfb", display, "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        gimp = None
        try:
            deadline = time.monotonic() + 30
            while not (root / f"tmp/.X11-unix/X{display[1:]}").exists():
                if time.monotonic() > deadline or xvfb.poll() is not None:
                    raise RuntimeError(f"Xvfb did not start on {display}")
                time.sleep(0.1)
            t0 = time.monotonic()
            gimp = subprocess.Popen([*base, "gimp-3.0", "--no-splash", "--batch-interpreter", "python-fu-eval",
                                     "-b", code, "--quit"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            seen = None
            while gimp.poll() is None and time.monotonic() - t0 < timeout and seen is None:
                found = subprocess.run([*base, "xdotool", "search", "--name", f"^{dialog_title}"],
                                       capture_output=True, text=True).stdout.split()
                if found:
                    seen = time.monotonic() - t0
                    time.sleep(1.0)  # let GTK map and realise the whole dialog
                    x11 = lambda *argv: subprocess.run([*base, *argv], capture_output=True, text=True, timeout=60)  # noqa: E731
                    if before_return is not None:
                        before_return(x11, display)
                    subprocess.run([*base, "xdotool", "windowfocus", "--sync", found[-1], "key", "Return"],
                                   capture_output=True, timeout=30)
                    if after_dialog is not None:
                        after_dialog(x11, display)
                time.sleep(0.3)
            out, err = gimp.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            return subprocess.CompletedProcess(gimp.args, gimp.returncode, out, err), seen
        finally:
            for proc in (gimp, xvfb):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.wait()


def main(argv: Sequence[str]) -> int:
    cmd = argv[0] if argv else "status"
    root = chroot_root()
    if cmd == "build":
        print(json.dumps(build(root)), flush=True)
        print(gimp_version(root))
        # what the Krita tests get (read from the root's package database: nothing runs inside)
        print(subprocess.run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "krita"],
                             capture_output=True, text=True).stdout.strip())
    elif cmd == "status":
        print(json.dumps({"root": str(root), "ready": is_ready(root), "mounts": mounts_below(root)}))
    elif cmd == "remove":
        remove_tree(root)
    else:
        print("usage: python -m tests.gimp_chroot build|status|remove", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
