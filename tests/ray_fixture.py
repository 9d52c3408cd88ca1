"""A real local Ray cluster for the cluster tests: one head on 127.0.0.1, torn down whatever happens.

    head = RayHead.start(num_cpus=2)      # `ray start --head` on a free port, its own temp dir
    head.env                              # what a daemon (or anything) needs to join it: RAY_ADDRESS ...
    head.stop()                           # `ray stop --force`, always

RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's single-machine switch (on every OS): it keeps Ray's own
node address on the loopback instead of replacing 127.0.0.1 by the machine's network address. Ray's
token authentication is turned off for this loopback-only cluster (the daemon runs under another HOME).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from daemon_fixture import free_tcp_port

RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}


@dataclass
class RayHead:
    port: int
    temp_dir: str
    num_cpus: int
    env: dict[str, str] = field(default_factory=dict)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @classmethod
    def start(cls, num_cpus: int = 2, port: int | None = None) -> RayHead:
        # Short temp dir: Ray's socket paths live under it (AF_UNIX paths are limited to ~107 bytes).
        head = cls(port or free_tcp_port(), tempfile.mkdtemp(prefix="pulse-ray-", dir="/tmp"), num_cpus)
        head.env = {**LOOPBACK_ENV, "RAY_ADDRESS": head.address}
        head.restart()
        return head

    def restart(self) -> None:
        cmd = [RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
               "--include-dashboard=false", "--disable-usage-stats", "--num-cpus", str(self.num_cpus),
               "--num-gpus", "0", "--temp-dir", self.temp_dir]
        env = {**os.environ, **LOOPBACK_ENV}
        env.pop("RAY_ADDRESS", None)
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")

    def stop_processes(self) -> None:
        subprocess.run([RAY, "stop", "--force"], env={**os.environ, **LOOPBACK_ENV}, capture_output=True, timeout=120)

    def stop(self) -> None:
        self.stop_processes()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
