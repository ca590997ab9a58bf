"""The closed-form quantities of Theorem 1 and its corollary (PAPER.md §1)."""
from __future__ import annotations

import math


def check_lr(lr: float) -> float:
    lr = float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be a positive finite number, got {lr}")
    return lr


def check_batch(n: int, batch_size: int) -> None:
    if n < 1:
        raise ValueError(f"number of samples n must be at least 1, got {n}")
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch size must lie in [1, n={n}], got {batch_size}")


def noise_factor(n: int, batch_size: int) -> float:
    """p = (n − B)/(B(n − 1)): E_ξ[(I − ηH_ξ)²] = (I − ηH)² + η² p Σ for B-subsets without replacement.

    >>> noise_factor(10, 1), noise_factor(10, 10)
    (1.0, 0.0)
    """
    check_batch(n, batch_size)
    if batch_size == n:
        return 0.0
    return (n - batch_size) / (batch_size * (n - 1))


def sharpness_bound(lr: float) -> float:
    """a ≤ 2/η: the GD criterion, also necessary for SGD."""
    return 2.0 / check_lr(lr)


def nonuniformity_bound(lr: float, batch_size: int, n: int) -> float:
    """s ≤ √(B(n − 1)/(n − B))/η (≈ √B/η for B ≪ n); infinite for GD (B ≥ n).

    >>> round(nonuniformity_bound(0.1, 1, 1000), 6)
    10.0
    """
    lr = check_lr(lr)
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch size must be positive, got n={n}, B={batch_size}")
    if batch_size >= n:
        return math.inf
    return math.sqrt(batch_size * (n - 1) / (n - batch_size)) / lr
