"""The ``factored`` Σ engine: exact Σv from per-sample factors, in two batched passes.

Σv = (1/n) Σ_i H_i w_i with w_i = H_i v − H v (centred; the −H w̄ term of the other engines is
zero here because H v is the mean of the very same H_i v). Nothing parameter-sized is formed
per sample for Linear layers:

* pass 1, one batched forward-over-reverse pass at the shared tangent v, records for every layer
  and sample the input a_i, its tangent ȧ_i, the back-propagated signal δ_i and its tangent
  δ̇_i; a Linear layer's per-sample product is then (H_i v)_W = δ̇_i a_iᵀ + δ_i ȧ_iᵀ (rank two),
  (H_i v)_b = δ̇_i, and H v is their mean;
* pass 2 applies each H_i to its own tangent w_i, which a forward-over-reverse pass needs only
  through w_i a_i and w_iᵀ δ_i, e.g. (δ̇_i a_iᵀ + δ_i ȧ_iᵀ) a_i = δ̇_i (a_i·a_i) + δ_i (ȧ_i·a_i):
  a few per-sample dot products instead of n parameter-sized vectors.

Conv2d weights are small, so their per-sample tangents are materialised (n × C_out × C_in k²)
and applied as batched matrix products on the unfolded patches. Element-wise non-linearities
with a second derivative (tanh, sigmoid, GELU, …) add σ''(z) ż δ to the backward tangent; ReLU,
max-pooling, average pooling and reshapes add nothing. The loss adds its output Hessian
(mse: 2/K·I, half_sq: I, ce: diag(p) − ppᵀ).

Supported: ``nn.Sequential`` (nested) of Linear (2-D inputs), Conv2d (zeros padding, groups=1),
the element-wise activations of ``SMOOTH`` and ``PIECEWISE_LINEAR``, MaxPool2d,
AdaptiveMaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Flatten, Unflatten, Identity and inactive
Dropout. Anything else is declared unsupported (:func:`unsupported_reason` says why) and
``engine="auto"`` picks the next engine; the operator's ``.engine`` names the one that ran.

>>> import torch
>>> from stabcheck.curvature.problem import Problem
>>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
>>> p = Problem(net, torch.randn(6, 3), torch.randn(6, 2), loss="mse", dtype=torch.float64)
>>> unsupported_reason(p) is None
True
>>> sorted(sigma_factored(p, p.params, centred=True)) == sorted(p.params)
True
"""
from __future__ import annotations

import weakref
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp
from torch.nn.grad import conv2d_input, conv2d_weight

from ..problem import Params, Problem, ProblemError

#: Element-wise activations with a non-zero second derivative: they add σ''(z) ż δ.
SMOOTH = (nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
          nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)
#: Element-wise activations that are piecewise linear: σ'' = 0 almost everywhere.
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh)
_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)
_LINEAR_MAPS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class UnsupportedModel(ProblemError):
    """The factored engine has no exact rule for this model (the message names the module)."""


def _rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample inner products x_i·y_i over all non-batch dimensions, shape (m,)."""
    return torch.einsum("ij,ij->i", x.flatten(1), y.flatten(1))


def _add(acc: Params, key: str, value: Tensor) -> None:
    if key in acc:
        acc[key].add_(value)
    else:
        acc[key] = value.clone() if value._base is not None or not value.is_contiguous() else value


# ---- layers ---------------------------------------------------------------------------------------
# Every layer implements, with st its per-chunk record shared by the two passes:
#   forward1(st, P, a, ȧ, v) -> (z, ż)                            pass 1 at the shared tangent v
#   backward1(st, P, δ, δ̇, v, hv, need_input, keep) -> (δ_in, δ̇_in)  adds Σ_i (H_i v) to hv;
#       keep=False records nothing for pass 2 (the sweep that only needs H v)
#   forward2(st, P, t, own, shift) -> t_out          pass 2 at w_i = [H_i v if own] + [shift]
#   backward2(st, P, ṫ, own, shift, out, need_input) -> ṫ_in      adds Σ_i (H_i w_i) to out
# A tangent of None is zero (layers before the first parameter).

class _Linear:
    has_params = True

    def __init__(self, module: nn.Linear, prefix: str):
        self.w = prefix + "weight"
        self.b = prefix + "bias" if module.bias is not None else None
        self.label = prefix[:-1] or "model"

    def keys(self) -> list[str]:
        return [k for k in (self.w, self.b) if k]

    def _bias(self, tree):
        return tree[self.b] if self.b else None

    def forward1(self, st, P, a, a_dot, v):
        if a.ndim != 2:
            raise UnsupportedModel(
                f"module {self.label!r} (Linear) gets inputs of shape {tuple(a.shape)}; the factored engine "
                "needs (batch, features) inputs for its rank-two per-sample products"
            )
        z = F.linear(a, P[self.w], self._bias(P))
        z_dot = F.linear(a, v[self.w], self._bias(v))
        if a_dot is not None:
            z_dot.addmm_(a_dot, P[self.w].T)
        st.a, st.a_dot = a, a_dot
        return z, z_dot

    def backward1(self, st, P, d, d_dot, v, hv, need_input, keep):
        a, a_dot = st.a, st.a_dot
        g = d_dot.T @ a
        if a_dot is not None:
            g.addmm_(d.T, a_dot)
        _add(hv, self.w, g)
        if self.b:
            _add(hv, self.b, d_dot.sum(0))
        if keep:
            # (H_i v)_W = δ̇_i a_iᵀ + δ_i ȧ_iᵀ and (H_i v)_b = δ̇_i meet a_i and δ_i only in these dot products.
            st.d, st.d_dot = d, d_dot
            st.aa = _rowdot(a, a) + (1.0 if self.b else 0.0)
            st.d_ddot = _rowdot(d, d_dot)
            if a_dot is not None:
                st.a_adot = _rowdot(a, a_dot)
                st.dd = _rowdot(d, d)
        if not need_input:
            return None, None
        W = P[self.w]
        return d @ W, torch.addmm(d @ v[self.w], d_dot, W)

    def forward2(self, st, P, t, own, shift):
        out = None
        if own:
            # (H_i v) applied to (a_i, 1): δ̇_i (a_i·a_i + 1) + δ_i (ȧ_i·a_i)
            out = st.d_dot * st.aa[:, None]
            if st.a_dot is not None:
                out.addcmul_(st.d, st.a_adot[:, None])
        if shift is not None:
            s = F.linear(st.a, shift[self.w], self._bias(shift))
            out = s if out is None else out.add_(s)
        if t is not None:
            out.addmm_(t, P[self.w].T)
        st.t = t
        return out

    def backward2(self, st, P, t_dot, own, shift, out, need_input):
        g = t_dot.T @ st.a
        if st.t is not None:
            g.addmm_(st.d.T, st.t)
        _add(out, self.w, g)
        if self.b:
            _add(out, self.b, t_dot.sum(0))
        if not need_input:
            return None
        r = t_dot @ P[self.w]
        if own:
            # (H_i v)_Wᵀ δ_i = a_i (δ̇_i·δ_i) + ȧ_i (δ_i·δ_i)
            r.addcmul_(st.a, st.d_ddot[:, None])
            if st.a_dot is not None:
                r.addcmul_(st.a_dot, st.dd[:, None])
        if shift is not None:
            r.addmm_(st.d, shift[self.w])
        return r


class _Conv2d:
    has_params = True

    def __init__(self, module: nn.Conv2d, prefix: str):
        self.label = prefix[:-1] or "model"
        if module.groups != 1:
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) has groups={module.groups}; only groups=1 is supported")
        if module.padding_mode != "zeros":
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) pads with {module.padding_mode!r}; only 'zeros' is supported")
        self.w = prefix + "weight"
        self.b = prefix + "bias" if module.bias is not None else None
        self.kernel, self.stride, self.dilation = module.kernel_size, module.stride, module.dilation
        self.padding = self._int_padding(module)

    def _int_padding(self, module) -> tuple[int, int]:
        if module.padding == "valid":
            return (0, 0)
        if module.padding == "same":
            if any(s != 1 for s in module.stride) or any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
                raise UnsupportedModel(f"module {self.label!r} (Conv2d) uses asymmetric padding='same'")
            return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
        return tuple(module.padding)

    def keys(self) -> list[str]:
        return [k for k in (self.w, self.b) if k]

    def _conv(self, x, w, b=None):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def _unfold(self, x):
        return F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)

    def _input_grad(self, shape, w, d):
        return conv2d_input(shape, w, d, self.stride, self.padding, self.dilation)

    def _weight_grad(self, x, shape, d):
        return conv2d_weight(x, shape, d, self.stride, self.padding, self.dilation)

    def forward1(self, st, P, a, a_dot, v):
        if a.ndim != 4:
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) gets inputs of shape {tuple(a.shape)}; (batch, C, H, W) needed")
        z = self._conv(a, P[self.w], P[self.b] if self.b else None)
        z_dot = self._conv(a, v[self.w], v[self.b] if self.b else None)
        if a_dot is not None:
            z_dot.add_(self._conv(a_dot, P[self.w]))
        st.a, st.a_dot = a, a_dot
        return z, z_dot

    def backward1(self, st, P, d, d_dot, v, hv, need_input, keep):
        a, a_dot, W = st.a, st.a_dot, P[self.w]
        if keep:
            self._record(st, d, d_dot, W)
        if not keep or st.gram:
            g = self._weight_grad(a, W.shape, d_dot)
            if a_dot is not None:
                g.add_(self._weight_grad(a_dot, W.shape, d))
            _add(hv, self.w, g)
        else:
            _add(hv, self.w, st.G.sum(0).view_as(W))
        if self.b:
            _add(hv, self.b, d_dot.sum((0, 2, 3)))
        if not need_input:
            return None, None
        d_in_dot = self._input_grad(a.shape, W, d_dot).add_(self._input_grad(a.shape, v[self.w], d))
        return self._input_grad(a.shape, W, d), d_in_dot

    def _record(self, st, d, d_dot, W):
        """What pass 2 needs of (H_i v)_W = Σ_p δ̇_ip ⊗ patch_ip + δ_ip ⊗ ȧpatch_ip = D̈_i Colsᵢᵀ + D_i Ȧcolsᵢᵀ.

        Few positions P (P(C_out + C_in k²) < C_out C_in k²): P×P Gram matrices of the factors, as
        for a Linear layer (P = 1). Otherwise the per-sample weight tangents themselves.
        """
        st.d, st.cols = d, self._unfold(st.a)                         # cols: (m, C_in k², P)
        D, Dd = d.flatten(2), d_dot.flatten(2)                         # (m, C_out, P)
        acols = None if st.a_dot is None else self._unfold(st.a_dot)
        st.Gb = d_dot.sum((2, 3)) if self.b else None
        out_ch, k, positions = D.shape[1], st.cols.shape[1], D.shape[2]
        st.gram = positions * (out_ch + k) < out_ch * k
        if st.gram:
            st.acols, st.Dd = acols, Dd
            st.cc = torch.bmm(st.cols.transpose(1, 2), st.cols)        # patch_p · patch_q
            if self.b:
                st.cc.add_(1.0)                                        # the bias sees a constant 1
            st.ddd = torch.bmm(Dd.transpose(1, 2), D)                  # δ̇_p · δ_q
            if acols is not None:
                st.ac = torch.bmm(acols.transpose(1, 2), st.cols)      # ȧpatch_p · patch_q
                st.dd = torch.bmm(D.transpose(1, 2), D)                # δ_p · δ_q
        else:
            st.G = torch.bmm(Dd, st.cols.transpose(1, 2))              # (m, C_out, C_in k²)
            if acols is not None:
                st.G.baddbmm_(D, acols.transpose(1, 2))

    def forward2(self, st, P, t, own, shift):
        out = None
        if own:  # (H_i v) applied to sample i's patches (and the bias's 1)
            if st.gram:
                out = torch.bmm(st.Dd, st.cc)
                if st.a_dot is not None:
                    out.baddbmm_(st.d.flatten(2), st.ac)
                out = out.view(st.d.shape)
            else:
                out = torch.bmm(st.G, st.cols).view(st.d.shape)
                if self.b:
                    out.add_(st.Gb[:, :, None, None])
        if shift is not None:
            s = self._conv(st.a, shift[self.w], shift[self.b] if self.b else None)
            out = s if out is None else out.add_(s)
        if t is not None:
            out.add_(self._conv(t, P[self.w]))
        st.t = t
        return out

    def backward2(self, st, P, t_dot, own, shift, out, need_input):
        W, a = P[self.w], st.a
        g = self._weight_grad(a, W.shape, t_dot)
        if st.t is not None:
            g.add_(self._weight_grad(st.t, W.shape, st.d))
        _add(out, self.w, g)
        if self.b:
            _add(out, self.b, t_dot.sum((0, 2, 3)))
        if not need_input:
            return None
        r = self._input_grad(a.shape, W, t_dot)
        if own:  # (H_i v)_Wᵀ δ_i on the patches, folded back onto the input
            if st.gram:
                cols = torch.bmm(st.cols, st.ddd)
                if st.a_dot is not None:
                    cols.baddbmm_(st.acols, st.dd)
            else:
                cols = torch.bmm(st.G.transpose(1, 2), st.d.flatten(2))
            r.add_(F.fold(cols, a.shape[2:], self.kernel, self.dilation, self.padding, self.stride))
        if shift is not None:
            r.add_(self._input_grad(a.shape, shift[self.w], st.d))
        return r


class _Elementwise:
    """σ applied element-wise: ż = σ' ȧ, δ_in = σ' δ, δ̇_in = σ' δ̇ + σ'' ȧ δ."""

    has_params = False

    def __init__(self, module: nn.Module, prefix: str):
        self.module = module
        self.smooth = isinstance(module, SMOOTH)

    def keys(self):
        return []

    def forward1(self, st, P, a, a_dot, v):
        if type(self.module) is nn.ReLU:  # σ' = 1[a > 0], autograd's convention at 0
            st.d1 = (a > 0).to(a.dtype)  # a float mask: multiplying by a bool tensor is several times slower
            return F.relu(a), (None if a_dot is None else a_dot * st.d1)
        # Element-wise, so the gradient of Σσ(a) is σ'(a) and that of Σσ'(a) is σ''(a).
        with torch.enable_grad():
            x = a.detach().requires_grad_(True)
            y = self.module(x)
            (d1,) = torch.autograd.grad(y.sum(), x, create_graph=self.smooth)
            if self.smooth:
                (st.d2,) = torch.autograd.grad(d1.sum(), x)
                st.a_dot = a_dot
        st.d1 = d1.detach()
        return y.detach(), (None if a_dot is None else a_dot * st.d1)

    def backward1(self, st, P, d, d_dot, v, hv, need_input, keep):
        d_in_dot = d_dot * st.d1
        if self.smooth:
            st.d = d
            if st.a_dot is not None:
                d_in_dot.addcmul_(st.d2 * st.a_dot, d)
        return d * st.d1, d_in_dot

    def forward2(self, st, P, t, own, shift):
        if self.smooth:
            st.t = t
        return None if t is None else t * st.d1

    def backward2(self, st, P, t_dot, own, shift, out, need_input):
        r = t_dot * st.d1
        if self.smooth and st.t is not None:
            r.addcmul_(st.d2 * st.t, st.d)
        return r


class _LinearMap:
    """A parameter-free linear map (average pooling, reshapes): tangents and signals pass as through the map."""

    has_params = False

    def __init__(self, module: nn.Module, prefix: str):
        self.module = module

    def keys(self):
        return []

    def forward1(self, st, P, a, a_dot, v):
        out, st.pullback = vjp(self.module, a)
        return out, (None if a_dot is None else self.module(a_dot))

    def backward1(self, st, P, d, d_dot, v, hv, need_input, keep):
        return st.pullback(d)[0], st.pullback(d_dot)[0]

    def forward2(self, st, P, t, own, shift):
        return None if t is None else self.module(t)

    def backward2(self, st, P, t_dot, own, shift, out, need_input):
        return st.pullback(t_dot)[0]


class _MaxPool2d:
    """Max pooling is linear given the arg-max indices of the primal: a gather and its scatter-add."""

    has_params = False

    def __init__(self, module: nn.Module, prefix: str):
        if isinstance(module, nn.AdaptiveMaxPool2d):
            self.pool = lambda x: F.adaptive_max_pool2d(x, module.output_size, return_indices=True)
        else:
            self.pool = lambda x: F.max_pool2d(x, module.kernel_size, module.stride, module.padding,
                                               module.dilation, module.ceil_mode, return_indices=True)

    def keys(self):
        return []

    def _gather(self, st, x):
        return x.flatten(2).gather(2, st.idx.flatten(2)).view(st.idx.shape)

    def _scatter(self, st, d):
        return torch.zeros(st.in_shape, dtype=d.dtype, device=d.device).flatten(2).scatter_add_(
            2, st.idx.flatten(2), d.flatten(2)).view(st.in_shape)

    def forward1(self, st, P, a, a_dot, v):
        out, st.idx = self.pool(a)
        st.in_shape = a.shape
        return out, (None if a_dot is None else self._gather(st, a_dot))

    def backward1(self, st, P, d, d_dot, v, hv, need_input, keep):
        return self._scatter(st, d), self._scatter(st, d_dot)

    def forward2(self, st, P, t, own, shift):
        return None if t is None else self._gather(st, t)

    def backward2(self, st, P, t_dot, own, shift, out, need_input):
        return self._scatter(st, t_dot)


# ---- the loss: δ = ∂ℓ/∂z and its Hessian-vector product -----------------------------------------------
def _loss_factors(loss: str, z: Tensor, y: Tensor):
    """(δ, z ↦ ∇²ℓ · ż) of the per-sample loss at the outputs z."""
    if loss == "ce":
        p = torch.softmax(z, dim=1)
        d = p.clone()
        d[torch.arange(z.shape[0], device=z.device), y] -= 1.0
        return d, lambda t: p * t - p * _rowdot(p, t)[:, None]
    if loss == "mse":
        scale = 2.0 / z[0].numel()
        return scale * (z - y), lambda t: scale * t
    return z - y, lambda t: t  # half_sq


# ---- plan -----------------------------------------------------------------------------------------------
def _leaves(module: nn.Module, prefix: str):
    if isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward:
            raise UnsupportedModel(f"module {prefix[:-1] or 'model'!r} ({type(module).__name__}) overrides Sequential.forward")
        for name, child in module._modules.items():  # as Sequential.forward: repeated modules included
            yield from _leaves(child, f"{prefix}{name}.")
    else:
        yield prefix, module


def _layer(module: nn.Module, prefix: str):
    label = prefix[:-1] or "model"
    if module._forward_hooks or module._forward_pre_hooks:
        raise UnsupportedModel(f"module {label!r} has forward hooks")
    if type(module) is nn.Linear:
        return _Linear(module, prefix)
    if type(module) is nn.Conv2d:
        return _Conv2d(module, prefix)
    if isinstance(module, SMOOTH + PIECEWISE_LINEAR):
        return _Elementwise(module, prefix)
    if isinstance(module, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        return _MaxPool2d(module, prefix)
    if isinstance(module, _RESHAPES + _LINEAR_MAPS):
        return _LinearMap(module, prefix)
    if isinstance(module, nn.modules.dropout._DropoutNd) and (not module.training or module.p == 0):
        return _LinearMap(nn.Identity(), prefix)
    raise UnsupportedModel(f"module {label!r} ({type(module).__name__}) has no exact factored rule")


class _Plan:
    def __init__(self, problem: Problem):
        self.layers = [_layer(m, prefix) for prefix, m in _leaves(problem.model, "")]
        keys = [k for layer in self.layers for k in layer.keys()]
        if sorted(keys) != sorted(problem.names):
            raise UnsupportedModel(
                f"the model's parameters {sorted(set(problem.names) ^ set(keys))} are not plain Linear/Conv2d weights"
            )
        self.first_param = next(i for i, layer in enumerate(self.layers) if layer.has_params)


_PLANS: "weakref.WeakKeyDictionary[Problem, _Plan | str]" = weakref.WeakKeyDictionary()


def _probe(plan: _Plan, problem: Problem) -> None:
    """Run pass 1 on two samples and compare its output with the model's own forward."""
    x, y = problem.inputs[:2], problem.targets[:2]
    with torch.no_grad():
        states, _, z, _ = _pass1(plan, problem, x, y, problem.params)
        expected = problem.forward(problem.params, x)
    if z.shape != expected.shape or not torch.allclose(z, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())):
        raise UnsupportedModel("the model's forward differs from the composition of its Sequential layers")


def unsupported_reason(problem: Problem) -> str | None:
    """None when the factored engine handles ``problem``, else why not (the module and rule missing)."""
    if problem not in _PLANS:
        try:
            plan = _Plan(problem)
            _probe(plan, problem)
            _PLANS[problem] = plan
        except UnsupportedModel as exc:
            _PLANS[problem] = str(exc)
    entry = _PLANS[problem]
    return entry if isinstance(entry, str) else None


def supports(problem: Problem) -> bool:
    """True when :func:`sigma_factored` computes Σv for ``problem`` exactly."""
    return unsupported_reason(problem) is None


def _plan(problem: Problem) -> _Plan:
    reason = unsupported_reason(problem)
    if reason is not None:
        raise UnsupportedModel(f"the factored Σ engine cannot handle this model: {reason}; use engine='auto' or 'vmap'")
    return _PLANS[problem]


# ---- the two passes -------------------------------------------------------------------------------------
def _pass1(plan: _Plan, problem: Problem, x: Tensor, y: Tensor, v: Params, keep: bool = True):
    """Forward-over-reverse at the shared tangent v: (records, Σ_i H_i v, outputs, z ↦ ∇²ℓ ż)."""
    P = problem.params
    states = [SimpleNamespace() for _ in plan.layers]
    a, a_dot = x, None
    for layer, st in zip(plan.layers, states):
        a, a_dot = layer.forward1(st, P, a, a_dot, v)
    d, loss_hvp = _loss_factors(problem.loss, a, y)
    d_dot = loss_hvp(a_dot)
    hv: Params = {}
    for i in range(len(plan.layers) - 1, plan.first_param - 1, -1):
        d, d_dot = plan.layers[i].backward1(states[i], P, d, d_dot, v, hv, i > plan.first_param, keep)
    return states, hv, a, loss_hvp


def _pass2(plan: _Plan, problem: Problem, states, loss_hvp, own: bool, shift: Params | None, out: Params) -> None:
    """Adds Σ_i H_i w_i, w_i = [H_i v if own] + [shift], to ``out``, reusing the records of pass 1."""
    P = problem.params
    t = None
    for layer, st in zip(plan.layers, states):
        t = layer.forward2(st, P, t, own, shift)
    t_dot = loss_hvp(t)
    for i in range(len(plan.layers) - 1, plan.first_param - 1, -1):
        t_dot = plan.layers[i].backward2(states[i], P, t_dot, own, shift, out, i > plan.first_param)


def sigma_factored(problem: Problem, v: Params, centred: bool) -> Params:
    """Σv = (1/n) Σ_i H_i (H_i v − H v) (centred) or (1/n) Σ_i H_i² v − H² v, from per-sample factors.

    Works in the chunks of :meth:`Problem.chunks` (the memory knob it shares with the H v product).
    One chunk: pass 1 gives every H_i v and H v, pass 2 applies each H_i to H_i v − H v. More
    chunks: a first sweep that records nothing gives H v, then every chunk runs pass 1 and pass 2.
    """
    plan = _plan(problem)
    n = problem.n
    chunks = problem.chunks()
    data = [(problem.inputs[c], problem.targets[c]) for c in chunks]
    with torch.no_grad():
        hv_mean = None
        if len(chunks) > 1:
            hv_sum: Params = {}
            for x, y in data:
                for k, t in _pass1(plan, problem, x, y, v, keep=False)[1].items():
                    _add(hv_sum, k, t)
            hv_mean = {k: t / n for k, t in hv_sum.items()}
        out: Params = {}
        h_hv: Params = {}
        for x, y in data:
            states, hv_sum, _, loss_hvp = _pass1(plan, problem, x, y, v)
            if hv_mean is None:
                hv_mean = {k: t / n for k, t in hv_sum.items()}
            if centred:
                _pass2(plan, problem, states, loss_hvp, True, {k: -t for k, t in hv_mean.items()}, out)
            else:
                _pass2(plan, problem, states, loss_hvp, True, None, out)
                _pass2(plan, problem, states, loss_hvp, False, hv_mean, h_hv)
            del states
        if not centred:
            for k in out:
                out[k].sub_(h_hv[k])
        return {k: out[k].div_(n) for k in problem.names}
