"""Flow control: what leaves for each session, and what waits or is dropped when its client is slow.

RESULT/FAILED/state messages and replies must arrive: they wait in the session's outbox (at most MAX_OUTBOX,
oldest dropped) while the client's pipe is full. PROGRESS and PREVIEW are coalesced to the latest one per job,
PROGRESS at most every PROGRESS_INTERVAL per job, and they go only when nothing more important waits; an
update that cannot leave at once is superseded, never queued. A slow client gets fewer updates; the daemon's
memory does not grow.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from protocol.codec import Limits, encode
from protocol.messages import Message

from .sessions import Session
from .transport import Transport

log = logging.getLogger("pulse.daemon")

MAX_OUTBOX = 256  # undelivered RESULT/FAILED/state messages per session before the oldest are dropped
PROGRESS_INTERVAL = 0.05  # seconds between two PROGRESS of one job


class Outbox:
    def __init__(self, transport: Transport, limits: Limits, lost: Callable[[Session], None]) -> None:
        self.transport = transport
        self.limits = limits
        self.lost = lost  # called when a session's connection turns out gone

    def reply(self, identity: bytes, msg: Message) -> None:
        """Answer a peer that has no session (errors before/at the handshake); dropped if it cannot go now."""
        self.transport.send(identity, encode(msg, self.limits))

    def send(self, s: Session, msg: Message, droppable: bool = False) -> None:
        """Queue `msg` for `s` and send what can go now. `droppable` (PING, PONG): now or never."""
        frames = encode(msg, self.limits)
        if droppable:
            if s.identity is not None and not s.outbox:
                self._send_now(s, s.identity, frames)
            return
        self.send_frames(s, frames)

    def send_frames(self, s: Session, frames: list) -> None:
        s.outbox.append(frames)
        while len(s.outbox) > MAX_OUTBOX:
            s.outbox.popleft()
            log.warning("client %s is not reading; dropped an old message", s.client)
        self.flush_session(s)

    def update(self, s: Session, job_id: str, msg: Message, *, preview: bool = False) -> None:
        """The latest PROGRESS (or PREVIEW) of a job, replacing one that has not left yet."""
        (s.previews if preview else s.progress)[job_id] = encode(msg, self.limits)

    def flush(self, sessions: Iterable[Session]) -> None:
        for s in list(sessions):
            self.flush_session(s)

    def flush_session(self, s: Session) -> None:
        while s.identity is not None and s.outbox:
            status = self.transport.send(s.identity, s.outbox[0])
            if status == "ok":
                s.outbox.popleft()
            elif status == "gone":
                self.lost(s)
            else:
                return  # HWM reached: keep the rest for the next loop turn
        if s.identity is None:
            return
        now = time.monotonic()
        for pending, min_gap in ((s.progress, PROGRESS_INTERVAL), (s.previews, 0.0)):
            for jid in list(pending):
                if min_gap and now - s.last_progress.get(jid, 0.0) < min_gap:
                    continue
                frames = pending.pop(jid)
                if min_gap:
                    s.last_progress[jid] = now
                if s.identity is not None:
                    self._send_now(s, s.identity, frames)

    def _send_now(self, s: Session, identity: bytes, frames: list) -> None:
        if self.transport.send(identity, frames) == "gone":
            self.lost(s)
