"""`python -m pulse_server.service ARGS` is `pulse-server ARGS`: what autostart entries run.

Entries name the interpreter explicitly (no console script on Windows, where pythonw.exe runs us), so
this module is the console-script-free way in.
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    # pythonw.exe (Windows autostart) has no stdout/stderr at all; give writes somewhere harmless to go.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w", encoding="utf-8"))
    from pulse_server.cli import main_server

    return main_server()


if __name__ == "__main__":
    sys.exit(main())
