"""The server side's error base: every layer (models, solver, pipeline, daemon) raises a subclass.

Each error carries a stable machine code (sent on the wire in FAILED, used by tests) and a message a
user can act on. The CLIs print `pulse: error: <message>` and exit with code 2.
"""

from __future__ import annotations


class PulseError(Exception):
    """Base of all expected, user-facing failures. `code` is stable; `message` is for people."""

    code: str = "ERROR"
    retryable: bool = False

    def __init__(self, message: str, code: str | None = None, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class ModelError(PulseError):
    """A checkpoint could not be found, downloaded, verified or read."""

    code = "MODEL_ERROR"


class SolverError(PulseError):
    """The latent search was given something it cannot solve (bad size, NaN, ...)."""

    code = "SOLVER_ERROR"


class Cancelled(PulseError):
    """A job was cancelled between two solver steps."""

    code = "CANCELLED"


class PipelineError(PulseError):
    """A region from the editor cannot be turned into a solver input (empty, too big, no face grid...)."""

    code = "BAD_REGION"
