"""Without Ray: the package and the local daemon work unchanged, and `--cluster` says how to get Ray.

Ray's import is blocked in the daemon's process by a sitecustomize on its PYTHONPATH (an import hook that
refuses `ray`), whether or not this venv has Ray installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from daemon_fixture import REPO, free_tcp_port, isolated_env, server_command, start_daemon

from protocol.messages import ImageBlob

BLOCK_RAY = textwrap.dedent("""
    import sys

    class _RefuseRay:
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
            return None

    sys.meta_path.insert(0, _RefuseRay())
""")


@pytest.fixture
def no_ray_env(tmp_path) -> dict[str, str]:
    hook = tmp_path / "block-ray"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(BLOCK_RAY)
    return {"PYTHONPATH": f"{hook}:{REPO}"}


def test_ray_is_really_blocked_by_the_hook(tmp_path, no_ray_env):
    out = subprocess.run([sys.executable, "-c", "import ray"], env=isolated_env(tmp_path, no_ray_env),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "blocked" in out.stderr


def test_local_daemon_runs_jobs_without_ray(tmp_path, no_ray_env):
    code = "import pulse_server, pulse_server.daemon, pulse_server.cluster, pulse_server.cli, sys; assert 'ray' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], env=isolated_env(tmp_path, no_ray_env), capture_output=True,
                         text=True, timeout=60, cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    d = start_daemon(tmp_path, weights="noop:", env=no_ray_env)
    try:
        with d.client() as c:
            c.connect()
            res = c.run_job(ImageBlob.from_numpy(np.zeros((8, 8, 3), np.float32)), None, {"mode": "solve", "steps": 1})
            assert len(res.candidates) == 3
            assert "cluster" not in c.status().server
    finally:
        d.stop()


def test_cluster_without_ray_says_how_to_install_it(tmp_path, no_ray_env):
    out = subprocess.run(server_command("run", "--cluster", "ray", "--no-log-file", "--weights", "noop:",
                                        "--endpoint", f"tcp://127.0.0.1:{free_tcp_port()}"),
                         env=isolated_env(tmp_path, no_ray_env), capture_output=True, text=True, timeout=60,
                         cwd=str(REPO))
    assert out.returncode == 2
    assert "--cluster needs Ray" in out.stderr and "pip install 'pulse-depixelate[cluster]'" in out.stderr


@pytest.mark.parametrize("value, address", [("ray", "auto"), ("ray://auto", "auto"),
                                            ("ray://gpu-box:10001", "ray://gpu-box:10001")])
def test_cluster_values_name_a_ray_address(monkeypatch, value, address):
    from pulse_server.cluster.link import parse_cluster

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert parse_cluster(value) == address


def test_plain_ray_follows_ray_address(monkeypatch):
    from pulse_server.cluster.link import parse_cluster

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert parse_cluster("ray") == "10.0.0.5:6379"


@pytest.mark.parametrize("value", ["spark", "ray://", "ray://gpu-box"])
def test_bad_cluster_values_are_refused(value):
    from pulse_server.cluster.link import parse_cluster
    from pulse_server.errors import PulseError

    with pytest.raises(PulseError) as err:
        parse_cluster(value)
    assert err.value.code == "BAD_CLUSTER"


def test_status_prints_one_line_per_actor(capsys):
    from pulse_server.commands.server import _print_pool

    _print_pool({"backend": "ray", "address": "auto", "state": "up", "message": "", "retried": 1, "lost": 0,
                 "actors": [{"id": "actor-0", "state": "busy", "host": "gpu1", "pid": 7, "device": "cuda:0", "gpus": "0",
                             "models": [""], "done": 4, "job": "j1", "step": 3, "total": 100},
                            {"id": "actor-1", "state": "idle", "host": "gpu2", "pid": 8, "device": "cuda:0", "gpus": "1",
                             "models": [], "done": 0, "job": None}]})
    out = capsys.readouterr().out.splitlines()
    assert "2 actor(s), 1 job(s) retried" in out[0]
    assert "actor-0: busy on gpu1 pid 7, cuda:0 gpu 0; models: (own model); running j1 (3/100); 4 done" in out[1]
    assert "actor-1: idle on gpu2" in out[2] and "none loaded" in out[2]
