"""Tiny models (≤ 2k parameters) and their dense float64 curvature, the ground truth of the unit tests."""
from __future__ import annotations

import torch
from torch import nn
from torch.func import hessian

from stabcheck import Problem
from stabcheck.curvature.exact import dense_sigma

__all__ = ["MODELS", "N_SAMPLES", "dense_curvature", "dense_sample_hessians", "dense_sigma", "make_problem"]

N_SAMPLES = 6


def mlp(activation: type[nn.Module]) -> nn.Module:
    return nn.Sequential(nn.Linear(4, 8), activation(), nn.Linear(8, 6), activation(), nn.Linear(6, 3))


def cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(12, 3),
    )


MODELS = {"mlp-relu": lambda: mlp(nn.ReLU), "mlp-tanh": lambda: mlp(nn.Tanh), "cnn-pool": cnn}


def make_problem(model_name: str, loss: str, seed: int = 0, n: int = N_SAMPLES) -> Problem:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MODELS[model_name]().double().eval()
    shape = (n, 1, 8, 8) if model_name == "cnn-pool" else (n, 4)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (n,), generator=gen)
    y = labels if loss == "ce" else torch.nn.functional.one_hot(labels, 3).double()
    return Problem(model, x, y, loss=loss, dtype=torch.float64)


def dense_sample_hessians(problem: Problem) -> torch.Tensor:
    """(n, d, d): H_i = ∇²f_i by torch.func.hessian."""
    flat = problem.flatten(problem.params)
    return torch.stack([
        hessian(lambda f: problem.single_loss(problem.unflatten(f), problem.inputs[i], problem.targets[i]))(flat)
        for i in range(problem.n)
    ])


def dense_curvature(problem: Problem) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(H_i stacked, H, Σ = (1/n) Σ_i (H_i − H)²)."""
    his = dense_sample_hessians(problem)
    return his, his.mean(0), dense_sigma(his)
