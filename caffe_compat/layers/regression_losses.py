"""Regression losses of happynear/caffe-windows: ``SmoothL1Loss`` (smooth_L1_loss_layer.cu, the fork's
Fast R-CNN port) and ``CorrelationLoss`` (correlation_loss_layer.cpp).

Both have a Caffe backward that is not the gradient of their forward (SmoothL1 ignores the weights,
CorrelationLoss writes into data instead of diffs), reproduced with ``torch.autograd.Function``.
"""

from __future__ import annotations

import torch

from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.face.common import check_legacy, legacy_shape
from caffe_compat.layers.loss import _count, _loss_checks
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


# -- SmoothL1Loss --------------------------------------------------------------------------------
class _SmoothL1Function(torch.autograd.Function):
    """The CUDA kernels of smooth_L1_loss_layer.cu: ``d = (a - b) [* w]``,
    ``e = 0.5 d^2`` if ``|d| < turn_point`` else ``|d| - turn_point + 0.5 turn_point^2``,
    ``loss = sum |e| / num_a``; backward ``f'(d) = d`` resp. ``sign(d)``, to ``a`` times
    ``top_diff / num_a`` and to ``b`` times ``-top_diff / num_b`` (never times ``w``); ``w`` gets none."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        a: torch.Tensor,
        b: torch.Tensor,
        w: torch.Tensor | None,
        turn_point: float,
    ) -> torch.Tensor:
        d = a - b.reshape(a.shape)
        if w is not None:
            d = w.reshape(a.shape) * d
        magnitude = d.abs()
        inside = magnitude < turn_point
        errors = torch.where(inside, 0.5 * d * d, magnitude - turn_point + 0.5 * turn_point * turn_point)
        ctx.save_for_backward(torch.where(inside, d, torch.sign(d)))
        ctx.b_shape = b.shape
        ctx.nums = (a.shape[0], b.shape[0])
        return errors.abs().sum() / a.shape[0]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (slope,) = ctx.saved_tensors
        num_a, num_b = ctx.nums
        grad_a = slope * (grad / num_a) if ctx.needs_input_grad[0] else None
        grad_b = (slope * (-grad / num_b)).reshape(ctx.b_shape) if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None


@register("SmoothL1Loss")
class SmoothL1Loss(CaffeLayer):
    """The smooth L1 loss of the fork (smooth_L1_loss_layer.cu; its CPU Forward/Backward are
    ``NOT_IMPLEMENTED``, so this follows the CUDA kernels on every device).

    ``d = (a - b)``, times the optional third bottom ``w`` element-wise; ``e = 0.5 d^2`` where
    ``|d| < turn_point`` (``smoothl1_param``, default 1), else ``|d| - turn_point + 0.5
    turn_point^2``; ``loss = sum |e| / N`` with ``N = a.shape[0]``. Backward: ``d`` resp.
    ``sign(d)``, times ``top_diff / N`` for ``a`` and ``-top_diff / b.shape[0]`` for ``b``: the exact
    gradient without weights; with weights Caffe leaves out the factor ``w`` and that is
    reproduced. ``w`` gets no gradient. This fork's layer has ``turn_point`` and one weight bottom,
    not Fast R-CNN's ``sigma`` and inside/outside weights.
    """

    family = "loss"
    fork_gpu_only = True

    is_loss = True
    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "w" type: "Input" top: "w" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "loss" type: "SmoothL1Loss" bottom: "a" bottom: "b" bottom: "w" top: "loss"
        smoothl1_param { turn_point: 0.5 } }
"""

    def __init__(self, turn_point: float = 1.0) -> None:
        super().__init__()
        self.turn_point = float(turn_point)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> SmoothL1Loss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1)
        _loss_checks(ctx)
        shapes = ctx.bottom_shapes
        for index, shape in enumerate(shapes):
            check_legacy(ctx, shape, f"bottom {index}")
        for index, shape in enumerate(shapes[1:], start=1):
            if legacy_shape(shape)[1:] != legacy_shape(shapes[0])[1:]:
                raise ctx.error(
                    f"bottom {index} {list(shape)} must have the channels, height and width of bottom 0 "
                    f"{list(shapes[0])}"
                )
            if _count(shape) != _count(shapes[0]):
                raise ctx.error(
                    f"bottom {index} {list(shape)} must have as many elements as {list(shapes[0])}"
                )
        return cls(layer.smoothl1_param.turn_point)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return _SmoothL1Function.apply(a, b, None if weight is None else weight.detach(), self.turn_point)

    def extra_repr(self) -> str:
        return ", ".join(p for p in (super().extra_repr(), f"turn_point={self.turn_point}") if p)


# -- CorrelationLoss -----------------------------------------------------------------------------
class _CorrelationFunction(torch.autograd.Function):
    """``sum x t / count``; Caffe's backward writes its result into the bottoms' *data* and leaves
    their diffs at zero, so both get a zero gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        ctx.shapes = (x.shape, t.shape)
        return (x.reshape(-1) * t.reshape(-1)).sum() / x.numel()

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x_shape, t_shape = ctx.shapes
        grad_x = grad.new_zeros(x_shape) if ctx.needs_input_grad[0] else None
        grad_t = grad.new_zeros(t_shape) if ctx.needs_input_grad[1] else None
        return grad_x, grad_t


@register("CorrelationLoss")
class CorrelationLoss(CaffeLayer):
    """``loss = sum x t / count`` (correlation_loss_layer.cpp of happynear/caffe-windows); both
    bottoms have channels 1 (further bottoms are accepted and unused, as in Caffe).

    Caffe's backward writes ``t * top_diff / count`` into x's **data** (and ``x * top_diff / count``
    into t's data when t needs backward) and leaves the diffs untouched, i.e. zero: both get a
    zero gradient here. Deliberate deviation: the bottoms' values are not overwritten (that would
    corrupt tensors other layers saved for their backward; the only thing Caffe does with the
    overwritten data afterwards is back-propagate a zero diff through it).
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 6 dim: 1 dim: 5 dim: 7 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 6 dim: 1 dim: 5 dim: 7 } } }
layer { name: "loss" type: "CorrelationLoss" bottom: "x" bottom: "t" top: "loss" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> CorrelationLoss:
        if len(layer.bottom) < 2:
            raise ctx.error(f"takes at least 2 bottom blobs, got {len(layer.bottom)}")
        ctx.check_tops(1)
        _loss_checks(ctx)
        x_shape, t_shape = ctx.bottom_shapes[:2]
        for index, shape in enumerate((x_shape, t_shape)):
            check_legacy(ctx, shape, f"bottom {index}")
            if legacy_shape(shape)[1] != 1:
                raise ctx.error(f"bottom {index} must have 1 channel, got shape {list(shape)}")
        if _count(t_shape) != _count(x_shape):
            raise ctx.error(f"the bottoms {list(x_shape)} and {list(t_shape)} must have the same count")
        return cls()

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, x: torch.Tensor, t: torch.Tensor, *unused: torch.Tensor) -> torch.Tensor:
        return _CorrelationFunction.apply(x, t)
