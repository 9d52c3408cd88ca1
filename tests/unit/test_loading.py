"""Every checkpoint format gives the same generator; bad files are refused with the file named."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest
import torch
from nvidia_pickle import ada_reference_mapping, ada_reference_synthesis, ada_tensors_from_rosinality, write_ada_pickle

from pulse_server.errors import ModelError
from pulse_server.models import loading, stylegan2
from pulse_server.models.loading import infer_config, load_prior, load_state
from pulse_server.models.stylegan2 import Generator
from pulse_server.models.testing import latent_average, make_tiny_generator

SHARED_SHA256 = "502f4c47bcabdbb59b730a1209c13a363030f384d5ac9a99e4214c360f2dc8f7"  # ../shared/priors/README.md


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PULSE_CACHE_DIR", str(root))
    monkeypatch.setattr(loading, "GAUSSIAN_SAMPLES", 10_000)  # 2 shared CPU cores: keep the fit short
    return root


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One tiny 32² generator written in every real format."""
    d = tmp_path_factory.mktemp("formats")
    g = make_tiny_generator(32, seed=3)
    sd = g.state_dict()
    la = latent_average(g, 1024)
    torch.save({"g_ema": sd, "latent_avg": la}, d / "rosinality.pt")
    # A training checkpoint of rosinality's train.py: g, d, optimisers and the argparse Namespace.
    torch.save({"g": sd, "d": {"convs.0.0.weight": torch.randn(4, 3, 1, 1)}, "g_ema": sd,
                "g_optim": {"state": {}, "param_groups": [{"lr": 0.002}]},
                "args": argparse.Namespace(size=32, r1=10.0, path="/data/lmdb")}, d / "train-010000.pt")
    torch.save(sd, d / "bare.pt")
    t = ada_tensors_from_rosinality(sd, 32)
    write_ada_pickle(d / "network-snapshot.pkl", t, 32, la)
    return {"g": g, "sd": sd, "la": la, "ada": t, "dir": d}


def _image(prior, seed: int = 0) -> torch.Tensor:
    lat = prior.sample_latent(2, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return prior.render(lat)


def _gauss(prior) -> tuple[torch.Tensor, torch.Tensor]:
    return prior.gauss_mean, prior.gauss_std


def test_all_formats_give_the_same_image(tiny: dict, cache: Path) -> None:
    d = tiny["dir"]
    ref, info = load_prior(d / "rosinality.pt")
    assert info.family == "stylegan2" and info.resolution == 32 and info.name == "rosinality"
    img = _image(ref)
    assert img.shape == (2, 3, 32, 32)
    for name in ("train-010000.pt", "bare.pt", "network-snapshot.pkl"):
        prior, info = load_prior(d / name)
        assert info.family == "stylegan2" and info.source == str(d / name)
        # Same network and the same gaussian fit (fixed seed): the same image, to float rounding.
        assert torch.allclose(_image(prior), img, atol=1e-5), name
    # Second loads come from the safetensors cache: still the same image.
    assert len(list((cache / "converted").glob("*.safetensors"))) == 4
    for name in ("rosinality.pt", "network-snapshot.pkl"):
        prior, _ = load_prior(d / name)
        assert torch.allclose(_image(prior), img, atol=1e-5), name


def test_nvidia_pickle_matches_nvidia_forward_pass(tiny: dict) -> None:
    """The renamed tensors compute what NVIDIA's own networks.py computes from the pickle's tensors."""
    prior, _ = load_prior(tiny["dir"] / "network-snapshot.pkl")
    g = prior.generator
    t = tiny["ada"]
    z = torch.randn(4, g.style_dim, generator=torch.Generator().manual_seed(1))
    ws = torch.randn(4, g.n_latent, g.style_dim, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(g.mapping(z), ada_reference_mapping(t, z), atol=1e-5)
        for fused in (True, False):
            assert torch.allclose(g.synthesis(ws, fused=fused), ada_reference_synthesis(t, ws, 32), atol=1e-5)


def test_latent_average_and_tensors_survive(tiny: dict) -> None:
    for name in ("rosinality.pt", "network-snapshot.pkl"):
        family, state, extras = load_state(tiny["dir"] / name)
        assert family == "stylegan2"
        assert torch.allclose(extras["latent_avg"], tiny["la"])
        assert set(state) == set(tiny["sd"])
        for k, v in tiny["sd"].items():
            assert torch.equal(state[k], v), (name, k)
    assert load_state(tiny["dir"] / "network-snapshot.pkl")[2]["lr_mlp"] == pytest.approx(0.01)


def test_shapes_determine_the_config(tmp_path: Path) -> None:
    """Size, style_dim, mapping depth and per-resolution widths come from the tensors."""
    torch.manual_seed(0)
    channels = {4: 24, 8: 20, 16: 12, 32: 8, 64: 4}
    g = Generator(64, style_dim=24, n_mlp=3, channels=channels)
    torch.save({"g_ema": g.state_dict(), "latent_avg": torch.zeros(24)}, tmp_path / "odd.pt")
    family, state, extras = load_state(tmp_path / "odd.pt")
    cfg = infer_config(family, state, extras)
    assert cfg["size"] == 64 and cfg["style_dim"] == 24 and cfg["n_mlp"] == 3
    assert {int(k): v for k, v in cfg["channels"].items()} == channels
    prior, info = load_prior(tmp_path / "odd.pt")
    assert prior.resolution == 64 and prior.latent_rows == 10 and prior.latent_dim == 24
    with torch.no_grad():
        ws = torch.randn(1, 10, 24)
        assert torch.allclose(prior.generator.synthesis(ws), g.synthesis(ws), atol=1e-6)


def test_gaussian_fit_is_computed_once_and_cached(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_path = tmp_path / "g.pt"
    g = make_tiny_generator(16, seed=5)
    torch.save({"g_ema": g.state_dict(), "latent_avg": latent_average(g, 256)}, make_path)
    first, info1 = load_prior(path)
    (entry,) = (cache / "converted").glob("*.json")
    meta = json.loads(entry.read_text())
    assert meta["family"] == "stylegan2" and meta["has_gaussian"] and meta["sha256"] == info1.sha256
    assert meta["config"]["size"] == 16

    def no_refit(*a, **k):
        raise AssertionError("gaussian refitted although cached")

    monkeypatch.setattr(stylegan2, "fit_gaussian", no_refit)
    second, info2 = load_prior(path)
    assert info2 == info1
    for a, b in zip(_gauss(first), _gauss(second)):
        assert torch.equal(a, b)
    # The fit is what PULSE needs: mean/std of the mapping output before its last lrelu.
    mean, std = _gauss(first)
    assert mean.shape == (g.style_dim,) and bool((std > 0).all())


def test_changed_file_misses_the_cache(tmp_path: Path, cache: Path) -> None:
    path = tmp_path / "g.pt"
    g1, g2 = make_tiny_generator(16, seed=1), make_tiny_generator(16, seed=2)
    torch.save({"g_ema": g1.state_dict()}, path)
    a, _ = load_prior(path)
    torch.save({"g_ema": g2.state_dict()}, path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    b, _ = load_prior(path)
    ws = torch.randn(1, a.latent_rows, a.latent_dim)
    with torch.no_grad():
        assert torch.allclose(b.generator.synthesis(ws), g2.synthesis(ws), atol=1e-6)
        assert not torch.allclose(a.generator.synthesis(ws), b.generator.synthesis(ws), atol=1e-3)


def test_damaged_cache_is_rebuilt(tiny: dict, cache: Path) -> None:
    path = tiny["dir"] / "rosinality.pt"
    img = _image(load_prior(path)[0])
    for f in (cache / "converted").glob("*.safetensors"):
        f.write_bytes(f.read_bytes()[:100])
    assert torch.allclose(_image(load_prior(path)[0]), img, atol=1e-6)


def test_safetensors_input_loads(tiny: dict, cache: Path) -> None:
    path = tiny["dir"] / "rosinality.pt"
    img = _image(load_prior(path)[0])
    (st,) = (cache / "converted").glob("*.safetensors")
    prior, info = load_prior(st)  # the converted file is itself a valid checkpoint
    assert info.family == "stylegan2" and torch.allclose(_image(prior), img, atol=1e-5)


@pytest.mark.parametrize("name", ["rosinality.pt", "network-snapshot.pkl"])
@pytest.mark.parametrize("keep", [0.5, 0.97, 10])
def test_truncated_files_are_refused_with_the_file_named(tiny: dict, tmp_path: Path, name: str, keep: float) -> None:
    data = (tiny["dir"] / name).read_bytes()
    n = int(len(data) * keep) if keep < 1 else int(keep)
    path = tmp_path / f"cut-{name}"
    path.write_bytes(data[:n])
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert str(path) in e.value.message
    assert e.value.code == "CORRUPT_CHECKPOINT"


def test_flipped_bytes_in_a_zip_checkpoint_are_refused(tiny: dict, tmp_path: Path) -> None:
    data = bytearray((tiny["dir"] / "rosinality.pt").read_bytes())
    path = tmp_path / "flipped.pt"
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # zip CRCs catch it
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert str(path) in e.value.message and "checksum mismatch" in e.value.message


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"\x89PNG\r\n\x1a\n" + bytes(200), "not a model checkpoint"),
    (b"hello, this is a text file\n", "not a model checkpoint"),
])
def test_non_checkpoints_are_refused(tmp_path: Path, content: bytes, needle: str) -> None:
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert str(path) in e.value.message and needle in e.value.message


def test_checkpoint_without_a_generator_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "classifier.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, path)
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert str(path) in e.value.message and "no known generator" in e.value.message


def test_mismatched_tensors_are_refused(tiny: dict, tmp_path: Path) -> None:
    sd = dict(tiny["sd"])
    sd["convs.1.conv.weight"] = sd["convs.1.conv.weight"][:, :, :8]
    path = tmp_path / "bad.pt"
    torch.save({"g_ema": sd}, path)
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert str(path) in e.value.message and "convs.1.conv.weight" in e.value.message


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError) as e:
        load_prior(tmp_path / "nope.pt")
    assert e.value.code == "NO_WEIGHTS" and "nope.pt" in e.value.message


def test_shared_dcgan_prior_loads(shared_prior_path: Path, cache: Path) -> None:
    prior, info = load_prior(shared_prior_path)
    assert info.family == "dcgan" and info.resolution == 32 and info.sha256 == SHARED_SHA256
    assert prior.latent_rows == 1 and prior.latent_dim == 100
    img = _image(prior)
    assert img.shape == (2, 3, 32, 32) and float(img.abs().max()) <= 1.0
    assert float(img.std()) > 0.1  # a face, not a constant
    again, _ = load_prior(shared_prior_path)  # from the cache
    assert torch.allclose(_image(again), img, atol=1e-6)
    assert len(list((cache / "converted").glob("*.safetensors"))) == 1


# ---- the PyTorch DCGAN tutorial layout (`digiface-64`) ------------------------------------------------------


def _tutorial_checkpoint(path: Path, widths: tuple[int, ...] = (32, 16, 8, 4), z_dim: int = 20) -> dict:
    from pulse_server.models.dcgan import TutorialGenerator

    torch.manual_seed(5)
    g = TutorialGenerator(z_dim=z_dim, widths=widths)
    for m in g.modules():  # non-trivial running statistics, so eval mode is observable
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    sd = g.state_dict()
    # The tutorial's own checkpoint: generator, discriminator and optimiser states under fixed names.
    torch.save({"netG_state_dict": sd, "netD_state_dict": {"main.0.weight": torch.zeros(4, 3, 4, 4)},
                "optimizerG_state_dict": {"state": {}, "param_groups": [{"lr": 2e-4}]}}, path)
    return sd


def test_tutorial_dcgan_checkpoint_loads_with_its_size_read_off_the_shapes(tmp_path: Path, cache: Path) -> None:
    sd = _tutorial_checkpoint(tmp_path / "weights.tar", widths=(32, 16, 8, 4, 4))  # one block more: 128 px
    family, state, extras = load_state(tmp_path / "weights.tar")
    assert family == "dcgan" and set(state) == set(sd)
    assert infer_config(family, state, extras) == {"layout": "tutorial", "z_dim": 20, "widths": [32, 16, 8, 4, 4],
                                                   "channels": 3}
    prior, info = load_prior(tmp_path / "weights.tar")
    assert info.family == "dcgan" and prior.resolution == 128 and prior.latent_dim == 20
    img = _image(prior)
    again, _ = load_prior(tmp_path / "weights.tar")  # from the converted cache
    assert torch.equal(_image(again), img)


def test_tutorial_dcgan_with_a_missing_tensor_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.tar"
    sd = _tutorial_checkpoint(path)
    del sd["main.4.running_var"]
    torch.save({"netG_state_dict": sd}, path)
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert e.value.code == "CORRUPT_CHECKPOINT" and "main.4.running_var" in e.value.message


def test_a_pickle_inside_a_dcgan_checkpoint_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.tar"
    sd = _tutorial_checkpoint(path)
    torch.save({"netG_state_dict": sd, "hook": os.system}, path)
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert e.value.code == "UNSAFE_PICKLE"


@pytest.fixture
def digiface() -> Path:
    from pulse_server.models import registry

    if not registry.is_present("digiface-64"):
        pytest.skip("digiface-64 needs the gan-face-generate package: pip install --no-deps gan-face-generate==1.1.1 "
                    "(`make venv` installs it)")
    return registry.weights_path("digiface-64")


def test_digiface_64_loads_from_the_installed_package(digiface: Path, cache: Path) -> None:
    prior, info = load_prior("digiface-64")
    assert info.name == "digiface-64-dcgan" and info.family == "dcgan" and info.resolution == 64
    assert info.source == str(digiface) and digiface.parts[-2:] == ("gan_face_generate", "weights.tar")
    assert info.sha256 == "0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f"
    assert prior.latent_dim == 100 and prior.stages == 4
    img = _image(prior)
    assert img.shape == (2, 3, 64, 64) and float(img.abs().max()) <= 1
    # A face has structure at every scale: far from flat, and its two samples differ.
    assert float(img.std()) > 0.2 and float((img[0] - img[1]).abs().mean()) > 0.1
    with torch.no_grad():
        for k in range(prior.stages):
            z = prior.sample_latent(2, torch.Generator().manual_seed(0))
            assert torch.equal(prior.render_from(prior.render_to(z, None, k), k, z), img), k
