"""A depixelate job tells its client what the analysis found (block size, cells) before the search: a JOB_STATE
"running" with a message in words and an `analysis` map, end to end through a real daemon and PulseClient."""

from __future__ import annotations

import numpy as np
import pytest
from daemon_fixture import start_daemon

from protocol.messages import ImageBlob, JobState, Progress, Result
from pulse_server.daemon.events import analysis_message

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, tiny_weights):
    d = start_daemon(tmp_path_factory.mktemp("analysis"), weights=tiny_weights, endpoint="ipc")
    yield d
    d.stop()


def _mosaic(block: int, cols: int, rows: int, seed: int = 3) -> np.ndarray:
    cells = (np.random.default_rng(seed).random((rows, cols, 3)) * 255).astype(np.uint8)
    return np.repeat(np.repeat(cells, block, 0), block, 1)


def _expected(region: np.ndarray, **params) -> dict:
    from pulse_server import pipeline

    prep = pipeline.prepare(region, None, pipeline.DepixParams(**params))
    rows, cols = prep.observation.grid
    return {"block": prep.mosaic.block, "cells": [cols, rows], "detected": prep.mosaic.detected,
            "confidence": pytest.approx(prep.mosaic.confidence, abs=1e-4)}


def test_the_mosaic_found_is_reported_before_the_search_starts(daemon):
    region = _mosaic(6, 9, 7)  # 54×42 px of 6-px blocks, block size left to the detection
    events = []
    with daemon.client() as c:
        accepted = c.submit(ImageBlob.from_numpy(region), None, {"mode": "depixelate", "candidates": 1, "steps": 3,
                                                                  "seed": 1})
        for ev in c.events(accepted.job_id):
            if ev is not None:
                events.append(ev)
    states = [e for e in events if isinstance(e, JobState) and e.analysis is not None]
    assert len(states) == 1
    (analysed,) = states
    assert analysed.state == "running" and analysed.analysis == _expected(region)
    assert analysed.analysis["block"] == 6 and analysed.analysis["cells"] == [9, 7]
    assert analysed.message == "6 px blocks, 9×7 cells detected"
    first_progress = next(i for i, e in enumerate(events) if isinstance(e, Progress))
    assert events.index(analysed) < first_progress and isinstance(events[-1], Result)


def test_run_job_hands_the_analysis_to_its_job_state_callback(daemon):
    region = _mosaic(8, 6, 6, seed=5)
    seen: list[JobState] = []
    names: list[str] = []
    with daemon.client() as c:
        res = c.run_job(ImageBlob.from_numpy(region), None, {"mode": "depixelate", "candidates": 1, "steps": 2},
                        on_job_state=seen.append, on_state=names.append)
    analysed = [s for s in seen if s.analysis]
    assert len(analysed) == 1 and analysed[0].analysis["cells"] == [6, 6]
    assert analysed[0].analysis["block"] == res.analysis["block"] == 8
    assert names[0] == "queued" and "running" in names


def test_a_forced_job_without_a_mosaic_says_none_was_detected(daemon):
    noise = (np.random.default_rng(0).random((40, 40, 3)) * 255).astype(np.uint8)
    seen: list[JobState] = []
    with daemon.client() as c:
        c.run_job(ImageBlob.from_numpy(noise), None, {"mode": "depixelate", "candidates": 1, "steps": 1,
                                                       "block": 8, "force": True}, on_job_state=seen.append)
    (analysed,) = [s for s in seen if s.analysis]
    assert analysed.analysis["detected"] is False and analysed.analysis == _expected(noise, block=8, force=True)
    assert analysed.message.startswith("no mosaic detected; 8 px blocks, ")


def test_a_solve_job_reports_no_analysis(daemon):
    seen: list[JobState] = []
    with daemon.client() as c:
        c.run_job(ImageBlob.from_numpy(np.zeros((8, 8, 3), np.float32)), None,
                  {"mode": "solve", "candidates": 1, "steps": 1}, on_job_state=seen.append)
    assert seen and all(s.analysis is None for s in seen)


def test_analysis_in_words():
    assert analysis_message({"block": 12, "cells": [14, 16], "detected": True}) == "12 px blocks, 14×16 cells detected"
    assert analysis_message({"block": 4, "cells": [3, 5], "detected": False}) == "no mosaic detected; 4 px blocks, 3×5 cells assumed"
