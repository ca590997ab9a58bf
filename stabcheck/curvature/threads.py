"""The one place that sets torch's CPU thread count: :func:`torch_threads` for a block of work, and the
policy for measurements, which run with :data:`MEASUREMENT_THREADS` torch thread on the CPU.

The order of floating-point reductions depends on torch's CPU thread count, so the same
measurement run serially (default count) and under pytest-xdist (one per worker) differed at
about 1e-8. Running every CPU measurement with one thread makes the numbers independent of where
they run; the measurements are dominated by many small products, which gain little from threads.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

#: torch CPU threads during a measurement.
MEASUREMENT_THREADS = 1


@contextmanager
def torch_threads(count: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Run the block with ``count`` torch CPU threads (None: leave the count alone); restore it after.

    Other devices are left alone (their kernels do not use torch's CPU thread pool).
    """
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"a thread count must be a positive integer or None, got {count!r}")
    if count is None or torch.device(device).type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def measurement_threads(device: torch.device | str) -> Iterator[None]:
    """Run the block with :data:`MEASUREMENT_THREADS` torch thread on the CPU; restore the count after.

    Other devices are left alone (their kernels do not use torch's CPU thread pool).

    >>> before = torch.get_num_threads()
    >>> with measurement_threads("cpu"):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
    """
    with torch_threads(MEASUREMENT_THREADS, device):
        yield
