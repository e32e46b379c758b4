"""Embedding losses on pairs and triplets of feature vectors: ``ContrastiveLoss``
(contrastive_loss_layer.cpp, BVLC's siamese loss in the fork's four-bottom form) and ``TripletLoss``
(the fork's triplet_loss_layer.cpp by Yuanyang).

Both follow the CPU code. Their hand-written backward passes (the ``1e-4`` in the contrastive
distance, the ``1e-9`` cut of the triplet hinge) are reproduced with ``torch.autograd.Function``.
"""

from __future__ import annotations

import torch

from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.face.common import check_legacy, legacy_shape
from caffe_compat.layers.loss import _count, _loss_checks
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


def _check_vectors(ctx: BuildContext, indices: tuple[int, ...]) -> None:
    """The feature bottoms are (N, C[, 1, 1]) with equal N and C (legacy accessors)."""
    first = ctx.bottom_shapes[indices[0]]
    for index in indices:
        shape = ctx.bottom_shapes[index]
        check_legacy(ctx, shape, f"bottom {index}")
        num, channels, height, width = legacy_shape(shape)
        if (height, width) != (1, 1):
            raise ctx.error(f"bottom {index} must have height and width 1, got shape {list(shape)}")
        if (num, channels) != legacy_shape(first)[:2]:
            raise ctx.error(
                f"bottom {index} {list(shape)} must have the num and channels of bottom {indices[0]} "
                f"{list(first)}"
            )


# -- ContrastiveLoss -----------------------------------------------------------------------------
class _ContrastiveFunction(torch.autograd.Function):
    """contrastive_loss_layer.cpp (CPU) on ``(N, C)`` features and a boolean ``similar``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        a: torch.Tensor,
        b: torch.Tensor,
        similar: torch.Tensor,
        margin: float,
        legacy: bool,
    ) -> torch.Tensor:
        diff = a - b
        dist_sq = (diff * diff).sum(dim=1)
        if legacy:
            dissimilar = (margin - dist_sq).clamp_min(0.0)
        else:
            dissimilar = (margin - torch.sqrt(dist_sq)).clamp_min(0.0) ** 2
        loss = torch.where(similar, dist_sq, dissimilar).sum() / a.shape[0] / 2
        # the per-pair factor of the diff in Caffe's backward, before +-top_diff / N
        if legacy:
            mdist, factor = margin - dist_sq, torch.full_like(dist_sq, -1.0)
        else:
            dist = torch.sqrt(dist_sq)
            mdist = margin - dist
            factor = -mdist / (dist + 1e-4)
        factor = torch.where(similar, 1.0, torch.where(mdist > 0, factor, 0.0))
        ctx.save_for_backward(diff, factor)
        return loss

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        diff, factor = ctx.saved_tensors
        unit = diff * factor.unsqueeze(1) * (grad / diff.shape[0])
        grad_a = unit if ctx.needs_input_grad[0] else None
        grad_b = -unit if ctx.needs_input_grad[1] else None
        return grad_a, grad_b, None, None, None


@register("ContrastiveLoss")
class ContrastiveLoss(CaffeLayer):
    """The siamese contrastive loss (contrastive_loss_layer.cpp, CPU path).

    Bottoms: features ``a`` and ``b`` (N, C[, 1, 1]) and, in the fork's form, two label blobs: a
    pair is similar when ``static_cast<int>`` of its two labels agree. With three bottoms (BVLC's
    form, which the fork itself refuses) the third is BVLC's similarity: similar when it truncates
    to a non-zero integer. With ``d^2 = |a - b|^2``: ``loss = sum [similar d^2 + dissimilar
    max(margin - d, 0)^2] / (2N)`` (``legacy_version``: ``max(margin - d^2, 0)``); ``margin``
    default 1. Backward (Caffe's): ``+-top_diff / N`` times ``a - b`` for similar pairs, times
    ``-(margin - d) / (d + 1e-4)`` (legacy: ``-1``) for dissimilar pairs inside the margin, 0
    otherwise; not the exact gradient in the non-legacy form (the ``1e-4``). The labels get no
    gradient. The fork's CUDA backward differs for ``legacy_version`` (it drops the factor
    ``a - b``): the CPU code, which produced the goldens, is followed on every device.
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 6 dim: 5 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 6 dim: 5 } } }
layer { name: "la" type: "Input" top: "la" input_param { shape { dim: 6 } } }
layer { name: "lb" type: "Input" top: "lb" input_param { shape { dim: 6 } } }
layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "la" bottom: "lb" top: "loss"
        contrastive_loss_param { margin: 2 } }
"""

    def __init__(self, margin: float = 1.0, legacy_version: bool = False) -> None:
        super().__init__()
        self.margin = float(margin)
        self.legacy_version = bool(legacy_version)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ContrastiveLoss:
        ctx.check_bottoms(3, 4)
        ctx.check_tops(1)
        _loss_checks(ctx)
        shapes = ctx.bottom_shapes
        for index in (0, 1):
            check_legacy(ctx, shapes[index], f"bottom {index}")
            if legacy_shape(shapes[index])[2:] != (1, 1):
                raise ctx.error(
                    f"bottom {index} must have height and width 1, got shape {list(shapes[index])}"
                )
        if legacy_shape(shapes[0])[1] != legacy_shape(shapes[1])[1] or _count(shapes[0]) != _count(shapes[1]):
            raise ctx.error(f"the features {list(shapes[0])} and {list(shapes[1])} must have the same shape")
        check_legacy(ctx, shapes[2], "bottom 2")
        if legacy_shape(shapes[2])[1:] != (1, 1, 1):
            raise ctx.error(f"bottom 2 must have channels, height and width 1, got shape {list(shapes[2])}")
        num = shapes[0][0]
        for index in range(2, len(shapes)):
            if _count(shapes[index]) < num:
                raise ctx.error(f"bottom {index} {list(shapes[index])} must hold one value per pair ({num})")
        param = layer.contrastive_loss_param
        return cls(param.margin, param.legacy_version)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(
        self, a: torch.Tensor, b: torch.Tensor, label_a: torch.Tensor, label_b: torch.Tensor | None = None
    ) -> torch.Tensor:
        num = a.shape[0]
        first = label_a.detach().reshape(-1)[:num].long()
        similar = first != 0 if label_b is None else first == label_b.detach().reshape(-1)[:num].long()
        return _ContrastiveFunction.apply(
            a.reshape(num, -1), b.reshape(num, -1), similar, self.margin, self.legacy_version
        )

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"margin={self.margin}", f"legacy_version={self.legacy_version}"]
        return ", ".join(p for p in parts if p)


# -- TripletLoss ---------------------------------------------------------------------------------
class _TripletFunction(torch.autograd.Function):
    """triplet_loss_layer.cpp (CPU): ``sum max(margin + |a-p|^2 - |a-n|^2, 0) / (2N)``; Caffe's
    backward ``-(p - n)``, ``-(a - p)``, ``+(a - n)`` times ``top_diff / N`` for a, p, n, zero for
    the triplets whose hinge is below 1e-9."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        a: torch.Tensor,
        p: torch.Tensor,
        n: torch.Tensor,
        margin: float,
    ) -> torch.Tensor:
        diff_ap, diff_an = a - p, a - n
        hinge = (margin + (diff_ap * diff_ap).sum(dim=1) - (diff_an * diff_an).sum(dim=1)).clamp_min(0.0)
        active = ~(hinge < 1e-9)
        ctx.save_for_backward(diff_ap, diff_an, p - n, active)
        return hinge.sum() / a.shape[0] / 2

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        diff_ap, diff_an, diff_pn, active = ctx.saved_tensors
        scale = torch.where(active, 1.0, 0.0).to(diff_ap.dtype).unsqueeze(1) * (grad / diff_ap.shape[0])
        grad_a = -diff_pn * scale if ctx.needs_input_grad[0] else None
        grad_p = -diff_ap * scale if ctx.needs_input_grad[1] else None
        grad_n = diff_an * scale if ctx.needs_input_grad[2] else None
        return grad_a, grad_p, grad_n, None


@register("TripletLoss")
class TripletLoss(CaffeLayer):
    """The fork's triplet loss on anchor, positive and negative features (triplet_loss_layer.cpp).

    Bottoms a, p, n: (N, C[, 1, 1]) each. ``loss = sum_i max(margin + |a_i - p_i|^2 - |a_i - n_i|^2,
    0) / (2N)`` (``triplet_loss_param.margin``, default 1: the squared distances are not halved).
    Backward (Caffe's, the exact gradient except at the hinge): ``(n - p)``, ``(p - a)``,
    ``(a - n)`` times ``top_diff / N`` for the triplets whose hinge is at least 1e-9, zero for the
    others (the CUDA code cuts at 0 instead; the CPU code is followed on every device).
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 6 dim: 5 } } }
layer { name: "p" type: "Input" top: "p" input_param { shape { dim: 6 dim: 5 } } }
layer { name: "n" type: "Input" top: "n" input_param { shape { dim: 6 dim: 5 } } }
layer { name: "loss" type: "TripletLoss" bottom: "a" bottom: "p" bottom: "n" top: "loss"
        triplet_loss_param { margin: 0.5 } }
"""

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        self.margin = float(margin)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> TripletLoss:
        ctx.check_bottoms(3)
        ctx.check_tops(1)
        _loss_checks(ctx)
        _check_vectors(ctx, (0, 1, 2))
        return cls(layer.triplet_loss_param.margin)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        num = a.shape[0]
        return _TripletFunction.apply(a.reshape(num, -1), p.reshape(num, -1), n.reshape(num, -1), self.margin)

    def extra_repr(self) -> str:
        return ", ".join(p for p in (super().extra_repr(), f"margin={self.margin}") if p)
