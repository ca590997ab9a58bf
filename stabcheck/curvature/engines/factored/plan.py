"""The plan step of the factored engine: a model's layer rules, checked once per problem and cached.

The model is flattened through (nested) ``nn.Sequential`` into leaf modules, each given the rule of
:mod:`.layers` that matches it; anything without one is declared unsupported, and a probe runs
pass 1 on two samples against the model's own forward. The verdict (a plan or the reason why not)
is cached per problem. Only :class:`UnsupportedModel` is a verdict: any other error raised while
planning or probing propagates.
"""
from __future__ import annotations

import weakref
from typing import Iterator

import torch
from torch import nn

from ...problem import Problem
from .layers import (PIECEWISE_LINEAR, SMOOTH, Conv2dRule, LayerRule, LinearMapRule, LinearRule, MaxPool2dRule,
                     PiecewiseLinearRule, SmoothActivationRule, UnsupportedModel, module_label)
from .passes import Plan, pass1

_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)
_LINEAR_MAPS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


def _leaves(module: nn.Module, prefix: str) -> Iterator[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise UnsupportedModel(f"module {module_label(prefix)!r} ({type(module).__name__}) overrides Sequential.forward")
        for name, child in module._modules.items():  # as Sequential.forward: repeated modules included
            yield from _leaves(child, f"{prefix}{name}.")
    else:
        yield prefix, module


def rule_for(module: nn.Module, prefix: str) -> LayerRule:
    """The rule of a leaf module named ``prefix`` (with its trailing dot); UnsupportedModel if none."""
    label = module_label(prefix)
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedModel(f"module {label!r} has forward hooks")
    base = next(c for c in type(module).__mro__ if c.__module__.startswith("torch.nn."))
    if base is not nn.Module and not type(module).forward.__module__.startswith("torch.nn."):
        # The rules below match by class; a subclass with its own forward may compute anything else.
        raise UnsupportedModel(f"module {label!r} ({type(module).__name__}) overrides {base.__name__}.forward")
    if type(module) is nn.Linear:
        return LinearRule(module, prefix)
    if type(module) is nn.Conv2d:
        return Conv2dRule(module, prefix)
    if isinstance(module, SMOOTH):
        return SmoothActivationRule(module, prefix)
    if isinstance(module, PIECEWISE_LINEAR):
        return PiecewiseLinearRule(module, prefix)
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return MaxPool2dRule(module, prefix)
    if isinstance(module, _RESHAPES + _LINEAR_MAPS):
        return LinearMapRule(module, prefix)
    if isinstance(module, nn.modules.dropout._DropoutNd) and (not module.training or module.p == 0):
        return LinearMapRule(nn.Identity(), prefix)
    raise UnsupportedModel(f"module {label!r} ({type(module).__name__}) has no exact factored rule")


def build_plan(problem: Problem) -> Plan:
    """The rules of ``problem.model``, which must own exactly the problem's parameters."""
    layers = tuple(rule_for(m, prefix) for prefix, m in _leaves(problem.model, ""))
    keys = [k for layer in layers for k in layer.keys]
    if sorted(keys) != sorted(problem.names):
        raise UnsupportedModel(
            f"the model's parameters {sorted(set(problem.names) ^ set(keys))} are not plain Linear/Conv2d weights"
        )
    first_param = next((i for i, layer in enumerate(layers) if layer.keys), None)
    if first_param is None:
        raise UnsupportedModel("the model has no parameters")
    return Plan(layers, first_param)


def probe(plan: Plan, problem: Problem) -> None:
    """Run pass 1 on two samples and compare its output with the model's own forward."""
    x, y = problem.inputs[:2], problem.targets[:2]
    with torch.no_grad():
        z = pass1(plan, problem.params, x, y, problem.loss, problem.params).outputs
        expected = problem.forward(problem.params, x)
    if z.shape != expected.shape or not torch.allclose(z, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())):
        raise UnsupportedModel("the model's forward differs from the composition of its Sequential layers")


_PLANS: "weakref.WeakKeyDictionary[Problem, Plan | str]" = weakref.WeakKeyDictionary()


def unsupported_reason(problem: Problem) -> str | None:
    """None when the factored engine handles ``problem``, else why not (the module and rule missing).

    Raises whatever a rule raises other than :class:`UnsupportedModel` (a bug, not a verdict).
    """
    if problem not in _PLANS:
        try:
            plan = build_plan(problem)
            probe(plan, problem)
            _PLANS[problem] = plan
        except UnsupportedModel as exc:
            # Only the engine's own verdict is cached and makes ``auto`` move on; any other error is
            # a bug in a rule and propagates, to be seen rather than hidden behind a costlier engine.
            _PLANS[problem] = str(exc)
    entry = _PLANS[problem]
    return entry if isinstance(entry, str) else None


def supports(problem: Problem) -> bool:
    """True when the factored engine computes Σv and H v for ``problem`` exactly."""
    return unsupported_reason(problem) is None


def plan_for(problem: Problem) -> Plan:
    """The cached plan of a supported problem; UnsupportedModel with the reason otherwise."""
    reason = unsupported_reason(problem)
    if reason is not None:
        raise UnsupportedModel(f"the factored Σ engine cannot handle this model: {reason}; use engine='auto' or 'vmap'")
    return _PLANS[problem]
