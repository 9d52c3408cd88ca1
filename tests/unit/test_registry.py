"""The weights downloader against a real HTTP server on 127.0.0.1 (threaded, in-test)."""

from __future__ import annotations

import hashlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from nvidia_pickle import ada_tensors_from_rosinality, write_ada_pickle

from pulse_server.errors import ModelError
from pulse_server.models import loading, registry
from pulse_server.models.registry import FFHQ_1024, download, ensure_weights, weights_path


class Server:
    """Serves `data` at /file with Range support; `truncate_next` cuts the next response in half."""

    def __init__(self, data: bytes):
        self.data = data
        self.truncate_next = False
        self.ignore_range = False
        self.status: int | None = None
        self.range_on_416 = True  # send `Content-Range: bytes */N` with a 416
        self.requests: list[dict] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                server.requests.append({"path": self.path, "method": "HEAD"})
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.data)))
                self.end_headers()

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append({"path": self.path, "range": rng})
                if server.status:
                    self.send_error(server.status)
                    return
                body, start = server.data, 0
                if rng and not server.ignore_range:
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        if server.range_on_416:
                            self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                part = body[start:]
                self.send_header("Content-Length", str(len(part)))
                self.end_headers()
                if server.truncate_next:
                    server.truncate_next = False
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)  # the server dies mid-file
                    return
                self.wfile.write(part)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/file"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def data() -> bytes:
    return os.urandom(3_000_000 + 12345)


@pytest.fixture
def server(data: bytes) -> Iterator[Server]:
    s = Server(data)
    yield s
    s.close()


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PULSE_CACHE_DIR", str(root))
    for var in ("PULSE_WEIGHTS_URL", "PULSE_WEIGHTS_SHA256", "PULSE_FFHQ_1024_URL", "PULSE_FFHQ_1024_SHA256",
                "PULSE_FFHQ_256_URL", "PULSE_FFHQ_256_SHA256"):
        monkeypatch.delenv(var, raising=False)
    return root


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_good_download_is_verified_and_renamed(server: Server, data: bytes, tmp_path: Path, capsys) -> None:
    dest = tmp_path / "w" / "model.pkl"
    assert download(server.url, dest, size=len(data), sha256=sha(data), progress=True, label="model.pkl") == dest
    assert dest.read_bytes() == data
    assert not dest.with_name("model.pkl.part").exists()
    assert "model.pkl" in capsys.readouterr().err  # the tqdm bar
    assert server.requests == [{"path": "/file", "range": None}]


def test_truncated_download_resumes_on_the_next_try(server: Server, data: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "model.pkl"
    part = tmp_path / "model.pkl.part"
    server.truncate_next = True
    with pytest.raises(ModelError) as e:
        download(server.url, dest, sha256=sha(data), progress=False)
    assert e.value.code == "NO_WEIGHTS" and e.value.retryable
    assert server.url in e.value.message and str(dest) in e.value.message and str(part) in e.value.message
    have = part.stat().st_size
    assert 0 < have < len(data) and not dest.exists()
    assert part.read_bytes() == data[:have]

    download(server.url, dest, sha256=sha(data), progress=False)
    assert server.requests[-1]["range"] == f"bytes={have}-"  # only the missing tail was fetched
    assert dest.read_bytes() == data and not part.exists()


def test_wrong_checksum_is_refused_and_the_partial_file_removed(server: Server, data: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "model.pkl"
    with pytest.raises(ModelError) as e:
        download(server.url, dest, sha256=sha(b"something else"), progress=False)
    assert e.value.code == "CHECKSUM" and server.url in e.value.message and sha(data) in e.value.message
    assert not dest.exists() and not (tmp_path / "model.pkl.part").exists()


def test_wrong_size_is_refused(server: Server, data: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "model.pkl"
    with pytest.raises(ModelError) as e:
        download(server.url, dest, size=len(data) - 1, progress=False)
    assert e.value.code == "CHECKSUM" and not dest.exists()


def test_server_down_says_which_file_to_fetch_and_where(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/stylegan2-ffhq-1024x1024.pkl"
    dest = tmp_path / "weights" / "stylegan2-ffhq-1024x1024.pkl"
    with pytest.raises(ModelError) as e:
        download(url, dest, progress=False)
    msg = e.value.message
    assert url in msg and str(dest) in msg and "--model PATH" in msg and e.value.code == "NO_WEIGHTS"


def test_http_error_is_reported(server: Server, tmp_path: Path) -> None:
    server.status = 404
    with pytest.raises(ModelError) as e:
        download(server.url, tmp_path / "m.pkl", progress=False)
    assert "404" in e.value.message and server.url in e.value.message


def test_server_ignoring_range_restarts_cleanly(server: Server, data: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "m.pkl"
    (tmp_path / "m.pkl.part").write_bytes(b"stale bytes from some other file")
    server.ignore_range = True
    download(server.url, dest, sha256=sha(data), progress=False)
    assert dest.read_bytes() == data


def test_complete_partial_file_is_finished_without_refetching(server: Server, data: bytes, tmp_path: Path) -> None:
    dest = tmp_path / "m.pkl"
    (tmp_path / "m.pkl.part").write_bytes(data)  # e.g. killed between the last byte and the rename
    download(server.url, dest, sha256=sha(data), progress=False)
    assert dest.read_bytes() == data and server.requests[-1]["range"] == f"bytes={len(data)}-"


def test_registry_knows_the_canonical_ffhq_checkpoint() -> None:
    assert FFHQ_1024.url.startswith("https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan2/")
    assert FFHQ_1024.filename == "stylegan2-ffhq-1024x1024.pkl" and FFHQ_1024.url.endswith(FFHQ_1024.filename)
    assert FFHQ_1024.resolution == 1024 and FFHQ_1024.family == "stylegan2"
    assert "non-commercial" in FFHQ_1024.licence.lower() or "research" in FFHQ_1024.licence.lower()


def test_registry_lists_three_models_with_source_licence_resolution_and_family() -> None:
    assert list(registry.REGISTRY) == ["ffhq-1024", "ffhq-256", "digiface-64"]
    assert [(s.family, s.resolution) for s in registry.REGISTRY.values()] == \
        [("stylegan2", 1024), ("stylegan2", 256), ("dcgan", 64)]
    for spec in registry.REGISTRY.values():
        assert spec.source and spec.licence and spec.homepage.startswith("https://")
    ffhq256 = registry.FFHQ_256
    assert ffhq256.url == ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
                           "transfer-learning-source-nets/ffhq-res256-mirror-paper256-noaug.pkl")
    assert ffhq256.url.endswith(ffhq256.filename) and "research" in ffhq256.licence
    assert ffhq256.size is None and ffhq256.sha256 is None  # NVIDIA publishes neither
    digiface = registry.DIGIFACE_64
    assert digiface.url is None and digiface.package == "gan-face-generate" and digiface.package_version == "1.1.1"
    assert digiface.size == 14_322_251 and len(digiface.sha256 or "") == 64
    assert "MIT" in digiface.licence and "non-commercial" in digiface.licence


@pytest.mark.parametrize("device, model", [("cpu", "ffhq-256"), ("cuda", "ffhq-1024"), ("cuda:1", "ffhq-1024"),
                                           ("mps", "ffhq-1024"), ("xpu", "ffhq-1024")])
def test_default_model_follows_the_device(device: str, model: str) -> None:
    import torch

    assert registry.default_model(device) == model == registry.default_model(torch.device(device))


def test_each_downloadable_model_has_its_own_url_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_FFHQ_256_URL", "http://127.0.0.1:9/a.pkl")
    monkeypatch.setenv("PULSE_WEIGHTS_URL", "http://127.0.0.1:9/b.pkl")  # the older name: ffhq-1024 only
    assert registry.get_spec("ffhq-256").url == "http://127.0.0.1:9/a.pkl"
    assert registry.get_spec("ffhq-1024").url == "http://127.0.0.1:9/b.pkl"
    monkeypatch.setenv("PULSE_FFHQ_1024_URL", "http://127.0.0.1:9/c.pkl")
    assert registry.get_spec("ffhq-1024").url == "http://127.0.0.1:9/c.pkl"


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(ModelError) as e:
        registry.get_spec("ffhq-512")
    assert e.value.code == "NO_WEIGHTS" and "ffhq-1024, ffhq-256, digiface-64" in e.value.message


def test_digiface_without_its_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    def missing(name: str):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    assert not registry.is_present("digiface-64")
    with pytest.raises(ModelError) as e:
        ensure_weights("digiface-64")
    assert e.value.code == "NO_WEIGHTS"
    assert "pip install --no-deps gan-face-generate==1.1.1" in e.value.message


def test_digiface_from_another_package_release_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "gan_face_generate" / "weights.tar"
    other.parent.mkdir()
    other.write_bytes(b"PK\x03\x04 another release")
    monkeypatch.setattr(registry, "_package_file", lambda spec: other)
    with pytest.raises(ModelError) as e:
        ensure_weights("digiface-64")
    assert e.value.code == "CHECKSUM" and str(other) in e.value.message and "1.1.1" in e.value.message


def test_ffhq_1024_downloads_on_first_use_and_loads(tmp_path: Path, cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """load_prior("ffhq-1024") fetches the model (here a tiny NVIDIA pickle from the local server)."""
    from pulse_server.models.testing import latent_average, make_tiny_generator

    g = make_tiny_generator(16)
    pkl = write_ada_pickle(tmp_path / "src.pkl", ada_tensors_from_rosinality(g.state_dict(), 16), 16,
                           latent_average(g, 256))
    blob = pkl.read_bytes()
    srv = Server(blob)
    try:
        monkeypatch.setenv("PULSE_WEIGHTS_URL", srv.url)
        monkeypatch.setenv("PULSE_WEIGHTS_SHA256", sha(blob))
        monkeypatch.setattr(loading, "GAUSSIAN_SAMPLES", 10_000)
        prior, info = loading.load_prior("ffhq-1024")
        dest = cache / "weights" / "stylegan2-ffhq-1024x1024.pkl"
        assert weights_path("ffhq-1024") == dest and dest.read_bytes() == blob
        assert info.name == "stylegan2-ffhq-1024" and info.sha256 == sha(blob) and prior.resolution == 16
        n = len(srv.requests)
        assert ensure_weights("ffhq-1024", progress=False) == dest and len(srv.requests) == n  # no second download
    finally:
        srv.close()


def test_offline_default_model_without_a_gpu_names_the_ffhq_256_url_and_path(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/x.pkl"
    monkeypatch.setenv("PULSE_FFHQ_256_URL", url)
    with pytest.raises(ModelError) as e:
        loading.load_prior(None, "cpu")  # the default model without a GPU: ffhq-256
    assert url in e.value.message
    assert str(cache / "weights" / "ffhq-res256-mirror-paper256-noaug.pkl") in e.value.message


def test_cache_dir_defaults_to_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv("PULSE_CACHE_DIR", raising=False)
    assert registry.cache_dir() == Path(platformdirs.user_cache_dir("pulse-depixelate"))


def test_concurrent_first_runs_download_once(server: Server, data: bytes, cache: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_WEIGHTS_URL", server.url)
    monkeypatch.setenv("PULSE_WEIGHTS_SHA256", sha(data))
    results: list[object] = []

    def run() -> None:
        try:
            results.append(ensure_weights("ffhq-1024", progress=False))
        except Exception as e:  # surfaced by the assertion below
            results.append(e)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [weights_path("ffhq-1024")] * 3
    assert weights_path("ffhq-1024").read_bytes() == data and len(server.requests) == 1


def test_registry_name_as_weights(server: Server, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pulse_server.models.testing import latent_average, make_tiny_generator

    g = make_tiny_generator(16)
    blob = write_ada_pickle(tmp_path / "src.pkl", ada_tensors_from_rosinality(g.state_dict(), 16), 16,
                            latent_average(g, 256)).read_bytes()
    server.data = blob
    monkeypatch.setenv("PULSE_WEIGHTS_URL", server.url)
    monkeypatch.setattr(loading, "GAUSSIAN_SAMPLES", 10_000)
    prior, info = loading.load_prior("ffhq-1024")
    assert info.name == "stylegan2-ffhq-1024" and info.source == str(weights_path("ffhq-1024")) and prior.resolution == 16


# ---- a .part at or past the remote end (HTTP 416) with no pinned size ---------------------------------------


@pytest.mark.parametrize("range_on_416", [True, False], ids=["content-range", "head"])
def test_416_with_a_longer_part_is_not_accepted(server: Server, data: bytes, tmp_path: Path, range_on_416: bool) -> None:
    server.range_on_416 = range_on_416
    dest = tmp_path / "w.pkl"
    part = dest.with_name(dest.name + ".part")
    part.write_bytes(data + b"stale tail of another version")  # longer than the remote file: 416
    assert download(server.url, dest, progress=False) == dest
    assert dest.read_bytes() == data and not part.exists()  # fetched again, not the bogus .part
    assert server.requests[-1]["range"] is None  # restarted from byte 0


@pytest.mark.parametrize("range_on_416", [True, False], ids=["content-range", "head"])
def test_416_with_a_complete_part_is_accepted_after_checking_the_length(server: Server, data: bytes, tmp_path: Path,
                                                                         range_on_416: bool) -> None:
    server.range_on_416 = range_on_416
    dest = tmp_path / "w.pkl"
    dest.with_name(dest.name + ".part").write_bytes(data)
    assert download(server.url, dest, progress=False) == dest
    assert dest.read_bytes() == data
    assert [r.get("method", "GET") for r in server.requests] == (["GET"] if range_on_416 else ["GET", "HEAD"])
