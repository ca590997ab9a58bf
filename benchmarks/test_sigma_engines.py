"""One Σv product per engine beside one full-batch H v, for the FNN and the VGG at n = 100, 1000, 4000.

The per-sample engines (loop: the paper's Appendix C, 2n per-sample products; vmap) cost n times
a per-sample product, so they are timed at n ≤ 1000 only, once at n = 1000; the summary gives
their n = 4000 cost as 4 × the n = 1000 time, labelled as extrapolated. Peak memory of loop and
vmap is measured at n = 100 (it does not grow with n: both hold one sample's graph or one
32-sample vmap chunk beside the chunked H v).
"""
from functools import lru_cache

import pytest
import torch

from stabcheck import Problem
from stabcheck.curvature.engines import SIGMA_ENGINES, factored
from stabcheck.curvature.products import hvp
from stabcheck.experiments.data import load_fashion_mnist, one_hot
from stabcheck.experiments.models import FNN

from .support import MODELS, RESULTS, SIZES, peak_bytes, problem, tangent

pytestmark = pytest.mark.perf

OPS = ("hv", "factored", "vmap", "loop")
PER_SAMPLE = ("vmap", "loop")


def _cases():
    for model in MODELS:
        for n in SIZES:
            for op in OPS:
                if op in PER_SAMPLE and n > 1000:
                    continue
                yield pytest.param(model, n, op, id=f"{model}-n{n}-{op}")


def _rounds(op: str, n: int) -> tuple[int, int]:
    """(rounds, warm-up rounds): medians of 5 where a product takes about a second or less."""
    if op in PER_SAMPLE:
        return (3, 0) if n <= 100 else (1, 0)
    return (5, 1) if n <= 1000 else (3, 1)


@pytest.mark.parametrize("model,n,op", list(_cases()))
def test_product(benchmark, model, n, op):
    prob = problem(model, n)
    v = tangent(prob)
    if op == "hv":
        def product():
            return hvp(prob, v)
    else:
        engine = SIGMA_ENGINES[op]

        def product():
            return engine(prob, v, True)

    if op == "factored":
        assert factored.unsupported_reason(prob) is None  # also runs the one-off probe outside the timing
    rounds, warmup = _rounds(op, n)
    benchmark.group = f"{model}-n{n}"
    benchmark.pedantic(product, rounds=rounds, iterations=1, warmup_rounds=warmup)
    peak = peak_bytes(product) if op not in PER_SAMPLE or n <= 100 else None
    row = {"model": model, "n": n, "op": op, "median_s": benchmark.stats.stats.median, "rounds": rounds,
           "peak_bytes": peak, "params": prob.dim}
    benchmark.extra_info.update(row)
    RESULTS["products"].append(row)


HV_PRODUCTS = {"hv": hvp, "factored-hv": factored.hvp}


@pytest.mark.parametrize("op", HV_PRODUCTS)
@pytest.mark.parametrize("model", MODELS)
def test_hv_of_factored_pass1(benchmark, model, op):
    """H v by forward-over-reverse (``hv``) beside pass 1 of the factored engine alone (``factored-hv``), n = 1000.

    Read the ratio of the two medians in the group. Not in the summary table, which knows the Σ engines' ops only.
    """
    prob = problem(model, 1000)
    v = tangent(prob)
    if op == "factored-hv":
        assert factored.supports(prob)  # also runs the one-off probe outside the timing
    benchmark.group = f"hv-{model}-n1000"
    benchmark.pedantic(lambda: HV_PRODUCTS[op](prob, v), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"model": model, "n": 1000, "op": op, "median_s": benchmark.stats.stats.median})


SIGMA_PER_HV = {"hv": hvp, "factored-hv": factored.hvp,
                "factored-sigma": lambda prob, v: factored.sigma_factored(prob, v, True)}


@lru_cache(maxsize=1)
def _small_fnn() -> Problem:
    """The small profile's FNN 784-50-50-10 on the first 100 FashionMNIST training images, random weights (seed 0)."""
    torch.manual_seed(0)
    data = load_fashion_mnist(100, with_test=False)
    return Problem(FNN(widths=(50, 50)).eval(), data.inputs, one_hot(data.labels, 10), loss="mse")


@pytest.mark.parametrize("op", SIGMA_PER_HV)
@pytest.mark.parametrize("size", ["small", "paper"])
def test_sigma_per_hv_of_the_fnn(benchmark, size, op):
    """The factored Σv beside the engine's own H v (pass 1 alone) and the autodiff H v, on the small profile's
    FNN (n = 100) and the paper's (n = 1000). Read the ratios of the medians within a group."""
    prob = _small_fnn() if size == "small" else problem("fnn", 1000)
    v = tangent(prob)
    assert factored.supports(prob)  # also runs the one-off probe outside the timing
    benchmark.group = f"sigma-per-hv-fnn-{size}"
    rounds = 50 if size == "small" else 5
    benchmark.pedantic(lambda: SIGMA_PER_HV[op](prob, v), rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"model": f"fnn-{size}", "n": prob.n, "op": op,
                                 "median_s": benchmark.stats.stats.median})
