"""The editors' shared answer to the daemon's NO_MOSAIC refusal (protocol/no_mosaic.py), without an editor."""

from __future__ import annotations

import pytest

from protocol import no_mosaic
from protocol.errors import JobFailed

REFUSAL = JobFailed("no mosaic found in the selection (no grid of flat blocks in it: it looks like an unpixelated "
                    "picture); select the pixelated area, or pass --force / choose 'depixelate anyway' to paint a "
                    "face over it", "NO_MOSAIC", job_id="j1")
PARAMS = {"mode": "depixelate", "candidates": 2, "steps": 10, "seed": 3, "block": 0}


class Daemon:
    """Refuses unforced jobs for want of a mosaic; records what it was sent."""

    def __init__(self, refuse=REFUSAL):
        self.sent, self.refuse = [], refuse

    def __call__(self, params):
        self.sent.append(params)
        if not params.get("force") and self.refuse is not None:
            raise self.refuse
        return "result"


def test_only_the_no_mosaic_refusal_of_an_unforced_job_asks():
    assert no_mosaic.asks_to_force(REFUSAL, PARAMS)
    assert not no_mosaic.asks_to_force(REFUSAL, {**PARAMS, "force": True})  # never ask twice
    assert not no_mosaic.asks_to_force(JobFailed("too small", "BAD_REGION"), PARAMS)
    assert not no_mosaic.asks_to_force(RuntimeError("boom"), PARAMS)


def test_the_question_says_what_was_found_and_that_the_image_itself_stays():
    question, detail = no_mosaic.question(REFUSAL)
    assert question == "No mosaic found in the selection: depixelate anyway?"
    assert detail.startswith("No mosaic found in the selection (no grid of flat blocks in it")
    assert "--force" not in detail  # the CLI's advice is not the editors'
    assert "new layers" in detail and "not changed" in detail


def test_yes_resubmits_the_same_job_forced_and_leaves_the_refused_params_alone():
    daemon, asked = Daemon(), []
    params = dict(PARAMS)
    result = no_mosaic.submit_or_ask(daemon, params, lambda q, d: asked.append(q) or True)
    assert result == "result" and len(asked) == 1
    assert daemon.sent == [PARAMS, {**PARAMS, "force": True}]
    assert params == PARAMS


def test_no_sends_nothing_more_and_says_nothing_changed():
    daemon = Daemon()
    with pytest.raises(no_mosaic.NotForced) as err:
        no_mosaic.submit_or_ask(daemon, PARAMS, lambda q, d: False)
    assert daemon.sent == [PARAMS]
    assert str(err.value).startswith("Nothing was changed: no mosaic found in the selection (")
    assert err.value.code == "NO_MOSAIC_DECLINED"


def test_without_anyone_to_ask_the_refusal_is_the_error():
    daemon = Daemon()
    with pytest.raises(JobFailed) as err:
        no_mosaic.submit_or_ask(daemon, PARAMS, None)
    assert err.value is REFUSAL and daemon.sent == [PARAMS]
    text = no_mosaic.refusal(REFUSAL, "pass force")
    assert text == ("no mosaic found in the selection (no grid of flat blocks in it: it looks like an unpixelated "
                    "picture): select the pixelated area, or pass force to depixelate it anyway.")


def test_other_failures_and_successes_pass_straight_through():
    asked = []
    assert no_mosaic.submit_or_ask(Daemon(refuse=None), PARAMS, lambda q, d: asked.append(q)) == "result"
    with pytest.raises(JobFailed, match="too small"):
        no_mosaic.submit_or_ask(Daemon(JobFailed("too small", "BAD_REGION")), PARAMS, lambda q, d: asked.append(q))
    assert asked == []
