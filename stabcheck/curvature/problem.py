"""The finite-sum problem f(x) = (1/n) Σ_i f_i(x) that every curvature quantity refers to."""
from __future__ import annotations

from typing import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

Params = dict[str, Tensor]

LOSSES = ("mse", "half_sq", "ce")

# Modules whose training-mode output depends on the other samples of the batch or on randomness.
_BATCH_DEPENDENT = (nn.modules.batchnorm._BatchNorm,)
_RANDOM = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


class ProblemError(ValueError):
    """Input that cannot define a finite-sum problem (the message says what to change)."""


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

    The model is never modified: parameters and buffers are copied into plain dicts (torch.func
    style) in the requested dtype and device, and the model is evaluated with ``functional_call``.

    >>> net = nn.Linear(3, 2)
    >>> x, y = torch.randn(5, 3), torch.randn(5, 2)
    >>> p = Problem(net, x, y, loss="mse", dtype=torch.float64)
    >>> p.n, p.dim
    (5, 8)
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
    ):
        if loss not in LOSSES:
            raise ProblemError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
            raise ProblemError("inputs and targets must be torch tensors")
        if inputs.ndim == 0 or inputs.shape[0] == 0:
            raise ProblemError("the data is empty: inputs need at least one sample along dimension 0")
        if targets.ndim == 0 or targets.shape[0] != inputs.shape[0]:
            raise ProblemError(
                f"inputs have {inputs.shape[0]} samples but targets have shape {tuple(targets.shape)}; "
                "dimension 0 of both must be the sample index"
            )
        if chunk_size < 1:
            raise ProblemError(f"chunk_size must be a positive integer, got {chunk_size}")
        if isinstance(model, torch.jit.ScriptModule):
            raise ProblemError("TorchScript modules cannot be evaluated with other parameters (torch.func); "
                               "build the model in Python and load its state dict")
        check_eval_safe(model)

        first = next(model.parameters(), None)
        if first is None:
            raise ProblemError("the model has no parameters")
        self.dtype = dtype or first.dtype
        self.device = torch.device(device) if device is not None else first.device
        self.model = model
        self.loss = loss
        self.chunk_size = chunk_size
        self.params: Params = {
            k: v.detach().to(self.device, self.dtype) for k, v in model.named_parameters()
        }
        self.buffers: Params = {
            k: (v.detach().to(self.device, self.dtype) if v.is_floating_point() else v.detach().to(self.device))
            for k, v in model.named_buffers()
        }
        self.inputs = inputs.to(self.device, self.dtype) if inputs.is_floating_point() else inputs.to(self.device)
        if loss == "ce":
            if targets.is_floating_point() or targets.ndim != 1:
                raise ProblemError(
                    f"loss 'ce' needs integer class labels of shape (n,), got {targets.dtype} {tuple(targets.shape)}"
                )
            self.targets = targets.to(self.device, torch.long)
        else:
            self.targets = targets.to(self.device, self.dtype)
        self.names = list(self.params)
        self.shapes = [self.params[k].shape for k in self.names]
        self.numels = [self.params[k].numel() for k in self.names]
        self._check_output_and_loss()

    # ---- sizes and flattening -------------------------------------------------------------
    @property
    def n(self) -> int:
        return self.inputs.shape[0]

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
        return [slice(i, min(i + size, self.n)) for i in range(0, self.n, size)]

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
        return float(total) / self.n

    def _check_output_and_loss(self) -> None:
        x, y = self.inputs[:1], self.targets[:1]
        with torch.no_grad():
            out = self.forward(self.params, x)
        if out.shape[0] != 1:
            raise ProblemError(f"the model maps 1 sample to output of shape {tuple(out.shape)}; dimension 0 must be the batch")
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
