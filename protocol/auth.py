"""What the daemon and its clients agree on to authenticate a peer (standard library + pyzmq only).

ipc endpoints are authenticated by the socket file's permissions (0600 in a 0700 runtime dir). tcp peers
prove the daemon's token during the ZMTP handshake, checked by the daemon's ZAP handler (RFC 27):

  * loopback tcp: ZMTP PLAIN, user name `PLAIN_USERNAME`, password = the token;
  * a remote daemon (`--allow-remote`): ZMTP CURVE, and the client's key pair is derived from the token
    (`curve_client_keys`), so the handler accepts exactly the public key the token stands for.

HELLO carries the token again (defence in depth). The token itself is `PULSE_TOKEN`, else the token file in
the runtime dir (`endpoint.token_path()`): one line of ASCII, written 0600 by the daemon (`token_file_text`).
"""

from __future__ import annotations

import hashlib
import secrets

PLAIN = b"PLAIN"  # ZAP mechanism names, as libzmq reports them
CURVE = b"CURVE"
PLAIN_USERNAME = b"pulse"
ZAP_DOMAIN = b"pulse"
ZAP_VERSION = b"1.0"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"  # where libzmq asks a context's ZAP handler (RFC 27)
MAX_TOKEN_BYTES = 255  # ZMTP PLAIN carries the password in a length-prefixed byte string
TOKEN_ENCODING = "ascii"
_CURVE_SALT = b"pulse-depixelate CURVE client key\0"


def new_token() -> str:
    """A fresh random token (URL-safe ASCII, 43 characters)."""
    return secrets.token_urlsafe(32)


def token_file_text(token: str) -> str:
    return token + "\n"


def token_from_file_text(text: str) -> str | None:
    """The token a token file's text holds, or None for an empty file."""
    return text.strip() or None


def token_fits(token: str) -> bool:
    """True if ZMTP PLAIN can carry `token` (1..255 bytes of UTF-8)."""
    return 1 <= len(token.encode("utf-8")) <= MAX_TOKEN_BYTES


def plain_password(token: str) -> bytes:
    """The PLAIN password for `token`; libzmq refuses an empty one, so a missing token sends "-" (refused)."""
    return token.encode("utf-8") or b"-"


def curve_client_keys(token: str) -> tuple[bytes, bytes]:
    """The CURVE client key pair (z85 public, z85 secret) that `token` stands for: a remote daemon's ZAP
    handler accepts only this public key, so with CURVE the token is checked at the handshake as well."""
    import zmq
    from zmq.utils import z85

    secret = z85.encode(hashlib.sha256(_CURVE_SALT + token.encode("utf-8")).digest())
    return zmq.curve_public(secret), secret
