"""The `noop` backend: a model-free echo for transport, queueing and cancellation tests and benchmarks.

    --model noop   (or noop:)       each job answers at once with the submitted region, unchanged
    --model noop:SECONDS            ... after `steps` steps of SECONDS each (PROGRESS per step, cancellable)

Chosen once at start (`parse`); nothing else in the code compares model names with "noop". No torch, no device.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError

NAME = "noop"


@dataclass(frozen=True)
class NoopModel:
    step_delay: float = 0.0  # seconds per step; 0: one step, answered at once

    def summary(self) -> dict:
        """WELCOME/STATUS `models` row."""
        return {"name": NAME, "id": "", "family": NAME, "resolution": 0, "loaded": True}


def parse(weights: str | None) -> NoopModel | None:
    """The noop backend `--model` names, else None (a registry name or a checkpoint path). ModelError for
    `noop:` followed by something other than seconds."""
    if weights is None:
        return None
    text = str(weights)
    if text != NAME and not text.startswith(NAME + ":"):
        return None
    delay = text[len(NAME) + 1:]
    try:
        seconds = float(delay) if delay else 0.0
    except ValueError:
        raise ModelError(f"--model {text}: use noop or noop:SECONDS (seconds per step)", code="NO_WEIGHTS") from None
    if not seconds >= 0.0:  # also NaN
        raise ModelError(f"--model {text}: the seconds per step cannot be negative", code="NO_WEIGHTS")
    return NoopModel(seconds)
