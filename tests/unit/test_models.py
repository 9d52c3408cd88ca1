"""The networks themselves: config-f layout, both modulated-conv forms, FIR filters, the DCGAN priors, stages."""

from __future__ import annotations

import pytest
import torch

from pulse_server.models.base import FacePrior
from pulse_server.models.dcgan import DCGANGenerator, DCGANPrior, TutorialGenerator
from pulse_server.models.stylegan2 import Generator, StyleGAN2Prior, fit_gaussian, make_kernel, upfirdn2d
from pulse_server.models.testing import make_tiny_generator


def test_config_f_layout_matches_released_checkpoint_names() -> None:
    g = Generator(1024)
    sd = g.state_dict()
    # Shapes as in stylegan2-ffhq-config-f.pt (rosinality's conversion of NVIDIA's config-f).
    assert sum(p.numel() for p in g.parameters()) == 30_370_060
    assert sd["style.1.weight"].shape == (512, 512) and "style.8.bias" in sd and "style.9.weight" not in sd
    assert sd["input.input"].shape == (1, 512, 4, 4)
    assert sd["conv1.conv.weight"].shape == (1, 512, 512, 3, 3)
    assert sd["to_rgb1.conv.weight"].shape == (1, 3, 512, 1, 1)
    assert sd["convs.15.conv.weight"].shape == (1, 32, 32, 3, 3)
    assert sd["convs.14.conv.blur.kernel"].shape == (4, 4)
    assert sd["to_rgbs.7.upsample.kernel"].shape == (4, 4)
    assert sd["noises.noise_16"].shape == (1, 1, 1024, 1024)
    assert g.n_latent == 18 and g.num_layers == 17


def test_fused_and_unfused_modconv_agree() -> None:
    g = make_tiny_generator(32)
    z = torch.randn(3, g.style_dim, generator=torch.Generator().manual_seed(1))
    w = g.mapping(z)[:, None].expand(-1, g.n_latent, -1)
    with torch.no_grad():
        a = g.synthesis(w, fused=True)
        b = g.synthesis(w, fused=False)
    assert a.shape == (3, 3, 32, 32)
    assert torch.allclose(a, b, atol=1e-5)


def test_upfirdn_filters_keep_dc_and_sizes() -> None:
    x = torch.full((1, 2, 8, 8), 0.7)
    k = make_kernel([1, 3, 3, 1])
    up = upfirdn2d(x, k * 4, up=2, pad=(2, 1))
    assert up.shape == (1, 2, 16, 16)
    assert torch.allclose(up[..., 2:-2, 2:-2], torch.full_like(up[..., 2:-2, 2:-2], 0.7), atol=1e-6)
    # An impulse through the filter reproduces the (flipped) kernel: it is a true convolution.
    imp = torch.zeros(1, 1, 7, 7)
    imp[0, 0, 3, 3] = 1
    asym = torch.arange(1.0, 10.0).reshape(3, 3)
    out = upfirdn2d(imp, asym, pad=(1, 1))
    assert torch.equal(out[0, 0, 2:5, 2:5], asym)


def test_stylegan2_prior_renders_in_search_space() -> None:
    g = make_tiny_generator(32)
    mean, std = fit_gaussian(g, samples=4000)
    prior = StyleGAN2Prior(g, mean, std).freeze()
    lat = prior.sample_latent(2, torch.Generator().manual_seed(0))
    assert lat.shape == (2, g.n_latent, g.style_dim)
    img = prior.render(lat)
    assert img.shape == (2, 3, 32, 32) and torch.isfinite(img).all()
    assert prior.noise_shapes()[0] == (4, 4) and prior.noise_shapes()[-1] == (32, 32)
    # The gaussian fit inverts the last lrelu: latents drawn from it average like the mapping's outputs.
    with torch.no_grad():
        w_avg = g.mapping(torch.randn(4000, g.style_dim)).mean(0)
        w_fit = prior.to_wplus(torch.randn(4000, g.style_dim)).mean(0)
    assert (w_fit - w_avg).abs().max() < 0.1 * w_avg.abs().max()


def test_dcgan_prior_stays_in_eval_mode() -> None:
    prior = DCGANPrior(DCGANGenerator()).freeze()
    prior.train()
    assert not prior.generator.training
    z = prior.sample_latent(4, torch.Generator().manual_seed(0))
    assert z.shape == (4, 1, 100) and z.abs().max() <= 1
    assert prior.render(z).shape == (4, 3, 32, 32)


def test_tutorial_dcgan_has_the_pytorch_tutorial_layout() -> None:
    sd = TutorialGenerator().state_dict()
    # The names and shapes of dcgan_faces_tutorial.py's netG (nz 100, ngf 64): what `digiface-64` holds.
    assert sd["main.0.weight"].shape == (100, 512, 4, 4) and sd["main.1.running_var"].shape == (512,)
    assert sd["main.9.weight"].shape == (128, 64, 4, 4) and sd["main.12.weight"].shape == (64, 3, 4, 4)
    assert "main.12.bias" not in sd and "main.13.weight" not in sd


def test_tutorial_dcgan_prior_samples_a_normal_z_and_renders_64px() -> None:
    prior = DCGANPrior(TutorialGenerator()).freeze()
    z = prior.sample_latent(4096, torch.Generator().manual_seed(0))
    assert z.shape == (4096, 1, 100)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01 and float(z.abs().max()) > 3
    img = prior.render(z[:2])
    assert img.shape == (2, 3, 64, 64) and float(img.abs().max()) <= 1


def _stylegan2_prior() -> FacePrior:
    g = make_tiny_generator(32)
    mean, std = fit_gaussian(g, samples=2000)
    return StyleGAN2Prior(g, mean, std).freeze()


@pytest.mark.parametrize("make", [lambda: DCGANPrior(DCGANGenerator()).freeze(),
                                  lambda: DCGANPrior(TutorialGenerator()).freeze(), _stylegan2_prior],
                         ids=["dcgan-32", "dcgan-tutorial-64", "stylegan2"])
def test_rendering_through_any_stage_gives_the_same_image(make) -> None:
    torch.manual_seed(0)
    prior = make()
    z = prior.sample_latent(2, torch.Generator().manual_seed(3))
    noises = [torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(i))
              for i, (h, w) in enumerate(prior.noise_shapes())] or None
    with torch.no_grad():
        img = prior.render(z, noises)
        assert prior.stages >= 3
        for k in range(prior.stages):
            features = prior.render_to(z, noises, k)
            side = prior.stage_resolution(k)
            assert all(f.shape[0] == 2 and f.shape[-2:] == (side, side) for f in features), k
            assert torch.equal(prior.render_from(features, k, z, noises), img), k
    sides = [prior.stage_resolution(k) for k in range(prior.stages)]
    assert sides == sorted(sides) and sides[-1] < prior.resolution
