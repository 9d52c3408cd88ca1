"""A test run converts checkpoints and downloads models into a temporary cache (tests/conftest.py), never into the
user's own: neither in the test process nor in the programs the tests start, which inherit its environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from conftest import TEST_CACHE
from PIL import Image

from pulse_server.models import registry
from pulse_server.pipeline import pixelate

REPO = Path(__file__).resolve().parents[2]


def test_the_test_process_caches_in_a_temporary_folder() -> None:
    assert registry.cache_dir() == TEST_CACHE
    assert not TEST_CACHE.is_relative_to(Path.home())


def test_a_program_a_test_starts_writes_nothing_under_home(tmp_path: Path, tiny_weights: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}  # the user folders follow HOME
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    cells = (np.random.default_rng(0).random((6, 6, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixelate(np.repeat(np.repeat(cells, 8, 0), 8, 1), 8, (0, 0, 48, 48))).save(tmp_path / "m.png")
    # a checkpoint file is converted into the cache on its first load
    proc = subprocess.run([sys.executable, "-m", "pulse_server.cli", "depixelate", str(tmp_path / "m.png"), "--box",
                           "0,0,48,48", "-o", str(tmp_path / "out.png"), "--model", str(tiny_weights),
                           "--candidates", "1", "--steps", "1", "--quiet"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []
    assert list((TEST_CACHE / "converted").glob("*.safetensors"))
