"""Daemon lifecycle on real ipc and tcp sockets: private runtime dir, lock, second daemon, stop, status,
restart with a reconnecting client, refusal of non-loopback binds, and DaemonNotRunning."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import threading
import time

import numpy as np
import pytest
from daemon_fixture import free_tcp_port, isolated_env, server_command, start_daemon

from protocol.client import PulseClient
from protocol.errors import DaemonNotRunning, JobFailed, ProtocolError
from protocol.messages import ImageBlob, Progress

pytestmark = pytest.mark.timeout(180)


def _rgba(seed: int, size: int = 64) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 4)) * 255).astype(np.uint8)


def _cli(d, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(server_command(*args), env=d.env, capture_output=True, text=True, timeout=timeout)


def _server(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(server_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


def test_ipc_daemon_round_trip_private_files_and_status(tmp_path, tiny_weights):
    d = start_daemon(tmp_path, weights=tiny_weights, endpoint="ipc")
    try:
        sock = d.endpoint[len("ipc://"):]
        run_dir = os.path.dirname(sock)
        assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
        assert d.endpoint == d.env["PULSE_ENDPOINT"]
        with PulseClient(d.endpoint, timeout=15) as c:  # ipc: no token needed, the directory is private
            res = c.run_job(ImageBlob.from_numpy(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32)), None,
                            {"mode": "solve", "candidates": 1, "steps": 1, "seed": 1})
            assert res.candidates[0].image.width == 32
        out = _cli(d, "status")
        assert out.returncode == 0, out.stderr
        assert "running" in out.stdout and str(d.proc.pid) in out.stdout and "device: cpu" in out.stdout
    finally:
        d.stop()


@pytest.mark.parametrize("kind", ["file", "dir", "symlink"])
def test_ipc_endpoint_on_an_existing_non_socket_is_refused_and_left_alone(tmp_path, kind):
    env = isolated_env(tmp_path)
    target = tmp_path / "notes.txt"
    target.write_text("precious")
    path = {"file": target, "dir": tmp_path / "somedir", "symlink": tmp_path / "link"}[kind]
    if kind == "dir":
        path.mkdir()
    elif kind == "symlink":
        path.symlink_to(target)
    out = _server(env, "run", "--endpoint", f"ipc://{path}", "--weights", "noop:", "--no-log-file", timeout=20)
    assert out.returncode == 2, out.stderr
    assert str(path) in out.stderr and "not a socket" in out.stderr
    assert target.read_text() == "precious"
    assert os.path.lexists(path) and (kind != "symlink" or os.path.islink(path))


def test_a_stale_socket_of_a_crashed_daemon_is_replaced(tmp_path):
    sock_path = tmp_path / "d.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock_path))
    s.close()  # the file stays behind, as after a crash
    assert sock_path.is_socket()
    d = start_daemon(tmp_path, weights="noop:", endpoint=f"ipc://{sock_path}")
    try:
        with d.client() as c:
            c.connect()
    finally:
        d.stop()
    assert not sock_path.exists()


def test_a_live_socket_of_another_process_is_not_stolen(tmp_path):
    # A daemon started with another runtime dir (so another lock) that listens on the same ipc path.
    sock_path = tmp_path / "d.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(sock_path))
        listener.listen(4)
        env = isolated_env(tmp_path)
        out = _server(env, "run", "--endpoint", f"ipc://{sock_path}", "--weights", "noop:", "--no-log-file", timeout=20)
        assert out.returncode == 2, out.stderr
        assert "in use" in out.stderr and str(sock_path) in out.stderr
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(sock_path))  # still the first listener's
            conn, _ = listener.accept()
            conn.close()
    finally:
        listener.close()


def test_second_daemon_refuses_and_stop_cleans_up(tmp_path):
    d = start_daemon(tmp_path, weights="noop:0.02", endpoint="ipc")
    sock = d.endpoint[len("ipc://"):]
    lock = os.path.join(os.path.dirname(sock), "daemon.lock")
    try:
        assert os.path.exists(lock)
        for endpoint in (d.endpoint, f"tcp://127.0.0.1:{free_tcp_port()}"):
            second = _cli(d, "run", "--endpoint", endpoint, "--weights", "noop:", "--no-log-file", timeout=60)
            assert second.returncode == 2
            assert f"already running (pid {d.proc.pid}" in second.stderr
        # The first daemon still owns its socket (a second bind would have stolen it silently).
        with PulseClient(d.endpoint, timeout=10) as c:
            c.connect()
            # A running job is cancelled by `stop`, and its client is told so.
            outcome: list[BaseException | object] = []
            started = threading.Event()

            def job() -> None:
                try:
                    outcome.append(c.run_job(ImageBlob.from_numpy(_rgba(1)), None, {"steps": 5000},
                                             on_progress=lambda p: started.set()))
                except BaseException as exc:
                    outcome.append(exc)

            t = threading.Thread(target=job)
            t.start()
            assert started.wait(30)
            stop = _cli(d, "stop")
            assert stop.returncode == 0, stop.stderr
            assert "stopped" in stop.stdout
            t.join(30)
        assert isinstance(outcome[0], JobFailed) and outcome[0].code == "SHUTDOWN", outcome
        assert d.proc.wait(15) == 0
        assert not os.path.exists(sock) and not os.path.exists(lock)
        status = _cli(d, "status")
        assert status.returncode == 3 and "not running" in status.stdout
        assert _cli(d, "stop").returncode == 0  # stopping a stopped daemon is fine
        log_file = os.path.join(d.env["XDG_STATE_HOME"], "pulse-depixelate", "log", "daemon.log")
        assert "stopped" in open(log_file, encoding="utf-8").read()  # the rotating file log in the user log dir
    finally:
        d.stop()


def test_sigbreak_stops_the_daemon_gracefully(tmp_path):
    # SIGBREAK exists only on Windows: the daemon runs with SIGUSR1 standing in for it, so the handler
    # it installs when `signal.SIGBREAK` exists is exercised here.
    import signal
    import sys
    import time

    env = isolated_env(tmp_path)
    runtime = os.path.join(env["XDG_RUNTIME_DIR"], "pulse-depixelate")
    endpoint = f"ipc://{runtime}/daemon.sock"
    code = ("import signal, sys; signal.SIGBREAK = signal.SIGUSR1; from pulse_server.cli import main_server; "
            "sys.exit(main_server())")
    proc = subprocess.Popen([sys.executable, "-c", code, "run", "--endpoint", endpoint, "--weights", "noop:",
                             "--no-log-file"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        from protocol.client import PulseClient
        from protocol.errors import ProtocolError

        deadline = time.monotonic() + 30
        while True:  # answering HELLO means the loop runs: the handlers were installed before it
            assert proc.poll() is None, proc.stderr.read()
            try:
                with PulseClient(endpoint, timeout=2.0) as c:
                    c.connect()
                break
            except ProtocolError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        proc.send_signal(signal.SIGUSR1)
        assert proc.wait(20) == 0
        assert not os.path.exists(os.path.join(runtime, "daemon.lock"))  # cleaned up, not killed
        assert not os.path.exists(os.path.join(runtime, "daemon.sock"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_client_reconnects_and_resubmits_when_the_daemon_restarts(tmp_path):
    port = free_tcp_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    d1 = start_daemon(tmp_path / "a", weights="noop:0.01", endpoint=endpoint, args=["--heartbeat-ms", "300"])
    d2 = None
    try:
        events: list[object] = []
        first_progress = threading.Event()
        result: list[object] = []
        client = PulseClient(endpoint, token=d1.token, timeout=20)

        def job() -> None:
            try:
                result.append(client.run_job(ImageBlob.from_numpy(_rgba(2)), None, {"steps": 300}, job_id="survivor",
                                             on_progress=lambda p: (events.append(p), first_progress.set())))
            except BaseException as exc:
                result.append(exc)

        t = threading.Thread(target=job)
        t.start()
        assert first_progress.wait(30)
        d1.kill()  # a crash: no goodbye, socket file and lock left to the OS
        d2 = start_daemon(tmp_path / "b", weights="noop:0.001", endpoint=endpoint,
                          env={"PULSE_TOKEN": d1.token}, args=["--heartbeat-ms", "300"])
        t.join(60)
        client.close()
        assert result and not isinstance(result[0], BaseException), result
        res = result[0]
        assert res.job_id == "survivor" and np.array_equal(res.candidates[0].image.to_numpy(), _rgba(2))
        assert "survivor" in d2.output()  # the idempotent re-SUBMIT ran it on the new daemon
    finally:
        d1.kill()
        if d2 is not None:
            d2.stop()


def test_eight_noop_clients_get_their_own_bytes_back_over_ipc(tmp_path):
    d = start_daemon(tmp_path, weights="noop:0.002", endpoint="ipc")
    try:
        out: dict[int, object] = {}

        def one(i: int) -> None:
            with PulseClient(d.endpoint, timeout=30) as c:
                out[i] = c.run_job(ImageBlob.from_numpy(_rgba(10 + i, 96 + i)), None, {"steps": 20})

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert sorted(out) == list(range(8))
        for i, res in out.items():
            assert np.array_equal(res.candidates[0].image.to_numpy(), _rgba(10 + i, 96 + i))
    finally:
        d.stop()


def test_non_loopback_bind_needs_allow_remote(tmp_path):
    from daemon_fixture import isolated_env

    env = isolated_env(tmp_path)
    out = subprocess.run(server_command("run", "--endpoint", f"tcp://0.0.0.0:{free_tcp_port()}", "--weights", "noop:",
                                        "--no-log-file"), env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--allow-remote" in out.stderr


def _curve_daemon_key(proc: subprocess.Popen, key_file: str, port: int, log, timeout: float = 60.0) -> str:
    """The CURVE daemon's public key, once the daemon answers with it (readiness by answer, not by sleep: on
    a loaded machine the key file appears well before the bind)."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, "the CURVE daemon did not answer"
        try:
            key = open(key_file, encoding="ascii").read().strip()
        except OSError:
            key = ""
        if len(key) == 40:  # z85 of 32 bytes: the whole key is written
            try:
                with PulseClient(f"tcp://127.0.0.1:{port}", token="curve-token", server_key=key, timeout=5) as c:
                    c.connect()
                return key
            except DaemonNotRunning:
                pass
        time.sleep(0.1)


def test_remote_bind_with_curve(tmp_path):
    import zmq

    if not zmq.has("curve"):
        pytest.skip("libzmq without CURVE")
    from daemon_fixture import isolated_env

    # By hand: start_daemon's readiness probe speaks plain tcp, CURVE needs the server's public key first.
    port = free_tcp_port()
    env = isolated_env(tmp_path, {"PULSE_TOKEN": "curve-token"})
    log = tmp_path / "daemon.log"
    with open(log, "wb") as fh:  # a file, not a pipe nobody reads: a full pipe would stall the daemon
        proc = subprocess.Popen(server_command("run", "--endpoint", f"tcp://0.0.0.0:{port}", "--weights", "noop:",
                                               "--allow-remote", "--no-log-file"), env=env,
                                stdout=subprocess.DEVNULL, stderr=fh)
    try:
        key_file = os.path.join(env["XDG_CONFIG_HOME"], "pulse-depixelate", "curve.public")
        server_key = _curve_daemon_key(proc, key_file, port, log)
        with PulseClient(f"tcp://127.0.0.1:{port}", token="curve-token", server_key=server_key, timeout=15) as c:
            res = c.run_job(ImageBlob.from_numpy(_rgba(3, 16)), None, {})
            assert np.array_equal(res.candidates[0].image.to_numpy(), _rgba(3, 16))
        # With the server key but a wrong token: the client key derived from it is refused at the handshake.
        t0 = time.monotonic()
        with pytest.raises(ProtocolError) as err:
            with PulseClient(f"tcp://127.0.0.1:{port}", token="wrong", server_key=server_key, timeout=15) as c:
                c.connect()
        assert err.value.code == "BAD_TOKEN" and time.monotonic() - t0 < 15
        # Without the server key the daemon refuses the plain-text handshake: the client says so, within its
        # timeout, and names what to set; `pulse-server status` calls it running, but unreachable (not exit 3).
        t0 = time.monotonic()
        with pytest.raises(ProtocolError) as err:
            with PulseClient(f"tcp://127.0.0.1:{port}", token="curve-token", timeout=1.5) as c:
                c.connect()
        assert err.value.code == "HANDSHAKE_FAILED" and "PULSE_SERVER_KEY" in str(err.value), err.value
        assert time.monotonic() - t0 < 1.5 + 1.0
        status = subprocess.run(server_command("status"), env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 4, status.stdout + status.stderr
        assert "running (pid" in status.stdout and "cannot talk" in status.stdout and "PULSE_SERVER_KEY" in status.stdout
        status = subprocess.run(server_command("status"), env={**env, "PULSE_SERVER_KEY": server_key},
                                capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and f"pid {proc.pid}" in status.stdout, status.stdout + status.stderr
    finally:
        proc.terminate()
        proc.wait(20)


def test_daemon_not_running_is_clear_and_quick(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(DaemonNotRunning) as err:
        with PulseClient(f"ipc://{tmp_path}/nobody.sock", timeout=5) as c:
            c.connect()
    assert "pulse-server run" in str(err.value) and time.monotonic() - t0 < 1
    t0 = time.monotonic()
    with pytest.raises(DaemonNotRunning):
        with PulseClient(f"tcp://127.0.0.1:{free_tcp_port()}", token="x", timeout=1) as c:
            c.connect()
    assert time.monotonic() - t0 < 5


def test_a_killed_daemon_mid_job_gives_daemon_not_running(tmp_path):
    d = start_daemon(tmp_path, weights="noop:0.05", endpoint="tcp", args=["--heartbeat-ms", "300"])
    try:
        with d.client(timeout=2) as c:
            jid = c.submit(ImageBlob.from_numpy(_rgba(4)), None, {"steps": 5000}).job_id
            t0 = time.monotonic()
            with pytest.raises(DaemonNotRunning):
                for ev in c.events(jid):
                    if isinstance(ev, Progress) and d.alive():
                        d.kill()
                        t0 = time.monotonic()
            assert time.monotonic() - t0 < 15
    finally:
        d.kill()


def test_a_slow_client_gets_coalesced_progress_not_a_backlog(tmp_path):
    d = start_daemon(tmp_path, weights="noop:0.001", endpoint="ipc")
    try:
        with PulseClient(d.endpoint, timeout=15) as c:
            jid = c.submit(ImageBlob.from_numpy(_rgba(5, 32)), None, {"steps": 2000}).job_id
            time.sleep(1.5)  # not reading (but within the heartbeat grace): the daemon keeps only the latest update
            events = [ev for ev in c.events(jid) if ev is not None]
        progress = [ev for ev in events if isinstance(ev, Progress)]
        assert events[-1].job_id == jid and type(events[-1]).__name__ == "Result"
        assert 0 < len(progress) < 400, len(progress)  # the worker reported 2000 steps
        assert [p.step for p in progress] == sorted(p.step for p in progress)
    finally:
        d.stop()


def test_client_refuses_a_region_over_the_daemons_limits_before_sending(tmp_path):
    d = start_daemon(tmp_path, weights="noop:", endpoint="ipc", args=["--max-pixels", "10000"])
    try:
        with PulseClient(d.endpoint, timeout=10) as c:
            assert c.connect().limits["max_pixels"] == 10000
            with pytest.raises(Exception) as err:
                c.run_job(ImageBlob.from_numpy(_rgba(6, 101)), None, {})
            assert getattr(err.value, "code", None) == "TOO_LARGE" and "101x101" in str(err.value)
            assert c.run_job(ImageBlob.from_numpy(_rgba(6, 100)), None, {}).candidates[0].image.width == 100
    finally:
        d.stop()


def test_status_and_stop_find_a_daemon_started_on_another_endpoint(tmp_path):
    d = start_daemon(tmp_path, weights="noop:", endpoint="tcp")
    try:
        env = {k: v for k, v in d.env.items() if k != "PULSE_ENDPOINT"}  # only the lock file knows the endpoint
        status = subprocess.run(server_command("status"), env=env, capture_output=True, text=True, timeout=60)
        assert status.returncode == 0 and d.endpoint in status.stdout, status.stdout + status.stderr
        stop = subprocess.run(server_command("stop"), env=env, capture_output=True, text=True, timeout=60)
        assert stop.returncode == 0 and "stopped" in stop.stdout
        assert d.proc.wait(15) == 0
    finally:
        d.stop()
