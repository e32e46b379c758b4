"""Normalization and affine layers: LRN, BatchNorm, MVN, Scale, Bias (each follows its
``<name>_layer.cpp`` in happynear/caffe-windows, the fork the goldens came from).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_INPUT_2357 = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
"""


# -- LRN ---------------------------------------------------------------------------------------
@register("LRN")
class LRN(CaffeLayer):
    """Local response normalization (``lrn_layer.cpp``) on a 4-D bottom.

    ACROSS_CHANNELS: ``y = x * (k + alpha / n * sum x^2) ^ -beta``, the sum over the ``n =
    local_size`` channels centred on each one (zero beyond the edges), which is
    ``F.local_response_norm``. WITHIN_CHANNEL: Caffe composes it from layers: AVE pooling of
    ``x^2`` over ``n x n`` with pad ``(n - 1) / 2`` (padded cells counted in the divisor), then
    Power with shift fixed at 1: ``y = x * (1 + alpha * avg(x^2)) ^ -beta``; ``k`` is ignored.
    Both backward passes are the exact gradient.
    """

    family = "normalization"

    example = (
        _INPUT_2357
        + """layer { name: "lrn" type: "LRN" bottom: "x" top: "y" lrn_param { local_size: 3 alpha: 0.01 } }
"""
    )

    def __init__(
        self,
        local_size: int = 5,
        alpha: float = 1.0,
        beta: float = 0.75,
        k: float = 1.0,
        within_channel: bool = False,
    ) -> None:
        super().__init__()
        if local_size < 1 or local_size % 2 != 1:
            raise ValueError(f"LRN only supports odd values for local_size, got {local_size}")
        self.local_size = int(local_size)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.k = float(k)
        self.within_channel = bool(within_channel)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> LRN:
        ctx.check_bottoms(1)
        param = layer.lrn_param
        shape = ctx.bottom_shapes[0]
        if len(shape) != 4:
            raise ctx.error(
                f"the bottom must have 4 axes (num, channels, height, width), got shape {list(shape)}"
            )
        within = param.norm_region == caffe_pb2.LRNParameter.WITHIN_CHANNEL
        try:
            return cls(param.local_size, param.alpha, param.beta, param.k, within)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.within_channel:
            return F.local_response_norm(x, self.local_size, self.alpha, self.beta, self.k)
        pad = (self.local_size - 1) // 2
        mean_square = F.avg_pool2d(x.square(), self.local_size, 1, pad, count_include_pad=True)
        return x * (mean_square * self.alpha + 1.0).pow(-self.beta)

    def extra_repr(self) -> str:
        region = "WITHIN_CHANNEL" if self.within_channel else "ACROSS_CHANNELS"
        text = f"local_size={self.local_size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, {region}"
        return f"{super().extra_repr()}, {text}".lstrip(", ")


# -- BatchNorm ---------------------------------------------------------------------------------
@register("BatchNorm")
class BatchNorm(CaffeLayer):
    """Caffe's BatchNorm (``batch_norm_layer.cpp``): normalisation only, no affine (a Scale
    layer follows it in Caffe models).

    Blobs (buffers, Caffe shapes): ``mean_sum`` (C,), ``var_sum`` (C,), ``scale_factor`` (1,).
    With global statistics (``use_global_stats``, default: phase is TEST), ``mean = mean_sum / f``
    and ``var = var_sum / f`` with ``f = scale_factor`` (a zero ``f`` gives zero mean and
    variance). Otherwise the batch mean and biased variance over every axis but 1 normalise,
    and the buffers are updated in place (so a TEST net sharing them sees the update):
    ``f = maf * f + 1``, ``mean_sum = maf * mean_sum + mean``, ``var_sum = maf * var_sum +
    m / (m - 1) * var`` with ``m = count / C`` and ``maf = moving_average_fraction``. Then
    ``y = (x - mean) / sqrt(var + eps)``. The fork's ``disable_mean`` / ``disable_variance``
    skip the subtraction / the division (and that statistic's update). Caffe's backward is the
    exact gradient (through the batch statistics in TRAIN); the buffers get none, and
    ``param_specs`` gives them ``lr_mult: 0`` as Caffe's LayerSetUp does.
    """

    family = "normalization"

    caffe_blobs = (
        Blob("mean_sum", learnable=False),
        Blob("var_sum", learnable=False),
        Blob("scale_factor", learnable=False),
    )
    example = (
        _INPUT_2357
        + """layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }
"""
    )

    def __init__(
        self,
        channels: int,
        use_global_stats: bool = False,
        moving_average_fraction: float = 0.99,
        eps: float = 1e-5,
        disable_mean: bool = False,
        disable_variance: bool = False,
    ) -> None:
        super().__init__()
        self.channels = int(channels)
        self.use_global_stats = bool(use_global_stats)
        self.moving_average_fraction = float(moving_average_fraction)
        self.eps = float(eps)
        self.disable_mean = bool(disable_mean)
        self.disable_variance = bool(disable_variance)
        self.set_blob("mean_sum", torch.zeros(self.channels))
        self.set_blob("var_sum", torch.zeros(self.channels))
        self.set_blob("scale_factor", torch.zeros(1))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> BatchNorm:
        ctx.check_bottoms(1)
        shape = ctx.bottom_shapes[0]
        if len(shape) < 2:
            raise ctx.error(f"the bottom must have at least 2 axes (N, C, ...), got shape {list(shape)}")
        for index, spec in enumerate(layer.param[:3]):
            if spec.lr_mult != 0.0:
                raise ctx.error(
                    f"param {index} has lr_mult {spec.lr_mult}: cannot configure batch normalization "
                    "statistics as layer parameters (their lr_mult must be 0)"
                )
        param = layer.batch_norm_param
        use_global = param.use_global_stats if param.HasField("use_global_stats") else not ctx.train
        return cls(
            shape[1],
            use_global,
            param.moving_average_fraction,
            param.eps,
            param.disable_mean,
            param.disable_variance,
        )

    @classmethod
    def param_specs(cls, layer: caffe_pb2.LayerParameter, num_blobs: int) -> list[caffe_pb2.ParamSpec]:
        """Blobs the prototxt gives no ``param`` for get ``lr_mult: 0`` (decay_mult stays 1)."""
        specs = super().param_specs(layer, num_blobs)
        for index in range(len(layer.param), num_blobs):
            specs[index].lr_mult = 0.0
        return specs

    def _stored_statistics(self) -> tuple[torch.Tensor, torch.Tensor]:
        factor = self.scale_factor[0]
        scale = torch.where(factor == 0, torch.zeros_like(factor), 1.0 / factor)
        return self.mean_sum * scale, self.var_sum * scale

    def _update_statistics(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        maf = self.moving_average_fraction
        with torch.no_grad():
            self.scale_factor.mul_(maf).add_(1.0)
            if not self.disable_mean:
                self.mean_sum.mul_(maf).add_(mean)
            if not self.disable_variance:
                correction = count / (count - 1) if count > 1 else 1.0
                self.var_sum.mul_(maf).add_(var, alpha=correction)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduce_dims = [0, *range(2, x.dim())]
        view = (1, -1) + (1,) * (x.dim() - 2)
        count = x.numel() // max(self.channels, 1)
        full = not self.disable_mean and not self.disable_variance
        if self.use_global_stats:
            mean, var = self._stored_statistics()
            if full:
                return F.batch_norm(x, mean, var, training=False, momentum=0.0, eps=self.eps)
        elif full and count > 1:
            with torch.no_grad():
                var, mean = torch.var_mean(x, dim=reduce_dims, correction=0)
            self._update_statistics(mean, var, count)
            return F.batch_norm(x, None, None, training=True, momentum=0.0, eps=self.eps)
        else:
            # Caffe's own sequence: subtract the batch mean, then the variance of what is left.
            mean = x.mean(dim=reduce_dims)
            centred = x if self.disable_mean else x - mean.reshape(view)
            var = centred.square().mean(dim=reduce_dims)
            self._update_statistics(mean.detach(), var.detach(), count)
        y = x if self.disable_mean else x - mean.reshape(view)
        return y if self.disable_variance else y / (var + self.eps).sqrt().reshape(view)

    def extra_repr(self) -> str:
        text = f"channels={self.channels}, use_global_stats={self.use_global_stats}, eps={self.eps}"
        return f"{super().extra_repr()}, {text}".lstrip(", ")


# -- MVN ---------------------------------------------------------------------------------------
class _MVNNormalize(torch.autograd.Function):
    """``y = (x - mean) / (std + eps)`` over the rows of a 2-D tensor, with Caffe's backward
    ``dx = (dy - mean(dy) - y * mean(dy * y)) / (std + eps)`` (``mvn_layer.cpp``), which is the
    exact gradient only when ``eps == 0``."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, rows: torch.Tensor, eps: float) -> torch.Tensor:
        centred = rows - rows.mean(dim=1, keepdim=True)
        denominator = centred.square().mean(dim=1, keepdim=True).sqrt() + eps
        y = centred / denominator
        ctx.save_for_backward(y, denominator)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, dy: torch.Tensor) -> tuple[torch.Tensor, None]:
        y, denominator = ctx.saved_tensors
        dx = dy - dy.mean(dim=1, keepdim=True) - y * (dy * y).mean(dim=1, keepdim=True)
        return dx / denominator, None


@register("MVN")
class MVN(CaffeLayer):
    """Mean-variance normalization (``mvn_layer.cpp``).

    Over each (n, c) plane, or each sample with ``across_channels``: ``y = x - mean``, and with
    ``normalize_variance`` ``y = (x - mean) / (std + eps)`` (Caffe adds eps to the biased
    standard deviation, not to the variance). The backward is Caffe's, which treats
    ``std + eps`` as ``std`` in the variance term. Caffe's Reshape uses the legacy 4-D shape,
    so a bottom with fewer axes gives a 4-D top padded with ones, and more than 4 are rejected.
    """

    family = "normalization"

    example = (
        _INPUT_2357
        + """layer { name: "mvn" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true } }
"""
    )

    def __init__(
        self, normalize_variance: bool = True, across_channels: bool = False, eps: float = 1e-9
    ) -> None:
        super().__init__()
        self.normalize_variance = bool(normalize_variance)
        self.across_channels = bool(across_channels)
        self.eps = float(eps)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MVN:
        ctx.check_bottoms(1)
        shape = ctx.bottom_shapes[0]
        if len(shape) > 4:
            raise ctx.error(
                f"the bottom must have at most 4 axes (legacy num/channels/height/width), got {list(shape)}"
            )
        param = layer.mvn_param
        return cls(param.normalize_variance, param.across_channels, param.eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape4 = tuple(x.shape) + (1,) * (4 - x.dim())
        groups = shape4[0] if self.across_channels else shape4[0] * shape4[1]
        rows = x.reshape(groups, -1)
        if self.normalize_variance:
            y = _MVNNormalize.apply(rows, self.eps)
        else:
            y = rows - rows.mean(dim=1, keepdim=True)
        return y.reshape(shape4)


# -- Scale and Bias ----------------------------------------------------------------------------
def _broadcast_shape(operand_shape: Shape, axis: int, ndim: int) -> tuple[int, ...]:
    """The view of a Scale/Bias operand that lines its axes up with ``bottom[axis:]``."""
    return (1,) * axis + tuple(operand_shape) + (1,) * (ndim - axis - len(operand_shape))


def _operand_axes(
    what: str, bottom: Shape, axis: int, num_axes: int, ctx: BuildContext
) -> tuple[int, tuple[int, ...]]:
    """Caffe's Scale/Bias LayerSetUp: the canonical axis and the learned blob's shape,
    ``bottom[axis : axis + num_axes]`` (``num_axes == -1``: to the end)."""
    axis = canonical_axis(axis, len(bottom), ctx)
    if num_axes < -1:
        raise ctx.error(
            f"num_axes must be non-negative, or -1 to extend to the end of bottom[0], got {num_axes}"
        )
    if num_axes >= 0 and len(bottom) < axis + num_axes:
        raise ctx.error(
            f"{what} blob's shape extends past bottom[0]'s shape {list(bottom)} when applied starting with "
            f"bottom[0] axis = {axis} (num_axes = {num_axes})"
        )
    end = len(bottom) if num_axes == -1 else axis + num_axes
    return axis, tuple(bottom[axis:end])


def _check_operand(what: str, bottom: Shape, operand: Shape, axis_param: int, ctx: BuildContext) -> int:
    """Caffe's Scale/Bias Reshape: the operand's dims must equal ``bottom[axis:]``'s; a scalar
    operand (0 axes) uses axis 0. Returns the axis used."""
    axis = 0 if len(operand) == 0 else canonical_axis(axis_param, len(bottom), ctx)
    if len(bottom) < axis + len(operand):
        raise ctx.error(
            f"{what} blob's shape {list(operand)} extends past bottom[0]'s shape {list(bottom)} when applied "
            f"starting with bottom[0] axis = {axis}"
        )
    for i, dim in enumerate(operand):
        if bottom[axis + i] != dim:
            raise ctx.error(
                f"dimension mismatch between bottom[0]->shape({axis + i}) = {bottom[axis + i]} and "
                f"{what}->shape({i}) = {dim} (bottom[0] {list(bottom)}, {what} {list(operand)})"
            )
    return axis


@register("Scale")
class Scale(CaffeLayer):
    """``y = x * s (+ b)`` with ``s`` broadcast along ``bottom[axis : axis + ndim(s)]``
    (``scale_layer.cpp``).

    ``s`` is the learned blob ``weight`` of shape ``bottom[axis : axis + num_axes]``
    (``num_axes: -1`` to the end; default filler ``constant 1``), or the second bottom (then
    there is no ``weight`` blob). ``bias_term`` adds the blob ``bias`` as Caffe's inner Bias
    layer does (same axis; its num_axes is ``num_axes``, or the second bottom's axis count;
    filler ``bias_filler``). A scalar ``s`` (0 axes) ignores ``axis``. The fork's
    ``min_value``/``max_value`` clamp ``s`` in forward: a learned ``weight`` is clamped in
    place as Caffe does; a second bottom is clamped in the computation only (deviation: Caffe
    also overwrites that bottom blob's data), with the gradient passing unchanged as in Caffe.
    """

    family = "normalization"

    caffe_blobs = (Blob("weight", optional=True), Blob("bias", optional=True))
    example = (
        _INPUT_2357
        + """layer { name: "scale" type: "Scale" bottom: "x" top: "y" scale_param { bias_term: true } }
"""
    )

    def __init__(
        self,
        axis: int,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        min_value: float | None = None,
        max_value: float | None = None,
    ) -> None:
        super().__init__()
        self.axis = int(axis)
        self.min_value = min_value
        self.max_value = max_value
        self.set_blob("weight", weight)
        self.set_blob("bias", bias)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Scale:
        ctx.check_bottoms(1, 2)
        param = layer.scale_param
        bottom = ctx.bottom_shapes[0]
        where = f"layer '{layer.name}'"
        weight = None
        if len(ctx.bottom_shapes) == 1:
            axis, scale_shape = _operand_axes("scale", bottom, param.axis, param.num_axes, ctx)
            if param.HasField("filler"):
                filler = param.filler
            else:
                filler = caffe_pb2.FillerParameter(type="constant", value=1.0)
            weight = fill(scale_shape, filler, where)
        else:
            scale_shape = tuple(ctx.bottom_shapes[1])
        axis = _check_operand("scale", bottom, scale_shape, param.axis, ctx)
        bias = None
        if param.bias_term:
            bias_axes = len(ctx.bottom_shapes[1]) if len(ctx.bottom_shapes) == 2 else param.num_axes
            _, bias_shape = _operand_axes("bias", bottom, param.axis, bias_axes, ctx)
            bias = fill(bias_shape, param.bias_filler, where)
        min_value = param.min_value if param.HasField("min_value") else None
        max_value = param.max_value if param.HasField("max_value") else None
        return cls(axis, weight, bias, min_value, max_value)

    def _clamped(self, scale: torch.Tensor) -> torch.Tensor:
        if self.min_value is None and self.max_value is None:
            return scale
        if scale is self.weight:
            with torch.no_grad():
                scale.clamp_(min=self.min_value, max=self.max_value)
            return scale
        clamped = scale
        if self.min_value is not None:
            clamped = torch.maximum(clamped, clamped.new_tensor(self.min_value))
        if self.max_value is not None:
            clamped = torch.minimum(clamped, clamped.new_tensor(self.max_value))
        return scale + (clamped - scale).detach()

    def forward(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        scale = self._clamped(self.weight if scale is None else scale)
        axis = 0 if scale.dim() == 0 else self.axis
        scale = scale.reshape(_broadcast_shape(scale.shape, axis, x.dim()))
        if self.bias is None:
            return x * scale
        bias_axis = 0 if self.bias.dim() == 0 else self.axis
        bias = self.bias.reshape(_broadcast_shape(self.bias.shape, bias_axis, x.dim()))
        return torch.addcmul(bias, x, scale)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, axis={self.axis}".lstrip(", ")


@register("Bias")
class Bias(CaffeLayer):
    """``y = x + b`` with ``b`` broadcast along ``bottom[axis : axis + ndim(b)]``
    (``bias_layer.cpp``): the learned blob ``bias`` of shape ``bottom[axis : axis + num_axes]``
    (``num_axes: -1`` to the end; ``filler``, default constant 0), or the second bottom."""

    family = "normalization"

    caffe_blobs = (Blob("bias", optional=True),)
    example = (
        _INPUT_2357
        + """layer { name: "bias" type: "Bias" bottom: "x" top: "y" bias_param { axis: 1 num_axes: 2 } }
"""
    )

    def __init__(self, axis: int, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.axis = int(axis)
        self.set_blob("bias", bias)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Bias:
        ctx.check_bottoms(1, 2)
        param = layer.bias_param
        bottom = ctx.bottom_shapes[0]
        bias = None
        if len(ctx.bottom_shapes) == 1:
            _, bias_shape = _operand_axes("bias", bottom, param.axis, param.num_axes, ctx)
            bias = fill(bias_shape, param.filler, f"layer '{layer.name}'")
        else:
            bias_shape = tuple(ctx.bottom_shapes[1])
        axis = _check_operand("bias", bottom, bias_shape, param.axis, ctx)
        return cls(axis, bias)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        bias = self.bias if bias is None else bias
        axis = 0 if bias.dim() == 0 else self.axis
        return x + bias.reshape(_broadcast_shape(bias.shape, axis, x.dim()))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, axis={self.axis}".lstrip(", ")
