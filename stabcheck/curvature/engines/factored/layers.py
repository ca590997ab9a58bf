"""Per-layer rules of the factored engine: the :class:`LayerRule` interface and one rule per layer kind.

A rule carries a layer through the two passes of :mod:`.passes`; the state of one layer on one
chunk (a dataclass per rule) is made by ``forward1`` and read by the three later steps:

* pass 1 at the shared tangent v: ``forward1`` maps (a, ȧ) to (z, ż), ``backward1`` maps (δ, δ̇)
  of the layer's output to those of its input and adds Σ_i (H_i v) of the layer's parameters;
* pass 2 at the per-sample tangents w_i = [H_i v if own] + [shift]: ``forward2`` maps the input
  tangent t to the output's, ``backward2`` maps ṫ back and adds Σ_i (H_i w_i).

A tangent of None is zero (layers before the first parameter).

Linear: (H_i v)_W = δ̇_i a_iᵀ + δ_i ȧ_iᵀ (rank two), (H_i v)_b = δ̇_i. Pass 2 needs it only through
(H_i v) a_i and (H_i v)ᵀ δ_i, e.g. (δ̇_i a_iᵀ + δ_i ȧ_iᵀ) a_i = δ̇_i (a_i·a_i) + δ_i (ȧ_i·a_i): a few
per-sample dot products instead of n parameter-sized vectors.

Conv2d: the same on unfolded patches; P×P Gram matrices of the factors where few output positions
P make them smaller than the weight, otherwise the per-sample weight tangents (n × C_out × C_in k²)
applied as batched matrix products.

Element-wise σ: ż = σ'(a) ȧ, δ_in = σ' δ, δ̇_in = σ' δ̇ + σ''(a) ȧ δ; the last term vanishes for
the piecewise-linear ones. Max pooling (linear given its arg-max), average pooling, reshapes and
inactive dropout are linear maps and add nothing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable, Generic, Optional, Protocol, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp
from torch.nn.grad import conv2d_input, conv2d_weight

from ...problem import Params, ProblemError

#: Element-wise activations with a non-zero second derivative: they add σ''(z) ż δ.
SMOOTH = (nn.Tanh, nn.Sigmoid, nn.Softplus, nn.GELU, nn.SiLU, nn.ELU, nn.CELU, nn.SELU, nn.Mish,
          nn.LogSigmoid, nn.Softsign, nn.Tanhshrink)
#: Element-wise activations that are piecewise linear: σ'' = 0 almost everywhere.
PIECEWISE_LINEAR = (nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.Hardtanh)


class UnsupportedModel(ProblemError):
    """The factored engine has no exact rule for this model (the message names the module)."""


def rowdot(x: Tensor, y: Tensor) -> Tensor:
    """Per-sample inner products x_i·y_i over all non-batch dimensions, shape (m,).

    >>> rowdot(torch.ones(2, 3), torch.arange(6.).view(2, 3))
    tensor([ 3., 12.])
    """
    return torch.einsum("ij,ij->i", x.flatten(1), y.flatten(1))


def add_into(acc: Params, key: str, value: Tensor) -> None:
    """acc[key] += value, storing ``value`` itself (or a copy if it is a view) on the first add."""
    if key in acc:
        acc[key].add_(value)
    else:
        acc[key] = value.clone() if value._base is not None or not value.is_contiguous() else value


# ---- the interface ----------------------------------------------------------------------------------
@dataclass
class Pass1Context:
    """Shared by every layer of pass 1: parameters P, the tangent v, Σ_i H_i v so far, whether to record.

    ``keep=False`` records nothing for pass 2 (the sweep that only needs H v).
    """

    params: Params
    v: Params
    hv: Params = field(default_factory=dict)
    keep: bool = True


@dataclass
class Pass2Context:
    """Shared by every layer of pass 2: tangents w_i = [H_i v if own] + [shift]; Σ_i H_i w_i adds to ``out``."""

    params: Params
    own: bool
    shift: Optional[Params]
    out: Params


S = TypeVar("S")


class LayerRule(Protocol, Generic[S]):
    """How one layer kind takes part in the two passes; ``S`` is its per-chunk state."""

    #: Names of the layer's parameters in the problem (empty for parameter-free layers).
    keys: tuple[str, ...]

    def forward1(self, ctx: Pass1Context, a: Tensor, a_dot: Optional[Tensor]) -> tuple[S, Tensor, Optional[Tensor]]:
        """(state, z, ż) from the layer's input a and its tangent ȧ."""

    def backward1(self, st: S, ctx: Pass1Context, d: Tensor, d_dot: Tensor,
                  need_input: bool) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """(δ_in, δ̇_in) of the input (None, None unless ``need_input``); adds Σ_i (H_i v) to ``ctx.hv``."""

    def forward2(self, st: S, ctx: Pass2Context, t: Optional[Tensor]) -> Optional[Tensor]:
        """The output's tangent from the input's tangent t (None: zero)."""

    def backward2(self, st: S, ctx: Pass2Context, t_dot: Tensor, need_input: bool) -> Optional[Tensor]:
        """ṫ of the input (None unless ``need_input``); adds Σ_i (H_i w_i) to ``ctx.out``."""


def module_label(prefix: str) -> str:
    return prefix[:-1] or "model"


# ---- Linear -----------------------------------------------------------------------------------------
@dataclass
class LinearState:
    a: Tensor
    a_dot: Optional[Tensor]
    # recorded by backward1 when ctx.keep: δ, δ̇ and the dot products pass 2 needs
    d: Optional[Tensor] = None
    d_dot: Optional[Tensor] = None
    aa: Optional[Tensor] = None        # a_i·a_i (+1 for the bias)
    d_ddot: Optional[Tensor] = None    # δ_i·δ̇_i
    a_adot: Optional[Tensor] = None    # a_i·ȧ_i, when ȧ ≠ 0
    dd: Optional[Tensor] = None        # δ_i·δ_i, when ȧ ≠ 0
    t: Optional[Tensor] = None         # pass 2's input tangent


class LinearRule(LayerRule[LinearState]):
    def __init__(self, module: nn.Linear, prefix: str):
        self.w = prefix + "weight"
        self.b = prefix + "bias" if module.bias is not None else None
        self.keys = tuple(k for k in (self.w, self.b) if k)
        self.label = module_label(prefix)

    def _bias(self, tree: Params) -> Optional[Tensor]:
        return tree[self.b] if self.b else None

    def forward1(self, ctx, a, a_dot):
        if a.ndim != 2:
            raise UnsupportedModel(
                f"module {self.label!r} (Linear) gets inputs of shape {tuple(a.shape)}; the factored engine "
                "needs (batch, features) inputs for its rank-two per-sample products"
            )
        P, v = ctx.params, ctx.v
        z = F.linear(a, P[self.w], self._bias(P))
        z_dot = F.linear(a, v[self.w], self._bias(v))
        if a_dot is not None:
            z_dot.addmm_(a_dot, P[self.w].T)
        return LinearState(a, a_dot), z, z_dot

    def backward1(self, st, ctx, d, d_dot, need_input):
        a, a_dot = st.a, st.a_dot
        g = d_dot.T @ a
        if a_dot is not None:
            g.addmm_(d.T, a_dot)
        add_into(ctx.hv, self.w, g)
        if self.b:
            add_into(ctx.hv, self.b, d_dot.sum(0))
        if ctx.keep:
            # (H_i v)_W = δ̇_i a_iᵀ + δ_i ȧ_iᵀ and (H_i v)_b = δ̇_i meet a_i and δ_i only in these dot products.
            st.d, st.d_dot = d, d_dot
            st.aa = rowdot(a, a) + (1.0 if self.b else 0.0)
            st.d_ddot = rowdot(d, d_dot)
            if a_dot is not None:
                st.a_adot = rowdot(a, a_dot)
                st.dd = rowdot(d, d)
        if not need_input:
            return None, None
        W = ctx.params[self.w]
        return d @ W, torch.addmm(d @ ctx.v[self.w], d_dot, W)

    def forward2(self, st, ctx, t):
        out = None
        if ctx.own:
            # (H_i v) applied to (a_i, 1): δ̇_i (a_i·a_i + 1) + δ_i (ȧ_i·a_i)
            out = st.d_dot * st.aa[:, None]
            if st.a_dot is not None:
                out.addcmul_(st.d, st.a_adot[:, None])
        if ctx.shift is not None:
            s = F.linear(st.a, ctx.shift[self.w], self._bias(ctx.shift))
            out = s if out is None else out.add_(s)
        if t is not None:
            out.addmm_(t, ctx.params[self.w].T)
        st.t = t
        return out

    def backward2(self, st, ctx, t_dot, need_input):
        g = t_dot.T @ st.a
        if st.t is not None:
            g.addmm_(st.d.T, st.t)
        add_into(ctx.out, self.w, g)
        if self.b:
            add_into(ctx.out, self.b, t_dot.sum(0))
        if not need_input:
            return None
        r = t_dot @ ctx.params[self.w]
        if ctx.own:
            # (H_i v)_Wᵀ δ_i = a_i (δ̇_i·δ_i) + ȧ_i (δ_i·δ_i)
            r.addcmul_(st.a, st.d_ddot[:, None])
            if st.a_dot is not None:
                r.addcmul_(st.a_dot, st.dd[:, None])
        if ctx.shift is not None:
            r.addmm_(st.d, ctx.shift[self.w])
        return r


# ---- Conv2d -----------------------------------------------------------------------------------------
@dataclass
class Conv2dState:
    a: Tensor
    a_dot: Optional[Tensor]
    # recorded by backward1 when ctx.keep (see Conv2dRule._record)
    d: Optional[Tensor] = None
    cols: Optional[Tensor] = None      # unfolded patches of a, (m, C_in k², P)
    gram: bool = False                 # True: Gram factors below; False: the per-sample tangents G
    acols: Optional[Tensor] = None     # unfolded patches of ȧ (Gram rule)
    Dd: Optional[Tensor] = None        # δ̇ flattened, (m, C_out, P) (Gram rule)
    cc: Optional[Tensor] = None        # patch_p·patch_q (+1 for the bias)
    ddd: Optional[Tensor] = None       # δ̇_p·δ_q
    ac: Optional[Tensor] = None        # ȧpatch_p·patch_q, when ȧ ≠ 0
    dd: Optional[Tensor] = None        # δ_p·δ_q, when ȧ ≠ 0
    G: Optional[Tensor] = None         # (H_i v)_W, (m, C_out, C_in k²) (materialised rule)
    Gb: Optional[Tensor] = None        # (H_i v)_b, (m, C_out)
    t: Optional[Tensor] = None         # pass 2's input tangent


class Conv2dRule(LayerRule[Conv2dState]):
    def __init__(self, module: nn.Conv2d, prefix: str):
        self.label = module_label(prefix)
        if module.groups != 1:
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) has groups={module.groups}; only groups=1 is supported")
        if module.padding_mode != "zeros":
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) pads with {module.padding_mode!r}; only 'zeros' is supported")
        self.w = prefix + "weight"
        self.b = prefix + "bias" if module.bias is not None else None
        self.keys = tuple(k for k in (self.w, self.b) if k)
        self.kernel, self.stride, self.dilation = module.kernel_size, module.stride, module.dilation
        self.padding = self._int_padding(module)

    def _int_padding(self, module: nn.Conv2d) -> tuple[int, int]:
        if module.padding == "valid":
            return (0, 0)
        if module.padding == "same":
            if any(s != 1 for s in module.stride) or any(d * (k - 1) % 2 for d, k in zip(module.dilation, module.kernel_size)):
                raise UnsupportedModel(f"module {self.label!r} (Conv2d) uses asymmetric padding='same'")
            return tuple(d * (k - 1) // 2 for d, k in zip(module.dilation, module.kernel_size))
        return tuple(module.padding)

    def _bias(self, tree: Params) -> Optional[Tensor]:
        return tree[self.b] if self.b else None

    def _conv(self, x, w, b=None):
        return F.conv2d(x, w, b, self.stride, self.padding, self.dilation)

    def _unfold(self, x):
        return F.unfold(x, self.kernel, self.dilation, self.padding, self.stride)

    def _input_grad(self, shape, w, d):
        return conv2d_input(shape, w, d, self.stride, self.padding, self.dilation)

    def _weight_grad(self, x, shape, d):
        return conv2d_weight(x, shape, d, self.stride, self.padding, self.dilation)

    def forward1(self, ctx, a, a_dot):
        if a.ndim != 4:
            raise UnsupportedModel(f"module {self.label!r} (Conv2d) gets inputs of shape {tuple(a.shape)}; (batch, C, H, W) needed")
        P, v = ctx.params, ctx.v
        z = self._conv(a, P[self.w], self._bias(P))
        z_dot = self._conv(a, v[self.w], self._bias(v))
        if a_dot is not None:
            z_dot.add_(self._conv(a_dot, P[self.w]))
        return Conv2dState(a, a_dot), z, z_dot

    def backward1(self, st, ctx, d, d_dot, need_input):
        a, a_dot, W = st.a, st.a_dot, ctx.params[self.w]
        if ctx.keep:
            self._record(st, d, d_dot)
        if not ctx.keep or st.gram:
            g = self._weight_grad(a, W.shape, d_dot)
            if a_dot is not None:
                g.add_(self._weight_grad(a_dot, W.shape, d))
            add_into(ctx.hv, self.w, g)
        else:
            add_into(ctx.hv, self.w, st.G.sum(0).view_as(W))
        if self.b:
            add_into(ctx.hv, self.b, d_dot.sum((0, 2, 3)))
        if not need_input:
            return None, None
        d_in_dot = self._input_grad(a.shape, W, d_dot).add_(self._input_grad(a.shape, ctx.v[self.w], d))
        return self._input_grad(a.shape, W, d), d_in_dot

    def _record(self, st: Conv2dState, d: Tensor, d_dot: Tensor) -> None:
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

    def forward2(self, st, ctx, t):
        out = None
        if ctx.own:  # (H_i v) applied to sample i's patches (and the bias's 1)
            if st.gram:
                out = torch.bmm(st.Dd, st.cc)
                if st.a_dot is not None:
                    out.baddbmm_(st.d.flatten(2), st.ac)
                out = out.view(st.d.shape)
            else:
                out = torch.bmm(st.G, st.cols).view(st.d.shape)
                if self.b:
                    out.add_(st.Gb[:, :, None, None])
        if ctx.shift is not None:
            s = self._conv(st.a, ctx.shift[self.w], self._bias(ctx.shift))
            out = s if out is None else out.add_(s)
        if t is not None:
            out.add_(self._conv(t, ctx.params[self.w]))
        st.t = t
        return out

    def backward2(self, st, ctx, t_dot, need_input):
        W, a = ctx.params[self.w], st.a
        g = self._weight_grad(a, W.shape, t_dot)
        if st.t is not None:
            g.add_(self._weight_grad(st.t, W.shape, st.d))
        add_into(ctx.out, self.w, g)
        if self.b:
            add_into(ctx.out, self.b, t_dot.sum((0, 2, 3)))
        if not need_input:
            return None
        r = self._input_grad(a.shape, W, t_dot)
        if ctx.own:  # (H_i v)_Wᵀ δ_i on the patches, folded back onto the input
            if st.gram:
                cols = torch.bmm(st.cols, st.ddd)
                if st.a_dot is not None:
                    cols.baddbmm_(st.acols, st.dd)
            else:
                cols = torch.bmm(st.G.transpose(1, 2), st.d.flatten(2))
            r.add_(F.fold(cols, a.shape[2:], self.kernel, self.dilation, self.padding, self.stride))
        if ctx.shift is not None:
            r.add_(self._input_grad(a.shape, ctx.shift[self.w], st.d))
        return r


# ---- element-wise activations ---------------------------------------------------------------------------
@dataclass
class ElementwiseState:
    d1: Tensor                         # σ'(a)
    d2: Optional[Tensor] = None        # σ''(a), smooth σ only
    a_dot: Optional[Tensor] = None     # ȧ, smooth σ only
    d: Optional[Tensor] = None         # δ of the output, smooth σ only
    t: Optional[Tensor] = None         # pass 2's input tangent, smooth σ only


class ElementwiseRule(LayerRule[ElementwiseState]):
    """σ applied element-wise: ż = σ' ȧ, δ_in = σ' δ, δ̇_in = σ' δ̇ + σ'' ȧ δ."""

    keys = ()

    def __init__(self, module: nn.Module, prefix: str):
        if getattr(module, "inplace", False):
            # σ is differentiated at a leaf copy of its input, which autograd forbids overwriting;
            # σ is element-wise, so the out-of-place copy is the same map.
            module = copy.copy(module)
            module.inplace = False
        self.module = module
        self.smooth = isinstance(module, SMOOTH)

    def forward1(self, ctx, a, a_dot):
        if type(self.module) is nn.ReLU:  # σ' = 1[a > 0], autograd's convention at 0
            d1 = (a > 0).to(a.dtype)  # a float mask: multiplying by a bool tensor is several times slower
            return ElementwiseState(d1), F.relu(a), (None if a_dot is None else a_dot * d1)
        # Element-wise, so the gradient of Σσ(a) is σ'(a) and that of Σσ'(a) is σ''(a).
        with torch.enable_grad():
            x = a.detach().requires_grad_(True)
            y = self.module(x)
            (d1,) = torch.autograd.grad(y.sum(), x, create_graph=self.smooth)
            d2 = torch.autograd.grad(d1.sum(), x)[0] if self.smooth else None
        st = ElementwiseState(d1.detach(), d2, a_dot if self.smooth else None)
        return st, y.detach(), (None if a_dot is None else a_dot * st.d1)

    def backward1(self, st, ctx, d, d_dot, need_input):
        d_in_dot = d_dot * st.d1
        if self.smooth:
            st.d = d
            if st.a_dot is not None:
                d_in_dot.addcmul_(st.d2 * st.a_dot, d)
        return d * st.d1, d_in_dot

    def forward2(self, st, ctx, t):
        if self.smooth:
            st.t = t
        return None if t is None else t * st.d1

    def backward2(self, st, ctx, t_dot, need_input):
        r = t_dot * st.d1
        if self.smooth and st.t is not None:
            r.addcmul_(st.d2 * st.t, st.d)
        return r


# ---- parameter-free linear maps ---------------------------------------------------------------------
@dataclass
class LinearMapState:
    pullback: Callable[[Tensor], tuple[Tensor]]   # δ ↦ (Jᵀ δ,) of the map at this chunk's input


class LinearMapRule(LayerRule[LinearMapState]):
    """A parameter-free linear map (average pooling, reshapes): tangents and signals pass as through the map."""

    keys = ()

    def __init__(self, module: nn.Module, prefix: str):
        self.module = module

    def forward1(self, ctx, a, a_dot):
        out, pullback = vjp(self.module, a)
        return LinearMapState(pullback), out, (None if a_dot is None else self.module(a_dot))

    def backward1(self, st, ctx, d, d_dot, need_input):
        return st.pullback(d)[0], st.pullback(d_dot)[0]

    def forward2(self, st, ctx, t):
        return None if t is None else self.module(t)

    def backward2(self, st, ctx, t_dot, need_input):
        return st.pullback(t_dot)[0]


@dataclass
class MaxPoolState:
    idx: Tensor                        # arg-max indices of the primal, per output element
    in_shape: torch.Size


class MaxPool2dRule(LayerRule[MaxPoolState]):
    """Max pooling is linear given the arg-max indices of the primal: a gather and its scatter-add."""

    keys = ()

    def __init__(self, module: nn.Module, prefix: str):
        if isinstance(module, nn.AdaptiveMaxPool2d):
            self.pool = lambda x: F.adaptive_max_pool2d(x, module.output_size, return_indices=True)
        else:
            self.pool = lambda x: F.max_pool2d(x, module.kernel_size, module.stride, module.padding,
                                               module.dilation, module.ceil_mode, return_indices=True)

    @staticmethod
    def _gather(st: MaxPoolState, x: Tensor) -> Tensor:
        return x.flatten(2).gather(2, st.idx.flatten(2)).view(st.idx.shape)

    @staticmethod
    def _scatter(st: MaxPoolState, d: Tensor) -> Tensor:
        return torch.zeros(st.in_shape, dtype=d.dtype, device=d.device).flatten(2).scatter_add_(
            2, st.idx.flatten(2), d.flatten(2)).view(st.in_shape)

    def forward1(self, ctx, a, a_dot):
        out, idx = self.pool(a)
        st = MaxPoolState(idx, a.shape)
        return st, out, (None if a_dot is None else self._gather(st, a_dot))

    def backward1(self, st, ctx, d, d_dot, need_input):
        return self._scatter(st, d), self._scatter(st, d_dot)

    def forward2(self, st, ctx, t):
        return None if t is None else self._gather(st, t)

    def backward2(self, st, ctx, t_dot, need_input):
        return self._scatter(st, t_dot)
