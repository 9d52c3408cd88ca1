"""The daemon process under faults an editor's machine meets: the daemon itself paused (SIGSTOP, a debugger,
a suspended VM), its clients interrupted, its limits reached. Real `pulse-server run` processes, real sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from daemon_fixture import REPO, plain_credentials, start_daemon
from PIL import Image

from protocol.messages import ImageBlob, Progress, Result

pytestmark = [pytest.mark.timeout(120), pytest.mark.skipif(os.name != "posix", reason="SIGSTOP/SIGCONT are POSIX")]

HEARTBEAT_MS = 300  # a session is dropped after 3 × 0.3 + 0.5 = 1.4 s of silence


def _rgba(seed: int, size: int = 32) -> np.ndarray:
    return (np.random.default_rng(seed).random((size, size, 4)) * 255).astype(np.uint8)


def test_a_paused_daemon_cancels_no_job_whose_client_kept_sending_heartbeats(tmp_path):
    d = start_daemon(tmp_path, weights="noop:0.005", endpoint="ipc", args=["--heartbeat-ms", str(HEARTBEAT_MS)])
    try:
        with d.client(timeout=30) as c:
            jid = c.submit(ImageBlob.from_numpy(_rgba(1)), None, {"steps": 600}).job_id
            steps: list[int] = []
            paused = threading.Event()

            def pause() -> None:  # far longer than the 1.4 s a silent session is given
                os.kill(d.proc.pid, signal.SIGSTOP)
                time.sleep(2.5)
                os.kill(d.proc.pid, signal.SIGCONT)
                paused.set()

            pauser = None
            end = None
            # idle_timeout: the client waits out the pause on its socket (sending PINGs) instead of reconnecting,
            # which is exactly what an editor's client does while the daemon is busy
            for ev in c.events(jid, idle_timeout=60):
                if isinstance(ev, Progress):
                    steps.append(ev.step)
                    if pauser is None and ev.step >= 50:
                        pauser = threading.Thread(target=pause)
                        pauser.start()
                elif ev is not None and not isinstance(ev, Progress):
                    end = ev
            pauser.join(10)
        assert paused.is_set()
        assert isinstance(end, Result), end  # not FAILED(CANCELLED "client vanished")
        assert steps == sorted(steps), "the job restarted from step 0"
        assert "client vanished" not in d.output() and "cancelling" not in d.output()
    finally:
        os.kill(d.proc.pid, signal.SIGCONT) if d.alive() else None
        d.stop()


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_cli_cancels_its_job_on_the_daemon_and_exits_at_once(tmp_path, sig):
    d = start_daemon(tmp_path, weights="noop:0.01", endpoint="ipc")
    Image.fromarray(np.full((8, 8, 3), 128, np.uint8)).save(tmp_path / "low.png")
    cli = subprocess.Popen([sys.executable, "-c", "import sys; from pulse_server.cli import main_pulse; sys.exit(main_pulse())",
                            "solve", str(tmp_path / "low.png"), "-o", str(tmp_path / "out.png"), "--via-daemon",
                            "--steps", "5000", "-q"], env=d.env, cwd=str(REPO), stderr=subprocess.PIPE, text=True)
    try:
        with d.client(timeout=10) as c:
            _wait_for(lambda: c.status().server["running"] == 1, 60, "the CLI's job never ran")
            t0 = time.monotonic()
            cli.send_signal(sig)
            assert cli.wait(10) == 128 + sig
            assert time.monotonic() - t0 < 3, "the CLI did not exit at once"
            _wait_for(lambda: c.status().server["running"] == 0, 10, "the job still runs")
        # Cancelled on the client's word, not found seconds later by missed heartbeats.
        log = d.output()
        assert "pulse.worker: job" in log and " cancelled (" in log and "client vanished" not in log, log
    finally:
        cli.kill()
        cli.wait(10)
        d.stop()


def test_status_of_a_paused_daemon_is_running_but_unreachable_not_not_running(tmp_path):
    from daemon_fixture import server_command

    d = start_daemon(tmp_path, weights="noop:", endpoint="ipc")
    try:
        os.kill(d.proc.pid, signal.SIGSTOP)
        try:
            out = subprocess.run(server_command("status", "--timeout", "1"), env=d.env, capture_output=True, text=True,
                                 timeout=60)
        finally:
            os.kill(d.proc.pid, signal.SIGCONT)
        assert out.returncode == 4, out.stdout + out.stderr
        assert f"running (pid {d.proc.pid})" in out.stdout and "did not answer" in out.stdout
    finally:
        d.stop()


def test_a_region_over_the_queued_bytes_cap_is_refused_even_on_an_idle_daemon(tmp_path):
    from protocol.errors import JobFailed

    d = start_daemon(tmp_path, weights="noop:", endpoint="ipc", args=["--max-queued-bytes", "10000"])
    try:
        with d.client(timeout=10) as c:
            with pytest.raises(JobFailed) as err:
                c.run_job(ImageBlob.from_numpy(_rgba(1, 64)), None, {"steps": 1})  # 16 KiB alone
            assert err.value.code == "TOO_LARGE" and not err.value.retryable, err.value
            assert c.run_job(ImageBlob.from_numpy(_rgba(1, 32)), None, {"steps": 1}).candidates  # 4 KiB fits
    finally:
        d.stop()


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
        # 256×256 u8 RGBA = 256 KiB: far below max_blob_bytes + 1 MiB, yet over the largest legal frame.
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


def test_queued_regions_are_bounded_in_bytes_not_just_in_jobs(tmp_path):

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


def test_a_daemon_refused_at_start_does_not_log_as_if_it_had_run(tmp_path):
    from daemon_fixture import isolated_env, server_command

    d = start_daemon(tmp_path / "a", weights="noop:", endpoint="tcp")
    try:  # another runtime dir (another lock), the same tcp port: the bind is refused
        second = subprocess.run(server_command("run", "--endpoint", d.endpoint, "--weights", "noop:", "--no-log-file"),
                                env=isolated_env(tmp_path / "b", {"PULSE_TOKEN": "t"}), capture_output=True, text=True,
                                timeout=60)
        assert second.returncode == 2 and "cannot listen" in second.stderr, second.stderr
        assert "stopping" not in second.stderr and "stopped" not in second.stderr, second.stderr
    finally:
        d.stop()
