"""Error codes and the one error base class, shared by the daemon, its clients and the CLIs; no server imports.

Every expected failure is a `PulseError` (or a subclass) with a stable `code` from `ErrorCode` and a message a
user can act on. The codes go on the wire as plain strings (ERROR, FAILED): `ErrorCode` is a `str` enum, so a
member compares and packs as its value. The CLIs print the message and exit 2; the editors choose their words by
code (`protocol.layers`), never by class name.
"""

from __future__ import annotations

from enum import Enum


class ErrorCode(str, Enum):
    """Every code the daemon, the worker, the pipeline, the solver, the client and the CLIs send or raise."""

    # str() and f-strings give the bare code on every Python the editors run (3.10 has no StrEnum).
    def __str__(self) -> str:
        return str.__str__(self)

    def __format__(self, spec: str) -> str:
        return str.__format__(self, spec)

    # generic
    ERROR = "ERROR"  # the base class's code: a subclass or the raiser names a precise one
    INTERNAL = "INTERNAL"  # a bug: the daemon logs the traceback
    # the wire (codec, handshake)
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    MALFORMED = "MALFORMED"
    BAD_MAGIC = "BAD_MAGIC"
    HEADER_TOO_LARGE = "HEADER_TOO_LARGE"
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    UNEXPECTED_TYPE = "UNEXPECTED_TYPE"
    MISSING_FIELD = "MISSING_FIELD"
    BAD_FIELD = "BAD_FIELD"
    BAD_BLOB = "BAD_BLOB"
    BLOB_MISMATCH = "BLOB_MISMATCH"
    TOO_MANY_BLOBS = "TOO_MANY_BLOBS"
    TOO_LARGE = "TOO_LARGE"
    VERSION_MISMATCH = "VERSION_MISMATCH"
    HANDSHAKE_REQUIRED = "HANDSHAKE_REQUIRED"
    HANDSHAKE_FAILED = "HANDSHAKE_FAILED"
    BAD_TOKEN = "BAD_TOKEN"
    TIMEOUT = "TIMEOUT"
    DAEMON_NOT_RUNNING = "DAEMON_NOT_RUNNING"
    # jobs: the request
    BAD_PARAMS = "BAD_PARAMS"
    BAD_MASK = "BAD_MASK"
    QUEUE_FULL = "QUEUE_FULL"
    NOT_FOUND = "NOT_FOUND"
    NOT_READY = "NOT_READY"
    CANCELLED = "CANCELLED"
    SHUTDOWN = "SHUTDOWN"
    FAILED = "FAILED"  # a FAILED whose code this client does not know
    # jobs: the region and the search
    BAD_REGION = "BAD_REGION"
    BAD_FORMAT = "BAD_FORMAT"
    BAD_PIXELS = "BAD_PIXELS"
    BAD_SIZE = "BAD_SIZE"
    BAD_INPUT = "BAD_INPUT"
    NO_MOSAIC = "NO_MOSAIC"
    NO_MOSAIC_DECLINED = "NO_MOSAIC_DECLINED"  # the user said no to "depixelate anyway" (client side)
    SOLVER_ERROR = "SOLVER_ERROR"
    BAD_LOSS = "BAD_LOSS"
    BAD_SCHEDULE = "BAD_SCHEDULE"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    BAD_RESULT = "BAD_RESULT"
    # models and devices
    MODEL_ERROR = "MODEL_ERROR"
    NO_WEIGHTS = "NO_WEIGHTS"
    CHECKSUM = "CHECKSUM"
    CORRUPT_CHECKPOINT = "CORRUPT_CHECKPOINT"
    UNSAFE_PICKLE = "UNSAFE_PICKLE"
    UNSUPPORTED_MODEL = "UNSUPPORTED_MODEL"
    NO_DEVICE = "NO_DEVICE"
    BAD_DEVICE = "BAD_DEVICE"
    # the daemon's start
    BAD_ENDPOINT = "BAD_ENDPOINT"
    REMOTE_BIND = "REMOTE_BIND"
    BIND_FAILED = "BIND_FAILED"
    ENDPOINT_IN_USE = "ENDPOINT_IN_USE"
    ALREADY_RUNNING = "ALREADY_RUNNING"
    UNSAFE_RUNTIME_DIR = "UNSAFE_RUNTIME_DIR"
    NO_CURVE = "NO_CURVE"
    # the Ray cluster
    BAD_CLUSTER = "BAD_CLUSTER"
    NO_RAY = "NO_RAY"
    CLUSTER_UNREACHABLE = "CLUSTER_UNREACHABLE"
    CLUSTER_DOWN = "CLUSTER_DOWN"
    NO_ACTORS = "NO_ACTORS"
    WORKER_LOST = "WORKER_LOST"
    # the CLIs and the installers
    BAD_IMAGE = "BAD_IMAGE"
    BAD_OUTPUT = "BAD_OUTPUT"
    BAD_TARGET = "BAD_TARGET"
    BAD_PYTHON = "BAD_PYTHON"
    BAD_INTERPRETER = "BAD_INTERPRETER"
    NO_PLUGIN = "NO_PLUGIN"
    VENDOR_FAILED = "VENDOR_FAILED"
    FLATPAK_OVERRIDE = "FLATPAK_OVERRIDE"
    AUTOSTART = "AUTOSTART"


def as_code(code: str) -> ErrorCode | str:
    """The ErrorCode member for `code`; a code this side does not know (a newer peer's) stays a plain string."""
    try:
        return ErrorCode(code)
    except ValueError:
        return code


class PulseError(Exception):
    """Base of every expected, user-facing failure, on both sides. `code` is stable; `message` is for people;
    `retryable`: the same request may succeed later (a full queue, a daemon restarting)."""

    code: ErrorCode | str = ErrorCode.ERROR
    retryable: bool = False

    def __init__(self, message: str, code: ErrorCode | str | None = None, *, retryable: bool | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = as_code(code)
        if retryable is not None:
            self.retryable = retryable

    def __str__(self) -> str:
        return self.message


class ProtocolError(PulseError):
    """A malformed message, a refused request, a timeout or an unreachable daemon."""

    code = ErrorCode.PROTOCOL_ERROR


class DaemonNotRunning(ProtocolError):
    code = ErrorCode.DAEMON_NOT_RUNNING
    retryable = True

    def __init__(self, message: str = "daemon not running — start it with `pulse-server run`",
                 code: ErrorCode | str | None = None) -> None:
        super().__init__(message, code)


class VersionMismatch(ProtocolError):
    """The daemon speaks no protocol version this client supports (`supported` lists the daemon's)."""

    code = ErrorCode.VERSION_MISMATCH

    def __init__(self, message: str, supported: list[int] | None = None) -> None:
        super().__init__(message)
        self.supported = list(supported or [])


class JobFailed(ProtocolError):
    """The daemon answered FAILED for a job: `code` is the server's stable code (BAD_REGION, OUT_OF_MEMORY...)."""

    def __init__(self, message: str, code: ErrorCode | str = ErrorCode.FAILED, retryable: bool = False,
                 job_id: str | None = None) -> None:
        super().__init__(message, code, retryable=retryable)
        self.job_id = job_id


class JobCancelled(JobFailed):
    def __init__(self, message: str = "job cancelled", job_id: str | None = None) -> None:
        super().__init__(message, ErrorCode.CANCELLED, False, job_id)
