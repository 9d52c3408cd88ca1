"""`make demo` picks the best model the machine has: cached FFHQ, else a download, else the offline digiface-64."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from daemon_fixture import REPO, isolated_env

from pulse_server import demo, devices
from pulse_server.errors import ModelError
from pulse_server.models import registry


def _refusing_url() -> str:
    """A loopback URL nothing listens on: a download there fails at once, like an offline machine's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/model.pkl"


@pytest.fixture(autouse=True)
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    url = _refusing_url()
    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("FFHQ_256", "FFHQ_1024"):
        monkeypatch.setenv(f"PULSE_{name}_URL", url)
    return url


def _cache(name: str) -> None:
    path = registry.weights_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"stands in for the checkpoint: choosing a model does not read it")


def test_offline_without_ffhq_the_demo_runs_digiface_and_says_how_to_get_ffhq(offline: str, digiface_installed) -> None:
    model, line = demo.choose_model("cpu")
    assert model == "digiface-64"
    assert "\n" not in line and line.startswith("demo: model digiface-64")
    assert "not ffhq-256: its download failed (" in line and "research use only" in line
    assert offline in line and str(registry.weights_path("ffhq-256")) in line  # how to get FFHQ
    assert not registry.weights_path("ffhq-256").exists()


def test_a_cached_ffhq_model_is_used_without_a_download(digiface_installed) -> None:
    _cache("ffhq-256")
    assert demo.choose_model("cpu") == ("ffhq-256", "demo: model ffhq-256 (cached)")


def test_a_cpu_never_picks_ffhq_1024_even_when_cached(digiface_installed) -> None:
    _cache("ffhq-1024")
    assert demo.choose_model("cpu")[0] == "digiface-64"  # an hour per demo on a laptop CPU


def test_a_gpu_prefers_ffhq_1024_and_takes_a_cached_ffhq_256_over_going_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(devices, "_available", lambda kind, _torch: kind in ("cpu", "cuda"))
    _cache("ffhq-256")
    assert demo.choose_model("auto")[0] == "ffhq-256"
    _cache("ffhq-1024")
    assert demo.choose_model("auto")[0] == "ffhq-1024"


def test_without_any_model_the_error_names_both_ways_out(monkeypatch: pytest.MonkeyPatch, offline: str) -> None:
    monkeypatch.setattr(registry, "_package_file", lambda spec: None)
    with pytest.raises(ModelError) as e:
        demo.choose_model("cpu")
    assert e.value.code == "NO_WEIGHTS" and offline in str(e.value) and "pip install --no-deps gan-face-generate==1.1.1" in str(e.value)


def test_offline_the_make_demo_line_names_make_demo_for_a_checkpoint_file(offline: str, digiface_installed) -> None:
    _, line = demo.choose_model("cpu", "make demo MODEL=PATH")
    assert line.endswith("for a checkpoint you have: make demo MODEL=PATH.") and "--model" not in line


@pytest.fixture
def no_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime folder of this test's own: no daemon answers there (never the user's)."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("PULSE_RUNTIME_DIR", str(run))
    monkeypatch.delenv("PULSE_ENDPOINT", raising=False)


def test_make_demo_with_a_named_model_offline_says_make_demo_model_path(tmp_path: Path, offline: str, no_daemon,
                                                                      capsys) -> None:
    assert demo.main(["--from-make", "--model", "ffhq-256", "--out", str(tmp_path / "out")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("demo: error: could not download the face model from ") and offline in err
    assert err.rstrip().endswith("or use a checkpoint you already have: make demo MODEL=PATH.")
    assert "--model" not in err and len(err.splitlines()) == 1


def test_a_demo_model_file_that_does_not_exist_is_one_line(tmp_path: Path, no_daemon, capsys) -> None:
    assert demo.main(["--from-make", "--model", "no/such.pt", "--out", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == ("demo: error: no checkpoint file at no/such.pt: a model is ffhq-1024, ffhq-256, "
                                       "digiface-64 or the path of a checkpoint file (make demo MODEL=PATH)\n")


@pytest.mark.slow
def test_offline_demo_runs_end_to_end_to_face_images(tmp_path: Path, offline: str, digiface_installed) -> None:
    env = isolated_env(tmp_path, {"PULSE_CACHE_DIR": str(tmp_path / "cache"), "PULSE_FFHQ_256_URL": offline,
                                  "PULSE_FFHQ_1024_URL": offline})
    env["PULSE_RUNTIME_DIR"] = env["XDG_RUNTIME_DIR"]  # a daemon of its own, never the user's
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-m", "pulse_server.demo", "--out", str(out), "--candidates", "2",
                          "--steps", "5", "--device", "cpu"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=240)
    assert run.returncode == 0, (run.stdout, run.stderr)
    assert run.stdout.count("demo: model digiface-64") == 1
    # one summary (the CLI's): the model once, by its name; each face once, its error in words
    err = [line for line in run.stderr.replace("\r", "\n").splitlines() if line.strip() and "solving" not in line]
    assert err[0].startswith("mosaic: 16-px blocks, grid phase (14, 14), at 44,44 size 128×128 in the image")
    assert err[1] == "faces by digiface-64-dcgan (imagined: none of them is the person in the photo):"
    assert [line.split(":")[0] for line in err[2:4]] == [f"  {out / 'demo.png'}", f"  {out / 'demo-2.png'}"]
    assert all("% RMS)" in line for line in err[2:4]) and err[4].startswith("downscale error: how closely")
    assert "eps reached" not in run.stdout + run.stderr and ".pt" not in run.stdout + run.stderr
    from PIL import Image

    for name in ("demo.png", "demo-2.png"):
        with Image.open(out / name) as im:
            assert im.size == (224, 224)  # the whole example image, the face pasted in
