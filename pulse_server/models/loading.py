"""Checkpoint formats -> a ready `FacePrior`: one entry point, `load_prior(weights, device)`.

Formats (recognised from the file's first bytes, never from its extension; the family from its keys):
  * rosinality/stylegan2-pytorch `.pt` — `{"g_ema": state, "latent_avg": (512,), ["g", "d", "args", ...]}`,
    read with `torch.load(weights_only=True)`; a bare `g_ema` state dict works too;
  * NVIDIA stylegan2-ada-pytorch / stylegan3 `.pkl` — `{"G_ema": <persistent Generator>, ...}`, read with
    the restricted unpickler (`unpickle.py`: no code from the file runs) and renamed onto rosinality's
    parameter names (`_ada_to_rosinality`: same tensors, reshaped; images identical);
  * the DCGAN state dict of `../shared/priors/` (`generator_deconv.*`) and the PyTorch DCGAN tutorial's
    generator (`main.*`, bare or as the tutorial's checkpoint `{"netG_state_dict": ...}`, e.g. the
    `digiface-64` model's `weights.tar`, which is a torch.save zip despite its name);
  * safetensors with either key set (what the cache below writes).
Size, style_dim, mapping depth and per-resolution channel widths are read off the tensor shapes, so tiny
test configurations load like the 1024² release; a DCGAN's layout ("deconv32" or "tutorial") is read off
its key names and its widths off the shapes.

Cache: the first load of a file writes `<cache>/converted/<key>.safetensors` (weights + the PULSE
gaussian fit of the mapping network) and `<key>.json` (family, config, the source's sha256). The key
hashes the source's absolute path, size and mtime_ns rather than its contents: a later start then costs
one `stat` instead of reading 380 MB, and replacing/re-downloading the file changes size or mtime and so
misses the cache. The content sha256 is still computed once, at conversion, for PriorInfo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import ModelError
from .base import FacePrior, PriorInfo

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
_TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19"  # pickled torch.save magic number
# z samples for PULSE's gaussian fit (once per checkpoint; the original drew 1e6 at every start).
GAUSSIAN_SAMPLES = 100_000
_META = "__pulse__."  # cache-only tensors (gaussian fit, latent average) in the safetensors file


# ---------------------------------------------------------------------------------------------------
# Public API


def load_prior(weights: str | Path | None, device: str | torch.device = "cpu") -> tuple[FacePrior, PriorInfo]:
    """Load a checkpoint as a frozen prior on `device`.

    `weights`: a file path, a registry name ("ffhq-256"), or None for the default model of `device`
    (`registry.default_model`; downloaded on first use)."""
    from .registry import REGISTRY, default_model, ensure_weights, get_spec, sha256_file

    name: str | None = None
    device = torch.device(device)
    if weights is None or (isinstance(weights, str) and weights in REGISTRY and not Path(weights).exists()):
        key = default_model(device) if weights is None else str(weights)  # a registry name, e.g. "ffhq-256"
        path = ensure_weights(key)
        name = get_spec(key).model_name
    else:
        path = Path(weights).expanduser()
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}", code="NO_WEIGHTS")

    cached = _read_cache(path)
    if cached is not None:
        family, config, state, meta, sha = cached
    else:
        family, state, extras = load_state(path)
        config = infer_config(family, state, extras)
        meta = {}
        if extras.get("latent_avg") is not None:
            meta["latent_avg"] = extras["latent_avg"]
        sha = sha256_file(path)

    prior, fitted = _build_prior(family, config, state, meta, device, path)
    if cached is None or fitted:
        _write_cache(path, family, config, state, {**meta, **fitted}, sha)
    info = PriorInfo(name=name or path.stem, family=family, resolution=prior.resolution, source=str(path), sha256=sha)
    return prior, info


def load_state(path: str | Path) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    """Read a checkpoint file: (family, state dict in this package's parameter names, extras).

    extras: "format" (rosinality | stylegan2-ada-pkl | dcgan | safetensors), "latent_avg" (Tensor or
    None) and, for NVIDIA pickles, "lr_mlp"."""
    path = Path(path)
    kind = _sniff(path)
    if kind == "safetensors":
        state = _load_safetensors(path)
        latent_avg = state.pop(_META + "latent_avg", None)
        state = {k: v for k, v in state.items() if not k.startswith(_META)}
        return _family(state, path), state, {"format": "safetensors", "latent_avg": latent_avg}
    if kind == "torch":
        return _from_torch_object(_torch_load(path), path)
    from .unpickle import restricted_load

    # NVIDIA's network pickles, or anything else: the restricted unpickler is safe on arbitrary bytes, and
    # trying it on an unrecognised file names any code a pickle of an older protocol would ask for.
    try:
        with open(path, "rb") as f:
            obj = restricted_load(f, path)
    except ModelError as e:
        if kind == "pickle" or e.code != "CORRUPT_CHECKPOINT":
            raise
        raise ModelError(f"{path}: not a model checkpoint (unrecognised format; expected a PyTorch .pt, an "
                         "NVIDIA .pkl or a .safetensors file)", code="CORRUPT_CHECKPOINT") from None
    return _from_network_pickle(obj, path)


def infer_config(family: str, state: dict[str, Tensor], extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """Network hyper-parameters read off tensor shapes (JSON-serialisable)."""
    extras = extras or {}
    try:
        if family == "stylegan2":
            n_mlp = 0
            while f"style.{n_mlp + 1}.weight" in state:
                n_mlp += 1
            n_up = 0
            while f"to_rgbs.{n_up}.conv.weight" in state:
                n_up += 1
            channels = {4: int(state["input.input"].shape[1])}
            for i in range(n_up):
                channels[2 ** (i + 3)] = int(state[f"to_rgbs.{i}.conv.weight"].shape[2])  # (1, 3, C, 1, 1)
            return {
                "size": 4 * 2**n_up,
                "style_dim": int(state["style.1.weight"].shape[1]),
                "n_mlp": n_mlp,
                "lr_mlp": float(extras.get("lr_mlp", 0.01)),
                "channels": {str(k): v for k, v in channels.items()},
            }
        if family == "dcgan" and "main.0.weight" in state:
            n = 0  # blocks before the output layer: main.{3i} is block i's ConvTranspose2d (in, out, k, k)
            while f"main.{3 * (n + 1)}.weight" in state:
                n += 1
            return {
                "layout": "tutorial",
                "z_dim": int(state["main.0.weight"].shape[0]),
                "widths": [int(state[f"main.{3 * i}.weight"].shape[1]) for i in range(n)],
                "channels": _rgb(int(state[f"main.{3 * n}.weight"].shape[1])),
            }
        if family == "dcgan":
            p = "generator_deconv."
            return {
                "layout": "deconv32",
                "z_dim": int(state[p + "0.0.weight"].shape[0]),  # ConvTranspose2d weight (in, out, k, k)
                "widths": [int(state[p + "0.0.weight"].shape[1]), int(state[p + "1.0.weight"].shape[0]),
                           int(state[p + "2.0.weight"].shape[1]), int(state[p + "3.0.weight"].shape[1])],
            }
    except (KeyError, IndexError) as e:
        raise ModelError(f"incomplete {family} checkpoint: missing or malformed tensor {e}", code="CORRUPT_CHECKPOINT") from None
    raise ModelError(f"unknown model family {family!r}", code="CORRUPT_CHECKPOINT")


def _rgb(channels: int) -> int:
    if channels != 3:
        raise ModelError(f"{channels}-channel output; only RGB generators are supported", code="UNSUPPORTED_MODEL")
    return channels


# ---------------------------------------------------------------------------------------------------
# Formats


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        raise ModelError(f"cannot read weights file {path}: {e.strerror or e}", code="NO_WEIGHTS") from None
    if not head:
        raise ModelError(f"{path}: empty file, not a model checkpoint", code="CORRUPT_CHECKPOINT")
    if head.startswith((b"PK\x03\x04", _TORCH_LEGACY_MAGIC)):
        return "torch"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"  # u64 header length, then a JSON header
    if head[0] == 0x80 and 2 <= head[1] <= 5:
        return "pickle"
    return "unknown"


def _check_zip(path: Path) -> None:
    """torch.load does not check the zip CRCs: flipped bits in a tensor would load as wrong weights."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise ModelError(f"{path}: truncated or corrupt PyTorch checkpoint ({e})", code="CORRUPT_CHECKPOINT") from None
    if bad is not None:
        raise ModelError(f"{path}: corrupt PyTorch checkpoint (checksum mismatch in {bad})", code="CORRUPT_CHECKPOINT")


def _torch_load(path: Path) -> Any:
    import argparse

    if zipfile.is_zipfile(path):
        _check_zip(path)

    # rosinality's training checkpoints also pickle their argparse Namespace ("args"): harmless data.
    safe = getattr(torch.serialization, "safe_globals", None)
    try:
        if safe is not None:
            with safe([argparse.Namespace]):
                return torch.load(path, map_location="cpu", weights_only=True)
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files (RuntimeError, UnpicklingError, zip errors...)
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "Unsupported global" in str(e) or "weights_only" in str(e):
            m = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f"`{m.group(1)}`" if m else "code"
            raise ModelError(f"{path}: refused to load: the checkpoint asks for {what}, which is not part of a "
                             "model's weights (a checkpoint can run arbitrary code; only tensors are read)",
                             code="UNSAFE_PICKLE") from None
        what = "truncated" if isinstance(e, (EOFError, zipfile.BadZipFile)) or "central directory" in msg \
            or "EOF" in msg or "truncated" in msg.lower() else "corrupt"
        raise ModelError(f"{path}: {what} PyTorch checkpoint ({type(e).__name__}: {msg})",
                         code="CORRUPT_CHECKPOINT") from None


def _load_safetensors(path: Path) -> dict[str, Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ModelError(f"{path}: corrupt safetensors file ({e})", code="CORRUPT_CHECKPOINT") from None


def _family(state: Any, path: Path) -> str:
    if isinstance(state, dict):
        keys = [k for k in state if isinstance(k, str)]
        if "style.1.weight" in state and "input.input" in state:
            return "stylegan2"
        if any(k.startswith("generator_deconv.") for k in keys):
            return "dcgan"
        if "main.0.weight" in state and all(k.startswith("main.") for k in keys):
            return "dcgan"  # the PyTorch DCGAN tutorial's generator
        sample = ", ".join(keys[:6]) + (", ..." if len(keys) > 6 else "")
        raise ModelError(f"{path}: no known generator in this checkpoint (keys: {sample or 'none'}); expected a "
                         "StyleGAN2 (rosinality or NVIDIA) or a DCGAN face generator", code="CORRUPT_CHECKPOINT")
    raise ModelError(f"{path}: no generator in this checkpoint (it holds a {type(state).__name__})",
                     code="CORRUPT_CHECKPOINT")


def _tensors_only(state: dict, path: Path, what: str) -> dict[str, Tensor]:
    bad = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if bad:
        raise ModelError(f"{path}: {what} holds non-tensor entries ({', '.join(map(str, bad[:3]))})",
                         code="CORRUPT_CHECKPOINT")
    return dict(state)


def _from_torch_object(obj: Any, path: Path) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    if isinstance(obj, dict) and isinstance(obj.get("g_ema"), dict):
        state = _tensors_only(obj["g_ema"], path, "g_ema")
        latent_avg = obj.get("latent_avg")
        family = _family(state, path)
        return family, state, {"format": "rosinality", "latent_avg": latent_avg if isinstance(latent_avg, Tensor) else None}
    if isinstance(obj, dict) and "G_ema" in obj:
        return _from_network_pickle(obj, path)
    if isinstance(obj, dict) and isinstance(obj.get("netG_state_dict"), dict):
        obj = obj["netG_state_dict"]  # the DCGAN tutorial's training checkpoint: only the generator is used
    family = _family(obj, path)
    state = _tensors_only(obj, path, "the state dict")
    return family, state, {"format": "dcgan" if family == "dcgan" else "rosinality", "latent_avg": None}


def _from_network_pickle(obj: Any, path: Path) -> tuple[str, dict[str, Tensor], dict[str, Any]]:
    from .unpickle import PersistentObject

    if not isinstance(obj, dict) or "G_ema" not in obj:
        keys = ", ".join(map(str, list(obj)[:6])) if isinstance(obj, dict) else type(obj).__name__
        raise ModelError(f"{path}: pickle without a 'G_ema' generator (found: {keys})", code="CORRUPT_CHECKPOINT")
    g = obj["G_ema"]
    if not isinstance(g, PersistentObject) or g.class_name != "Generator":
        raise ModelError(f"{path}: 'G_ema' is not a StyleGAN2 Generator record", code="CORRUPT_CHECKPOINT")
    state, extras = _ada_to_rosinality(g, path)
    return "stylegan2", state, {"format": "stylegan2-ada-pkl", **extras}


# ---------------------------------------------------------------------------------------------------
# NVIDIA stylegan2-ada-pytorch names -> rosinality names
#
# Both implement the same network; the differences are naming, a few singleton axes, and where the
# blur filter's gain lives. Correspondences (NVIDIA training/networks.py vs rosinality model.py):
#   mapping.fc{i}.weight/bias             -> style.{i+1}.weight/bias    same storage convention: weight
#                                            ~N(0,1)/lr_mul, runtime gain lr_mul/sqrt(in), bias*lr_mul
#   mapping.w_avg                          -> latent_avg
#   synthesis.b4.const (C,4,4)             -> input.input (1,C,4,4)
#   b4.conv1 / bR.conv0 / bR.conv1         -> conv1 / convs.{2k-2} / convs.{2k-1}    (R = 4·2^k)
#     .weight (O,I,3,3)                    -> .conv.weight (1,O,I,3,3). NVIDIA applies no 1/sqrt(fan_in)
#                                            to modulated weights, rosinality does; demodulation cancels
#                                            the constant. The up-convs: NVIDIA conv_transpose2d with
#                                            w.transpose(0,1), unflipped (flip_weight=False then
#                                            flip=not False) — the same as rosinality: no flip.
#     .affine.weight/bias                  -> .conv.modulation.weight/bias (bias_init 1 in both)
#     .noise_strength ()                   -> .noise.weight (1,)
#     .noise_const (R,R)                   -> noises.noise_{n} (1,1,R,R); n = 0 for b4, 2k-1 / 2k
#     .bias                                -> .activate.bias   (lrelu 0.2 · sqrt 2 in both)
#     .resample_filter (4,4), sum 1        -> convs.{2k-2}.conv.blur.kernel = 4 · filter (gain up²;
#                                            same pads (1,1) after the stride-2 transposed conv)
#   b4.torgb / bR.torgb                    -> to_rgb1 / to_rgbs.{k-1}
#     .weight (3,C,1,1)                    -> .conv.weight (1,3,C,1,1); both scale styles by 1/sqrt(C)
#     .bias (3,)                           -> .bias (1,3,1,1)
#     .affine.*                            -> .conv.modulation.*
#   bR.resample_filter (skip upsampling)   -> to_rgbs.{k-1}.upsample.kernel = 4 · filter (pads (2,1))
# W+ rows line up too: NVIDIA block bR takes ws[2k-1 .. 2k+1] (conv0, conv1, torgb), rosinality uses
# latent[:, i], [:, i+1], [:, i+2] with i = 2k-1. Not reproduced: NVIDIA's optional conv_clamp (±256 on
# activations; no effect on a trained network's normal range) and fp16 execution.


def _filter_kernel(f: Tensor) -> Tensor:
    f = f.float()
    if f.ndim == 1:
        f = torch.outer(f, f)
    return f * 4.0  # upfirdn2d gain up**2 for 2× upsampling


def _ada_to_rosinality(g: Any, path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    t = g.tensors()
    mods = g.modules()
    synthesis, mapping = mods.get("synthesis"), mods.get("mapping")
    if synthesis is None or mapping is None:
        raise ModelError(f"{path}: 'G_ema' has no mapping/synthesis networks", code="CORRUPT_CHECKPOINT")
    if any(k.startswith("mapping.embed.") for k in t):
        raise ModelError(f"{path}: class-conditional generators are not supported (a face prior takes no label)",
                         code="UNSUPPORTED_MODEL")
    blocks = sorted(int(m.group(1)) for name in synthesis.modules() if (m := re.fullmatch(r"b(\d+)", name)))
    if not blocks:
        raise ModelError(f"{path}: not a StyleGAN2 generator (no synthesis blocks b4, b8, ...; StyleGAN3 "
                         "pickles are not supported)", code="UNSUPPORTED_MODEL")
    for res in blocks:
        arch = synthesis.modules()[f"b{res}"].attr("architecture", "skip")
        if arch != "skip":
            raise ModelError(f"{path}: synthesis block b{res} uses the '{arch}' architecture; only StyleGAN2's "
                             "'skip' generator (config-f) is supported", code="UNSUPPORTED_MODEL")
    if blocks != [4 * 2**k for k in range(len(blocks))]:
        raise ModelError(f"{path}: unexpected synthesis blocks {blocks}", code="CORRUPT_CHECKPOINT")

    def get(name: str) -> Tensor:
        try:
            return t[name].float()
        except KeyError:
            raise ModelError(f"{path}: incomplete generator: tensor '{name}' is missing",
                             code="CORRUPT_CHECKPOINT") from None

    s: dict[str, Tensor] = {}
    i = 0
    while f"mapping.fc{i}.weight" in t:
        s[f"style.{i + 1}.weight"] = get(f"mapping.fc{i}.weight")
        s[f"style.{i + 1}.bias"] = get(f"mapping.fc{i}.bias")
        i += 1
    if i == 0:
        raise ModelError(f"{path}: incomplete generator: no mapping layers", code="CORRUPT_CHECKPOINT")

    def layer(src: str, dst: str, noise_idx: int, res: int) -> None:
        s[f"{dst}.conv.weight"] = get(f"{src}.weight").unsqueeze(0)
        s[f"{dst}.conv.modulation.weight"] = get(f"{src}.affine.weight")
        s[f"{dst}.conv.modulation.bias"] = get(f"{src}.affine.bias")
        s[f"{dst}.activate.bias"] = get(f"{src}.bias")
        if f"{src}.noise_strength" in t:  # use_noise=False layers have neither tensor
            s[f"{dst}.noise.weight"] = get(f"{src}.noise_strength").reshape(1)
            s[f"noises.noise_{noise_idx}"] = get(f"{src}.noise_const").reshape(1, 1, res, res)
        else:
            s[f"{dst}.noise.weight"] = torch.zeros(1)
            s[f"noises.noise_{noise_idx}"] = torch.zeros(1, 1, res, res)

    def torgb(src: str, dst: str) -> None:
        w = get(f"{src}.weight")
        if w.shape[0] != 3:
            raise ModelError(f"{path}: {w.shape[0]}-channel output; only RGB generators are supported",
                             code="UNSUPPORTED_MODEL")
        s[f"{dst}.conv.weight"] = w.unsqueeze(0)
        s[f"{dst}.conv.modulation.weight"] = get(f"{src}.affine.weight")
        s[f"{dst}.conv.modulation.bias"] = get(f"{src}.affine.bias")
        s[f"{dst}.bias"] = get(f"{src}.bias").reshape(1, 3, 1, 1)

    s["input.input"] = get("synthesis.b4.const").unsqueeze(0)
    layer("synthesis.b4.conv1", "conv1", 0, 4)
    torgb("synthesis.b4.torgb", "to_rgb1")
    for k, res in enumerate(blocks[1:], start=1):
        b = f"synthesis.b{res}"
        layer(f"{b}.conv0", f"convs.{2 * k - 2}", 2 * k - 1, res)
        s[f"convs.{2 * k - 2}.conv.blur.kernel"] = _filter_kernel(get(f"{b}.conv0.resample_filter"))
        layer(f"{b}.conv1", f"convs.{2 * k - 1}", 2 * k, res)
        torgb(f"{b}.torgb", f"to_rgbs.{k - 1}")
        s[f"to_rgbs.{k - 1}.upsample.kernel"] = _filter_kernel(get(f"{b}.resample_filter"))

    extras: dict[str, Any] = {"latent_avg": t["mapping.w_avg"].float() if "mapping.w_avg" in t else None}
    fc0 = mapping.modules().get("fc0")
    lr = fc0.attr("bias_gain") if fc0 is not None else None
    if isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0:
        extras["lr_mlp"] = float(lr)  # FullyConnectedLayer.bias_gain is the mapping's lr_multiplier
    return s, extras


# ---------------------------------------------------------------------------------------------------
# Building the prior


def _build_prior(family: str, config: dict[str, Any], state: dict[str, Tensor], meta: dict[str, Tensor],
                 device: torch.device, path: Path) -> tuple[FacePrior, dict[str, Tensor]]:
    """-> (frozen prior on device, newly computed cache tensors (the gaussian fit) or {})."""
    fitted: dict[str, Tensor] = {}
    if family == "stylegan2":
        from .stylegan2 import Generator, StyleGAN2Prior, fit_gaussian

        g = Generator(int(config["size"]), style_dim=int(config["style_dim"]), n_mlp=int(config["n_mlp"]),
                      lr_mlp=float(config.get("lr_mlp", 0.01)),
                      channels={int(k): int(v) for k, v in config["channels"].items()})
        _load_into(g, state, path, "StyleGAN2")
        g = g.to(device).eval().requires_grad_(False)
        mean, std = meta.get("gauss_mean"), meta.get("gauss_std")
        if mean is None or std is None:
            log.info("fitting the PULSE latent gaussian for %s (once; cached)", path)
            mean, std = fit_gaussian(g, samples=GAUSSIAN_SAMPLES)
            fitted = {"gauss_mean": mean.detach().cpu(), "gauss_std": std.detach().cpu()}
        prior: FacePrior = StyleGAN2Prior(g, mean.to(device), std.to(device))
    elif family == "dcgan":
        from .dcgan import DCGANGenerator, DCGANPrior, TutorialGenerator

        widths = tuple(int(w) for w in config["widths"])
        dcgan: DCGANGenerator | TutorialGenerator
        if config.get("layout", "deconv32") == "tutorial":
            dcgan = TutorialGenerator(z_dim=int(config["z_dim"]), widths=widths, channels=int(config["channels"]))
        else:
            dcgan = DCGANGenerator(z_dim=int(config["z_dim"]), widths=widths)
        _load_into(dcgan, state, path, "DCGAN")
        prior = DCGANPrior(dcgan.to(device))
    else:
        raise ModelError(f"{path}: unknown model family {family!r}", code="CORRUPT_CHECKPOINT")
    return prior.to(device).freeze(), fitted


def _load_into(module: torch.nn.Module, state: dict[str, Tensor], path: Path, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = " ".join(str(e).split())[:400]
        raise ModelError(f"{path}: tensors do not fit a {what} generator ({detail})", code="CORRUPT_CHECKPOINT") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ModelError(f"{path}: corrupt checkpoint: non-finite values in {', '.join(bad[:3])}",
                         code="CORRUPT_CHECKPOINT")


# ---------------------------------------------------------------------------------------------------
# Cache


def _cache_paths(path: Path) -> tuple[Path, Path]:
    from .registry import cache_dir

    st = path.stat()
    ident = f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()
    key = hashlib.sha256(ident).hexdigest()[:32]
    root = cache_dir() / "converted"
    return root / f"{key}.safetensors", root / f"{key}.json"


def _read_cache(path: Path) -> tuple[str, dict, dict[str, Tensor], dict[str, Tensor], str | None] | None:
    try:
        st_path, js_path = _cache_paths(path)
        if not js_path.is_file() or not st_path.is_file():
            return None
        info = json.loads(js_path.read_text())
        if info.get("cache_format") != CACHE_FORMAT:
            return None
        from safetensors.torch import load_file

        tensors = load_file(str(st_path), device="cpu")
    except Exception as e:  # a damaged cache entry is rebuilt, never fatal
        log.warning("ignoring unreadable converted-weights cache for %s: %s", path, e)
        return None
    meta = {k[len(_META):]: tensors.pop(k) for k in list(tensors) if k.startswith(_META)}
    return info["family"], info["config"], tensors, meta, info.get("sha256")


def _write_cache(path: Path, family: str, config: dict, state: dict[str, Tensor], meta: dict[str, Tensor],
                 sha: str | None) -> None:
    from safetensors.torch import save_file

    try:
        st_path, js_path = _cache_paths(path)
        st_path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
        tensors.update({_META + k: v.detach().cpu().contiguous().clone() for k, v in meta.items() if v is not None})
        tmp = st_path.with_name(f"{st_path.name}.{os.getpid()}.tmp")
        save_file(tensors, str(tmp), metadata={"family": family})
        os.replace(tmp, st_path)
        info = {"cache_format": CACHE_FORMAT, "family": family, "config": config, "source": str(path.resolve()),
                "sha256": sha, "has_gaussian": "gauss_mean" in meta,
                "gaussian_samples": GAUSSIAN_SAMPLES if "gauss_mean" in meta else None}
        tmp = js_path.with_name(f"{js_path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        os.replace(tmp, js_path)  # the JSON is written last: it marks the entry complete
    except Exception as e:  # read-only or full cache dir: loading still works, just not faster next time
        log.warning("could not write the converted-weights cache for %s: %s", path, e)
