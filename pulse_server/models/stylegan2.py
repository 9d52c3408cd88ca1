"""StyleGAN2 generator (Karras et al. 2020, config-f) in plain PyTorch, plus the PULSE prior around it.

Parameter and buffer names follow rosinality/stylegan2-pytorch, so its `stylegan2-ffhq-config-f.pt` loads
with `load_state_dict` as is (`style.1-8.*`, `input.input`, `conv1.*`, `to_rgb1.*`, `convs.N.*`,
`to_rgbs.N.*`, `noises.noise_N`). No custom CUDA ops: upfirdn2d is written with pad + depthwise conv, so
nothing compiles at import and the same code runs on CPU and CUDA.

Two forms of the modulated convolution give the same numbers (stylegan2-ada's `fused_modconv`):
  fused=True   per-sample weights, one grouped convolution (fewer kernels; best for small batches);
  fused=False  scale activations by the style, shared-weight convolution, scale by the demodulation
               coefficients (plain cuDNN convs with batch > 1; friendlier to bf16 and channels_last).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import FacePrior

SQRT2 = math.sqrt(2.0)

# Channel widths of config-f (channel_multiplier=2) by resolution.
def default_channels(channel_multiplier: int = 2) -> dict[int, int]:
    cm = channel_multiplier
    return {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm, 1024: 16 * cm}


def tiny_channels(size: int, width: int = 16) -> dict[int, int]:
    """Narrow widths for tests and CPU benchmarks: `width` channels at every resolution up to `size`."""
    return {2**i: width for i in range(2, int(math.log2(size)) + 1)}


def make_kernel(k: Sequence[float]) -> Tensor:
    t = torch.tensor(k, dtype=torch.float32)
    if t.ndim == 1:
        t = t[None, :] * t[:, None]
    return t / t.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad (negative = crop), FIR-filter each channel, downsample.

    x (N, C, H, W), kernel (kh, kw) -> (N, C, (H*up + p0 + p1 - kh) // down + 1, ...).
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])  # (h, 1, w, 1) -> (h, up, w, up)
        x = x.reshape(n, c, h * up, w * up)
    p0, p1 = pad
    x = F.pad(x, [p0, p1, p0, p1])
    # upfirdn2d is a true convolution: flip the kernel for conv2d's correlation.
    weight = torch.flip(kernel, [0, 1]).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def fused_leaky_relu(x: Tensor, bias: Tensor) -> Tensor:
    """lrelu(x + b, 0.2) * sqrt(2): the gain keeps activations' variance (StyleGAN2's bias_act)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape).to(x.dtype), 0.2) * SQRT2


class PixelNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalized learning rate: weights stored N(0,1)/lr_mul, scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)  # (out, in)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))  # (out,)
        self.scale = 1.0 / math.sqrt(in_dim) * lr_mul
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    kernel: Tensor  # a buffer (register_buffer), typed here: nn.Module's __getattr__ only says Tensor | Module

    def __init__(self, kernel: Sequence[float], pad: tuple[int, int], upsample_factor: int = 1):
        super().__init__()
        k = make_kernel(kernel)
        if upsample_factor > 1:
            k = k * upsample_factor**2  # zero insertion lost this much energy
        self.register_buffer("kernel", k)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2× FIR upsampling of the skip RGB image."""

    kernel: Tensor  # a buffer, as in Blur

    def __init__(self, kernel: Sequence[float], factor: int = 2):
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(kernel) * factor**2)
        p = len(kernel) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    def __init__(
        self,
        in_channel: int,
        out_channel: int,
        kernel_size: int,
        style_dim: int,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
    ):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.demodulate, self.upsample = demodulate, upsample
        self.scale = 1.0 / math.sqrt(in_channel * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        if upsample:
            # Transposed conv (stride 2) then blur; pads chosen so the output is exactly 2H × 2W.
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)

    def forward(self, x: Tensor, style: Tensor, fused: bool = True) -> Tensor:
        # x (B, in, H, W), style (B, style_dim) -> (B, out, H', W')
        b, cin, h, w = x.shape
        s = self.modulation(style)  # (B, in)
        base = self.scale * self.weight  # (1, out, in, k, k)
        if fused:
            weight = base * s.view(b, 1, cin, 1, 1)  # (B, out, in, k, k)
            if self.demodulate:
                weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, self.out_channel, 1, 1, 1)
            x = x.reshape(1, b * cin, h, w)
            if self.upsample:
                weight = weight.transpose(1, 2).reshape(b * cin, self.out_channel, self.kernel_size, self.kernel_size)
                out = F.conv_transpose2d(x, weight.to(x.dtype), stride=2, padding=0, groups=b)
                out = self.blur(out.view(b, self.out_channel, *out.shape[2:]))
            else:
                weight = weight.reshape(b * self.out_channel, cin, self.kernel_size, self.kernel_size)
                out = F.conv2d(x, weight.to(x.dtype), padding=self.padding, groups=b)
                out = out.view(b, self.out_channel, *out.shape[2:])
            return out
        # Non-fused: modulate activations, convolve with the shared weight, demodulate the output.
        x = x * s.view(b, cin, 1, 1).to(x.dtype)
        weight = base[0]  # (out, in, k, k)
        if self.upsample:
            out = F.conv_transpose2d(x, weight.transpose(0, 1).to(x.dtype), stride=2, padding=0)
            out = self.blur(out)
        else:
            out = F.conv2d(x, weight.to(x.dtype), padding=self.padding)
        if self.demodulate:
            # sum over in,k,k of (w * s)^2 = (s^2) @ (sum_k w^2)^T  -> (B, out)
            dcoef = torch.rsqrt(s.pow(2) @ weight.pow(2).sum([2, 3]).t() + 1e-8)
            out = out * dcoef.view(b, self.out_channel, 1, 1).to(out.dtype)
        return out


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            b, _, h, w = x.shape
            noise = x.new_empty(b, 1, h, w).normal_()
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channel, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)  # (B, C, 4, 4)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = _BiasAct(out_channel)

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None = None, fused: bool = True) -> Tensor:
        return self.activate(self.noise(self.conv(x, style, fused), noise))


class _BiasAct(nn.Module):
    """FusedLeakyReLU: a per-channel bias, lrelu 0.2, gain sqrt(2) (param name `bias` as in rosinality)."""

    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channel))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True, blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None, fused: bool = True) -> Tensor:
        out = self.conv(x, style, fused) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class Generator(nn.Module):
    """Mapping MLP + synthesis network. `channels` overrides config-f's widths (tiny test configs)."""

    def __init__(
        self,
        size: int,
        style_dim: int = 512,
        n_mlp: int = 8,
        channel_multiplier: int = 2,
        blur_kernel: Sequence[float] = (1, 3, 3, 1),
        lr_mlp: float = 0.01,
        channels: dict[int, int] | None = None,
    ):
        super().__init__()
        self.size, self.style_dim, self.n_mlp = size, style_dim, n_mlp
        self.log_size = int(math.log2(size))
        if 2**self.log_size != size or size < 4:
            raise ValueError(f"StyleGAN2 resolution must be a power of two >= 4, got {size}")
        self.channels = dict(channels) if channels is not None else default_channels(channel_multiplier)

        # style.0 is PixelNorm (no parameters): keys start at style.1 as in the released checkpoints.
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)])

        ch = self.channels
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], 3, style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(ch[4], style_dim, upsample=False)

        self.num_layers = (self.log_size - 2) * 2 + 1  # noise inputs: 1 at 4×4, 2 per higher resolution
        self.noises = nn.Module()
        for i in range(self.num_layers):
            res = (i + 5) // 2
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, 2**res, 2**res))

        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_ch = ch[4]
        for i in range(3, self.log_size + 1):
            out_ch = ch[2**i]
            self.convs.append(StyledConv(in_ch, out_ch, 3, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_ch, out_ch, 3, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_ch, style_dim, blur_kernel=blur_kernel))
            in_ch = out_ch
        self.n_latent = self.log_size * 2 - 2  # W+ rows: 18 at 1024²

    def mapping(self, z: Tensor) -> Tensor:
        return self.style(z)  # (B, style_dim) -> w (B, style_dim)

    def fixed_noises(self) -> list[Tensor]:
        return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

    def synthesis(self, wplus: Tensor, noises: Sequence[Tensor | None] | None = None, fused: bool = True) -> Tensor:
        """wplus (B, n_latent, style_dim), noises: num_layers tensors (B|1, 1, H, W) or None (stored buffers).

        -> image (B, 3, size, size), roughly in [-1, 1].
        """
        return self.synthesis_from(self.synthesis_to(wplus, noises, 0, fused), 0, wplus, noises, fused)[1]

    def synthesis_to(self, wplus: Tensor, noises: Sequence[Tensor | None] | None, stage: int,
                     fused: bool = True) -> list[Tensor]:
        """-> [features (B, C, h, h), rgb skip (B, 3, h, h)] after `stage` (0: the 4×4 block, k: 4·2^k)."""
        if noises is None:
            noises = self.fixed_noises()
        b = wplus.shape[0]
        out = self.conv1(self.input(b).to(wplus.dtype), wplus[:, 0], noises[0], fused)  # (B, C4, 4, 4)
        skip = self.to_rgb1(out, wplus[:, 1], fused=fused)  # (B, 3, 4, 4)
        return self.synthesis_from([out, skip], 0, wplus, noises, fused, until=stage)

    def synthesis_from(self, state: list[Tensor], stage: int, wplus: Tensor,
                       noises: Sequence[Tensor | None] | None = None, fused: bool = True,
                       until: int | None = None) -> list[Tensor]:
        """Continue [features, skip] after `stage` up to stage `until` (None: the last; skip = the image)."""
        if noises is None:
            noises = self.fixed_noises()
        out, skip = state
        last = len(self.to_rgbs) if until is None else until
        for k in range(stage, last):  # up-block k takes the resolution from 4·2^k to 4·2^(k+1)
            i = 1 + 2 * k
            out = self.convs[2 * k](out, wplus[:, i], noises[i], fused)  # (B, C, 2H, 2W)
            out = self.convs[2 * k + 1](out, wplus[:, i + 1], noises[i + 1], fused)
            skip = self.to_rgbs[k](out, wplus[:, i + 2], skip, fused)
        return [out, skip]

    def forward(self, z: Tensor, noises: Sequence[Tensor | None] | None = None, truncation: float = 1.0,
                w_avg: Tensor | None = None) -> Tensor:
        """Sample images from z (B, style_dim): the usual generator call (all W+ rows equal)."""
        w = self.mapping(z)
        if truncation != 1.0 and w_avg is not None:
            w = w_avg + truncation * (w - w_avg)
        return self.synthesis(w[:, None].expand(-1, self.n_latent, -1), noises)


@torch.no_grad()
def fit_gaussian(generator: Generator, samples: int = 100_000, seed: int = 0, batch: int = 10_000) -> tuple[Tensor, Tensor]:
    """PULSE's gaussian fit of the mapping output *before* its last leaky ReLU (undone with slope 5).

    The original draws 1e6 z on every start; 1e5 gives the mean/std to ~0.3% and is cached per checkpoint
    by the loader, so this runs once per generator. Returns (mean, std), each (style_dim,).
    """
    device = next(generator.parameters()).device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(generator.style_dim, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    done = 0
    while done < samples:
        n = min(batch, samples - done)
        z = torch.randn(n, generator.style_dim, generator=gen).to(device)
        x = F.leaky_relu(generator.mapping(z), 5.0).double()  # invert the final lrelu(0.2)
        total += x.sum(0)
        total_sq += x.pow(2).sum(0)
        done += n
    mean = total / samples
    std = (total_sq / samples - mean.pow(2)).clamp_min(0).mul(samples / (samples - 1)).sqrt()
    return mean.float(), std.float()


class StyleGAN2Prior(FacePrior):
    """PULSE's search space on a StyleGAN2: W+ rows w = lrelu(z·std + mean, 0.2), z ~ N(0, I).

    Searching z (a sphere of radius sqrt(dim) per row) instead of w keeps the solution near the
    distribution of real faces: that is the heart of PULSE.
    """

    family = "stylegan2"
    fused: bool  # never None here: this prior has the choice
    gauss_mean: Tensor  # buffers (register_buffer), typed here: nn.Module's __getattr__ only says Tensor | Module
    gauss_std: Tensor

    def __init__(self, generator: Generator, mean: Tensor, std: Tensor, fused: bool = True):
        super().__init__()
        self.generator = generator
        self.register_buffer("gauss_mean", mean.detach().clone().float())  # (style_dim,)
        self.register_buffer("gauss_std", std.detach().clone().float())  # (style_dim,)
        self.resolution = generator.size
        self.latent_rows = generator.n_latent
        self.latent_dim = generator.style_dim
        self.fused = fused

    def noise_shapes(self) -> list[tuple[int, int]]:
        return [(t.shape[-2], t.shape[-1]) for t in self.generator.fixed_noises()]

    def sample_latent(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        z = torch.randn(n, self.latent_rows, self.latent_dim, generator=generator)
        return z.to(self.device)

    def to_wplus(self, latent: Tensor) -> Tensor:
        return F.leaky_relu(latent * self.gauss_std + self.gauss_mean, 0.2)

    def render(self, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        return self.generator.synthesis(self.to_wplus(latent), noises, fused=self.fused)

    # Stage k ends at 4·2^k px with [features, rgb skip]; the last up-block's output is the image itself.
    @property
    def stages(self) -> int:
        return len(self.generator.to_rgbs)

    def stage_resolution(self, stage: int) -> int:
        return 4 * 2**stage

    def render_to(self, latent: Tensor, noises: list[Tensor] | None, stage: int) -> list[Tensor]:
        return self.generator.synthesis_to(self.to_wplus(latent), noises, stage, fused=self.fused)

    def render_from(self, features: list[Tensor], stage: int, latent: Tensor, noises: list[Tensor] | None = None) -> Tensor:
        return self.generator.synthesis_from(features, stage, self.to_wplus(latent), noises, fused=self.fused)[1]
