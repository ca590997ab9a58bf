"""Problem construction: losses, dtype/device handling and every refused input."""
import math

import pytest
import torch
from torch import nn

import stabcheck
from stabcheck import Problem, ProblemError
from stabcheck.curvature.problem import check_device, per_sample_loss
from stabcheck.experiments.models import build_model


def _data(n=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g), torch.randn(n, k, generator=g)


def test_losses_follow_the_papers_normalisation():
    out = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    y = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    torch.testing.assert_close(per_sample_loss("mse", out, y), torch.tensor([2.5, 1.0]))  # (1/K)‖·‖², no ½
    torch.testing.assert_close(per_sample_loss("half_sq", out, y), torch.tensor([2.5, 1.0]))  # ½‖·‖²
    ce = per_sample_loss("ce", out, torch.tensor([1, 0]))
    torch.testing.assert_close(ce, nn.functional.cross_entropy(out, torch.tensor([1, 0]), reduction="none"))


def test_total_loss_is_the_mean_over_samples():
    net = nn.Linear(4, 3)
    x, y = _data(7)
    prob = Problem(net, x, y, chunk_size=3)
    with torch.no_grad():
        expected = nn.functional.mse_loss(net(x), y).item()
    assert prob.loss_value() == pytest.approx(expected, rel=1e-6)


def test_model_is_not_modified_and_dtype_device_follow_the_request():
    net = nn.Linear(4, 3)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x, y = _data()
    prob = Problem(net, x, y, dtype=torch.float64, device="cpu")
    stabcheck.sharpness(prob, maxiter=5)
    assert all(v.dtype == torch.float64 for v in prob.params.values())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.weight.dtype == torch.float32
    assert prob.n == 5 and prob.dim == 15


def test_batchnorm_in_eval_mode_is_accepted():
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).eval()
    x, y = _data()
    assert stabcheck.sharpness(Problem(net, x, y), maxiter=10).value > 0


@pytest.mark.parametrize("module,name", [
    (nn.BatchNorm1d(6), "BatchNorm1d"),
    (nn.Dropout(0.5), "Dropout"),
])
def test_refuses_train_mode_batch_or_random_modules(module, name):
    net = nn.Sequential(nn.Linear(4, 6), module, nn.Linear(6, 3)).train()
    x, y = _data()
    with pytest.raises(ProblemError, match=rf"module '1' \({name}.*model.eval\(\)"):
        Problem(net, x, y)


def test_inactive_dropout_in_train_mode_is_accepted():
    net = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.0), nn.Linear(6, 3)).train()
    x, y = _data()
    Problem(net, x, y)


def test_refuses_non_finite_loss():
    net = nn.Linear(4, 3)
    x, y = _data()
    with torch.no_grad():
        net.bias[0] = math.inf
    with pytest.raises(ProblemError, match=r"training loss is not finite \(inf\)"):
        Problem(net, x, y)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_refuses_non_finite_inputs_naming_the_sample(bad):
    x, y = _data()
    x[2, 1] = bad
    with pytest.raises(ProblemError, match=r"inputs of 1 samples hold non-finite values \(first: sample 2\)"):
        Problem(nn.Linear(4, 3), x, y)


@pytest.mark.parametrize("targets,match", [
    (torch.randn(5, 2), r"targets of one sample have shape \(2,\) but the model outputs \(3,\)"),
    (torch.randn(4, 3), "inputs have 5 samples but targets have shape"),
])
def test_refuses_targets_that_do_not_fit(targets, match):
    x, _ = _data()
    with pytest.raises(ProblemError, match=match):
        Problem(nn.Linear(4, 3), x, targets)


def test_refuses_bad_class_labels():
    x, _ = _data()
    with pytest.raises(ProblemError, match=r"class labels must lie in \[0, 3\)"):
        Problem(nn.Linear(4, 3), x, torch.tensor([0, 1, 2, 3, 0]), loss="ce")
    with pytest.raises(ProblemError, match="integer class labels"):
        Problem(nn.Linear(4, 3), x, torch.randn(5, 3), loss="ce")


def test_refuses_empty_data_and_unknown_loss():
    with pytest.raises(ProblemError, match="empty"):
        Problem(nn.Linear(4, 3), torch.empty(0, 4), torch.empty(0, 3))
    x, y = _data()
    with pytest.raises(ProblemError, match="unknown loss 'l1'"):
        Problem(nn.Linear(4, 3), x, y, loss="l1")


def test_refuses_unknown_engine_and_wrong_vector_shape():
    x, y = _data()
    prob = Problem(nn.Linear(4, 3), x, y)
    with pytest.raises(ProblemError, match="unknown Σ engine 'fast'"):
        stabcheck.SigmaOperator(prob, "fast")
    with pytest.raises(ProblemError, match=r"expected \(15,\)"):
        stabcheck.HessianOperator(prob).matvec(torch.zeros(14))


def test_theorem1_refuses_bad_lr_and_batch():
    x, y = _data()
    prob = Problem(nn.Linear(4, 3), x, y)
    with pytest.raises(ValueError, match="learning rate"):
        stabcheck.theorem1(prob, lr=-0.1, batch_size=1)
    with pytest.raises(ValueError, match=r"batch size must lie in \[1, n=5\]"):
        stabcheck.theorem1(prob, lr=0.1, batch_size=6)


@pytest.mark.parametrize("name,in_shape,options", [
    ("fnn", (1, 28, 28), {"widths": (500, 500, 500)}),
    ("vgg", (3, 32, 32), {}),
    ("resnet", (3, 32, 32), {"batch_norm": False}),
], ids=["fnn-paper", "vgg", "resnet-bn-free"])
def test_ordinary_models_in_training_mode_pass_the_probe_in_float32(name, in_shape, options):
    """The probe's tolerance leaves room for the rounding of batched kernels on the paper's models."""
    net = build_model(name, seed=0, in_shape=in_shape, num_classes=10, **options)
    assert net.training
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, *in_shape, generator=g)
    y = nn.functional.one_hot(torch.arange(8) % 10, 10).float()
    assert Problem(net, x, y, dtype=torch.float32).n == 8


def test_frozen_parameters_are_passed_as_constants():
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    net[0].weight.requires_grad_(False)
    x, y = _data()
    prob = Problem(net, x, y)
    assert prob.names == ["0.bias", "2.weight", "2.bias"] and prob.frozen == ("0.weight",)
    assert torch.equal(prob.buffers["0.weight"], net[0].weight.detach())
    with torch.no_grad():
        expected = nn.functional.mse_loss(net(x), y).item()
    assert prob.loss_value() == pytest.approx(expected, rel=1e-6)
    everything = Problem(net, x, y, parameters="all")
    assert everything.frozen == () and everything.dim == prob.dim + 24


def test_refuses_unknown_parameter_set_and_non_module():
    x, y = _data()
    with pytest.raises(ProblemError, match=r"parameters must be one of \('trainable', 'all'\), got 'frozen'"):
        Problem(nn.Linear(4, 3), x, y, parameters="frozen")
    with pytest.raises(ProblemError, match="model must be a torch.nn.Module, got function"):
        Problem(lambda t: t, x, y)


def test_check_device_names_what_is_wrong():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ProblemError, match="'gpu7' is not a torch device"):
        check_device("gpu7")
    with pytest.raises(ProblemError, match="device 'meta' holds no values"):
        check_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ProblemError, match=r"CUDA is not available here \(torch.cuda.is_available\(\) is False\)"):
            Problem(nn.Linear(4, 3), *_data(), device="cuda")


def test_probe_leaves_a_deterministic_per_sample_model_alone():
    """Random or batch-dependent models are refused (tests/test_bad_input.py); the probe itself must not
    touch the global RNG or the model."""
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))
    state = torch.get_rng_state()
    Problem(net, *_data())
    assert torch.equal(torch.get_rng_state(), state) and net.training
