"""The GD/SGD trainer: update rule, samplers, stopping, divergence status and determinism."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stabcheck.experiments.models import FNN, build_model
from stabcheck.experiments.train import BatchSampler, TrainError, train


def _data(n=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 4, 4, generator=gen)
    y = torch.eye(3)[torch.arange(n) % 3]
    return x, y


def _net(seed=0, width=16):
    return build_model("fnn", seed=seed, in_shape=(1, 4, 4), num_classes=3, widths=(width,))


def _run(net, x, y, **kw):
    kw = {"lr": 0.5, "batch_size": 4, "tol": 1e-3, "max_iters": 300, "progress": False, "num_threads": 1, **kw}
    return train(net, x, y, **kw)


@pytest.mark.parametrize("sampler", ["epoch", "uniform"])
def test_same_seed_same_parameters(sampler):
    x, y = _data()
    a, b, c = _run(_net(), x, y, sampler=sampler, seed=3), _run(_net(), x, y, sampler=sampler, seed=3), \
        _run(_net(), x, y, sampler=sampler, seed=4)
    assert a.loss_curve == b.loss_curve and all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert a.loss_curve != c.loss_curve


def test_gd_step_is_the_full_gradient_step():
    x, y = _data(8)
    net = _net()
    ref = _net()
    loss = ((ref(x) - y) ** 2).mean(dim=1).mean()  # the paper's MSELoss: (1/K)‖·‖² per sample, mean over samples
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    rec = _run(net, x, y, lr=0.3, batch_size=8, max_iters=1)
    for (name, p), g in zip(ref.named_parameters(), grads):
        assert torch.allclose(rec.state[name], p.detach() - 0.3 * g, atol=1e-6)
    assert rec.loss_curve[0] == pytest.approx(float(loss.detach()), rel=1e-6)


def test_heavy_ball_update():
    """x₂ = x₁ − η(μ g₀ + g₁), x₁ = x₀ − η g₀ on a linear least-squares model (float64)."""
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    net = nn.Linear(3, 2).double()
    w = [p.detach().clone() for p in net.parameters()]

    def grad_at(params):
        params = [p.clone().requires_grad_(True) for p in params]
        loss = ((x @ params[0].T + params[1] - y) ** 2).mean(dim=1).mean()
        return torch.autograd.grad(loss, params)

    lr, mu = 0.1, 0.9
    g0 = grad_at(w)
    w1 = [p - lr * g for p, g in zip(w, g0)]
    g1 = grad_at(w1)
    w2 = [p - lr * (mu * a + b) for p, a, b in zip(w1, g0, g1)]
    rec = train(net, x, y, lr=lr, batch_size=5, momentum=mu, tol=1e-12, max_iters=2, progress=False)
    assert torch.allclose(rec.state["weight"], w2[0]) and torch.allclose(rec.state["bias"], w2[1])


def test_epoch_sampler_covers_each_sample_once_per_epoch():
    s = BatchSampler(10, 4, "epoch", seed=0)
    for _ in range(3):
        batches = [s.next() for _ in range(3)]
        assert [len(b) for b in batches] == [4, 4, 2]  # the last slice of an epoch is smaller, as the authors'
        assert sorted(torch.cat(batches).tolist()) == list(range(10))


def test_uniform_sampler_draws_distinct_indices():
    s = BatchSampler(10, 4, "uniform", seed=0)
    batches = [s.next() for _ in range(50)]
    assert all(len(set(b.tolist())) == 4 for b in batches)
    counts = torch.bincount(torch.cat(batches), minlength=10)
    assert int(counts.min()) > 0
    assert BatchSampler(10, 10, "uniform").next() is None  # GD: the whole set


def test_converges_and_reports():
    x, y = _data()
    rec = _run(_net(), x, y, batch_size=24, max_iters=5000, tol=1e-3)
    assert rec.status == "converged" and rec.converged and rec.ema_loss < 1e-3
    assert rec.final_loss < 5e-3 and rec.iterations == len(rec.loss_curve) < 5000
    d = rec.as_dict()
    assert {"seed", "dtype", "device", "lr", "batch_size", "wall_time", "iters_per_second", "threads"} <= set(d)
    assert "state" not in d and d["threads"] == 1 and d["engine"] == "autograd"


def test_iteration_cap_is_a_status():
    x, y = _data()
    rec = _run(_net(), x, y, max_iters=7, tol=1e-9)
    assert rec.status == "max_iters" and rec.iterations == 7 and not rec.converged


def test_divergence_is_recorded_not_raised():
    x, y = _data()
    rec = _run(_net(), x * 50, y, lr=50.0, batch_size=24, max_iters=500)
    assert rec.status == "diverged" and rec.iterations < 500
    assert math.isnan(rec.final_loss)
    assert not math.isfinite(rec.loss_curve[-1]) or rec.loss_curve[-1] > 1e6


def test_min_iters_and_callback():
    x, y = _data()
    seen = []
    rec = _run(_net(), x, y, batch_size=24, tol=10.0, min_iters=20, max_iters=100,
               callback=lambda t, model, loss: seen.append(t), callback_every=5)
    assert rec.status == "converged" and rec.iterations == 20 and seen == [5, 10, 15, 20]
    rec = _run(_net(), x, y, callback=lambda t, model, loss: t == 3)
    assert rec.status == "stopped" and rec.iterations == 3


def test_progress_output():
    x, y = _data()
    infos = []
    _run(_net(), x, y, max_iters=3, tol=1e-9, progress=infos.append, progress_every=0.0)
    assert len(infos) == 3 and {"iteration", "ema_loss", "iters_per_second"} <= set(infos[0])


def test_threads_restored():
    before = torch.get_num_threads()
    x, y = _data()
    _run(_net(), x, y, max_iters=2, num_threads=1)
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("kw, match", [
    ({"lr": -1.0}, "learning rate"),
    ({"batch_size": 25}, "batch size"),
    ({"momentum": 1.0}, "momentum"),
    ({"sampler": "random"}, "sampler"),
    ({"loss": "l1"}, "loss"),
    ({"tol": 0.0}, "tol"),
])
def test_bad_settings(kw, match):
    x, y = _data()
    with pytest.raises((TrainError, ValueError), match=match):
        _run(FNN(16, (4,), 3), x, y, **kw)


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("momentum, sampler", [(0.0, "epoch"), (0.5, "uniform")])
def test_interrupted_run_resumes_from_its_checkpoint(tmp_path, momentum, sampler):
    """A run killed mid-way and called again with the same checkpoint ends exactly where an uninterrupted run ends."""
    x, y = _data()
    kw = {"tol": 1e-6, "max_iters": 120, "momentum": momentum, "sampler": sampler, "seed": 5}
    whole = _run(_net(), x, y, **kw)
    ckpt = tmp_path / "run.ckpt"

    def kill_at_70(t, model, loss):
        if t == 70:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _run(_net(), x, y, checkpoint=ckpt, checkpoint_every=0, callback=kill_at_70, **kw)
    assert ckpt.exists()
    resumed_net = _net(seed=99)  # other initial parameters: the checkpoint must replace them
    resumed = _run(resumed_net, x, y, checkpoint=ckpt, checkpoint_every=0, **kw)
    assert not ckpt.exists()
    assert (resumed.status, resumed.iterations) == (whole.status, whole.iterations)
    assert resumed.loss_curve == whole.loss_curve
    assert all(torch.equal(resumed.state[k], whole.state[k]) for k in whole.state)


def test_checkpoint_of_other_settings_is_refused(tmp_path):
    x, y = _data()
    ckpt = tmp_path / "run.ckpt"

    def kill(t, model, loss):
        if t == 3:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        _run(_net(), x, y, checkpoint=ckpt, checkpoint_every=0, callback=kill, lr=0.5)
    with pytest.raises(TrainError, match="belongs to other settings"):
        _run(_net(), x, y, checkpoint=ckpt, lr=0.25)


@pytest.mark.parametrize("last, status", [(0.5, "max_iters"), (1e-9, "converged"), (math.nan, "diverged"),
                                          (math.inf, "diverged"), (-math.inf, "diverged"), (2e6, "diverged")])
def test_stop_rule_is_one_rule_for_numbers_and_tensors(last, status):
    """The host form (train) and the tensor form (the ensemble) take the same decisions, bit for bit."""
    from stabcheck.experiments.sgd import StopRule, TrainSettings

    settings = TrainSettings(lr=0.1, batch_size=1, tol=1e-3, min_iters=5)  # ema < tol from step 1, stop from 5
    host, stacked = StopRule(settings), StopRule(settings, 2, torch.device("cpu"))
    for t, loss in enumerate([1e-5, 1e-5, 1e-5, 1e-5, last], 1):
        stepped = host.step(t, loss)
        assert stacked.step(t, torch.tensor([loss, loss], dtype=torch.float64)).tolist() == [stepped, stepped]
    assert [r[:2] for r in stacked.read()] == [r[:2] for r in host.read()] * 2
    assert [r[2] for r in stacked.read()] == [host.read()[0][2]] * 2
    assert host.read()[0][:2] == ((0, "max_iters") if status == "max_iters" else (5, status))
