"""Caffe's ``InnerProduct`` layer (``inner_product_layer.cpp``, happynear/caffe-windows flavour).

Rules followed:
- the bottom is flattened from ``axis`` (``K = count(axis)``); the dimensions before ``axis`` are
  kept, so the top is ``bottom.shape[:axis] + (num_output,)``;
- blob 0 ``weight`` is ``(num_output, K)``, or ``(K, num_output)`` with ``transpose: true``; blob 1
  ``bias`` is ``(num_output,)`` and present with ``bias_term`` (default true);
- the fork's ``normalize: true`` rescales the stored weight **in place** at every forward, each
  chunk of ``K`` consecutive values (a row of the ``(num_output, K)`` layout) divided by
  ``sqrt(|w|^2 + 1e-6)``, and Caffe's backward is the plain inner-product gradient with respect to
  the normalized weight: the normalization itself is not back-propagated;
- the fork also takes the weight as a second bottom (``num_output`` = its first dimension) and the
  bias as a third bottom; these forms have no blobs of their own and never normalize.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

#: Added to each row's squared norm before the square root (the fork's ``Forward_cpu``).
NORMALIZE_EPS = 1e-6


def normalize_rows_(weight: torch.Tensor, num_rows: int) -> None:
    """Rescale ``weight`` in place as the fork does: each of ``num_rows`` flat chunks becomes
    ``w / sqrt(|w|^2 + 1e-6)``.

    Runs under ``torch.no_grad()``: the parameter's version counter is bumped, its autograd
    history is not extended.
    """
    with torch.no_grad():
        rows = weight.view(num_rows, -1)
        scale = 1.0 / torch.sqrt((rows * rows).sum(dim=1, keepdim=True) + NORMALIZE_EPS)
        rows.mul_(scale)


def normalized_rows(weight: torch.Tensor, num_rows: int) -> torch.Tensor:
    """``w / sqrt(|w|^2 + 1e-6)`` per flat chunk, differentiable (the exact-gradient variant)."""
    rows = weight.reshape(num_rows, -1)
    rows = rows / torch.sqrt((rows * rows).sum(dim=1, keepdim=True) + NORMALIZE_EPS)
    return rows.reshape(weight.shape)


@register("InnerProduct")
class InnerProduct(CaffeLayer):
    """Fully connected layer: ``y = x_flat @ W^T + b`` (``inner_product_layer.cpp``).

    Args:
        num_output: ``N``, the number of outputs.
        input_size: ``K``, the number of inputs (``count(axis)`` of the bottom).
        bias_term: keep a ``bias`` blob (or, with weight bottoms, add the third bottom).
        axis: first axis flattened into the inner product (negative counts from the end).
        transpose: the weight is stored ``(K, N)`` instead of ``(N, K)``.
        normalize: the fork's weight normalization (see the module docstring).
        exact_grad: with ``normalize``, differentiate through the normalization instead of
            reproducing Caffe: the stored weight is then left untouched and the gradient is the
            true gradient with respect to the raw weight. Default False (Caffe's behaviour: the
            weight is normalized in place, the gradient is taken with respect to the normalized
            weight). Not a Caffe option: ``from_caffe`` always builds the faithful variant.
        num_bottoms: 1 (weight and bias are blobs), 2 (weight is bottom 1) or 3 (bias is bottom 2).
    """

    family = "inner_product"

    caffe_blobs = (Blob("weight", optional=True), Blob("bias", optional=True))
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
"""

    def __init__(
        self,
        num_output: int,
        input_size: int,
        bias_term: bool = True,
        axis: int = 1,
        transpose: bool = False,
        normalize: bool = False,
        exact_grad: bool = False,
        num_bottoms: int = 1,
    ) -> None:
        super().__init__()
        self.num_output = int(num_output)
        self.input_size = int(input_size)
        self.bias_term = bool(bias_term)
        self.axis = int(axis)
        self.transpose = bool(transpose)
        self.normalize = bool(normalize)
        self.exact_grad = bool(exact_grad)
        self.num_bottoms = int(num_bottoms)
        weight_shape = (
            (self.input_size, self.num_output) if self.transpose else (self.num_output, self.input_size)
        )
        self.set_blob("weight", torch.zeros(weight_shape) if self.num_bottoms == 1 else None)
        self.set_blob(
            "bias", torch.zeros(self.num_output) if self.bias_term and self.num_bottoms == 1 else None
        )

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> InnerProduct:
        ctx.check_bottoms(1, 2, 3)
        ctx.check_tops(1)
        param = layer.inner_product_param
        shape = ctx.bottom_shapes[0]
        axis = canonical_axis(param.axis, len(shape), ctx)
        input_size = math.prod(shape[axis:])
        num_bottoms = len(ctx.bottom_shapes)
        if num_bottoms == 1:
            if param.num_output <= 0:
                raise ctx.error("inner_product_param.num_output must be positive")
            num_output = param.num_output
        else:
            weight_shape = ctx.bottom_shapes[1]
            if not weight_shape:
                raise ctx.error("the weight bottom (bottom 1) must have at least one axis")
            num_output = weight_shape[0]
            if math.prod(weight_shape) != num_output * input_size:
                raise ctx.error(
                    f"the weight bottom has shape {list(weight_shape)}, but num_output = its first dim "
                    f"({num_output}) times the input size ({input_size}) is {num_output * input_size} values"
                )
            if num_bottoms == 2 and param.bias_term:
                raise ctx.error(
                    "with the weight as a bottom and bias_term: true, Caffe reads a bias blob it never "
                    "creates; give the bias as a third bottom or set bias_term: false"
                )
            if num_bottoms == 3 and param.bias_term and math.prod(ctx.bottom_shapes[2]) != num_output:
                raise ctx.error(
                    f"the bias bottom has shape {list(ctx.bottom_shapes[2])}, expected {num_output} values"
                )
        module = cls(
            num_output,
            input_size,
            bias_term=param.bias_term,
            axis=param.axis,
            transpose=param.transpose,
            normalize=param.normalize,
            num_bottoms=num_bottoms,
        )
        where = f"layer '{layer.name}'"
        if module.weight is not None:
            module.set_blob("weight", fill(tuple(module.weight.shape), param.weight_filler, where))
        if module.bias is not None:
            module.set_blob("bias", fill((num_output,), param.bias_filler, where))
        return module

    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name or '?'}' (InnerProduct): {message}")

    def top_shape(self, shape: Shape) -> Shape:
        """``shape[:axis] + (num_output,)``, checking that ``count(axis)`` is the layer's input size."""
        if not -len(shape) <= self.axis < len(shape):
            raise self._error(f"axis {self.axis} is out of range for a {len(shape)}-D bottom")
        axis = self.axis % len(shape)
        if math.prod(shape[axis:]) != self.input_size:
            raise self._error(
                f"input size incompatible with inner product parameters: the bottom {list(shape)} has "
                f"{math.prod(shape[axis:])} values from axis {axis}, the weight expects {self.input_size}"
            )
        return (*shape[:axis], self.num_output)

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        top = self.top_shape(tuple(x.shape))
        flat = x.reshape(*top[:-1], self.input_size)
        if weight is None:
            weight = self.weight
            bias = self.bias
            if self.normalize:
                if self.exact_grad:
                    weight = normalized_rows(weight, self.num_output)
                else:
                    normalize_rows_(weight, self.num_output)
        else:
            bias = bias if self.bias_term else None
        if self.transpose:
            matrix = weight.reshape(self.input_size, self.num_output).t()
        else:
            matrix = weight.reshape(self.num_output, self.input_size)
        return F.linear(flat, matrix, None if bias is None else bias.reshape(self.num_output))

    def extra_repr(self) -> str:
        parts = [f"{self.input_size} -> {self.num_output}", f"axis={self.axis}"]
        if self.transpose:
            parts.append("transpose=True")
        if self.normalize:
            parts.append(f"normalize=True, exact_grad={self.exact_grad}")
        base = super().extra_repr()
        return ", ".join(([base] if base else []) + parts)
