"""Sessions and heartbeats: who is connected, under which ZeroMQ identity, and who went silent.

A session outlives its connection: a client that reconnects says HELLO with the same session id and gets
its jobs back. A session whose client stays silent (no message for `missed_heartbeats` heartbeats) expires,
and its jobs are cancelled. The daemon's own absence (paused, suspended, starved) is not the clients' silence:
`note_absence` moves every deadline by it.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..jobs import Job

log = logging.getLogger("pulse.daemon")

AWAY_SLACK = 0.25  # seconds a loop turn may overrun its poll before the daemon counts itself away
DEAD_SLACK = 0.5  # seconds of silence tolerated beyond the missed heartbeats


@dataclass(eq=False)
class Session:
    sid: str
    identity: bytes | None  # None while its client is disconnected
    client: str
    last_seen: float
    jobs: dict[str, Job] = field(default_factory=dict)  # active (queued / loading / running) jobs
    # Flow control (outbox.py): messages that must arrive, and the latest droppable update per job.
    outbox: deque = field(default_factory=deque)
    progress: dict[str, list] = field(default_factory=dict)  # job_id -> latest PROGRESS frames
    previews: dict[str, list] = field(default_factory=dict)  # job_id -> latest PREVIEW frames
    last_progress: dict[str, float] = field(default_factory=dict)  # job_id -> when PROGRESS last left
    last_ping: float = 0.0

    def forget_job(self, job_id: str) -> None:
        """The job ended: no more updates for it."""
        self.jobs.pop(job_id, None)
        self.progress.pop(job_id, None)
        self.previews.pop(job_id, None)
        self.last_progress.pop(job_id, None)


class SessionTable:
    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.by_identity: dict[bytes, Session] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self.sessions.values()))

    def of_identity(self, identity: bytes) -> Session | None:
        return self.by_identity.get(identity)

    def attach(self, identity: bytes, sid: str, client: str, now: float) -> tuple[Session, bool]:
        """The session `sid` now reachable at `identity` (made if new: second value True). A connection
        has one session and a session one connection: older pairings are undone."""
        old = self.by_identity.pop(identity, None)
        if old is not None and old.sid != sid:
            old.identity = None
        session = self.sessions.get(sid)
        new = session is None
        if session is None:
            session = self.sessions[sid] = Session(sid, identity, client, now)
        else:
            if session.identity is not None and session.identity != identity:
                self.by_identity.pop(session.identity, None)
            session.identity = identity
            session.last_seen = now
        self.by_identity[identity] = session
        return session, new

    def lost(self, s: Session) -> None:
        """Its connection is gone; the session (and its jobs) wait for a re-HELLO until heartbeats expire."""
        if s.identity is not None:
            self.by_identity.pop(s.identity, None)
            s.identity = None

    def remove(self, s: Session) -> None:
        s.outbox.clear()
        s.progress.clear()
        s.previews.clear()
        self.sessions.pop(s.sid, None)
        if s.identity is not None and self.by_identity.get(s.identity) is s:
            del self.by_identity[s.identity]

    def session_of(self, job: Job) -> Session | None:
        """The session that lists `job` as active, else None. A job cancelled by a dropped session may still
        report (the worker stops at its next step) after the client came back and re-submitted the same
        job id: those reports must not update, unlist, store or answer for the new job."""
        s = self.sessions.get(job.session)
        return s if s is not None and s.jobs.get(job.job_id) is job else None

    def active_jobs(self) -> Iterator[Job]:
        for s in list(self.sessions.values()):
            yield from list(s.jobs.values())

    def silent(self, now: float, heartbeat_s: float, missed: int) -> list[tuple[Session, str]]:
        """Sessions silent for longer than `missed` heartbeats, with why they go."""
        dead_after = heartbeat_s * missed + DEAD_SLACK
        return [(s, "client vanished (no heartbeat)" if s.jobs else "idle")
                for s in list(self.sessions.values()) if now - s.last_seen > dead_after]

    def note_absence(self, since: float, allowed: float) -> float:
        """Time the loop was away since `since`, beyond the `allowed` seconds of polling, is the daemon's own
        absence (paused by SIGSTOP or a debugger, a suspended VM, swapping, a slow turn): the clients'
        heartbeats of that time sit unread in the socket, so every session's deadline moves by it and a peer
        is expired only for silence while the daemon was listening. Returns now, the next `since`."""
        now = time.monotonic()
        away = now - since - allowed
        if away <= AWAY_SLACK:
            return now
        if away >= 1.0:
            log.warning("the daemon was stalled for %.1f s (paused, suspended or starved); its clients are not "
                        "blamed for that silence", away)
        for s in self.sessions.values():
            s.last_seen += away
        return now
