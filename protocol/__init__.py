"""pulse wire protocol v1 and its client; importable with only pyzmq + msgpack (runs inside GIMP and Krita).

See PROTOCOL.md for the spec. Modules: messages (dataclasses), codec (frames <-> messages, limits),
client (PulseClient), endpoint (default endpoint and token path, stdlib only), auth (what client and daemon
agree on to authenticate), launch (the `pulse-server run` command line, stdlib only), errors, layers (plug-in text),
estimate_text (how long a job will take, in words).
"""

PROTOCOL_VERSION = 1
