"""Measurement sharded over processes with ``torch.distributed``: each rank holds a contiguous slice of the samples.

H v = (1/n) Σ_i H_i v, Σ v and the Theorem-1 products are sums over samples divided by n. A
sharded problem sums the products of its own samples, the sums of all ranks are all-reduced (SUM),
and every rank divides by the total n: so a rank's share counts by its number of samples, every
rank gets the same product, and the eigensolvers, seeded alike, take the same iterates everywhere
and return the same result on every rank. Single-process use needs none of this.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)::

    torchrun --nproc_per_node 2 -m stabcheck measure --model net.pt --arch fnn --data fashion_mnist ...

or, in a script started by torchrun::

    group = distributed.init(device="cpu")            # gloo on the CPU, nccl on CUDA; None for one process
    prob = distributed.shard(Problem(net, x, y), group) # the same full data on every rank; unchanged for one process
    a = stabcheck.sharpness(prob)                       # identical on every rank

A rank that fails does not leave the others waiting: a collective on a process group whose peer
exited fails at once, one whose peer stopped answering fails after ``timeout_s``, and either
raises :class:`DistributedError` on every waiting rank (gloo; on a NCCL timeout torch's watchdog
tears the process down instead). ``torchrun`` also stops every rank when one exits with an error.

>>> shard_bounds(7, 3)
[range(0, 3), range(3, 5), range(5, 7)]
"""
from __future__ import annotations

import atexit
import math
import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .problem import Params, Problem, ProblemError

#: Seconds a rank waits for the others at the rendezvous and at each collective before it fails.
DEFAULT_TIMEOUT_S = 600.0


class DistributedError(RuntimeError):
    """A collective across the ranks failed: another rank failed, exited, or did not answer in time."""


def shard_bounds(n: int, world_size: int) -> list[range]:
    """Contiguous sample ranges of the ranks: the first n mod W ranks hold one sample more (like np.array_split)."""
    if world_size < 1 or n < world_size:
        raise ProblemError(f"{n} samples cannot be split over {world_size} processes: each needs at least one sample; "
                           "use more samples or fewer processes")
    base, extra = divmod(n, world_size)
    starts = [r * base + min(r, extra) for r in range(world_size + 1)]
    return [range(starts[r], starts[r + 1]) for r in range(world_size)]


def rank(group: dist.ProcessGroup | None = None) -> int:
    """This process's rank in ``group`` (default: the whole world); 0 without a process group."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world_size(group: dist.ProcessGroup | None = None) -> int:
    """Number of ranks in ``group`` (default: the whole world); 1 without a process group."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def init(device: torch.device | str = "cpu", backend: str | None = None,
         timeout_s: float = DEFAULT_TIMEOUT_S) -> dist.ProcessGroup | None:
    """Join the process group torchrun describes (env RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).

    Returns None, and starts nothing, for a world of one process (WORLD_SIZE unset or 1), and the
    default group when one is already initialised. ``backend`` defaults to gloo for a CPU
    ``device`` and nccl for CUDA, where each rank takes the GPU of its LOCAL_RANK. A rank that
    does not reach the rendezvous within ``timeout_s`` makes the others raise :class:`DistributedError`.
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not (0 < timeout_s < math.inf):
        raise ValueError(f"timeout_s must be a positive finite number of seconds, got {timeout_s!r}")
    if dist.is_available() and dist.is_initialized():
        return dist.group.WORLD
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number of processes; "
                               "launch with torchrun, which sets it") from None
    if world == 1:
        return None
    if not dist.is_available():
        raise DistributedError(f"WORLD_SIZE is {world} but this torch build has no torch.distributed")
    dev = torch.device(device)
    device_id = None
    if dev.type == "cuda":
        device_id = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device_id)  # "cuda" without an index now means this rank's GPU
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    try:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s), device_id=device_id)
    except RuntimeError as err:
        raise DistributedError(
            f"rank {os.environ.get('RANK', '?')} of {world} could not join the process group "
            f"({backend}, timeout {timeout_s:g} s): another rank failed before joining, or MASTER_ADDR/MASTER_PORT "
            f"are wrong ({err})"
        ) from err
    atexit.register(_leave)
    return dist.group.WORLD


def _leave() -> None:
    # NCCL warns of possibly pending operations when a process exits without leaving its group.
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardedProblem(Problem):
    """A :class:`Problem` of n samples of which this rank holds the contiguous range ``samples``.

    ``n`` is the total over the ranks, ``n_local`` the number held here (what :meth:`chunks`
    covers); :meth:`all_sum` all-reduces a sum over the local samples. Built by :func:`shard`
    from the full problem, whose checks at construction already ran on all n samples. The dense
    helpers of :mod:`stabcheck.curvature.exact` see only the local samples: use them unsharded.
    """

    def __init__(self, problem: Problem, group: dist.ProcessGroup | None = None):
        # No Problem.__init__: the state is the full problem's, already validated, less the other ranks' samples.
        self.__dict__.update(problem.__dict__)
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.samples = shard_bounds(problem.n, self.world_size)[self.rank]
        self._n_total = problem.n
        # Copies, so that the full data can be freed once the caller drops the full problem.
        self.inputs = problem.inputs[self.samples.start:self.samples.stop].clone()
        self.targets = problem.targets[self.samples.start:self.samples.stop].clone()

    @property
    def n(self) -> int:
        """Number of samples on all ranks together."""
        return self._n_total

    def all_sum(self, tree: Params) -> Params:
        """Σ over the ranks of each leaf, in one all-reduce of the leaves laid end to end; ``tree`` is left alone."""
        names = list(tree)
        flat = torch.cat([tree[k].reshape(-1) for k in names])
        try:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=self.group)
        except RuntimeError as err:
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: summing the samples' products over the ranks failed: another "
                f"rank failed, exited or stopped answering within the process group's timeout ({err})"
            ) from err
        parts = flat.split([tree[k].numel() for k in names])
        return {k: part.view(tree[k].shape) for k, part in zip(names, parts)}


def _fingerprint(problem: Problem) -> torch.Tensor:
    """(n, d, then position-weighted float64 sums of the inputs, the targets and x): a checksum that differs
    between ranks holding other samples, the same samples in another order, or other parameters."""
    order = torch.arange(1, problem.n + 1, dtype=torch.float64, device=problem.device)

    def weighted(t: torch.Tensor) -> torch.Tensor:
        return order @ t.reshape(problem.n, -1).to(torch.float64).sum(1)

    flat = problem.flatten(problem.params).to(torch.float64)
    x_sum = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=problem.device) @ flat
    sizes = torch.tensor([problem.n, problem.dim], dtype=torch.float64, device=problem.device)
    return torch.cat([sizes, torch.stack([weighted(problem.inputs), weighted(problem.targets), x_sum])])


def shard(problem: Problem, group: dist.ProcessGroup | None = None) -> Problem:
    """This rank's share of ``problem`` (the same full problem on every rank of ``group``).

    Rank r of W holds samples ``shard_bounds(n, W)[r]``. Returns ``problem`` itself without a
    process group or in a world of one. Ranks whose problems differ (n, d, the samples or their
    order, the parameters) raise :class:`ProblemError` on every rank.
    """
    if isinstance(problem, ShardedProblem):
        raise ProblemError("the problem is already sharded; shard the full problem once")
    if world_size(group) == 1:
        return problem
    shard_bounds(problem.n, world_size(group))  # too few samples: refused alike on every rank, before any collective
    local = _fingerprint(problem)
    every = [torch.empty_like(local) for _ in range(world_size(group))]
    try:
        dist.all_gather(every, local, group=group)
    except RuntimeError as err:
        raise DistributedError(f"rank {rank(group)} of {world_size(group)}: comparing the ranks' problems failed: "
                               f"another rank failed, exited or stopped answering ({err})") from err
    names = ("n", "d", "inputs", "targets", "parameters")
    for r, other in enumerate(every):
        differ = [name for name, a, b in zip(names, other.tolist(), every[0].tolist())
                  if not math.isclose(a, b, rel_tol=1e-9)]  # rounding of the sums on other devices only
        if differ:
            raise ProblemError(f"rank {r} holds a different problem than rank 0 ({', '.join(differ)} differ): every rank "
                               "must build the same full problem (same samples in the same order, same parameters)")
    return ShardedProblem(problem, group)
