"""`pulse-server run | status | stop`."""

from __future__ import annotations

import argparse
import logging
import logging.handlers
import os
import sys
import time

from protocol.job import PARAMS, PRECISIONS

from .args import param_type


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="run the solver daemon in the foreground (logs to stderr and the user log dir)")
    _endpoint_arg(run)
    run.add_argument("--model", "--weights", dest="weights", metavar="NAME|PATH", default=None,
                     help="face model: a registry name (ffhq-1024, ffhq-256, digiface-64) or a checkpoint file; "
                          "default: ffhq-1024 on a GPU, ffhq-256 without one (downloaded on first use)")
    run.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps|xpu",
                     help="auto (default): cuda > mps > xpu > cpu; a device that is not there stops the start")
    run.add_argument("--precision", choices=PRECISIONS, default=PARAMS["precision"].default,
                     help="the solver precision of jobs that do not ask for one")
    run.add_argument("--allow-remote", action="store_true",
                     help="allow binding a non-loopback tcp address (CURVE encryption and the token are then required)")
    run.add_argument("--preload", action="store_true", help="load the model at start instead of on the first job")
    run.add_argument("--cluster", metavar="ray|ray://ADDRESS", default=None,
                     help="run jobs on a pool of Ray actors, one per GPU: `ray` = the Ray cluster this machine "
                          "joined (or $RAY_ADDRESS), ray://HOST:PORT = a Ray head's client port; editors still "
                          "connect to this daemon (needs pip install 'pulse-depixelate[cluster]')")
    run.add_argument("--actor-cpus", type=float, default=1.0, metavar="N",
                     help="with --cluster and no GPU in it: CPUs per actor (default 1; one actor per N CPUs)")
    run.add_argument("--actors", type=int, default=0, metavar="N",
                     help="with --cluster: pool size (default: one actor per GPU, else per --actor-cpus CPUs)")
    steps = PARAMS["steps"]
    run.add_argument("--max-steps", type=param_type(steps), default=steps.high, metavar="N",
                     help=f"the most search steps a job may ask for (default {steps.high}, the most there is); the "
                          f"editors' dialogs offer no more")
    run.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.add_argument("--no-log-file", action="store_true", help="log to stderr only")
    # Tuning knobs for tests and benchmarks; not part of the user-facing interface.
    run.add_argument("--heartbeat-ms", type=int, default=1000, help=argparse.SUPPRESS)
    run.add_argument("--max-queue", type=int, default=32, help=argparse.SUPPRESS)
    run.add_argument("--max-per-client", type=int, default=8, help=argparse.SUPPRESS)
    run.add_argument("--max-pixels", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--max-blob-bytes", type=int, default=None, help=argparse.SUPPRESS)
    run.add_argument("--result-ttl", type=float, default=120.0, help=argparse.SUPPRESS)
    run.add_argument("--max-queued-bytes", type=int, default=None, help=argparse.SUPPRESS)
    run.set_defaults(func=_run)

    status = sub.add_parser("status", help="show whether the daemon runs, its device, model and queue")
    _endpoint_arg(status)
    status.add_argument("--timeout", type=float, default=3.0)
    status.set_defaults(func=_status)

    stop = sub.add_parser("stop", help="stop the daemon gracefully (running job cancelled, socket and lock removed)")
    _endpoint_arg(stop)
    stop.add_argument("--timeout", type=float, default=20.0)
    stop.set_defaults(func=_stop)


def _endpoint_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", default=None,
                   help="ipc://PATH or tcp://127.0.0.1:PORT (default: $PULSE_ENDPOINT, else the per-user default)")


def _resolve_endpoint(arg: str | None) -> str:
    from protocol.endpoint import default_endpoint

    return arg or default_endpoint()


def _running_endpoint(arg: str | None) -> str:
    """For status/stop: --endpoint, else PULSE_ENDPOINT, else the endpoint this user's running daemon
    wrote in its lock file (it may have been started with --endpoint), else the default."""
    from .. import paths

    if arg or os.environ.get("PULSE_ENDPOINT"):
        return _resolve_endpoint(arg)
    endpoint = paths.running_lock_info().get("endpoint")
    if isinstance(endpoint, str) and endpoint:
        return endpoint
    return _resolve_endpoint(None)


# The handlers `run` put on the "pulse" logger: a second `run` in one process (tests) replaces them.
_run_handlers: list[logging.Handler] = []


def _setup_logging(level: str, to_file: bool) -> None:
    from .. import paths

    fmt = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger("pulse")
    root.setLevel(level)
    for old in _run_handlers:
        root.removeHandler(old)
        old.close()
    _run_handlers.clear()
    err = logging.StreamHandler(sys.stderr)
    _run_handlers.append(err)
    err.setFormatter(fmt)
    root.addHandler(err)
    if to_file:
        try:
            log_dir = paths.ensure_private_dir(paths.log_dir())
            fh = logging.handlers.RotatingFileHandler(log_dir / "daemon.log", maxBytes=2 << 20, backupCount=3, encoding="utf-8")
            _run_handlers.append(fh)
            fh.setFormatter(fmt)
            root.addHandler(fh)
            root.info("logging to %s", log_dir / "daemon.log")
        except OSError as exc:
            root.warning("cannot write the log file: %s", exc)


def _run(args: argparse.Namespace) -> int:
    import dataclasses
    from pathlib import Path

    from protocol.codec import DEFAULT_LIMITS

    from ..daemon import DaemonConfig, run_daemon
    from ..errors import ModelError
    from ..models import noop
    from ..models.registry import REGISTRY

    # Fail now, not on the first job: a model that is neither a registry name nor a file (nor the noop backend).
    if args.weights and noop.parse(args.weights) is None and args.weights not in REGISTRY \
            and not Path(args.weights).expanduser().is_file():
        raise ModelError(f"--model {args.weights}: no such file, and not a model name ({', '.join(REGISTRY)})",
                         code="NO_WEIGHTS")
    _setup_logging(args.log_level, not args.no_log_file)
    limits = DEFAULT_LIMITS
    if args.max_pixels:
        limits = dataclasses.replace(limits, max_pixels=args.max_pixels)
    if args.max_blob_bytes:
        limits = dataclasses.replace(limits, max_blob_bytes=args.max_blob_bytes)
    config = DaemonConfig(
        endpoint=_resolve_endpoint(args.endpoint), weights=args.weights, device=args.device, precision=args.precision,
        heartbeat_ms=args.heartbeat_ms, allow_remote=args.allow_remote, limits=limits, max_queue=args.max_queue,
        max_per_session=args.max_per_client, result_ttl=args.result_ttl, preload=args.preload,
        cluster=args.cluster, actor_cpus=args.actor_cpus, actors=args.actors, max_steps=args.max_steps,
    )
    if args.max_queued_bytes:
        config = dataclasses.replace(config, max_queued_bytes=args.max_queued_bytes)
    return run_daemon(config)


NOT_RUNNING = 3  # LSB "program is not running"
CANNOT_TALK = 4  # LSB "status is unknown": a daemon runs there, but this client cannot talk to it


def _status(args: argparse.Namespace) -> int:
    from protocol.client import PulseClient
    from protocol.errors import DaemonNotRunning, ProtocolError

    from .. import paths

    endpoint = _running_endpoint(args.endpoint)
    lock = paths.running_lock_info()
    ours = lock.get("endpoint") == endpoint and _pid_alive(lock.get("pid"))  # the daemon holding the lock is there
    try:
        with PulseClient(endpoint, client_name="pulse-server status", timeout=args.timeout) as c:
            c.connect()
            info = c.status().server
    except DaemonNotRunning:
        if ours:
            print(f"pulse-server: running (pid {lock.get('pid')}) on {endpoint}, but it did not answer within "
                  f"{args.timeout:g} s: it may be paused (a debugger, SIGSTOP) or overloaded")
            return CANNOT_TALK
        hint = f" (a daemon with pid {lock.get('pid')} listens on {lock.get('endpoint')})" if lock else ""
        print(f"pulse-server: not running on {endpoint}{hint}")
        return NOT_RUNNING
    except ProtocolError as exc:
        if exc.code not in ("HANDSHAKE_FAILED", "BAD_TOKEN"):
            raise
        pid = f" (pid {lock.get('pid')})" if ours else ""
        print(f"pulse-server: running{pid} on {endpoint}, but this client cannot talk to it: {exc.message}")
        return CANNOT_TALK
    models = ", ".join(f"{m.get('name')}{'' if m.get('loaded') else ' (not loaded yet)'}" for m in info.get("models", []))
    print(f"pulse-server {info.get('version')} running (pid {info.get('pid')}) on {info.get('endpoint', endpoint)}")
    print(f"  device: {info.get('device')}   model: {models or '-'}")
    print(f"  jobs: {info.get('running', 0)} running, {info.get('queued', 0)} queued; clients: {info.get('sessions', 0)}; "
          f"up {info.get('uptime', 0):.0f} s")
    if info.get("cluster"):
        _print_pool(info["cluster"])
    return 0


def _print_pool(pool: dict) -> None:
    """The Ray pool: one line per actor (where it runs, what it holds warm, what it solves now)."""
    state = pool.get("state", "?")
    note = f": {pool.get('message')}" if pool.get("message") else ""
    actors = pool.get("actors", [])
    print(f"  cluster: {pool.get('backend', 'ray')} at {pool.get('address')}, {state}{note}; {len(actors)} actor(s), "
          f"{pool.get('retried', 0)} job(s) retried after an actor died, {pool.get('lost', 0)} lost")
    for a in actors:
        models = ", ".join(m or "(own model)" for m in a.get("models", [])) or "none loaded"
        job = f"running {a['job']} ({a.get('step', 0)}/{a.get('total', 0)})" if a.get("job") else "idle"
        gpus = f" gpu {a['gpus']}" if a.get("gpus") else ""
        print(f"    {a.get('id')}: {a.get('state')} on {a.get('host')} pid {a.get('pid')}, {a.get('device')}{gpus}; "
              f"models: {models}; {job}; {a.get('done', 0)} done")


def _stop(args: argparse.Namespace) -> int:
    from protocol.client import PulseClient
    from protocol.errors import DaemonNotRunning

    from .. import paths

    endpoint = _running_endpoint(args.endpoint)
    pid = None
    try:
        with PulseClient(endpoint, client_name="pulse-server stop", timeout=min(args.timeout, 5.0)) as c:
            c.connect()
            pid = c.status().server.get("pid")
            # Decided before the daemon can drop its lock: is its lock the one this environment sees?
            own_lock = pid is not None and paths.running_lock_info().get("pid") == pid
            c.shutdown()
    except DaemonNotRunning:
        print(f"pulse-server: not running on {endpoint}")
        return 0
    deadline = time.monotonic() + args.timeout
    # The daemon drops its lock as its last act; a daemon whose lock this environment cannot see is
    # watched by pid instead.
    while time.monotonic() < deadline:
        running = paths.is_locked() if own_lock else _pid_alive(pid)
        if not running:
            print(f"pulse-server: stopped (pid {pid})")
            return 0
        time.sleep(0.1)
    print(f"pulse-server: pid {pid} did not stop within {args.timeout:g} s", file=sys.stderr)
    return 1


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    if sys.platform == "win32":
        import ctypes

        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # an exited child its parent has not reaped yet still answers kill(0)
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
