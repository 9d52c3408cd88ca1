"""Sessions and heartbeats: reconnecting under a new identity, a lost connection, silence that expires a
session, and the daemon's own absence not counted against its clients."""

from __future__ import annotations

import time

from protocol.job import JobSettings
from pulse_server.daemon import Daemon, DaemonConfig
from pulse_server.daemon.sessions import DEAD_SLACK, SessionTable
from pulse_server.jobs import Job


def test_a_reconnecting_client_gets_its_session_back_under_its_new_identity():
    table = SessionTable()
    s, new = table.attach(b"conn-1", "sid", "gimp", 1.0)
    assert new and table.of_identity(b"conn-1") is s
    again, new = table.attach(b"conn-2", "sid", "gimp", 2.0)
    assert again is s and not new and s.identity == b"conn-2" and s.last_seen == 2.0
    assert table.of_identity(b"conn-1") is None and table.of_identity(b"conn-2") is s


def test_a_connection_that_says_hello_with_another_session_leaves_the_first():
    table = SessionTable()
    first, _ = table.attach(b"conn", "a", "x", 1.0)
    second, _ = table.attach(b"conn", "b", "x", 1.0)
    assert first.identity is None and table.of_identity(b"conn") is second and len(table) == 2


def test_a_lost_connection_keeps_the_session_and_its_jobs():
    table = SessionTable()
    s, _ = table.attach(b"conn", "sid", "x", 1.0)
    job = s.jobs["j"] = Job("j", "sid", JobSettings(), None, None)
    table.lost(s)
    assert s.identity is None and table.of_identity(b"conn") is None
    assert table.session_of(job) is s


def test_only_sessions_silent_past_the_missed_heartbeats_expire():
    table = SessionTable()
    quiet, _ = table.attach(b"a", "quiet", "x", 0.0)
    quiet.jobs["j"] = Job("j", "quiet", JobSettings(), None, None)
    idle, _ = table.attach(b"b", "idle", "x", 0.0)
    fresh, _ = table.attach(b"c", "fresh", "x", 2.5)
    now = 1.0 * 3 + DEAD_SLACK + 0.01
    assert table.silent(now, 1.0, 3) == [(quiet, "client vanished (no heartbeat)"), (idle, "idle")]
    assert fresh not in [s for s, _ in table.silent(now, 1.0, 3)]


def test_the_daemons_own_stall_moves_every_deadline():
    table = SessionTable()
    s, _ = table.attach(b"a", "sid", "x", 10.0)
    since = time.monotonic() - 5.0  # the loop was gone for 5 s while it meant to poll for 1 s
    table.note_absence(since, 1.0)
    assert 13.9 < s.last_seen < 14.2
    before = s.last_seen
    table.note_absence(time.monotonic(), 1.0)  # on time: nothing moves
    assert s.last_seen == before


def test_heartbeat_expires_a_silent_session_and_cancels_its_job():
    d = Daemon(DaemonConfig(endpoint="ipc:///nonexistent/pulse-test.sock", weights="noop:", heartbeat_ms=100))
    s, _ = d.table.attach(b"a", "sid", "x", time.monotonic() - 10)
    d.table.lost(s)  # no socket in this test: the session's connection is gone too
    job = Job("j", "sid", JobSettings(), None, None)
    d.queue.put(job)
    s.jobs["j"] = job
    d._heartbeat()
    assert "sid" not in d.sessions and job.cancel_event.is_set() and job.state == "cancelled"
    assert len(d.queue) == 0 and ("sid", "j") not in d.results  # not kept: a re-SUBMIT runs it again
