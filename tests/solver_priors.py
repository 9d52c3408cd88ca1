"""Test helper (solver tests): real priors from real checkpoint files.

Uses `pulse_server.models.loading.load_prior` when it exists; until then builds the priors directly from
the models' own classes (the same networks the loader returns).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from pulse_server.models.base import FacePrior


@lru_cache(maxsize=4)
def load_test_prior(path: str) -> FacePrior:
    try:
        from pulse_server.models.loading import load_prior
    except ImportError:
        return _direct(Path(path))
    prior, _info = load_prior(path, "cpu")
    return prior.freeze()


def _direct(path: Path) -> FacePrior:
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "g_ema" in sd:
        from pulse_server.models.stylegan2 import Generator, StyleGAN2Prior, fit_gaussian, tiny_channels
        from pulse_server.models.testing import TINY_MLP, TINY_STYLE_DIM, TINY_WIDTH

        g = Generator(32, style_dim=TINY_STYLE_DIM, n_mlp=TINY_MLP, channels=tiny_channels(32, TINY_WIDTH))
        g.load_state_dict(sd["g_ema"])
        mean, std = fit_gaussian(g.eval(), samples=20_000)
        return StyleGAN2Prior(g, mean, std).freeze()
    from pulse_server.models.dcgan import DCGANGenerator, DCGANPrior

    g = DCGANGenerator()
    g.load_state_dict(sd)
    return DCGANPrior(g).freeze()
