"""The short soak (bench/soak.py --short, about a minute): a real daemon with the 32² prior under 4 clients, random
cancels, SIGKILLed clients, SIGSTOP, kill -9 + restart, a second daemon, queue limits and bad frames; fails on any
lost or crossed job, unanswered bad frame, daemon crash, or a job cancelled because the daemon was paused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_short_soak_loses_and_crosses_nothing(shared_prior_path):
    out = subprocess.run([sys.executable, str(REPO / "bench" / "soak.py"), "--short", "--weights", str(shared_prior_path)],
                         capture_output=True, text=True, timeout=380, cwd=str(REPO))
    assert out.returncode == 0, out.stdout + out.stderr[-4000:]
