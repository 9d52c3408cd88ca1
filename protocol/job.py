"""The job contract: every parameter of a job declared once — name, type, default, range, meaning.

The dialogs build their widgets from it (through WELCOME's `params`, which carries the daemon's effective
ranges), the client checks a request before sending it, the daemon checks it again on arrival, and the
solver reads the same typed object. No other module declares a default or a limit for these.

On the wire a job's settings are the SUBMIT `params` map (`JobSettings.to_wire()`); the sentinel values keep
it plain msgpack: seed -1 = a new random seed, block 0 = detect it, model "" = the daemon's own model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ErrorCode, ProtocolError

MODES = ("depixelate", "solve")
METHODS = ("ilo", "pulse")  # depixelate's search: latent + bounded feature refinement, or latent only
PRECISIONS = ("default", "fp32")

# The largest region the pipeline takes, per side: a face selection; bigger is a mistake (or another tool's job).
# Checked before a job is queued, so an oversized selection never waits in the queue holding its bytes.
MAX_REGION_SIDE = 4096
# Mosaic cells larger than this hold too little of a face to be worth solving (the detector's range too).
MAX_BLOCK = 64
# The most characters a string parameter (a model name) may have on the wire. Model names only, never paths: the
# daemon's spec narrows `model` to the names it knows, so a client cannot make it open files of its choosing.
MAX_MODEL_NAME = 64


@dataclass(frozen=True)
class Param:
    """One parameter's declaration. `low`/`high` bound numbers (inclusive); `choices` bound strings."""

    name: str
    kind: type[Any]
    default: Any
    label: str  # the dialogs' label: plain words, with the mnemonic-free text
    help: str  # one sentence for the tooltip / the CLI's --help
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    advanced: bool = False  # shown under the dialogs' advanced section
    special: str = ""  # what the lowest value means where it is a sentinel, in a word ("random", "auto")
    unit: str = ""  # the suffix a spin box shows ("px")

    def check(self, value: Any) -> Any:
        """`value` if valid (ints accepted for floats), else ParamError naming the parameter and its range."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                raise ParamError(self.name, f"must be {self.range_text()}") from None
        if isinstance(value, bool) is not (self.kind is bool) or not isinstance(value, self.kind):
            raise ParamError(self.name, f"expected {self.kind.__name__}, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            raise ParamError(self.name, f"must be one of {', '.join(self.choices)}, not {str(value)[:32]!r}")
        if isinstance(value, str) and len(value) > MAX_MODEL_NAME:
            raise ParamError(self.name, f"longer than {MAX_MODEL_NAME} characters")
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise ParamError(self.name, f"must be {self.range_text()}, not {value}")
        return value

    def range_text(self) -> str:
        if self.low is None or self.high is None:
            return "any value"
        return f"between {_number(self.low)} and {_number(self.high)}"

    def to_wire(self) -> dict[str, Any]:
        """The declaration as WELCOME carries it (a daemon's spec: its effective ranges and default)."""
        d = {"type": self.kind.__name__, "default": self.default, "label": self.label, "help": self.help,
             "advanced": self.advanced}
        if self.low is not None:
            d.update(min=self.low, max=self.high)
        if self.choices is not None:
            d["choices"] = list(self.choices)
        return d


class ParamError(ProtocolError):
    """A job parameter is out of its declared type or range. `param` names it; `job_id` is the SUBMIT's, when the
    codec refused a received one (the daemon answers that job FAILED BAD_PARAMS)."""

    code = ErrorCode.BAD_PARAMS

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"params.{name}: {problem}")
        self.param = name
        self.problem = problem  # without the parameter's name: for a form field or a CLI option's message
        self.job_id: str | None = None


def _number(value: float) -> str:
    """An int-valued bound as digits (2147483647, not 2.14748e+09), any other as %g."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else f"{value:g}"


def _p(default: Any, label: str, help: str, **kw: Any) -> Any:
    """A dataclass field whose metadata holds its Param (the name and kind are filled in from the field)."""
    return field(default=default, metadata={"param": dict(default=default, label=label, help=help, **kw)})


@dataclass(frozen=True)
class JobSettings:
    """A job's settings, typed, from the dialog to the solver."""

    mode: str = _p("depixelate", "Mode", "depixelate: find and solve the mosaic in a region; solve: the image is "
                   "already the low-resolution face", choices=MODES, advanced=True)
    candidates: int = _p(3, "Faces to generate", "How many faces to imagine: one layer each, the best one shown",
                         low=1, high=16)
    steps: int = _p(100, "Search steps", "Steps of the search per face: more fit the mosaic closer, and take longer",
                    low=1, high=5000)
    seed: int = _p(-1, "Random seed", "The same seed gives the same faces again (-1 = a new seed each run)",
                   low=-1, high=2**31 - 1, special="random")
    block: int = _p(0, "Mosaic block size", "Side of one mosaic cell in pixels (0 = detect it)", low=0, high=MAX_BLOCK,
                    special="auto", unit="px")
    eps: float = _p(2e-3, "Match tolerance", "How closely a face must match the mosaic (mean squared error of the "
                    "downscaled face, 0–1 scale)", low=1e-6, high=0.5, advanced=True)
    precision: str = _p("default", "Precision", "default: the device's fast path; fp32: full precision everywhere",
                        choices=PRECISIONS, advanced=True)
    method: str = _p(METHODS[0], "Search method", "ilo: latent search then a bounded refinement of the generator's "
                     "features; pulse: latent search only", choices=METHODS, advanced=True)
    model: str = _p("", "Face model", "A model the daemon lists (empty = the daemon's own)")
    force: bool = _p(False, "Depixelate anyway", "Solve even where no mosaic is found", advanced=True)

    def to_wire(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any], spec: Mapping[str, Param] | None = None) -> JobSettings:
        """Validate a SUBMIT `params` map (missing or None keys take their default; unknown keys are ignored so an
        older daemon accepts a newer client's extras) against `spec` (default: the declared PARAMS)."""
        if not isinstance(raw, Mapping):
            raise ParamError("*", f"expected a map, got {type(raw).__name__}")
        spec = PARAMS if spec is None else spec
        values = {}
        for name, p in spec.items():
            value = raw.get(name)
            values[name] = p.default if value is None else p.check(value)
        return cls(**values)

    def checked(self, spec: Mapping[str, Param] | None = None) -> JobSettings:
        """Self if every field is within `spec` (a dialog's values before sending), else ParamError."""
        return type(self).from_wire(self.to_wire(), spec)


def _declare() -> dict[str, Param]:
    out = {}
    for f in dataclasses.fields(JobSettings):
        kind = {"int": int, "float": float, "str": str, "bool": bool}[str(f.type)]
        out[f.name] = Param(name=f.name, kind=kind, **f.metadata["param"])
    return out


PARAMS: dict[str, Param] = _declare()


def spec_from_wire(raw: Mapping[str, Any] | None) -> dict[str, Param]:
    """WELCOME's `params` → Params with the daemon's effective ranges (declared ones where it says nothing).

    A daemon's range only narrows the declared one: this client's codec refuses anything outside the declared
    range anyway, so a dialog must not offer it. Entries that are not well-formed are ignored (declared ones
    apply), and so are parameters this client does not know: it cannot show them, the daemon's default applies."""
    spec = dict(PARAMS)
    for name, d in (raw or {}).items():
        p = spec.get(name)
        if p is None or not isinstance(d, Mapping):
            continue
        low, high, choices = p.low, p.high, p.choices
        if p.low is not None and _is_number(d.get("min")) and _is_number(d.get("max")):
            low, high = max(p.low, d["min"]), min(p.high, d["max"])
            if low > high:
                low, high = p.low, p.high
        offered = d.get("choices")
        if isinstance(offered, (list, tuple)) and offered and all(isinstance(c, str) for c in offered):
            choices = tuple(c for c in offered if p.choices is None or c in p.choices) or p.choices
        narrowed_p = dataclasses.replace(p, low=low, high=high, choices=choices)
        default = d.get("default", p.default)
        try:
            default = narrowed_p.check(default)
        except ParamError:
            default = p.default
        spec[name] = dataclasses.replace(narrowed_p, default=default)
    return spec


def spec_to_wire(spec: Mapping[str, Param]) -> dict[str, dict[str, Any]]:
    return {name: p.to_wire() for name, p in spec.items()}


def narrowed(**ranges: Any) -> dict[str, Param]:
    """PARAMS with some ranges narrowed by a daemon's configuration, e.g. narrowed(steps=(1, 1000), model=names).
    A tuple gives (low, high), kept within the declared range; a list gives the allowed choices (within the
    declared ones, where the parameter declares any)."""
    spec = dict(PARAMS)
    for name, r in ranges.items():
        p = spec[name]
        if isinstance(r, tuple):
            low, high = max(p.low, r[0]), min(p.high, r[1])
            # The default stays a value the daemon accepts: e.g. --max-steps 50 makes 50 steps the default.
            spec[name] = dataclasses.replace(p, low=low, high=high, default=min(max(p.default, low), high))
        else:
            choices = tuple(c for c in r if p.choices is None or c in p.choices)
            default = p.default if p.default in choices or not choices else choices[0]
            spec[name] = dataclasses.replace(p, choices=choices, default=default)
    return spec


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
