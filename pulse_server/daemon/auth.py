"""Who may talk to the daemon: the token, the ZAP handler that checks it at the ZMTP handshake (tcp), and
HELLO's own check of it. The facts the client shares (mechanisms, ZAP domain, token format, the CURVE key a
token stands for) are in `protocol.auth`.

ipc: the socket file's permissions authenticate; no token. tcp on loopback: PLAIN, the password is the token.
tcp elsewhere (--allow-remote): CURVE with the daemon's own key pair (config dir), and the client's public
key must be the one derived from the token. The ZAP socket is answered by the daemon's loop (`on_zap`):
one thread owns every socket.
"""

from __future__ import annotations

import hmac
import logging
import os

import zmq

from protocol import auth as wire
from protocol import endpoint as ep

from .. import paths
from ..errors import PulseError
from .config import LogThrottle

log = logging.getLogger("pulse.daemon")

ZAP_BATCH = 64  # handshakes answered per loop turn


class Auth:
    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.token: str | None = None  # None: ipc, no token asked
        self.refused_peers = 0  # tcp handshakes the ZAP handler denied (in STATUS_REPLY's server info)
        self.zap: zmq.Socket | None = None
        self._token_bytes = b""
        self._curve_client_key: bytes | None = None  # raw 32-byte public key the token stands for
        self._throttle = LogThrottle()

    def secure(self, ctx: zmq.Context, router: zmq.Socket) -> None:
        """A tcp ROUTER, before its bind: the token, the ZAP handler (without one, PLAIN would let everybody
        in), and PLAIN (loopback) or CURVE (remote)."""
        self.token = paths.read_or_create_token()
        self._start_zap(ctx)
        router.zap_domain = wire.ZAP_DOMAIN
        if ep.is_loopback(self.endpoint):
            router.plain_server = True
        else:
            _setup_curve(router)

    def _start_zap(self, ctx: zmq.Context) -> None:
        token = self.token
        if token is None:
            raise RuntimeError("no token to check handshakes against: secure() reads it before starting ZAP")
        if not wire.token_fits(token):
            raise PulseError(f"the token must be 1..{wire.MAX_TOKEN_BYTES} bytes (PULSE_TOKEN or {paths.token_path()})", "BAD_TOKEN")
        self._token_bytes = token.encode("utf-8")
        if not ep.is_loopback(self.endpoint) and zmq.has("curve"):
            from zmq.utils import z85

            self._curve_client_key = z85.decode(wire.curve_client_keys(token)[0])
        zap = ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(wire.ZAP_ENDPOINT)
        self.zap = zap

    def _zap_socket(self) -> zmq.Socket:
        if self.zap is None:
            raise RuntimeError("no ZAP handler: only a tcp endpoint has one, started by secure()")
        return self.zap

    def answer_zap(self) -> None:
        """Answer the handshakes waiting now (at most ZAP_BATCH)."""
        zap = self._zap_socket()
        for _ in range(ZAP_BATCH):
            if not zap.poll(0):
                return
            self.on_zap()

    def on_zap(self) -> None:
        """Answer one ZAP request: [version, request id, domain, address, routing id, mechanism, *credentials]
        -> [version, request id, status code, status text, user id, metadata]."""
        zap = self._zap_socket()
        frames = zap.recv_multipart(zmq.NOBLOCK)
        if len(frames) < 6 or frames[0] != wire.ZAP_VERSION:  # not a ZAP 1.0 request: refuse (REP must still answer)
            zap.send_multipart([wire.ZAP_VERSION, frames[1] if len(frames) > 1 else b"", b"500", b"bad ZAP request", b"", b""])
            return
        request_id, address, mechanism, creds = frames[1], frames[3], frames[5], frames[6:]
        if self.credentials_ok(mechanism, creds):
            zap.send_multipart([wire.ZAP_VERSION, request_id, b"200", b"OK", wire.PLAIN_USERNAME, b""])
            return
        self.refused_peers += 1
        log.log(self._throttle.level(), "refused a %s peer from %s at the handshake: wrong or missing token",
                mechanism.decode("ascii", "replace")[:16], address.decode("ascii", "replace")[:64])
        zap.send_multipart([wire.ZAP_VERSION, request_id, b"400", b"wrong or missing token", b"", b""])

    def credentials_ok(self, mechanism: bytes, creds: list[bytes]) -> bool:
        """PLAIN: [user, password] with the token as password; CURVE: [client public key] derived from it."""
        if mechanism == wire.PLAIN and len(creds) == 2 and self._token_bytes:
            return hmac.compare_digest(creds[1], self._token_bytes)
        if mechanism == wire.CURVE and len(creds) == 1 and self._curve_client_key is not None:
            return hmac.compare_digest(creds[0], self._curve_client_key)
        return False

    def hello_ok(self, given: str | None) -> bool:
        """HELLO's token (defence in depth behind the handshake); any HELLO passes where no token is asked."""
        if self.token is None:
            return True
        return hmac.compare_digest((given or "").encode("utf-8", "replace"), self.token.encode("utf-8"))

    def close(self) -> None:
        if self.zap is not None:
            self.zap.close(0)
            self.zap = None


def _setup_curve(router: zmq.Socket) -> None:
    if not zmq.has("curve"):
        raise PulseError("this libzmq has no CURVE support; cannot bind a non-loopback address safely", "NO_CURVE")
    key_dir = paths.ensure_private_dir(paths.config_dir())
    secret_file, public_file = key_dir / "curve.secret", key_dir / "curve.public"
    if not secret_file.exists():
        public, secret = zmq.curve_keypair()
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secret)
        public_file.write_bytes(public)
    router.curve_server = True
    router.curve_secretkey = secret_file.read_bytes().strip()
    log.warning("remote clients need PULSE_SERVER_KEY=%s (also in %s) and the token", public_file.read_text().strip(), public_file)
