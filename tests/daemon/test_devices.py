"""`--device`: one resolver for every command; auto = cuda > mps > xpu > cpu; a missing device is one line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from daemon_fixture import isolated_env, server_command

from pulse_server import devices
from pulse_server.errors import PulseError


def _has(kind: str) -> bool:
    return devices._available(kind, torch)


@pytest.fixture
def fake_accelerators(monkeypatch: pytest.MonkeyPatch):
    """Pretend this torch sees the given accelerator kinds (and no others)."""

    def install(*kinds: str) -> None:
        monkeypatch.setattr(devices, "_available", lambda kind, _torch: kind == "cpu" or kind in kinds)
        monkeypatch.setattr(devices, "_count", lambda kind, _torch: 2)

    return install


@pytest.mark.parametrize("present, chosen", [((), "cpu"), (("xpu",), "xpu"), (("mps", "xpu"), "mps"),
                                             (("cuda", "mps", "xpu"), "cuda")])
def test_auto_prefers_cuda_then_mps_then_xpu_then_cpu(fake_accelerators, present, chosen) -> None:
    fake_accelerators(*present)
    assert devices.resolve_device("auto").type == chosen
    assert devices.resolve_device(None).type == chosen


def test_an_explicit_device_is_taken_as_asked(fake_accelerators) -> None:
    fake_accelerators("cuda", "xpu")
    assert devices.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert devices.resolve_device("XPU") == torch.device("xpu")
    assert devices.resolve_device("cpu") == torch.device("cpu")


def test_a_device_index_past_the_last_one_is_refused(fake_accelerators) -> None:
    fake_accelerators("cuda")
    with pytest.raises(PulseError) as e:
        devices.resolve_device("cuda:2")
    assert e.value.code == "NO_DEVICE" and "2 cuda device(s)" in e.value.message


@pytest.mark.parametrize("text", ["tpu", "cpu:0", "mps:1", "cuda:x", "cuda:"])
def test_a_device_torch_does_not_name_is_refused(text: str) -> None:
    with pytest.raises(PulseError) as e:
        devices.resolve_device(text)
    assert e.value.code == "BAD_DEVICE" and "auto, cpu, cuda, cuda:N, mps or xpu" in e.value.message


@pytest.mark.parametrize("kind", ["cuda", "mps", "xpu"])
def test_a_missing_accelerator_is_one_clear_error(kind: str) -> None:
    if _has(kind):
        pytest.skip(f"this machine has {kind}: the refusal cannot be observed here")
    with pytest.raises(PulseError) as e:
        devices.resolve_device(kind)
    msg = e.value.message
    assert e.value.code == "NO_DEVICE" and "\n" not in msg
    assert msg.startswith(f"--device {kind}: {kind.upper()} is not available on this machine; use --device auto or cpu")


def _one_line_exit_2(cmd: list[str], env: dict) -> str:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


def test_device_cuda_without_cuda_refuses_to_start(tmp_path, tiny_weights):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be observed here")
    env = isolated_env(tmp_path)
    endpoint = f"ipc://{env['XDG_RUNTIME_DIR']}/pulse-depixelate/daemon.sock"
    out = subprocess.run(server_command("run", "--endpoint", endpoint, "--weights", str(tiny_weights), "--device",
                                        "cuda", "--no-log-file"), env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "CUDA is not available on this machine; use --device auto or cpu" in out.stderr
    assert not os.path.exists(endpoint[len("ipc://"):])  # nothing was bound, no lock left behind
    assert not os.path.exists(os.path.join(env["XDG_RUNTIME_DIR"], "pulse-depixelate", "daemon.lock"))


def test_daemon_with_device_mps_but_no_mps_stops_at_start_with_one_line(tmp_path) -> None:
    if _has("mps"):
        pytest.skip("this machine has MPS")
    env = isolated_env(tmp_path)
    endpoint = f"ipc://{env['XDG_RUNTIME_DIR']}/pulse-depixelate/daemon.sock"
    line = _one_line_exit_2(server_command("run", "--endpoint", endpoint, "--model", "digiface-64", "--device", "mps",
                                           "--no-log-file"), env)
    assert line.startswith("pulse-server: error: --device mps: MPS is not available on this machine")
    assert not os.path.exists(endpoint[len("ipc://"):])  # nothing bound
    assert not os.path.exists(os.path.join(env["XDG_RUNTIME_DIR"], "pulse-depixelate", "daemon.lock"))


def test_solve_with_device_mps_but_no_mps_is_one_line_exit_2(tmp_path) -> None:
    if _has("mps"):
        pytest.skip("this machine has MPS")
    from PIL import Image

    Image.new("RGB", (8, 8), (120, 90, 80)).save(tmp_path / "low.png")
    env = isolated_env(tmp_path, {"PULSE_CACHE_DIR": str(tmp_path / "cache")})
    cmd = [sys.executable, "-c", "import sys; from pulse_server.cli import main_pulse; sys.exit(main_pulse())",
           "solve", str(tmp_path / "low.png"), "-o", str(tmp_path / "out.png"), "--device", "mps", "--quiet"]
    line = _one_line_exit_2(cmd, env)
    assert line.startswith("pulse: error: --device mps: MPS is not available on this machine")
    assert not (tmp_path / "cache").exists()  # refused before any model was looked for
