"""One job on the daemon from a CLI process (`pulse solve|depixelate --via-daemon`).

Interrupted — Ctrl-C (SIGINT) or SIGTERM — the process cancels its job on the daemon and exits at once, as the
editor plug-ins do on Cancel: without this, SIGTERM ends the process without a word and the daemon goes on
solving until missed heartbeats tell it, seconds later, that nobody waits for the result.
"""

from __future__ import annotations

import signal
import threading
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a job ran; the CLI exits with 128 + `signum`."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _interruptible() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise Interrupted (main thread only; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_daemon_job(client: Any, image: Any, mask: Any, params: dict, *,
                   on_progress: Callable[[Any], None] | None = None) -> Any:
    """`client.run_job(...)`; on SIGINT/SIGTERM its CANCEL is sent (not waited for) and Interrupted raised."""
    job_id = uuid.uuid4().hex
    with _interruptible():
        try:
            return client.run_job(image, mask, params, on_progress=on_progress, job_id=job_id)
        except Interrupted:
            client.cancel_nowait(job_id)  # leaves during close()'s short linger, followed by BYE
            raise
