"""Shared fixtures: a tiny real StyleGAN2 checkpoint and the shared real face prior."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_PRIOR = REPO.parent / "shared" / "priors" / "celeba32-dcgan.pt"


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
