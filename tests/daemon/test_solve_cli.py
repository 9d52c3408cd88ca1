"""`pulse solve` end to end: real checkpoints, real PNG files, the real console script, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pulse_server.solver.downsample import BicubicDownsample, downsample_reference

REPO = Path(__file__).resolve().parents[2]
PULSE = REPO / ".venv" / "bin" / "pulse"


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    yield
    torch.set_num_threads(before)


def pulse(*argv: str) -> int:
    """The `pulse` CLI in-process (same parser and error mapping as the console script)."""
    from pulse_server.cli import main_pulse

    return main_pulse(list(argv))


def _save(a: np.ndarray, path: Path) -> Path:
    Image.fromarray((np.clip(a, 0, 1) * 255 + 0.5).astype(np.uint8)).save(path)
    return path


def _load(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255.0


def _tiny_target(weights: Path, out: Path, factor: int = 8) -> Path:
    from pulse_server.models.loading import load_prior

    prior, _ = load_prior(weights, "cpu")
    with torch.no_grad():
        z = prior.sample_latent(1, torch.Generator().manual_seed(1234))
        img = ((prior.render(z) + 1) / 2).clamp(0, 1)
        low = BicubicDownsample(factor)(img)[0].permute(1, 2, 0).numpy()
    return _save(low, out)


def test_recovery_through_the_cli(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    low = _tiny_target(tiny_weights, tmp_path / "low.png")
    (tmp_path / "out").mkdir()  # an output folder must exist: a mistyped one is refused, not created
    rc = pulse("solve", str(low), "-o", "out/face.png", "--weights", str(tiny_weights), "--candidates", "4",
               "--seed", "0", "--report", "report.json", "--device", "cpu")
    assert rc == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["factor"] == 8 and report["resolution"] == 32
    cands = report["candidates"]
    assert [Path(c["file"]).name for c in cands] == ["face.png", "face-2.png", "face-3.png", "face-4.png"]
    assert sorted(c["seed"] for c in cands) == [0, 1, 2, 3]
    assert [c["downscale_error"] for c in cands] == sorted(c["downscale_error"] for c in cands)
    assert any(c["eps_reached"] for c in cands) and all(1 <= c["steps"] <= 100 for c in cands)
    target = _load(low)
    for c in cands:
        img = _load(tmp_path / c["file"])
        assert img.shape == (32, 32, 3)
        mse = float(((downsample_reference(img, 8) - target) ** 2).mean())
        # PNG quantisation of input and output moves the error by ~1e-5 at most
        assert mse == pytest.approx(c["downscale_error"], abs=2e-5)
        if c["eps_reached"]:
            assert mse <= report["eps"] + 2e-5
    out = capsys.readouterr().out
    assert "face-4.png" in out and "downscale error: how closely each face, downscaled to the input's size" in out


def test_bad_inputs_exit_2(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    _save(np.zeros((5, 5, 3)), tmp_path / "five.png")
    _save(np.zeros((4, 6, 3)), tmp_path / "rect.png")
    for name, words in (("empty.png", "cannot read"), ("text.png", "cannot read"), ("five.png", "does not divide"),
                        ("rect.png", "square"), ("missing.png", "not found")):
        rc = pulse("solve", name, "-o", "o.png", "--weights", str(tiny_weights), "--steps", "2")
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2, name
        assert len(err) == 1 and err[0].startswith("pulse: error:") and words in err[0], (name, err)
    assert not (tmp_path / "o.png").exists()


def test_console_script_end_to_end(tiny_weights: Path, tmp_path: Path) -> None:
    """The installed `pulse` entry point, as a user runs it: one good solve and one bad input."""
    low = _tiny_target(tiny_weights, tmp_path / "low.png", factor=4)
    env = {**os.environ, "PULSE_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    exe = [str(PULSE)] if PULSE.exists() else [sys.executable, "-m", "pulse_server.cli"]
    good = subprocess.run([*exe, "solve", str(low), "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights),
                           "-k", "2", "--steps", "20", "--seed", "3", "--precision", "fp32", "--report",
                           str(tmp_path / "r.json")], env=env, capture_output=True, text=True, timeout=120)
    assert good.returncode == 0, good.stderr
    assert (tmp_path / "o.png").is_file() and (tmp_path / "o-2.png").is_file()
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["factor"] == 4 and {c["seed"] for c in r["candidates"]} == {3, 4}
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    bad = subprocess.run([*exe, "solve", str(tmp_path / "bad.png"), "-o", str(tmp_path / "b.png"), "--weights",
                          str(tiny_weights)], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().startswith("pulse: error:") and len(bad.stderr.strip().splitlines()) == 1


def test_real_prior_cli_4x4(shared_prior_path: Path, tmp_path: Path) -> None:
    """A face from the real prior, mosaicked to 4×4, solved to 32×32 faces through the CLI."""
    from pulse_server.models.loading import load_prior

    prior, _ = load_prior(shared_prior_path, "cpu")
    with torch.no_grad():
        z = prior.sample_latent(1, torch.Generator().manual_seed(11))
        face = ((prior.render(z) + 1) / 2)[0].permute(1, 2, 0).numpy()
    low = _save(face.reshape(4, 8, 4, 8, 3).mean((1, 3)), tmp_path / "mosaic4.png")
    rc = pulse("solve", str(low), "-o", "face.png", "--weights", str(shared_prior_path), "-k", "4", "--seed", "0",
               "--report", "r.json")
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["candidates"][0]["eps_reached"] and r["factor"] == 8
    assert _load(tmp_path / "face.png").shape == (32, 32, 3)


def test_via_daemon(tiny_weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pulse solve --via-daemon` against a real `pulse-server run` subprocess on a loopback tcp port."""
    from tests.daemon_fixture import start_daemon

    low = _tiny_target(tiny_weights, tmp_path / "low.png")
    daemon = start_daemon(tmp_path / "d", weights=tiny_weights, env={"OMP_NUM_THREADS": "1"})
    try:
        monkeypatch.setenv("PULSE_TOKEN", daemon.token or "")
        rc = pulse("solve", str(low), "-o", "v.png", "--via-daemon", "--endpoint", daemon.endpoint, "-k", "2",
                   "--seed", "5", "--steps", "30", "--report", "v.json", "-q")
        assert rc == 0, daemon.output()
        r = json.loads((tmp_path / "v.json").read_text())
        assert r["via_daemon"] and r["factor"] == 8 and r["resolution"] == 32
        assert sorted(c["seed"] for c in r["candidates"]) == [5, 6]
        target = _load(low)
        for c in r["candidates"]:
            img = _load(tmp_path / c["file"])
            mse = float(((downsample_reference(img, 8) - target) ** 2).mean())
            assert mse == pytest.approx(c["downscale_error"], abs=2e-5)
        # the daemon ran the same solver: the same seeds give the same errors as in-process
        here = pulse("solve", str(low), "-o", "h.png", "--weights", str(tiny_weights), "-k", "2", "--seed", "5",
                     "--steps", "30", "--report", "h.json", "-q")
        assert here == 0
        h = json.loads((tmp_path / "h.json").read_text())
        for a, b in zip(r["candidates"], h["candidates"]):
            assert a["seed"] == b["seed"] and a["downscale_error"] == pytest.approx(b["downscale_error"], rel=1e-3, abs=1e-6)
        # a daemon-side refusal (size not dividing 32) is one line and exit 2 as well
        _save(np.zeros((5, 5, 3)), tmp_path / "five.png")
        assert pulse("solve", "five.png", "-o", "f.png", "--via-daemon", "--endpoint", daemon.endpoint, "-q") == 2
    finally:
        daemon.stop()


def test_infinite_float_pixels_are_refused_before_clipping(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    grey = np.full((4, 4), 0.5, np.float32)
    grey[1, 2] = np.inf
    Image.fromarray(grey, "F").save(tmp_path / "inf.tiff")  # a float TIFF can hold what a PNG cannot
    assert pulse("solve", "inf.tiff", "-o", "x.png", "--weights", str(tiny_weights), "--steps", "1", "-q") == 2
    err = capsys.readouterr().err
    assert "infinite" in err and not (tmp_path / "x.png").exists()


def test_cli_via_daemon_sends_a_model_name_with_the_job(tiny_weights: Path, tmp_path: Path, digiface_installed,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from daemon_fixture import start_daemon
    from PIL import Image

    from pulse_server.cli import main_pulse

    Image.new("RGB", (8, 8), (150, 110, 90)).save(tmp_path / "low.png")
    daemon = start_daemon(tmp_path / "d", weights=tiny_weights, env={"OMP_NUM_THREADS": "1"})
    try:
        monkeypatch.setenv("PULSE_TOKEN", daemon.token or "")
        with daemon.client() as c:
            assert [m["id"] for m in c.connect().models] == ["", "ffhq-1024", "ffhq-256", "digiface-64"]
        rc = main_pulse(["solve", str(tmp_path / "low.png"), "-o", str(tmp_path / "f.png"), "--via-daemon",
                         "--endpoint", daemon.endpoint, "--model", "digiface-64", "--steps", "2", "-q",
                         "--report", str(tmp_path / "r.json")])
        assert rc == 0, daemon.output()
        report = json.loads((tmp_path / "r.json").read_text())
        assert report["model"] == "digiface-64-dcgan" and report["resolution"] == 64
        with daemon.client() as c:
            c.connect()
            loaded = [m["id"] for m in c.status().server["models"] if m["loaded"]]
        assert loaded == ["digiface-64"]  # the daemon's own model was never needed
    finally:
        daemon.stop()
