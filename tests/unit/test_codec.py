"""The PULSE/1 codec without a daemon: round trips, every limit, and a fuzzed decoder."""

from __future__ import annotations

import subprocess
import sys

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.codec import DEFAULT_LIMITS, MAGIC, Limits, decode, encode
from protocol.errors import ProtocolError
from protocol.messages import (
    CLIENT_TYPES,
    MIN_PROTOCOL_VERSION,
    Candidate,
    Error,
    Hello,
    ImageBlob,
    JpegBlob,
    Preview,
    Progress,
    Result,
    Submit,
    Welcome,
)


def _frames(header: dict, *blobs: bytes) -> list[bytes]:
    return [MAGIC, msgpack.packb(header, use_bin_type=True), *blobs]


def _submit_header(w: int, h: int, c: int = 4, dtype: str = "u8", nbytes: int | None = None) -> dict:
    size = {"u8": 1, "u16": 2, "f32": 4}.get(dtype, 1)
    n = w * h * c * size if nbytes is None else nbytes
    return {"type": "SUBMIT", "job_id": "j", "image": 0, "params": {},
            "blobs": [{"kind": "image", "w": w, "h": h, "c": c, "dtype": dtype, "nbytes": n}]}


@pytest.mark.parametrize("dtype,np_dtype", [("u8", np.uint8), ("u16", np.uint16), ("f32", np.float32)])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_submit_round_trip_keeps_pixels_bit_exact(dtype, np_dtype, channels):
    rng = np.random.default_rng(channels)
    pixels = (rng.random((5, 7, channels)) * (1 if dtype == "f32" else 200)).astype(np_dtype)
    mask = (rng.random((5, 7)) > 0.5).astype(np.uint8) * 255
    msg = Submit("job-1", ImageBlob.from_numpy(pixels), ImageBlob.from_numpy(mask), {"mode": "solve", "steps": 3}, 0.25)
    frames = encode(msg)
    assert frames[0] == MAGIC and len(frames) == 4
    got = decode([bytes(f) for f in frames])
    assert isinstance(got, Submit) and got.job_id == "job-1" and got.params == {"mode": "solve", "steps": 3}
    assert got.image.dtype == dtype and (got.image.width, got.image.height, got.image.channels) == (7, 5, channels)
    np.testing.assert_array_equal(got.image.to_numpy(), pixels)
    np.testing.assert_array_equal(got.mask.to_numpy()[:, :, 0], mask)
    assert got.preview_interval == 0.25


def test_result_with_candidates_and_preview_round_trip():
    imgs = [np.full((4, 4, 3), i, np.uint8) for i in range(3)]
    res = Result("j", [Candidate(ImageBlob.from_numpy(a), 10 + i, 1e-3 * i, i == 0, 50) for i, a in enumerate(imgs)],
                 "tiny", {"block": 8, "phase": [1, 2], "detected": True})
    got = decode(encode(res))
    assert [c.seed for c in got.candidates] == [10, 11, 12]
    assert [int(c.image.to_numpy()[0, 0, 0]) for c in got.candidates] == [0, 1, 2]
    assert got.candidates[0].eps_reached is True and got.analysis["phase"] == [1, 2]
    prev = decode(encode(Preview("j", 3, JpegBlob(16, 8, b"\xff\xd8jpegbytes"))))
    assert bytes(prev.image.data) == b"\xff\xd8jpegbytes" and prev.image.width == 16


def test_unknown_fields_are_ignored_and_defaults_apply():
    got = decode(_frames({"type": "HELLO", "protocol": 1, "client": "x", "future_field": {"a": [1, 2]}}))
    assert isinstance(got, Hello) and got.client == "x" and got.token is None and got.min_protocol == MIN_PROTOCOL_VERSION


@pytest.mark.parametrize(
    "frames,code",
    [
        ([b"PULSE/1"], "MALFORMED"),  # no header
        ([b"garbage", b"\x80"], "BAD_MAGIC"),
        ([MAGIC, b"\x93\x01"], "MALFORMED"),  # truncated msgpack array
        ([MAGIC, msgpack.packb([1, 2, 3])], "MALFORMED"),  # header is not a map
        ([MAGIC, msgpack.packb({1: 2})], "MALFORMED"),  # non-string map key (strict_map_key)
        ([MAGIC, msgpack.packb({"type": "NOPE"})], "UNKNOWN_TYPE"),
        ([MAGIC, msgpack.packb({"type": 7})], "MALFORMED"),
        ([MAGIC, msgpack.packb({"type": "HELLO", "protocol": "1"})], "BAD_FIELD"),  # wrong type
        ([MAGIC, msgpack.packb({"type": "HELLO", "protocol": True})], "BAD_FIELD"),  # bool is not an int
        ([MAGIC, msgpack.packb({"type": "CANCEL"})], "MISSING_FIELD"),
        ([MAGIC, b"\xc1"], "MALFORMED"),  # reserved byte
        ([MAGIC, msgpack.packb({"type": "HELLO"}) + b"\x00"], "MALFORMED"),  # trailing data
    ],
)
def test_malformed_messages_raise_protocol_error(frames, code):
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == code


def test_header_cap_is_checked_before_unpacking():
    huge = msgpack.packb({"type": "HELLO", "client": "x" * 70_000})
    with pytest.raises(ProtocolError) as err:
        decode([MAGIC, huge])
    assert err.value.code == "HEADER_TOO_LARGE"
    # Container limits inside the cap: a 2000-element array is refused by unpackb itself.
    with pytest.raises(ProtocolError):
        decode([MAGIC, msgpack.packb({"type": "STATUS_REPLY", "jobs": [{}] * 2000})])


def test_header_claiming_100000_squared_pixels_is_refused_without_allocating():
    frames = _frames(_submit_header(100_000, 100_000), b"\x00" * 16)
    with pytest.raises(ProtocolError) as err:
        decode(frames)
    assert err.value.code == "TOO_LARGE"


@pytest.mark.parametrize(
    "header,blob,code",
    [
        (_submit_header(4, 4, nbytes=63), b"\x00" * 63, "BAD_BLOB"),  # w*h*c*size != nbytes
        (_submit_header(4, 4), b"\x00" * 63, "BAD_BLOB"),  # frame shorter than described
        (_submit_header(4, 4, c=5, nbytes=80), b"\x00" * 80, "BAD_BLOB"),  # 5 channels
        (_submit_header(4, 4, dtype="f64", nbytes=128), b"\x00" * 128, "BAD_BLOB"),
        (_submit_header(0, 4, nbytes=0), b"", "BAD_BLOB"),
        (_submit_header(20000, 1, c=1), b"\x00" * 20000, "TOO_LARGE"),  # side cap
        ({**_submit_header(4, 4), "image": 3}, b"\x00" * 64, "BAD_BLOB"),  # index out of range
        ({**_submit_header(4, 4), "mask": 0}, b"\x00" * 64, "BAD_BLOB"),  # one blob used twice
    ],
)
def test_blob_descriptors_are_checked(header, blob, code):
    with pytest.raises(ProtocolError) as err:
        decode(_frames(header, blob))
    assert err.value.code == code


def test_blob_count_must_match_frames_and_cap():
    with pytest.raises(ProtocolError) as err:
        decode(_frames(_submit_header(2, 2)))  # descriptor but no frame
    assert err.value.code == "BLOB_MISMATCH"
    small = Limits(max_blobs=1)
    with pytest.raises(ProtocolError) as err:
        decode(encode(Result("j", [Candidate(ImageBlob(1, 1, 1, "u8", b"a"), 0, 0.0, True, 1)] * 2, "m")), small)
    assert err.value.code == "TOO_MANY_BLOBS"


def test_pixel_and_byte_caps_follow_the_limits():
    limits = Limits(max_pixels=100, max_blob_bytes=1000)
    ok = encode(Submit("j", ImageBlob(10, 10, 1, "u8", bytes(100))))
    decode(ok, limits)
    with pytest.raises(ProtocolError):
        decode(encode(Submit("j", ImageBlob(11, 10, 1, "u8", bytes(110)))), limits)
    with pytest.raises(ProtocolError):
        decode(encode(Submit("j", ImageBlob(10, 10, 3, "f32", bytes(1200)))), limits)


def test_direction_filter_rejects_server_messages_at_the_daemon():
    frames = encode(Welcome(1, "0", "s", 1000, "cpu"))
    with pytest.raises(ProtocolError) as err:
        decode(frames, allowed=CLIENT_TYPES)
    assert err.value.code == "UNEXPECTED_TYPE"


def test_encode_checks_blob_sizes():
    with pytest.raises(ProtocolError):
        encode(Submit("j", ImageBlob(4, 4, 3, "u8", bytes(10))))


def test_error_and_progress_round_trip():
    e = decode(encode(Error("VERSION_MISMATCH", "old", supported=[1])))
    assert e.supported == [1] and e.job_id is None
    p = decode(encode(Progress("j", 3, 10, {"L2": 0.5, "GEOCROSS": 1}, 1e-3)))
    assert p.losses == {"L2": 0.5, "GEOCROSS": 1.0} and p.best_error == 1e-3


def test_protocol_package_imports_without_torch_numpy_or_platformdirs():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'numpy', 'platformdirs', 'pulse_server', 'PIL'):\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import protocol, protocol.client, protocol.codec, protocol.messages, protocol.endpoint, protocol.errors, protocol.job\n"
        "from protocol.messages import ImageBlob, Submit\n"
        "from protocol.codec import encode, decode\n"
        "m = decode(encode(Submit('j', ImageBlob(2, 1, 3, 'u8', bytes(6)))))\n"
        "assert bytes(m.image.data) == bytes(6)\n"
        "print(protocol.endpoint.default_endpoint())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


# ---- fuzzing: the decoder's only failure mode is ProtocolError ------------------------------------

_msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=20) | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
_type_names = st.sampled_from(sorted(["HELLO", "SUBMIT", "RESULT", "PREVIEW", "CANCEL", "STATUS_REPLY", "ERROR", "WELCOME", "X"]))


def _must_only_raise_protocol_error(frames):
    try:
        decode(frames)
    except ProtocolError:
        pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), min_size=0, max_size=5))
def test_fuzz_raw_frames(frames):
    _must_only_raise_protocol_error(frames)
    _must_only_raise_protocol_error([MAGIC, *frames])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_type_names, st.dictionaries(st.sampled_from(["job_id", "image", "mask", "params", "candidates", "blobs", "protocol",
                                                     "token", "code", "message", "step", "jobs", "supported", "session"]),
                                    _msgpack_values, max_size=6),
       st.lists(st.binary(max_size=32), max_size=3))
def test_fuzz_structured_headers(mtype, fields, blobs):
    header = {"type": mtype, **fields}
    _must_only_raise_protocol_error([MAGIC, msgpack.packb(header, use_bin_type=True), *blobs])


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 4), st.integers(-3, 70000), st.integers(-3, 70000), st.integers(-2, 6),
       st.sampled_from(["u8", "u16", "f32", "jpeg", "x"]), st.integers(-1, 10**12), st.binary(max_size=64))
def test_fuzz_blob_descriptors(index, w, h, c, dtype, nbytes, blob):
    header = {"type": "SUBMIT", "job_id": "j", "image": index,
              "blobs": [{"kind": "image", "w": w, "h": h, "c": c, "dtype": dtype, "nbytes": nbytes}]}
    _must_only_raise_protocol_error([MAGIC, msgpack.packb(header), blob])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_truncated_and_mutated_valid_messages(data):
    msg = Submit("job", ImageBlob(3, 2, 4, "u8", bytes(range(24))), None, {"mode": "solve"}, 0.5)
    frames = [bytes(f) for f in encode(msg)]
    header = bytearray(frames[1])
    cut = data.draw(st.integers(0, len(header)))
    flips = data.draw(st.lists(st.tuples(st.integers(0, max(0, len(header) - 1)), st.integers(0, 255)), max_size=4))
    for pos, val in flips:
        if pos < len(header):
            header[pos] = val
    _must_only_raise_protocol_error([MAGIC, bytes(header[:cut]), *frames[2:]])
    _must_only_raise_protocol_error([MAGIC, bytes(header), *frames[2:]])


def test_default_limits_allow_a_4096_square_rgba_f32_region():
    assert 4096 * 4096 <= DEFAULT_LIMITS.max_pixels and 4096 * 4096 * 16 <= DEFAULT_LIMITS.max_blob_bytes
