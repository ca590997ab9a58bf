"""The factored Σ engine against the paper's per-sample loop and dense float64 ground truth.

Tolerances of issue 6: 1e-6 relative in float64 and 1e-4 in float32 against the loop engine.
"""
import pytest
import torch
from torch import nn

import stabcheck
from stabcheck.curvature import products
from stabcheck.curvature.engines import factored
from stabcheck.curvature.engines import SIGMA_ENGINES, resolve_engine
from stabcheck.curvature.operators import SigmaOperator, Theorem1Operator

from .tiny import MODELS, dense_curvature, make_problem

LOSSES = ("mse", "half_sq", "ce")
TOL = {torch.float64: 1e-6, torch.float32: 1e-4}


def _relative_error(got: dict, ref: dict, problem) -> float:
    got, ref = problem.flatten(got), problem.flatten(ref)
    return float((got - ref).norm() / ref.norm())


def _random_tangent(problem, seed: int = 1) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(t.shape, generator=gen, dtype=torch.float64).to(problem.dtype)
            for k, t in problem.params.items()}


def _problem(model_name: str, loss: str, dtype: torch.dtype, **kwargs):
    p64 = make_problem(model_name, "ce" if loss == "ce" else "mse")
    targets = p64.targets if loss == "ce" else p64.targets.to(dtype)
    return stabcheck.Problem(p64.model, p64.inputs.to(dtype), targets, loss=loss, dtype=dtype, **kwargs)


@pytest.mark.parametrize("centred", [True, False], ids=["centred", "uncentred"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_equals_loop_engine(model_name, loss, dtype, centred):
    problem = _problem(model_name, loss, dtype)
    assert factored.unsupported_reason(problem) is None
    v = _random_tangent(problem)
    ref = SIGMA_ENGINES["loop"](problem, v, centred)
    got = factored.sigma_factored(problem, v, centred)
    assert _relative_error(got, ref, problem) <= TOL[dtype]


@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_dense_sigma_matrix(model_name):
    """Σ assembled column by column equals (1/n) Σ_i (H_i − H)² from dense Hessians, and is symmetric."""
    problem = make_problem(model_name, "mse")
    _, _, sigma = dense_curvature(problem)
    columns = SigmaOperator(problem, "factored").to_dense()
    torch.testing.assert_close(columns, sigma, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(columns, columns.T, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hold_bytes", [1 << 30, 0], ids=["records-held", "two-sweeps"])
@pytest.mark.parametrize("chunk_size", [2, 4, 5])
def test_chunks_give_the_same_product(chunk_size, hold_bytes, monkeypatch):
    """Several chunks, with unequal last chunks: their records held until H v is known, or (beyond the
    memory limit) H v first by a sweep that records nothing and pass 1 again per chunk."""
    sweeps = []
    monkeypatch.setattr(factored, "pass1", _counting(factored.pass1, sweeps))
    engine = SIGMA_ENGINES["factored"].with_options(hold_records_bytes=hold_bytes)
    whole = _problem("cnn-pool", "ce", torch.float64)
    chunked = _problem("cnn-pool", "ce", torch.float64, chunk_size=chunk_size)
    v = _random_tangent(whole)
    for centred in (True, False):
        ref = factored.sigma_factored(whole, v, centred)
        sweeps.clear()
        assert _relative_error(engine(chunked, v, centred), ref, whole) <= 1e-12
        chunks = len(chunked.chunks())
        assert len(sweeps) == (chunks if hold_bytes else 2 * chunks - 1)


def _counting(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return counted


def test_engine_options_are_checked():
    with pytest.raises(stabcheck.ProblemError, match=r"no option hold_bytes; its options: \['hold_records_bytes'\]"):
        SIGMA_ENGINES["factored"].with_options(hold_bytes=0)
    with pytest.raises(stabcheck.ProblemError, match="hold_records_bytes must be a whole number of bytes ≥ 0, got -1"):
        SIGMA_ENGINES["factored"].with_options(hold_records_bytes=-1)
    with pytest.raises(stabcheck.ProblemError, match="samples_per_call must be a whole number of samples ≥ 1, got 0"):
        SIGMA_ENGINES["vmap"].with_options(samples_per_call=0)
    with pytest.raises(stabcheck.ProblemError, match="'loop' Σ engine has no options"):
        SIGMA_ENGINES["loop"].with_options(samples_per_call=4)
    assert SIGMA_ENGINES["factored"].options == factored.FactoredOptions()  # the registry is left alone


@pytest.mark.parametrize("samples_per_call,chunk_size,sizes", [(32, 4, [4, 2]), (3, 256, [3, 3]), (32, 256, [6])])
def test_vmap_batches_at_most_its_option_and_the_chunk_size(samples_per_call, chunk_size, sizes, monkeypatch):
    """A configured engine passes through the criteria; vmap's batches obey both memory limits."""
    problem = _problem("mlp-tanh", "mse", torch.float64, chunk_size=chunk_size)
    _, _, sigma = dense_curvature(problem)
    batches = []
    chunks = problem.chunks

    def recorded(size=None):
        out = chunks(size)
        if size is not None:  # the vmap engine's batches (H v runs in the default chunks)
            batches.append([c.stop - c.start for c in out])
        return out

    monkeypatch.setattr(problem, "chunks", recorded)
    engine = SIGMA_ENGINES["vmap"].with_options(samples_per_call=samples_per_call)
    res = stabcheck.non_uniformity(problem, engine=engine, tol=1e-10, maxiter=problem.dim)
    assert res.engine == "vmap"
    assert res.eigenvalue == pytest.approx(float(torch.linalg.eigvalsh(sigma)[-1]), rel=1e-8)
    assert batches and all(b == sizes for b in batches)


def _layer_zoo():
    """Every rule of the engine in one net: Gram and materialised convolutions, strides, no-bias layers,
    smooth and piecewise-linear activations, average and adaptive pooling, eval-mode dropout, a
    repeated module, nested Sequentials."""
    act = nn.GELU()
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Sequential(nn.Conv2d(4, 6, 3, padding="same", bias=False), act, nn.AvgPool2d(2)),
        nn.Conv2d(6, 8, 2, stride=1), nn.Sigmoid(), nn.AdaptiveAvgPool2d(1), nn.Dropout(0.5),
        nn.Flatten(), nn.Linear(8, 5, bias=False), act, nn.Linear(5, 3),
    ).double().eval()


@pytest.mark.parametrize("loss", LOSSES)
def test_every_layer_rule_equals_loop(loss):
    torch.manual_seed(3)
    net = _layer_zoo()
    x = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 3, (5,)) if loss == "ce" else torch.randn(5, 3, dtype=torch.float64)
    problem = stabcheck.Problem(net, x, y, loss=loss)
    assert factored.unsupported_reason(problem) is None
    v = _random_tangent(problem)
    for centred in (True, False):
        ref = SIGMA_ENGINES["loop"](problem, v, centred)
        assert _relative_error(factored.sigma_factored(problem, v, centred), ref, problem) <= 1e-10


def test_gram_rule_is_exercised():
    """The zoo's last convolution (4 positions, 6·4 weights per output) takes the Gram rule."""
    torch.manual_seed(3)
    net = _layer_zoo()
    problem = stabcheck.Problem(net, torch.randn(2, 2, 8, 8, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64))
    plan = factored.plan.plan_for(problem)
    records = factored.passes.pass1(plan, problem.params, problem.inputs, problem.targets, problem.loss, problem.params)
    forms = [type(st.factors) for st in records.states if isinstance(st, factored.layers.Conv2dState)]
    assert forms == [factored.layers.Conv2dTangents, factored.layers.Conv2dTangents, factored.layers.Conv2dGram]


class _Doubled(nn.Sequential):
    def forward(self, x):
        return 2 * super().forward(x)


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x)


class _Flipped(nn.Tanh):
    """A subclass of a supported activation whose forward is no longer element-wise."""

    def forward(self, x):
        return torch.tanh(x).flip(1)


UNSUPPORTED = {
    "activation subclass overriding forward": (
        lambda: nn.Sequential(nn.Linear(4, 3), _Flipped(), nn.Linear(3, 2)), (6, 4), "overrides Tanh.forward"),
    "custom module": (_Plain, (6, 4), "no exact factored rule"),
    "overridden Sequential.forward": (lambda: _Doubled(nn.Linear(4, 3)), (6, 4), "overrides Sequential.forward"),
    "layer norm": (lambda: nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3)), (6, 4), "LayerNorm"),
    "linear on sequences": (lambda: nn.Sequential(nn.Linear(4, 3), nn.Flatten()), (6, 2, 4), "(batch, features)"),
    "max pooling of 3-d inputs": (
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 16), nn.Unflatten(1, (4, 4)), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(4, 2)), (6, 4, 4), "'3' (max pooling) gets inputs of shape (2, 4, 4)"),
}


@pytest.mark.parametrize("case", sorted(UNSUPPORTED))
def test_auto_falls_back_visibly(case):
    build, shape, reason = UNSUPPORTED[case]
    torch.manual_seed(0)
    net = build().double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    y = torch.randn(net(x).shape, dtype=torch.float64)
    problem = stabcheck.Problem(net, x, y)
    assert reason in factored.unsupported_reason(problem)
    assert resolve_engine(problem, "auto").name == "vmap"
    assert SigmaOperator(problem).engine == "vmap"
    assert stabcheck.non_uniformity(problem, tol=1e-6).engine == "vmap"
    with pytest.raises(factored.UnsupportedModel, match="factored Σ engine cannot handle"):
        SigmaOperator(problem, "factored").matvec(torch.ones(problem.dim, dtype=torch.float64))


def test_auto_picks_factored_where_supported():
    problem = make_problem("mlp-tanh", "ce")
    assert resolve_engine(problem, "auto").name == "factored"
    res = stabcheck.non_uniformity(problem, tol=1e-8)
    assert res.engine == "factored"
    assert res.eigenvalue == pytest.approx(stabcheck.non_uniformity(problem, engine="loop", tol=1e-8).eigenvalue, rel=1e-6)
    assert Theorem1Operator(problem, lr=0.1, batch_size=2).engine == "factored"


def test_unsupported_error_is_a_problem_error():
    assert issubclass(factored.UnsupportedModel, stabcheck.ProblemError)


INPLACE = {
    "LeakyReLU": lambda: nn.LeakyReLU(0.1, inplace=True),
    "ELU": lambda: nn.ELU(inplace=True),
    "Hardtanh": lambda: nn.Hardtanh(inplace=True),
    "SiLU": lambda: nn.SiLU(inplace=True),
    "ReLU6": lambda: nn.ReLU6(inplace=True),
    "ReLU": lambda: nn.ReLU(inplace=True),
}


@pytest.mark.parametrize("activation", sorted(INPLACE))
def test_inplace_activations_give_the_dense_sigma(activation):
    """In-place activations are element-wise, so the engine applies them out of place; ``auto`` picks it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), INPLACE[activation](), nn.Linear(6, 3)).double().eval()
    x = torch.randn(6, 4, dtype=torch.float64)
    problem = stabcheck.Problem(net, x, torch.randn(6, 3, dtype=torch.float64))
    assert factored.supports(problem) is True
    _, _, sigma = dense_curvature(problem)
    op = SigmaOperator(problem, "auto")
    assert op.engine == "factored"
    torch.testing.assert_close(op.to_dense(), sigma, rtol=1e-8, atol=1e-10)
    res = stabcheck.non_uniformity(problem, engine="auto", tol=1e-10)
    assert res.eigenvalue == pytest.approx(float(torch.linalg.eigvalsh(sigma)[-1]), rel=1e-8)
    assert net[1].inplace  # the user's module is left as it was


@pytest.mark.parametrize("where", ["probe", "product"])
def test_auto_surfaces_an_error_inside_the_engine(where, monkeypatch):
    """A rule that fails is a bug, not an unsupported model: ``auto`` raises it instead of falling back
    to ``vmap``, whether it fails in the probe that decides support or in a later product."""
    problem = make_problem("mlp-tanh", "mse")
    if where == "product":
        assert factored.supports(problem)  # the probe passed and its verdict is cached

    def broken(self, *args):
        raise RuntimeError("boom")

    monkeypatch.setattr(factored.layers.SmoothActivationRule, "backward2" if where == "product" else "forward1", broken)
    with pytest.raises(RuntimeError, match="boom"):
        stabcheck.non_uniformity(problem, engine="auto", tol=1e-6)
    with pytest.raises(RuntimeError, match="boom"):
        SigmaOperator(problem, "auto").matvec(torch.ones(problem.dim, dtype=torch.float64))


@pytest.mark.parametrize("chunk_size", [256, 4], ids=["one-chunk", "chunks-of-4"])
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("model_name", sorted(MODELS))
def test_hvp_equals_forward_over_reverse(model_name, loss, chunk_size):
    """factored.hvp (pass 1 alone) is the H v of products.hvp, chunk weighting included."""
    problem = _problem(model_name, loss, torch.float64, chunk_size=chunk_size)
    v = _random_tangent(problem)
    got = factored.hvp(problem, v)
    assert list(got) == problem.names
    assert _relative_error(got, products.hvp(problem, v), problem) <= 1e-10


def test_hvp_of_the_layer_zoo():
    torch.manual_seed(3)
    problem = stabcheck.Problem(_layer_zoo(), torch.randn(5, 2, 8, 8, dtype=torch.float64), torch.randint(0, 3, (5,)), loss="ce")
    v = _random_tangent(problem)
    assert _relative_error(factored.hvp(problem, v), products.hvp(problem, v), problem) <= 1e-10


def test_hvp_refuses_unsupported_models():
    build, shape, _ = UNSUPPORTED["layer norm"]
    net = build().double()
    x = torch.randn(shape, dtype=torch.float64)
    problem = stabcheck.Problem(net, x, torch.randn(net(x).shape, dtype=torch.float64))
    with pytest.raises(factored.UnsupportedModel, match="LayerNorm"):
        factored.hvp(problem, problem.params)
