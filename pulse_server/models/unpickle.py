"""A restricted unpickler for NVIDIA stylegan2-ada-pytorch / stylegan3 network pickles (`*.pkl`).

Those pickles carry the *source code* of their network classes: each module is stored as
`torch_utils.persistence._reconstruct_persistent_obj(meta)` with `meta = {type, version, module_src,
class_name, state}`, and NVIDIA's loader `exec`s `module_src` to rebuild the class. Running code from a
downloaded file is exactly what we refuse to do. This unpickler:

  * resolves only a short whitelist of globals (`_ALLOWED`), each mapped to a local stand-in;
  * turns every persistent object into a `PersistentObject` that merely records `class_name` and
    `state` (the module's `__dict__`: `_parameters`, `_buffers`, `_modules`, plain attributes);
    `module_src` is dropped unread, never imported or executed;
  * rebuilds tensors itself: a tensor's storage is a nested legacy `torch.save` blob
    (`torch.storage._load_from_bytes`), read with `torch.load(weights_only=True)`;
  * replaces numpy scalars/arrays and `dnnlib.util.EasyDict` by inert records (the loader needs none
    of their values), so no numpy or dnnlib code runs either.

Any other global (`os.system`, `builtins.eval`, `subprocess.Popen`, a network class by name, ...) stops
the load with a `ModelError` naming the file and the refused global, before anything is called.
"""

from __future__ import annotations

import io
import pickle
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import torch

from ..errors import ModelError


@dataclass
class PersistentObject:
    """What a `persistence`-decorated network object would have been, minus its code."""

    class_name: str
    state: dict[str, Any] = field(default_factory=dict)

    def parameters(self) -> dict[str, Any]:
        return dict(self.state.get("_parameters") or {})

    def buffers(self) -> dict[str, Any]:
        return dict(self.state.get("_buffers") or {})

    def modules(self) -> dict[str, Any]:
        return dict(self.state.get("_modules") or {})

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flatten parameters and buffers of this object and its sub-objects: `{"mapping.fc0.weight": t}`."""
        out: dict[str, torch.Tensor] = {}
        for group in (self.parameters(), self.buffers()):
            for name, t in group.items():
                if isinstance(t, torch.Tensor):
                    out[prefix + name] = t
        for name, sub in self.modules().items():
            if isinstance(sub, PersistentObject):
                out.update(sub.tensors(f"{prefix}{name}."))
        return out

    def attr(self, name: str, default: Any = None) -> Any:
        return self.state.get(name, default)


class EasyDictRecord(dict):
    """Stand-in for `dnnlib.util.EasyDict` (a dict with attribute access): just a dict here."""

    def __setstate__(self, state: Any) -> None:  # BUILD with the (empty) instance dict
        pass


class Inert:
    """Stand-in for numpy dtypes/scalars/arrays: records its arguments, computes nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return "<inert numpy value>"


def _reconstruct_persistent_obj(meta: Any) -> PersistentObject:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise pickle.UnpicklingError("malformed persistent object record")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise pickle.UnpicklingError(f"persistent object {meta['class_name']} has a non-dict state")
    return PersistentObject(meta["class_name"], dict(state))  # meta["module_src"] is deliberately dropped


def _load_from_bytes(blob: Any) -> Any:
    if not isinstance(blob, (bytes, bytearray)):
        raise pickle.UnpicklingError("tensor storage record is not bytes")
    try:
        storage = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        m = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch's weights_only refusal names the global
        if m:
            module, _, name = m.group(1).rpartition(".")
            raise _Refused(module, name) from None
        raise
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor storage record does not hold a storage")
    return storage


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> torch.Tensor:
    # requires_grad, backward hooks and metadata are ignored on purpose: weights only.
    if not isinstance(storage, (torch.TypedStorage, torch.UntypedStorage)):
        raise pickle.UnpicklingError("tensor record without a storage")
    return torch._utils._rebuild_tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, *_ignored: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError("parameter record without a tensor")
    return data


_NUMPY = ("numpy", "numpy.core.multiarray", "numpy._core.multiarray")

_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
    ("dnnlib.util", "EasyDict"): EasyDictRecord,
    ("dnnlib", "EasyDict"): EasyDictRecord,
    ("torch.storage", "_load_from_bytes"): _load_from_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # protocol-2 pickles name builtins the Python 2 way
    ("__builtin__", "frozenset"): frozenset,
    **{(m, n): Inert for m in _NUMPY for n in ("scalar", "dtype", "ndarray", "_reconstruct")},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise _Refused(module, name) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not used by network pickles")


class _Refused(pickle.UnpicklingError):
    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.qualname = f"{module}.{name}"


def restricted_load(f: BinaryIO, source: str | Path) -> Any:
    """Unpickle a network pickle without running its code. `source` names the file in errors."""
    try:
        return _RestrictedUnpickler(f).load()
    except _Refused as e:
        raise ModelError(
            f"{source}: refused to load this pickle: it asks for `{e.qualname}`, which is not part of a "
            "network checkpoint (a pickle can run arbitrary code; only tensors and network records are read)",
            code="UNSAFE_PICKLE",
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            KeyError, RuntimeError, OverflowError, MemoryError) as e:
        what = "truncated" if isinstance(e, EOFError) else "corrupt"
        raise ModelError(f"{source}: {what} network pickle ({type(e).__name__}: {e})",
                         code="CORRUPT_CHECKPOINT") from None
