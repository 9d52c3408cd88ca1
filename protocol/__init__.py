"""pulse wire protocol v2 and its client; importable with only pyzmq + msgpack (runs inside GIMP and Krita).

See PROTOCOL.md for the spec. Modules: messages (dataclasses), codec (frames <-> messages, limits),
job (the job contract: JobSettings, PARAMS), client (PulseClient), endpoint (default endpoint and token path,
stdlib only), auth (what client and daemon agree on to authenticate), launch (the `pulse-server run` command
line, stdlib only), errors (ErrorCode, the PulseError base), layers (plug-in text), estimate_text (how long a job
will take, in words).
"""

from .messages import PROTOCOL_VERSION

__all__ = ["PROTOCOL_VERSION"]
