"""The finite-sum problem f(x) = (1/n) Σ_i f_i(x) that every curvature quantity refers to.

:class:`Problem` refuses input on which a curvature number would be silently wrong (see its
docstring); every refusal is a :class:`ProblemError` whose message says what to change.
"""
from __future__ import annotations

from numbers import Integral
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]

LOSSES = ("mse", "half_sq", "ce")
#: Which parameters x is made of: those SGD trains (``requires_grad``) or every parameter.
PARAMETER_SETS = ("trainable", "all")
#: Samples of the construction probe (randomness and batch dependence of the forward).
PROBE_SAMPLES = 4

# Modules whose training-mode output depends on the other samples of the batch or on randomness.
_BATCH_DEPENDENT = (nn.modules.batchnorm._BatchNorm,)
_RANDOM = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class ProblemError(ValueError):
    """Input that cannot define a finite-sum problem (the message says what to change)."""


class CurvatureError(ProblemError):
    """A curvature product came out non-finite although the loss is finite (overflow, saturation)."""


def check_device(device: torch.device | str | int) -> torch.device:
    """``device`` as a ``torch.device`` that can hold tensors here, else :class:`ProblemError`.

    >>> check_device("cpu")
    device(type='cpu')
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ProblemError(f"{device!r} is not a torch device ({err}); use e.g. 'cpu' or 'cuda:0'") from None
    if dev.type == "meta":
        raise ProblemError("device 'meta' holds no values, so nothing can be measured on it; use 'cpu' or 'cuda'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ProblemError(f"device {str(dev)!r} was asked for, but CUDA is not available here "
                           "(torch.cuda.is_available() is False); use device 'cpu'")
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, NotImplementedError, AssertionError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ProblemError(f"device {str(dev)!r} cannot hold tensors here ({reason}); use 'cpu' or an available device") from None
    return dev


def _check_real_dtype(what: str, dtype: torch.dtype) -> None:
    if dtype.is_complex:
        raise ProblemError(f"{what} is complex ({dtype}); the curvature of a real loss needs real numbers: "
                           "split real and imaginary parts into separate real features or outputs")


def per_sample_loss(loss: str, output: Tensor, target: Tensor) -> Tensor:
    """Per-sample losses f_i of a batch, shape (batch,).

    ``mse``: (1/K)‖out − y‖² (PyTorch's ``MSELoss`` per sample, the paper's normalisation);
    ``half_sq``: ½‖out − y‖² (Appendix B); ``ce``: cross-entropy with integer labels.
    """
    if loss == "ce":
        return F.cross_entropy(output, target, reduction="none")
    diff = (output - target).reshape(output.shape[0], -1)
    if loss == "mse":
        return diff.pow(2).mean(dim=1)
    if loss == "half_sq":
        return 0.5 * diff.pow(2).sum(dim=1)
    raise ProblemError(f"unknown loss {loss!r}; choose one of {LOSSES}")


def check_eval_safe(model: nn.Module) -> None:
    """Refuse modules whose output depends on the batch or on randomness (pitfall 1 of PAPER.md)."""
    for name, module in model.named_modules():
        if not module.training:
            continue
        label = name or type(model).__name__
        if isinstance(module, _BATCH_DEPENDENT):
            raise ProblemError(
                f"module {label!r} ({type(module).__name__}) is in training mode: its output depends on "
                "the other samples of the batch, so per-sample curvature is undefined. Call model.eval() first."
            )
        if isinstance(module, _RANDOM) and module.p > 0:
            raise ProblemError(
                f"module {label!r} ({type(module).__name__}, p={module.p}) is active: its output is random, "
                "so the curvature is undefined. Call model.eval() first."
            )


class Problem:
    """A model, its training data and a per-sample loss; total loss = mean of the per-sample losses.

    The model is never modified: parameters, buffers and the data are copied (always, so that later
    in-place changes to the caller's tensors never change the problem) into plain dicts (torch.func
    style) in the requested dtype and device, and the model is evaluated with ``functional_call``.
    Integer inputs are passed on as integers (models that look up embeddings take them so); a model
    whose forward fails on them is refused with the conversion to make. Integer targets of ``mse``
    and ``half_sq`` are converted to the dtype, with their values.

    ``parameters`` says what x is: ``"trainable"`` (default) takes the parameters with
    ``requires_grad=True``, the ones SGD moves, and passes the frozen ones to the model as
    constants beside the buffers (``frozen`` names them); ``"all"`` takes every parameter.

    Refused with :class:`ProblemError` (the curvature would be undefined or silently wrong):
    complex inputs, targets or dtype; non-finite inputs or loss; a model without a trainable
    parameter; BatchNorm or active Dropout modules in training mode; and, by a probe at
    construction, any forward that is random (two forwards of the same samples differ) or whose
    output for a sample depends on the other samples of the batch (a sample alone differs from the
    same sample inside a batch by more than √eps of the dtype, relative to the largest output).

    >>> net = nn.Linear(3, 2)
    >>> x, y = torch.randn(5, 3), torch.randn(5, 2)
    >>> p = Problem(net, x, y, loss="mse", dtype=torch.float64)
    >>> p.n, p.dim
    (5, 8)
    >>> _ = net.bias.requires_grad_(False)
    >>> Problem(net, x, y).dim, Problem(net, x, y).frozen, Problem(net, x, y, parameters="all").dim
    (6, ('bias',), 8)
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: Tensor,
        targets: Tensor,
        loss: str = "mse",
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        chunk_size: int = 256,
        parameters: str = "trainable",
    ):
        if loss not in LOSSES:
            raise ProblemError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if parameters not in PARAMETER_SETS:
            raise ProblemError(f"parameters must be one of {PARAMETER_SETS}, got {parameters!r}")
        if not isinstance(model, nn.Module):
            raise ProblemError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if isinstance(model, torch.jit.ScriptModule):
            raise ProblemError("TorchScript modules cannot be evaluated with other parameters (torch.func); "
                               "build the model in Python and load its state dict")
        self._check_data(inputs, targets)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, Integral) or chunk_size < 1:
            raise ProblemError(f"chunk_size must be a positive whole number of samples, got {chunk_size!r}")
        if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
            raise ProblemError(f"dtype must be a real floating-point torch dtype such as torch.float64, got {dtype!r}")
        check_eval_safe(model)

        named = dict(model.named_parameters())
        if not named:
            raise ProblemError("the model has no parameters")
        trained = {k: v for k, v in named.items() if parameters == "all" or v.requires_grad}
        if not trained:
            raise ProblemError(
                f"the model has no trainable parameter (all {len(named)} have requires_grad=False), so SGD moves "
                "nothing: set requires_grad=True on the parameters that are trained, or pass parameters='all'"
            )
        first = next(iter(trained.values()))
        self.dtype = dtype or first.dtype
        if not self.dtype.is_floating_point:
            _check_real_dtype("the model's parameter dtype", self.dtype)
            raise ProblemError(f"the model's parameters are {self.dtype}, not floating point; pass dtype=torch.float64")
        self.device = check_device(device) if device is not None else first.device
        self.model = model
        self.loss = loss
        self.chunk_size = int(chunk_size)
        self.parameter_set = parameters
        self.params: Params = {k: v.detach().to(self.device, self.dtype, copy=True) for k, v in trained.items()}
        #: Names of the parameters held constant (``requires_grad=False`` with ``parameters="trainable"``).
        self.frozen: tuple[str, ...] = tuple(k for k in named if k not in trained)
        # Frozen parameters travel with the buffers: functional_call takes them as constants.
        constants = {k: named[k] for k in self.frozen} | dict(model.named_buffers())
        self.buffers: Params = {
            k: v.detach().to(self.device, self.dtype if v.is_floating_point() else v.dtype, copy=True)
            for k, v in constants.items()
        }
        self.inputs = inputs.detach().to(self.device, self.dtype if inputs.is_floating_point() else inputs.dtype,
                                         copy=True)
        if loss == "ce":
            if targets.is_floating_point() or targets.ndim != 1:
                raise ProblemError(
                    f"loss 'ce' needs integer class labels of shape (n,), got {targets.dtype} {tuple(targets.shape)}"
                )
            self.targets = targets.detach().to(self.device, torch.long, copy=True)
        else:
            self.targets = targets.detach().to(self.device, self.dtype, copy=True)
        self.names = list(self.params)
        self.shapes = [self.params[k].shape for k in self.names]
        self.numels = [self.params[k].numel() for k in self.names]
        self._check_output_and_loss()
        self._check_forward_is_per_sample()

    @staticmethod
    def _check_data(inputs: Tensor, targets: Tensor) -> None:
        if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
            raise ProblemError(f"inputs and targets must be torch tensors, got {type(inputs).__name__} "
                               f"and {type(targets).__name__}")
        _check_real_dtype("the inputs' dtype", inputs.dtype)
        _check_real_dtype("the targets' dtype", targets.dtype)
        if inputs.ndim == 0 or inputs.shape[0] == 0:
            raise ProblemError("the data is empty: inputs need at least one sample along dimension 0")
        if targets.ndim == 0 or targets.shape[0] != inputs.shape[0]:
            raise ProblemError(
                f"inputs have {inputs.shape[0]} samples but targets have shape {tuple(targets.shape)}; "
                "dimension 0 of both must be the sample index"
            )
        if inputs.is_floating_point():
            bad = ~torch.isfinite(inputs.reshape(inputs.shape[0], -1)).all(dim=1)
            if bool(bad.any()):
                raise ProblemError(
                    f"the inputs of {int(bad.sum())} samples hold non-finite values (first: sample "
                    f"{int(bad.nonzero()[0])}); curvature at such inputs is undefined: clean or drop those samples"
                )

    # ---- sizes and flattening -------------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of samples of the problem (on every process together when sharded)."""
        return self.inputs.shape[0]

    @property
    def n_local(self) -> int:
        """Number of samples held here, the ones :meth:`chunks` covers: ``n`` unless sharded."""
        return self.inputs.shape[0]

    def all_sum(self, tree: Params) -> Params:
        """Σ over the processes holding the samples of a sum over the samples held here: the identity
        unless sharded (:mod:`stabcheck.curvature.distributed`). Call it once a sum over
        :meth:`chunks` is complete, before dividing by n."""
        return tree

    @property
    def dim(self) -> int:
        return sum(self.numels)

    def flatten(self, tree: Mapping[str, Tensor]) -> Tensor:
        return torch.cat([tree[k].reshape(-1) for k in self.names])

    def unflatten(self, flat: Tensor) -> Params:
        if flat.shape != (self.dim,):
            raise ProblemError(f"vector has shape {tuple(flat.shape)}, expected ({self.dim},)")
        return {k: t.view(s) for k, t, s in zip(self.names, flat.split(self.numels), self.shapes)}

    def chunks(self, size: int | None = None) -> list[slice]:
        """Consecutive sample slices of at most ``size`` (default ``chunk_size``) samples."""
        size = size or self.chunk_size
        return [slice(i, min(i + size, self.n_local)) for i in range(0, self.n_local, size)]

    # ---- losses ---------------------------------------------------------------------------
    def forward(self, params: Mapping[str, Tensor], inputs: Tensor) -> Tensor:
        return functional_call(self.model, ({**params}, self.buffers), (inputs,))

    def sample_losses(self, params: Mapping[str, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        return per_sample_loss(self.loss, self.forward(params, inputs), targets)

    def sum_loss_fn(self, chunk: slice) -> Callable[[Params], Tensor]:
        """x ↦ Σ_{i in chunk} f_i(x): divide by n to get this chunk's share of the total loss."""
        x, y = self.inputs[chunk], self.targets[chunk]
        return lambda params: self.sample_losses(params, x, y).sum()

    def single_loss(self, params: Mapping[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        """f_i for one sample given without its batch dimension (for vmap and per-sample loops)."""
        return self.sample_losses(params, x.unsqueeze(0), y.unsqueeze(0))[0]

    @torch.no_grad()
    def loss_value(self, params: Mapping[str, Tensor] | None = None) -> float:
        """Total loss f(x) = (1/n) Σ_i f_i(x)."""
        params = self.params if params is None else params
        total = sum(self.sum_loss_fn(c)(params) for c in self.chunks())
        return float(self.all_sum({"loss": total})["loss"]) / self.n

    def _check_output_and_loss(self) -> None:
        x, y = self.inputs[:1], self.targets[:1]
        with torch.no_grad():
            try:
                out = self.forward(self.params, x)
            except RuntimeError as err:
                if x.is_floating_point():
                    raise
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ProblemError(
                    f"the inputs are {x.dtype} and the model's forward fails on them ({reason}); convert them to "
                    "floating point as the model was trained on them, e.g. inputs.float() / 255 for 8-bit pixels"
                ) from None
        if out.shape[0] != 1:
            raise ProblemError(f"the model maps 1 sample to output of shape {tuple(out.shape)}; dimension 0 must be the batch")
        _check_real_dtype("the model's output", out.dtype)
        if self.loss == "ce":
            if out.ndim != 2:
                raise ProblemError(f"loss 'ce' needs model outputs of shape (n, K), got {tuple(out.shape)} for one sample")
            k = out.shape[1]
            bad = (self.targets < 0) | (self.targets >= k)
            if bool(bad.any()):
                raise ProblemError(f"class labels must lie in [0, {k}); found {int(self.targets[bad][0])}")
        elif out.shape[1:] != y.shape[1:]:
            raise ProblemError(
                f"targets of one sample have shape {tuple(y.shape[1:])} but the model outputs {tuple(out.shape[1:])}; "
                f"for loss {self.loss!r} they must match (one-hot targets for classification)"
            )
        value = self.loss_value()
        if not torch.isfinite(torch.tensor(value)):
            raise ProblemError(f"the training loss is not finite ({value}); check the inputs and the parameters")

    def _check_forward_is_per_sample(self) -> None:
        """f_i must be a deterministic function of sample i alone (else H, Σ and a depend on chunking or chance)."""
        m = min(self.n, PROBE_SAMPLES)
        x = self.inputs[:m]
        training = any(module.training for module in self.model.modules())
        hint = (" The model is in training mode: call model.eval() first." if training else "")
        with torch.no_grad():
            together = self.forward(self.params, x)
            again = self.forward(self.params, x)
            if not torch.equal(together, again):
                gap = float((together - again).abs().max())
                raise ProblemError(
                    f"the model's output is random: two forwards of the same {m} samples differ (by up to {gap:.3g}), "
                    "so the curvature is undefined (a dropout inside forward, e.g. F.dropout(x, p, self.training), "
                    "or another random draw)." + hint
                )
            alone = torch.cat([self.forward(self.params, x[i:i + 1]) for i in range(m)])
        # Batched and single-sample kernels may round differently; √eps leaves room for that only.
        tol = torch.finfo(together.dtype).eps ** 0.5 * float(together.abs().max())
        gap = float((alone - together).abs().max())
        if gap > tol:
            raise ProblemError(
                f"the model's output for a sample depends on the other samples of its batch: {m} samples computed "
                f"one at a time differ from the same samples computed together by up to {gap:.3g} (tolerance "
                f"{tol:.3g}), so per-sample curvature is undefined and the results would depend on chunk_size. "
                "f_i must depend on sample i only (no batch statistics such as x - x.mean(0), no BatchNorm in "
                "training mode)." + (" The model is in training mode: if its training-mode behaviour causes this, "
                                     "call model.eval() first." if training else "")
            )
