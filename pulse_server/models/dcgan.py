"""DCGAN-style 32×32 face generator, the layout of the small real prior in `../shared/priors/`.

Keys: `generator_deconv.{block}.{0: conv, 1: BatchNorm}.*` (see that folder's README). Used for tests and
local checks on real faces; it is never shipped. Latent: z of 100 dims, trained with z ~ U(-1, 1).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import FacePrior


def _block(conv: nn.Module, channels: int | None, act: bool) -> nn.Sequential:
    layers: list[nn.Module] = [conv]
    if channels is not None:
        layers.append(nn.BatchNorm2d(channels))
    if act:
        layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


class DCGANGenerator(nn.Module):
    def __init__(self, z_dim: int = 100, widths: tuple[int, int, int, int] = (256, 128, 64, 32)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.z_dim = z_dim
        self.generator_deconv = nn.Sequential(
            _block(nn.ConvTranspose2d(z_dim, w0, 4, 1, 0, bias=False), w0, act=False),  # (N, w0, 4, 4)
            _block(nn.Conv2d(w0, w1, 3, 1, 1, bias=False), w1, act=True),  # (N, w1, 4, 4)
            _block(nn.ConvTranspose2d(w1, w2, 4, 2, 1, bias=False), w2, act=True),  # (N, w2, 8, 8)
            _block(nn.ConvTranspose2d(w2, w3, 4, 2, 1, bias=False), w3, act=True),  # (N, w3, 16, 16)
            nn.Sequential(nn.ConvTranspose2d(w3, 3, 4, 2, 1, bias=True), nn.Tanh()),  # (N, 3, 32, 32)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.generator_deconv(z.reshape(z.shape[0], self.z_dim, 1, 1))


class DCGANPrior(FacePrior):
    """One latent row of 100 dims; the search starts from the training distribution U(-1, 1)."""

    family = "dcgan"

    def __init__(self, generator: DCGANGenerator):
        super().__init__()
        self.generator = generator.eval()  # BatchNorm must use its running statistics
        self.resolution = 32
        self.latent_rows = 1
        self.latent_dim = generator.z_dim

    def train(self, mode: bool = True) -> "DCGANPrior":
        super().train(mode)
        self.generator.eval()  # never batch statistics: the search batch is not a training batch
        return self

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.rand(n, 1, self.latent_dim, generator=generator) * 2 - 1
        return z.to(self.device)

    def render(self, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        return self.generator(latent.reshape(latent.shape[0], self.latent_dim))

    # Stages = the generator's blocks but the last (the cut after the last block would be the image itself).
    @property
    def stages(self) -> int:
        return len(self.generator.generator_deconv) - 1

    def stage_resolution(self, stage: int) -> int:
        return 4 * 2 ** max(0, stage - 1)  # blocks 0, 1 at 4×4, then doubling

    def render_to(self, latent: Tensor, noises: list[Tensor] | None, stage: int) -> list[Tensor]:
        x = latent.reshape(latent.shape[0], self.latent_dim, 1, 1)
        return [self.generator.generator_deconv[: stage + 1](x)]

    def render_from(self, features: list[Tensor], stage: int, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        return self.generator.generator_deconv[stage + 1 :](features[0])
