"""Every job parameter at each of its limits ± 1, through GIMP's and Krita's own settings code: the plug-ins
accept and refuse exactly what the job contract (`JobSettings.from_wire`) accepts and refuses, with the
declared ranges and with a daemon's narrower ones, and send what the contract would send."""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "gimp_plugin" / "pulse-depixelate"))
sys.path.insert(0, str(REPO / "tests" / "krita_mock"))
sys.path.insert(0, str(REPO / "krita_plugin"))

import krita  # noqa: E402  (the mock)
import pulse_gimp  # noqa: E402
from pulse_depixelate import logic as krita_logic  # noqa: E402

from protocol.client import PulseClient  # noqa: E402
from protocol.editor_settings import FIELDS, job_settings  # noqa: E402
from protocol.job import MAX_MODEL_NAME, PARAMS, JobSettings, Param, ParamError, narrowed, spec_to_wire  # noqa: E402
from protocol.messages import Welcome  # noqa: E402

Spec = Optional[dict[str, Param]]  # noqa: UP045 - a runtime alias on 3.10 too
# A daemon configured tighter than the contract, as WELCOME would announce it.
NARROW = narrowed(candidates=(2, 4), steps=(10, 200), block=(0, 16), seed=(-1, 1000))


def values_at_limits(p: Param) -> list[Any]:
    """The values on and just beyond each end of the parameter's range (its type kept), or its choices and a
    value outside them; for a free string, the longest accepted and one character more."""
    if p.kind is bool:
        return [False, True]
    if p.choices is not None:
        return list(p.choices) + ["not-a-choice"]
    if p.kind is str:
        return ["", "m" * MAX_MODEL_NAME, "m" * (MAX_MODEL_NAME + 1)]
    if p.kind is float:
        return [math.nextafter(p.low, -math.inf), p.low, p.high, math.nextafter(p.high, math.inf)]
    return [int(p.low) - 1, int(p.low), int(p.high), int(p.high) + 1]


def cases(names: tuple[str, ...], spec: Spec) -> list[tuple[str, Any]]:
    table = PARAMS if spec is None else spec
    return [(name, value) for name in names for value in values_at_limits(table[name])]


def contract(name: str, value: Any, spec: Spec) -> dict | None:
    """What the contract does with this value: the params it would send, or None when it refuses."""
    try:
        return JobSettings.from_wire({name: value}, spec).to_wire()
    except ParamError as exc:
        assert exc.param == name and exc.code == "BAD_PARAMS"
        return None


def through(route: Callable[[], dict], name: str) -> dict | None:
    try:
        return route()
    except ParamError as exc:
        assert exc.param == name and exc.code == "BAD_PARAMS", exc
        return None


# GIMP: the procedure config as GIMP hands it over (every argument has its default unless set), read by
# settings_from, then checked by the plug-in's client against the ranges the daemon's WELCOME announced, as
# PulseClient.submit does before anything is sent.
GIMP_PARAMS = tuple(a.name for a in pulse_gimp.ARGS if a.name in PARAMS)


def gimp_params(name: str, value: Any, spec: Spec) -> dict:
    config = {a.name: a.default for a in pulse_gimp.ARGS}
    config[name] = value
    settings = pulse_gimp.settings_from(config.__getitem__, interactive=False)
    if spec is None:  # as registered, without a daemon: the contract's own ranges
        return settings.params()
    client = PulseClient("tcp://127.0.0.1:9")  # never connected: the WELCOME below is what it knows
    client.welcome = Welcome(2, "test", "s", 1000, "cpu", params=spec_to_wire(spec))
    return client.checked(settings.params()).to_wire()


# Krita: the docker's Settings read into a request, from a real (mock) document with a selection.
def krita_params(name: str, value: Any, spec: Spec) -> dict:
    doc = krita.Krita.instance().createDocument(24, 20, "t", "RGBA", "U8", "", 72.0)
    sel = krita.Selection()
    sel.select(4, 3, 16, 12, 255)
    doc.setSelection(sel)
    return krita_logic.build_request(doc, krita_logic.Settings(**{name: value}), spec=spec).params


def test_both_plug_ins_take_every_everyday_parameter_of_the_contract():
    assert set(FIELDS) <= set(GIMP_PARAMS)
    assert set(FIELDS) <= {f.name for f in dataclasses.fields(krita_logic.Settings)}
    assert GIMP_PARAMS == (*FIELDS, "force")  # force: scripts only, the dialog asks instead


@pytest.mark.parametrize("spec", [None, NARROW], ids=["declared", "narrowed-by-the-daemon"])
@pytest.mark.parametrize("name, value", cases(GIMP_PARAMS, None) + cases(GIMP_PARAMS, NARROW))
def test_gimp_settings_accept_and_refuse_as_the_contract(name, value, spec):
    assert through(lambda: gimp_params(name, value, spec), name) == contract(name, value, spec)


@pytest.mark.parametrize("spec", [None, NARROW], ids=["declared", "narrowed-by-the-daemon"])
@pytest.mark.parametrize("name, value", cases(FIELDS, None) + cases(FIELDS, NARROW))
def test_krita_settings_accept_and_refuse_as_the_contract(name, value, spec):
    assert through(lambda: krita_params(name, value, spec), name) == contract(name, value, spec)


@pytest.mark.parametrize("spec", [None, NARROW], ids=["declared", "narrowed-by-the-daemon"])
@pytest.mark.parametrize("name, value", cases(tuple(PARAMS), None) + cases(tuple(PARAMS), NARROW))
def test_the_kit_accepts_and_refuses_every_parameter_as_the_contract(name, value, spec):
    assert through(lambda: job_settings({name: value}, spec).to_wire(), name) == contract(name, value, spec)


def test_the_limits_tested_here_do_refuse_something():
    refused = [(n, v) for n, v in cases(GIMP_PARAMS, None) if contract(n, v, None) is None]
    assert {n for n, _ in refused} >= {"candidates", "steps", "seed", "block", "model"}
