"""NormFace's ``MovingNormalize`` (happynear/caffe-windows): divides features by a running average
of their L2 norm, kept in a one-value blob.

The fork implements it on the GPU only (``moving_normalize_layer.cu``; its CPU Forward/Backward
are ``NOT_IMPLEMENTED``): this module follows the CUDA semantics on every device.
"""

from __future__ import annotations

import torch

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape
from caffe_compat.layers.face.common import check_legacy, legacy_shape
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

#: Added to each position's sum of squares before the square root (``kernel_channel_sum``).
_EPS = 1e-12


@register("MovingNormalize")
class MovingNormalize(CaffeLayer):
    """``y = x / m`` with ``m`` a running mean feature norm (``moving_normalize_layer.cu``).

    One blob, ``moving_average_norm`` of shape (1,), initialised to -1, a statistic: ``lr_mult``
    and ``decay_mult`` are 0 when the prototxt gives no ``param`` (a given ``lr_mult`` must be 0).
    Every forward (TRAIN and TEST alike: the CUDA code has no phase test) computes the norm over
    channels at each position, ``sqrt(sum_c x^2 + 1e-12)`` (an (N, 1, H, W) map), then ``mean =
    (sum of the first N values of that map) / (N H W)``: Caffe's ``caffe_gpu_dot(num, ...)`` sums
    only N entries, so for H W > 1 it is not the mean norm (reproduced). The blob becomes ``mean``
    while it is negative (the first forward), else ``0.99 blob + 0.01 mean``; the top is ``x *
    (1 / blob)`` and the optional second top (1,) the blob's value.

    Backward (Caffe's): ``dx = dy / blob``, the blob treated as a constant; the second top gets no
    gradient. Deviation: Caffe runs this only on the GPU; here it runs on any device (the CPU path
    follows the CUDA code).
    """

    family = "NormFace"
    fork_gpu_only = True

    caffe_blobs = (Blob("moving_average_norm", learnable=False),)
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "mn" type: "MovingNormalize" bottom: "x" top: "y" top: "norm" }
"""

    moving_average_norm: torch.Tensor

    def __init__(self, output_norm: bool = False) -> None:
        super().__init__()
        self.output_norm = bool(output_norm)
        self.set_blob("moving_average_norm", torch.full((1,), -1.0))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MovingNormalize:
        ctx.check_bottoms(1)
        ctx.check_tops(1, 2)
        shape = ctx.bottom_shapes[0]
        check_legacy(ctx, shape)
        if not shape:
            raise ctx.error("the bottom must have a batch axis")
        if layer.param and layer.param[0].lr_mult != 0:
            raise ctx.error(
                "the moving average norm is a statistic and cannot be learned: its param lr_mult must be 0"
            )
        return cls(len(layer.top) == 2)

    @classmethod
    def param_specs(cls, layer: caffe_pb2.LayerParameter, num_blobs: int) -> list[caffe_pb2.ParamSpec]:
        """Caffe's LayerSetUp adds ``param { lr_mult: 0 decay_mult: 0 }`` when none is given."""
        specs = super().param_specs(layer, num_blobs)
        if num_blobs and not layer.param:
            specs[0].lr_mult, specs[0].decay_mult = 0.0, 0.0
        return specs

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])] + ([(1,)] if self.output_norm else [])

    def _update(self, x: torch.Tensor) -> None:
        """The CUDA forward's update of the blob from this batch's norms."""
        num, channels, height, width = legacy_shape(x.shape)
        spatial = height * width
        blob = self.moving_average_norm
        with torch.no_grad():
            squares = x.detach().reshape(num, channels, spatial).square()
            norms = (squares.sum(dim=1) + _EPS).sqrt()
            mean = norms.reshape(-1)[:num].sum() / (num * spatial)
            mean = mean.to(torch.float64)
            previous = blob.to(torch.float64)
            updated = torch.where(previous < 0, mean, previous * 0.99 + mean * 0.01)
            blob.copy_(updated.to(blob.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self._update(x)
        scale = (1.0 / self.moving_average_norm).to(dtype=x.dtype, device=x.device)
        y = x * scale.detach()
        if self.output_norm:
            return y, self.moving_average_norm.detach().clone().to(x.dtype)
        return y

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, output_norm={self.output_norm}".lstrip(", ")
