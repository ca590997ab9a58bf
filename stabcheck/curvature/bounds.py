"""The closed-form quantities of Theorem 1 and its corollary (PAPER.md §1).

Arguments are checked, never coerced: a learning rate must be a positive finite real number and
a sample count or batch size a whole number (``True`` and ``2.5`` are refused with ``TypeError``,
so p is never computed from a batch size that no SGD run can have).
"""
from __future__ import annotations

import math
from numbers import Integral, Real


def check_lr(lr: float) -> float:
    """η as a float; ``TypeError`` for a non-number or bool, ``ValueError`` unless 0 < η < ∞.

    >>> check_lr(0.1)
    0.1
    """
    if isinstance(lr, bool) or not isinstance(lr, Real):
        raise TypeError(f"learning rate must be a real number, got {lr!r} ({type(lr).__name__})")
    lr = float(lr)
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"learning rate must be a positive finite number, got {lr}")
    return lr


def check_count(name: str, value: int) -> int:
    """``value`` as an int if it is a whole number ≥ 1 (bool refused); else ``TypeError`` / ``ValueError``.

    >>> check_count("batch size", 4)
    4
    """
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")
    return int(value)


def check_batch(n: int, batch_size: int) -> None:
    """1 ≤ B ≤ n with both whole numbers."""
    n = check_count("number of samples n", n)
    batch_size = check_count("batch size", batch_size)
    if batch_size > n:
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
    n = check_count("number of samples n", n)
    batch_size = check_count("batch size", batch_size)
    if batch_size >= n:
        return math.inf
    return math.sqrt(batch_size * (n - 1) / (n - batch_size)) / lr
