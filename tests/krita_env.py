"""Helpers for the real-Krita tests: where Krita runs, an isolated Krita profile, the installed plug-in, images.

Two Kritas run the same tests: Debian 12's 5.1.5 on this host, and Debian 13's 5.2.9 (the version most
users have) in the cached chroot that also holds GIMP 3 (tests/gimp_chroot.py). A `KritaRunner` hides the
difference: the test's own folder is bound at the same path inside the chroot, so every path in a config
means the same file on both sides, and the daemon on tcp loopback is reachable from both.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import gimp_chroot
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "krita_scripts"
RUNNERS = ("host", "chroot")  # the ids of the parametrized tests: [host] Krita 5.1, [chroot] Krita 5.2
SCREEN = "-screen 0 1280x1024x24"


def require(*tools: str) -> None:
    """Skip without the tools, with the reason; fail instead where PULSE_REQUIRE_KRITA is set (CI installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = (f"real-Krita test needs {', '.join(missing)} (Debian 12: apt-get install krita xvfb xauth "
                  "python3-pyqt5 python3-zmq python3-msgpack; .ci/run installs them)")
        if os.environ.get("PULSE_REQUIRE_KRITA"):
            pytest.fail(f"PULSE_REQUIRE_KRITA is set but {reason}")
        pytest.skip(reason)


@dataclass(frozen=True)
class KritaRunner:
    """Where one real Krita runs: this host's (`root` None) or the one inside the chroot at `root`."""

    name: str  # one of RUNNERS
    root: Path | None = None

    def require(self, *tools: str) -> None:
        if self.root is None:  # the chroot has them all (gimp_chroot.KRITA_PACKAGES)
            require(*tools)

    def run(self, argv: Sequence[str], env: dict[str, str], *, share: Path, timeout: float,
            gui: bool = False) -> subprocess.CompletedProcess:
        """`argv` (krita, kritarunner …) with `env`, under a virtual X server when `gui`; `share` is the test's
        folder, which the chroot sees at the same path. On timeout the whole process group is killed (Krita,
        Xvfb), before the chroot's mounts go, and subprocess.TimeoutExpired is raised."""
        if self.root is None:
            xvfb = ["xvfb-run", "-a", "-s", SCREEN] if gui else []
            return _run_group([*xvfb, *argv], env, timeout)
        with gimp_chroot.mounted(self.root, [share]):
            # an explicit display number: `xvfb-run -a` only looks at the chroot's /tmp for taken ones
            xvfb = ["xvfb-run", "-n", str(gimp_chroot.free_display(self.root)), "-s", SCREEN] if gui else []
            inner = {k: v for k, v in env.items()
                     if k in ("HOME", "LANG", "LC_ALL", "PYTHONPATH") or k.startswith(("XDG_", "PULSE_", "QT_"))}
            return _run_group(gimp_chroot.chroot_command(self.root, [*xvfb, *argv], inner), None, timeout)


def _run_group(cmd: Sequence[str], env: dict[str, str] | None, timeout: float) -> subprocess.CompletedProcess:
    proc = subprocess.Popen(list(cmd), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:  # our timeout, pytest-timeout's, Ctrl+C: no Krita may outlive the test (or its mounts)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def krita_runner(name: str) -> KritaRunner:
    """The runner for a parametrized test; skips (or fails, see `require`) where that Krita cannot run."""
    if name == "host":
        return KritaRunner("host")
    if os.geteuid() != 0 or shutil.which("debootstrap") is None:
        pytest.skip("Krita 5.2 runs in the Debian 13 chroot, which needs root and debootstrap")
    try:
        gimp_chroot.build()
    except gimp_chroot.ChrootUnavailable as exc:
        if os.environ.get("PULSE_REQUIRE_KRITA"):
            pytest.fail(f"PULSE_REQUIRE_KRITA is set but the Debian 13 chroot with Krita 5.2 failed: {exc}")
        pytest.skip(f"Debian 13 chroot with Krita 5.2 unavailable: {exc}")
    return KritaRunner("chroot", gimp_chroot.chroot_root())


def krita_env(root: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """HOME/XDG dirs under `root`, so Krita's resources, kritarc and plug-ins are the test's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "PYTHON", "KRITA", "QT_"))}
    home = root / "home"
    dirs = {"HOME": home, "XDG_CONFIG_HOME": home / ".config", "XDG_DATA_HOME": home / ".local/share",
            "XDG_CACHE_HOME": home / ".cache", "XDG_RUNTIME_DIR": root / "run"}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    (root / "run").chmod(0o700)
    env.update({k: str(v) for k, v in dirs.items()})
    env["LANG"] = env["LC_ALL"] = "C.UTF-8"  # English channel names and messages
    env.update(extra or {})
    return env


def pykrita_dir(env: dict[str, str]) -> Path:
    return Path(env["XDG_DATA_HOME"]) / "krita" / "pykrita"


def install_plugin(env: dict[str, str]) -> Path:
    from pulse_server.editors import krita

    return krita.install(pykrita_dir(env), python=krita.PythonTarget("system", python="/usr/bin/python3"))


def mosaic_image(w: int, h: int, rect: tuple[int, int, int, int], block: int, seed: int = 0,
                 grey: bool = False) -> np.ndarray:
    """RGBA u8: smooth colourful background, `rect` replaced by `block`×`block` cells of their mean."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([40 + 3 * xx, 60 + 2 * yy, 200 - 2 * xx + yy, np.full_like(xx, 255)], -1)
    img[..., :3] += rng.uniform(-20, 20, (h, w, 3))
    if grey:
        img[..., :3] = img[..., :3].mean(-1, keepdims=True)
    img[: h // 4, : w // 4, 3] = 160  # some partial alpha outside the face
    x, y, rw, rh = rect
    region = img[y:y + rh, x:x + rw]
    for by in range(0, rh, block):
        for bx in range(0, rw, block):
            cell = region[by:by + block, bx:bx + block]
            cell[...] = cell.reshape(-1, 4).mean(0)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def write_png(path: Path, rgba: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(rgba, "RGBA").save(path)
    return path


def block_means(a: np.ndarray, block: int) -> np.ndarray:
    h, w, c = a.shape
    return a[: h - h % block, : w - w % block].reshape(h // block, block, w // block, block, c).mean((1, 3))
