"""What both editor plug-ins show and send: the dialog's fields, the model list, a checked JobSettings.

The fields, their labels, help, defaults and ranges are the job contract's (`protocol/job.py`); nothing here
or in a plug-in declares another. A plug-in builds its widgets from `fields()` (GIMP registers its procedure
arguments from the declared contract, as it has no daemon then; Krita refills its spin boxes from the daemon's
WELCOME), reads the values back by parameter name, and `job_settings()` turns them into the JobSettings it
sends, refused with the same ParamError the daemon would raise.

Stdlib only: this runs inside the editors' Python, next to the `protocol` package the installer copied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .job import PARAMS, JobSettings, Param, spec_from_wire

# The fields a dialog shows up front: the contract's everyday parameters. The advanced ones (mode, eps,
# precision, method, force) keep their defaults in the dialogs; scripts and the CLI reach them.
FIELDS: tuple[str, ...] = tuple(name for name, p in PARAMS.items() if not p.advanced)

DESCRIPTION = ("Imagines faces that pixelate back to the selected mosaic, as new layers you can blend; "
               "they are invented, not the person's real face.")
ADVANCED_LABEL = "Advanced"
ENDPOINT_LABEL = "Daemon address"
ENDPOINT_HELP = "Where the PULSE daemon listens, e.g. tcp://127.0.0.1:5599 (empty = the default one)"
DEFAULT_MODEL_LABEL = "The daemon's own"


def daemon_spec(welcome: Any = None) -> dict[str, Param]:
    """The ranges a daemon takes: WELCOME's `params`, the declared contract for a daemon that sends none
    (an older one) or before any daemon answered (`welcome` None)."""
    return spec_from_wire(getattr(welcome, "params", None) if welcome is not None else None)


def fields(spec: Mapping[str, Param] | None = None, names: Sequence[str] = FIELDS) -> list[Param]:
    """One widget per parameter: its declaration (label, help, default, range or choices, sentinel word, unit)
    with `spec`'s effective ranges (default: the contract's)."""
    spec = PARAMS if spec is None else spec
    return [spec[name] for name in names]


def field(name: str, spec: Mapping[str, Param] | None = None) -> Param:
    return fields(spec, (name,))[0]


def job_settings(values: Mapping[str, Any], spec: Mapping[str, Param] | None = None) -> JobSettings:
    """An editor's values by parameter name → JobSettings, checked against `spec` (default: the contract).

    Parameters the editor does not show take their default; values are never clamped: one out of range is
    refused with ParamError (code BAD_PARAMS, `.param` its name), exactly as the daemon would refuse it."""
    return JobSettings.from_wire({k: v for k, v in values.items() if k in PARAMS}, spec)


# --------------------------------------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelChoice:
    """One entry of the model list: the job's `model` value ("" = the daemon's own) and what the user reads."""

    value: str
    label: str
    loaded: bool = False


def model_choices(welcome: Any = None) -> list[ModelChoice]:
    """The daemon's own model first (value ""), then every other model it lists in WELCOME `models`.

    A daemon that lists none (or no daemon yet) still offers its own model, so a dialog always has a choice."""
    rows = _models(welcome)
    own = next((m for m in rows if not m.get("id")), None)
    out = [ModelChoice("", f"{DEFAULT_MODEL_LABEL}: {_describe(own, str(own.get('name') or '?'))}" if own
                       else DEFAULT_MODEL_LABEL, bool(own and own.get("loaded")))]
    for m in rows:
        value = str(m.get("id") or "")
        if value and value not in {c.value for c in out}:
            out.append(ModelChoice(value, _describe(m, value), bool(m.get("loaded"))))
    return out


def _models(welcome: Any) -> list[Mapping[str, Any]]:
    return [m for m in (getattr(welcome, "models", None) or []) if isinstance(m, Mapping)]


def _describe(m: Mapping[str, Any], name: str) -> str:
    """'ffhq-256 (256 px, ready)': the name a job asks for, its resolution, whether it is loaded already."""
    res = int(m.get("resolution") or 0)
    details = ([f"{res} px"] if res else []) + (["ready"] if m.get("loaded") else [])
    return f"{name} ({', '.join(details)})" if details else name


def own_model_name(welcome: Any = None) -> str:
    """The name of the model a job with `model` "" runs on (WELCOME lists the daemon's own first)."""
    own = next((m for m in _models(welcome) if not m.get("id")), None)
    return str(own.get("name") or "") if own else ""


def model_for_estimate(settings: JobSettings, welcome: Any = None) -> str:
    """The model whose speed an estimate is about: the job's choice, else the daemon's own."""
    return settings.model or own_model_name(welcome)


__all__ = ["FIELDS", "DESCRIPTION", "ADVANCED_LABEL", "ENDPOINT_LABEL", "ENDPOINT_HELP", "ModelChoice",
           "daemon_spec", "fields", "field", "job_settings", "model_choices", "own_model_name",
           "model_for_estimate"]
