"""What a user sees when `pulse depixelate` / `pulse solve` refuse: one line on stderr, exit code 2, before any
model is loaded. Each test runs the real program in a subprocess and compares the whole of stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulse_server.pipeline import pixelate

REPO = Path(__file__).resolve().parents[2]
# A model path that does not exist: a refusal that names something else proves that no model was loaded first.
NO_MODEL = "/nonexistent/model.pt"


def pulse(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    # A cache of its own: a speed measurement another test left in the shared one adds an estimate line.
    env = {**os.environ, "PULSE_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([sys.executable, "-m", "pulse_server.cli", *argv], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 160×128 photo-like PNG with an 11-px mosaic at (40, 24, 88, 77) and no mosaic left of x = 40."""
    rng = np.random.default_rng(7)
    small = rng.random((16, 20, 3)).astype(np.float32)
    img = np.stack([np.asarray(Image.fromarray(small[..., c]).resize((160, 128), Image.Resampling.BICUBIC))
                    for c in range(3)], axis=2)
    path = tmp_path / "photo.png"
    Image.fromarray(pixelate(np.clip(img * 255, 0, 255).astype(np.uint8), 11, (40, 24, 88, 77))).save(path)
    return path


@pytest.fixture
def lowres(tmp_path: Path) -> Path:
    path = tmp_path / "low.png"
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------- arguments


@pytest.mark.parametrize("argv, line", [
    (["--box", "-5,0,20,20"],
     "pulse: error: box -5,0,20,20 is not inside the 160×128 image (x and y must be >= 0, x+w <= 160, y+h <= 128)"),
    (["--box", "0,0,20,20", "--steps", "abc"],
     "pulse depixelate: error: argument --steps: expected a whole number between 1 and 5000, got 'abc' "
     "(see pulse depixelate --help)"),
    (["--box", "0,0,20,20", "--candidates", "0"],
     "pulse depixelate: error: argument --candidates: must be between 1 and 16, not 0 "
     "(see pulse depixelate --help)"),
    (["--box", "0,0,20"],
     "pulse depixelate: error: argument --box: expected X,Y,W,H as 4 whole numbers, got '0,0,20' "
     "(see pulse depixelate --help)"),
    (["--box", "0,0,20,20", "--seed", "-7"],
     "pulse depixelate: error: argument --seed: must be between -1 and 2147483647, not -7 "
     "(see pulse depixelate --help)"),
    (["--box", "0,0,20,20", "--eps", "2"],
     "pulse depixelate: error: argument --eps: must be between 1e-06 and 0.5, not 2.0 "
     "(see pulse depixelate --help)"),
    (["--box", "0,0,20,20", "--block", "big"],
     "pulse depixelate: error: argument --block: expected auto or a whole number between 0 and 64, got 'big' "
     "(see pulse depixelate --help)"),
    (["--box", "0,0,20,20", "--method", "magic"],
     "pulse depixelate: error: argument --method: must be one of ilo, pulse, not 'magic' "
     "(see pulse depixelate --help)"),
])
def test_a_bad_depixelate_argument_is_one_line_naming_it_and_what_it_takes(photo: Path, argv: list[str],
                                                                           line: str) -> None:
    proc = pulse("depixelate", str(photo), "-o", "out.png", "--model", NO_MODEL, *argv, cwd=photo.parent)
    assert (proc.returncode, proc.stderr) == (2, line + "\n")
    assert not (photo.parent / "out.png").exists()


def test_missing_arguments_are_one_line_without_a_usage_block(tmp_path: Path) -> None:
    proc = pulse("depixelate", cwd=tmp_path)
    assert (proc.returncode, proc.stderr) == (
        2, "pulse depixelate: error: the following arguments are required: image, --box, -o/--output "
           "(see pulse depixelate --help)\n")


def test_a_bad_solve_argument_is_one_line_naming_it(lowres: Path) -> None:
    proc = pulse("solve", str(lowres), "-o", "face.png", "--steps", "abc", cwd=lowres.parent)
    assert (proc.returncode, proc.stderr) == (
        2, "pulse solve: error: argument --steps: expected a whole number between 1 and 5000, got 'abc' "
           "(see pulse solve --help)\n")


def test_help_explains_the_words_the_output_uses() -> None:
    for command in ("depixelate", "solve"):
        text = pulse(command, "--help", cwd=REPO).stdout
        assert "downscale error" in text and "eps " in text and "more --steps, another --seed or a bigger --model" in text
    text = pulse("depixelate", "--help", cwd=REPO).stdout
    assert "grid phase" in text and "confidence" in text and "--force" in text


# ------------------------------------------------------------------------------------------- output files


def test_a_missing_output_folder_is_refused_before_the_model_loads(photo: Path, lowres: Path) -> None:
    proc = pulse("depixelate", str(photo), "--box", "30,10,110,100", "-o", "no/such/dir/out.png", "--model", NO_MODEL,
                 cwd=photo.parent)
    assert (proc.returncode, proc.stderr) == (
        2, "pulse: error: cannot write the output no/such/dir/out.png: the folder no/such/dir does not exist "
           "(create it first)\n")
    proc = pulse("solve", str(lowres), "-o", "no/such/dir/out.png", "--model", NO_MODEL, cwd=photo.parent)
    assert (proc.returncode, proc.stderr) == (
        2, "pulse: error: cannot write the output no/such/dir/out.png: the folder no/such/dir does not exist "
           "(create it first)\n")
    assert not (photo.parent / "no").exists()


def test_a_missing_report_folder_is_refused_before_the_model_loads(photo: Path) -> None:
    proc = pulse("depixelate", str(photo), "--box", "30,10,110,100", "-o", "out.png", "--report", "gone/r.json",
                 "--model", NO_MODEL, cwd=photo.parent)
    assert (proc.returncode, proc.stderr) == (
        2, "pulse: error: cannot write the report gone/r.json: the folder gone does not exist (create it first)\n")


@pytest.mark.parametrize("name, line", [
    ("out.xyz", "pulse: error: cannot write the output out.xyz: .xyz is not an image type pulse can write "
                "(use .png, .tif, .webp or .jpg)"),
    ("out", "pulse: error: cannot write the output out: no extension is not an image type pulse can write "
            "(use .png, .tif, .webp or .jpg)"),
])
def test_an_output_name_without_an_image_type_is_refused_before_the_model_loads(photo: Path, name: str,
                                                                                line: str) -> None:
    proc = pulse("depixelate", str(photo), "--box", "30,10,110,100", "-o", name, "--model", NO_MODEL, cwd=photo.parent)
    assert (proc.returncode, proc.stderr) == (2, line + "\n")


def test_alpha_into_a_jpeg_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.full((64, 64, 4), 200, np.uint8)).save(rgba)
    proc = pulse("depixelate", str(rgba), "--box", "0,0,64,64", "-o", "out.jpg", "--model", NO_MODEL, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("pulse: error: cannot write the output out.jpg as JPEG: ")
    assert len(proc.stderr.splitlines()) == 1


# ------------------------------------------------------------------------------------------- no mosaic


def test_a_box_without_a_mosaic_is_refused_before_the_model_loads(photo: Path) -> None:
    proc = pulse("depixelate", str(photo), "--box", "0,0,40,128", "-o", "out.png", "--model", NO_MODEL,
                 cwd=photo.parent)
    assert (proc.returncode, proc.stderr) == (
        2, "pulse: error: no mosaic found in the selection (no grid of flat blocks in it: it looks like an unpixelated "
           "picture); select the pixelated area, or pass --force / choose 'depixelate anyway' to paint a face over "
           "it\n")
    assert not (photo.parent / "out.png").exists()


def test_a_wrong_block_size_is_refused(photo: Path) -> None:
    proc = pulse("depixelate", str(photo), "--box", "30,10,110,100", "--block", "7", "-o", "out.png", "--model",
                 NO_MODEL, cwd=photo.parent)
    assert (proc.returncode, proc.stderr) == (
        2, "pulse: error: no mosaic found in the selection (no grid of 7-px blocks lines up in it: let the block size "
           "be detected); select the pixelated area, or pass --force / choose 'depixelate anyway' to paint a face "
           "over it\n")


def test_force_paints_over_a_box_without_a_mosaic_and_says_so(photo: Path, tiny_weights: Path) -> None:
    proc = pulse("depixelate", str(photo), "--box", "0,0,40,128", "-o", "out.png", "--model", str(tiny_weights),
                 "--force", "--candidates", "1", "--steps", "1", "--seed", "0", cwd=photo.parent)
    assert proc.returncode == 0, proc.stderr
    assert "no mosaic found in the box (--force: the faces replace what was there)" in proc.stderr
    before, after = np.asarray(Image.open(photo)), np.asarray(Image.open(photo.parent / "out.png"))
    assert not np.array_equal(before[:, :40], after[:, :40]) and np.array_equal(before[:, 40:], after[:, 40:])


# ------------------------------------------------------------------------------------------- the summary


def test_the_summary_says_what_the_error_means_and_what_to_do(photo: Path, tiny_weights: Path) -> None:
    proc = pulse("depixelate", str(photo), "--box", "30,10,110,100", "-o", "out.png", "--model", str(tiny_weights),
                 "--candidates", "2", "--steps", "1", "--seed", "0", "--eps", "1e-6", cwd=photo.parent)
    assert proc.returncode == 0, proc.stderr
    lines = [ln for ln in proc.stderr.replace("\r", "\n").splitlines() if ln.strip() and "solving" not in ln]
    assert lines[0] == "mosaic: 11-px blocks, grid phase (10, 3), at 40,24 size 88×77 in the image; confidence 1.00"
    assert lines[1] == "faces by tiny-stylegan2-32 (imagined: none of them is the person in the photo):"
    for line, name in zip(lines[2:4], ("out.png", "out-2.png")):
        assert line.startswith(f"  {name}: seed ") and ", downscale error " in line
        assert "% RMS), above eps 1e-06 (0.1 %)" in line
    assert lines[4] == ("downscale error: how closely each face, pixelated on the mosaic's grid, reproduced your "
                        "mosaic before the final correction; the images written re-pixelate to your mosaic exactly")
    assert lines[5] == ("above eps: such a face fits loosely before the correction; more --steps, another --seed "
                        "or a bigger --model get closer (see --help)")
    assert len(lines) == 6
