"""Kinds of the measured entries that shared helpers build (``claim.record(..., kinds=...)``)."""
from __future__ import annotations

from stabcheck.reporting.rows import Kind

#: Theorem 1 in sample space, where a minimum's entries carry it (μ is read against 2, like η·a).
SAMPLE_THEOREM1 = {"theorem1 mu": Kind.THEOREM1, "theorem1 mu margin": Kind.THEOREM1, "residual |H-G|": Kind.VALUE}

#: ``MeasuredMinimum.measured()`` (claims/measured.py): the entries every trained-net case reports.
MINIMUM = {"a": Kind.SHARPNESS, "s": Kind.NONUNIFORMITY, "a eta/2": Kind.RATIO, "s/bound": Kind.RATIO,
           "theorem1": Kind.THEOREM1, "final loss": Kind.LOSS, **SAMPLE_THEOREM1}


def suffixed(kinds: dict[str, Kind], suffix: str, prefix: str = "") -> dict[str, Kind]:
    """``kinds`` for entries renamed ``prefix + name + suffix`` (e.g. C9's "theorem1 at (lr', B')")."""
    return {f"{prefix}{name}{suffix}": kind for name, kind in kinds.items()}

#: a and s by the name the claims give them.
QUANTITY_KINDS = {"a": Kind.SHARPNESS, "s": Kind.NONUNIFORMITY}

#: C12's cross-checked quantities.
CROSS_CHECKED = {"a": Kind.SHARPNESS, "lambda_max(Sigma)": Kind.NONUNIFORMITY, "theorem1 solve": Kind.THEOREM1,
                 "theorem1 at a's vector": Kind.THEOREM1}

#: C9's restart entries (the matched stable restart's growth is named by its setting: :func:`escape`).
ESCAPE = {"a at restart": Kind.SHARPNESS, "s at restart": Kind.NONUNIFORMITY, "theorem1 at (lr', B')": Kind.THEOREM1,
          "final a in window": Kind.RESTART_SHARPNESS, "left at iteration": Kind.EVENT,
          "loss peak iteration": Kind.EVENT, "sqrt(T) diffusion growth": Kind.EVENT, "loss rise": Kind.GROWTH,
          "deviation growth to the loss peak": Kind.GROWTH, "growth over the larger of both": Kind.GROWTH,
          "log-deviation slope": Kind.GROWTH, "deviation factor per step": Kind.GROWTH,
          "iterations to re-converge": Kind.ITERATIONS, "EMA loss at the end": Kind.LOSS, "new a": Kind.SHARPNESS,
          "new s": Kind.NONUNIFORMITY, "new loss": Kind.LOSS, "new theorem1": Kind.THEOREM1,
          "max relative change of a": Kind.RELATIVE,
          **suffixed(SAMPLE_THEOREM1, " at (lr', B')"), **suffixed(SAMPLE_THEOREM1, "", prefix="new ")}


def escape(measured: dict) -> dict[str, Kind]:
    """The kinds of C9's ``measured``: :data:`ESCAPE`, and growth for the matched stable restart's entry."""
    return {**ESCAPE, **{k: Kind.GROWTH for k in measured if k.startswith("matched stable restart")}}
