"""The `noop` backend is chosen by name at start: `--model noop` echoes the region; a malformed `noop:` is
refused before the daemon binds anything."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from daemon_fixture import isolated_env, server_command, start_daemon

from protocol.messages import ImageBlob
from pulse_server.errors import ModelError
from pulse_server.models import noop

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("weights, delay", [("noop", 0.0), ("noop:", 0.0), ("noop:0.25", 0.25)])
def test_noop_names_parse_to_the_backend_with_its_step_delay(weights, delay):
    assert noop.parse(weights) == noop.NoopModel(delay)


@pytest.mark.parametrize("weights", [None, "ffhq-256", "noopy.pt", "/models/noop.pt"])
def test_other_model_names_are_not_the_noop_backend(weights):
    assert noop.parse(weights) is None


@pytest.mark.parametrize("weights", ["noop:fast", "noop:-1", "noop:nan"])
def test_a_malformed_noop_is_refused(weights):
    with pytest.raises(ModelError):
        noop.parse(weights)


def test_a_daemon_with_model_noop_echoes_the_region(tmp_path):
    d = start_daemon(tmp_path, weights="noop", endpoint="ipc")
    try:
        region = np.arange(5 * 7 * 4, dtype=np.uint8).reshape(5, 7, 4)
        with d.client() as c:
            assert c.connect().models[0]["name"] == "noop"
            res = c.run_job(ImageBlob.from_numpy(region), None, {"candidates": 2})
        assert res.model == "noop" and len(res.candidates) == 2
        np.testing.assert_array_equal(res.candidates[1].image.to_numpy(), region)
    finally:
        d.stop()


def test_run_refuses_a_malformed_noop_before_it_binds(tmp_path):
    out = subprocess.run(server_command("run", "--model", "noop:fast", "--endpoint", "tcp://127.0.0.1:0",
                                        "--no-log-file"), env=isolated_env(tmp_path), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "noop:SECONDS" in out.stderr
