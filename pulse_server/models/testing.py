"""Small real checkpoints for tests and CPU benchmarks, written in the released files' own formats.

A tiny StyleGAN2 (narrow channels, short mapping MLP) has exactly the key names and nesting of
rosinality's `stylegan2-ffhq-config-f.pt`, so every loading path is exercised without the 380 MB file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .stylegan2 import Generator, tiny_channels

TINY_STYLE_DIM = 32
TINY_MLP = 2
TINY_WIDTH = 16


def make_tiny_generator(resolution: int = 32, seed: int = 0, style_dim: int = TINY_STYLE_DIM,
                        n_mlp: int = TINY_MLP, width: int = TINY_WIDTH) -> Generator:
    """A randomly initialised tiny generator whose biases and noise strengths are non-zero.

    Freshly initialised StyleGAN2 layers have zero biases and zero noise weights; perturbing them makes a
    converter that drops or mis-maps one of those tensors visible in the output.
    """
    torch.manual_seed(seed)
    g = Generator(resolution, style_dim=style_dim, n_mlp=n_mlp, channels=tiny_channels(resolution, width))
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in g.named_parameters():
            if name.endswith("noise.weight"):
                p.copy_(0.1 * torch.rand(p.shape, generator=gen) + 0.05)
            elif name.endswith("modulation.bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            if name.startswith(("to_rgb1.conv.weight", "to_rgbs.")) and name.endswith("conv.weight"):
                p.mul_(0.3)  # keep images mostly inside [-1, 1], like a trained generator's
    return g.eval()


@torch.no_grad()
def latent_average(g: Generator, samples: int = 4096, seed: int = 0) -> torch.Tensor:
    z = torch.randn(samples, g.style_dim, generator=torch.Generator().manual_seed(seed))
    return g.mapping(z).mean(0)


def write_tiny_stylegan2(path: str | Path, resolution: int = 32, seed: int = 0) -> Path:
    """Write a rosinality-format checkpoint: {"g_ema": state_dict, "latent_avg": (style_dim,)}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    g = make_tiny_generator(resolution, seed)
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_average(g)}, path)
    return path
