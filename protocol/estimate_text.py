"""How long a job will take, in words: the one sentence the CLI and both editors show when ACCEPTED arrives.

    describe_estimate(40, 0, "cuda:0", "ffhq-1024")   -> "about 40 s"
    describe_estimate(1500, 0, "cpu", "ffhq-1024")    -> "about 25 min on this CPU — a GPU or the ffhq-256 model is faster"
    describe_estimate(180, 60, "cuda:0", "")          -> "about 3 min (starts in about 1 min)"

Editor-neutral and stdlib only: the plug-ins carry `protocol/` and nothing of the server.
"""

from __future__ import annotations

# A CPU job this long gets advice on what would be faster; shorter ones do not need it.
SLOW_ON_CPU_S = 300.0
# A wait shorter than this is "starts now": not worth a clause.
MENTION_WAIT_S = 5.0
# Models with a faster sibling for the advice, by registry id and by the name RESULT reports. The server's
# registry (pulse_server.models.registry) is the authority; the plug-ins cannot import it, hence this copy.
FASTER_MODEL = {"ffhq-1024": "ffhq-256", "stylegan2-ffhq-1024": "ffhq-256"}


def describe_duration(seconds: float) -> str:
    """"about 7 s", "about 40 s", "about 25 min", "about 1.5 h": as precise as an estimate deserves."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"about {max(1, round(s))} s"
    if s < 57.5:  # to 5 s; from 57.5 s on it reads as a minute
        return f"about {5 * round(s / 5)} s"
    if s < 3570:
        return f"about {max(1, round(s / 60))} min"
    halves = round(s / 1800) / 2  # to half an hour
    return f"about {halves:g} h"


def describe_estimate(estimate_s: float, wait_s: float, device_kind: str, model: str) -> str:
    """The sentence for ACCEPTED's `estimate_s` and `wait_s` (0 = unknown); "" when neither is known.

    `device_kind`: WELCOME's `device` ("cpu", "cuda:0", "mps", ...); `model`: the job's model id or name ("" for
    the daemon's own). The estimate is for the whole step budget: a search that converges ends sooner."""
    parts = []
    if estimate_s > 0:
        text = describe_duration(estimate_s)
        if _is_cpu(device_kind) and estimate_s >= SLOW_ON_CPU_S:
            faster = FASTER_MODEL.get(model.strip())
            text += f" on this CPU — a GPU or the {faster} model is faster" if faster else " on this CPU — a GPU is faster"
        parts.append(text)
    if wait_s >= MENTION_WAIT_S:
        wait = f"starts in {describe_duration(wait_s)}"
        parts.append(f"({wait})" if parts else wait)
    return " ".join(parts)


def _is_cpu(device: str) -> bool:
    return str(device).split(":", 1)[0].strip().lower() == "cpu"


__all__ = ["describe_duration", "describe_estimate"]
