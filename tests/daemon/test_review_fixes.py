"""Regression tests for the fixes from the autostart engineer's review (notes/review-autostart-engineer.md)."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from daemon_fixture import isolated_env, plain_credentials, run_worker_until, server_command, start_daemon

pytestmark = pytest.mark.timeout(120)


def _server(env: dict, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(server_command(*args), env=env, capture_output=True, text=True, timeout=timeout)


# ---- 1. an ipc endpoint never deletes a file that is not a socket ---------------------------------------


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


# ---- 3. --device cuda without CUDA fails at start ---------------------------------------------------------


def test_device_cuda_without_cuda_refuses_to_start(tmp_path, tiny_weights):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be observed here")
    env = isolated_env(tmp_path)
    endpoint = f"ipc://{env['XDG_RUNTIME_DIR']}/pulse-depixelate/daemon.sock"
    out = _server(env, "run", "--endpoint", endpoint, "--weights", str(tiny_weights), "--device", "cuda",
                  "--no-log-file", timeout=30)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "CUDA is not available on this machine; use --device auto or cpu" in out.stderr
    assert not os.path.exists(endpoint[len("ipc://"):])  # nothing was bound, no lock left behind
    assert not os.path.exists(os.path.join(env["XDG_RUNTIME_DIR"], "pulse-depixelate", "daemon.lock"))


# ---- 8. a session dropped while its job loads the model: CANCELLED, not a crash ---------------------------


def test_job_dropped_while_the_model_loads_ends_cancelled_not_internal(tiny_weights):
    import threading

    import numpy as np

    from protocol.messages import Failed, ImageBlob, Result
    from protocol.job import JobSettings
    from pulse_server.jobs import Job, JobQueue
    from pulse_server.worker import Worker

    events: list = []
    finals: dict = {}
    done = threading.Event()

    def emit(kind, job, payload):
        events.append((kind, job.job_id, payload))
        if (kind, payload) == ("state", "loading") and job.job_id == "dropped":
            # What Daemon._drop_session does when the client vanishes at this moment (the loop thread
            # runs it while the worker is inside _load): cancel, and free the region's frames.
            job.cancel("client vanished (no heartbeat)")
            job.release_inputs()
        if kind == "final":
            finals[job.job_id] = payload
            if len(finals) == 2:
                done.set()

    q = JobQueue()
    w = Worker(q, emit, weights=str(tiny_weights), device="cpu")
    lowres = ImageBlob.from_numpy(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32))
    params = JobSettings(mode="solve", candidates=1, steps=1, seed=1)
    run_worker_until(w, q, [Job("dropped", "a", params, lowres, None), Job("next", "b", params, lowres, None)], done)
    assert isinstance(finals["dropped"], Failed), finals["dropped"]
    assert finals["dropped"].code == "CANCELLED" and "vanished" in finals["dropped"].message
    assert ("state", "dropped", "running") not in events  # never started on a freed region
    assert isinstance(finals["next"], Result)  # the model stayed loaded and the worker carried on


# ---- 9. the runtime dir on macOS does not depend on $TMPDIR ------------------------------------------------


def test_runtime_dir_per_platform(tmp_path, monkeypatch):
    import stat

    from protocol import endpoint as ep
    from pulse_server import paths

    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.delenv("PULSE_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("HOME", str(home))
    seen = set()
    for tmpdir in (str(tmp_path / "var-folders-T"), None):  # a GUI app's TMPDIR, and ssh/sudo without one
        if tmpdir is None:
            monkeypatch.delenv("TMPDIR", raising=False)
        else:
            monkeypatch.setenv("TMPDIR", tmpdir)
        seen.add(ep.runtime_dir("darwin"))
    assert seen == {home / "Library" / "Caches" / "pulse-depixelate" / "run"}
    made = paths.ensure_private_dir(ep.runtime_dir("darwin"))
    assert stat.S_IMODE(os.stat(made).st_mode) == 0o700
    # Linux and Windows keep their places; PULSE_RUNTIME_DIR still wins everywhere.
    xdg = tmp_path / "xdg"
    xdg.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    assert ep.runtime_dir("linux") == xdg / "pulse-depixelate"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")
    assert ep.runtime_dir("linux") == Path("/tmp") / f"pulse-depixelate-{os.getuid()}"
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "AppData" / "Local"))
    assert ep.runtime_dir("win32") == tmp_path / "AppData" / "Local" / "pulse-depixelate" / "run"
    monkeypatch.setenv("PULSE_RUNTIME_DIR", str(tmp_path / "override"))
    assert {ep.runtime_dir(p) for p in ("darwin", "linux", "win32")} == {tmp_path / "override"}


# ---- 11. the Windows lock leaves the lock file's JSON readable ---------------------------------------------


def test_windows_lock_takes_a_byte_past_the_json(tmp_path, monkeypatch):
    # msvcrt exists only on Windows: a stand-in records where the real one would lock (it locks
    # `nbytes` from the descriptor's current position).
    import sys
    import types

    from pulse_server import paths

    locked: list = []
    fake = types.ModuleType("msvcrt")
    fake.LK_NBLCK = 2
    fake.locking = lambda fd, mode, n: locked.append((os.lseek(fd, 0, os.SEEK_CUR), n, mode))
    monkeypatch.setitem(sys.modules, "msvcrt", fake)
    path = tmp_path / "daemon.lock"
    with open(path, "a+", encoding="utf-8") as fh:
        paths._lock(fh, "win32")
        fh.seek(0)
        fh.truncate()
        fh.write('{"pid": 4242, "endpoint": "tcp://127.0.0.1:47474"}')
        fh.flush()
    ((offset, nbytes, mode),) = locked
    assert (nbytes, mode) == (1, fake.LK_NBLCK)
    assert offset >= 1 << 20 > path.stat().st_size  # far past any JSON the daemon writes
    assert paths.read_lock_info(path) == {"pid": 4242, "endpoint": "tcp://127.0.0.1:47474"}


# ---- 4. ZMQ_MAXMSGSIZE is the largest legal frame, derived from the limits --------------------------------


def test_a_frame_over_the_largest_legal_image_drops_the_connection(tmp_path):
    import msgpack
    import zmq
    from zmq.utils.monitor import recv_monitor_message

    from protocol.codec import MAGIC, decode, encode
    from protocol.messages import Error, Hello, ImageBlob, Submit, Welcome

    # 64×64 pixels at most: the largest legal image frame is 64·64·4·4 = 64 KiB (= the header cap).
    d = start_daemon(tmp_path, weights="noop:", endpoint="tcp", args=["--max-pixels", str(64 * 64)])
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.linger = 0
    plain_credentials(s, d.token)  # tcp: the token is checked at the handshake (ZAP) and again at HELLO
    monitor = s.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
    try:
        s.connect(d.endpoint)
        s.send_multipart(encode(Hello(token=d.token, client="raw")))
        assert s.poll(10_000) and isinstance(decode(s.recv_multipart()), Welcome)
        # 256×256 u8 RGBA = 256 KiB: within the old cap (max_blob_bytes + 1 MiB), over the new one.
        too_big = encode(Submit("big", ImageBlob(256, 256, 4, "u8", bytes(256 * 256 * 4))))
        s.send_multipart(too_big)
        events = []
        while monitor.poll(5000):
            events.append(recv_monitor_message(monitor)["event"])
            if zmq.EVENT_DISCONNECTED in events:
                break
        assert zmq.EVENT_DISCONNECTED in events  # libzmq dropped us before the daemon saw the frame
        assert not s.poll(200)  # and nothing was answered
        # Legal frames still pass, and the daemon is fine.
        header = {"type": "SUBMIT", "job_id": "claim", "image": 0, "params": {},
                  "blobs": [{"kind": "image", "w": 64, "h": 65, "c": 1, "dtype": "u8", "nbytes": 64 * 65}]}
        with d.client() as c:
            c.connect()
        s2 = d.raw_socket()
        s2.send_multipart([MAGIC, msgpack.packb(header), bytes(64 * 65)])
        assert s2.poll(10_000)
        reply = decode(s2.recv_multipart())
        assert isinstance(reply, Error) and reply.code == "TOO_LARGE"  # the decoder's check, on a small frame
        s2.close(0)
    finally:
        monitor.close(0)
        s.close(0)
        d.stop()


# ---- 5. the queued-bytes budget bounds the regions held by waiting jobs -----------------------------------


def test_queued_regions_are_bounded_in_bytes_not_just_in_jobs(tmp_path):
    import threading

    import numpy as np

    from protocol.errors import JobFailed
    from protocol.messages import ImageBlob

    region = ImageBlob.from_numpy(np.zeros((1024, 1024, 4), np.uint8))  # 4 MiB
    d = start_daemon(tmp_path, weights="noop:0.05", endpoint="ipc", args=["--max-queued-bytes", str(6 << 20)])
    try:
        with d.client() as a, d.client() as b:
            a.connect()
            b.connect()
            first = a.submit(region, None, {"steps": 400})  # 20 s of noop steps: still held below
            assert first.state == "queued"
            with pytest.raises(JobFailed) as err:
                b.submit(region, None, {"steps": 1})  # 8 MiB > 6 MiB: refused although 31 slots are free
            assert err.value.code == "QUEUE_FULL" and err.value.retryable and "MiB" in str(err.value)
            small = ImageBlob.from_numpy(np.zeros((512, 512, 4), np.uint8))  # 1 MiB: fits beside it
            assert b.run_job(small, None, {"steps": 1}).candidates
            a.cancel(first.job_id)
    finally:
        d.stop()


# ---- 14. `run` twice in one process does not duplicate log lines ------------------------------------------


def test_setup_logging_twice_keeps_one_set_of_handlers(tmp_path, monkeypatch):
    import logging

    from pulse_server.commands import server

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv("HOME", str(tmp_path))
    root = logging.getLogger("pulse")
    before = list(root.handlers)
    try:
        server._setup_logging("INFO", True)
        first = [h for h in root.handlers if h not in before]
        server._setup_logging("INFO", True)
        second = [h for h in root.handlers if h not in before]
        assert len(first) == len(second) == 2  # stderr + the rotating file, once each
    finally:
        for h in [h for h in root.handlers if h not in before]:
            root.removeHandler(h)
            h.close()


# ---- 12. a daemon starting while `is_locked()` probes is not refused --------------------------------------


def test_lock_acquire_waits_out_a_momentary_probe(tmp_path):
    import fcntl
    import threading

    from pulse_server import paths

    path = tmp_path / "run" / "daemon.lock"
    path.parent.mkdir(mode=0o700)
    prober = open(path, "a+")  # what is_locked() does: take the lock for an instant, then close
    fcntl.flock(prober.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    threading.Timer(0.1, prober.close).start()
    lock = paths.DaemonLock(path)
    lock.acquire("ipc://x")  # not ALREADY_RUNNING: the probe ends within the retry window
    try:
        assert paths.read_lock_info(path)["pid"] == os.getpid()
    finally:
        lock.release()


# ---- 15. SIGBREAK (Windows' CTRL_BREAK_EVENT) stops the daemon gracefully ---------------------------------


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
