"""The one small interface the solver needs from a face generator ("prior").

The solver (PULSE latent search) never looks inside a network: it asks a `FacePrior` for
  * the shape of the latent it searches, `(latent_rows, latent_dim)`: W+ rows for StyleGAN2, one z row
    for a DCGAN;
  * a random starting latent (`sample_latent`), drawn from the distribution the search assumes;
  * the per-layer noise inputs the network takes (`noise_shapes`), coarse to fine, `[]` if none;
  * `render(latent, noises)`: images in [-1, 1], NCHW, `resolution`×`resolution`;
  * optionally, the network cut into stages for intermediate-layer refinement (ILO, Daras et al. 2021):
    `render_to(latent, noises, k)` -> the features after stage k (a list of tensors), and
    `render_from(features, k, latent, noises)` -> the image computed from them; `stages` of them (0: none).
Everything is differentiable w.r.t. `latent` and the noise tensors; weights are frozen (eval, no grad).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class PriorInfo:
    """What the daemon reports about a loaded model (WELCOME, RESULT metadata, CLI reports)."""

    name: str  # e.g. "stylegan2-ffhq-1024" or the checkpoint's file stem
    family: str  # "stylegan2" | "dcgan"
    resolution: int
    source: str  # path of the checkpoint it was loaded from
    sha256: str | None = None


class FacePrior(nn.Module):
    """Base class of all generators the solver can search. Subclasses set the attributes below."""

    family: str = ""
    resolution: int = 0
    latent_rows: int = 1
    latent_dim: int = 0
    fused: bool | None = None  # StyleGAN2's modulated-conv form (the solver switches it); None: no such choice

    def noise_shapes(self) -> list[tuple[int, int]]:
        """(H, W) of each per-layer noise input, coarse to fine; [] for generators without noise."""
        return []

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """A random starting point of the search: (n, latent_rows, latent_dim), on this module's device."""
        raise NotImplementedError

    def render(self, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        """latent (N, rows, dim) in search space [+ noises (N|1, 1, H, W)] -> images (N, 3, R, R) in [-1, 1]."""
        raise NotImplementedError

    @property
    def stages(self) -> int:
        """How many stages `render_to`/`render_from` can cut the network after (coarse to fine); 0 = none."""
        return 0

    def stage_resolution(self, stage: int) -> int:
        """Spatial side of the features after `stage`."""
        raise NotImplementedError

    def render_to(self, latent: Tensor, noises: list[Tensor] | None, stage: int) -> list[Tensor]:
        """The features after `stage` (0-based): tensors (N, C, h, h); `render_from` continues from them."""
        raise NotImplementedError

    def render_from(self, features: list[Tensor], stage: int, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        """Images (N, 3, R, R) in [-1, 1] from the features after `stage` (later stages may read the latent)."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def freeze(self) -> FacePrior:
        """Eval mode, no weight gradients: the search only moves latents and noise."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self
