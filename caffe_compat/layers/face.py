"""Face-recognition layers of happynear/caffe-windows (NormFace, AM-Softmax) and SphereFace.

Types: ``Normalize``, ``LabelSpecificAdd``, ``ChannelScale``, ``Flip``, ``MarginInnerProduct``,
``InnerDistance``, ``GlobalLSEMargin``, ``GeneralContrastiveLoss``, ``GeneralTripletLoss``.

Each class follows the fork's CPU source (``src/caffe/layers/<file>``, commit 967eedf2), which is
what the goldens were produced with; where only a CUDA implementation exists (``GlobalLSEMargin``)
or the CPU path is unfinished (``ChannelScale``'s ``global_scale``), the ``.cu`` file is followed
and the docstring says so. Several of these layers have a hand-written Caffe backward that is not
the exact gradient of their forward (``MarginInnerProduct``, ``ChannelScale`` with its flags, the
two NormFace losses); those are reproduced with ``torch.autograd.Function``s. Layers with state
that Caffe keeps in C++ members and never saves (iteration counters, the contrastive loss'
running intra-class distance) keep it in buffers that are *not* Caffe blobs: they travel with
``state_dict()`` (snapshots) but never appear in a caffemodel.

Labels are read as Caffe does, ``static_cast<int>`` of the float label (truncation toward zero);
a label outside ``[0, classes)`` is undefined behaviour in Caffe and an indexing error here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_FLT_MAX = float(np.finfo(np.float32).max)
_MarginType = caffe_pb2.MarginInnerProductParameter


# -- shared helpers ------------------------------------------------------------------------------


def _legacy_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Caffe's ``num()``, ``channels()``, ``height()``, ``width()``: missing trailing axes are 1."""
    dims = [int(d) for d in shape] + [1] * (4 - len(shape))
    return dims[0], dims[1], dims[2], dims[3]


def _check_legacy(ctx: BuildContext, shape: Shape, what: str = "bottom") -> None:
    """Caffe's ``LegacyShape`` CHECK: the num/channels/height/width accessors need <= 4 axes."""
    if len(shape) > 4:
        raise ctx.error(
            f"{what} has shape {list(shape)}, but this layer reads it with Caffe's legacy "
            "num/channels/height/width accessors, which need at most 4 axes"
        )


def _count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


def _labels(label: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` labels as int64 (``static_cast<int>`` of Caffe's float labels)."""
    return label.detach().reshape(-1)[:count].to(torch.long)


def _check_labels(ctx: BuildContext, label_shape: Shape, needed: int) -> None:
    if _count(label_shape) < needed:
        raise ctx.error(f"needs {needed} labels, but the label bottom has shape {list(label_shape)}")


class _CaffeGradient(torch.autograd.Function):
    """Return ``value`` (computed without autograd); backward gives ``source`` the gradient
    ``grad_output * unit_grad``, the diff Caffe's hand-written backward writes for a top diff of 1.

    Used for the loss layers whose backward is linear in the loss weight (``caffe_scal``)."""

    @staticmethod
    def forward(ctx, source: torch.Tensor, value: torch.Tensor, unit_grad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(unit_grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (unit_grad,) = ctx.saved_tensors
        grad = grad_output * unit_grad if ctx.needs_input_grad[0] else None
        return grad, None, None


def _needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# -- Normalize -----------------------------------------------------------------------------------


@register("Normalize")
class Normalize(CaffeLayer):
    """NormFace's ``Normalize`` (``normalize_layer.cpp``): unit norm over channels at each position.

    ``y = x / n`` with ``n = sqrt(sum_c x^2 + 1e-6)`` (``normalize_type: "L2"``) or
    ``n = sum_c |x| + 1e-6`` (``"L1"``), computed at every (n, h, w). The bottom is read through
    Caffe's legacy accessors, so the top is 4-D: an (N, C) bottom gives (N, C, 1, 1). An optional
    second top is the norm ``n`` (N, 1, H, W); its diff is back-propagated only with
    ``bp_norm: true`` (``d n / d x = y`` for L2, ``sign(x)`` for L1). Caffe's hand-written CPU
    backward, ``(dy - y <y, dy>) / n`` (L2) and ``(dy - sign(x) <y, dy>) / n`` (L1), is the exact
    gradient, so autograd reproduces it.

    Deviation: ``fix_gradient`` only changes the CUDA backward (no division by the norm), and the
    CUDA L2 forward uses epsilon 1e-12; the CPU rules above are followed (the goldens' source).
    """

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "norm" type: "Normalize" bottom: "x" top: "y" top: "n" normalize_param { bp_norm: true } }
"""

    def __init__(
        self,
        normalize_type: str = "L2",
        bp_norm: bool = False,
        output_norm: bool = False,
        fix_gradient: bool = False,
    ) -> None:
        super().__init__()
        if normalize_type not in ("L2", "L1"):
            raise ValueError(f"normalize_type must be 'L2' or 'L1', got {normalize_type!r}")
        self.normalize_type = normalize_type
        self.output_norm = bool(output_norm)
        self.bp_norm = bool(bp_norm) and self.output_norm
        self.fix_gradient = bool(fix_gradient)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Normalize:
        ctx.check_bottoms(1)
        ctx.check_tops(1, 2)
        _check_legacy(ctx, ctx.bottom_shapes[0])
        param = layer.normalize_param
        if param.normalize_type not in ("L2", "L1"):
            raise ctx.error(f'normalize_type must be "L2" or "L1", got "{param.normalize_type}"')
        return cls(param.normalize_type, param.bp_norm, len(layer.top) == 2, param.fix_gradient)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x4 = x.reshape(_legacy_shape(x.shape))
        if self.normalize_type == "L2":
            norm = x4.square().sum(dim=1, keepdim=True).add(1e-6).sqrt()
        else:
            norm = x4.abs().sum(dim=1, keepdim=True).add(1e-6)
        y = x4 / norm
        if not self.output_norm:
            return y
        return y, norm if self.bp_norm else norm.detach()


# -- LabelSpecificAdd ----------------------------------------------------------------------------


@register("LabelSpecificAdd")
class LabelSpecificAdd(CaffeLayer):
    """AM-Softmax's additive margin (``label_specific_add.cpp``): ``y = x``, then for each sample
    ``y[i, label_i] += bias`` where ``x[i, label_i] > -bias`` (so with ``bias = -m`` the target
    cosine becomes ``cos - m`` only where ``cos > m``). Rows are ``count / num`` wide.

    Backward is the identity (the label gets no diff). In TEST phase the layer is the identity
    whatever ``transform_test`` says (the fork sets ``transform_test_ = transform_test && TRAIN``)
    and its optional second top keeps Caffe's zero-initialised value. With ``bias_base`` set, the
    TRAIN forward anneals the bias: ``bias = clip(bias_base + (1 + bias_gamma * it)^bias_power - 1,
    bias_min, bias_max)`` (``max`` with ``bias_min`` first, then ``min`` with ``bias_max``) at the
    current counter ``it`` (starting at ``iteration``), then advances the counter. The optional
    second top (shape (1,)) carries the bias used. The counter is the int64 buffer ``iter_count``
    (in ``state_dict``, not a Caffe blob: Caffe restarts it at ``iteration`` on resume).
    """

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "lsa" type: "LabelSpecificAdd" bottom: "x" bottom: "label" top: "y" top: "bias"
  label_specific_add_param { bias_base: 0 bias_gamma: -5e-5 bias_power: 1 bias_min: -0.35 } }
"""

    iter_count: torch.Tensor

    def __init__(
        self,
        bias: float = 0.0,
        train: bool = True,
        anneal: bool = False,
        bias_base: float = 0.0,
        bias_gamma: float = 0.0,
        bias_power: float = 1.0,
        bias_min: float = 0.0,
        bias_max: float = 0.0,
        iteration: int = 0,
        output_bias: bool = False,
    ) -> None:
        super().__init__()
        self.bias = float(bias)
        self.train_phase = bool(train)
        self.anneal = bool(anneal)
        self.bias_base = float(bias_base)
        self.bias_gamma = float(bias_gamma)
        self.bias_power = float(bias_power)
        self.bias_min = float(bias_min)
        self.bias_max = float(bias_max)
        self.output_bias = bool(output_bias)
        self.register_buffer("iter_count", torch.tensor(int(iteration), dtype=torch.int64))

    @property
    def iteration(self) -> int:
        """The annealing counter (the ``iteration_`` member of Caffe's layer)."""
        return int(self.iter_count)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> LabelSpecificAdd:
        if len(layer.bottom) < 2:
            raise ctx.error(f"takes the logits and the labels (at least 2 bottoms), got {len(layer.bottom)}")
        ctx.check_tops(1, 2)
        shape, label_shape = ctx.bottom_shapes[0], ctx.bottom_shapes[1]
        if not shape:
            raise ctx.error("the logits bottom must have a batch axis")
        _check_labels(ctx, label_shape, shape[0])
        p = layer.label_specific_add_param
        return cls(
            bias=p.bias,
            train=ctx.train,
            anneal=p.HasField("bias_base"),
            bias_base=p.bias_base,
            bias_gamma=p.bias_gamma,
            bias_power=p.bias_power,
            bias_min=p.bias_min,
            bias_max=p.bias_max,
            iteration=p.iteration,
            output_bias=len(layer.top) == 2,
        )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] + ([(1,)] if self.output_bias else [])

    def current_bias(self) -> torch.Tensor:
        """The bias the next TRAIN forward adds (a float32 scalar tensor); does not advance."""
        if not self.anneal:
            return torch.tensor(self.bias, dtype=torch.float32, device=self.iter_count.device)
        it = self.iter_count.to(torch.float32)
        bias = self.bias_base + torch.pow(1.0 + self.bias_gamma * it, self.bias_power) - 1.0
        return bias.clamp(min=self.bias_min).clamp(max=self.bias_max)

    def forward(
        self, x: torch.Tensor, label: torch.Tensor, *ignored: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.train_phase:
            return (x, x.new_zeros(1)) if self.output_bias else x
        bias = self.current_bias()
        if self.anneal:
            with torch.no_grad():
                self.iter_count.add_(1)
        num = x.shape[0]
        rows = x.reshape(num, -1)
        index = _labels(label, num).unsqueeze(1)
        bias = bias.to(rows.dtype)
        target = rows.gather(1, index)
        add = torch.where(target > -bias, bias, torch.zeros_like(bias)).to(rows.dtype)
        y = rows.scatter_add(1, index, add.expand_as(target)).reshape(x.shape)
        if self.output_bias:
            return y, bias.detach().reshape(1)
        return y


# -- ChannelScale --------------------------------------------------------------------------------


class _ChannelScaleFunction(torch.autograd.Function):
    """ChannelScale's Caffe backward: ``dx = s * dy`` (or ``dy``), ``ds = sum_c x * dy`` (or 0),
    whatever the forward multiplied by (the global scale, or nothing when ``do_forward`` is off)."""

    @staticmethod
    def forward(
        ctx,
        x3: torch.Tensor,
        s3: torch.Tensor,
        multiplier: torch.Tensor | None,
        backward_feature: bool,
        backward_scale: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x3, s3)
        ctx.backward_feature = backward_feature
        ctx.backward_scale = backward_scale
        return x3 * multiplier if multiplier is not None else x3.clone()

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        x3, s3 = ctx.saved_tensors
        dx = ds = None
        if ctx.needs_input_grad[0]:
            dx = dy * s3 if ctx.backward_feature else dy.clone()
        if ctx.needs_input_grad[1]:
            ds = (dy * x3).sum(dim=1, keepdim=True) if ctx.backward_scale else torch.zeros_like(s3)
        return dx, ds, None, None, None


@register("ChannelScale")
class ChannelScale(CaffeLayer):
    """NormFace's ``ChannelScale`` (``channel_scale_layer.cpp``/``.cu``): ``y[n, c, s] =
    x[n, c, s] * scale[n, s]`` with the scale the second bottom (one value per sample and position,
    e.g. the feature norm from ``Normalize``).

    Caffe's backward is ``dx = scale * dy`` (``dy`` with ``do_backward_feature: false``) and
    ``dscale = sum_c x * dy`` (zero with ``do_backward_scale: false``), even when ``do_forward:
    false`` makes the forward a copy or ``global_scale`` multiplies by the stored scalar instead; in
    those cases a custom autograd function reproduces it (the default case is the exact gradient).

    ``global_scale: true`` keeps a scalar blob (initialised to -1, ``lr_mult`` forced to 0) and
    multiplies by it; a second top outputs it. Deviation: this follows the CUDA forward, which in
    TRAIN sets the blob to ``mean|scale|`` on first use, then to ``0.99 * blob + 0.01 * mean|scale|``,
    and clips it to ``[min_global_scale, max_global_scale]``; the CPU forward never updates the blob
    (it only clips it, so it stays at ``min_global_scale``), an unfinished port.
    """

    caffe_blobs = (Blob("global_scale", learnable=False, optional=True),)
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "s" type: "Input" top: "s" input_param { shape { dim: 2 dim: 1 dim: 5 dim: 7 } } }
layer { name: "cs" type: "ChannelScale" bottom: "x" bottom: "s" top: "y" }
"""

    global_scale: torch.Tensor | None

    def __init__(
        self,
        do_forward: bool = True,
        do_backward_feature: bool = True,
        do_backward_scale: bool = True,
        use_global_scale: bool = False,
        max_global_scale: float = 1000.0,
        min_global_scale: float = 0.0,
        train: bool = True,
        output_scale: bool = False,
    ) -> None:
        super().__init__()
        self.do_forward = bool(do_forward)
        self.do_backward_feature = bool(do_backward_feature)
        self.do_backward_scale = bool(do_backward_scale)
        self.use_global_scale = bool(use_global_scale)
        self.max_global_scale = float(max_global_scale)
        self.min_global_scale = float(min_global_scale)
        self.train_phase = bool(train)
        self.output_scale = bool(output_scale) and self.use_global_scale
        self.set_blob("global_scale", torch.full((1,), -1.0) if self.use_global_scale else None)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ChannelScale:
        ctx.check_bottoms(2)
        p = layer.channel_scale_param
        if p.global_scale:
            ctx.check_tops(1, 2)
        else:
            ctx.check_tops(1)
        x_shape, s_shape = ctx.bottom_shapes
        _check_legacy(ctx, x_shape)
        n, c, h, w = _legacy_shape(x_shape)
        if not s_shape or s_shape[0] != n:
            raise ctx.error(
                f"the scale bottom {list(s_shape)} must have the batch size {n} of {list(x_shape)}"
            )
        if _count(s_shape) != n * h * w:
            raise ctx.error(
                f"the scale bottom {list(s_shape)} must hold one value per sample and position "
                f"({n * h * w} values for a bottom of shape {list(x_shape)})"
            )
        if p.global_scale and layer.param and layer.param[0].lr_mult != 0:
            raise ctx.error("global_scale is a statistic and cannot be learned: its param lr_mult must be 0")
        return cls(
            p.do_forward,
            p.do_backward_feature,
            p.do_backward_scale,
            p.global_scale,
            p.max_global_scale,
            p.min_global_scale,
            ctx.train,
            len(layer.top) == 2,
        )

    @classmethod
    def param_specs(cls, layer: caffe_pb2.LayerParameter, num_blobs: int) -> list[caffe_pb2.ParamSpec]:
        specs = super().param_specs(layer, num_blobs)
        if num_blobs and not layer.param:
            specs[0].lr_mult, specs[0].decay_mult = 0.0, 0.0
        return specs

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] + ([(1,)] if self.output_scale else [])

    def _update_global_scale(self, s: torch.Tensor) -> None:
        blob = self.global_scale
        with torch.no_grad():
            if self.train_phase:
                mean_norm = s.abs().sum().to(blob.dtype) / s.numel()
                blob.copy_(torch.where(blob < 0, mean_norm, blob * 0.99 + mean_norm * 0.01))
                blob.clamp_(max=self.max_global_scale).clamp_(min=self.min_global_scale)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        n, c, h, w = _legacy_shape(x.shape)
        x3 = x.reshape(n, c, h * w)
        s3 = s.reshape(n, 1, h * w)
        multiplier: torch.Tensor | None = None
        if self.do_forward:
            if self.use_global_scale:
                self._update_global_scale(s)
                multiplier = self.global_scale.to(x3.dtype).reshape(1, 1, 1)
            else:
                multiplier = s3
        exact = self.do_forward and not self.use_global_scale and self.do_backward_feature
        if exact and self.do_backward_scale:
            y3 = x3 * s3
        else:
            y3 = _ChannelScaleFunction.apply(
                x3, s3, multiplier, self.do_backward_feature, self.do_backward_scale
            )
        y = y3.reshape(x.shape)
        if self.output_scale:
            return y, self.global_scale.detach().clone()
        return y


# -- Flip ----------------------------------------------------------------------------------------


@register("Flip")
class Flip(CaffeLayer):
    """``Flip`` (``flip_layer.cpp``): mirror along the width (``flip_width``, default true) and/or
    the height (``flip_height``), read through Caffe's legacy accessors (a missing axis is 1, so a
    2-D or 3-D bottom has nothing to flip along the missing ones). Backward is the same flip."""

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "flip" type: "Flip" bottom: "x" top: "y" flip_param { flip_height: true } }
"""

    def __init__(self, flip_width: bool = True, flip_height: bool = False) -> None:
        super().__init__()
        self.flip_width = bool(flip_width)
        self.flip_height = bool(flip_height)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Flip:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        _check_legacy(ctx, ctx.bottom_shapes[0])
        return cls(layer.flip_param.flip_width, layer.flip_param.flip_height)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = ([2] if self.flip_height else []) + ([3] if self.flip_width else [])
        if not dims:
            return x.clone()
        return torch.flip(x.reshape(_legacy_shape(x.shape)), dims).reshape(x.shape)


# -- MarginInnerProduct (SphereFace) -------------------------------------------------------------


def _margin_signs(cos: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SphereFace's sign tricks: (sign_a, sign_b) with ``psi = sign_a * T_m(cos) + sign_b``."""
    sign_0 = torch.sign(cos)
    if margin == 2:
        return sign_0, torch.full_like(cos, -1.0)
    if margin == 3:
        sign_1 = torch.sign(cos.abs() - 0.5)
        return sign_1, sign_0 * (1.0 + sign_1) - 2.0
    sign_3 = sign_0 * torch.sign(2.0 * cos * cos - 1.0)
    return sign_3, 2.0 * sign_0 + sign_3 - 3.0


def margin_psi(cos: torch.Tensor, margin: int) -> torch.Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` (``k = floor(m theta / pi)``) from ``cos theta``
    with the Chebyshev polynomials and sign tricks of ``margin_inner_product_layer.cpp``."""
    if margin == 1:
        return cos
    c2 = cos * cos
    sign_a, sign_b = _margin_signs(cos, margin)
    if margin == 2:
        return 2.0 * torch.sign(cos) * c2 - 1.0
    if margin == 3:
        return sign_a * (4.0 * c2 * cos - 3.0 * cos) + sign_b
    return sign_a * (8.0 * c2 * c2 - 8.0 * c2 + 1.0) + sign_b


def _psi_coefficients(
    cos: torch.Tensor, x_norm: torch.Tensor, margin: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's (coeff_w, coeff_x): the exact d(|x| psi)/dx = coeff_w * w + coeff_x * x, divided
    by ``sqrt(coeff_w^2 + coeff_x^2)`` as the hand-written backward does."""
    c2 = cos * cos
    sign_a, sign_b = _margin_signs(cos, margin)
    if margin == 2:
        sign_0 = torch.sign(cos)
        coeff_w = 4.0 * sign_0 * cos
        coeff_x = -(2.0 * sign_0 * c2 + 1.0) / x_norm
    elif margin == 3:
        coeff_w = sign_a * (12.0 * c2 - 3.0)
        coeff_x = -(8.0 * sign_a * c2 * cos - sign_b) / x_norm
    else:
        coeff_w = sign_a * (32.0 * c2 * cos - 16.0 * cos)
        coeff_x = -(sign_a * (24.0 * c2 * c2 - 8.0 * c2 - 1.0) - sign_b) / x_norm
    coeff_norm = torch.sqrt(coeff_w * coeff_w + coeff_x * coeff_x)
    return coeff_w / coeff_norm, coeff_x / coeff_norm


def _margin_parts(
    rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The logits of ``margin_logits`` with the target cosines and ``|x|`` (None for SINGLE)."""
    xw = rows @ weight.t()
    if margin == 1:
        return xw, None, None
    index = labels.unsqueeze(1)
    x_norm = rows.square().sum(dim=1).sqrt()
    cos = xw.gather(1, index).squeeze(1) * (1.0 / x_norm)
    base = xw.scatter(1, index, (x_norm * margin_psi(cos, margin)).unsqueeze(1))
    return (lam * xw + base) * (1.0 / (1.0 + lam)), cos, x_norm


def margin_logits(
    rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
) -> torch.Tensor:
    """SphereFace's logits (differentiable: its autograd gradient is the exact one).

    ``x.w_j`` for ``j != y``; ``(lambda * x.w_y + |x| psi(theta_y)) / (1 + lambda)`` at the label,
    ``cos theta_y = x.w_y / |x|``, evaluated in Caffe's order (``(lambda * x.W^T + base) * 1/(1 +
    lambda)`` with ``base`` the plain logits whose target entries hold ``|x| psi``).
    """
    return _margin_parts(rows, weight, labels, lam, margin)[0]


class _MarginInnerProductFunction(torch.autograd.Function):
    """SphereFace's logits with Caffe's hand-written backward (``Backward_cpu``):
    ``dW = dy^T x`` (no margin, no normalisation term) and ``dx = dy_nt W / (1 + lambda) +
    lambda / (1 + lambda) dy W + dy_y / (1 + lambda) (coeff_w w_y + coeff_x x)`` with the
    normalised coefficients of ``_psi_coefficients``."""

    @staticmethod
    def forward(
        ctx, rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
    ) -> torch.Tensor:
        logits, cos, x_norm = _margin_parts(rows, weight, labels, lam, margin)
        ctx.save_for_backward(rows, weight, labels, lam, cos, x_norm)
        ctx.margin = margin
        return logits

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        rows, weight, labels, lam, cos, x_norm = ctx.saved_tensors
        margin = ctx.margin
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dw = dy.t() @ rows
        if ctx.needs_input_grad[0]:
            if margin == 1:
                dx = dy @ weight
            else:
                index = labels.unsqueeze(1)
                inv = 1.0 / (1.0 + lam)
                dy_target = dy.gather(1, index)
                scaled = dy.scatter(1, index, torch.zeros_like(dy_target)) * inv + dy * (lam * inv)
                coeff_w, coeff_x = _psi_coefficients(cos, x_norm, margin)
                factor = inv * dy_target
                dx = scaled @ weight + (factor * coeff_w.unsqueeze(1)) * weight[labels]
                dx = dx + (factor * coeff_x.unsqueeze(1)) * rows
        return dx, dw, None, None, None


@register("MarginInnerProduct")
class MarginInnerProduct(CaffeLayer):
    """SphereFace's A-Softmax inner product (``margin_inner_product_layer.cpp``, identical in
    wy1iu/sphereface and happynear/caffe-windows). Bottoms (x, label); tops y and optionally lambda.

    Every forward (TRAIN and TEST alike: the fork has no phase test) first advances the counter,
    ``it += 1``, then computes ``lambda = max(base * (1 + gamma * it)^(-power), lambda_min)``,
    normalises the weight rows **in place** in the parameter (``w / sqrt(|w|^2)``, no epsilon) and
    outputs ``x.w_j`` for ``j != y`` and ``(lambda * x.w_y + |x| psi(theta_y)) / (1 + lambda)`` for
    the label ``y``, ``psi(theta) = (-1)^k cos(m theta) - 2k`` evaluated with Caffe's sign tricks
    (``m`` = 1..4 for SINGLE..QUADRUPLE; SINGLE is a plain inner product). x is not normalised.

    Backward (default): Caffe's hand-written one, which is **not** the exact gradient: the weight
    gets ``dy^T x`` (no margin term; with respect to the normalised weight), and the target's x
    gradient uses the analytic coefficients of ``d(|x| psi)/dx = a w_y + b x`` divided by
    ``sqrt(a^2 + b^2)``. With ``exact_grad=True`` the autograd gradient of the same forward is used
    instead (still with respect to the normalised weight). The counter is the int64 buffer
    ``iter_count`` (``iteration`` property), in ``state_dict`` but not in caffemodels: Caffe
    restarts it at ``iteration`` on resume. Deviation: Caffe's CPU forward writes the lambda top
    unconditionally (a crash with one top); here the second top is simply optional.
    """

    caffe_blobs = (Blob("weight"),)
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "fc6" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "y" top: "lambda"
  margin_inner_product_param { num_output: 7 type: QUADRUPLE base: 1000 gamma: 0.12 power: 1
  lambda_min: 5 weight_filler { type: "xavier" } } }
"""

    weight: torch.nn.Parameter
    iter_count: torch.Tensor

    def __init__(
        self,
        num_output: int,
        in_features: int,
        margin: int = 1,
        axis: int = 1,
        base: float = 1.0,
        gamma: float = 0.0,
        power: float = 1.0,
        iteration: int = 0,
        lambda_min: float = 0.0,
        output_lambda: bool = True,
        exact_grad: bool = False,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if margin not in (1, 2, 3, 4):
            raise ValueError(f"margin must be 1, 2, 3 or 4, got {margin}")
        self.num_output = int(num_output)
        self.in_features = int(in_features)
        self.margin = int(margin)
        self.axis = int(axis)
        self.base = float(base)
        self.gamma = float(gamma)
        self.power = float(power)
        self.lambda_min = float(lambda_min)
        self.output_lambda = bool(output_lambda)
        self.exact_grad = bool(exact_grad)
        if weight is None:
            weight = torch.empty(self.num_output, self.in_features)
        self.set_blob("weight", weight)
        self.register_buffer("iter_count", torch.tensor(int(iteration), dtype=torch.int64))

    @property
    def iteration(self) -> int:
        """Caffe's ``iter_``: the number of forwards so far plus the ``iteration`` parameter."""
        return int(self.iter_count)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MarginInnerProduct:
        ctx.check_bottoms(2)
        ctx.check_tops(1, 2)
        p = layer.margin_inner_product_param
        x_shape, label_shape = ctx.bottom_shapes
        if not x_shape:
            raise ctx.error("the data bottom must have a batch axis")
        if not label_shape or label_shape[0] != x_shape[0]:
            raise ctx.error(
                f"the number of labels must match the number of outputs: data {list(x_shape)}, "
                f"labels {list(label_shape)} (one integer label in [0, num_output) per sample)"
            )
        if p.num_output <= 0:
            raise ctx.error("margin_inner_product_param.num_output must be positive")
        axis = canonical_axis(p.axis, len(x_shape), ctx)
        _check_labels(ctx, label_shape, _count(x_shape, 0, axis))
        in_features = _count(x_shape, axis)
        weight = fill((p.num_output, in_features), p.weight_filler, f"layer '{layer.name}'")
        return cls(
            p.num_output,
            in_features,
            margin=int(p.type) + 1,
            axis=axis,
            base=p.base,
            gamma=p.gamma,
            power=p.power,
            iteration=p.iteration,
            lambda_min=p.lambda_min,
            output_lambda=len(layer.top) == 2,
            weight=weight,
        )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0][: self.axis]) + (self.num_output,)
        return [shape] + ([(1,)] if self.output_lambda else [])

    def lambda_at(self, iteration: int | torch.Tensor) -> torch.Tensor:
        """``max(base * (1 + gamma * iteration)^(-power), lambda_min)`` as a float32 tensor."""
        it = torch.as_tensor(iteration, device=self.iter_count.device).to(torch.float32)
        lam = self.base * torch.pow(1.0 + self.gamma * it, -self.power)
        return torch.clamp(lam, min=self.lambda_min)

    def normalize_weight_(self) -> None:
        """Caffe's in-place row normalisation of the weight blob (``w *= 1 / sqrt(|w|^2)``)."""
        with torch.no_grad():
            self.weight.mul_(1.0 / self.weight.square().sum(dim=1, keepdim=True).sqrt())

    def forward(
        self, x: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            self.iter_count.add_(1)
        lam = self.lambda_at(self.iter_count)
        self.normalize_weight_()
        outer = x.shape[: self.axis]
        rows = x.reshape(math.prod(outer), self.in_features)
        labels = _labels(label, rows.shape[0])
        lam_x = lam.to(rows.dtype)
        if self.exact_grad:
            y = margin_logits(rows, self.weight, labels, lam_x, self.margin)
        else:
            y = _MarginInnerProductFunction.apply(rows, self.weight, labels, lam_x, self.margin)
        y = y.reshape(*outer, self.num_output)
        if self.output_lambda:
            return y, lam.detach().reshape(1).to(x.dtype)
        return y


# -- InnerDistance -------------------------------------------------------------------------------


def _distances(rows: torch.Tensor, centers: torch.Tensor, distance_type: str) -> torch.Tensor:
    """Squared L2 (``sum (x - w)^2``) or L1 (``sum |x - w|``) between every row and center,
    computed from the differences (no ``|x|^2 - 2 x.w + |w|^2`` cancellation)."""
    if distance_type == "L1":
        return torch.cdist(rows, centers, p=1.0)
    return torch.cdist(rows, centers, p=2.0, compute_mode="donot_use_mm_for_euclid_dist").square()


@register("InnerDistance")
class InnerDistance(CaffeLayer):
    """NormFace's ``InnerDistance`` (``inner_distance_layer.cpp``): an InnerProduct whose dot
    product is replaced by a distance, ``y[m, n] = sum_k (x[m, k] - w[n, k])^2`` (``distance_type:
    "L2"``, squared) or ``sum_k |x[m, k] - w[n, k]|`` (``"L1"``), x flattened from ``axis``.

    The centers are the layer's weight blob (num_output x K; K x num_output with ``transpose``,
    which the fork still reads as num_output x K memory), or the second bottom (its ``num`` rows).
    With one bottom, ``normalize: true`` L2-normalises the weight rows **in place** each forward
    (``w / sqrt(|w|^2 + 1e-6)``, the CPU rule) and the weight diff is taken with respect to the
    normalised weight. With three bottoms (x, centers, label), ``update_center_only: true`` lets
    only each sample's own center receive its gradient. The backward (``2 (x - w)`` or
    ``sign(x - w)``, ``sign(0) = 0``) is the exact gradient. ``bias_term`` is ignored: the fork
    never creates a bias blob.
    """

    caffe_blobs = (Blob("weight", optional=True),)
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 } } }
layer { name: "dist" type: "InnerDistance" bottom: "x" top: "y"
  inner_distance_param { num_output: 7 bias_term: false normalize: true
  weight_filler { type: "gaussian" std: 0.1 } } }
"""

    weight: torch.nn.Parameter | None

    def __init__(
        self,
        num_output: int,
        in_features: int,
        distance_type: str = "L2",
        normalize: bool = False,
        axis: int = 1,
        transpose: bool = False,
        centers_from_bottom: bool = False,
        update_center_only: bool = False,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if distance_type not in ("L2", "L1"):
            raise ValueError(f"distance_type must be 'L2' or 'L1', got {distance_type!r}")
        self.num_output = int(num_output)
        self.in_features = int(in_features)
        self.distance_type = distance_type
        self.centers_from_bottom = bool(centers_from_bottom)
        self.normalize = bool(normalize) and not self.centers_from_bottom
        self.axis = int(axis)
        self.transpose = bool(transpose)
        self.update_center_only = bool(update_center_only)
        if self.centers_from_bottom:
            self.set_blob("weight", None)
        else:
            if weight is None:
                shape = (
                    (self.in_features, self.num_output)
                    if self.transpose
                    else (self.num_output, self.in_features)
                )
                weight = torch.empty(shape)
            self.set_blob("weight", weight)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> InnerDistance:
        ctx.check_bottoms(1, 2, 3)
        ctx.check_tops(1)
        p = layer.inner_distance_param
        if p.distance_type not in ("L2", "L1"):
            raise ctx.error(f'distance_type must be "L2" or "L1", got "{p.distance_type}"')
        x_shape = ctx.bottom_shapes[0]
        axis = canonical_axis(p.axis, len(x_shape), ctx)
        in_features = _count(x_shape, axis)
        num_bottoms = len(layer.bottom)
        if p.update_center_only and num_bottoms != 3:
            raise ctx.error(
                "update_center_only needs three bottoms (data, centers, label): with fewer the fork "
                "reads the labels from the wrong blob"
            )
        if num_bottoms >= 2:
            centers = ctx.bottom_shapes[1]
            if not centers or _count(centers, 1) != in_features:
                raise ctx.error(
                    f"the centers bottom {list(centers)} must hold rows of {in_features} values "
                    f"(the data is flattened from axis {axis})"
                )
            if num_bottoms == 3:
                _check_labels(ctx, ctx.bottom_shapes[2], _count(x_shape, 0, axis))
            return cls(
                centers[0],
                in_features,
                p.distance_type,
                axis=axis,
                centers_from_bottom=True,
                update_center_only=p.update_center_only,
            )
        if p.num_output <= 0:
            raise ctx.error("inner_distance_param.num_output must be positive")
        shape = (in_features, p.num_output) if p.transpose else (p.num_output, in_features)
        weight = fill(shape, p.weight_filler, f"layer '{layer.name}'")
        return cls(p.num_output, in_features, p.distance_type, p.normalize, axis, p.transpose, weight=weight)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        num = bottom_shapes[1][0] if self.centers_from_bottom else self.num_output
        return [tuple(bottom_shapes[0][: self.axis]) + (num,)]

    def forward(self, x: torch.Tensor, *bottoms: torch.Tensor) -> torch.Tensor:
        outer = x.shape[: self.axis]
        rows = x.reshape(math.prod(outer), self.in_features)
        if self.centers_from_bottom:
            centers = bottoms[0].reshape(bottoms[0].shape[0], self.in_features)
        else:
            if self.normalize:
                with torch.no_grad():
                    rows_view = self.weight.view(self.num_output, self.in_features)
                    rows_view.mul_(1.0 / rows_view.square().sum(dim=1, keepdim=True).add(1e-6).sqrt())
            centers = self.weight.view(self.num_output, self.in_features)
        if self.update_center_only:
            labels = _labels(bottoms[1], rows.shape[0])
            y = _distances(rows, centers.detach(), self.distance_type)
            if centers.requires_grad and torch.is_grad_enabled():
                own = torch.zeros_like(y).scatter_(1, labels.unsqueeze(1), 1.0)
                to_centers = _distances(rows.detach(), centers, self.distance_type)
                y = y + own * (to_centers - to_centers.detach())
        else:
            y = _distances(rows, centers, self.distance_type)
        return y.reshape(*outer, centers.shape[0])


# -- GlobalLSEMargin -----------------------------------------------------------------------------


def mean_shift(margins: np.ndarray, mu: float, loop: int = 1) -> float:
    """``GlobalLSEMarginLayer::MeanShift``: average the margins within 0.1 of ``mu``, repeat up to
    ``loop`` times until the mean moves by less than 0.001; when none is near, restart from the mean
    of all (float32 arithmetic).

    Deviation: where Caffe would loop forever (no margin within 0.1 of the overall mean either),
    this returns that mean.
    """
    values = np.asarray(margins, dtype=np.float32).reshape(-1)
    mu32 = np.float32(mu)
    last = mu32
    restarted = False
    while loop > 0:
        loop -= 1
        near = np.abs(values - mu32).astype(np.float64) < 0.1
        count = int(near.sum())
        if count == 0:
            mu32 = np.float32(values.sum(dtype=np.float32) / np.float32(values.size))
            if restarted:
                return float(mu32)
            restarted, last, loop = True, mu32, loop + 1
            continue
        mu32 = np.float32(values[near].sum(dtype=np.float32) / np.float32(count))
        if abs(float(np.float32(last - mu32))) < 0.001:
            break
        last = mu32
    return float(mu32)


@register("GlobalLSEMargin")
class GlobalLSEMargin(CaffeLayer):
    """AM-Softmax's experimental automatic margin (``global_lse_margin_layer.cu``; the fork has no
    CPU implementation, so its CUDA kernels are followed). Bottoms: cosines, labels and optionally
    the feature norms ("original norm" mode); tops: the scaled logits and optionally 5 statistics.

    Blobs: the scale ``s`` (``scale_param.filler`` or 30; clipped in place to ``[min_value,
    max_value]`` each forward) and the margin ``m`` (a running statistic, initially 0; default
    ``lr_mult`` 0). Each forward (any phase): ``lse_i = log(sum_{j != y} exp(s_i (cos_ij - a_i))) /
    s_i + a_i`` with ``a_i = max(-1, max_{j != y} cos_ij)`` and ``s_i`` the scale or the sample's
    feature norm; the batch margin is a mean shift (``mean_shift``) of ``cos_iy - lse_i``, which
    sets ``m`` when it is 0 (20 iterations from the batch mean) and otherwise moves it to ``0.9 m +
    0.1 * shift`` (one iteration from ``m``). Then ``y = s_i * (cos - m * onehot(y))`` where ``m >
    0`` (``cos`` elsewhere). Statistics: [mean norm or s, mean target cosine, mean lse, mean
    ``a_i``, m].

    Backward (Caffe's, the exact gradient with ``m`` held constant): ``dcos = s_i dy``;
    ``ds = sum dy * y / s``; with three bottoms ``dnorm_i = sum_j dy * y / norm_i`` and no scale diff.
    """

    caffe_blobs = (Blob("scale"), Blob("margin", learnable=False))
    example = """
layer { name: "cos" type: "Input" top: "cos" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "lse" type: "GlobalLSEMargin" bottom: "cos" bottom: "label" top: "logit" top: "statistics" }
"""

    scale: torch.nn.Parameter
    margin: torch.Tensor

    def __init__(
        self,
        scale: float | torch.Tensor = 30.0,
        min_scale: float = 0.0,
        max_scale: float = _FLT_MAX,
        original_norm: bool = False,
        output_statistics: bool = False,
    ) -> None:
        super().__init__()
        scale_tensor = (
            scale.reshape(1).float() if isinstance(scale, torch.Tensor) else torch.full((1,), float(scale))
        )
        self.set_blob("scale", scale_tensor)
        self.set_blob("margin", torch.zeros(1))
        self.min_scale = float(min_scale)
        self.max_scale = float(max_scale)
        self.original_norm = bool(original_norm)
        self.output_statistics = bool(output_statistics)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> GlobalLSEMargin:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        shape = ctx.bottom_shapes[0]
        if not shape:
            raise ctx.error("the cosine bottom must have a batch axis")
        _check_labels(ctx, ctx.bottom_shapes[1], shape[0])
        if len(layer.bottom) == 3 and _count(ctx.bottom_shapes[2]) != shape[0]:
            raise ctx.error(
                f"the feature-norm bottom {list(ctx.bottom_shapes[2])} must hold one value per sample "
                f"({shape[0]})"
            )
        p = layer.scale_param
        scale = fill((1,), p.filler, f"layer '{layer.name}'") if p.HasField("filler") else 30.0
        return cls(
            scale,
            p.min_value if p.HasField("min_value") else 0.0,
            p.max_value if p.HasField("max_value") else _FLT_MAX,
            len(layer.bottom) == 3,
            len(layer.top) == 2,
        )

    @classmethod
    def param_specs(cls, layer: caffe_pb2.LayerParameter, num_blobs: int) -> list[caffe_pb2.ParamSpec]:
        specs = super().param_specs(layer, num_blobs)
        if not layer.param:
            specs[0].lr_mult = 0.0 if len(layer.bottom) == 3 else 1.0
            specs[0].decay_mult = 0.0
        if len(layer.param) <= 1:
            specs[1].lr_mult, specs[1].decay_mult = 0.0, 0.0
        return specs

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] + ([(5,)] if self.output_statistics else [])

    def _update_margin(self, margins: torch.Tensor) -> None:
        values = margins.detach().float().cpu().numpy()
        current = float(self.margin[0])
        if current == 0.0:
            mean = float(np.float32(values.sum(dtype=np.float32) / np.float32(values.size)))
            batch = mean_shift(values, mean, 20)
            new = batch
        else:
            batch = mean_shift(values, current, 1)
            new = 0.9 * current + 0.1 * batch
        if not math.isnan(batch):
            self.margin.fill_(float(np.float32(new)))

    def forward(
        self, cos: torch.Tensor, label: torch.Tensor, norm: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = cos.shape[0]
        rows = cos.reshape(num, -1)
        index = _labels(label, num).unsqueeze(1)
        onehot = torch.zeros_like(rows, dtype=torch.bool).scatter_(1, index, True)
        with torch.no_grad():
            self.scale.clamp_(min=self.min_scale).clamp_(max=self.max_scale)
            if self.original_norm:
                per_row = norm.detach().reshape(-1)[:num].to(rows.dtype)
            else:
                per_row = self.scale.detach().to(rows.dtype).expand(num)
            data = rows.detach()
            target = data.gather(1, index).squeeze(1)
            max_negative = data.masked_fill(onehot, -math.inf).amax(dim=1).clamp(min=-1.0)
            exps = torch.exp(per_row.unsqueeze(1) * (data - max_negative.unsqueeze(1))).masked_fill(
                onehot, 0.0
            )
            lse = torch.log(exps.sum(dim=1)) / per_row + max_negative
            self._update_margin(target - lse)
            margin = float(self.margin[0])
        shifted = rows - onehot.to(rows.dtype) * margin if margin > 0 else rows
        if self.original_norm:
            y = shifted * norm.reshape(-1)[:num].to(rows.dtype).unsqueeze(1)
        else:
            y = shifted * self.scale.to(rows.dtype)
        y = y.reshape(cos.shape)
        if not self.output_statistics:
            return y
        with torch.no_grad():
            first = per_row.mean() if self.original_norm else self.scale.detach()[0].to(rows.dtype)
            stats = torch.stack(
                [first, target.mean(), lse.mean(), max_negative.mean(), self.margin[0].to(rows.dtype)]
            )
        return y, stats


# -- NormFace losses -----------------------------------------------------------------------------


def _one_hot(labels: torch.Tensor, num: int, dim: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(num, dim, dtype=torch.bool, device=device).scatter_(1, labels.unsqueeze(1), True)


def _check_loss_bottoms(ctx: BuildContext) -> None:
    """``LossLayer::Reshape``: data and label share their first dimension."""
    data, label = ctx.bottom_shapes[0], ctx.bottom_shapes[1]
    if not data or not label or data[0] != label[0]:
        raise ctx.error(
            f"the data and label should have the same first dimension, got {list(data)} and {list(label)}"
        )


@register("GeneralContrastiveLoss")
class GeneralContrastiveLoss(CaffeLayer):
    """NormFace's contrastive loss on a distance matrix (``general_constrastive_loss_layer.cpp``).

    Bottoms (d, label[, data]): ``d[i, j]`` is the distance of sample i to class j (with three
    bottoms the values are read from ``data`` and the gradient goes to ``d``). Per element: the
    target ``min(positive_outlier_thresh, max(0, d - positive_margin)) * positive_weight``; a
    non-target with ``d < negative_margin`` gives ``max(0, negative_margin - d) * negative_weight``
    (``exp(-d) * negative_weight`` with ``exp_negative_weight``). ``positive_first`` drops the
    non-targets of rows whose target distance exceeds ``positive_upper_bound``;
    ``max_positive_only`` keeps the target of the first row with the *smallest* positive term;
    ``max_negative_only`` keeps, per row, the first largest term found by Caffe's running
    comparison (which starts from column 0). Loss = ``sum |terms| / num``. Second top:
    [mean positive distance, mean negative hinge per pair, (running intra-class distance)].
    ``add_intra_mae`` raises the negative margin by ``intra_mae``, a running average (``0.99 mae +
    0.01 * mean positive``, capped at ``max_negative_margin``) kept in the float buffer
    ``intra_mae`` (not a Caffe blob), updated every forward.

    Backward: Caffe's hand-written one, not the exact gradient (e.g. ``positive_first`` rows get
    ``positive_weight`` at the target whatever the truncation, and ``normalize_negative`` rescales
    the negative diffs by ``|sum negative diffs| / normalize_negative / num`` when that exceeds
    ``positive_weight``); times ``loss_weight / num``. The second top gets no gradient.
    """

    is_loss = True
    example = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "loss" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" top: "loss" top: "distances"
  general_contrastive_loss_param { positive_margin: 0.2 negative_margin: 1 } }
"""

    intra_mae: torch.Tensor

    def __init__(
        self,
        positive_margin: float = 0.0,
        negative_margin: float = 1.0,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        normalize_negative: float | None = None,
        positive_outlier_thresh: float = 4.0,
        max_negative_only: bool = False,
        max_positive_only: bool = False,
        positive_first: bool = False,
        positive_upper_bound: float = 1.0,
        exp_negative_weight: bool = False,
        add_intra_mae: bool = False,
        max_negative_margin: float = 1.2,
        output_distances: bool = False,
    ) -> None:
        super().__init__()
        self.positive_margin = float(positive_margin)
        self.negative_margin = float(negative_margin)
        self.positive_weight = float(positive_weight)
        self.negative_weight = float(negative_weight)
        self.normalize_negative = None if normalize_negative is None else float(normalize_negative)
        self.positive_outlier_thresh = float(positive_outlier_thresh)
        self.max_negative_only = bool(max_negative_only)
        self.max_positive_only = bool(max_positive_only)
        self.positive_first = bool(positive_first)
        self.positive_upper_bound = float(positive_upper_bound)
        self.exp_negative_weight = bool(exp_negative_weight)
        self.add_intra_mae = bool(add_intra_mae)
        self.max_negative_margin = float(max_negative_margin)
        self.output_distances = bool(output_distances)
        self.register_buffer("intra_mae", torch.zeros((), dtype=torch.float32))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> GeneralContrastiveLoss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        _check_loss_bottoms(ctx)
        if len(layer.bottom) == 3 and tuple(ctx.bottom_shapes[2]) != tuple(ctx.bottom_shapes[0]):
            raise ctx.error(
                f"the third bottom {list(ctx.bottom_shapes[2])} must have the shape of the first "
                f"{list(ctx.bottom_shapes[0])}"
            )
        p = layer.general_contrastive_loss_param
        return cls(
            p.positive_margin,
            p.negative_margin,
            p.positive_weight,
            p.negative_weight,
            p.normalize_negative if p.HasField("normalize_negative") else None,
            p.positive_outlier_thresh,
            p.max_negative_only,
            p.max_positive_only,
            p.positive_first,
            p.positive_upper_bound,
            p.exp_negative_weight,
            p.add_intra_mae,
            p.max_negative_margin,
            len(layer.top) == 2,
        )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()] + ([(3,) if self.add_intra_mae else (2,)] if self.output_distances else [])

    def forward(
        self, d: torch.Tensor, label: torch.Tensor, data: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = d.shape[0]
        rows = (data if data is not None else d).detach().reshape(num, -1)
        dim = rows.shape[1]
        labels = _labels(label, num)
        onehot = _one_hot(labels, num, dim, rows.device)
        pm, pw, nw = self.positive_margin, self.positive_weight, self.negative_weight
        needs_grad = _needs_grad(d)
        with torch.no_grad():
            nm = (self.intra_mae.to(rows.dtype) + self.negative_margin) if self.add_intra_mae else None
            neg_margin = nm if nm is not None else torch.tensor(self.negative_margin, dtype=rows.dtype)
            neg_margin = neg_margin.to(rows.device)
            same = rows.gather(1, labels.unsqueeze(1)).squeeze(1)
            truncated = (same - pm).clamp(min=0.0).clamp(max=self.positive_outlier_thresh)
            positive = truncated * pw
            candidate = ~onehot & (rows < neg_margin)
            hinge = (neg_margin - rows).clamp(min=0.0)
            negative_term = torch.exp(-rows) * nw if self.exp_negative_weight else hinge * nw
            negative = torch.where(candidate, negative_term, torch.zeros_like(rows))
            terms = torch.where(onehot, positive.unsqueeze(1), negative)
            rows_index = torch.arange(num, device=rows.device)
            max_positive = int(torch.argmin(positive)) if self.max_positive_only and num else 0
            max_negative = None
            if self.max_negative_only:
                scores = torch.where(candidate, terms, torch.full_like(terms, -math.inf))
                scores[:, 0] = terms[:, 0]
                max_negative = torch.argmax(scores, dim=1)
            kept = terms
            if self.positive_first:
                kept = torch.where((same > self.positive_upper_bound).unsqueeze(1) & ~onehot, 0.0, kept)
            if self.max_positive_only:
                kept = torch.where(onehot & (rows_index != max_positive).unsqueeze(1), 0.0, kept)
            if max_negative is not None:
                not_max = torch.ones_like(onehot).scatter_(1, max_negative.unsqueeze(1), False)
                kept = torch.where(~onehot & not_max, 0.0, kept)
            positive_distance = truncated.sum()
            negative_distance = torch.where(candidate, hinge, torch.zeros_like(hinge)).sum()
            mae = 0.99 * self.intra_mae.to(rows.dtype) + 0.01 * positive_distance / num
            self.intra_mae.copy_(mae.clamp(max=self.max_negative_margin))
            loss = kept.abs().sum() / num
            unit_grad = None
            if needs_grad:
                unit_grad = (
                    self._caffe_diff(rows, same, onehot, candidate, neg_margin, max_positive, max_negative)
                    / num
                )
        if unit_grad is not None:
            loss = _CaffeGradient.apply(d, loss.to(d.dtype), unit_grad.reshape(d.shape).to(d.dtype))
        if not self.output_distances:
            return loss
        stats = [positive_distance / num, negative_distance / num / (dim - 1)]
        if self.add_intra_mae:
            stats.append(self.intra_mae.to(rows.dtype))
        return loss, torch.stack(stats).to(d.dtype)

    def _caffe_diff(
        self,
        rows: torch.Tensor,
        same: torch.Tensor,
        onehot: torch.Tensor,
        candidate: torch.Tensor,
        neg_margin: torch.Tensor,
        max_positive: int,
        max_negative: torch.Tensor | None,
    ) -> torch.Tensor:
        """``Backward_cpu``'s diff before the ``loss_weight / num`` factor."""
        num = rows.shape[0]
        pw, nw = self.positive_weight, self.negative_weight
        active_pos = (same > self.positive_margin) & (same < self.positive_outlier_thresh)
        if self.max_positive_only:
            active_pos &= torch.arange(num, device=rows.device) == max_positive
        active_neg = candidate
        if max_negative is not None:
            active_neg = active_neg & torch.zeros_like(onehot).scatter_(1, max_negative.unsqueeze(1), True)
        neg_value = torch.exp(-rows) * nw if self.exp_negative_weight else torch.full_like(rows, nw)
        neg_value = torch.where(active_neg, neg_value, torch.zeros_like(rows))
        first = (
            (same > self.positive_upper_bound)
            if self.positive_first
            else torch.zeros_like(same, dtype=torch.bool)
        )
        neg_value = torch.where(first.unsqueeze(1), 0.0, neg_value)
        target = torch.where(first | active_pos, pw, 0.0).to(rows.dtype)
        diff = torch.where(onehot, target.unsqueeze(1), -neg_value)
        if self.normalize_negative is not None:
            negative_sum = neg_value.sum().abs() / self.normalize_negative / num
            if float(negative_sum) > pw:
                diff = torch.where(onehot, diff, diff / negative_sum)
        return diff


@register("GeneralTripletLoss")
class GeneralTripletLoss(CaffeLayer):
    """NormFace's triplet loss on a distance matrix (``general_triplet_loss_layer.cpp``).

    Bottoms (d, label). Per non-target: ``max(0, d_iy + margin - d_ij) * negative_weight``;
    ``hardest_only`` keeps, per row, the first largest positive term; ``positive_first`` drops the
    non-targets of rows with ``d_iy > positive_upper_bound``. Loss = ``sum |terms| / num``.
    Second top: [mean target distance, mean non-target distance].

    Backward: Caffe's hand-written one, not the exact gradient: ``-negative_weight`` at active
    non-targets (``d_iy + margin > d_ij``; with ``hardest_only`` only at the hardest, and only
    if its distance is nonzero), ``positive_weight`` at the target when ``add_center_loss`` or
    any non-target is active (and always for ``positive_first`` rows, whose non-targets get 0),
    times ``loss_weight / num``. Entries the Caffe backward does not write keep the forward's
    per-element terms left in the diff buffer (``hardest_only`` rows), reproduced here.
    """

    is_loss = True
    example = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "loss" type: "GeneralTripletLoss" bottom: "d" bottom: "label" top: "loss" top: "distances"
  general_triplet_loss_param { margin: 0.8 hardest_only: true } }
"""

    def __init__(
        self,
        margin: float = 0.2,
        add_center_loss: bool = True,
        hardest_only: bool = False,
        positive_first: bool = False,
        positive_upper_bound: float = 1.0,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        output_distances: bool = False,
    ) -> None:
        super().__init__()
        self.margin = float(margin)
        self.add_center_loss = bool(add_center_loss)
        self.hardest_only = bool(hardest_only)
        self.positive_first = bool(positive_first)
        self.positive_upper_bound = float(positive_upper_bound)
        self.positive_weight = float(positive_weight)
        self.negative_weight = float(negative_weight)
        self.output_distances = bool(output_distances)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> GeneralTripletLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1, 2)
        _check_loss_bottoms(ctx)
        p = layer.general_triplet_loss_param
        return cls(
            p.margin,
            p.add_center_loss,
            p.hardest_only,
            p.positive_first,
            p.positive_upper_bound,
            p.positive_weight,
            p.negative_weight,
            len(layer.top) == 2,
        )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()] + ([(2,)] if self.output_distances else [])

    def forward(
        self, d: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = d.shape[0]
        needs_grad = _needs_grad(d)
        with torch.no_grad():
            rows = d.detach().reshape(num, -1)
            dim = rows.shape[1]
            labels = _labels(label, num)
            onehot = _one_hot(labels, num, dim, rows.device)
            same = rows.gather(1, labels.unsqueeze(1)).squeeze(1)
            hinge = (same.unsqueeze(1) + self.margin - rows).clamp(min=0.0) * self.negative_weight
            terms = torch.where(onehot, 0.0, hinge)
            hardest = valid = None
            if self.hardest_only:
                scores = torch.where(~onehot & (terms > 0), terms, torch.full_like(terms, -math.inf))
                hardest = torch.argmax(scores, dim=1)
                valid = torch.isfinite(scores.gather(1, hardest.unsqueeze(1)).squeeze(1))
                is_hardest = torch.zeros_like(onehot).scatter_(1, hardest.unsqueeze(1), True)
                terms = torch.where(valid.unsqueeze(1) & ~onehot & ~is_hardest, 0.0, terms)
            first = (
                (same > self.positive_upper_bound)
                if self.positive_first
                else torch.zeros_like(same, dtype=torch.bool)
            )
            terms = torch.where(first.unsqueeze(1) & ~onehot, 0.0, terms)
            loss = terms.abs().sum() / num
            positive_distance = same.sum()
            negative_distance = torch.where(onehot, 0.0, rows).sum()
            unit_grad = None
            if needs_grad:
                unit_grad = self._caffe_diff(rows, same, onehot, terms, first, hardest, valid) / num
        if unit_grad is not None:
            loss = _CaffeGradient.apply(d, loss.to(d.dtype), unit_grad.reshape(d.shape).to(d.dtype))
        if not self.output_distances:
            return loss
        stats = torch.stack([positive_distance / num, negative_distance / num / (dim - 1)])
        return loss, stats.to(d.dtype)

    def _caffe_diff(
        self,
        rows: torch.Tensor,
        same: torch.Tensor,
        onehot: torch.Tensor,
        leftover: torch.Tensor,
        first: torch.Tensor,
        hardest: torch.Tensor | None,
        valid: torch.Tensor | None,
    ) -> torch.Tensor:
        """``Backward_cpu``'s diff before ``loss_weight / num``, starting from the forward's terms."""
        pw, nw = self.positive_weight, self.negative_weight
        if hardest is not None:
            at_hardest = rows.gather(1, hardest.unsqueeze(1)).squeeze(1)
            chosen = valid & (at_hardest != 0)
            is_hardest = torch.zeros_like(onehot).scatter_(1, hardest.unsqueeze(1), True)
            diff = torch.where(is_hardest & chosen.unsqueeze(1), -nw, leftover)
            any_negative = chosen
        else:
            active = ~onehot & (same.unsqueeze(1) + self.margin > rows)
            diff = torch.where(onehot, leftover, torch.where(active, -nw, 0.0))
            any_negative = active.any(dim=1)
        set_target = any_negative | self.add_center_loss
        diff = torch.where(onehot & set_target.unsqueeze(1), pw, diff)
        diff = torch.where(first.unsqueeze(1), torch.where(onehot, pw, 0.0), diff)
        return diff.to(rows.dtype)
