"""Finished jobs kept for FETCH and for an idempotent re-SUBMIT: their encoded RESULT/FAILED frames, per
(session, job id), oldest first, for `ttl` seconds and within `max_bytes` in all (the oldest go first)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator

from ..jobs import Job


class ResultStore:
    def __init__(self, max_bytes: int, ttl: float) -> None:
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._kept: OrderedDict[tuple[str, str], Job] = OrderedDict()  # each Job holds its final_frames
        self.bytes = 0  # kept in step with _kept by keep() and _drop_oldest() only

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._kept

    def get(self, sid: str, job_id: str) -> Job | None:
        return self._kept.get((sid, job_id))

    def of_session(self, sid: str) -> Iterator[Job]:
        """A session's kept jobs, oldest first."""
        return (job for (owner, _), job in self._kept.items() if owner == sid)

    def keep(self, job: Job) -> None:
        """Keep an ended job (its final_frames set), replacing an older one of the same id."""
        key = (job.session, job.job_id)
        old = self._kept.pop(key, None)
        if old is not None:
            self.bytes -= old.final_bytes
        self._kept[key] = job
        self.bytes += job.final_bytes
        while self._kept and self.bytes > self.max_bytes:
            self._drop_oldest()

    def expire(self, now: float | None = None) -> None:
        """Drop what was kept longer than `ttl` (monotonic seconds since each job finished)."""
        now = time.monotonic() if now is None else now
        while self._kept:
            oldest = next(iter(self._kept.values()))
            if now - (oldest.finished or now) <= self.ttl:
                return
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, dropped = self._kept.popitem(last=False)
        self.bytes -= dropped.final_bytes
