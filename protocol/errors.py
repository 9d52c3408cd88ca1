"""The protocol layer's one error type (and its subclasses); no server imports.

Every failure a client or the decoder can report is a `ProtocolError` with a stable `code`; the CLIs print
its message and exit 2, the editors show it in a message box.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A malformed message, a refused request, a timeout or an unreachable daemon."""

    code: str = "PROTOCOL_ERROR"
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


class DaemonNotRunning(ProtocolError):
    code = "DAEMON_NOT_RUNNING"
    retryable = True

    def __init__(self, message: str = "daemon not running — start it with `pulse-server run`", code: str | None = None) -> None:
        super().__init__(message, code)


class VersionMismatch(ProtocolError):
    """The daemon speaks no protocol version this client supports (`supported` lists the daemon's)."""

    code = "VERSION_MISMATCH"

    def __init__(self, message: str, supported: list[int] | None = None) -> None:
        super().__init__(message)
        self.supported = list(supported or [])


class JobFailed(ProtocolError):
    """The daemon answered FAILED for a job: `code` is the server's stable code (BAD_REGION, OUT_OF_MEMORY...)."""

    def __init__(self, message: str, code: str = "FAILED", retryable: bool = False, job_id: str | None = None) -> None:
        super().__init__(message, code, retryable=retryable)
        self.job_id = job_id


class JobCancelled(JobFailed):
    def __init__(self, message: str = "job cancelled", job_id: str | None = None) -> None:
        super().__init__(message, "CANCELLED", False, job_id)
