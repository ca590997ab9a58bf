"""The last step the per-sample engines share: from Σ_i H_i w_i to Σv."""
from __future__ import annotations

from ..problem import Params, Problem
from ..products import hvp, scale, sub


def finish_sigma(problem: Problem, acc: Params, w_sum: Params | None, v: Params, hv: Params | None,
                 centred: bool) -> Params:
    """Centred: (1/n)Σ H_i w_i − H w̄ with w_i = H_i v − H v.  Uncentred: (1/n)Σ H_i² v − H² v."""
    n = problem.n
    acc = problem.all_sum(acc)  # the sums so far ran over the samples held here only
    if centred:
        w_sum = problem.all_sum(w_sum)
        return sub(scale(acc, 1.0 / n), hvp(problem, scale(w_sum, 1.0 / n)))
    return sub(scale(acc, 1.0 / n), hvp(problem, hvp(problem, v)))
