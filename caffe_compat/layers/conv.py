"""Caffe's Convolution and Deconvolution layers (``base_conv_layer.cpp``, ``conv_layer.cpp``,
``deconv_layer.cpp``, happynear/caffe-windows).

Caffe rules reproduced:

* Geometry from ``kernel_size``/``pad``/``stride``/``dilation`` given once or once per spatial axis,
  or (2-D only) ``kernel_h/w``, ``pad_h/w``, ``stride_h/w``, never both forms; stride defaults to 1,
  pad to 0, dilation to 1.
* ``axis`` is the channel axis; the axes before it are independent inputs (flattened into the
  batch), the axes after it are spatial (1, 2 or 3 of them here: ``F.conv1d/2d/3d``).
* Convolution output ``(i + 2p - ext) / s + 1`` with C's truncating division, ``ext = d (k - 1) + 1``:
  a kernel that overhangs the padded input by less than a stride still gives one output, the
  overhang reading zeros as Caffe's ``im2col`` does.
* Deconvolution output ``s (i - 1) + ext - 2p`` plus the fork's ``shape_offset`` (PyTorch's
  ``output_padding``; it must be smaller than the stride, or Caffe's ``col2im`` reads past its buffer).
* Blobs: ``weight`` of shape (O, I/g, k...) for Convolution and (I, O/g, k...) for Deconvolution
  (the layouts of ``F.conv*`` and ``F.conv_transpose*``), optional ``bias`` (O,), initialised by
  ``weight_filler``/``bias_filler``.
* Several bottoms are convolved with the same blobs, one top each (all bottoms of one shape).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_CONV: dict[int, Callable[..., torch.Tensor]] = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV: dict[int, Callable[..., torch.Tensor]] = {
    1: F.conv_transpose1d,
    2: F.conv_transpose2d,
    3: F.conv_transpose3d,
}


def _c_div(a: int, b: int) -> int:
    """C's integer division (truncates toward zero)."""
    q = abs(a) // b
    return q if a >= 0 else -q


def _repeated(
    ctx: BuildContext,
    p: caffe_pb2.ConvolutionParameter,
    name: str,
    hw: str | None,
    num_spatial: int,
    default: int | None,
) -> list[int]:
    """A repeated geometry field (or its ``<hw>_h``/``<hw>_w`` form) expanded to one value per spatial
    axis, with ``base_conv_layer.cpp``'s checks; ``default`` None means the field is required."""
    values = list(getattr(p, name))
    if hw is not None and (p.HasField(f"{hw}_h") or p.HasField(f"{hw}_w")):
        if num_spatial != 2:
            raise ctx.error(f"{hw}_h & {hw}_w can only be used for 2D convolution")
        if values:
            raise ctx.error(f"either {name} or {hw}_h/w should be specified; not both")
        return [getattr(p, f"{hw}_h"), getattr(p, f"{hw}_w")]
    allowed = (1, num_spatial) if default is None else (0, 1, num_spatial)
    if len(values) not in allowed:
        raise ctx.error(
            f"{name} must be specified once, or once per spatial dimension ({name} specified "
            f"{len(values)} times; {num_spatial} spatial dims)"
        )
    if not values:
        return [default] * num_spatial  # type: ignore[list-item]
    return [values[0] if len(values) == 1 else values[i] for i in range(num_spatial)]


class _BaseConvolution(CaffeLayer):
    """Shared set-up of Convolution and Deconvolution (Caffe's ``BaseConvolutionLayer``)."""

    caffe_blobs = (Blob("weight"), Blob("bias", optional=True))
    transposed: ClassVar[bool] = False

    def __init__(
        self,
        in_channels: int,
        num_output: int,
        kernel_size: Sequence[int],
        stride: Sequence[int] | None = None,
        pad: Sequence[int] | None = None,
        dilation: Sequence[int] | None = None,
        group: int = 1,
        bias_term: bool = True,
        axis: int = 1,
        shape_offset: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.num_spatial = len(kernel_size)
        if self.num_spatial not in _CONV:
            raise LayerError(f"{self.num_spatial} spatial axes: only 1, 2 or 3 are supported")
        n = self.num_spatial
        self.in_channels = int(in_channels)
        self.num_output = int(num_output)
        self.kernel_size = tuple(int(k) for k in kernel_size)
        self.stride = tuple(int(s) for s in stride) if stride is not None else (1,) * n
        self.pad = tuple(int(p) for p in pad) if pad is not None else (0,) * n
        self.dilation = tuple(int(d) for d in dilation) if dilation is not None else (1,) * n
        self.group = int(group)
        self.axis = int(axis)
        self.shape_offset = tuple(int(o) for o in shape_offset) if shape_offset else (0,) * n
        problem = self._check()
        if problem:
            raise LayerError(problem)
        self.set_blob("weight", torch.zeros(self.weight_shape()))
        self.set_blob("bias", torch.zeros(self.num_output) if bias_term else None)

    def _check(self) -> str:
        """The first of Caffe's ``LayerSetUp`` checks these settings fail, or ''."""
        n = self.num_spatial
        if any(len(v) != n for v in (self.stride, self.pad, self.dilation, self.shape_offset)):
            return f"stride, pad, dilation and shape_offset need one value per spatial axis ({n})"
        if min(self.kernel_size) <= 0:
            return "filter dimensions must be nonzero"
        if min(self.stride) <= 0:
            return "stride dimensions must be nonzero"
        if min(self.dilation) <= 0:
            return "dilation dimensions must be nonzero"
        if min(self.pad) < 0:
            return "pad must not be negative"
        if self.num_output <= 0:
            return "num_output must be positive"
        if self.group <= 0:
            return "group must be positive"
        if self.in_channels % self.group:
            return f"the input channels ({self.in_channels}) are not a multiple of group ({self.group})"
        if self.num_output % self.group:
            return f"num_output ({self.num_output}) should be a multiple of group ({self.group})"
        if self.transposed:
            for offset, stride in zip(self.shape_offset, self.stride, strict=True):
                if not 0 <= offset < stride:
                    return (
                        f"shape_offset {list(self.shape_offset)} must be smaller than the stride "
                        f"{list(self.stride)} (Caffe's col2im would read past its buffer)"
                    )
        return ""

    def weight_shape(self) -> tuple[int, ...]:
        """Caffe's ``blobs_[0]`` shape: (conv_out_channels, conv_in_channels / group, *kernel)."""
        if self.transposed:
            return (self.in_channels, self.num_output // self.group, *self.kernel_size)
        return (self.num_output, self.in_channels // self.group, *self.kernel_size)

    def output_spatial(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Caffe's ``compute_output_shape`` for the given input spatial extents."""
        out = []
        for i, size in enumerate(spatial):
            extent = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            if self.transposed:
                out.append(self.stride[i] * (size - 1) + extent - 2 * self.pad[i] + self.shape_offset[i])
            else:
                out.append(_c_div(size + 2 * self.pad[i] - extent, self.stride[i]) + 1)
        if min(out) <= 0:
            raise LayerError(
                f"kernel {list(self.kernel_size)}, stride {list(self.stride)}, pad {list(self.pad)}, "
                f"dilation {list(self.dilation)} give an empty output {out} for spatial input {list(spatial)}"
                + ("" if self.transposed else " (the kernel is larger than the padded input)")
            )
        return tuple(out)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> _BaseConvolution:
        if not layer.bottom:
            raise ctx.error("needs at least one bottom blob")
        if len(layer.top) != len(layer.bottom):
            raise ctx.error(
                f"needs one top per bottom, got {len(layer.bottom)} bottoms and {len(layer.top)} tops"
            )
        shape = ctx.bottom_shapes[0]
        for other in ctx.bottom_shapes[1:]:
            if tuple(other) != tuple(shape):
                raise ctx.error(f"all inputs must have the same shape, got {list(shape)} and {list(other)}")
        p = layer.convolution_param
        axis = canonical_axis(p.axis, len(shape), ctx)
        num_spatial = len(shape) - axis - 1
        if num_spatial not in _CONV:
            raise ctx.error(
                f"input of shape {list(shape)} with channel axis {axis} has {num_spatial} spatial axes; "
                "only 1, 2 or 3 are supported"
            )
        kernel = _repeated(ctx, p, "kernel_size", "kernel", num_spatial, None)
        stride = _repeated(ctx, p, "stride", "stride", num_spatial, 1)
        pad = _repeated(ctx, p, "pad", "pad", num_spatial, 0)
        dilation = _repeated(ctx, p, "dilation", None, num_spatial, 1)
        offset = None
        if cls.transposed and p.shape_offset:
            if len(p.shape_offset) != num_spatial:
                raise ctx.error(f"shape_offset needs one value per spatial dimension ({num_spatial})")
            offset = list(p.shape_offset)
        try:
            module = cls(
                shape[axis], p.num_output, kernel, stride, pad, dilation, p.group, p.bias_term, axis, offset
            )
            module.output_spatial(shape[axis + 1 :])
        except LayerError as exc:
            raise ctx.error(str(exc)) from None
        module.set_blob("weight", fill(module.weight_shape(), p.weight_filler, ctx.layer.name))
        if p.bias_term:
            module.set_blob("bias", fill((module.num_output,), p.bias_filler, ctx.layer.name))
        return module

    # -- forward -------------------------------------------------------------------------------
    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _convolve_one(self, x: torch.Tensor) -> torch.Tensor:
        axis = self.axis if self.axis >= 0 else self.axis + x.dim()
        if x.dim() - axis - 1 != self.num_spatial or x.shape[axis] != self.in_channels:
            raise LayerError(
                f"layer '{self.caffe_name}' ({self.caffe_type}): input of shape {list(x.shape)} does not fit "
                f"{self.in_channels} channels at axis {axis} and {self.num_spatial} spatial axes"
            )
        if axis == 1:
            return self._compute(x)
        lead = tuple(x.shape[:axis])
        y = self._compute(x.reshape((math.prod(lead), *x.shape[axis:])))
        return y.reshape((*lead, *y.shape[1:]))

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        tops = tuple(self._convolve_one(x) for x in bottoms)
        return tops[0] if len(tops) == 1 else tops

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        tops = []
        for shape in bottom_shapes:
            axis = self.axis if self.axis >= 0 else self.axis + len(shape)
            out = self.output_spatial(shape[axis + 1 :])
            tops.append((*shape[:axis], self.num_output, *out))
        return tops

    def extra_repr(self) -> str:
        details = (
            f"{self.in_channels}, {self.num_output}, kernel={list(self.kernel_size)}, "
            f"stride={list(self.stride)}, pad={list(self.pad)}, dilation={list(self.dilation)}, "
            f"group={self.group}, bias={self.bias is not None}"
        )
        base = super().extra_repr()
        return f"{base}, {details}" if base else details


@register("Convolution")
class Convolution(_BaseConvolution):
    """Caffe's Convolution (``conv_layer.cpp``): ``F.conv{1,2,3}d`` with Caffe's geometry and blobs."""

    family = "conv"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 7 } } }
layer { name: "conv" type: "Convolution" bottom: "x" top: "y"
        convolution_param { num_output: 6 kernel_size: 3 pad: 1 stride: 2 group: 2
                            weight_filler { type: "xavier" } bias_filler { type: "constant" value: 0.1 } } }
"""

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        spatial = x.shape[2:]
        extra = []
        for i, size in enumerate(spatial):
            extent = self.dilation[i] * (self.kernel_size[i] - 1) + 1
            extra.append(max(0, extent - (int(size) + 2 * self.pad[i])))
        if any(extra):
            # Caffe's truncating output size kept one window overhanging the padded input: im2col
            # reads zeros there.
            x = F.pad(x, [v for e in reversed(extra) for v in (0, e)])
        conv = _CONV[self.num_spatial]
        return conv(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group)


@register("Deconvolution")
class Deconvolution(_BaseConvolution):
    """Caffe's Deconvolution (``deconv_layer.cpp``): ``F.conv_transpose{1,2,3}d``, the backward of a
    convolution, with output ``s (i - 1) + d (k - 1) + 1 - 2p`` (+ ``shape_offset``)."""

    family = "conv"

    transposed = True
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 7 } } }
layer { name: "deconv" type: "Deconvolution" bottom: "x" top: "y"
        convolution_param { num_output: 6 kernel_size: 4 pad: 1 stride: 2 group: 2
                            weight_filler { type: "bilinear" } bias_term: false } }
"""

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        deconv = _DECONV[self.num_spatial]
        return deconv(
            x, self.weight, self.bias, self.stride, self.pad, self.shape_offset, self.group, self.dilation
        )
