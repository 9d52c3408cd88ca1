"""One module per group of sub-commands; each exposes `register(subparsers)`.

A module registers its parsers and sets `func=<callable(args) -> int>` on each. Modules import torch and
other heavy packages inside their `func`, never at import, so `pulse-server status` stays instant.
"""
