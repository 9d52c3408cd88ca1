"""Known face models, where they live on this machine, and their one-time download.

Three named models (`REGISTRY`); `--model NAME|PATH` picks one, `default_model(device)` picks for a device:

* `ffhq-1024` — NVIDIA's official StyleGAN2 config-f trained on FFHQ at 1024², as published for its
  PyTorch code bases (stylegan2-ada-pytorch / stylegan3): the network pickle `stylegan2-ffhq-1024x1024.pkl`
  on NVIDIA NGC. Listed in NVlabs/stylegan3 README.md, section "Additional material" ("StyleGAN2
  pre-trained models compatible with this codebase ... Access individual networks via
  https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/<MODEL>"). The default
  on a GPU.
* `ffhq-256` — NVIDIA's StyleGAN2-ADA FFHQ 256² network with half config-f's channel base (the `paper256`
  configuration: 16384 instead of 32768, so 64 channels at 256² and 512 up to 32²), trained without
  augmentation: `ffhq-res256-mirror-paper256-noaug.pkl`, one of the stylegan2-ada-pytorch "transfer
  learning source nets" (README.md, "Data repository": pretrained/transfer-learning-source-nets/; the
  exact URL is train.py's `resume_specs['ffhq256']`). About 5× fewer FLOPs per render than config-f; the
  default without a GPU.
* `digiface-64` — the 64×64 PyTorch-DCGAN-tutorial generator shipped inside the `gan-face-generate`
  package (1.1.1; code MIT, © 2023 Chien Liu; trained on Microsoft's synthetic DigiFace-1M faces). Its
  file `gan_face_generate/weights.tar` is a torch.save zip holding `{"netG_state_dict": {main.*}}`; it is
  read from the installed package (no download) with `torch.load(weights_only=True)`, never by importing
  the package. The package's own requirements (torchvision, wandb, matplotlib, ...) would replace a CPU
  torch with a CUDA build, so it is installed with `pip install --no-deps` (Makefile); pulse needs only
  the file.

Integrity: NVIDIA publishes neither a sha256 nor a byte count for its files (none in the READMEs, the
listings or the licences), so none is pinned: a download is checked against the length the server
announces (Content-Length / Content-Range) and the loader then checks that the file is a well-formed
StyleGAN2 network pickle of the right resolution (read without running its code, see `unpickle.py`). The
wheel of gan-face-generate 1.1.1 lists weights.tar's sha256 and size in its RECORD: both are pinned.

Licences (for the README; not legal advice, the licence texts are authoritative): NVIDIA's StyleGAN2 work,
networks included, "is made available under the Nvidia Source Code License-NC" (NVlabs/stylegan2 README,
"License"); the PyTorch releases that list both pickles use the NVIDIA Source Code License whose §3.3
reads "The Work and any derivative works thereof only may be used or intended for use non-commercially
... 'non-commercially' means for research or evaluation purposes only" (NVlabs/stylegan3 LICENSE.txt;
stylegan2-ada-pytorch README "License"). FFHQ is CC BY-NC-SA 4.0 as a dataset (its images: CC BY 2.0,
CC BY-NC 2.0, PDM 1.0, CC0 1.0 or U.S. Government Works). DigiFace-1M "can be used for non-commercial
research" (microsoft/DigiFace1M README, which points to its LICENSE); the DCGAN trained on it inherits
that limit in practice, whatever the MIT licence of the package's code says. None of the files is bundled.

Environment (tests, mirrors, air-gapped installs):
  PULSE_CACHE_DIR             cache root instead of platformdirs.user_cache_dir("pulse-depixelate")
  PULSE_<NAME>_URL            download URL of a model instead of NVIDIA's (NAME: FFHQ_1024, FFHQ_256)
  PULSE_<NAME>_SHA256         expected sha256 of that model's file
  PULSE_WEIGHTS_URL / _SHA256 the same for ffhq-1024 (older spelling)
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from protocol.endpoint import APP

from ..errors import ErrorCode, ModelError

CHUNK = 1 << 20
TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WeightsSpec:
    name: str  # registry key, e.g. "ffhq-1024"
    model_name: str  # reported to clients (PriorInfo.name)
    filename: str
    url: str | None  # None: the file comes with a Python package (`package`), never downloaded
    family: str
    resolution: int
    size: int | None  # bytes; None = not published (checked against the server's length)
    sha256: str | None  # None = not published
    licence: str
    homepage: str
    source: str  # who publishes it, in words
    package: str | None = None  # pip distribution whose files include `filename` (a path inside it)
    package_version: str | None = None  # the release whose file `size`/`sha256` describe


FFHQ_1024 = WeightsSpec(
    name="ffhq-1024",
    model_name="stylegan2-ffhq-1024",
    filename="stylegan2-ffhq-1024x1024.pkl",
    url="https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/versions/1/files/stylegan2-ffhq-1024x1024.pkl",
    family="stylegan2",
    resolution=1024,
    size=None,  # not published by NVIDIA (see module docstring)
    sha256=None,  # not published by NVIDIA (see module docstring)
    licence="NVIDIA Source Code License (NC): research or evaluation use only",
    homepage="https://github.com/NVlabs/stylegan3#additional-material",
    source="NVIDIA StyleGAN2 config-f, FFHQ 1024² (NGC)",
)

FFHQ_256 = WeightsSpec(
    name="ffhq-256",
    model_name="stylegan2-ffhq-256",
    filename="ffhq-res256-mirror-paper256-noaug.pkl",
    url="https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/transfer-learning-source-nets/"
        "ffhq-res256-mirror-paper256-noaug.pkl",
    family="stylegan2",
    resolution=256,
    size=None,  # not published by NVIDIA (see module docstring)
    sha256=None,  # not published by NVIDIA (see module docstring)
    licence="NVIDIA Source Code License (NC): research or evaluation use only",
    homepage="https://github.com/NVlabs/stylegan2-ada-pytorch#data-repository",
    source="NVIDIA StyleGAN2-ADA, FFHQ 256² paper256 config (transfer-learning source nets)",
)

DIGIFACE_64 = WeightsSpec(
    name="digiface-64",
    model_name="digiface-64-dcgan",
    filename="gan_face_generate/weights.tar",
    url=None,
    family="dcgan",
    resolution=64,
    size=14_322_251,  # the wheel's RECORD
    sha256="0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f",  # the wheel's RECORD
    licence="code MIT; trained on DigiFace-1M (non-commercial research use)",
    homepage="https://github.com/chien-liu/DCGAN-PyTorch",
    source="DCGAN (PyTorch tutorial layout) on synthetic DigiFace-1M faces, inside the gan-face-generate package",
    package="gan-face-generate",
    package_version="1.1.1",
)

REGISTRY: dict[str, WeightsSpec] = {s.name: s for s in (FFHQ_1024, FFHQ_256, DIGIFACE_64)}
GPU_DEFAULT = FFHQ_1024.name
CPU_DEFAULT = FFHQ_256.name  # config-f at 1024² is about an hour per 3-candidate job on 2 CPU cores
OFFLINE_MODEL = DIGIFACE_64.name
LEGACY_ENV = FFHQ_1024.name  # PULSE_WEIGHTS_URL / PULSE_WEIGHTS_SHA256 name this model's file


def default_model(device: str | object) -> str:
    """The model a job gets without --model: config-f on a GPU (CUDA, ROCm, MPS, XPU), else the 256² net."""
    kind = getattr(device, "type", None) or str(device).split(":", 1)[0]
    return CPU_DEFAULT if kind == "cpu" else GPU_DEFAULT


def cache_dir() -> Path:
    """Per-user cache root (downloads and converted checkpoints); PULSE_CACHE_DIR overrides."""
    env = os.environ.get("PULSE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP))


def _env_name(name: str) -> str:
    return "PULSE_" + name.upper().replace("-", "_")


def get_spec(name: str) -> WeightsSpec:
    """The registry entry, with its environment overrides (PULSE_<NAME>_URL / _SHA256) applied."""
    try:
        spec = REGISTRY[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; known: {', '.join(REGISTRY)}, or a checkpoint file's path",
                         code="NO_WEIGHTS") from None
    if spec.url is None:
        return spec
    legacy = name == LEGACY_ENV
    url = os.environ.get(_env_name(name) + "_URL") or (legacy and os.environ.get("PULSE_WEIGHTS_URL")) or spec.url
    sha = os.environ.get(_env_name(name) + "_SHA256") or (legacy and os.environ.get("PULSE_WEIGHTS_SHA256")) \
        or spec.sha256
    return replace(spec, url=url, sha256=sha.lower() if sha else None)


def weights_path(name: str) -> Path:
    """Where the model's file lives (or will live once downloaded; for a package's file: once installed)."""
    spec = get_spec(name)
    if spec.package is not None:
        return _package_file(spec) or Path(spec.filename)
    return cache_dir() / "weights" / spec.filename


def is_present(name: str) -> bool:
    """Whether the model can load without a download."""
    spec = get_spec(name)
    if spec.package is not None:
        return _package_file(spec) is not None
    return _present(weights_path(name), spec)


def ensure_weights(name: str, progress: bool = True) -> Path:
    """Path of the model's checkpoint, downloading it on first use (resumable, verified)."""
    spec = get_spec(name)
    if spec.package is not None:
        return _packaged_weights(spec)
    dest = weights_path(name)
    if _present(dest, spec):
        return dest
    with _download_lock(dest):  # a daemon and a CLI starting together must not append to one .part
        if not _present(dest, spec):  # the other process may have finished it meanwhile
            download(spec.url or "", dest, size=spec.size, sha256=spec.sha256, progress=progress,
                     label=spec.filename)
    return dest


def _package_file(spec: WeightsSpec) -> Path | None:
    """The installed package's file, found through its metadata: nothing of the package is imported."""
    from importlib import metadata

    try:
        dist = metadata.distribution(spec.package or "")
    except metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(spec.filename)))
    return path if path.is_file() else None


def install_hint(spec: WeightsSpec) -> str:
    # --no-deps: the package's own requirements (torchvision, wandb, ...) would replace a CPU torch.
    return f"pip install --no-deps {spec.package}=={spec.package_version}"


def _packaged_weights(spec: WeightsSpec) -> Path:
    path = _package_file(spec)
    if path is None:
        raise ModelError(f"the {spec.name} model comes with the {spec.package} package, which is not installed "
                         f"here: run `{install_hint(spec)}`", code="NO_WEIGHTS")
    size = path.stat().st_size
    if (spec.size is not None and size != spec.size) or (spec.sha256 and sha256_file(path) != spec.sha256):
        raise ModelError(f"{path}: not the {spec.name} weights of {spec.package} {spec.package_version} "
                         f"({size} bytes, different contents); run `{install_hint(spec)}`", code="CHECKSUM")
    return path


def _present(dest: Path, spec: WeightsSpec) -> bool:
    # Only verified downloads are renamed into place, so presence (and the size, when pinned) suffices.
    return dest.is_file() and (spec.size is None or dest.stat().st_size == spec.size)


@contextmanager
def _download_lock(dest: Path) -> Iterator[None]:
    """An advisory lock beside the file (POSIX flock; elsewhere none: concurrent first runs are rare)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        f = open(dest.with_name(dest.name + ".lock"), "a+")
    except OSError:
        yield
        return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class DownloadError(ModelError):
    """The model's file could not be fetched (offline, refused, cut off); `reason` says why, briefly."""

    code = ErrorCode.NO_WEIGHTS

    def __init__(self, url: str, dest: Path, reason: str, kept: str = "") -> None:
        self.url, self.dest, self.reason, self.kept = url, dest, reason, kept
        super().__init__(self.telling("--model PATH"), retryable=True)

    def telling(self, model_option: str) -> str:
        """The message, naming `model_option` as the way to use a checkpoint one has: `--model PATH` for the
        CLIs and the daemon, `make demo MODEL=PATH` for someone who ran the demo through make."""
        return (f"could not download the face model from {self.url} ({self.reason}). Fetch that file yourself and "
                f"put it at {self.dest}, or use a checkpoint you already have: {model_option}.{self.kept}")


def _offline_error(url: str, dest: Path, part: Path, reason: str) -> DownloadError:
    kept = f" The partial download ({part.stat().st_size} bytes) is kept at {part} and resumes next time." \
        if part.is_file() and part.stat().st_size else ""
    return DownloadError(url, dest, reason, kept)


def download(url: str, dest: Path, *, size: int | None = None, sha256: str | None = None,
             progress: bool = True, label: str | None = None) -> Path:
    """Download `url` to `dest` through `dest.part`: resume with a Range request, check the length and
    the sha256 (when known), then rename atomically. Network failures raise ModelError (NO_WEIGHTS) and
    keep the partial file; a wrong length or digest raises ModelError (CHECKSUM) and deletes it."""
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create {dest.parent} for the face model: {e}", code="NO_WEIGHTS") from None

    have = part.stat().st_size if part.is_file() else 0
    total = size
    req = urllib.request.Request(url, headers={"User-Agent": "pulse-depixelate", "Accept-Encoding": "identity"})
    if have:
        req.add_header("Range", f"bytes={have}-")
    try:
        resp = urllib.request.urlopen(req, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # "Range not satisfiable": our .part reaches (or passes) the end of the remote file. Accept it
            # only if the remote length is known to be exactly `have`; a longer (or unverifiable) .part is
            # discarded and the file fetched again from the start, never renamed into place.
            remote = size if size is not None else _remote_length(url, e.headers)
            if remote == have:
                resp, total = None, remote  # nothing left to fetch; the digest (if any) is checked below
            else:
                part.unlink(missing_ok=True)
                return download(url, dest, size=size, sha256=sha256, progress=progress, label=label)
        else:
            raise _offline_error(url, dest, part, f"HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise _offline_error(url, dest, part, str(reason)) from None

    if resp is not None:
        with resp:
            status = getattr(resp, "status", 200)
            length = resp.headers.get("Content-Length")
            if status == 206:
                crange = resp.headers.get("Content-Range", "")  # "bytes start-end/total"
                start = _range_start(crange)
                if start != have:
                    part.unlink(missing_ok=True)
                    raise _offline_error(url, dest, part, f"server resumed at byte {start}, expected {have}")
                if total is None and "/" in crange and crange.rsplit("/", 1)[1].strip().isdigit():
                    total = int(crange.rsplit("/", 1)[1])
                mode = "ab"
            else:
                have, mode = 0, "wb"  # server ignored the Range header: start from scratch
                if total is None and length and length.isdigit():
                    total = int(length)
            if total is None and length and length.isdigit():
                total = have + int(length)
            if total is not None and have > total:
                part.unlink(missing_ok=True)
                raise ModelError(f"{part}: partial download is larger than {url} ({have} > {total} bytes); "
                                 "removed it, run again", code="CHECKSUM", retryable=True)
            _stream(resp, part, mode, have, total, progress, label or dest.name, url, dest)

    got = part.stat().st_size if part.is_file() else 0
    if total is not None and got < total:
        raise _offline_error(url, dest, part, f"connection closed after {got} of {total} bytes")
    if total is not None and got != total:
        part.unlink(missing_ok=True)
        raise ModelError(f"download of {url} has {got} bytes, expected {total}; removed {part}", code="CHECKSUM")
    if sha256:
        digest = sha256_file(part)
        if digest != sha256.lower():
            part.unlink(missing_ok=True)
            raise ModelError(
                f"download of {url} is corrupt: sha256 {digest}, expected {sha256}; removed {part} — run again, "
                f"or fetch the file yourself and put it at {dest}",
                code="CHECKSUM",
                retryable=True,
            )
    os.replace(part, dest)
    return dest


def _remote_length(url: str, headers) -> int | None:
    """The remote file's length after a 416: `Content-Range: bytes */N` (RFC 9110 §15.5.17), else a HEAD
    request's Content-Length; None when the server tells neither."""
    crange = (headers.get("Content-Range", "") if headers is not None else "") or ""
    tail = crange.rsplit("/", 1)[-1].strip() if "/" in crange else ""
    if tail.isdigit():
        return int(tail)
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "pulse-depixelate", "Accept-Encoding": "identity"})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
            length = resp.headers.get("Content-Length", "")
            return int(length) if length.isdigit() else None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError):
        return None


def _range_start(content_range: str) -> int:
    try:
        return int(content_range.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _stream(resp, part: Path, mode: str, have: int, total: int | None, progress: bool, label: str,
            url: str, dest: Path) -> None:
    from tqdm import tqdm

    bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
               disable=not progress, leave=False)
    try:
        with open(part, mode) as f:
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (TimeoutError, http.client.IncompleteRead, OSError, http.client.HTTPException) as e:
                    if isinstance(e, http.client.IncompleteRead) and e.partial:
                        f.write(e.partial)  # keep what did arrive: the next try resumes after it
                    f.flush()
                    raise _offline_error(url, dest, part, f"connection lost: {type(e).__name__}") from None
                if not chunk:
                    break
                f.write(chunk)
                bar.update(len(chunk))
    finally:
        bar.close()
