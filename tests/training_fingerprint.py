"""Train a fixed set of small cases with whatever ``stabcheck`` is importable and save what they produced.

Run as ``python tests/training_fingerprint.py OUT.pt`` with ``PYTHONPATH`` pointing at another tree of the
package (tests/test_trainer_equality.py runs it on the trainer of an earlier commit): it uses only
the API that both trees share, so the two files must hold the same tensors bit for bit.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from stabcheck.experiments.ensemble import train_ensemble
from stabcheck.experiments.minima import MinimaCache
from stabcheck.experiments.models import build_model
from stabcheck.experiments.setups import Setup
from stabcheck.experiments.train import train


def _data(dtype, n=60, labels=False):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 4, 4, generator=gen, dtype=dtype)
    classes = (x.flatten(1) @ torch.randn(16, 3, generator=gen, dtype=dtype)).argmax(1)
    return x, classes if labels else torch.eye(3, dtype=dtype)[classes]


def _net(seed, dtype, model="fnn", **options):
    options = options or {"widths": (32,)}
    return build_model(model, seed=seed, in_shape=(1, 4, 4), num_classes=3, **options).to(dtype)


def _summary(rec) -> dict:
    return {"status": rec.status, "iterations": rec.iterations, "ema": rec.ema_loss, "final": rec.final_loss,
            "curve": torch.tensor(rec.loss_curve, dtype=torch.float64), "state": rec.state}


def cases(data_available: bool = True) -> dict[str, dict]:
    """Every case's status, iterations, EMA, final loss, loss curve and parameters."""
    torch.set_num_threads(1)
    out = {}
    x, y = _data(torch.float32)
    kw = {"progress": False, "num_threads": 1}
    out["sgd-f32"] = _summary(train(_net(1, torch.float32), x, y, lr=0.5, batch_size=10, tol=1e-3, max_iters=300,
                                    seed=1, **kw))
    out["gd-mu-f32"] = _summary(train(_net(2, torch.float32), x, y, lr=0.2, batch_size=60, momentum=0.9, tol=1e-3,
                                      max_iters=200, **kw))
    out["stopped"] = _summary(train(_net(3, torch.float32), x, y, lr=0.5, batch_size=10, max_iters=300,
                                    callback=lambda t, model, loss: t == 37, **kw))
    out["diverged"] = _summary(train(_net(4, torch.float32), x, y, lr=80.0, batch_size=10, max_iters=300, **kw))
    xc, yc = _data(torch.float64, labels=True)
    out["ce-uniform-f64"] = _summary(train(_net(5, torch.float64), xc, yc, lr=0.5, batch_size=7, loss="ce",
                                           sampler="uniform", tol=1e-2, max_iters=300, seed=2, **kw))
    nets = [_net(s, torch.float32) for s in range(3)]
    for i, rec in enumerate(train_ensemble(nets, x, y, lr=0.5, batch_size=10, momentum=0.5, seeds=[0, 1, 2],
                                           tol=2e-3, max_iters=300, check_every=16, engine="mlp", num_threads=1)):
        out[f"ensemble-mlp-{i}"] = _summary(rec)
    x64, y64 = _data(torch.float64)
    nets = [_net(s, torch.float64, "resfnn", width=8, blocks=1, batch_norm=True) for s in range(2)]
    for i, rec in enumerate(train_ensemble(nets, x64, y64, lr=0.3, batch_size=10, momentum=0.9, seeds=[3, 4],
                                           tol=1e-2, max_iters=150, check_every=7, engine="vmap", num_threads=1)):
        out[f"ensemble-vmap-{i}"] = _summary(rec)
    if data_available:
        setup = Setup("tiny", "fashion_mnist", 40, "fnn", (("widths", (16,)),), tol=1e-2, max_iters=150)
        with tempfile.TemporaryDirectory() as root:
            cache = MinimaCache(root, progress=False)
            minima = cache.get_many([setup.config(0.3, 10, seed) for seed in (0, 1)] + [setup.config(0.3, None, 0)])
            for m in minima:
                out[f"cache-{m.config.batch_size}-{m.config.seed}"] = {
                    "status": m.record["status"], "iterations": m.record["iterations"], "ema": m.record["ema_loss"],
                    "final": m.record["final_loss"], "curve": torch.tensor(m.loss_curve, dtype=torch.float64),
                    "state": m.state}
    return out


if __name__ == "__main__":
    torch.save(cases(sys.argv[2] == "with-data" if len(sys.argv) > 2 else True), Path(sys.argv[1]))
