"""`make demo`: the daemon up, the bundled pixelated example depixelated through it, results in out/.

    python -m pulse_server.demo [--weights PATH] [--out DIR] [--candidates K] [--steps S]

Uses the daemon already running for this user if there is one (the login daemon); otherwise starts
`pulse-server run` for the demo's duration and stops it afterwards. Without --weights the daemon uses the
default FFHQ StyleGAN2, downloaded on first use (about 380 MB); `--weights ../shared/priors/...` runs offline.
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


def _start_daemon(endpoint: str, weights: str | None, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "import sys; from pulse_server.cli import main_server; sys.exit(main_server())",
           "run", "--endpoint", endpoint, "--preload"]
    if weights:
        cmd += ["--weights", weights]
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
    ap.add_argument("--weights", default=None, help="face prior checkpoint (default: FFHQ StyleGAN2, downloaded)")
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
              (" (its own model; stop it to use --weights)" if args.weights else ""))
    else:
        log = out / "daemon.log"
        proc = _start_daemon(endpoint, args.weights, log)
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
    print(f"demo: mosaic block {mosaic.get('block')} px, phase {mosaic.get('phase')}, rect {mosaic.get('rect_in_image', mosaic.get('rect'))}, "
          f"confidence {mosaic.get('confidence')}")
    for c in data.get("candidates", []):
        print(f"demo: {c.get('file')}: downscale error {c.get('downscale_error', c.get('downscale_mse'))}, "
              f"seed {c.get('seed')}, eps reached {c.get('eps_reached')}")
    print("demo: these faces are imagined by the model to match the mosaic; none of them is the person in the photo.")


if __name__ == "__main__":
    sys.exit(main())
