"""`make demo`: the daemon up, the bundled pixelated example depixelated through it, results in out/.

    python -m pulse_server.demo [--model NAME|PATH] [--device D] [--out DIR] [--candidates K] [--steps S]

Uses the daemon already running for this user if there is one (the login daemon); otherwise starts
`pulse-server run` for the demo's duration and stops it afterwards. Without --model the demo takes the best
model this machine has: the device's FFHQ StyleGAN2 (ffhq-1024 on a GPU, ffhq-256 without) if it is in
the cache, else that model downloaded now, else — offline — `digiface-64`, which comes with a Python package
and needs no download; one line then says so and how to get FFHQ.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from protocol.client import PulseClient
from protocol.endpoint import default_endpoint
from protocol.errors import DaemonNotRunning, ProtocolError

from .commands.args import add_param
from .errors import ModelError, PulseError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "astronaut-mosaic.png"
EXAMPLE_BOX = "30,30,170,170"  # larger than the 128×128 mosaic at (44, 44): the block grid is detected


def _answers(endpoint: str, timeout: float = 2.0) -> bool:
    """True if a daemon answers, False if none runs there. A daemon that runs but refuses this client (its
    token, CURVE) is not "none": starting a second one on its endpoint could only fail, so the demo stops."""
    try:
        with PulseClient(endpoint, client_name="demo", timeout=timeout) as c:
            c.connect()
        return True
    except DaemonNotRunning:
        return False
    except ProtocolError as exc:
        raise SystemExit(f"demo: {exc}") from None


def choose_model(device: str = "auto", model_option: str = "--model PATH") -> tuple[str, str]:
    """The best model this machine can run now, downloading the device's FFHQ model if it must.

    Order: the device's default FFHQ (ffhq-1024 on a GPU, ffhq-256 on the CPU) if cached; on a GPU also a
    cached ffhq-256; the device's default downloaded now; `digiface-64` from its package, with one line
    saying so. ffhq-1024 is never picked for a CPU: one demo would take about an hour. `model_option` is how
    this user names a checkpoint file in the line (`make demo MODEL=PATH` through make).
    -> (model name, the line to print about it)."""
    from .devices import resolve_device
    from .models import registry

    want = registry.default_model(resolve_device(device))
    for name in dict.fromkeys([want, registry.FFHQ_256.name]):
        if registry.is_present(name):
            return name, f"demo: model {name} (cached)"
    try:
        registry.ensure_weights(want)
        return want, f"demo: model {want} (downloaded)"
    except ModelError as exc:
        failure = exc
    offline = registry.OFFLINE_MODEL
    if not registry.is_present(offline):
        raise ModelError(f"no face model: {failure} The offline model {offline} is not installed either: run "
                         f"`{registry.install_hint(registry.DIGIFACE_64)}`", code="NO_WEIGHTS")
    reason = getattr(failure, "reason", None) or failure.message
    return offline, (f"demo: model {offline} (64×64 faces from a DCGAN trained on synthetic DigiFace-1M faces; "
                     f"research use only), not {want}: its download failed ({reason}). For FFHQ faces put "
                     f"{registry.get_spec(want).url} at {registry.weights_path(want)}, or run the demo once online; "
                     f"for a checkpoint you have: {model_option}.")


def fetch_named_model(model: str, model_option: str = "--model PATH") -> None:
    """A model the user named, made ready before the daemon starts: a registry model downloaded now (the
    daemon would fail on it with a hint meant for its own command line), a checkpoint file checked to exist.
    Raises PulseError with the words for this user."""
    from .models import registry
    from .models.registry import DownloadError

    if model in registry.REGISTRY:
        try:
            registry.ensure_weights(model)
        except DownloadError as exc:
            raise ModelError(exc.telling(model_option), code=exc.code) from None
    elif not Path(model).is_file():
        raise ModelError(f"no checkpoint file at {model}: a model is {', '.join(registry.REGISTRY)} or the path "
                         f"of a checkpoint file ({model_option})", code="NO_WEIGHTS")


def _start_daemon(endpoint: str, weights: str | None, device: str, log: Path) -> subprocess.Popen:
    from protocol import launch

    program = launch.module_program(sys.executable)
    cmd = launch.daemon_argv(program, endpoint=endpoint, weights=weights, device=device, extra=["--preload"])
    print(f"demo: starting the daemon ({' '.join(cmd[len(program):])}); log: {log}")
    with log.open("wb") as out:  # the child keeps its own copy of the descriptor; ours is closed here
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(proc: subprocess.Popen, endpoint: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.stderr.write(log.read_text(errors="replace"))
            raise SystemExit(f"demo: the daemon exited with code {proc.returncode} (log above)")
        if _answers(endpoint):
            return
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"demo: the daemon did not answer on {endpoint} within {timeout:.0f} s; see {log}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pulse-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--model", "--weights", dest="weights", default=None, metavar="NAME|PATH",
                    help="face model (default: the best this machine has, see above)")
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda|cuda:N|mps|xpu (default auto)")
    ap.add_argument("--out", default=str(REPO / "out"), help="output folder (default: out/)")
    add_param(ap, "candidates")
    add_param(ap, "steps")
    ap.add_argument("--seed", type=int, default=0)
    # Run by `make demo`: hints name `make demo MODEL=PATH`, not this program's own --model.
    ap.add_argument("--from-make", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    model_option = "make demo MODEL=PATH" if args.from_make else "--model PATH"

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    endpoint = default_endpoint()
    proc = None
    if _answers(endpoint):
        print(f"demo: using the daemon already running at {endpoint}" +
              (" (its own model; stop it to use --model)" if args.weights else ""))
    else:
        log = out / "daemon.log"
        try:
            if args.weights:
                model = args.weights
                fetch_named_model(model, model_option)
            else:
                model, line = choose_model(args.device, model_option)
                print(line, flush=True)
        except PulseError as exc:
            print(f"demo: error: {exc}", file=sys.stderr)
            return 2
        proc = _start_daemon(endpoint, model, args.device, log)
        # --preload: the first answer may wait for a first-use download of the default model.
        _wait_for(proc, endpoint, log, timeout=3600)
    try:
        from .cli import main_pulse

        # The CLI prints the one summary: the mosaic, each face's file and error, what the error means.
        return main_pulse(["depixelate", str(EXAMPLE), "--box", EXAMPLE_BOX, "-o", str(out / "demo.png"),
                           "--candidates", str(args.candidates), "--steps", str(args.steps), "--seed", str(args.seed),
                           "--report", str(out / "demo.json"), "--via-daemon", "--endpoint", endpoint])
    finally:
        if proc is not None:
            proc.terminate()  # graceful: the daemon removes its socket and lock on SIGTERM
            proc.wait(30)


if __name__ == "__main__":
    sys.exit(main())
