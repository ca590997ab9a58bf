"""Σ-product engines: one registry of objects that know their name and which problems they support.

Every engine maps (problem, v, centred) to Σ v as a parameter dict; all give the same matrix.
``engine="auto"`` takes the first engine of :data:`SIGMA_ENGINES` marked ``auto`` that supports
the problem. An engine's memory limits are its options (:meth:`SigmaEngine.with_options`); a
configured engine is accepted wherever an engine name is. No engine batches more than
``Problem.chunk_size`` samples at once.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable

from ..problem import Params, Problem, ProblemError
from . import factored
from .factored import FactoredOptions
from .loop import sigma_loop
from .vmap import VmapOptions, sigma_vmap


def _always(problem: Problem) -> bool:
    return True


@dataclass(frozen=True)
class SigmaEngine:
    """A way to compute Σ v; ``supports(problem)`` is False where it has no rule.

    ``supports`` raises only on a bug (never for a model it cannot handle), so ``auto`` moves on to the
    next engine for an unsupported model only and never hides a failure. ``options`` is the engine's
    frozen options object (its memory limits), passed to ``apply`` after (problem, v, centred); None
    for an engine without options. ``batchable``: ``torch.func.vmap`` can batch ``apply`` over v.
    """

    name: str
    apply: Callable[..., Params]
    supports: Callable[[Problem], bool] = _always
    auto: bool = True      # eligible for engine="auto"
    summary: str = ""
    options: Any = None
    batchable: bool = True

    def __call__(self, problem: Problem, v: Params, centred: bool = True) -> Params:
        if self.options is None:
            return self.apply(problem, v, centred)
        return self.apply(problem, v, centred, self.options)

    def with_options(self, **changes: Any) -> SigmaEngine:
        """This engine with some options changed.

        >>> SIGMA_ENGINES["factored"].with_options(hold_records_bytes=0).options
        FactoredOptions(hold_records_bytes=0)
        """
        if self.options is None:
            raise ProblemError(f"the {self.name!r} Σ engine has no options")
        names = [f.name for f in fields(self.options)]
        unknown = sorted(set(changes) - set(names))
        if unknown:
            raise ProblemError(f"the {self.name!r} Σ engine has no option {', '.join(unknown)}; its options: {names}")
        return replace(self, options=replace(self.options, **changes))


#: Registered engines by name, in the order ``auto`` tries them.
SIGMA_ENGINES: dict[str, SigmaEngine] = {e.name: e for e in (
    SigmaEngine("factored", factored.sigma_factored, factored.supports, options=FactoredOptions(),
                summary="exact per-sample factors in two batched passes; Sequential Linear/Conv2d nets"),
    SigmaEngine("vmap", sigma_vmap, options=VmapOptions(),
                summary="per-sample HVPs batched by torch.func.vmap; any model"),
    # vmap cannot trace the loop's torch.autograd.grad calls on graphs of requires_grad leaves.
    SigmaEngine("loop", sigma_loop, auto=False, batchable=False,
                summary="the paper's per-sample double back-propagation"),
)}


def resolve_engine(problem: Problem, engine: str | SigmaEngine) -> SigmaEngine:
    """The engine object for a name in :data:`SIGMA_ENGINES` (or a configured engine itself), or the
    first supporting one for ``"auto"``.

    >>> import torch
    >>> p = Problem(torch.nn.Linear(2, 1), torch.randn(3, 2), torch.randn(3, 1), loss="mse")
    >>> resolve_engine(p, "auto").name, resolve_engine(p, "loop").name
    ('factored', 'loop')
    """
    if isinstance(engine, SigmaEngine):
        return engine
    if engine == "auto":
        chosen = next((e for e in SIGMA_ENGINES.values() if e.auto and e.supports(problem)), None)
        if chosen is None:
            raise ProblemError(f"no automatic Σ engine supports this problem; name one of {sorted(SIGMA_ENGINES)}")
        return chosen
    if engine not in SIGMA_ENGINES:
        raise ProblemError(f"unknown Σ engine {engine!r}; choose 'auto' or one of {sorted(SIGMA_ENGINES)}")
    return SIGMA_ENGINES[engine]
