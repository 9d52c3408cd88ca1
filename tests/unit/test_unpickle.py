"""The restricted unpickler: network pickles are read without running a line of code from the file."""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import pytest
import torch
from nvidia_pickle import FakeNet, ada_tensors_from_rosinality, nvidia_modules, write_ada_pickle

from pulse_server.errors import ModelError
from pulse_server.models.loading import load_prior, load_state
from pulse_server.models.testing import latent_average, make_tiny_generator
from pulse_server.models.unpickle import PersistentObject, restricted_load


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path / "cache"))


class Hostile:
    """Unpickling this runs a shell command through `fn` (os.system, subprocess.call...)."""

    def __init__(self, fn, marker: Path):
        self.fn, self.marker = fn, marker

    def __reduce__(self):
        return (self.fn, (f"touch {self.marker}",))


def _refused(path: Path, global_name: str, marker: Path) -> None:
    with pytest.raises(ModelError) as e:
        load_prior(path)
    assert str(path) in e.value.message and global_name in e.value.message
    assert e.value.code == "UNSAFE_PICKLE"
    assert not marker.exists(), "code from the pickle ran"


def test_os_system_pickle_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Hostile(os.system, marker), protocol=4))
    # Sanity: the file really would run the command under plain pickle.
    assert b"system" in path.read_bytes()
    _refused(path, "system", marker)


def test_protocol0_os_system_names_the_global(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(f"cos\nsystem\n(S'touch {marker}'\ntR.".encode())  # the classic hand-written exploit
    _refused(path, "os.system", marker)


@pytest.mark.parametrize("fn", [eval, exec, subprocess.call, getattr], ids=["eval", "exec", "subprocess", "getattr"])
def test_other_dangerous_globals_refused(tmp_path: Path, fn) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Hostile(fn, marker)}, protocol=3))
    _refused(path, fn.__name__, marker)


def test_hostile_object_hidden_inside_a_real_looking_network(tmp_path: Path) -> None:
    """The payload sits deep in G_ema's module state, next to genuine tensors."""
    marker = tmp_path / "pwned"
    g = make_tiny_generator(16)
    t = ada_tensors_from_rosinality(g.state_dict(), 16)
    path = write_ada_pickle(tmp_path / "evil.pkl", t, 16, latent_average(g, 256),
                            extra={"augment_pipe": Hostile(os.system, marker)})
    _refused(path, "system", marker)


def test_module_source_in_the_pickle_is_never_executed(tmp_path: Path) -> None:
    """NVIDIA's loader exec()s meta['module_src']; ours drops it unread, and the weights still load."""
    marker = tmp_path / "src-ran"
    g = make_tiny_generator(16)
    t = ada_tensors_from_rosinality(g.state_dict(), 16)
    src = f"open({str(marker)!r}, 'w').write('x')\nimport os\nos.system('touch {marker}')\n"
    path = write_ada_pickle(tmp_path / "net.pkl", t, 16, latent_average(g, 256), module_src=src)
    assert src.encode() in path.read_bytes()
    prior, info = load_prior(path)
    assert info.family == "stylegan2" and prior.resolution == 16
    assert not marker.exists()


def test_hostile_storage_blob_is_refused(tmp_path: Path) -> None:
    """Tensor storages are nested torch.save blobs: read with torch.load(weights_only=True), not pickle."""
    marker = tmp_path / "pwned"
    blob = io.BytesIO()
    # A legacy torch.save stream whose payload is a hostile object instead of a storage.
    torch.save(Hostile(os.system, marker), blob, _use_new_zipfile_serialization=False)

    class Storage:
        def __reduce__(self):
            return (torch.storage._load_from_bytes, (blob.getvalue(),))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": Storage()}, protocol=3))
    _refused(path, "system", marker)


def test_hostile_torch_zip_checkpoint_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"g_ema": Hostile(os.system, marker)}, path)
    assert zipfile.is_zipfile(path)
    _refused(path, "system", marker)


def test_records_structure_without_classes(tmp_path: Path) -> None:
    g = make_tiny_generator(16)
    t = ada_tensors_from_rosinality(g.state_dict(), 16)
    path = write_ada_pickle(tmp_path / "net.pkl", t, 16, latent_average(g, 256))
    with open(path, "rb") as f:
        data = restricted_load(f, path)
    assert set(data) >= {"G", "D", "G_ema", "training_set_kwargs"}
    ge = data["G_ema"]
    assert isinstance(ge, PersistentObject) and ge.class_name == "Generator"
    assert "module_src" not in ge.state
    tensors = ge.tensors()
    assert torch.equal(tensors["synthesis.b16.conv0.weight"], t["synthesis.b16.conv0.weight"])
    assert torch.equal(tensors["mapping.fc1.bias"], t["mapping.fc1.bias"])
    assert data["training_set_kwargs"]["resolution"] == 16


def test_pickles_written_with_protocol_4_and_5_load(tmp_path: Path) -> None:
    g = make_tiny_generator(16)
    t = ada_tensors_from_rosinality(g.state_dict(), 16)
    for proto in (4, 5):
        path = write_ada_pickle(tmp_path / f"p{proto}.pkl", t, 16, latent_average(g, 256), protocol=proto)
        family, state, extras = load_state(path)
        assert family == "stylegan2" and torch.equal(state["conv1.conv.weight"], g.state_dict()["conv1.conv.weight"])


def test_writer_modules_do_not_leak() -> None:
    import sys

    with nvidia_modules():
        assert "torch_utils.persistence" in sys.modules
    assert "torch_utils.persistence" not in sys.modules and "dnnlib" not in sys.modules
    assert FakeNet  # the helper stays importable without the stand-in modules
