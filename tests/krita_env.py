"""Helpers for the real-Krita tests: an isolated Krita profile, the installed plug-in, test images."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "tests" / "krita_scripts"


def require(*tools: str) -> None:
    """Skip without the tools, with the reason; fail instead where PULSE_REQUIRE_KRITA is set (CI installs them)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        reason = (f"real-Krita test needs {', '.join(missing)} (Debian 12: apt-get install krita xvfb xauth "
                  "python3-pyqt5 python3-zmq python3-msgpack; .ci/run installs them)")
        if os.environ.get("PULSE_REQUIRE_KRITA"):
            pytest.fail(f"PULSE_REQUIRE_KRITA is set but {reason}")
        pytest.skip(reason)


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
