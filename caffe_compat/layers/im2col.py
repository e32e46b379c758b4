"""Caffe's ``Im2col`` layer (``im2col_layer.cpp``) and the happynear/caffe-windows ``Local``
(locally connected) layer (``local_layer.cpp``), both on Caffe's ``im2col`` layout: column channel
``c * prod(kernel) + (kernel offset, row-major)``, zeros outside the input.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.conv import _c_div, _repeated
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


def output_size(
    spatial: Sequence[int],
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
) -> tuple[int, ...]:
    """Caffe's ``(i + 2p - (d (k - 1) + 1)) / s + 1`` per spatial axis, with C's truncating division."""
    return tuple(
        _c_div(int(i) + 2 * p - (d * (k - 1) + 1), s) + 1
        for i, k, s, p, d in zip(spatial, kernel, stride, pad, dilation, strict=True)
    )


def im2col(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    pad: Sequence[int],
    dilation: Sequence[int],
) -> torch.Tensor:
    """Caffe's ``im2col`` of every image of ``x`` (B, C, *spatial): (B, C * prod(kernel), *out).

    Column channel ``c * prod(kernel) + j`` holds kernel offset ``j`` (row-major over the kernel
    axes) of input channel ``c``; positions outside the input read zero. Built from zero padding and
    strided slices, so autograd's backward is Caffe's ``col2im`` (overlaps summed) and any number
    of spatial axes works.
    """
    spatial = [int(s) for s in x.shape[2:]]
    out = output_size(spatial, kernel, stride, pad, dilation)
    pads: list[int] = []
    for size, k, s, p, d, o in zip(spatial, kernel, stride, pad, dilation, out, strict=True):
        reach = (o - 1) * s + d * (k - 1) + 1  # padded extent the windows read
        pads = [p, max(reach - size - p, 0), *pads]
    padded = F.pad(x, pads) if any(pads) else x
    taps = []
    for offsets in itertools.product(*(range(k) for k in kernel)):
        index: list[Any] = [slice(None), slice(None)]
        for j, s, d, o in zip(offsets, stride, dilation, out, strict=True):
            start = j * d
            index.append(slice(start, start + (o - 1) * s + 1, s))
        taps.append(padded[tuple(index)])
    cols = torch.stack(taps, dim=2)
    return cols.reshape(x.shape[0], x.shape[1] * len(taps), *out)


@register("Im2col")
class Im2col(CaffeLayer):
    """Caffe's Im2col (``im2col_layer.cpp``): the columns a convolution would multiply.

    ``convolution_param``'s ``kernel_size``/``kernel_h``/``kernel_w``, ``stride``, ``pad``,
    ``dilation`` and ``axis`` (the channel axis; the axes before it are independent images) as for
    Convolution. Top: the bottom's shape with channels ``C * prod(kernel)`` and spatial extents
    ``(i + 2p - (d (k - 1) + 1)) / s + 1`` (C's truncating division). Backward is ``col2im``, the
    exact gradient. ``force_nd_im2col`` does not change the numbers and is ignored.
    """

    family = "conv"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "cols" type: "Im2col" bottom: "x" top: "y"
        convolution_param { kernel_h: 2 kernel_w: 3 stride: 2 pad: 1 } }
"""

    def __init__(
        self,
        kernel: Sequence[int],
        stride: Sequence[int],
        pad: Sequence[int],
        dilation: Sequence[int],
        axis: int = 1,
    ) -> None:
        super().__init__()
        self.kernel = tuple(int(k) for k in kernel)
        self.stride = tuple(int(s) for s in stride)
        self.pad = tuple(int(p) for p in pad)
        self.dilation = tuple(int(d) for d in dilation)
        self.axis = int(axis)
        if min(self.kernel) <= 0:
            raise LayerError("filter dimensions must be nonzero")
        if min(self.stride) <= 0:
            raise LayerError("stride dimensions must be nonzero")

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Im2col:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        shape = tuple(int(d) for d in ctx.bottom_shapes[0])
        p = layer.convolution_param
        axis = canonical_axis(p.axis, len(shape), ctx)
        num_spatial = len(shape) - axis - 1
        if num_spatial < 1:
            raise ctx.error(
                f"the bottom of shape {list(shape)} has no spatial axis after the channel axis {axis}"
            )
        kernel = _repeated(ctx, p, "kernel_size", "kernel", num_spatial, None)
        stride = _repeated(ctx, p, "stride", "stride", num_spatial, 1)
        pad = _repeated(ctx, p, "pad", "pad", num_spatial, 0)
        dilation = _repeated(ctx, p, "dilation", None, num_spatial, 1)
        try:
            module = cls(kernel, stride, pad, dilation, axis)
        except LayerError as exc:
            raise ctx.error(str(exc)) from None
        out = output_size(shape[axis + 1 :], kernel, stride, pad, dilation)
        if min(out) <= 0:
            raise ctx.error(
                f"kernel {kernel}, stride {stride}, pad {pad}, dilation {dilation} give an empty output "
                f"{list(out)} for the spatial input {list(shape[axis + 1 :])}"
            )
        return module

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shape = tuple(bottom_shapes[0])
        out = output_size(shape[self.axis + 1 :], self.kernel, self.stride, self.pad, self.dilation)
        return [(*shape[: self.axis], shape[self.axis] * math.prod(self.kernel), *out)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() - self.axis - 1 != len(self.kernel):
            raise LayerError(
                f"layer '{self.caffe_name}' (Im2col): input of shape {list(x.shape)} does not have "
                f"{len(self.kernel)} spatial axes after axis {self.axis}"
            )
        lead = tuple(x.shape[: self.axis])
        images = x.reshape(math.prod(lead), *x.shape[self.axis :])
        cols = im2col(images, self.kernel, self.stride, self.pad, self.dilation)
        return cols.reshape(*lead, *cols.shape[1:])

    def extra_repr(self) -> str:
        text = (
            f"kernel={list(self.kernel)}, stride={list(self.stride)}, pad={list(self.pad)}, "
            f"dilation={list(self.dilation)}, axis={self.axis}"
        )
        return f"{super().extra_repr()}, {text}".lstrip(", ")


class _OverwritingDiff(torch.autograd.Function):
    """The identity on a parameter whose backward first clears the parameter's accumulated ``.grad``:
    Caffe's ``LocalLayer::Backward_cpu`` overwrites (memsets) its blobs' diffs instead of adding to
    them, so only the last backward since the diffs were cleared counts (e.g. with ``iter_size``)."""

    @staticmethod
    def forward(ctx: Any, param: torch.Tensor) -> torch.Tensor:
        ctx.param = param
        return param.view_as(param)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        accumulated = ctx.param.grad
        if accumulated is not None:
            accumulated.zero_()
        return grad


def _overwriting(param: torch.Tensor | None) -> torch.Tensor | None:
    """``param`` through ``_OverwritingDiff`` when backward will give it a gradient."""
    if not isinstance(param, torch.nn.Parameter) or not (param.requires_grad and torch.is_grad_enabled()):
        return param
    return _OverwritingDiff.apply(param)


@register("Local")
class Local(CaffeLayer):
    """The fork's locally connected layer (``local_layer.cpp``): a convolution whose filter differs
    at every output position.

    ``local_param``: ``num_output`` M, ``kernel_size`` k (square), ``stride`` (1), ``pad`` (0),
    ``bias_term`` (true), ``weight_filler``, ``bias_filler``. Output ``(H + 2p - k) / s + 1`` per
    spatial axis; blobs ``weight`` (M, 1, C k k, L) in im2col row order and ``bias`` (1, 1, M, L),
    with ``L = Ho Wo``: ``y[n, m, l] = sum_j weight[m, 0, j, l] col[n, j, l] + bias[0, 0, m, l]``.
    The input shape is fixed at set-up (4-D, at least k high and wide). Backward: the exact
    gradient, except that Caffe overwrites the blobs' diffs rather than adding to them, which is
    reproduced: a second backward before the gradients are cleared replaces the first's parameter
    gradient (two uses of one shared blob within a single backward are summed by autograd).
    """

    family = "conv"

    caffe_blobs = (Blob("weight"), Blob("bias", optional=True))
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 6 dim: 7 } } }
layer { name: "local" type: "Local" bottom: "x" top: "y"
        local_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1
                      weight_filler { type: "gaussian" std: 0.1 }
                      bias_filler { type: "constant" value: 0.2 } } }
"""

    def __init__(
        self,
        input_shape: Sequence[int],
        num_output: int,
        kernel_size: int,
        stride: int = 1,
        pad: int = 0,
        bias_term: bool = True,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.num_output = int(num_output)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.pad = int(pad)
        if len(self.input_shape) != 4:
            raise LayerError(
                f"the bottom must be 4-D (num, channels, height, width), got {list(input_shape)}"
            )
        if self.kernel_size <= 0:
            raise LayerError("kernel_size must be positive")
        if self.num_output <= 0:
            raise LayerError("num_output must be positive")
        if self.stride <= 0:
            raise LayerError("stride must be positive")
        _, channels, height, width = self.input_shape
        if height < self.kernel_size or width < self.kernel_size:
            raise LayerError(
                f"the input ({height} x {width}) is smaller than the kernel ({self.kernel_size})"
            )
        self.out_size = (
            (height + 2 * self.pad - self.kernel_size) // self.stride + 1,
            (width + 2 * self.pad - self.kernel_size) // self.stride + 1,
        )
        positions = self.out_size[0] * self.out_size[1]
        taps = channels * self.kernel_size * self.kernel_size
        self.set_blob("weight", torch.zeros(self.num_output, 1, taps, positions))
        self.set_blob("bias", torch.zeros(1, 1, self.num_output, positions) if bias_term else None)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Local:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        p = layer.local_param
        try:
            module = cls(ctx.bottom_shapes[0], p.num_output, p.kernel_size, p.stride, p.pad, p.bias_term)
        except LayerError as exc:
            raise ctx.error(str(exc)) from None
        where = f"layer '{layer.name}'"
        module.set_blob("weight", fill(tuple(module.weight.shape), p.weight_filler, where))
        if module.bias is not None:
            module.set_blob("bias", fill(tuple(module.bias.shape), p.bias_filler, where))
        return module

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(int(bottom_shapes[0][0]), self.num_output, *self.out_size)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.input_shape[1:]:
            raise LayerError(
                f"layer '{self.caffe_name}' (Local): the input shape {list(x.shape)} differs from the "
                f"set-up shape {list(self.input_shape)} the weights were made for"
            )
        k = self.kernel_size
        cols = im2col(x, (k, k), (self.stride,) * 2, (self.pad,) * 2, (1, 1))
        cols = cols.reshape(x.shape[0], self.weight.shape[2], self.weight.shape[3])
        weight = _overwriting(self.weight)
        y = torch.einsum("njl,mjl->nml", cols, weight.reshape(weight.shape[0], weight.shape[2], -1))
        bias = _overwriting(self.bias)
        if bias is not None:
            y = y + bias.reshape(1, self.num_output, -1)
        return y.reshape(x.shape[0], self.num_output, *self.out_size)

    def extra_repr(self) -> str:
        text = (
            f"{self.input_shape[1]}, {self.num_output}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, pad={self.pad}, bias={self.bias is not None}"
        )
        return f"{super().extra_repr()}, {text}".lstrip(", ")
