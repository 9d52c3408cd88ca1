"""Daemon parts in-process: the fair bounded queue, parameter checks, per-user paths, the lock, and the
worker's failure handling (GPU out-of-memory fails one job; the worker carries on)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import numpy as np
import pytest
from daemon_fixture import run_worker_until

from protocol import endpoint as ep
from protocol.job import JobSettings
from protocol.messages import Failed, ImageBlob, Progress, Result
from pulse_server import paths
from pulse_server.errors import PulseError
from pulse_server.jobs import Job, JobQueue, QueueFull, daemon_spec


def _job(session: str, jid: str) -> Job:
    return Job(jid, session, JobSettings(), None, None)


def test_queue_is_fifo_per_client_and_round_robin_between_clients():
    q = JobQueue(max_jobs=10, max_per_session=5)
    for jid in ("a1", "a2", "a3"):
        q.put(_job("A", jid))
    b1 = _job("B", "b1")
    assert q.put(b1) == 2  # served right after a1, not after a3
    assert {j.job_id: p for j, p in q.positions().items()} == {"a1": 1, "b1": 2, "a2": 3, "a3": 4}
    assert [q.take(0).job_id for _ in range(4)] == ["a1", "b1", "a2", "a3"]
    assert q.take(0.01) is None


def test_queue_bounds_remove_and_close():
    q = JobQueue(max_jobs=3, max_per_session=2)
    q.put(_job("A", "1"))
    q.put(_job("A", "2"))
    with pytest.raises(QueueFull):
        q.put(_job("A", "3"))  # per client
    q.put(_job("B", "1"))
    with pytest.raises(QueueFull) as err:
        q.put(_job("C", "1"))  # total
    assert err.value.code == "QUEUE_FULL" and err.value.retryable
    first = q.take(0)
    assert not q.remove(first) and len(q) == 2
    got: list = []
    t = threading.Thread(target=lambda: got.append([q.take(), q.take(), q.take()]))
    t.start()
    t.join(0.2)
    q.close()
    t.join(5)
    assert got and got[0][2] is None


@pytest.mark.parametrize("raw,bad", [
    ({"mode": "x"}, "mode"), ({"steps": 0}, "steps"), ({"steps": 1.5}, "steps"), ({"candidates": True}, "candidates"),
    ({"seed": -2}, "seed"), ({"block": -1}, "block"), ({"eps": 0}, "eps"), ({"precision": "fp8"}, "precision"),
    ({"method": "magic"}, "method"), ({"method": 1}, "method"),
    ({"force": "yes"}, "force"), ({"force": 1}, "force"),
])
def test_job_params_are_validated_against_the_daemons_spec(raw, bad):
    with pytest.raises(PulseError) as err:
        JobSettings.from_wire(raw, daemon_spec())
    assert err.value.code == "BAD_PARAMS" and bad in err.value.message


def test_job_params_defaults_and_wire_conventions():
    p = JobSettings.from_wire({"seed": -1, "block": 0, "future": 1}, daemon_spec())
    assert (p.mode, p.candidates, p.steps, p.seed, p.block, p.eps, p.method, p.model) == (
        "depixelate", 3, 100, -1, 0, 2e-3, "ilo", "")
    p = JobSettings.from_wire({"seed": 5, "block": 8, "eps": 0.01, "method": "pulse"}, daemon_spec())
    assert (p.seed, p.block, p.eps, p.method) == (5, 8, 0.01, "pulse")


def test_a_daemons_max_steps_narrows_steps_and_its_default():
    spec = daemon_spec(max_steps=50)
    assert (spec["steps"].high, spec["steps"].default) == (50, 50)
    assert JobSettings.from_wire({}, spec).steps == 50
    with pytest.raises(PulseError) as err:
        JobSettings.from_wire({"steps": 51}, spec)
    assert err.value.code == "BAD_PARAMS" and "between 1 and 50" in err.value.message


def test_force_is_off_unless_a_client_sends_true():
    assert JobSettings.from_wire({}).force is False
    assert JobSettings.from_wire({"force": None}).force is False
    assert JobSettings.from_wire({"force": True}).force is True


@pytest.fixture
def runtime(tmp_path, monkeypatch):
    run = tmp_path / "xdg-run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    for k in ("PULSE_RUNTIME_DIR", "PULSE_TOKEN", "PULSE_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)
    return run


def test_paths_agree_with_the_stdlib_endpoint_module_and_platformdirs(runtime):
    import platformdirs

    assert paths.runtime_dir() == ep.runtime_dir() == runtime / ep.APP
    assert str(paths.runtime_dir()) == platformdirs.user_runtime_dir(ep.APP)
    assert ep.default_endpoint() == f"ipc://{runtime / ep.APP / 'daemon.sock'}"
    assert paths.token_path() == ep.token_path() and paths.lock_path() == ep.lock_path()


def test_runtime_dir_is_private_and_owner_checked(runtime):
    d = paths.ensure_runtime_dir()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    os.chmod(d, 0o755)
    paths.ensure_runtime_dir()
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700  # ours but too open: tightened
    if os.getuid() != 0:
        pytest.skip("needs root to create a directory owned by someone else")
    os.chown(d, 4242, 4242)
    with pytest.raises(PulseError) as err:
        paths.ensure_runtime_dir()
    assert err.value.code == "UNSAFE_RUNTIME_DIR"


def test_token_file_is_0600_stable_and_env_wins(runtime, monkeypatch):
    tok = paths.read_or_create_token()
    assert len(tok) >= 32 and stat.S_IMODE(os.stat(paths.token_path()).st_mode) == 0o600
    assert paths.read_or_create_token() == tok and ep.read_token() == tok
    monkeypatch.setenv("PULSE_TOKEN", "from-env")
    assert paths.read_or_create_token() == "from-env" and ep.read_token() == "from-env"


def test_lock_refuses_a_second_holder_and_names_the_first(runtime):
    first = paths.DaemonLock()
    first.acquire("ipc://x")
    try:
        assert paths.is_locked() and paths.read_lock_info() == {"pid": os.getpid(), "endpoint": "ipc://x"}
        with pytest.raises(PulseError) as err:
            paths.DaemonLock().acquire("tcp://127.0.0.1:1")
        assert err.value.code == "ALREADY_RUNNING" and f"pid {os.getpid()}" in err.value.message
    finally:
        first.release()
    assert not paths.lock_path().exists() and not paths.is_locked()
    again = paths.DaemonLock()
    again.acquire("ipc://y")  # free again after release
    again.release()


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


def test_endpoint_helpers():
    assert ep.is_loopback("tcp://127.0.0.1:5") and ep.is_loopback("tcp://[::1]:5") and ep.is_loopback("ipc:///tmp/x")
    assert not ep.is_loopback("tcp://0.0.0.0:5") and not ep.is_loopback("tcp://192.168.1.2:5")
    assert not ep.is_loopback("tcp://*:5") and ep.is_loopback("tcp://localhost:5")


# ---- worker failure handling ----------------------------------------------------------------------


def test_out_of_memory_fails_one_job_and_the_worker_carries_on(tiny_weights, tmp_path, monkeypatch):
    import torch

    from pulse_server.models.loading import load_prior
    from pulse_server.worker import Worker

    # The model's speed is measured before its first job, with the same render: the one OOM below is for the job.
    monkeypatch.setenv("PULSE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr("pulse_server.calibrate.calibrate", _not_measured)
    prior, info = load_prior(tiny_weights, "cpu")
    real_render = prior.render
    calls = {"n": 0}

    def render_ooms_once(latent, noises=None):
        # The CUDA allocator's error, as torch raises it: the one thing a CPU-only machine cannot produce.
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_render(latent, noises)

    prior.render = render_ooms_once
    events: list = []
    done = threading.Event()

    def emit(kind, job, payload):
        events.append((kind, job.job_id, payload))
        if kind == "final" and job.job_id == "second":
            done.set()

    q = JobQueue()
    w = Worker(q, emit, weights=str(tiny_weights), device="cpu")
    w.prior, w.info = prior, info  # warm model, as after the first load
    lowres = ImageBlob.from_numpy(np.random.default_rng(0).random((8, 8, 3)).astype(np.float32))
    params = JobSettings(mode="solve", candidates=1, steps=1, seed=1)
    run_worker_until(w, q, [Job(jid, "s", params, lowres, None) for jid in ("first", "second")], done)
    finals = {jid: p for kind, jid, p in events if kind == "final"}
    assert isinstance(finals["first"], Failed) and finals["first"].code == "OUT_OF_MEMORY" and finals["first"].retryable
    assert isinstance(finals["second"], Result) and len(finals["second"].candidates) == 1
    assert w.models[""][0] is prior  # warm model: no reload (measuring its speed shows as "loading", not this)


def _not_measured(*args, **kwargs):
    raise RuntimeError("not measured in this test")


def test_job_dropped_while_the_model_loads_ends_cancelled_not_internal(tiny_weights):
    import threading

    import numpy as np

    from protocol.job import JobSettings
    from protocol.messages import Failed, ImageBlob, Result
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


def test_a_dropped_sessions_job_ending_late_does_not_speak_for_its_resubmitted_twin():
    # The client went silent (heartbeats), the daemon dropped its session and cancelled the running job;
    # the client came back with the same session id and re-sent SUBMIT before the worker noticed the cancel.
    import time

    from pulse_server.daemon import Daemon, DaemonConfig, Session

    d = Daemon(DaemonConfig(endpoint="ipc:///nonexistent/pulse-test.sock", weights="noop:"))
    params = JobSettings(mode="solve", steps=1)
    old = Job("j", "sid", params, None, None, state="running")
    s = d.sessions["sid"] = Session("sid", None, "test", time.monotonic(), jobs={"j": old})
    d._drop_session(s, "client vanished (no heartbeat)")
    assert old.cancel_event.is_set() and "sid" not in d.sessions

    back = d.sessions["sid"] = Session("sid", None, "test", time.monotonic())
    new = Job("j", "sid", params, None, None)
    d.queue.put(new)
    back.jobs["j"] = new
    d._events.extend([("state", old, "running"), ("progress", old, Progress("j", 1, 1, {}, 0.0)),
                      ("final", old, Failed("j", "CANCELLED", old.cancel_reason))])
    d._drain_events()
    assert back.jobs == {"j": new} and new.state == "queued" and not new.done
    assert not back.outbox and not back.progress  # nothing reported to the client about the stale job
    assert ("sid", "j") not in d.results  # and its CANCELLED is not what a FETCH or re-SUBMIT finds


# ---- logging --------------------------------------------------------------------------------------


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
