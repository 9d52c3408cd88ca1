"""`pulse depixelate`: files out, report, clear errors; in-process and through a real daemon (--via-daemon)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulse_server.cli import main_pulse
from pulse_server.pipeline import pixelate

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "astronaut-mosaic.png"


def mosaic_image(path: Path, mode: str = "RGB") -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A 160×128 photo-like image with an 11-px mosaic at (40, 24, 88, 77); saved in `mode`."""
    rng = np.random.default_rng(7)
    small = rng.random((16, 20, 3)).astype(np.float32)
    img = np.stack([np.asarray(Image.fromarray(small[..., c]).resize((160, 128), Image.Resampling.BICUBIC))
                    for c in range(3)], axis=2)
    u8 = np.clip(img * 255, 0, 255).astype(np.uint8)
    rect = (40, 24, 88, 77)
    mos = pixelate(u8, 11, rect)
    if mode == "RGB":
        arr = mos
        Image.fromarray(mos).save(path)
    elif mode == "RGBA":
        arr = np.concatenate([mos, np.full((128, 160, 1), 180, np.uint8)], axis=2)
        Image.fromarray(arr).save(path)
    elif mode == "I;16":
        grey = (mos.astype(np.float32) @ np.array([0.2126, 0.7152, 0.0722], np.float32))
        arr = pixelate(np.rint(grey * 257).astype(np.uint16)[..., None], 11, rect)
        Image.fromarray(arr[..., 0]).save(path)
    else:
        raise ValueError(mode)
    return arr, rect


def read(path: Path) -> np.ndarray:
    im = Image.open(path)
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def run_cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main_pulse(["depixelate", *args, "--quiet"])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "I;16"])
def test_writes_candidates_and_report(tmp_path: Path, tiny_weights: Path, capsys, mode: str) -> None:
    src = tmp_path / "in.png"
    arr, rect = mosaic_image(src, mode)
    out, report = tmp_path / "out.png", tmp_path / "r.json"
    box = (30, 10, 110, 100)  # larger than the mosaic
    rc, err = run_cli([str(src), "--box", ",".join(map(str, box)), "-o", str(out), "--weights", str(tiny_weights),
                       "--candidates", "2", "--seed", "5", "--steps", "3", "--report", str(report)], capsys)
    assert rc == 0, err
    files = [out, tmp_path / "out-2.png"]
    rep = json.loads(report.read_text())
    m = rep["mosaic"]
    assert (m["block"], m["rect_in_image"], m["detected"]) == (11, list(rect), True)
    assert m["rect"] == [rect[0] - box[0], rect[1] - box[1], rect[2], rect[3]]
    assert m["phase"] == [(rect[0] - box[0]) % 11, (rect[1] - box[1]) % 11]
    assert 0.5 < m["confidence"] <= 1
    assert [c["file"] for c in rep["candidates"]] == [str(f) for f in files]
    assert sorted(c["seed"] for c in rep["candidates"]) == [5, 6]
    errs = [c["downscale_error"] for c in rep["candidates"]]
    assert errs == sorted(errs) and all(e > 0 for e in errs)
    x, y, w, h = rect
    scale = 257.0 if arr.dtype == np.uint16 else 1.0

    def cells(a: np.ndarray) -> np.ndarray:
        return a[y : y + h, x : x + w, :3].astype(np.float64).reshape(7, 11, 8, 11, -1).mean(axis=(1, 3)) / scale

    for f in files:
        got = read(f)
        assert got.shape == arr.shape and got.dtype == arr.dtype
        outside = np.ones(arr.shape[:2], bool)
        outside[y : y + h, x : x + w] = False
        assert np.array_equal(got[outside], arr[outside])
        assert np.abs(cells(got) - cells(arr)).mean() <= 2.0
        assert not np.array_equal(got, arr)


@pytest.mark.parametrize(
    "box, message",
    [
        ("200,10,20,20", "not inside the 160×128 image"),
        ("-5,0,20,20", "not inside"),
        ("10,10,0,20", "empty"),
        ("10,10,1,1", "too small"),
    ],
)
def test_bad_boxes(tmp_path: Path, tiny_weights: Path, capsys, box: str, message: str) -> None:
    src = tmp_path / "in.png"
    mosaic_image(src)
    rc, err = run_cli([str(src), f"--box={box}", "-o", str(tmp_path / "o.png"), "--weights", str(tiny_weights)], capsys)
    assert rc == 2
    assert err.startswith("pulse: error: ") and message in err
    assert not (tmp_path / "o.png").exists()


def test_missing_image_and_bad_box_syntax(tmp_path: Path, capsys) -> None:
    rc, err = run_cli([str(tmp_path / "nope.png"), "--box", "0,0,8,8", "-o", str(tmp_path / "o.png")], capsys)
    assert rc == 2 and "image not found" in err
    with pytest.raises(SystemExit) as exc:
        main_pulse(["depixelate", str(tmp_path / "nope.png"), "--box", "1,2,3", "-o", "o.png"])
    assert exc.value.code == 2
    assert "X,Y,W,H" in capsys.readouterr().err


def test_example_image_is_a_detectable_mosaic() -> None:
    from pulse_server.pipeline import analyze_mosaic

    img = read(EXAMPLE)
    info = analyze_mosaic(np.ascontiguousarray(img[30:200, 30:200]))
    assert (info.block, info.rect, info.detected) == (16, (14, 14, 128, 128), True)


def test_via_daemon(tmp_path: Path, tiny_weights: Path) -> None:
    from daemon_fixture import start_daemon

    src = tmp_path / "in.png"
    arr, rect = mosaic_image(src)
    d = start_daemon(tmp_path, weights=tiny_weights)
    try:
        out, report = tmp_path / "d.png", tmp_path / "d.json"
        proc = subprocess.run(
            [sys.executable, "-m", "pulse_server.cli", "depixelate", str(src), "--box", "30,10,110,100", "-o", str(out),
             "--via-daemon", "--candidates", "2", "--seed", "3", "--steps", "3", "--report", str(report), "--quiet"],
            env=d.env, cwd=str(REPO), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr + d.output()
        rep = json.loads(report.read_text())
        assert rep["mosaic"]["block"] == 11 and rep["mosaic"]["rect_in_image"] == list(rect)
        assert sorted(c["seed"] for c in rep["candidates"]) == [3, 4]
        for f in (out, tmp_path / "d-2.png"):
            got = read(f)
            assert got.shape == arr.shape
            x, y, w, h = rect
            outside = np.ones(arr.shape[:2], bool)
            outside[y : y + h, x : x + w] = False
            assert np.array_equal(got[outside], arr[outside])
        # a box outside the image fails before anything is sent
        bad = subprocess.run(
            [sys.executable, "-m", "pulse_server.cli", "depixelate", str(src), "--box", "150,0,50,50", "-o",
             str(tmp_path / "x.png"), "--via-daemon", "--quiet"], env=d.env, cwd=str(REPO), capture_output=True,
            text=True, timeout=120)
        assert bad.returncode == 2 and "not inside" in bad.stderr
        # a region without a mosaic: the daemon refuses it (the editors' path) unless the job says force
        from protocol.errors import JobFailed
        from protocol.messages import ImageBlob

        photo_only = np.ascontiguousarray(arr[:, :40])
        with d.client() as c:
            c.connect()
            with pytest.raises(JobFailed) as err:
                c.run_job(ImageBlob.from_numpy(photo_only), None, {"mode": "depixelate", "candidates": 1, "steps": 1})
            assert err.value.code == "NO_MOSAIC" and "choose 'depixelate anyway'" in err.value.message
            forced = c.run_job(ImageBlob.from_numpy(photo_only), None,
                               {"mode": "depixelate", "candidates": 1, "steps": 1, "force": True})
            assert forced.analysis["detected"] is False and len(forced.candidates) == 1
        cli = subprocess.run(
            [sys.executable, "-m", "pulse_server.cli", "depixelate", str(src), "--box", "0,0,40,128", "-o",
             str(tmp_path / "f.png"), "--via-daemon", "--force", "--candidates", "1", "--steps", "1"], env=d.env,
            cwd=str(REPO), capture_output=True, text=True, timeout=120)
        assert cli.returncode == 0 and "no mosaic found in the box (--force" in cli.stderr, cli.stderr + d.output()
        # the log says how many jobs were ahead and how long a job waited, not a bare queue position
        log = d.output()
        assert "0 job(s) ahead of it" in log and "s waiting to start" in log and "(position" not in log
    finally:
        d.stop()


def test_infinite_float_pixels_are_refused_before_clipping(tmp_path: Path, tiny_weights: Path, capsys) -> None:
    grey = np.full((48, 48), 0.5, np.float32)
    grey[10, 20] = -np.inf
    Image.fromarray(grey, "F").save(tmp_path / "inf.tiff")
    rc, err = run_cli([str(tmp_path / "inf.tiff"), "--box", "0,0,48,48", "-o", str(tmp_path / "x.png"),
                       "--weights", str(tiny_weights), "--steps", "1"], capsys)
    assert rc == 2 and "infinite" in err and not (tmp_path / "x.png").exists()
