"""happynear/caffe-windows' losses over distance matrices: ``BatchContrastiveLoss`` (pairwise
distances within a batch), ``NCALoss`` and ``SoftContrastiveLoss`` (distances to class centers,
e.g. ``InnerDistance``'s output).

Each has a hand-written Caffe backward, reproduced with ``CaffeGradient`` (the diff is linear in
the loss weight). Their optional second top holds statistics and gets no gradient.

Caffe quirk shared by all but ``max_only``: the forward *adds* to the loss top's data
(``loss[0] += ...``) and never resets it, so Caffe's loss after k forwards with the same top blob
is the sum of k losses (the first on a freshly allocated, zeroed top). Only the first forward is
well defined; every forward here returns what that first forward gives.
"""

from __future__ import annotations

import torch

from caffe_compat.layers.base import BuildContext
from caffe_compat.layers.face.common import (
    DistanceLoss,
    check_legacy,
    count_of,
    int_labels,
    legacy_shape,
    needs_grad,
    one_hot,
)
from caffe_compat.layers.loss import _loss_checks
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


def _check_sample_weights(ctx: BuildContext) -> None:
    """The optional third bottom holds one weight per sample (Caffe reads ``num`` values)."""
    if len(ctx.bottom_shapes) == 3:
        num, weights = ctx.bottom_shapes[0][0], ctx.bottom_shapes[2]
        if count_of(weights) < num:
            raise ctx.error(f"the weight bottom {list(weights)} must hold one weight per sample ({num})")


def _row_scale(weights: torch.Tensor | None, num: int, dtype: torch.dtype) -> torch.Tensor | None:
    """``w_i / (sum w / num)``, the per-row factor of Caffe's weighted backward."""
    if weights is None:
        return None
    w = weights.detach().reshape(-1)[:num].to(dtype)
    return (w / (w.sum() / num)).unsqueeze(1)


# -- BatchContrastiveLoss ------------------------------------------------------------------------


@register("BatchContrastiveLoss")
class BatchContrastiveLoss(DistanceLoss):
    """Contrastive loss over a batch's pairwise distances (``batch_contrastive_loss_layer.cpp``).

    Bottoms (d, label): ``d`` is an N x N distance matrix (Caffe reads ``d[i * N + j]`` of the flat
    buffer for ``i < j`` only); labels are compared as floats. Same-label pairs with ``d >
    positive_margin`` add ``positive_weight * (d - positive_margin)``, other pairs with ``d <
    negative_margin`` add ``negative_weight * (negative_margin - d)``; the sum is divided by
    ``N (N - 1) / 2``. ``max_only``: only the first largest violating positive pair and the first
    smallest violating negative pair (row-major over ``i < j``) count, not divided.
    Second top: (mean same-label distance, mean other-label distance) over all ``i < j`` pairs
    (0/0 = NaN when a kind is absent, as in Caffe).

    Backward (Caffe's): ``positive_weight`` / ``-negative_weight`` at the counted pairs (upper
    triangle only), times ``loss_weight / N`` (not the forward's ``2 / (N (N - 1))``), or
    ``loss_weight / 2`` with ``max_only``. Without ``max_only`` Caffe's forward adds to the loss
    top's previous value (see the module docstring): this is the first forward's value.
    """

    family = "metric loss"

    example = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 5 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 5 } } }
layer { name: "loss" type: "BatchContrastiveLoss" bottom: "d" bottom: "label" top: "loss" top: "dist"
  loss_weight: 1 loss_weight: 0 batch_contrastive_loss_param { positive_margin: 0.5 negative_margin: 1.5 } }
"""

    def __init__(
        self,
        num: int,
        positive_margin: float = 1.0,
        negative_margin: float = 1.0,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        max_only: bool = False,
        output_distances: bool = False,
    ) -> None:
        super().__init__()
        self.num = int(num)
        self.positive_margin = float(positive_margin)
        self.negative_margin = float(negative_margin)
        self.positive_weight = float(positive_weight)
        self.negative_weight = float(negative_weight)
        self.max_only = bool(max_only)
        self.output_distances = bool(output_distances)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> BatchContrastiveLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1, 2)
        _loss_checks(ctx)
        shape = ctx.bottom_shapes[0]
        check_legacy(ctx, shape)
        num, channels, _, _ = legacy_shape(shape)
        if num != channels:
            raise ctx.error(f"the distance bottom must be N x N, got shape {list(shape)}")
        p = layer.batch_contrastive_loss_param
        return cls(
            num,
            p.positive_margin,
            p.negative_margin,
            p.positive_weight,
            p.negative_weight,
            p.max_only,
            len(layer.top) == 2,
        )

    def forward(
        self, d: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = self.num
        pm, nm, pw, nw = (
            self.positive_margin,
            self.negative_margin,
            self.positive_weight,
            self.negative_weight,
        )
        wants_grad = needs_grad(d)
        with torch.no_grad():
            dist = d.detach().reshape(-1)[: num * num].reshape(num, num)
            labels = label.detach().reshape(-1)[:num]
            upper = torch.ones(num, num, dtype=torch.bool, device=d.device).triu(diagonal=1)
            same = labels.unsqueeze(1) == labels.unsqueeze(0)
            positive_pairs = upper & same
            negative_pairs = upper & ~same
            positive = positive_pairs & (dist > pm)
            negative = negative_pairs & (dist < nm)
            if self.max_only:
                positive, negative = self._extremes(dist, positive, negative)
                loss = (pw * (dist - pm))[positive].sum() + (nw * (nm - dist))[negative].sum()
            else:
                terms = torch.where(positive, pw * (dist - pm), torch.zeros_like(dist))
                terms = torch.where(negative, nw * (nm - dist), terms)
                loss = terms.sum() / (num * (num - 1) // 2)
            unit_grad = None
            if wants_grad:
                diff = torch.where(positive, pw, 0.0) - torch.where(negative, nw, 0.0)
                diff = diff.to(dist.dtype) / (2 if self.max_only else num)
                unit_grad = torch.zeros(d.numel(), dtype=d.dtype, device=d.device)
                unit_grad[: num * num] = diff.reshape(-1)
            if self.output_distances:
                zeros = torch.zeros_like(dist)
                positive_mean = torch.where(positive_pairs, dist, zeros).sum() / positive_pairs.sum()
                negative_mean = torch.where(negative_pairs, dist, zeros).sum() / negative_pairs.sum()
                stats = torch.stack([positive_mean, negative_mean]).to(d.dtype)
        return self._outputs(d, loss, unit_grad, stats if self.output_distances else None)

    @staticmethod
    def _extremes(
        dist: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The first largest violating positive and first smallest violating negative pair
        (Caffe's strict comparisons in row-major order), as one-entry masks (empty if none)."""
        flat = dist.reshape(-1)
        keep_positive = torch.zeros_like(positive).reshape(-1)
        keep_negative = torch.zeros_like(negative).reshape(-1)
        if bool(positive.any()):
            keep_positive[torch.argmax(torch.where(positive.reshape(-1), flat, -torch.inf))] = True
        if bool(negative.any()):
            keep_negative[torch.argmin(torch.where(negative.reshape(-1), flat, torch.inf))] = True
        return keep_positive.reshape(dist.shape), keep_negative.reshape(dist.shape)


# -- NCALoss -------------------------------------------------------------------------------------


@register("NCALoss")
class NCALoss(DistanceLoss):
    """NCA-style loss over distances to class centers (``nca_loss_layer.cpp``).

    Bottoms (d, label[, weight]): ``d`` is N x C (flattened after the batch axis). Loss ``(sum_i
    d_{i,y_i} + sum_i sum_{j != y_i} exp(-d_ij)) / N``. ``min_negative_only`` keeps only
    ``exp(-d_ik)`` for the smallest negative k, found by Caffe's running search that **starts at
    index 0 even when 0 is the label** (so a row whose label 0 holds its smallest distance picks
    the label itself). Second top: (sum of target distances / N, sum of non-target distances / N /
    (C - 1)). Caffe's forward adds to the loss top's previous value (see the module docstring):
    this is the first forward's value.

    Backward (Caffe's): 1 at the label and ``-exp(-d_ij)`` elsewhere; with ``min_negative_only``
    only the label and k are written (k's value last, so it wins when k is the label) and the rest
    is 0 (Caffe leaves those entries as they were: zero in a fresh diff). With a weight bottom
    each row is scaled by ``w_i / mean(w)``; all times ``loss_weight / N``. The weights get no
    diff.
    """

    family = "metric loss"

    example = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "loss" type: "NCALoss" bottom: "d" bottom: "label" top: "loss" top: "dist"
  loss_weight: 1 loss_weight: 0 nca_param { min_negative_only: true } }
"""

    def __init__(self, min_negative_only: bool = False, output_distances: bool = False) -> None:
        super().__init__()
        self.min_negative_only = bool(min_negative_only)
        self.output_distances = bool(output_distances)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> NCALoss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        _loss_checks(ctx)
        _check_sample_weights(ctx)
        return cls(layer.nca_param.min_negative_only, len(layer.top) == 2)

    def forward(
        self, d: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = d.shape[0]
        wants_grad = needs_grad(d)
        with torch.no_grad():
            rows = d.detach().reshape(num, -1)
            dim = rows.shape[1]
            labels = int_labels(label, num)
            onehot = one_hot(labels, num, dim, rows.device)
            target = torch.where(onehot, rows, torch.zeros_like(rows))
            others = torch.where(onehot, torch.zeros_like(rows), rows)
            exp_neg = torch.exp(-rows)
            if self.min_negative_only:
                columns = torch.arange(dim, device=rows.device)
                searched = ~onehot | (columns == 0).unsqueeze(0)
                scores = torch.where(searched, rows, torch.full_like(rows, torch.inf))
                chosen = torch.zeros_like(onehot).scatter_(1, torch.argmin(scores, dim=1, keepdim=True), True)
                negative_terms = torch.where(chosen, exp_neg, torch.zeros_like(rows))
            else:
                chosen = ~onehot
                negative_terms = torch.where(chosen, exp_neg, torch.zeros_like(rows))
            loss = (target.sum() + negative_terms.sum()) / num
            unit_grad = None
            if wants_grad:
                diff = torch.where(onehot, torch.ones_like(rows), torch.zeros_like(rows))
                diff = torch.where(chosen, -exp_neg, diff)
                scale = _row_scale(weight, num, rows.dtype)
                if scale is not None:
                    diff = diff * scale
                unit_grad = (diff / num).reshape(d.shape)
            stats = torch.stack([target.sum() / num, others.sum() / num / (dim - 1)]).to(d.dtype)
        return self._outputs(d, loss, unit_grad, stats)


# -- SoftContrastiveLoss -------------------------------------------------------------------------


@register("SoftContrastiveLoss")
class SoftContrastiveLoss(DistanceLoss):
    """Soft (log-sum-exp) contrastive loss over distances to class centers
    (``soft_contrastive_loss_layer.cpp``).

    Bottoms (d, label[, weight]): ``d`` is N x C. Per row: ``positive_weight * t`` with ``t =
    min(T, max(0, d_y - positive_margin))`` (``t^2`` with ``square``), plus ``log sum_{j != y, d_j <
    negative_margin} exp(s * (negative_margin - d_j))`` (the difference squared with ``square``;
    no term when no negative qualifies); loss = mean over rows. ``s`` is ``negative_weight`` (the
    ``exponent_scale`` field is read by nothing) and ``T`` comes from
    ``general_contrastive_loss_param.positive_outlier_thresh``. Second top: (sum of t / N, sum of
    ``negative_margin - d_j`` over the qualifying negatives / N / (C - 1)). Caffe's forward adds to
    the loss top's previous value (see the module docstring): this is the first forward's value.

    Backward (Caffe's, not the exact gradient): at the label ``positive_weight`` (``d_y *
    positive_weight`` with ``square``) when ``positive_margin < d_y < T`` (d itself against T),
    else 0; at a qualifying negative ``-s * exp(e_j) / sum exp`` (``(d_j - negative_margin) * s *
    exp(e_j) / sum exp`` with ``square``, no factor 2), else 0. With a weight bottom each row is
    scaled by ``w_i / mean(w)``; all times ``loss_weight / N``.
    """

    family = "metric loss"

    example = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "loss" type: "SoftContrastiveLoss" bottom: "d" bottom: "label" top: "loss" top: "dist"
  loss_weight: 1 loss_weight: 0 soft_contrastive_loss_param { positive_margin: 0.2 negative_margin: 1.2 } }
"""

    def __init__(
        self,
        positive_margin: float = 1.0,
        negative_margin: float = 1.0,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        positive_outlier_thresh: float = 4.0,
        square: bool = False,
        output_distances: bool = False,
    ) -> None:
        super().__init__()
        self.positive_margin = float(positive_margin)
        self.negative_margin = float(negative_margin)
        self.positive_weight = float(positive_weight)
        self.negative_weight = float(negative_weight)
        self.positive_outlier_thresh = float(positive_outlier_thresh)
        self.square = bool(square)
        self.output_distances = bool(output_distances)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> SoftContrastiveLoss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        _loss_checks(ctx)
        _check_sample_weights(ctx)
        p = layer.soft_contrastive_loss_param
        return cls(
            p.positive_margin,
            p.negative_margin,
            p.positive_weight,
            p.negative_weight,
            layer.general_contrastive_loss_param.positive_outlier_thresh,
            p.square,
            len(layer.top) == 2,
        )

    def forward(
        self, d: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = d.shape[0]
        pm, nm, pw = self.positive_margin, self.negative_margin, self.positive_weight
        scale_exp = self.negative_weight
        thresh = self.positive_outlier_thresh
        wants_grad = needs_grad(d)
        with torch.no_grad():
            rows = d.detach().reshape(num, -1)
            dim = rows.shape[1]
            labels = int_labels(label, num)
            onehot = one_hot(labels, num, dim, rows.device)
            zeros = torch.zeros_like(rows)
            same = rows.gather(1, labels.unsqueeze(1)).squeeze(1)
            truncated = (same - pm).clamp(min=0.0).clamp(max=thresh)
            positive = (truncated * truncated if self.square else truncated) * pw
            negative = ~onehot & (rows < nm)
            gap = nm - rows
            exponent = (gap * gap if self.square else gap) * scale_exp
            exps = torch.where(negative, torch.exp(exponent), zeros)
            sum_exp = exps.sum(dim=1)
            log_term = torch.where(sum_exp > 0, torch.log(sum_exp), torch.zeros_like(sum_exp))
            loss = (positive.sum() + log_term.sum()) / num
            unit_grad = None
            if wants_grad:
                active = (same > pm) & (same < thresh)
                target = torch.where(active, same * pw if self.square else torch.full_like(same, pw), 0.0)
                factor = (rows - nm) * scale_exp if self.square else torch.full_like(rows, -scale_exp)
                diff = torch.where(negative, factor * exps / sum_exp.unsqueeze(1), zeros)
                diff = torch.where(onehot, target.unsqueeze(1).to(rows.dtype), diff)
                row_scale = _row_scale(weight, num, rows.dtype)
                if row_scale is not None:
                    diff = diff * row_scale
                unit_grad = (diff / num).reshape(d.shape)
            stats = torch.stack(
                [truncated.sum() / num, torch.where(negative, gap, zeros).sum() / num / (dim - 1)]
            ).to(d.dtype)
        return self._outputs(d, loss, unit_grad, stats)
