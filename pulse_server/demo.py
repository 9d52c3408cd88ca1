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
import json
import subprocess
import sys
import time
from pathlib import Path

from protocol.client import PulseClient
from protocol.endpoint import default_endpoint
from protocol.errors import DaemonNotRunning, ProtocolError

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


def choose_model(device: str = "auto") -> tuple[str, str]:
    """The best model this machine can run now, downloading the device's FFHQ model if it must.

    Order: the device's default FFHQ (ffhq-1024 on a GPU, ffhq-256 on the CPU) if cached; on a GPU also a
    cached ffhq-256; the device's default downloaded now; `digiface-64` from its package, with one line
    saying so. ffhq-1024 is never picked for a CPU: one demo would take about an hour.
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
                     f"{registry.get_spec(want).url} at {registry.weights_path(want)}, or run the demo once online.")


def _start_daemon(endpoint: str, weights: str | None, device: str, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from pulse_server.cli import main_server; sys.exit(main_server())",
           "run", "--endpoint", endpoint, "--preload", "--device", device]
    if weights:
        cmd += ["--model", weights]
    print(f"demo: starting the daemon ({' '.join(cmd[3:])}); log: {log}")
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
    ap.add_argument("--candidates", type=int, default=3)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

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
            model, line = (args.weights, f"demo: model {args.weights}") if args.weights else choose_model(args.device)
        except PulseError as exc:
            print(f"demo: error: {exc}", file=sys.stderr)
            return 2
        print(line, flush=True)
        proc = _start_daemon(endpoint, model, args.device, log)
        # --preload: the first answer may wait for a first-use download of the default model.
        _wait_for(proc, endpoint, log, timeout=3600)
    try:
        from .cli import main_pulse

        result = out / "demo.png"
        report = out / "demo.json"
        code = main_pulse(["depixelate", str(EXAMPLE), "--box", EXAMPLE_BOX, "-o", str(result),
                           "--candidates", str(args.candidates), "--steps", str(args.steps), "--seed", str(args.seed),
                           "--report", str(report), "--via-daemon", "--endpoint", endpoint])
        if code == 0:
            _summarise(report)
        return code
    finally:
        if proc is not None:
            proc.terminate()  # graceful: the daemon removes its socket and lock on SIGTERM
            proc.wait(30)


def _summarise(report: Path) -> None:
    data = json.loads(report.read_text())
    mosaic = data.get("mosaic", {})
    print(f"demo: faces by model {data.get('model')}")
    print(f"demo: mosaic block {mosaic.get('block')} px, phase {mosaic.get('phase')}, rect {mosaic.get('rect_in_image', mosaic.get('rect'))}, "
          f"confidence {mosaic.get('confidence')}")
    for c in data.get("candidates", []):
        print(f"demo: {c.get('file')}: downscale error {c.get('downscale_error', c.get('downscale_mse'))}, "
              f"seed {c.get('seed')}, eps reached {c.get('eps_reached')}")
    print("demo: these faces are imagined by the model to match the mosaic; none of them is the person in the photo.")


if __name__ == "__main__":
    sys.exit(main())
