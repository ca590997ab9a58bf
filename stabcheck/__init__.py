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
>>> a = stabcheck.sharpness(prob).value
>>> s = stabcheck.non_uniformity(prob).value
>>> stabcheck.theorem1(prob, lr=0.1, batch_size=2).stable in (True, False)
True
"""
from .curvature import exact
from .curvature.bounds import noise_factor, nonuniformity_bound, sharpness_bound
from .curvature.criteria import Theorem1Result, non_uniformity, sharpness, theorem1
from .curvature.eigen import EigenResult, lanczos, power_iteration
from .curvature.engines import SIGMA_ENGINES
from .curvature.operators import HessianOperator, SigmaOperator, Theorem1Operator
from .curvature.problem import Problem, ProblemError
from .curvature.products import hvp
from .experiments import toys

__version__ = "0.1.0"

__all__ = [
    "exact", "toys",
    "EigenResult", "HessianOperator", "Problem", "ProblemError", "SIGMA_ENGINES", "SigmaOperator",
    "Theorem1Operator", "Theorem1Result", "hvp", "lanczos", "noise_factor", "non_uniformity",
    "nonuniformity_bound", "power_iteration", "sharpness", "sharpness_bound", "theorem1",
]
