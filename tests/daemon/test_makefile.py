"""The Makefile's knobs do what the README says (dry runs: `make -n` prints the commands without running them)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def make_dry_run(*args: str) -> str:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    proc = subprocess.run(["make", "-n", "-B", *args], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_torch_comes_from_the_index_a_user_names() -> None:
    out = make_dry_run(".venv/.installed", "TORCH_INDEX=https://wheels.example/cpu")
    assert 'pip install -q "torch==2.13.0" --index-url "https://wheels.example/cpu"' in out


def test_without_an_index_torch_is_pinned_by_version_only() -> None:
    out = make_dry_run(".venv/.installed", "TORCH_VERSION=2.12.0")
    torch_lines = [line for line in out.splitlines() if '"torch==' in line]
    assert len(torch_lines) == 1 and '"torch==2.12.0"' in torch_lines[0] and "--index-url" not in torch_lines[0]


def test_make_demo_tells_the_demo_it_runs_under_make() -> None:
    out = make_dry_run("demo", "MODEL=digiface-64")
    assert "-m pulse_server.demo --from-make --model digiface-64" in out
