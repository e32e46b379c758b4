"""NormFace's layers (Wang et al. 2017, happynear/caffe-windows and NormFace's configs):
``Normalize`` (feature L2 normalization), ``InnerDistance`` (distances to normalized class centers)
and ``ChannelScale`` (the learned scale after normalization).

Each class follows the fork's CPU source (``src/caffe/layers/<file>``, commit 967eedf2); where the
CPU path is unfinished (``ChannelScale``'s ``global_scale``) the ``.cu`` file is followed and the
docstring says so.
"""

from __future__ import annotations

import math

import torch

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.face.common import (
    check_labels,
    check_legacy,
    count_of,
    int_labels,
    legacy_shape,
)
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

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

    family = "NormFace"

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
        check_legacy(ctx, ctx.bottom_shapes[0])
        param = layer.normalize_param
        if param.normalize_type not in ("L2", "L1"):
            raise ctx.error(f'normalize_type must be "L2" or "L1", got "{param.normalize_type}"')
        return cls(param.normalize_type, param.bp_norm, len(layer.top) == 2, param.fix_gradient)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x4 = x.reshape(legacy_shape(x.shape))
        if self.normalize_type == "L2":
            norm = x4.square().sum(dim=1, keepdim=True).add(1e-6).sqrt()
        else:
            norm = x4.abs().sum(dim=1, keepdim=True).add(1e-6)
        y = x4 / norm
        if not self.output_norm:
            return y
        return y, norm if self.bp_norm else norm.detach()


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

    family = "NormFace"

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
        check_legacy(ctx, x_shape)
        n, c, h, w = legacy_shape(x_shape)
        if not s_shape or s_shape[0] != n:
            raise ctx.error(
                f"the scale bottom {list(s_shape)} must have the batch size {n} of {list(x_shape)}"
            )
        if count_of(s_shape) != n * h * w:
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
        n, c, h, w = legacy_shape(x.shape)
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

    family = "NormFace"

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
        in_features = count_of(x_shape, axis)
        num_bottoms = len(layer.bottom)
        if p.update_center_only and num_bottoms != 3:
            raise ctx.error(
                "update_center_only needs three bottoms (data, centers, label): with fewer the fork "
                "reads the labels from the wrong blob"
            )
        if num_bottoms >= 2:
            centers = ctx.bottom_shapes[1]
            if not centers or count_of(centers, 1) != in_features:
                raise ctx.error(
                    f"the centers bottom {list(centers)} must hold rows of {in_features} values "
                    f"(the data is flattened from axis {axis})"
                )
            if num_bottoms == 3:
                check_labels(ctx, ctx.bottom_shapes[2], count_of(x_shape, 0, axis))
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
            labels = int_labels(bottoms[1], rows.shape[0])
            y = _distances(rows, centers.detach(), self.distance_type)
            if centers.requires_grad and torch.is_grad_enabled():
                own = torch.zeros_like(y).scatter_(1, labels.unsqueeze(1), 1.0)
                to_centers = _distances(rows.detach(), centers, self.distance_type)
                y = y + own * (to_centers - to_centers.detach())
        else:
            y = _distances(rows, centers, self.distance_type)
        return y.reshape(*outer, centers.shape[0])
