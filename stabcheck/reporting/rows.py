"""A claims run's rows: what a claim measured, each value with its kind, as ``claims.json`` stores it.

A row (:class:`ClaimRow`, schema :data:`SCHEMA`) holds ``measured`` (name → value: a number, a list
of numbers, or a verdict: a string, boolean or a list of them), ``kinds`` (name → :class:`Kind`,
set by the claim where it records the value) and an optional ``tag`` that figures select rows by.
``compare`` looks tolerances up by kind (:mod:`.tolerance`).

Reports are standard JSON: a non-finite number is stored as the string ``"Infinity"``,
``"-Infinity"`` or ``"NaN"`` (JavaScript's spelling), and :func:`decode_numbers` reads it back.

Rows written before kinds existed (no ``schema``) get their kinds from :data:`LEGACY_KINDS`, an
ordered list of (glob on the value's name, kind) written for the names those reports used, and
their figure tags from :data:`LEGACY_TAGS` (by test function); :func:`upgrade_report` rewrites such
a report in this schema.
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from enum import Enum


class ReportError(ValueError):
    """A report folder or file that cannot be read (the message names it and says what to give)."""


class RowError(ReportError):
    """A row that is not what a claims run writes (the message names the row and the field)."""


SCHEMA = 2


class Kind(str, Enum):
    """What a measured value is; ``Kind.SHARPNESS(a)`` is the value ``a`` with its kind."""

    SHARPNESS = "sharpness"                       # a = λmax(H), means of it, a1 + a2 of the toy
    RESTART_SHARPNESS = "sharpness after an unstable restart"
    NONUNIFORMITY = "non-uniformity"              # s, λmax(Σ)
    THEOREM1 = "theorem1"                         # λmax{(I−ηH)² + η²pΣ} and spectral radii read against 1
    RATIO = "ratio"                               # a·η/2, s/bound, s/a
    RELATIVE = "relative error"                   # relative errors, gaps and changes
    CORRELATION = "correlation"                   # Pearson r, Kendall τ
    P_VALUE = "p-value"
    LOSS = "loss"
    GROWTH = "growth"                             # growth factors along a restarted run
    ITERATIONS = "iteration count"
    PRODUCTS = "product count"
    EVENT = "event iteration"                     # when something happened along a trajectory
    COUNT = "count"                               # solutions, runs, batches: exact
    SETTING = "setting"                           # learning rates, batch sizes, bounds computed from them
    FRACTION = "fraction"                         # of runs
    ACCURACY = "accuracy"
    VALUE = "value"                               # a toy problem's exact or seeded value
    AGREEMENT = "paper agreement"                 # our mean minus the paper's, and what is allowed
    SECONDS = "seconds"
    VERDICT = "verdict"                           # strings and booleans: compared for equality

    def __call__(self, value) -> "Quantity":
        return Quantity(value, self)


@dataclass(frozen=True)
class Quantity:
    """A measured value with its kind, as a claim passes it to ``claim.record``."""

    value: object
    kind: Kind


NON_FINITE = {"Infinity": math.inf, "-Infinity": -math.inf, "NaN": math.nan}


def encode_numbers(value):
    """``value`` as standard JSON takes it: non-finite floats become ``"Infinity"``, ``"-Infinity"``, ``"NaN"``.

    >>> encode_numbers({"bound": float("inf"), "xs": [1.0, float("nan")]})
    {'bound': 'Infinity', 'xs': [1.0, 'NaN']}
    """
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, dict):
        return {k: encode_numbers(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode_numbers(v) for v in value]
    return value


def decode_numbers(value):
    """The inverse of :func:`encode_numbers` (for the values of a numeric kind)."""
    if isinstance(value, str) and value in NON_FINITE:
        return NON_FINITE[value]
    if isinstance(value, list):
        return [decode_numbers(v) for v in value]
    return value


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def has_numbers(value) -> bool:
    """A number, or a (nested) list holding at least one number."""
    if is_number(value):
        return True
    return isinstance(value, list) and any(has_numbers(v) for v in value)


def measured_with_kinds(measured: dict, kinds: dict | None = None) -> tuple[dict, dict[str, str]]:
    """(values, kinds) of ``claim.record``'s ``measured``: a value is a :class:`Quantity`, or named in
    ``kinds``, or a verdict (strings, booleans, None and lists of them); a number without a kind is refused."""
    kinds = dict(kinds or {})
    values, found, missing = {}, {}, []
    for name, value in measured.items():
        if isinstance(value, Quantity):
            value, kind = value.value, value.kind
        else:
            kind = kinds.get(name)
        if kind is None:
            if has_numbers(value):
                missing.append(name)
                continue
            kind = Kind.VERDICT
        values[name], found[name] = value, Kind(kind).value
    if missing:
        raise TypeError(f"measured values without a kind: {missing}; record each number as Kind.X(value) or "
                        "name it in kinds= (stabcheck.reporting.rows.Kind lists the kinds)")
    return values, found


# Kinds of the rows written before kinds existed, by name; the first match wins.
LEGACY_KINDS: tuple[tuple[str, Kind], ...] = (
    ("*verdict*", Kind.VERDICT), ("*converged*", Kind.VERDICT), ("gd criterion*", Kind.VERDICT),
    ("regime", Kind.VERDICT), ("status", Kind.VERDICT), ("sigma engine", Kind.VERDICT), ("minima", Kind.VERDICT),
    ("setups", Kind.VERDICT), ("outside new box", Kind.VERDICT), ("theorem1 stable", Kind.VERDICT),
    ("* beyond the bound of *", Kind.VERDICT),
    ("*seconds*", Kind.SECONDS),
    ("*: ours - paper", Kind.AGREEMENT), ("*: allowed", Kind.AGREEMENT), ("*: seed sd", Kind.AGREEMENT),
    ("final a in window", Kind.RESTART_SHARPNESS),
    ("left at iteration", Kind.EVENT), ("loss peak iteration", Kind.EVENT), ("sqrt(t) diffusion growth", Kind.EVENT),
    ("iterations to re-converge", Kind.ITERATIONS),
    ("loss rise", Kind.GROWTH), ("*growth*", Kind.GROWTH), ("log-deviation slope", Kind.GROWTH),
    ("deviation factor per step", Kind.GROWTH),
    ("gap *", Kind.RELATIVE), ("max gap", Kind.RELATIVE), ("* vs *", Kind.RELATIVE), ("*relative*", Kind.RELATIVE),
    ("*predicted error", Kind.RELATIVE),
    ("*threshold lr*", Kind.VALUE), ("* (a, s, t1)", Kind.VALUE), ("* corner 1% out", Kind.THEOREM1),
    ("p", Kind.SETTING),
    ("p (*", Kind.P_VALUE), ("* p", Kind.P_VALUE), ("max p *", Kind.P_VALUE),
    ("theorem1 steps", Kind.ITERATIONS), ("*theorem1*", Kind.THEOREM1), ("t1 *", Kind.THEOREM1), ("e(1-eta h)^2", Kind.THEOREM1),
    ("*loss*", Kind.LOSS),
    ("*iterations", Kind.ITERATIONS), ("escape step *", Kind.ITERATIONS),
    ("solutions", Kind.COUNT), ("runs", Kind.COUNT), ("batches", Kind.COUNT), ("test images", Kind.COUNT),
    ("projections", Kind.COUNT),
    ("r(a, s)", Kind.CORRELATION), ("kendall tau *", Kind.CORRELATION),
    ("*accuracy*", Kind.ACCURACY), ("difference b=* - gd *", Kind.ACCURACY),
    ("fraction *", Kind.FRACTION),
    ("a side", Kind.SETTING), ("s side*", Kind.SETTING), ("boxes *", Kind.SETTING), ("edge-regime lrs", Kind.SETTING),
    ("smaller lr in this run", Kind.SETTING), ("span", Kind.SETTING),
    ("*a eta/2", Kind.RATIO), ("*s/bound*", Kind.RATIO), ("s/a *", Kind.RATIO), ("*a/(2(1+mu)/eta)", Kind.RATIO),
    ("a", Kind.SHARPNESS), ("mean a*", Kind.SHARPNESS), ("a per seed", Kind.SHARPNESS), ("a at restart", Kind.SHARPNESS),
    ("new a", Kind.SHARPNESS), ("a (*", Kind.SHARPNESS), ("reported a", Kind.SHARPNESS), ("a: *", Kind.SHARPNESS),
    ("lambda_max(h)", Kind.SHARPNESS), ("sharpest *", Kind.SHARPNESS), ("*a1+a2*", Kind.SHARPNESS),
    ("s", Kind.NONUNIFORMITY), ("mean s*", Kind.NONUNIFORMITY), ("s at restart", Kind.NONUNIFORMITY),
    ("new s", Kind.NONUNIFORMITY), ("s (*", Kind.NONUNIFORMITY), ("*lambda_max(sigma)*", Kind.NONUNIFORMITY),
    ("*products", Kind.PRODUCTS), ("matvecs", Kind.PRODUCTS),
    ("eigenvalue", Kind.VALUE), ("abs(1-eta a)", Kind.VALUE), ("eig h_*", Kind.VALUE), ("final (a0, a1, a2)", Kind.VALUE), ("final x", Kind.VALUE),
    ("max abs(x_t - 1)", Kind.VALUE), ("*norm(e_*", Kind.VALUE), ("rate *", Kind.VALUE), ("max tr s_t / tr s_0", Kind.VALUE),
    ("exact rho", Kind.VALUE), ("bracket *", Kind.VALUE), ("*m_t", Kind.VALUE), ("mc ci *", Kind.VALUE),
)

class Tag(str, Enum):
    """What a row is for the figures that draw it (``claim.record(..., tag=Tag.X)``)."""

    ONE_DIMENSIONAL = "one-dimensional escape"   # C4: SGD paths leaving x = 1
    APPENDIX_B = "appendix-b jumps"              # C11: GD and SGD paths of the appendix's toy
    ESCAPE = "escape trajectory"                 # C9: a restart's sharpness and loss
    EDGE = "edge trajectory"                     # C5: GD's sharpness from initialisation to the edge


# Figure tags of the rows written before tags existed, by test function.
LEGACY_TAGS = {"test_sgd_leaves_x1_and_ends_at_x0": Tag.ONE_DIMENSIONAL,
               "test_sgd_jumps_and_converges_to_larger_a": Tag.APPENDIX_B,
               "test_restart_leaves_unstable_and_keeps_stable_minima": Tag.ESCAPE}


def legacy_kind(name: str) -> Kind | None:
    """The kind :data:`LEGACY_KINDS` gives a value of a row without kinds; None when no rule names it."""
    return next((kind for pattern, kind in LEGACY_KINDS if fnmatch.fnmatchcase(name.lower(), pattern)), None)


def legacy_tag(test: str) -> str:
    """The figure tag of a row without one, from its test function (:data:`LEGACY_TAGS`); empty for others."""
    tag = LEGACY_TAGS.get(test.split("::")[-1].partition("[")[0])
    return tag.value if tag else ""


@dataclass(frozen=True)
class ClaimRow:
    """One row of ``claims.json``: a case's measured values with their kinds, and what it reports besides."""

    claim: str
    test: str
    outcome: str
    case: str = ""
    measured: dict = field(default_factory=dict)
    kinds: dict = field(default_factory=dict)     # name → Kind value; legacy rows: from LEGACY_KINDS
    tag: str = ""
    duration_s: float | None = None
    extra: dict = field(default_factory=dict)     # expected, params, timings_s, minimum(s), headline, ...
    schema: int = SCHEMA

    def as_json(self) -> dict:
        """The row as ``claims.json`` stores it (standard JSON)."""
        row = {"schema": self.schema, "claim": self.claim, "test": self.test, "case": self.case, **self.extra,
               "measured": self.measured, "kinds": self.kinds, "tag": self.tag, "outcome": self.outcome}
        if self.duration_s is not None:
            row["duration_s"] = self.duration_s
        return encode_numbers(row)

    def kind(self, name: str) -> Kind | None:
        """The kind of the measured value ``name`` (of ``outer/inner`` for nested values: the outer's)."""
        kind = self.kinds.get(name) or self.kinds.get(name.partition("/")[0])
        return Kind(kind) if kind else None

    @classmethod
    def from_json(cls, data, where: str) -> "ClaimRow":
        """A row of ``claims.json``; :class:`RowError` saying what is wrong when it is not one."""
        if not isinstance(data, dict):
            raise RowError(f"{where}: a row is a {type(data).__name__}, not an object")
        for key in ("claim", "test", "outcome"):
            if not isinstance(data.get(key), str):
                raise RowError(f"{where}: a row's {key!r} is {data.get(key)!r}, not a string")
        measured = data.get("measured") or {}
        if not isinstance(measured, dict):
            raise RowError(f"{where}: row {data['test']}: 'measured' is a {type(measured).__name__}, not an object")
        kinds = data.get("kinds")
        schema = data.get("schema", 1)
        if schema not in (1, SCHEMA):
            raise RowError(f"{where}: row {data['test']} has schema {schema!r}; this stabcheck reads 1 and {SCHEMA}")
        if kinds is None:
            kinds = {k: (legacy_kind(k) or (Kind.VALUE if has_numbers(v) else Kind.VERDICT)).value
                     for k, v in measured.items()}
        elif not isinstance(kinds, dict) or not all(isinstance(v, str) and v in KIND_VALUES for v in kinds.values()):
            raise RowError(f"{where}: row {data['test']}: 'kinds' must map names to kinds of {sorted(KIND_VALUES)}")
        elif set(measured) - set(kinds):
            raise RowError(f"{where}: row {data['test']}: measured {sorted(set(measured) - set(kinds))} without a kind")
        measured = {k: v if kinds.get(k) == Kind.VERDICT.value else decode_numbers(v) for k, v in measured.items()}
        tag = data.get("tag") or legacy_tag(data["test"])
        duration = data.get("duration_s")
        extra = {k: v for k, v in data.items() if k not in ROW_FIELDS}
        return cls(data["claim"], data["test"], data["outcome"], str(data.get("case") or ""), measured, kinds,
                   str(tag), duration if is_number(duration) else None, extra, schema)


def upgrade_report(report: dict, where: str = "claims.json") -> dict:
    """A ``claims.json`` of an older schema as this one writes it: every row with its kinds and tag (from
    :data:`LEGACY_KINDS` and :data:`LEGACY_TAGS`) and non-finite numbers as strings (standard JSON)."""
    rows = [ClaimRow.from_json(r, where).as_json() for r in report.get("rows", [])]
    return encode_numbers({**report, "schema": SCHEMA, "rows": rows})


KIND_VALUES = {k.value for k in Kind}
ROW_FIELDS = ("schema", "claim", "test", "case", "measured", "kinds", "tag", "outcome", "duration_s")
