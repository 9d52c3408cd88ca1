"""Start a real `pulse-server run` subprocess in an isolated per-user environment (for any test file).

    from tests.daemon_fixture import start_daemon          # or: from daemon_fixture import start_daemon
    d = start_daemon(tmp_path, weights=tiny_weights, endpoint="tcp")
    try:
        with d.client() as c:                              # PulseClient(d.endpoint, token=d.token)
            c.connect()
    finally:
        d.stop()

HOME and XDG_* point into `tmp_path`; XDG_RUNTIME_DIR is a short private dir under /tmp (ipc paths are
limited to ~100 bytes). `d.env` is that environment with PULSE_ENDPOINT (and, for tcp, PULSE_TOKEN) set:
pass it to any subprocess (an editor, `pulse-server status`) that should talk to this daemon.
`start_daemon` waits until the daemon answers HELLO; `stop()` asks for a graceful stop (SIGTERM; on Windows
CTRL_BREAK_EVENT to the daemon's own process group) and kills after a timeout. Every daemon is also killed at
interpreter exit if a test forgot to stop it.

tcp daemons authenticate peers during the ZMTP handshake (PLAIN, the token as password): a raw socket needs
`d.raw_socket()` (or `plain_credentials(sock, d.token)`).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_LIVE: set[subprocess.Popen] = set()


@dataclass
class DaemonHandle:
    endpoint: str
    token: str | None
    proc: subprocess.Popen
    env: dict[str, str]
    log_path: Path = field(default=Path())
    runtime_dir: Path = field(default=Path())

    def client(self, **kwargs):
        """A PulseClient for this daemon (not yet connected)."""
        from protocol.client import PulseClient

        kwargs.setdefault("token", self.token)
        kwargs.setdefault("timeout", 15.0)
        return PulseClient(self.endpoint, **kwargs)

    def raw_socket(self, socket_type: int | None = None):
        """A bare zmq socket (DEALER by default) connected to the daemon, with the PLAIN credentials a tcp
        endpoint needs; for sending hand-made frames."""
        import zmq

        s = zmq.Context.instance().socket(zmq.DEALER if socket_type is None else socket_type)
        s.linger = 0
        if self.token is not None:
            plain_credentials(s, self.token)
        s.connect(self.endpoint)
        return s

    def output(self) -> str:
        """Everything the daemon logged to stderr so far."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> int | None:
        """Graceful stop (SIGTERM: running job cancelled, socket and lock removed); kill if it hangs."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM if os.name == "posix" else signal.CTRL_BREAK_EVENT)
                self.proc.wait(timeout)
            except (subprocess.TimeoutExpired, OSError, ValueError):
                self.kill()
        _LIVE.discard(self.proc)
        shutil.rmtree(self.runtime_dir, ignore_errors=True) if self.runtime_dir != Path() else None
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        _LIVE.discard(self.proc)


def plain_credentials(sock, token: str) -> None:
    """Make `sock` a ZMQ PLAIN client with the daemon's token as password (what PulseClient does on tcp)."""
    from protocol.client import PLAIN_USERNAME

    sock.plain_username = PLAIN_USERNAME
    sock.plain_password = token.encode("utf-8")


def isolated_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """os.environ with HOME/XDG_* under tmp_path and a fresh short XDG_RUNTIME_DIR; `env` applied last."""
    base = dict(os.environ)
    for k in ("PULSE_ENDPOINT", "PULSE_TOKEN", "PULSE_RUNTIME_DIR", "PULSE_SERVER_KEY"):
        base.pop(k, None)
    home = Path(tmp_path) / "home"
    for sub in ("config", "cache", "data", "state"):
        (home / f".{sub}").mkdir(parents=True, exist_ok=True)
    runtime = Path(tempfile.mkdtemp(prefix="pulse-rt-", dir="/tmp" if os.name == "posix" else None))
    base.update({
        "HOME": str(home), "USERPROFILE": str(home), "LOCALAPPDATA": str(home / ".data"),
        "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".data"), "XDG_STATE_HOME": str(home / ".state"),
        "XDG_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1",
    })
    base["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), base.get("PYTHONPATH", "")) if p)
    base.update(env or {})
    return base


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(*args: str) -> list[str]:
    """`pulse-server ARGS...` with this interpreter (no reliance on the console script being installed)."""
    from protocol.launch import module_program

    return [*module_program(sys.executable), *args]


def start_daemon(tmp_path: Path, *, weights: str | Path | None, endpoint: str = "tcp", env: dict[str, str] | None = None,
                 args: Sequence[str] = (), timeout: float = 60.0) -> DaemonHandle:
    """Run `pulse-server run --weights WEIGHTS` on a fresh tcp port ("tcp"), the per-user ipc path ("ipc"),
    or an explicit endpoint URL; return once it answers HELLO. `args`: extra `run` flags."""
    tmp_path = Path(tmp_path)
    full_env = isolated_env(tmp_path, env)
    runtime = Path(full_env["XDG_RUNTIME_DIR"])
    token = None
    if endpoint == "tcp":
        endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    elif endpoint == "ipc":
        endpoint = f"ipc://{runtime / 'pulse-depixelate' / 'daemon.sock'}"
    if endpoint.startswith("tcp://"):
        token = full_env.setdefault("PULSE_TOKEN", secrets.token_urlsafe(24))
    full_env["PULSE_ENDPOINT"] = endpoint
    log_path = tmp_path / f"daemon-{secrets.token_hex(4)}.log"
    cmd = server_command("run", "--endpoint", endpoint, *(["--weights", str(weights)] if weights is not None else []), *args)
    log_fh = open(log_path, "wb")
    # Own session / process group: a signal meant for the test run does not hit the daemon, and on
    # Windows CTRL_BREAK_EVENT (stop()) reaches only a process that leads its own group.
    group = {"start_new_session": True} if os.name == "posix" else {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP}
    proc = subprocess.Popen(cmd, env=full_env, stdout=log_fh, stderr=subprocess.STDOUT, cwd=str(REPO), **group)
    log_fh.close()
    _LIVE.add(proc)
    handle = DaemonHandle(endpoint, token, proc, full_env, log_path, runtime)
    try:
        wait_until_answers(handle, timeout)
    except BaseException:
        handle.kill()
        raise
    return handle


def wait_until_answers(handle: DaemonHandle, timeout: float = 60.0) -> None:
    from protocol.client import PulseClient
    from protocol.errors import ProtocolError

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if handle.proc.poll() is not None:
            raise RuntimeError(f"pulse-server exited with {handle.proc.returncode}:\n{handle.output()}")
        try:
            with PulseClient(handle.endpoint, token=handle.token, timeout=2.0, client_name="fixture") as c:
                c.connect()
            return
        except ProtocolError as exc:
            last = exc
            time.sleep(0.1)
    handle.kill()
    raise TimeoutError(f"pulse-server did not answer on {handle.endpoint} within {timeout:g} s ({last}):\n{handle.output()}")


@atexit.register
def _kill_leftovers() -> None:
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()


def start_long_job_client(endpoint: str, token: str) -> subprocess.Popen:
    """A client process that submits a solve job of 100,000 steps and prints RUNNING on its first progress:
    the tests kill it to see what the daemon does with the job of a client that vanished."""
    script = textwrap.dedent(f"""
        import numpy as np
        from protocol.client import PulseClient
        from protocol.messages import ImageBlob, Progress
        with PulseClient({endpoint!r}, token={token!r}, client_name="doomed") as c:
            jid = c.submit(ImageBlob.from_numpy(np.zeros((8, 8, 3), np.float32)), None,
                           {{"mode": "solve", "candidates": 1, "steps": 5000}}).job_id
            for ev in c.events(jid):
                if isinstance(ev, Progress):
                    print("RUNNING", flush=True)
    """)
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=str(REPO),
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def run_worker_until(worker, queue, jobs: Sequence, done, timeout: float = 120.0) -> None:
    """In-process: queue `jobs` on `queue`, start the `pulse_server.worker.Worker` thread, wait for the
    `done` event (set by the test's emit), then stop the worker and close the queue whatever happened."""
    for job in jobs:
        queue.put(job)
    worker.start()
    try:
        assert done.wait(timeout)
    finally:
        worker.stop()
        queue.close()
        worker.join(10)
