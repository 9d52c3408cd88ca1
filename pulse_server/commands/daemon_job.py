"""One job on the daemon from a CLI process (`pulse solve|depixelate --via-daemon`).

Interrupted — Ctrl-C (SIGINT) or SIGTERM — the process cancels its job on the daemon and exits at once, as the
editor plug-ins do on Cancel: without this, SIGTERM ends the process without a word and the daemon goes on
solving until missed heartbeats tell it, seconds later, that nobody waits for the result.
"""

from __future__ import annotations

import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from protocol.job import JobSettings


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


def run_daemon_job(client: Any, image: Any, mask: Any, settings: JobSettings, *,
                   on_progress: Callable[[Any], None] | None = None,
                   on_estimate: Callable[[str], None] | None = None) -> Any:
    """`client.run_job(...)`; on SIGINT/SIGTERM its CANCEL is sent (not waited for) and Interrupted raised.
    `on_estimate` gets the line saying how long the job will take, when the daemon knows (ACCEPTED)."""
    job_id = uuid.uuid4().hex

    def accepted(msg: Any) -> None:
        if on_estimate is None:
            return
        line = estimate_line(client, msg, settings.model, settings.mode)
        if line:
            on_estimate(line)

    with _interruptible():
        try:
            return client.run_job(image, mask, settings, on_progress=on_progress, job_id=job_id, on_accepted=accepted)
        except Interrupted:
            client.cancel_nowait(job_id)  # leaves during close()'s short linger, followed by BYE
            raise


def estimate_line(client: Any, accepted: Any, model: str, mode: str = "depixelate") -> str:
    """"pulse: estimate: about 40 s (the whole step budget; ...)" from ACCEPTED, or "" when the daemon does not
    know (a model it has not measured on its device yet, a --cluster daemon)."""
    from protocol.estimate_text import describe_estimate

    welcome = client.welcome
    device = welcome.device if welcome is not None else ""
    if not model and welcome is not None and welcome.models:
        model = str(welcome.models[0].get("name", ""))
    text = describe_estimate(getattr(accepted, "estimate_s", 0.0), getattr(accepted, "wait_s", 0.0), device, model)
    return estimate_words(text, mode)


def estimate_words(text: str, mode: str) -> str:
    """The CLI's line around describe_estimate's `text` ("" stays ""): depixelate's search stops early once
    every face matches, so its estimate (the whole step budget) is an upper bound."""
    if not text:
        return ""
    return f"pulse: estimate: {text}" + ("" if mode == "solve" else "; a search that converges ends sooner")
