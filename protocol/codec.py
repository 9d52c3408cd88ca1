"""Frames <-> messages: `[b"PULSE/1"] [msgpack header] [raw blob]...`, with every limit checked first.

Decoding order (PROTOCOL.md §2): frame count, magic, header size cap, `msgpack.unpackb` with strict map
keys and small container limits, header shape, every blob descriptor (`w·h·c·size == nbytes`, dimension
and pixel caps, frame length) and only then the fields, checked against the dataclass annotations; a SUBMIT's `params` are then checked
against the job contract (job.PARAMS), on encode as on decode, so a bad request is refused before it is sent
and before it is queued. Anything wrong raises `ProtocolError` (and nothing else; `ParamError` for params):
callers answer ERROR (FAILED for a SUBMIT's params) or drop the message.
Blob payloads are never copied: decoded `ImageBlob.data` is a memoryview of the received frame.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import msgpack

from .errors import ErrorCode, ProtocolError
from .job import JobSettings, ParamError
from .messages import DTYPE_SIZES, MESSAGE_TYPES, Candidate, ImageBlob, JpegBlob, Message, Submit

# The framing's magic, not the protocol version (that is negotiated in HELLO): a v1 client's HELLO must still
# decode, so that it gets VERSION_MISMATCH and "update the plug-in" rather than BAD_MAGIC.
MAGIC = b"PULSE/1"


@dataclass(frozen=True)
class Limits:
    """Caps applied before anything is allocated; the daemon reports its own in WELCOME."""

    max_header_bytes: int = 64 * 1024
    # Width and height of any image frame. The largest region a job may hold is job.MAX_REGION_SIDE, checked by
    # the daemon before queueing; WELCOME advertises that one (as max_side and max_region_side).
    max_side: int = 16384
    max_pixels: int = 8192 * 8192  # width × height of any image
    max_blob_bytes: int = 1 << 30  # one raw frame (also ZMQ_MAXMSGSIZE, plus slack)
    max_blobs: int = 64  # raw frames in one message (RESULT: one per candidate)
    max_preview_bytes: int = 1 << 20
    max_preview_side: int = 2048
    max_str_len: int = 16 * 1024  # one msgpack string in the header
    max_array_len: int = 1024
    max_map_len: int = 256

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


DEFAULT_LIMITS = Limits()


# ---- encoding ------------------------------------------------------------------------------------


def encode(msg: Message, limits: Limits = DEFAULT_LIMITS) -> list[bytes | memoryview]:
    """Message -> frames. Blob frames are memoryviews of the caller's buffers (send them with copy=False).
    ParamError for a SUBMIT whose params break the job contract (nothing is sent)."""
    if isinstance(msg, Submit):
        JobSettings.from_wire(msg.params)
    blobs: list[tuple[dict[str, Any], memoryview]] = []
    header: dict[str, Any] = {"type": msg.TYPE}
    for f in dataclasses.fields(msg):
        header[f.name] = _dump(getattr(msg, f.name), f.name, blobs)
    if blobs:
        header["blobs"] = [desc for desc, _ in blobs]
    packed = msgpack.packb(header, use_bin_type=True)
    if len(packed) > limits.max_header_bytes:
        raise ProtocolError(f"{msg.TYPE} header is {len(packed)} bytes, over the {limits.max_header_bytes}-byte cap", ErrorCode.HEADER_TOO_LARGE)
    return [MAGIC, packed, *(data for _, data in blobs)]


ZERO_COPY_MIN = 65536  # bytes: below this libzmq copying a frame is cheaper than pyzmq tracking a zero-copy one


def copy_frames(frames: Sequence[Any]) -> bool:
    """`copy=` for `send_multipart(frames)`: copy unless some frame (an image blob) is large."""
    return not any(memoryview(f).nbytes > ZERO_COPY_MIN for f in frames)


def _dump(value: Any, kind: str, blobs: list[tuple[dict[str, Any], memoryview]]) -> Any:
    if isinstance(value, ImageBlob):
        data = _bytes_view(value.data)
        if value.dtype not in DTYPE_SIZES or data.nbytes != value.expected_nbytes:
            raise ProtocolError(f"{kind}: {value.width}x{value.height}x{value.channels} {value.dtype} needs {value.expected_nbytes if value.dtype in DTYPE_SIZES else '?'} bytes, has {data.nbytes}", ErrorCode.BAD_BLOB)
        desc = {"kind": kind, "w": value.width, "h": value.height, "c": value.channels, "dtype": value.dtype, "nbytes": data.nbytes}
        blobs.append((desc, data))
        return len(blobs) - 1
    if isinstance(value, JpegBlob):
        data = _bytes_view(value.data)
        blobs.append(({"kind": kind, "w": value.width, "h": value.height, "c": 3, "dtype": "jpeg", "nbytes": data.nbytes}, data))
        return len(blobs) - 1
    if dataclasses.is_dataclass(value):
        return {f.name: _dump(getattr(value, f.name), f.name, blobs) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_dump(v, kind, blobs) for v in value]
    return value


def _bytes_view(data: Any) -> memoryview:
    view = memoryview(data)
    return view if view.ndim == 1 and view.format == "B" else view.cast("B")


# ---- decoding ------------------------------------------------------------------------------------


def decode(frames: Sequence[Any], limits: Limits = DEFAULT_LIMITS, allowed: Iterable[str] | None = None) -> Message:
    """Frames (bytes, memoryviews or zmq.Frame) -> Message, or ProtocolError. `allowed`: accepted types."""
    try:
        return _decode(frames, limits, allowed)
    except ProtocolError:
        raise
    except Exception as exc:  # the decoder's contract: only ProtocolError escapes
        raise ProtocolError(f"malformed message: {type(exc).__name__}: {exc}", ErrorCode.MALFORMED) from exc


def _views(frames: Sequence[Any]) -> list[memoryview]:
    if not isinstance(frames, (list, tuple)):
        raise ProtocolError("frames must be a list", ErrorCode.MALFORMED)
    if len(frames) < 2:
        raise ProtocolError(f"a message has at least 2 frames (magic, header), got {len(frames)}", ErrorCode.MALFORMED)
    views = []
    for f in frames:
        buf = getattr(f, "buffer", f)  # zmq.Frame
        if not isinstance(buf, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"frame of type {type(f).__name__}", ErrorCode.MALFORMED)
        view = memoryview(buf)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        views.append(view)
    if views[0] != MAGIC:
        raise ProtocolError("not a PULSE/1 message (bad magic frame)", ErrorCode.BAD_MAGIC)
    return views


def _unpack_header(views: list[memoryview], limits: Limits) -> dict[str, Any]:
    raw = views[1]
    if raw.nbytes > limits.max_header_bytes:
        raise ProtocolError(f"header is {raw.nbytes} bytes, over the {limits.max_header_bytes}-byte cap", ErrorCode.HEADER_TOO_LARGE)
    try:
        header = msgpack.unpackb(
            raw.tobytes(),
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_str_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except Exception as exc:  # ExtraData, FormatError, StackError, ValueError, ...
        raise ProtocolError(f"header is not valid msgpack ({type(exc).__name__})", ErrorCode.MALFORMED) from exc
    if not isinstance(header, dict):
        raise ProtocolError("header must be a msgpack map", ErrorCode.MALFORMED)
    return header


def _decode(frames: Sequence[Any], limits: Limits, allowed: Iterable[str] | None) -> Message:
    views = _views(frames)
    header = _unpack_header(views, limits)
    mtype = header.get("type")
    if not isinstance(mtype, str):
        raise ProtocolError("header has no string 'type'", ErrorCode.MALFORMED)
    cls = MESSAGE_TYPES.get(mtype)
    if cls is None:
        raise ProtocolError(f"unknown message type {mtype[:64]!r}", ErrorCode.UNKNOWN_TYPE)
    if allowed is not None and mtype not in allowed:
        raise ProtocolError(f"{mtype} is not accepted here", ErrorCode.UNEXPECTED_TYPE)
    blobs = _check_blobs(header.get("blobs", []), views[2:], limits)
    used: set[int] = set()
    msg = _load_dataclass(cls, header, blobs, used, mtype)
    if isinstance(msg, Submit):
        try:
            JobSettings.from_wire(msg.params)
        except ParamError as exc:
            exc.job_id = msg.job_id  # the daemon answers this job FAILED, like any other refusal of it
            raise
    return msg


def _check_blobs(descs: Any, frames: list[memoryview], limits: Limits) -> list[tuple[dict[str, Any], memoryview]]:
    """Every descriptor validated against the limits and its frame, before any field uses it."""
    if not isinstance(descs, list):
        raise ProtocolError("'blobs' must be a list", ErrorCode.MALFORMED)
    if len(descs) > limits.max_blobs:
        raise ProtocolError(f"{len(descs)} blobs, over the cap of {limits.max_blobs}", ErrorCode.TOO_MANY_BLOBS)
    if len(descs) != len(frames):
        raise ProtocolError(f"header describes {len(descs)} blobs but {len(frames)} data frames follow", ErrorCode.BLOB_MISMATCH)
    out = []
    for i, (desc, frame) in enumerate(zip(descs, frames)):
        if not isinstance(desc, dict):
            raise ProtocolError(f"blob {i}: descriptor must be a map", ErrorCode.MALFORMED)
        sizes, dtype = [desc.get(k) for k in ("w", "h", "c", "nbytes")], desc.get("dtype")
        if not all(_is_int(v) for v in sizes) or not isinstance(dtype, str):
            raise ProtocolError(f"blob {i}: w, h, c, nbytes must be integers and dtype a string", ErrorCode.BAD_BLOB)
        w, h, c, n = (int(v) for v in sizes)  # type: ignore[arg-type]  # _is_int checked each: ints, not None
        if w < 1 or h < 1 or n < 0:
            raise ProtocolError(f"blob {i}: empty or negative size {w}x{h}", ErrorCode.BAD_BLOB)
        if dtype == "jpeg":
            if w > limits.max_preview_side or h > limits.max_preview_side or n > limits.max_preview_bytes or c != 3:
                raise ProtocolError(f"blob {i}: preview {w}x{h} ({n} bytes) over the preview caps", ErrorCode.TOO_LARGE)
        else:
            if dtype not in DTYPE_SIZES:
                raise ProtocolError(f"blob {i}: unknown dtype {dtype[:16]!r} (u8, u16, f32)", ErrorCode.BAD_BLOB)
            if not 1 <= c <= 4:
                raise ProtocolError(f"blob {i}: {c} channels (1..4)", ErrorCode.BAD_BLOB)
            if w > limits.max_side or h > limits.max_side or w * h > limits.max_pixels:
                raise ProtocolError(
                    f"blob {i}: {w}x{h} is over the image caps ({limits.max_side} per side, {limits.max_pixels} pixels)", ErrorCode.TOO_LARGE
                )
            expected = w * h * c * DTYPE_SIZES[dtype]
            if n != expected:
                raise ProtocolError(f"blob {i}: {w}x{h}x{c} {dtype} is {expected} bytes, descriptor says {n}", ErrorCode.BAD_BLOB)
            if n > limits.max_blob_bytes:
                raise ProtocolError(f"blob {i}: {n} bytes, over the {limits.max_blob_bytes}-byte cap", ErrorCode.TOO_LARGE)
        if frame.nbytes != n:
            raise ProtocolError(f"blob {i}: descriptor says {n} bytes, frame has {frame.nbytes}", ErrorCode.BAD_BLOB)
        out.append((desc, frame))
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _load_dataclass(cls: type, raw: dict[str, Any], blobs: list, used: set[int], where: str) -> Any:
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in raw:
            kwargs[f.name] = _load(hints[f.name], raw[f.name], blobs, used, f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ProtocolError(f"{where}: missing field {f.name!r}", ErrorCode.MISSING_FIELD)
    return cls(**kwargs)  # unknown fields in `raw` are ignored on purpose (forward compatibility)


def _load(hint: Any, value: Any, blobs: list, used: set[int], where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _load(inner[0], value, blobs, used, where)
    if hint is ImageBlob or hint is JpegBlob:
        if not _is_int(value) or not 0 <= value < len(blobs) or value in used:
            raise ProtocolError(f"{where}: not the index of an unused blob", ErrorCode.BAD_BLOB)
        used.add(value)
        desc, frame = blobs[value]
        is_jpeg = desc["dtype"] == "jpeg"
        if is_jpeg != (hint is JpegBlob):
            raise ProtocolError(f"{where}: wrong blob kind {desc['dtype']}", ErrorCode.BAD_BLOB)
        if is_jpeg:
            return JpegBlob(desc["w"], desc["h"], frame)
        return ImageBlob(desc["w"], desc["h"], desc["c"], desc["dtype"], frame)
    if hint is Candidate:
        if not isinstance(value, dict):
            raise ProtocolError(f"{where}: expected a map", ErrorCode.BAD_FIELD)
        return _load_dataclass(Candidate, value, blobs, used, where)
    if origin is list or hint is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list", ErrorCode.BAD_FIELD)
        (item,) = typing.get_args(hint) or (Any,)
        return value if item is Any else [_load(item, v, blobs, used, f"{where}[]") for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ProtocolError(f"{where}: expected a map with string keys", ErrorCode.BAD_FIELD)
        args = typing.get_args(hint)
        return value if not args else {k: _load(args[1], v, blobs, used, where) for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ProtocolError(f"{where}: expected a boolean", ErrorCode.BAD_FIELD)
        return value
    if hint is int:
        if not _is_int(value):
            raise ProtocolError(f"{where}: expected an integer", ErrorCode.BAD_FIELD)
        return value
    if hint is float:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)):
            raise ProtocolError(f"{where}: expected a number", ErrorCode.BAD_FIELD)
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ProtocolError(f"{where}: expected a string", ErrorCode.BAD_FIELD)
        return value
    if hint is Any:
        return value
    raise ProtocolError(f"{where}: no decoder for {hint!r}", ErrorCode.INTERNAL)
