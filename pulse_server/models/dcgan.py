"""DCGAN-style face generators: two layouts, one prior.

* `DCGANGenerator` — the 32×32 CelebA prior of `../shared/priors/` (keys `generator_deconv.{block}.{0: conv,
  1: BatchNorm}.*`, see that folder's README); latent z of 100 dims, trained with z ~ U(-1, 1). Tests and
  local checks only; never shipped.
* `TutorialGenerator` — the PyTorch DCGAN tutorial's generator (`dcgan_faces_tutorial.py`, keys `main.*`):
  4×4 ConvTranspose from z, then doublings to `4·2^n` pixels; each block ConvTranspose → BatchNorm → ReLU,
  the last ConvTranspose → Tanh, no biases. With ngf = 64 it is the 64×64 `digiface-64` model shipped in
  the `gan-face-generate` package; the tutorial trains with z ~ N(0, 1).

Both run in eval mode: BatchNorm uses its stored running statistics, never the search batch's.
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
    """The 32×32 CelebA generator; stages end after each of its blocks but the last."""

    latent: str = "uniform"  # the distribution it was trained with

    def __init__(self, z_dim: int = 100, widths: tuple[int, ...] = (256, 128, 64, 32)):
        super().__init__()
        w0, w1, w2, w3 = widths  # four stages: a checkpoint's config with another count fails here
        self.z_dim = z_dim
        self.resolution = 32
        self.generator_deconv = nn.Sequential(
            _block(nn.ConvTranspose2d(z_dim, w0, 4, 1, 0, bias=False), w0, act=False),  # (N, w0, 4, 4)
            _block(nn.Conv2d(w0, w1, 3, 1, 1, bias=False), w1, act=True),  # (N, w1, 4, 4)
            _block(nn.ConvTranspose2d(w1, w2, 4, 2, 1, bias=False), w2, act=True),  # (N, w2, 8, 8)
            _block(nn.ConvTranspose2d(w2, w3, 4, 2, 1, bias=False), w3, act=True),  # (N, w3, 16, 16)
            nn.Sequential(nn.ConvTranspose2d(w3, 3, 4, 2, 1, bias=True), nn.Tanh()),  # (N, 3, 32, 32)
        )
        # (index in `layers` where stage k ends, side of its output): blocks 0, 1 at 4×4, then doubling.
        self.cuts = [(k + 1, 4 * 2 ** max(0, k - 1)) for k in range(len(self.generator_deconv) - 1)]

    @property
    def layers(self) -> nn.Sequential:
        return self.generator_deconv

    def forward(self, z: Tensor) -> Tensor:
        return self.generator_deconv(z.reshape(z.shape[0], self.z_dim, 1, 1))


class TutorialGenerator(nn.Module):
    """The PyTorch DCGAN tutorial generator, flat `main` Sequential: widths[i] channels at 4·2^i pixels."""

    latent: str = "normal"

    def __init__(self, z_dim: int = 100, widths: tuple[int, ...] = (512, 256, 128, 64), channels: int = 3):
        super().__init__()
        self.z_dim = z_dim
        self.resolution = 4 * 2 ** len(widths)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            conv = nn.ConvTranspose2d(z_dim, w, 4, 1, 0, bias=False) if i == 0 else \
                nn.ConvTranspose2d(widths[i - 1], w, 4, 2, 1, bias=False)
            # ReLU not in place: a stage's output may be a leaf the search optimises.
            layers += [conv, nn.BatchNorm2d(w), nn.ReLU()]  # (N, w, 4·2^i, 4·2^i)
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]  # (N, 3, R, R)
        self.main = nn.Sequential(*layers)
        self.cuts = [(3 * (i + 1), 4 * 2**i) for i in range(len(widths))]

    @property
    def layers(self) -> nn.Sequential:
        return self.main

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z.reshape(z.shape[0], self.z_dim, 1, 1))


class DCGANPrior(FacePrior):
    """One latent row of z; the search starts from the generator's training distribution."""

    family = "dcgan"

    def __init__(self, generator: DCGANGenerator | TutorialGenerator):
        super().__init__()
        self.generator = generator.eval()  # BatchNorm must use its running statistics
        self.resolution = generator.resolution
        self.latent_rows = 1
        self.latent_dim = generator.z_dim

    def train(self, mode: bool = True) -> DCGANPrior:
        super().train(mode)
        self.generator.eval()  # never batch statistics: the search batch is not a training batch
        return self

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        if self.generator.latent == "normal":
            z = torch.randn(n, 1, self.latent_dim, generator=generator)
        else:
            z = torch.rand(n, 1, self.latent_dim, generator=generator) * 2 - 1
        return z.to(self.device)

    def render(self, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        return self.generator(latent.reshape(latent.shape[0], self.latent_dim))

    # Stages = the generator's blocks but the last (the cut after the last block would be the image itself).
    @property
    def stages(self) -> int:
        return len(self.generator.cuts)

    def stage_resolution(self, stage: int) -> int:
        return self.generator.cuts[stage][1]

    def render_to(self, latent: Tensor, noises: list[Tensor] | None, stage: int) -> list[Tensor]:
        x = latent.reshape(latent.shape[0], self.latent_dim, 1, 1)
        return [self.generator.layers[: self.generator.cuts[stage][0]](x)]

    def render_from(self, features: list[Tensor], stage: int, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        return self.generator.layers[self.generator.cuts[stage][0] :](features[0])
