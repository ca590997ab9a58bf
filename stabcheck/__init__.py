"""stabcheck: sharpness, non-uniformity and the dynamical-stability criteria of SGD minima.

Wu, Ma & E, "How SGD Selects the Global Minima in Over-parameterized Learning: A Dynamical
Stability Perspective", NeurIPS 2018.

Three layers, imports running one way (reporting → experiments → curvature):

* :mod:`stabcheck.curvature`: the problem and its losses, Hessian-vector products, the Σ engines,
  operators, eigensolvers, the criteria (sharpness, non-uniformity, Theorem 1) and the exact
  mean-square criterion of small problems;
* :mod:`stabcheck.experiments`: the paper's data, models, trainers, the minima cache and toys;
* :mod:`stabcheck.reporting`: claim reports, figures and the command line.

>>> import torch, stabcheck
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
>>> prob = stabcheck.Problem(net, torch.randn(8, 3), torch.randn(8, 2), loss="mse", dtype=torch.float64)
>>> a = stabcheck.sharpness(prob)          # SharpnessResult: .value = a = λmax(H)
>>> s = stabcheck.non_uniformity(prob)     # NonUniformityResult: .value = s, .eigenvalue = λmax(Σ)
>>> t = stabcheck.theorem1(prob, lr=0.1, batch_size=2, sharpness=a)  # d = 26 > nK = 16: the sample form
>>> t.form, t.verdict in ("certified stable", "not certified", "unknown"), t.mu == t.lr * t.eigen.value
('sample', True, True)
>>> sweep = stabcheck.theorem1_batch_sizes(prob, lr=0.1, batch_sizes=[1, 2, 8], sharpness=a)
>>> [r.source in ("solve", "bound") for r in sweep]   # each B solved, or decided by bounds
[True, True, True]

Each criterion's result is immutable and holds its eigensolver run (``.eigen``, an
:class:`EigenResult` whose ``value`` is the eigenvalue of the operator solved).
"""
from .curvature import exact
from .curvature.bounds import noise_factor, nonuniformity_bound, sharpness_bound
from .curvature.criteria import SolveOptions, non_uniformity, sharpness, theorem1
from .curvature.results import NonUniformityResult, SharpnessResult, Theorem1Bound, Theorem1Result, Theorem1Sweep
from .curvature.sample_space import SampleTheorem1Result
from .curvature.sweep import theorem1_batch_sizes
from .curvature.eigen import EigenResult, lanczos, power_iteration
from .curvature.engines import SIGMA_ENGINES
from .curvature.operators import HessianOperator, SigmaOperator, Theorem1Operator
from .curvature.problem import Problem, ProblemError
from .curvature.products import hvp
from .experiments import monitor, toys
from .experiments.monitor import StabilityMonitor, StabilityWarning

__version__ = "0.1.0"

__all__ = [
    "exact", "monitor", "toys",
    "EigenResult", "HessianOperator", "NonUniformityResult", "Problem", "ProblemError", "SIGMA_ENGINES",
    "SampleTheorem1Result", "SharpnessResult", "SigmaOperator", "SolveOptions", "StabilityMonitor",
    "StabilityWarning", "Theorem1Bound", "Theorem1Operator", "Theorem1Result", "Theorem1Sweep",
    "hvp", "lanczos", "noise_factor", "non_uniformity", "nonuniformity_bound", "power_iteration", "sharpness",
    "sharpness_bound", "theorem1", "theorem1_batch_sizes",
]
