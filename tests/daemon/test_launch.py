"""One way to start the daemon (protocol.launch): the argv every starter builds, and that it really starts
`pulse-server` with the standard library alone (the editors' Python imports it)."""

from __future__ import annotations

import json
import subprocess
import sys

from protocol import launch
from pulse_server.editors import krita
from pulse_server.service import common


def test_run_args_name_only_what_is_set_and_keep_extra_flags_last():
    assert launch.run_args() == ["run"]
    assert launch.run_args(endpoint="tcp://127.0.0.1:5", weights="ffhq-256", device="cpu", extra=["--preload"]) == [
        "run", "--endpoint", "tcp://127.0.0.1:5", "--weights", "ffhq-256", "--device", "cpu", "--preload"]
    assert launch.daemon_argv(("pulse-server",), endpoint="ipc:///x") == ["pulse-server", "run", "--endpoint", "ipc:///x"]


def test_autostart_entries_and_the_krita_start_button_use_the_same_program(tmp_path):
    assert common.server_command() == launch.server_program()
    assert common.DaemonOptions(endpoint="ipc:///x", device="cpu").run_args() == launch.run_args(
        endpoint="ipc:///x", device="cpu")
    pkg = krita.install(tmp_path / "pykrita", python=krita.PythonTarget("system", python=sys.executable))
    assert json.loads((pkg / "server.json").read_text())["command"] == list(launch.server_program())


def test_the_module_program_is_pulse_server():
    out = subprocess.run([*launch.module_program(), "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and launch.SCRIPT in out.stdout + out.stderr


def test_launch_needs_only_the_standard_library():
    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location('launch', sys.argv[1]); "
            "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in ('zmq', 'msgpack', 'torch', 'numpy', 'pulse_server')))")
    out = subprocess.run([sys.executable, "-I", "-c", code, launch.__file__], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
