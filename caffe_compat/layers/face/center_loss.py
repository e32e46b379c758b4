"""Center loss (Wen et al., ECCV 2016), as carried by happynear/caffe-windows:
``CenterLoss`` pulls each feature towards a learned center of its class.

Its backward is Caffe's hand-written one: the centers' diff does not depend on the loss weight,
so it is reproduced with a ``torch.autograd.Function`` rather than the exact gradient.
"""

from __future__ import annotations

import torch

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.face.common import check_legacy, count_of, int_labels, legacy_shape
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


class _CenterLossFunction(torch.autograd.Function):
    """``value`` (computed outside autograd) with Caffe's backward: x gets ``grad_output *
    x_unit_grad`` (``caffe_scal(top_diff / M)``), the centers ``center_grad`` whatever the top diff
    (Caffe's centers' diff is not scaled by the loss weight)."""

    @staticmethod
    def forward(
        ctx,
        rows: torch.Tensor,
        centers: torch.Tensor,
        value: torch.Tensor,
        x_unit_grad: torch.Tensor,
        center_grad: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(x_unit_grad, center_grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x_unit_grad, center_grad = ctx.saved_tensors
        dx = grad_output * x_unit_grad if ctx.needs_input_grad[0] else None
        dc = center_grad.clone() if ctx.needs_input_grad[1] else None
        return dx, dc, None, None, None


@register("CenterLoss")
class CenterLoss(CaffeLayer):
    """Center loss (``center_loss_layer.cpp``, happynear/caffe-windows commit 967eedf2).

    Bottoms (x, label); one top, the loss; one blob, the centers ``(num_output, K)`` filled by
    ``center_filler``, with ``K = count(axis)`` of x. Row i of x is the i-th run of K values
    (``M = num`` rows; Caffe reads only the first ``M * K`` values of x). With ``d_i = x_i -
    c_{y_i}``: ``distance_type`` "L2" gives ``sum |d_i|^2 / (2 M)``, "L1" ``sum |d_i|_1 / M``.

    Backward (Caffe's): x gets ``d_i * top_diff / M`` (``sign(d_i)`` for L1); center j gets
    ``count_j / (count_j + 1) * sum_{i: y_i = j} (c_j - x_i)`` (``-sign(d_i)`` for L1), **not**
    scaled by the top diff. Caffe's L1 backward turns ``d`` into ``sign(d)`` only inside the
    centers' branch, which runs only when the centers learn: with ``param { lr_mult: 0 }`` the
    centers get no diff and x gets the L2-style ``d_i * top_diff / M`` even for L1, reproduced
    here (``centers_learn``).

    Unlike other loss layers its top gets **no** default ``loss_weight`` (its LayerSetUp never
    calls ``LossLayer::LayerSetUp``): ``default_loss_weight = 0``. Without one its top weighs 0
    in the net's loss, and x gets a zero diff while the centers still get theirs when a backward
    runs (Caffe's ``force_backward``).
    """

    family = "metric loss"

    is_loss = True
    default_loss_weight = 0.0
    caffe_blobs = (Blob("centers"),)
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 3 dim: 2 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 5 } } }
layer { name: "loss" type: "CenterLoss" bottom: "x" bottom: "label" top: "loss" loss_weight: 0.01
  center_loss_param { num_output: 4 center_filler { type: "gaussian" std: 0.5 } } }
"""

    centers: torch.nn.Parameter

    def __init__(
        self,
        num_output: int,
        in_features: int,
        num: int,
        distance_type: str = "L2",
        centers_learn: bool = True,
        centers: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        if distance_type not in ("L1", "L2"):
            raise ValueError(f"distance_type must be L1 or L2, got {distance_type!r}")
        self.num_output = int(num_output)
        self.in_features = int(in_features)
        self.num = int(num)
        self.distance_type = distance_type
        self.centers_learn = bool(centers_learn)
        if centers is None:
            centers = torch.zeros(self.num_output, self.in_features)
        self.set_blob("centers", centers)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> CenterLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        p = layer.center_loss_param
        x_shape, label_shape = ctx.bottom_shapes
        if not x_shape:
            raise ctx.error("the data bottom must have a batch axis")
        check_legacy(ctx, label_shape, "the label bottom")
        _, c, h, w = legacy_shape(label_shape)
        if (c, h, w) != (1, 1, 1):
            raise ctx.error(f"the label bottom must hold one label per sample, got shape {list(label_shape)}")
        if not label_shape or label_shape[0] != x_shape[0]:
            raise ctx.error(
                f"the data and label should have the same first dimension, got {list(x_shape)} and "
                f"{list(label_shape)}"
            )
        if p.distance_type not in ("L1", "L2"):
            raise ctx.error(f"distance_type must be L1 or L2, got {p.distance_type!r}")
        if p.num_output <= 0:
            raise ctx.error("center_loss_param.num_output must be positive")
        axis = canonical_axis(p.axis, len(x_shape), ctx)
        in_features = count_of(x_shape, axis)
        num = x_shape[0]
        if num * in_features > count_of(x_shape):
            raise ctx.error(
                f"axis {p.axis} makes rows of {in_features} values, but {num} of them overrun the "
                f"bottom of shape {list(x_shape)}"
            )
        centers = fill((p.num_output, in_features), p.center_filler, f"layer '{layer.name}'")
        centers_learn = not (layer.param and layer.param[0].lr_mult == 0)
        return cls(p.num_output, in_features, num, p.distance_type, centers_learn, centers)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        m, k = self.num, self.in_features
        rows = x.reshape(-1)[: m * k].reshape(m, k)
        labels = int_labels(label, m)
        centers = self.centers
        with torch.no_grad():
            distance = rows.detach() - centers.detach().to(rows.dtype)[labels]
            if self.distance_type == "L1":
                loss = distance.abs().sum() / m
            else:
                loss = distance.square().sum() / m / 2
        if not (torch.is_grad_enabled() and (rows.requires_grad or centers.requires_grad)):
            return loss
        with torch.no_grad():
            signs = torch.sign(distance) if self.distance_type == "L1" else distance
            counts = torch.bincount(labels, minlength=self.num_output).to(rows.dtype)
            variation = torch.zeros(self.num_output, k, dtype=rows.dtype, device=rows.device)
            variation.index_add_(0, labels, -signs)
            center_grad = variation * (counts / (counts + 1.0)).unsqueeze(1)
            if not self.centers_learn:
                center_grad.zero_()
            x_unit_grad = (signs if self.centers_learn else distance) / m
        return _CenterLossFunction.apply(rows, centers, loss, x_unit_grad, center_grad.to(centers.dtype))

    def extra_repr(self) -> str:
        text = f"num_output={self.num_output}, distance_type={self.distance_type!r}"
        return f"{super().extra_repr()}, {text}".lstrip(", ")
