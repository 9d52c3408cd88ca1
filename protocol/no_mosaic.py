"""What the editors do when the daemon finds no mosaic in the selection (stdlib only, shared by GIMP and Krita).

The daemon refuses a depixelate job whose region holds no trusted mosaic (FAILED `NO_MOSAIC`): an imagined
face painted over a sharp photo would destroy what is there. The editors ask before going on, default No;
Yes sends the same region again with `force: true` under a new job id (the client picks one per submit).
The plug-ins only show the question; which failure asks, its words and the forced parameters live here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from .errors import ErrorCode, PulseError

NO_MOSAIC = ErrorCode.NO_MOSAIC
TITLE = "No mosaic found"
QUESTION = "No mosaic found in the selection: depixelate anyway?"
# Why the answer matters; the image itself is never painted over, the faces only arrive as new layers.
CONSEQUENCE = ("Depixelating anyway imagines faces over whatever the selection holds. They arrive as new "
               "layers above it; the image itself is not changed.")

R = TypeVar("R")


class NotForced(PulseError):
    """The user answered No: nothing was sent again and nothing in the image changed."""

    code = ErrorCode.NO_MOSAIC_DECLINED

    def __init__(self, reason: str) -> None:
        super().__init__(f"Nothing was changed: {reason}.")
        self.reason = reason


def is_forced(params: Mapping[str, Any]) -> bool:
    return params.get("force") is True


def asks_to_force(exc: BaseException, params: Mapping[str, Any]) -> bool:
    """Whether this failure is the daemon's no-mosaic refusal of a job that was not forced yet.

    A forced job never asks again (the daemon does not refuse it for this reason; if it somehow did,
    asking twice would loop)."""
    return getattr(exc, "code", None) == NO_MOSAIC and not is_forced(params)


def reason(exc: BaseException) -> str:
    """The daemon's finding without its command-line advice: 'no mosaic found in the selection (…)'.

    The daemon's message ends in "; select the pixelated area, or pass --force / choose …", which is the
    CLI's wording; the editors say what to do in their own words."""
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.split(";", 1)[0].strip() or "no mosaic found in the selection"


def question(exc: BaseException) -> tuple[str, str]:
    """(the question, the detail under it) for a yes/no dialog whose default answer is No."""
    finding = reason(exc)
    return QUESTION, f"{finding[:1].upper()}{finding[1:]}.\n\n{CONSEQUENCE}"


def refusal(exc: BaseException, how_to_force: str) -> str:
    """The message where nobody can be asked (a script): the daemon's finding and both ways on."""
    return f"{reason(exc)}: select the pixelated area, or {how_to_force} to depixelate it anyway."


def forced(params: Mapping[str, Any]) -> dict[str, Any]:
    """The same job's parameters with `force: true` (a copy: the refused job's stay as they were)."""
    return {**params, "force": True}


def submit_or_ask(submit: Callable[[dict[str, Any]], R], params: Mapping[str, Any],
                  ask: Callable[[str, str], bool] | None) -> R:
    """Run `submit(params)`; on a no-mosaic refusal ask `ask(question, detail)` and on Yes submit forced.

    `ask` None (a script, batch mode): the refusal propagates unchanged. No: `NotForced`. For a plug-in
    that waits for its job (GIMP); Krita's docker runs the same steps across its worker threads.
    """
    try:
        return submit(dict(params))
    except Exception as exc:  # anything but the no-mosaic refusal goes on as it is
        if ask is None or not asks_to_force(exc, params):
            raise
        if not ask(*question(exc)):
            raise NotForced(reason(exc)) from exc
    return submit(forced(params))
