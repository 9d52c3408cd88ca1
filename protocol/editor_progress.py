"""What a running job has told the editor so far, in the words both plug-ins show.

`JobView` takes the client's events as they come (ACCEPTED with the estimate, JOB_STATE with what the daemon
detected, PROGRESS with the time left) and gives the lines a progress bar or a docker shows:

    queued:    "waiting for other jobs · about 25 min on this CPU — a GPU or the ffhq-256 model is faster"
    analysed:  "imagining faces · 12 px blocks, 14×16 cells detected · about 40 s"
    progress:  "step 12/40, best error 1.50e-03 · about 30 s left"

Stdlib only (runs inside the editors).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .estimate_text import describe_duration, describe_estimate
from .layers import mosaic_summary

SEP = " · "
STATE_TEXT = {"queued": "waiting for other jobs", "loading": "loading the face model", "running": "imagining faces",
              "done": "done", "failed": "failed", "cancelled": "cancelled"}


@dataclass
class JobView:
    """One job as the user follows it. `device`: WELCOME's device; `model`: the job's model for the estimate's
    advice (the job's choice, else the daemon's own; see editor_settings.model_for_estimate)."""

    device: str = ""
    model: str = ""
    state: str = ""
    estimate: str = ""  # before it runs: "about 25 min on this CPU — …" ("" = unknown)
    found: str = ""  # what the daemon detected: "12 px blocks, 14×16 cells detected"
    step: int = 0
    total: int = 0
    best_error: float = float("inf")
    eta_s: float = 0.0

    def accepted(self, msg: Any) -> None:
        """ACCEPTED: the estimate (`estimate_s`, `wait_s`; 0 = unknown) and the first state."""
        self.state = str(getattr(msg, "state", "") or self.state)
        self.estimate = describe_estimate(float(getattr(msg, "estimate_s", 0) or 0),
                                          float(getattr(msg, "wait_s", 0) or 0), self.device, self.model)

    def job_state(self, msg: Any) -> None:
        """JOB_STATE (or just its state string): after the analysis the daemon says what it detected, in
        `message` and, where it sends one, an `analysis` dict like RESULT's."""
        if isinstance(msg, str):
            self.state = msg
            return
        self.state = str(getattr(msg, "state", "") or self.state)
        analysis = getattr(msg, "analysis", None)
        message = str(getattr(msg, "message", "") or "").strip()
        if message:
            self.found = message
        elif isinstance(analysis, Mapping) and analysis:
            self.found = detected_text(analysis)

    def progress(self, msg: Any) -> None:
        """PROGRESS: the step, the best error so far and the time left (`eta_s`, 0 = unknown)."""
        self.state = "running"
        self.step, self.total = int(getattr(msg, "step", 0)), int(getattr(msg, "total", 0))
        self.best_error = float(getattr(msg, "best_error", float("inf")))
        self.eta_s = float(getattr(msg, "eta_s", 0) or 0)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(max(self.step / self.total, 0.0), 1.0)

    def headline(self) -> str:
        """What the job is doing, what was detected, how long it takes: the line above a progress bar."""
        parts = [STATE_TEXT.get(self.state, self.state.replace("_", " ")) or "sending"]
        if self.found:
            parts.append(self.found)
        if self.estimate and not self.eta_s:  # once the time left is known, it replaces the estimate
            parts.append(self.estimate)
        return SEP.join(parts)

    def steps_text(self) -> str:
        """'step 12/40, best error 1.50e-03 · about 30 s left' ("" before the first PROGRESS)."""
        if self.total <= 0:
            return ""
        text = f"step {self.step}/{self.total}"
        if self.best_error == self.best_error and self.best_error != float("inf"):
            text += f", best error {self.best_error:.2e}"
        left = self.time_left()
        return text + (SEP + left if left else "")

    def time_left(self) -> str:
        return f"{describe_duration(self.eta_s)} left" if self.eta_s > 0 else ""

    def text(self) -> str:
        """One line with all of it (GIMP's progress bar has one): steps once they come, what was found."""
        steps = self.steps_text()
        if not steps:
            return self.headline()
        return steps + (SEP + self.found if self.found else "")


def detected_text(analysis: Mapping[str, Any]) -> str:
    """'12 px blocks, 14×16 cells detected' / 'no mosaic found' from an analysis dict (RESULT's keys)."""
    summary = mosaic_summary(analysis)
    return summary if summary == "no mosaic found" else f"{summary} detected"


__all__ = ["JobView", "STATE_TEXT", "detected_text"]
