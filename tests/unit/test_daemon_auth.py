"""Authentication facts shared by client and daemon (protocol.auth), the token file, and the daemon's checks
of PLAIN/CURVE credentials and of HELLO's token. The handshake itself over tcp: tests/daemon/test_zap_auth.py."""

from __future__ import annotations

import os
import stat

import zmq

from protocol import auth as wire
from protocol import endpoint as ep
from pulse_server import paths
from pulse_server.daemon.auth import Auth


def test_curve_keys_follow_the_token_and_form_a_key_pair():
    public, secret = wire.curve_client_keys("t0ken")
    assert wire.curve_client_keys("t0ken") == (public, secret)
    assert wire.curve_client_keys("other")[0] != public
    assert zmq.curve_public(secret) == public and len(public) == 40


def test_the_token_file_the_daemon_writes_is_what_the_client_reads(tmp_path, monkeypatch):
    monkeypatch.delenv("PULSE_TOKEN", raising=False)
    path = tmp_path / "run" / "token"
    token = paths.read_or_create_token(path)
    assert wire.token_fits(token) and path.read_text(encoding=wire.TOKEN_ENCODING) == wire.token_file_text(token)
    assert ep.read_token(path) == token == paths.read_or_create_token(path)
    if os.name == "posix":
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_tokens_plain_cannot_carry_are_refused():
    assert wire.token_fits("x" * wire.MAX_TOKEN_BYTES) and not wire.token_fits("x" * (wire.MAX_TOKEN_BYTES + 1))
    assert not wire.token_fits("") and wire.plain_password("") == b"-"


def _auth_with(token: str, endpoint: str = "tcp://127.0.0.1:1") -> tuple[Auth, zmq.Context]:
    ctx = zmq.Context()
    a = Auth(endpoint)
    a.token = token
    a._start_zap(ctx)
    return a, ctx


def test_plain_needs_the_token_as_password(monkeypatch):
    a, ctx = _auth_with("s3cret")
    try:
        assert a.credentials_ok(wire.PLAIN, [wire.PLAIN_USERNAME, b"s3cret"])
        assert not a.credentials_ok(wire.PLAIN, [wire.PLAIN_USERNAME, b"s3cre"])
        assert not a.credentials_ok(wire.PLAIN, [b"s3cret"])
        assert not a.credentials_ok(wire.CURVE, [b"\0" * 32])  # loopback: no CURVE key is accepted
        assert not a.credentials_ok(b"NULL", [])
    finally:
        a.close()
        ctx.term()


def test_curve_needs_the_key_the_token_stands_for():
    a, ctx = _auth_with("s3cret", "tcp://0.0.0.0:1")
    try:
        from zmq.utils import z85

        assert a.credentials_ok(wire.CURVE, [z85.decode(wire.curve_client_keys("s3cret")[0])])
        assert not a.credentials_ok(wire.CURVE, [z85.decode(wire.curve_client_keys("guess")[0])])
    finally:
        a.close()
        ctx.term()


def test_hello_token_is_checked_only_where_one_is_asked():
    assert Auth("ipc:///x").hello_ok(None)
    a = Auth("tcp://127.0.0.1:1")
    a.token = "s3cret"
    assert a.hello_ok("s3cret") and not a.hello_ok("nope") and not a.hello_ok(None)


def test_the_zap_handler_answers_a_request_and_counts_refusals():
    a, ctx = _auth_with("s3cret")
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.connect(wire.ZAP_ENDPOINT)
    try:
        def ask(password: bytes) -> list[bytes]:
            req.send_multipart([wire.ZAP_VERSION, b"1", wire.ZAP_DOMAIN, b"127.0.0.1", b"", wire.PLAIN,
                                wire.PLAIN_USERNAME, password])
            assert a.zap.poll(2000)
            a.answer_zap()
            return req.recv_multipart()

        assert ask(b"s3cret")[2] == b"200"
        assert ask(b"wrong")[2] == b"400" and a.refused_peers == 1
    finally:
        req.close(0)
        a.close()
        ctx.term()
