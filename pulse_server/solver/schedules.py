"""Learning-rate schedules of the original `PULSE.py`: lr(step) = base_lr · factor(step, steps).

The original has exactly three (`fixed`, `linear1cycle`, `linear1cycledrop`); factor(0) is what the first
step uses (torch's LambdaLR convention, as the original).
  fixed             1 throughout.
  linear1cycle      a triangle: 0.1 at step 0, 1.0 at steps/2, back to 0.1 at the end.
  linear1cycledrop  the triangle over the first 90% of the steps (0.1 -> 1 -> 0.1), then a linear
                    drop from 0.1 to 0.001 over the last 10% (the default; it "settles" the result).
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import SolverError


def fixed(step: int, steps: int) -> float:
    return 1.0


def linear1cycle(step: int, steps: int) -> float:
    return (9 * (1 - abs(step / steps - 0.5) * 2) + 1) / 10


def linear1cycledrop(step: int, steps: int) -> float:
    cycle = 0.9 * steps
    if step < cycle:
        return (9 * (1 - abs(step / cycle - 0.5) * 2) + 1) / 10
    return 0.1 + (step - cycle) / (0.1 * steps) * (0.001 - 0.1)


SCHEDULES: dict[str, Callable[[int, int], float]] = {
    "fixed": fixed,
    "linear1cycle": linear1cycle,
    "linear1cycledrop": linear1cycledrop,
}


def get_schedule(name: str) -> Callable[[int, int], float]:
    try:
        return SCHEDULES[name]
    except KeyError:
        raise SolverError(f"unknown lr schedule {name!r} (known: {', '.join(SCHEDULES)})", code="BAD_SCHEDULE") from None
