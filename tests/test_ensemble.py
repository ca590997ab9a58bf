"""train_ensemble against train(): each member as if trained alone (status, stopping iteration, curve, parameters)."""
from __future__ import annotations

import copy
import math
from functools import lru_cache

import pytest
import torch

from stabcheck.experiments.ensemble import train_ensemble
from stabcheck.experiments.stacked import matches_train
from stabcheck.experiments.minima import MinimaCache
from stabcheck.experiments.models import build_model
from stabcheck.experiments.setups import Setup
from stabcheck.experiments.train import TrainError, train

N = 60
SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def one_thread():
    """These nets are overhead-bound: a second thread on the shared 2-core machine only slows them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _data(dtype=torch.float64, labels=False, n=N):
    """n random 1×4×4 inputs, classes by a fixed linear rule (learnable in a few hundred steps)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=gen, dtype=dtype)
    classes = (x.flatten(1) @ torch.randn(16, 3, generator=gen, dtype=dtype)).argmax(1)
    return x, classes if labels else torch.eye(3, dtype=dtype)[classes]


def _nets(dtype=torch.float64, model="fnn", count=len(SEEDS), **options):
    options = options or {"widths": (16,)}
    return [build_model(model, seed=s, in_shape=(1, 4, 4), num_classes=3, **options).to(dtype) for s in range(count)]


def _alone(nets, x, y, seeds=SEEDS, **kw):
    """train() on a copy of each member: the reference."""
    return [train(copy.deepcopy(net), x, y, seed=s, progress=False, **kw) for s, net in zip(seeds, nets)]


@lru_cache(maxsize=None)
def _reference(dtype, widths: tuple, settings: tuple):
    """train()'s records for the default data and nets, computed once per setting for all engines."""
    x, y = _data(dtype)
    return _alone(_nets(dtype, widths=widths), x, y, **dict(settings))


def _gap(u: float, v: float) -> float:
    """|u − v| relative to max(1, |u|) (losses reach 1e8 before a divergence); equal non-finite values: 0."""
    if u == v or math.isnan(u) and math.isnan(v):
        return 0.0
    return abs(u - v) / max(1.0, abs(u))


def _curve_gap(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(_gap(u, v) for u, v in zip(a, b))


def _param_gap(a, b) -> float:
    """max |a − b| over all parameters and buffers, relative to max(1, max |a|) of each tensor."""
    return max(float((a.state[k].double() - b.state[k].double()).abs().max()) / max(1.0, float(a.state[k].abs().max()))
               for k in a.state)


def _assert_as_alone(alone, together, tol):
    assert [(r.status, r.iterations) for r in together] == [(r.status, r.iterations) for r in alone]
    for a, b in zip(alone, together):
        assert a.state.keys() == b.state.keys() and a.seed == b.seed
        assert _param_gap(a, b) <= tol
        assert _curve_gap(a.loss_curve, b.loss_curve) <= tol
        assert _gap(a.final_loss, b.final_loss) <= tol and _gap(a.ema_loss, b.ema_loss) <= tol


SGD_AND_GD = [pytest.param(5, id="B5"), pytest.param(N, id="GD")]
# (engine options, momentum); the fused update is for plain SGD only. "per-member": the mlp engine's
# weight gradients one member at a time, as it does for nets larger than these.
UPDATES = [pytest.param({"engine": "mlp"}, 0.0, id="mlp"), pytest.param({"engine": "mlp"}, 0.9, id="mlp-mu0.9"),
           pytest.param({"engine": "mlp", "per_member": True}, 0.0, id="per-member"),
           pytest.param({"engine": "mlp", "per_member": True}, 0.9, id="per-member-mu0.9"),
           pytest.param({"engine": "mlp", "fused_update": True}, 0.0, id="fused"),
           pytest.param({"engine": "vmap"}, 0.0, id="vmap"), pytest.param({"engine": "vmap"}, 0.9, id="vmap-mu0.9")]


def _options(engine: dict) -> dict:
    """train_ensemble's options; per_member lowers the size above which gradients go member by member."""
    options = {k: v for k, v in engine.items() if k != "per_member"}
    return {**options, "batched_gradient_bytes": 0} if engine.get("per_member") else options


@pytest.mark.parametrize("engine, momentum", UPDATES)
@pytest.mark.parametrize("batch_size", SGD_AND_GD)
def test_members_equal_train_float64(engine, momentum, batch_size):
    x, y = _data()
    kw = {"lr": 0.5, "batch_size": batch_size, "momentum": momentum, "tol": 5e-3, "max_iters": 400}
    alone = _reference(torch.float64, (16,), tuple(kw.items()))
    together = train_ensemble(_nets(), x, y, seeds=SEEDS, check_every=16, **_options(engine), **kw)
    # The members stop at different steps, so later steps run with frozen members.
    assert len({r.iterations for r in alone}) > 1
    assert {r.engine for r in together} == {engine["engine"]} and {r.engine for r in alone} == {"autograd"}
    _assert_as_alone(alone, together, 1e-10)


@pytest.mark.parametrize("engine, momentum", UPDATES)
@pytest.mark.parametrize("batch_size", SGD_AND_GD)
def test_members_close_to_train_float32(engine, momentum, batch_size):
    """Batched products and the fused update may round differently from train(): ≤ 1e-4 relative.

    Measured on this CPU (MKL): the mlp engine is bit-identical to train() (here; the paper's FNN
    and the small profile's, SGD and GD, with and without momentum, 150 steps; 3000 steps of a
    16-32-32-3 net), so it is asserted. Below 400 multiply-adds per product torch's bmm runs its
    own loop, which rounds otherwise: hence width 64 here. vmap came out bit-identical in float32
    too, and within 5e-16 in float64. The fused update differs by ulps (paper FNN after 150 GD
    steps: 1.1e-4), and a float32 GD run at the edge of stability stopped 44 iterations later
    (2882 against 2838).
    """
    x, y = _data(torch.float32)
    kw = {"lr": 0.5, "batch_size": batch_size, "momentum": momentum, "tol": 2e-4, "max_iters": 400}
    alone = _reference(torch.float32, (64,), tuple(kw.items()))
    together = train_ensemble(_nets(torch.float32, widths=(64,)), x, y, seeds=SEEDS, **_options(engine),
                              **kw)
    agreeing = [(a, b) for a, b in zip(alone, together) if a.iterations == b.iterations]
    assert agreeing
    for a, b in agreeing:
        relative = max(float((a.state[k] - b.state[k]).abs().max() / a.state[k].abs().max()) for k in a.state)
        assert relative <= 1e-4, (a.seed, relative)
    if not engine.get("fused_update") and engine["engine"] == "mlp":
        assert len(agreeing) == len(SEEDS) and all(a.loss_curve == b.loss_curve for a, b in agreeing)
        assert all(torch.equal(a.state[k], b.state[k]) for a, b in agreeing for k in a.state)


def test_float32_ema_and_stop_follow_the_loss_curve():
    """The device-side EMA is float64 arithmetic on the float32 batch losses, as train()'s Python floats."""
    x, y = _data(torch.float32)
    records = train_ensemble(_nets(torch.float32), x, y, seeds=SEEDS, lr=0.5, batch_size=5, tol=5e-3, max_iters=400,
                             check_every=16)
    assert "converged" in {r.status for r in records}
    for r in records:
        emas = []
        for value in r.loss_curve:
            emas.append(value if not emas else 0.9 * emas[-1] + (1.0 - 0.9) * value)
        assert r.ema_loss == emas[-1]
        first_below = next((t + 1 for t, e in enumerate(emas) if e < 5e-3), None)
        assert r.iterations == (first_below if r.status == "converged" else 400)


def test_check_every_changes_nothing():
    x, y = _data(torch.float32)
    kw = {"lr": 0.5, "batch_size": 5, "tol": 5e-3, "max_iters": 400, "seeds": SEEDS}
    runs = [train_ensemble(_nets(torch.float32), x, y, check_every=c, **kw) for c in (1, 7, 1000)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert (a.status, a.iterations, a.loss_curve) == (b.status, b.iterations, b.loss_curve)
            assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


def test_a_member_does_not_depend_on_the_others():
    x, y = _data(torch.float32)
    nets = _nets(torch.float32)
    single = copy.deepcopy(nets[1])
    kw = {"lr": 0.5, "batch_size": 5, "tol": 5e-3, "max_iters": 400}
    in_company = train_ensemble(nets, x, y, seeds=SEEDS, **kw)[1]
    on_its_own = train_ensemble([single], x, y, seeds=[SEEDS[1]], **kw)[0]
    assert in_company.loss_curve == on_its_own.loss_curve
    assert all(torch.equal(in_company.state[k], on_its_own.state[k]) for k in on_its_own.state)


@pytest.mark.parametrize("engine, momentum", [("mlp", 0.0), ("mlp", 0.5), ("vmap", 0.0)])
def test_diverged_members_are_frozen_and_the_others_go_on(engine, momentum):
    x, y = _data()
    nets = _nets()
    with torch.no_grad():
        for p in nets[1].parameters():  # the loss passes 1e6 after a few steps
            p.mul_(10.0)
        next(nets[2].parameters()).fill_(1e308)  # first layer overflows: inf activations, a non-finite loss at once
    kw = {"lr": 0.5, "batch_size": 5, "momentum": momentum, "tol": 5e-3, "max_iters": 400}
    alone = _alone(nets, x, y, **kw)
    together = train_ensemble(nets, x, y, seeds=SEEDS, engine=engine, check_every=16, **kw)
    assert [r.status for r in alone] == ["converged", "diverged", "diverged"]
    assert 1 < alone[1].iterations < 16 and alone[2].iterations == 1 and not math.isfinite(alone[2].loss_curve[0])
    _assert_as_alone(alone, together, 1e-10)
    for record in together[1:]:  # frozen before the step whose loss exploded
        assert math.isnan(record.final_loss)
        assert all(torch.isfinite(v).all() for v in record.state.values())


def test_batchnorm_statistics_by_vmap():
    """Running statistics move in every forward of a running member and stay put once it stopped."""
    x, y = _data()
    nets = _nets(model="resfnn", width=8, blocks=1, batch_norm=True)
    kw = {"lr": 0.1, "batch_size": 5, "tol": 0.1, "max_iters": 60}
    alone = _alone(nets, x, y, **kw)
    together = train_ensemble(nets, x, y, seeds=SEEDS, check_every=16, **kw)
    assert len({r.iterations for r in alone}) > 1
    assert any(k.endswith("running_mean") for k in together[0].state)
    _assert_as_alone(alone, together, 1e-10)


@pytest.mark.parametrize("engine", ["mlp", "vmap"])
@pytest.mark.parametrize("loss, sampler, batch_size", [
    ("ce", "epoch", 5),
    ("half_sq", "uniform", 5),
    ("mse", "epoch", 7),  # B does not divide n: every epoch ends with a batch of 4
])
def test_losses_samplers_and_short_batches(engine, loss, sampler, batch_size):
    x, y = _data(labels=loss == "ce")
    nets = _nets()
    kw = {"lr": 0.3, "batch_size": batch_size, "loss": loss, "sampler": sampler, "tol": 5e-2, "max_iters": 60}
    alone = _alone(nets, x, y, **kw)
    _assert_as_alone(alone, train_ensemble(nets, x, y, seeds=SEEDS, engine=engine, **kw), 1e-10)


def test_min_iters_and_models_trained_in_place():
    x, y = _data()
    nets = _nets()
    records = train_ensemble(nets, x, y, seeds=SEEDS, lr=0.5, batch_size=5, tol=10.0, min_iters=20, max_iters=50)
    assert [(r.status, r.iterations, len(r.loss_curve)) for r in records] == [("converged", 20, 20)] * 3
    for net, record in zip(nets, records):
        assert all(torch.equal(v, record.state[k]) for k, v in net.state_dict().items())
        assert record.wall_time > 0 and record.dtype == "float64" and record.n == N


def test_progress_reports_at_the_checks():
    x, y = _data()
    seen = []
    train_ensemble(_nets(), x, y, seeds=SEEDS, lr=0.5, batch_size=5, tol=1e-9, max_iters=30, check_every=10,
                   progress=seen.append, progress_every=0.0)
    assert [info["iteration"] for info in seen] == [10, 20]  # the last check ends the run
    assert {"running", "members", "ema_loss", "iters_per_second"} <= set(seen[0])


@pytest.mark.parametrize("change, match", [
    ({"seeds": [0, 1]}, "seeds"),
    ({"engine": "loop"}, "engine"),
    ({"check_every": 0}, "check_every"),
    ({"lr": -1.0}, "learning rate"),
    ({"momentum": 1.0}, "momentum"),
    ({"batch_size": N + 1}, "batch size"),
    ({"tol": 0.0}, "tol"),
    ({"engine": "vmap", "fused_update": True}, "fused_update"),
    ({"momentum": 0.5, "fused_update": True}, "fused_update"),
])
def test_bad_settings(change, match):
    x, y = _data()
    kw = {"seeds": SEEDS, "lr": 0.5, "batch_size": 5, "max_iters": 5, **change}
    with pytest.raises((TrainError, ValueError), match=match):
        train_ensemble(_nets(), x, y, **kw)


def test_bad_members():
    x, y = _data()
    net = _nets(count=1)[0]
    kw = {"lr": 0.5, "batch_size": 5, "max_iters": 5}
    with pytest.raises(TrainError, match="twice"):
        train_ensemble([net, net], x, y, seeds=[0, 1], **kw)
    with pytest.raises(TrainError, match="differs"):
        train_ensemble([net, _nets(count=1, widths=(8,))[0]], x, y, seeds=[0, 1], **kw)
    with pytest.raises(TrainError, match="engine 'mlp'"):
        train_ensemble(_nets(model="resfnn", count=2, width=8, blocks=1, batch_norm=False), x, y, seeds=[0, 1],
                       engine="mlp", **kw)
    with pytest.raises(TrainError, match="at least one"):
        train_ensemble([], x, y, seeds=[], **kw)


@pytest.mark.parametrize("width, batch_size", [(50, 5), (50, 10), (64, 5), (51, 4), (13, 7)])
def test_every_row_of_the_stack_equals_train_at_any_activation_size(width, batch_size):
    """A member's activations of B·width·4 bytes (1000 at B = 5, width 50) put the odd rows of the stack off
    MKL's alignment, where the head's product rounds otherwise: the engine aligns each member's block."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 1, 28, 28, generator=g), torch.eye(10)[torch.randint(0, 10, (40,), generator=g)]
    nets = [build_model("fnn", seed=s, in_shape=(1, 28, 28), num_classes=10, widths=(width, width)) for s in range(4)]
    kw = {"lr": 0.1, "batch_size": batch_size, "tol": 1e-30, "max_iters": 60}
    assert matches_train(nets[0], batch_size, n=40)
    alone = _alone(nets, x, y, seeds=range(4), **kw)
    together = train_ensemble(nets, x, y, seeds=range(4), engine="mlp", **kw)
    assert all(torch.equal(a.state[k], b.state[k]) for a, b in zip(alone, together) for k in a.state)


def test_get_many_trains_through_train_where_the_ensemble_would_not_match(tmp_path):
    """B = 3 < BIT_IDENTICAL_BATCH: get_many trains each seed alone, so its minima are train()'s."""
    setup = Setup("tiny", "fashion_mnist", 20, "fnn", (("widths", (50,)),), tol=1e-30, max_iters=100)
    configs = [setup.config(lr=0.1, batch_size=3, seed=s) for s in (0, 1)]
    net = build_model("fnn", seed=0, in_shape=(1, 28, 28), num_classes=10, widths=(50,))
    assert not matches_train(net, 3, n=20)
    many = MinimaCache(tmp_path / "many", progress=False).get_many(configs)
    alone = [MinimaCache(tmp_path / "alone", progress=False).get(c) for c in configs]
    assert [m.record["ensemble"] for m in many] == [1, 1]
    for a, b in zip(alone, many):
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
