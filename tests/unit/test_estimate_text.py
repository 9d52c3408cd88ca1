"""describe_estimate: the sentence the CLI and the editors show for ACCEPTED's estimate_s and wait_s."""

from __future__ import annotations

import pytest

from protocol.estimate_text import describe_duration, describe_estimate


@pytest.mark.parametrize("seconds,words", [
    (0.3, "about 1 s"), (7.4, "about 7 s"), (42, "about 40 s"), (57, "about 55 s"), (58, "about 1 min"),
    (100, "about 2 min"), (25 * 60 + 10, "about 25 min"), (59 * 60 + 40, "about 1 h"), (2.3 * 3600, "about 2.5 h"),
])
def test_durations_are_as_precise_as_an_estimate_deserves(seconds, words):
    assert describe_duration(seconds) == words


def test_a_gpu_job_is_just_its_duration():
    assert describe_estimate(40, 0, "cuda:0", "ffhq-1024") == "about 40 s"


def test_a_long_cpu_job_names_what_would_be_faster():
    assert describe_estimate(1500, 0, "cpu", "ffhq-1024") == \
        "about 25 min on this CPU — a GPU or the ffhq-256 model is faster"
    assert describe_estimate(1500, 0, "cpu", "stylegan2-ffhq-1024") == \
        "about 25 min on this CPU — a GPU or the ffhq-256 model is faster"
    assert describe_estimate(1500, 0, "cpu", "ffhq-256") == "about 25 min on this CPU — a GPU is faster"


def test_a_short_cpu_job_gets_no_advice():
    assert describe_estimate(90, 0, "cpu", "ffhq-1024") == "about 2 min"


def test_a_queued_job_says_when_it_starts():
    assert describe_estimate(180, 60, "cuda:0", "") == "about 3 min (starts in about 1 min)"
    assert describe_estimate(180, 2, "cuda:0", "") == "about 3 min"  # a moment's wait is "now"


def test_unknown_figures_say_only_what_is_known():
    assert describe_estimate(0, 0, "cpu", "") == ""
    assert describe_estimate(0, 90, "cpu", "") == "starts in about 2 min"


def test_the_module_needs_only_the_standard_library():
    import ast
    from pathlib import Path

    import protocol.estimate_text as mod

    tree = ast.parse(Path(mod.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | \
               {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__"}
