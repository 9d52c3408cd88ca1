"""The one place that turns `--device auto|cpu|cuda|cuda:N|mps|xpu` into a torch device.

`auto` takes the first accelerator this torch build can use: CUDA (ROCm builds of torch report their AMD
GPUs as `cuda` too) > MPS (Apple GPUs) > XPU (Intel GPUs) > CPU. A device that was asked for but is not
there is an error a user can act on (PulseError NO_DEVICE: the CLIs print one line and exit 2; the daemon
refuses to start), never a silent fall back to the CPU.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from .errors import PulseError

log = logging.getLogger("pulse.devices")

CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps", "xpu")  # for --help; any "cuda:N"/"xpu:N" is accepted
_NAMES = {"cuda": "CUDA", "mps": "MPS", "xpu": "XPU"}


def enable_mps_fallback() -> None:
    """Let an op MPS lacks run on the CPU (torch warns once per op) instead of failing the job.

    torch reads PYTORCH_ENABLE_MPS_FALLBACK when it is imported, so this runs first thing in the CLIs."""
    if sys.platform == "darwin":
        os.environ.setdefault("PYTORCH_ENABLE_MPS_FALLBACK", "1")


def _available(kind: str, torch: Any) -> bool:
    if kind == "cpu":
        return True
    if kind == "cuda":
        return bool(torch.cuda.is_available())
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        return bool(mps is not None and mps.is_available())
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        return bool(xpu is not None and xpu.is_available())
    return False


def _count(kind: str, torch: Any) -> int:
    if kind == "cuda":
        return int(torch.cuda.device_count())
    if kind == "xpu":
        return int(torch.xpu.device_count())
    return 1


def resolve_device(requested: str | None = "auto") -> Any:
    """`--device` value -> torch.device; PulseError(NO_DEVICE) when that device is not usable here."""
    import torch

    text = (requested or "auto").strip().lower()
    if text == "auto":
        for kind in ("cuda", "mps", "xpu"):
            if _available(kind, torch):
                return _chosen(torch.device(kind))
        return torch.device("cpu")
    kind, sep, index = text.partition(":")
    if kind not in ("cpu", "cuda", "mps", "xpu") or (sep and (not index.isdigit() or kind in ("cpu", "mps"))):
        raise PulseError(f"--device {requested}: not a device; use auto, cpu, cuda, cuda:N, mps or xpu", "BAD_DEVICE")
    if not _available(kind, torch):
        raise PulseError(f"--device {requested}: {_NAMES[kind]} is not available on this machine; use --device auto "
                         f"or cpu ({_why_not(kind, torch)})", "NO_DEVICE")
    if index and int(index) >= _count(kind, torch):
        raise PulseError(f"--device {requested}: this machine has {_count(kind, torch)} {kind} device(s), "
                         f"numbered from 0; use --device {kind} or auto", "NO_DEVICE")
    return _chosen(torch.device(text))


def _chosen(device: Any) -> Any:
    if device.type == "mps" and os.environ.get("PYTORCH_ENABLE_MPS_FALLBACK") == "1":
        log.info("MPS: ops the MPS backend lacks run on the CPU (torch warns once per op); results are the same")
    return device


def _why_not(kind: str, torch: Any) -> str:
    if kind == "cuda":
        built = torch.version.cuda or getattr(torch.version, "hip", None)
        return "no NVIDIA/AMD GPU or driver found" if built else f"torch {torch.__version__} is built without CUDA or ROCm"
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_built():
            return f"torch {torch.__version__} has no MPS device: MPS is Apple's GPU backend, on macOS only"
        return "this Mac offers no MPS device: it needs macOS 12.3 or later"
    if kind == "xpu":
        return f"torch {torch.__version__} sees no Intel GPU"
    return ""


def device_label(device: Any) -> str:
    """What a speed measurement is valid for: the accelerator's product name, or the CPU's model and the number
    of threads torch uses on it ("cuda: NVIDIA H200", "cpu: AMD EPYC 7763 64-Core Processor, 2 threads")."""
    import torch

    device = torch.device(device)
    kind = device.type
    try:
        if kind == "cuda":
            return f"cuda: {torch.cuda.get_device_name(device.index or 0)}"
        if kind == "xpu":
            return f"xpu: {torch.xpu.get_device_name(device.index or 0)}"
    except Exception:  # a name is only a cache key; the device itself works
        pass
    if kind == "cpu":
        return f"cpu: {_cpu_name()}, {torch.get_num_threads()} threads"
    return kind


def _cpu_name() -> str:
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def is_out_of_memory(exc: BaseException) -> bool:
    """The device (or the host) ran out of memory: the job fails retryable, the worker carries on."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except (ImportError, AttributeError):
        pass
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_memory() -> None:
    """Give cached device memory back after an out-of-memory or an unloaded model (best effort)."""
    try:
        import gc

        import torch

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
