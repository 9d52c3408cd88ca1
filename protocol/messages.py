"""Protocol v2 messages: one frozen dataclass per message type, plus the pixel containers.

A message is a msgpack map `{"type": TYPE, <fields>..., "blobs": [descriptors]}`; fields holding an
`ImageBlob`/`JpegBlob` carry the index of a raw frame instead (see codec.py and PROTOCOL.md).
Field annotations are the schema: the codec checks every received value against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# v2: WELCOME carries the job contract (`params`: each job parameter's type, default and the daemon's effective
# range, see job.py) and `limits.max_region_side`; SUBMIT `params` are checked against it on both ends. v1 clients
# are refused at HELLO with VERSION_MISMATCH ("update the plug-in").
PROTOCOL_VERSION = 2
MIN_PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = [2]

# Bytes per channel value of each raw dtype; pixels are little-endian, channels interleaved, row-major.
DTYPE_SIZES = {"u8": 1, "u16": 2, "f32": 4}
CHANNEL_LAYOUTS = {1: "G", 2: "GA", 3: "RGB", 4: "RGBA"}

# Job states reported in ACCEPTED / JOB_STATE / STATUS.
STATES = ("queued", "loading", "running", "done", "failed", "cancelled")
FINAL_STATES = ("done", "failed", "cancelled")


@dataclass(frozen=True)
class ImageBlob:
    """Raw pixels: width×height×channels values of `dtype`, carried in their own frame (never copied into msgpack)."""

    width: int
    height: int
    channels: int  # 1 G, 2 GA, 3 RGB, 4 RGBA
    dtype: str  # "u8" | "u16" | "f32" (float in [0, 1])
    data: bytes | memoryview = field(repr=False)

    @property
    def expected_nbytes(self) -> int:
        return self.width * self.height * self.channels * DTYPE_SIZES[self.dtype]

    @property
    def nbytes(self) -> int:
        return memoryview(self.data).nbytes

    def to_numpy(self) -> Any:
        """(H, W, C) numpy view of the data (read-only when backed by a received frame)."""
        import numpy as np

        np_dtype = {"u8": "u1", "u16": "<u2", "f32": "<f4"}[self.dtype]
        return np.frombuffer(self.data, dtype=np_dtype).reshape(self.height, self.width, self.channels)

    @classmethod
    def from_numpy(cls, array: Any) -> ImageBlob:
        """From an (H, W) or (H, W, C) uint8/uint16/float32 array (converted to little-endian, contiguous)."""
        import numpy as np

        arr = np.asarray(array)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
            raise ValueError(f"expected (H, W, C<=4) pixels, got shape {arr.shape}")
        name = {np.dtype(np.uint8): "u8", np.dtype(np.uint16): "u16", np.dtype(np.float32): "f32"}.get(arr.dtype.newbyteorder("="))
        if name is None:
            raise ValueError(f"pixels must be uint8, uint16 or float32, not {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))
        return cls(arr.shape[1], arr.shape[0], arr.shape[2], name, arr.data.cast("B"))


@dataclass(frozen=True)
class JpegBlob:
    """A small JPEG preview (width×height are the decoded size); only PREVIEW carries one."""

    width: int
    height: int
    data: bytes | memoryview = field(repr=False)


@dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""


# ---- handshake and liveness ---------------------------------------------------------------------


@dataclass(frozen=True)
class Hello(Message):
    TYPE: ClassVar[str] = "HELLO"
    protocol: int = PROTOCOL_VERSION
    min_protocol: int = MIN_PROTOCOL_VERSION
    client: str = ""
    client_version: str = ""
    token: str | None = None
    session: str = ""  # client-chosen secret; re-sent after a reconnect to get the same jobs back


@dataclass(frozen=True)
class Welcome(Message):
    TYPE: ClassVar[str] = "WELCOME"
    protocol: int
    server_version: str
    session: str
    heartbeat_ms: int
    device: str
    limits: dict = field(default_factory=dict)  # the codec's caps, max_side = max_region_side: the largest region
    models: list = field(default_factory=list)  # [{"name", "id", "family", "resolution", "loaded"}], own model first
    # The job contract as this daemon applies it: name -> {type, default, min, max | choices, label, help, advanced}
    # (job.spec_to_wire; read it with job.spec_from_wire). `model` choices: "" (the daemon's own) and the names it has.
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Error(Message):
    """A request could not be handled (malformed, unauthorised, unknown type...)."""

    TYPE: ClassVar[str] = "ERROR"
    code: str
    message: str
    job_id: str | None = None
    supported: list[int] | None = None  # VERSION_MISMATCH: the versions the daemon speaks
    retryable: bool = False


@dataclass(frozen=True)
class Ping(Message):
    TYPE: ClassVar[str] = "PING"
    t: float = 0.0


@dataclass(frozen=True)
class Pong(Message):
    TYPE: ClassVar[str] = "PONG"
    t: float = 0.0


@dataclass(frozen=True)
class Bye(Message):
    """The client is going away: its queued and running jobs are cancelled now, not after heartbeats."""

    TYPE: ClassVar[str] = "BYE"


@dataclass(frozen=True)
class Ok(Message):
    """Acknowledges CANCEL and SHUTDOWN."""

    TYPE: ClassVar[str] = "OK"
    request: str
    job_id: str | None = None


# ---- jobs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submit(Message):
    TYPE: ClassVar[str] = "SUBMIT"
    job_id: str
    image: ImageBlob
    mask: ImageBlob | None = None  # (H, W, 1) u8, 0 = not selected
    # job.JobSettings.to_wire(): mode, candidates, steps, seed, block, eps, precision, method, model, force; missing
    # keys take the daemon's defaults. The codec checks them against job.PARAMS on encode and decode.
    params: dict = field(default_factory=dict)
    preview_interval: float = 0.0  # seconds between PREVIEWs; 0 = none


@dataclass(frozen=True)
class Accepted(Message):
    TYPE: ClassVar[str] = "ACCEPTED"
    job_id: str
    position: int  # 0 = running now
    state: str = "queued"
    # Seconds the job itself should take once it runs, for its whole step budget (an upper bound: the search
    # may stop early), and until it starts (the jobs ahead of it, what remains of the running one). 0 = unknown
    # (a model not measured on this device yet, a --cluster daemon); wait_s 0 with a known estimate_s: it starts now.
    estimate_s: float = 0.0
    wait_s: float = 0.0


@dataclass(frozen=True)
class JobState(Message):
    TYPE: ClassVar[str] = "JOB_STATE"
    job_id: str
    state: str
    position: int = 0
    message: str = ""
    # A depixelate job's mosaic, sent once analysed (before the search): block, cells [cols, rows],
    # confidence, detected. None in every other JOB_STATE.
    analysis: dict | None = None


@dataclass(frozen=True)
class Progress(Message):
    TYPE: ClassVar[str] = "PROGRESS"
    job_id: str
    step: int
    total: int
    losses: dict[str, float] = field(default_factory=dict)
    best_downscale_error: float = float("inf")  # the lowest downscale_error so far, any candidate, any step
    eta_s: float = 0.0  # seconds left, from this job's own pace so far; 0 = unknown

    @property
    def best_error(self) -> float:
        """The protocol v1 name of `best_downscale_error` (the plug-ins read it until they move to the new name)."""
        return self.best_downscale_error


@dataclass(frozen=True)
class Preview(Message):
    TYPE: ClassVar[str] = "PREVIEW"
    job_id: str
    step: int
    image: JpegBlob


@dataclass(frozen=True)
class Candidate:
    image: ImageBlob
    seed: int
    downscale_error: float
    eps_reached: bool
    steps: int


@dataclass(frozen=True)
class Result(Message):
    TYPE: ClassVar[str] = "RESULT"
    job_id: str
    candidates: list[Candidate]
    model: str = ""
    analysis: dict = field(default_factory=dict)  # block, phase, rect, confidence, detected


@dataclass(frozen=True)
class Failed(Message):
    TYPE: ClassVar[str] = "FAILED"
    job_id: str
    code: str
    message: str
    retryable: bool = False


@dataclass(frozen=True)
class Cancel(Message):
    TYPE: ClassVar[str] = "CANCEL"
    job_id: str


@dataclass(frozen=True)
class Status(Message):
    TYPE: ClassVar[str] = "STATUS"


@dataclass(frozen=True)
class StatusReply(Message):
    TYPE: ClassVar[str] = "STATUS_REPLY"
    jobs: list[dict] = field(default_factory=list)  # this session's jobs: job_id, state, position, step, total
    server: dict = field(default_factory=dict)  # version, pid, device, models, queued, running, sessions


@dataclass(frozen=True)
class Fetch(Message):
    TYPE: ClassVar[str] = "FETCH"
    job_id: str


@dataclass(frozen=True)
class Shutdown(Message):
    """Ask the daemon to stop gracefully (same user only: ipc permissions or the token)."""

    TYPE: ClassVar[str] = "SHUTDOWN"


MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello, Welcome, Error, Ping, Pong, Bye, Ok, Submit, Accepted, JobState, Progress, Preview,
        Result, Failed, Cancel, Status, StatusReply, Fetch, Shutdown,
    )
}
# Who may send what: the daemon rejects server->client types and vice versa (UNEXPECTED_TYPE).
CLIENT_TYPES = frozenset({"HELLO", "PING", "PONG", "BYE", "SUBMIT", "CANCEL", "STATUS", "FETCH", "SHUTDOWN"})
SERVER_TYPES = frozenset(MESSAGE_TYPES) - CLIENT_TYPES | {"PING", "PONG"}
