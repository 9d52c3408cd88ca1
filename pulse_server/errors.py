"""The server side's errors: every layer (models, solver, pipeline, daemon) raises a subclass of the one base,
`protocol.errors.PulseError`, with a stable code from `protocol.errors.ErrorCode`.

The code is sent on the wire in FAILED and used by tests and the editors; the message is one a user can act on.
The CLIs print `pulse: error: <message>` and exit with code 2.
"""

from __future__ import annotations

from protocol.errors import ErrorCode, PulseError

__all__ = ["ErrorCode", "PulseError", "ModelError", "SolverError", "Cancelled", "PipelineError"]


class ModelError(PulseError):
    """A checkpoint could not be found, downloaded, verified or read."""

    code = ErrorCode.MODEL_ERROR


class SolverError(PulseError):
    """The latent search was given something it cannot solve (bad size, NaN, ...)."""

    code = ErrorCode.SOLVER_ERROR


class Cancelled(PulseError):
    """A job was cancelled between two solver steps."""

    code = ErrorCode.CANCELLED


class PipelineError(PulseError):
    """A region from the editor cannot be turned into a solver input (empty, too big, no face grid...)."""

    code = ErrorCode.BAD_REGION
