"""Test helpers: write NVIDIA stylegan2-ada-pytorch network pickles, and render them with NVIDIA's semantics.

`write_ada_pickle` produces the structure of a real `network-snapshot-*.pkl` / NGC `stylegan2-*.pkl`:
a dict {G, D, G_ema, augment_pipe, training_set_kwargs} whose networks pickle as
`torch_utils.persistence._reconstruct_persistent_obj(meta)`, meta = {type, version, module_src,
class_name, state}, state = the torch.nn.Module __dict__ (_parameters, _buffers, _modules, hooks, plain
attributes including numpy float64 gains and dnnlib.util.EasyDict init kwargs). The `torch_utils` and
`dnnlib` modules exist in sys.modules only while writing.

`ada_reference_synthesis` / `ada_reference_mapping` re-implement the forward pass of NVIDIA's
training/networks.py (modulated_conv2d with flip_weight=(up == 1), conv2d_resample's transposed-conv +
upfirdn2d path, noise_mode='const') directly on NVIDIA-named tensors, so a wrong name mapping in the
loader shows up as a different image.
"""

from __future__ import annotations

import math
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

FAKE_MODULE_SRC = "import torch\n# stand-in for training/networks.py: never executed by the loader\n"


@contextmanager
def nvidia_modules() -> Iterator[types.SimpleNamespace]:
    """Temporary `torch_utils.persistence` and `dnnlib.util` modules, so pickle can name their globals."""
    names = ["torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"]
    saved = {n: sys.modules.get(n) for n in names}
    tu, tp, dn, du = (types.ModuleType(n) for n in names)

    def _reconstruct_persistent_obj(meta):  # only pickled by name, never called in these tests
        raise AssertionError("stand-in reconstruct called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    tp._reconstruct_persistent_obj = _reconstruct_persistent_obj
    EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    du.EasyDict = EasyDict
    tu.persistence, dn.util, dn.EasyDict = tp, du, EasyDict
    sys.modules.update({"torch_utils": tu, "torch_utils.persistence": tp, "dnnlib": dn, "dnnlib.util": du})
    try:
        yield types.SimpleNamespace(reconstruct=_reconstruct_persistent_obj, EasyDict=EasyDict)
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


class FakeNet:
    """Pickles exactly like a `@persistence.persistent_class` torch module."""

    def __init__(self, class_name: str, params: dict[str, Tensor] | None = None,
                 buffers: dict[str, Tensor] | None = None, modules: dict[str, FakeNet] | None = None,
                 module_src: str = FAKE_MODULE_SRC, **attrs: Any):
        self.class_name, self.module_src = class_name, module_src
        self.params = {k: torch.nn.Parameter(v.detach().clone(), requires_grad=False) for k, v in (params or {}).items()}
        self.buffers = {k: v.detach().clone() for k, v in (buffers or {}).items()}
        self.modules = modules or {}
        self.attrs = attrs
        self.reconstruct = None  # set by write_ada_pickle

    def __reduce__(self):
        state = {
            "training": False,
            "_parameters": OrderedDict(self.params),
            "_buffers": OrderedDict(self.buffers),
            "_non_persistent_buffers_set": set(),
            "_backward_hooks": OrderedDict(),
            "_forward_hooks": OrderedDict(),
            "_forward_pre_hooks": OrderedDict(),
            "_state_dict_hooks": OrderedDict(),
            "_load_state_dict_pre_hooks": OrderedDict(),
            "_modules": OrderedDict(self.modules),
            **self.attrs,
        }
        meta = dict(type="class", version=6, module_src=self.module_src, class_name=self.class_name, state=state)
        return (self.reconstruct, (meta,))


def setup_filter(k=(1, 3, 3, 1)) -> Tensor:
    f = torch.tensor(k, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def ada_tensors_from_rosinality(sd: dict[str, Tensor], size: int) -> dict[str, Tensor]:
    """NVIDIA-named G_ema tensors holding the same network as a rosinality state dict."""
    t: dict[str, Tensor] = {}
    i = 1
    while f"style.{i}.weight" in sd:
        t[f"mapping.fc{i - 1}.weight"] = sd[f"style.{i}.weight"]
        t[f"mapping.fc{i - 1}.bias"] = sd[f"style.{i}.bias"]
        i += 1

    def layer(src: str, dst: str, noise: int) -> None:
        t[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        t[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        t[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        t[f"{dst}.bias"] = sd[f"{src}.activate.bias"]
        t[f"{dst}.noise_strength"] = sd[f"{src}.noise.weight"].reshape(())
        t[f"{dst}.noise_const"] = sd[f"noises.noise_{noise}"][0, 0]
        t[f"{dst}.resample_filter"] = setup_filter()

    def torgb(src: str, dst: str) -> None:
        t[f"{dst}.weight"] = sd[f"{src}.conv.weight"][0]
        t[f"{dst}.affine.weight"] = sd[f"{src}.conv.modulation.weight"]
        t[f"{dst}.affine.bias"] = sd[f"{src}.conv.modulation.bias"]
        t[f"{dst}.bias"] = sd[f"{src}.bias"].reshape(3)

    t["synthesis.b4.const"] = sd["input.input"][0]
    t["synthesis.b4.resample_filter"] = setup_filter()
    layer("conv1", "synthesis.b4.conv1", 0)
    torgb("to_rgb1", "synthesis.b4.torgb")
    for k in range(1, int(math.log2(size)) - 1):
        b = f"synthesis.b{4 * 2 ** k}"
        t[f"{b}.resample_filter"] = setup_filter()
        layer(f"convs.{2 * k - 2}", f"{b}.conv0", 2 * k - 1)
        layer(f"convs.{2 * k - 1}", f"{b}.conv1", 2 * k)
        torgb(f"to_rgbs.{k - 1}", f"{b}.torgb")
    return t


def _fc(name: str, t: dict[str, Tensor], lr: float, ea: Any, activation: str) -> FakeNet:
    w = t[f"{name}.weight"]
    return FakeNet("FullyConnectedLayer", params={"weight": w, "bias": t[f"{name}.bias"]},
                   activation=activation, weight_gain=np.float64(lr / np.sqrt(w.shape[1])), bias_gain=lr,
                   _init_args=(), _init_kwargs=ea(in_features=int(w.shape[1]), out_features=int(w.shape[0])))


def build_generator(t: dict[str, Tensor], size: int, latent_avg: Tensor, ea: Any, lr_mlp: float = 0.01,
                    module_src: str = FAKE_MODULE_SRC) -> FakeNet:
    """The persistent-object tree of stylegan2-ada-pytorch's Generator over NVIDIA-named tensors."""
    n_map = sum(1 for k in t if k.startswith("mapping.fc") and k.endswith(".weight"))
    w_dim = t["mapping.fc0.weight"].shape[0]
    mapping = FakeNet("MappingNetwork", buffers={"w_avg": latent_avg},
                      modules={f"fc{i}": _fc(f"mapping.fc{i}", t, lr_mlp, ea, "lrelu") for i in range(n_map)},
                      z_dim=w_dim, c_dim=0, w_dim=w_dim, num_ws=2 * int(math.log2(size)) - 2, num_layers=n_map,
                      w_avg_beta=0.995, module_src=module_src)

    def syn_layer(p: str, res: int, up: int) -> FakeNet:
        return FakeNet("SynthesisLayer",
                       params={k: t[f"{p}.{k}"] for k in ("weight", "noise_strength", "bias")},
                       buffers={k: t[f"{p}.{k}"] for k in ("resample_filter", "noise_const")},
                       modules={"affine": _fc(f"{p}.affine", t, 1.0, ea, "linear")},
                       resolution=res, up=up, use_noise=True, activation="lrelu", conv_clamp=None, padding=1,
                       act_gain=math.sqrt(2), module_src=module_src)

    def torgb(p: str) -> FakeNet:
        w = t[f"{p}.weight"]
        return FakeNet("ToRGBLayer", params={"weight": w, "bias": t[f"{p}.bias"]},
                       modules={"affine": _fc(f"{p}.affine", t, 1.0, ea, "linear")}, conv_clamp=None,
                       weight_gain=np.float64(1 / np.sqrt(w.shape[1])), module_src=module_src)

    blocks = {}
    for k in range(int(math.log2(size)) - 1):
        res = 4 * 2**k
        p = f"synthesis.b{res}"
        mods = {} if k == 0 else {"conv0": syn_layer(f"{p}.conv0", res, 2)}
        mods["conv1"] = syn_layer(f"{p}.conv1", res, 1)
        mods["torgb"] = torgb(f"{p}.torgb")
        blocks[f"b{res}"] = FakeNet("SynthesisBlock", params={"const": t[f"{p}.const"]} if k == 0 else {},
                                    buffers={"resample_filter": t[f"{p}.resample_filter"]}, modules=mods,
                                    in_channels=0 if k == 0 else int(t[f"{p}.conv0.weight"].shape[1]), w_dim=w_dim,
                                    resolution=res, img_channels=3, is_last=res == size, architecture="skip",
                                    use_fp16=False, channels_last=False, num_conv=1 if k == 0 else 2, num_torgb=1,
                                    module_src=module_src)
    synthesis = FakeNet("SynthesisNetwork", modules=blocks, w_dim=w_dim, img_resolution=size,
                        img_resolution_log2=int(math.log2(size)), img_channels=3,
                        block_resolutions=[4 * 2**k for k in range(int(math.log2(size)) - 1)],
                        num_ws=2 * int(math.log2(size)) - 2, module_src=module_src)
    return FakeNet("Generator", modules={"synthesis": synthesis, "mapping": mapping}, z_dim=w_dim, c_dim=0,
                   w_dim=w_dim, img_resolution=size, img_channels=3, num_ws=2 * int(math.log2(size)) - 2,
                   _init_args=(), _init_kwargs=ea(z_dim=w_dim, c_dim=0, w_dim=w_dim, img_resolution=size,
                                                   img_channels=3, mapping_kwargs=ea(num_layers=n_map)),
                   module_src=module_src)


def _set_reconstruct(net: FakeNet, fn: Any) -> None:
    net.reconstruct = fn
    for m in net.modules.values():
        _set_reconstruct(m, fn)


def write_ada_pickle(path: str | Path, t: dict[str, Tensor], size: int, latent_avg: Tensor, *,
                     module_src: str = FAKE_MODULE_SRC, protocol: int = 3, extra: dict | None = None) -> Path:
    """Write {G, D, G_ema, augment_pipe, training_set_kwargs} as stylegan2-ada-pytorch's training loop does."""
    path = Path(path)
    with nvidia_modules() as nv:
        g_ema = build_generator(t, size, latent_avg, nv.EasyDict, module_src=module_src)
        g = build_generator({k: v + 0.01 for k, v in t.items()}, size, latent_avg, nv.EasyDict, module_src=module_src)
        d = FakeNet("Discriminator", modules={"b4": FakeNet("DiscriminatorBlock", params={
            "weight": torch.randn(8, 3, 1, 1)}, architecture="resnet", module_src=module_src)},
            img_resolution=size, module_src=module_src)
        for net in (g_ema, g, d):
            _set_reconstruct(net, nv.reconstruct)
        data = {"G": g, "D": d, "G_ema": g_ema, "augment_pipe": None,
                "training_set_kwargs": nv.EasyDict(class_name="training.dataset.ImageFolderDataset",
                                                   path="~/datasets/ffhq.zip", resolution=size, xflip=True),
                **(extra or {})}
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=protocol)
    return path


# --- NVIDIA forward semantics (training/networks.py), for checking the loader's name mapping ----------


def _upfirdn2d(x: Tensor, f: Tensor, up: int = 1, pad: tuple[int, int, int, int] = (0, 0, 0, 0), gain: float = 1.0) -> Tensor:
    b, c, h, w = x.shape
    if up > 1:
        x = x.reshape(b, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(b, c, h * up, w * up)
    x = F.pad(x, list(pad))
    f = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)  # flip_filter=False: a true convolution
    return F.conv2d(x, f, groups=c)


def _fc_ref(x: Tensor, t: dict[str, Tensor], p: str, lr: float = 1.0, lrelu: bool = False) -> Tensor:
    w = t[f"{p}.weight"]
    x = x @ (w * (lr / math.sqrt(w.shape[1]))).t() + t[f"{p}.bias"] * lr
    return F.leaky_relu(x, 0.2) * math.sqrt(2) if lrelu else x


def ada_reference_mapping(t: dict[str, Tensor], z: Tensor, lr: float = 0.01) -> Tensor:
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()  # normalize_2nd_moment
    i = 0
    while f"mapping.fc{i}.weight" in t:
        x = _fc_ref(x, t, f"mapping.fc{i}", lr, lrelu=True)
        i += 1
    return x


def _modconv_ref(x: Tensor, weight: Tensor, styles: Tensor, up: int, f: Tensor | None, demod: bool) -> Tensor:
    b, cin, h, w_ = x.shape
    o, i, kh, kw = weight.shape
    w = weight[None] * styles.reshape(b, 1, -1, 1, 1)  # [NOIkk]
    if demod:
        w = w * (w.square().sum([2, 3, 4]) + 1e-8).rsqrt().reshape(b, -1, 1, 1, 1)
    x = x.reshape(1, b * cin, h, w_)
    if up == 1:  # flip_weight=True: conv2d's correlation, padding kernel//2
        out = F.conv2d(x, w.reshape(b * o, i, kh, kw), padding=kh // 2, groups=b)
    else:  # conv2d_resample, up=2: transposed conv with unflipped weights, then the FIR filter (pads 1,1)
        wt = w.transpose(1, 2).reshape(b * i, o, kh, kw)
        out = F.conv_transpose2d(x, wt, stride=2, groups=b)
        out = _upfirdn2d(out, f, pad=(1, 1, 1, 1), gain=4)
    return out.reshape(b, o, *out.shape[2:])


def _layer_ref(x: Tensor, w: Tensor, t: dict[str, Tensor], p: str, up: int) -> Tensor:
    styles = _fc_ref(w, t, f"{p}.affine")
    x = _modconv_ref(x, t[f"{p}.weight"], styles, up, t[f"{p}.resample_filter"], demod=True)
    x = x + t[f"{p}.noise_const"] * t[f"{p}.noise_strength"]  # noise_mode='const'
    return F.leaky_relu(x + t[f"{p}.bias"].reshape(1, -1, 1, 1), 0.2) * math.sqrt(2)


def _torgb_ref(x: Tensor, w: Tensor, t: dict[str, Tensor], p: str) -> Tensor:
    weight = t[f"{p}.weight"]
    styles = _fc_ref(w, t, f"{p}.affine") / math.sqrt(weight.shape[1])
    return _modconv_ref(x, weight, styles, 1, None, demod=False) + t[f"{p}.bias"].reshape(1, -1, 1, 1)


def ada_reference_synthesis(t: dict[str, Tensor], ws: Tensor, size: int) -> Tensor:
    """ws (B, num_ws, w_dim) -> image (B, 3, size, size), as NVIDIA's SynthesisNetwork computes it."""
    b = ws.shape[0]
    x = t["synthesis.b4.const"][None].repeat(b, 1, 1, 1)
    x = _layer_ref(x, ws[:, 0], t, "synthesis.b4.conv1", 1)
    img = _torgb_ref(x, ws[:, 1], t, "synthesis.b4.torgb")
    idx = 1
    for k in range(1, int(math.log2(size)) - 1):
        p = f"synthesis.b{4 * 2 ** k}"
        x = _layer_ref(x, ws[:, idx], t, f"{p}.conv0", 2)
        x = _layer_ref(x, ws[:, idx + 1], t, f"{p}.conv1", 1)
        img = _upfirdn2d(img, t[f"{p}.resample_filter"], up=2, pad=(2, 1, 2, 1), gain=4)
        img = img + _torgb_ref(x, ws[:, idx + 2], t, f"{p}.torgb")
        idx += 2
    return img
