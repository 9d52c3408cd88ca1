"""What the editors tell the user when a job cannot run or fails: one table, error code → sentence + what to do.

Both plug-ins dispatch on an error's stable `code` (ProtocolError, the daemon's FAILED codes, the kit's own),
never on exception class names: a plug-in may load a `protocol` copy of another version than the one a class
name was written against. The plug-ins handle only their own errors (a selection they cannot read, a missing
pyzmq) before handing the rest to `user_message`.

Stdlib only (runs inside the editors).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .endpoint import default_endpoint
from .errors import ErrorCode
from .job import PARAMS


@dataclass(frozen=True)
class Editor:
    """How one editor's user does what the messages ask."""

    name: str  # the installer's name: `pulse-server install-plugin NAME`
    title: str  # the plug-in as the user sees it: "Depixelate Face (PULSE)"
    start: str  # how to start the daemon from this editor, a clause: "press Start (or run `pulse-server run`)"
    force: str  # how to depixelate anyway where nobody can be asked, a clause (scripts)
    log: str  # where a bug's traceback goes: "GIMP's error console"


@dataclass(frozen=True)
class Advice:
    """`what` happened, plainly, and what to `do` about it; `{message}`, `{endpoint}`, `{editor}` are filled in.
    `retry`: the same request may work later (the daemon was busy or stopping)."""

    what: str
    do: str = ""
    retry: bool = False


# By ErrorCode (protocol/errors.py): a code that is not in the enum cannot get words here.
# Where the daemon's own message already says it plainly ("the selection is 3×3 pixels: too small to hold a
# face"), `what` is that message.
ADVICE: dict[str, Advice] = {  # ErrorCode keys (a str enum): a plain code string finds them
    ErrorCode.DAEMON_NOT_RUNNING: Advice("The PULSE daemon is not running at {endpoint}{detail}",
                                         "{start}, then try again"),
    ErrorCode.VERSION_MISMATCH: Advice("This plug-in and the PULSE daemon speak different protocol versions "
                                       "({message})",
                               "update both and reinstall the plug-in: `pulse-server install-plugin {editor}`"),
    ErrorCode.BAD_TOKEN: Advice("The daemon at {endpoint} refused this plug-in's token",
                        "run the editor and the daemon as the same user (or give both the same PULSE_TOKEN)"),
    ErrorCode.HANDSHAKE_FAILED: Advice("{message}"),
    ErrorCode.TIMEOUT: Advice("The daemon at {endpoint} did not answer in time", "try again; if it keeps happening, "
                      "restart it (`pulse-server run`)", retry=True),
    ErrorCode.CANCELLED: Advice("Depixelation cancelled: the image is unchanged"),
    ErrorCode.SHUTDOWN: Advice("The daemon stopped before the job finished", "{start}, then try again", retry=True),
    ErrorCode.QUEUE_FULL: Advice("The daemon is busy with other jobs", "try again when one finishes", retry=True),
    ErrorCode.TOO_LARGE: Advice("{message}"),  # the client's and the daemon's text both say what to select
    ErrorCode.BAD_PARAMS: Advice("{message}", "change it in the dialog"),
    ErrorCode.BAD_REGION: Advice("{message}", "select the whole pixelated face"),
    ErrorCode.BAD_SIZE: Advice("{message}", "select the whole pixelated face"),
    ErrorCode.BAD_MASK: Advice("{message}", "select the pixelated face again"),
    ErrorCode.NO_MOSAIC: Advice("PULSE did not depixelate this region: {message}"),
    ErrorCode.NO_MOSAIC_DECLINED: Advice("{message}"),
    ErrorCode.OUT_OF_MEMORY: Advice("The daemon ran out of memory for this job",
                            "select a smaller area, ask for fewer faces, or choose a smaller face model", retry=True),
    ErrorCode.NO_WEIGHTS: Advice("The daemon has no face model to use ({message})",
                         "choose another face model, or install one on the daemon's machine"),
    ErrorCode.UNSUPPORTED_MODEL: Advice("The daemon cannot use that face model ({message})",
                                        "choose another face model"),
    ErrorCode.MODEL_ERROR: Advice("The face model failed to load ({message})", "choose another face model"),
    ErrorCode.NO_DEVICE: Advice("The daemon cannot use its device ({message})",
                        "restart it with `pulse-server run --device auto`"),
    ErrorCode.WORKER_LOST: Advice("The daemon lost the worker running this job", "try again", retry=True),
    ErrorCode.CLUSTER_DOWN: Advice("The daemon's cluster is unreachable", "try again in a moment", retry=True),
    ErrorCode.BAD_RESULT: Advice("{message}", "update pulse-server and the plug-in together "
                         "(`pulse-server install-plugin {editor}`)"),
}


def code_of(exc: BaseException) -> str | None:
    """The stable code of a protocol, daemon or kit error; None for anything else (a bug, an editor error)."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) and code else None


def text_of(exc: BaseException) -> str:
    return str(getattr(exc, "message", None) or exc).strip()


def user_message(exc: BaseException, editor: Editor, endpoint: str = "") -> str:
    """One message for any failure with a code (and a plain report of anything else): what happened, what to do.

    `endpoint`: the address the plug-in tried ("" = the default one, which is then named), once where it matters."""
    code = code_of(exc)
    if code is None:
        return f"{editor.title} failed: {type(exc).__name__}: {exc} (details in {editor.log})"
    message = text_of(exc)
    advice = ADVICE.get(code)
    if advice is None:
        return f"PULSE could not depixelate this region ({code}): {message}"
    if code == ErrorCode.BAD_PARAMS:
        message = param_message(exc)
    elif code == ErrorCode.NO_MOSAIC:
        from .no_mosaic import refusal

        message = refusal(exc, editor.force)
    values = {"message": _strip_period(message), "endpoint": endpoint or default_endpoint(),
              "editor": editor.name, "start": editor.start, "detail": _not_running_detail(message)}
    what = _sentence(advice.what.format(**values))
    do = advice.do.format(**values)
    return f"{what} {_sentence(do)}" if do else what


def param_message(exc: BaseException) -> str:
    """'Search steps must be between 1 and 5000, not 6000': a parameter's problem under its dialog label.

    Works for the kit's own ParamError (`.param`) and for the daemon's BAD_PARAMS text ("params.steps …")."""
    text = text_of(exc)
    name = getattr(exc, "param", None)
    if not name:
        found = re.search(r"params\.(\w+)", text)
        name = found.group(1) if found else None
    if name not in PARAMS:
        return text
    label = PARAMS[name].label
    return re.sub(rf"params\.{name}:?\s*", f"{label} ", text, count=1)


def _not_running_detail(message: str) -> str:
    # The client's default text repeats the advice; a daemon that is there but silent is a different cause.
    return " (or it did not answer in time)" if "no answer" in message else ""


def _strip_period(text: str) -> str:
    return text[:-1] if text.endswith(".") else text


def _sentence(text: str) -> str:
    text = text.strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def is_cancel(exc: BaseException) -> bool:
    """The user's own Cancel (or No to "depixelate anyway?"): the run ends quietly, nothing to report."""
    return code_of(exc) in (ErrorCode.CANCELLED, ErrorCode.NO_MOSAIC_DECLINED)


def is_bug(exc: BaseException) -> bool:
    """Neither a coded error nor anything the user could fix: worth a traceback in the editor's log."""
    return code_of(exc) is None and not isinstance(exc, ImportError)


__all__ = ["ADVICE", "Advice", "Editor", "code_of", "is_bug", "is_cancel", "param_message", "text_of",
           "user_message"]
