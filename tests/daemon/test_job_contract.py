"""The job contract (protocol/job.py): each job parameter declared once, and every route a request can take — the
contract itself, the CLI's options, the client, a real daemon process — gives the same answer at each limit ± 1.

The cases come from the daemon's effective spec (`CASES`, derived from it, never listed by hand); each route is
one function (param, value) -> accepted? (None: the route cannot express that value). A new route (an editor's
settings code) is one more function and one more line in `ROUTES`.
"""

from __future__ import annotations

import ast
import math
import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from daemon_fixture import start_daemon

from protocol.codec import MAGIC, decode, encode
from protocol.errors import ErrorCode, ProtocolError
from protocol.job import MAX_REGION_SIDE, PARAMS, JobSettings, Param, ParamError, spec_from_wire, spec_to_wire
from protocol.messages import (
    MIN_PROTOCOL_VERSION,
    PROTOCOL_VERSION,
    SERVER_TYPES,
    Accepted,
    Error,
    Failed,
    ImageBlob,
    Result,
    Welcome,
)
from pulse_server.jobs import daemon_spec

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
SPEC = daemon_spec()  # what a daemon started without --max-steps applies


# ------------------------------------------------------------------------------------------------ the cases


def _cases(spec: dict[str, Param]) -> list[tuple[str, Any, bool]]:
    """(param, value, accepted?) at each limit ± 1 of every parameter, plus values of the wrong type."""
    out: list[tuple[str, Any, bool]] = []
    for name, p in spec.items():
        if p.kind is bool:
            out += [(name, True, True), (name, False, True), (name, "yes", False), (name, 1, False)]
        elif p.choices is not None:
            out += [(name, c, True) for c in p.choices] + [(name, "no-such-" + name, False), (name, 3, False)]
        elif p.kind is int:
            lo, hi = int(p.low), int(p.high)
            out += [(name, v, lo <= v <= hi) for v in (lo - 1, lo, lo + 1, hi - 1, hi, hi + 1)]
            out += [(name, 1.5, False), (name, "3", False), (name, True, False)]
        else:  # float: "± 1" is the neighbouring double
            lo, hi = p.low, p.high
            out += [(name, math.nextafter(lo, -math.inf), False), (name, lo, True), (name, hi, True),
                    (name, math.nextafter(hi, math.inf), False), (name, float("nan"), False), (name, "0.1", False)]
    return out


CASES = _cases(SPEC)


def test_the_cases_cover_every_parameter_at_its_limits():
    assert {name for name, _, _ in CASES} == set(PARAMS)
    steps = [(v, ok) for name, v, ok in CASES if name == "steps"]
    assert (PARAMS["steps"].high, True) in steps and (PARAMS["steps"].high + 1, False) in steps


# ------------------------------------------------------------------------------------------------ the routes


def contract_route(name: str, value: Any) -> bool | None:
    try:
        JobSettings.from_wire({name: value}, SPEC)
        return True
    except ParamError as exc:
        assert exc.code == ErrorCode.BAD_PARAMS and exc.param == name
        return False


def cli_route(name: str, value: Any) -> bool | None:
    """`pulse depixelate … --NAME VALUE`, parsed by the real parser, then turned into the job's settings."""
    from pulse_server.cli import PULSE_COMMANDS, _build_parser
    from pulse_server.commands import args as args_

    p = PARAMS[name]
    if name in ("mode", "model") or not isinstance(value, p.kind if p.kind is not float else (int, float)):
        return None  # not a CLI option (mode is the command; --model also takes files), or not text it can get
    if p.kind is bool:
        argv = [f"--{name}"] if value else []
    else:
        argv = [f"--{name}", repr(value) if isinstance(value, float) else str(value)]
    parser = _build_parser("pulse", PULSE_COMMANDS, "")
    try:
        args = parser.parse_args(["depixelate", "in.png", "--box", "0,0,8,8", "-o", "out.png", *argv])
    except SystemExit as exc:
        assert exc.code == 2
        return False
    settings = args_.job_settings(args, "depixelate")
    assert getattr(settings, name) == value
    return True


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    d = start_daemon(tmp_path_factory.mktemp("contract"), weights="noop:", endpoint="tcp")
    yield d
    d.stop()


@pytest.fixture(scope="module")
def raw(daemon):
    """A bare DEALER that said HELLO: SUBMITs go out as hand-made frames, past the client's own checks."""
    s = daemon.raw_socket()
    hello = {"type": "HELLO", "protocol": PROTOCOL_VERSION, "min_protocol": MIN_PROTOCOL_VERSION, "client": "raw",
             "token": daemon.token, "session": uuid.uuid4().hex}
    assert isinstance(_ask(s, [MAGIC, msgpack.packb(hello)]), Welcome)
    yield s
    s.close(0)


def _ask(s, frames: list, job_id: str | None = None, timeout: float = 20.0):
    """Send `frames`; the first reply (about `job_id`, when given) that is not a heartbeat."""
    s.send_multipart(frames)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not s.poll(int((deadline - time.monotonic()) * 1000) + 1):
            break
        msg = decode(s.recv_multipart(), allowed=SERVER_TYPES)
        if job_id is None or getattr(msg, "job_id", None) == job_id:
            if msg.TYPE not in ("PING", "PONG", "JOB_STATE", "PROGRESS"):
                return msg
    raise AssertionError("no answer from the daemon")


def _submit_frames(job_id: str, params: dict, width: int = 8, height: int = 8) -> list:
    header = {"type": "SUBMIT", "job_id": job_id, "image": 0, "params": params,
              "blobs": [{"kind": "image", "w": width, "h": height, "c": 3, "dtype": "u8", "nbytes": width * height * 3}]}
    return [MAGIC, msgpack.packb(header), bytes(width * height * 3)]


def daemon_route(sock) -> Callable[[str, Any], bool | None]:
    def route(name: str, value: Any) -> bool | None:
        jid = uuid.uuid4().hex
        reply = _ask(sock, _submit_frames(jid, {name: value}), jid)
        if isinstance(reply, Failed):
            assert reply.code == "BAD_PARAMS" and f"params.{name}" in reply.message, reply
            return False
        assert isinstance(reply, Accepted), reply
        assert isinstance(_until_final(sock, jid), Result)  # and it ran
        return True

    return route


def _until_final(sock, jid: str):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sock.poll(1000):
            msg = decode(sock.recv_multipart(), allowed=SERVER_TYPES)
            if getattr(msg, "job_id", None) == jid and isinstance(msg, (Result, Failed)):
                return msg
    raise AssertionError(f"job {jid} never ended")


def client_route(client) -> Callable[[str, Any], bool | None]:
    def route(name: str, value: Any) -> bool | None:
        try:
            accepted = client.submit(ImageBlob(8, 8, 3, "u8", bytes(192)), None, {name: value})
        except ParamError as exc:
            assert exc.code == "BAD_PARAMS" and exc.param == name
            return False
        for ev in client.events(accepted.job_id):
            if isinstance(ev, (Result, Failed)):
                assert isinstance(ev, Result), ev
        return True

    return route


def test_every_route_gives_the_same_answer_at_each_limit(daemon, raw):
    with daemon.client() as client:
        client.connect()
        routes = {"contract": contract_route, "cli": cli_route, "daemon": daemon_route(raw),
                  "client": client_route(client)}
        disagree = []
        for name, value, accepted in CASES:
            for route_name, route in routes.items():
                got = route(name, value)
                if got is not None and got != accepted:
                    disagree.append((route_name, name, value, accepted, got))
    assert not disagree, disagree


# ------------------------------------------------------------------------------------------- the handshake


def test_welcome_carries_the_daemons_contract_and_the_real_region_limit(daemon):
    with daemon.client() as c:
        welcome = c.connect()
    assert welcome.protocol == PROTOCOL_VERSION == 2
    assert spec_from_wire(welcome.params) == SPEC
    assert welcome.params["model"]["choices"][0] == "" and "ffhq-256" in welcome.params["model"]["choices"]
    assert welcome.limits["max_region_side"] == welcome.limits["max_side"] == MAX_REGION_SIDE


def test_a_v1_plugin_is_told_to_update_and_the_daemon_carries_on(daemon):
    s = daemon.raw_socket()
    try:
        v1 = {"type": "HELLO", "protocol": 1, "min_protocol": 1, "client": "gimp", "client_version": "0.9",
              "token": daemon.token}
        reply = _ask(s, [MAGIC, msgpack.packb(v1)])
    finally:
        s.close(0)
    assert isinstance(reply, Error) and reply.code == "VERSION_MISMATCH" and reply.supported == [PROTOCOL_VERSION]
    assert "update the plug-in" in reply.message and "pulse-server install-plugin gimp" in reply.message
    assert "protocol 1..1" in reply.message and f"speaks {PROTOCOL_VERSION}" in reply.message
    assert daemon.alive()
    with daemon.client() as c:
        assert c.connect().protocol == PROTOCOL_VERSION


def test_a_region_over_the_limit_is_refused_before_it_is_queued(daemon, raw):
    jid = uuid.uuid4().hex
    reply = _ask(raw, _submit_frames(jid, {}, MAX_REGION_SIDE + 1, 4), jid)
    assert isinstance(reply, Failed) and reply.code == "TOO_LARGE" and str(MAX_REGION_SIDE) in reply.message
    jid = uuid.uuid4().hex
    assert isinstance(_ask(raw, _submit_frames(jid, {}, MAX_REGION_SIDE, 4), jid), Accepted)
    assert isinstance(_until_final(raw, jid), Result)
    with daemon.client() as c:  # the client refuses it without sending it
        c.connect()
        with pytest.raises(ProtocolError) as err:
            c.submit(ImageBlob(MAX_REGION_SIDE + 1, 4, 3, "u8", bytes((MAX_REGION_SIDE + 1) * 12)))
    assert err.value.code == "TOO_LARGE"


def test_max_steps_narrows_what_the_daemon_offers_and_accepts(tmp_path):
    d = start_daemon(tmp_path, weights="noop:", endpoint="tcp", args=["--max-steps", "50"])
    try:
        with d.client() as c:
            welcome = c.connect()
            steps = spec_from_wire(welcome.params)["steps"]
            assert (steps.low, steps.high, steps.default) == (1, 50, 50)
            with pytest.raises(ParamError):
                c.submit(ImageBlob(8, 8, 3, "u8", bytes(192)), None, JobSettings(steps=51))
        s = d.raw_socket()
        try:
            assert isinstance(_ask(s, [MAGIC, msgpack.packb({"type": "HELLO", "token": d.token})]), Welcome)
            for value, ok in ((50, True), (51, False)):
                jid = uuid.uuid4().hex
                reply = _ask(s, _submit_frames(jid, {"steps": value}), jid)
                assert isinstance(reply, Accepted if ok else Failed), reply
        finally:
            s.close(0)
    finally:
        d.stop()


# ------------------------------------------------------------------------------------------- declared once


def _sources(*folders: str) -> list[Path]:
    return [f for d in folders for f in sorted((REPO / d).rglob("*.py")) if "__pycache__" not in f.parts]


# Where job settings are written. The editors' settings join this list once they are built from PARAMS (bench/
# scripts keep their own sweep defaults on purpose).
SCANNED = ("protocol", "pulse_server")


_NUMBER = r"(?P<v>-?\d[\d_]*(?:\.\d*)?(?:e-?\d+)?(?:\s*\*\*\s*\d+(?:\s*-\s*1)?)?)(?![\w.])"


def _declarations() -> list[tuple[re.Pattern, set[float] | None]]:
    """Writing a parameter's default or a limit as a literal: `steps: int = 100`, `"--steps" … default=100`,
    `steps <= 5000`, `eps: float = 2e-3`, `MAX_BLOCK = 64`, or one of the choice tuples. Each pattern comes with
    the values that make a match a declaration (None: any)."""
    pats: list[tuple[re.Pattern, set[float] | None]] = []
    for name, p in PARAMS.items():
        if p.kind is str or p.kind is bool:
            continue
        values = {float(p.default), float(p.high)} | ({float(p.low)} if p.kind is float else set())
        pats += [(re.compile(rf"\b{name}\s*:\s*[^=\n]+=\s*{_NUMBER}"), values),
                 (re.compile(rf"[\"']--{name}[\"'].*default\s*=\s*{_NUMBER}"), values),
                 (re.compile(rf"\b{name}\s*[<>]=?\s*{_NUMBER}"), values)]
    pats.append((re.compile(r"\bMAX_(?:REGION_SIDE|SIDE|BLOCK)\s*=\s*\d"), None))
    for choices in {p.choices for p in PARAMS.values() if p.choices}:
        pats.append((re.compile(r"\(\s*" + r",\s*".join(f'"{c}"' for c in choices) + r"\s*\)"), None))
    return pats


def _declares(line: str, pats: list[tuple[re.Pattern, set[float] | None]]) -> bool:
    for pat, values in pats:
        m = pat.search(line)
        if m and (values is None or _value(m.group("v")) in values):
            return True
    return False


def _value(literal: str) -> float:
    """A matched number literal: 100, 2e-3, 1_000, 2**31 - 1."""
    text = literal.replace("_", "").replace(" ", "")
    if "**" not in text:
        return float(text)
    base, _, rest = text.partition("**")
    exp, _, minus = rest.partition("-")
    return float(int(base) ** int(exp) - int(minus or 0))


def test_each_parameters_default_and_range_is_declared_once():
    pats = _declarations()
    found = [f"{f.relative_to(REPO)}:{i}: {line.strip()}"
             for f in _sources(*SCANNED) for i, line in enumerate(f.read_text().splitlines(), 1)
             if _declares(line, pats)]
    assert found and all(line.startswith("protocol/job.py:") for line in found), found


def test_the_declaration_check_finds_a_copy():
    pats = _declarations()
    copies = ["    steps: int = 100", 'p.add_argument("--candidates", type=int, default=3)', "if block > 64:",
              'METHODS = ("ilo", "pulse")', "MAX_SIDE = 4096", "    eps: float = 2e-3", "seed < 2**31 - 1"]
    assert [c for c in copies if not _declares(c, pats)] == []
    assert not _declares("if block <= 1 or not detected:", pats) and not _declares("seed: int = 0", pats)


# ------------------------------------------------------------------------------------------------ error codes


def _codes_in(path: Path) -> set[str]:
    """String codes given to an error, a FAILED/ERROR, or compared with a `.code`, in one source file."""
    out: set[str] = set()
    is_code = re.compile(r"^[A-Z][A-Z0-9_]{2,}$").match
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            fn = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if re.search(r"(Error|Failed|Mismatch|NotRunning|Full|Cancelled)$", fn):
                args = node.args[1:] + [k.value for k in node.keywords if k.arg == "code"]
                out |= {a.value for a in args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
        elif isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "code" for t in node.targets):
            if isinstance(node.value, ast.Constant):
                out.add(node.value.value)
        elif isinstance(node, ast.Compare) and "code" in ast.unparse(node.left):
            for c in node.comparators:
                items = c.elts if isinstance(c, (ast.Tuple, ast.List, ast.Set)) else [c]
                out |= {i.value for i in items if isinstance(i, ast.Constant) and isinstance(i.value, str)}
    return {c for c in out if isinstance(c, str) and is_code(c)}


def test_every_error_code_sent_or_dispatched_on_is_in_the_enum():
    used = set().union(*(_codes_in(f) for f in _sources("protocol", "pulse_server", "gimp_plugin", "krita_plugin")))
    assert {"BAD_PARAMS", "NO_MOSAIC", "QUEUE_FULL", "BAD_TOKEN"} <= used  # the scan sees them
    assert used <= {c.value for c in ErrorCode}, sorted(used - {c.value for c in ErrorCode})


def test_error_codes_travel_as_plain_strings_and_unknown_ones_survive():
    frames = encode(Failed("j", ErrorCode.NO_MOSAIC, "no mosaic"))
    assert msgpack.unpackb(frames[1])["code"] == "NO_MOSAIC" and f"{ErrorCode.NO_MOSAIC}" == "NO_MOSAIC"
    assert ProtocolError("x", "FUTURE_CODE").code == "FUTURE_CODE"  # a newer daemon's code is not a crash
    assert ProtocolError("x", "BAD_TOKEN").code is ErrorCode.BAD_TOKEN


# --------------------------------------------------------------------------------------------- the spec


def test_a_spec_survives_the_wire_and_a_daemon_cannot_widen_it():
    assert spec_from_wire(spec_to_wire(SPEC)) == SPEC
    wider = spec_to_wire(PARAMS)
    wider["steps"] = {**wider["steps"], "max": 10**9, "default": 10**9}
    wider["block"] = {"min": "x", "max": None}  # malformed: the declared range applies
    wider["future"] = {"type": "int", "default": 1}  # unknown: ignored
    got = spec_from_wire(wider)
    assert got["steps"].high == PARAMS["steps"].high and got["steps"].default == PARAMS["steps"].default
    assert got["block"] == PARAMS["block"] and "future" not in got


def test_a_refusal_names_the_parameter_and_its_range_in_plain_numbers():
    with pytest.raises(ParamError) as err:
        JobSettings(seed=2**31).checked()
    assert err.value.param == "seed" and "between -1 and 2147483647" in err.value.message


def test_the_codec_refuses_bad_params_before_sending_and_on_arrival():
    from protocol.messages import Submit

    bad = Submit("j1", ImageBlob(2, 2, 3, "u8", bytes(12)), None, {"steps": 0})
    with pytest.raises(ParamError):
        encode(bad)
    frames = _submit_frames("j1", {"candidates": 17})
    with pytest.raises(ParamError) as err:
        decode(frames)
    assert err.value.job_id == "j1" and err.value.param == "candidates"
    assert decode(_submit_frames("j2", {"steps": 7, "future": [1]})).params["steps"] == 7
