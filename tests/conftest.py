"""Shared fixtures: a temporary model cache for the whole run, a tiny real StyleGAN2 checkpoint and the shared
real face prior.

Tests live in unit/ (in-process), daemon/ (daemon and CLI processes, real sockets) and editors/ (real GIMP and
Krita, the plug-in installers). The helpers beside this file (daemon_fixture, daemon_parts, krita_env, ...) are
imported by name from any of them: pytest's default "prepend" import mode puts this folder on sys.path when it
imports this conftest (no __init__.py anywhere under tests/, so test module names must stay unique)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_PRIOR = REPO.parent / "shared" / "priors" / "celeba32-dcgan.pt"

# Set while this file is imported, before any test or the subprocesses tests start (they inherit the environment):
# checkpoints the tests convert, and anything they download, land here and never in the user's own cache.
# Tests that need a cache of their own still set PULSE_CACHE_DIR themselves.
TEST_CACHE = Path(tempfile.mkdtemp(prefix="pulse-test-cache-"))
os.environ["PULSE_CACHE_DIR"] = str(TEST_CACHE)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 32×32 StyleGAN2 in rosinality's checkpoint format (random but fixed weights)."""
    from pulse_server.models.testing import write_tiny_stylegan2

    return write_tiny_stylegan2(tmp_path_factory.mktemp("weights") / "tiny-stylegan2-32.pt", resolution=32, seed=0)


@pytest.fixture(scope="session")
def shared_prior_path() -> Path:
    """The small real face prior beside the project (../shared/priors); skipped where it is absent."""
    if not SHARED_PRIOR.is_file():
        pytest.skip(f"real face prior not found at {SHARED_PRIOR} (../shared is provided beside the project)")
    return SHARED_PRIOR


@pytest.fixture
def digiface_installed() -> None:
    """Skips where the digiface-64 model's package is missing (the tests that run it say how to install it)."""
    from pulse_server.models import registry

    if not registry.is_present("digiface-64"):
        pytest.skip("digiface-64 needs the gan-face-generate package: pip install --no-deps gan-face-generate==1.1.1 "
                    "(`make venv` installs it)")


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(TEST_CACHE, ignore_errors=True)
