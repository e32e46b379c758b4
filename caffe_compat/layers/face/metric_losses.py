"""Metric-learning losses of happynear/caffe-windows used with NormFace: ``GeneralContrastiveLoss``
and ``GeneralTripletLoss`` over distances to class centers (``InnerDistance``'s output).

Both have a hand-written Caffe backward, reproduced with autograd Functions; the contrastive
loss' running intra-class distance is kept in a buffer that is not a Caffe blob.
"""

from __future__ import annotations

import math

import torch

from caffe_compat.layers.base import BuildContext
from caffe_compat.layers.face.common import (
    DistanceLoss,
    int_labels,
    needs_grad,
    one_hot,
)
from caffe_compat.layers.loss import _loss_checks
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

# -- NormFace losses -----------------------------------------------------------------------------


@register("GeneralContrastiveLoss")
class GeneralContrastiveLoss(DistanceLoss):
    """NormFace's contrastive loss on a distance matrix (``general_constrastive_loss_layer.cpp``).

    Bottoms (d, label[, data]): ``d[i, j]`` is the distance of sample i to class j (with three
    bottoms the values are read from ``data`` and the gradient goes to ``d``). Per element: the
    target ``min(positive_outlier_thresh, max(0, d - positive_margin)) * positive_weight``; a
    non-target with ``d < negative_margin`` gives ``max(0, negative_margin - d) * negative_weight``
    (``exp(-d) * negative_weight`` with ``exp_negative_weight``). ``positive_first`` drops the
    non-targets of rows whose target distance exceeds ``positive_upper_bound``;
    ``max_positive_only`` keeps the target of the first row with the *smallest* positive term;
    ``max_negative_only`` keeps, per row, the first largest term found by Caffe's running
    comparison (which starts from column 0). Loss = ``sum |terms| / num``. Second top:
    [mean positive distance, mean negative hinge per pair, (running intra-class distance)].
    ``add_intra_mae`` raises the negative margin by ``intra_mae``, a running average (``0.99 mae +
    0.01 * mean positive``, capped at ``max_negative_margin``) kept in the float buffer
    ``intra_mae`` (not a Caffe blob), updated every forward.

    Backward: Caffe's hand-written one, not the exact gradient (e.g. ``positive_first`` rows get
    ``positive_weight`` at the target whatever the truncation, and ``normalize_negative`` rescales
    the negative diffs by ``|sum negative diffs| / normalize_negative / num`` when that exceeds
    ``positive_weight``); times ``loss_weight / num``. The second top gets no gradient.
    """

    family = "metric loss"

    example = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "loss" type: "GeneralContrastiveLoss" bottom: "d" bottom: "label" top: "loss" top: "distances"
  general_contrastive_loss_param { positive_margin: 0.2 negative_margin: 1 } }
"""

    intra_mae: torch.Tensor

    def __init__(
        self,
        positive_margin: float = 0.0,
        negative_margin: float = 1.0,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        normalize_negative: float | None = None,
        positive_outlier_thresh: float = 4.0,
        max_negative_only: bool = False,
        max_positive_only: bool = False,
        positive_first: bool = False,
        positive_upper_bound: float = 1.0,
        exp_negative_weight: bool = False,
        add_intra_mae: bool = False,
        max_negative_margin: float = 1.2,
        output_distances: bool = False,
    ) -> None:
        super().__init__()
        self.positive_margin = float(positive_margin)
        self.negative_margin = float(negative_margin)
        self.positive_weight = float(positive_weight)
        self.negative_weight = float(negative_weight)
        self.normalize_negative = None if normalize_negative is None else float(normalize_negative)
        self.positive_outlier_thresh = float(positive_outlier_thresh)
        self.max_negative_only = bool(max_negative_only)
        self.max_positive_only = bool(max_positive_only)
        self.positive_first = bool(positive_first)
        self.positive_upper_bound = float(positive_upper_bound)
        self.exp_negative_weight = bool(exp_negative_weight)
        self.add_intra_mae = bool(add_intra_mae)
        self.max_negative_margin = float(max_negative_margin)
        self.output_distances = bool(output_distances)
        self.register_buffer("intra_mae", torch.zeros((), dtype=torch.float32))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> GeneralContrastiveLoss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        _loss_checks(ctx)
        if len(layer.bottom) == 3 and tuple(ctx.bottom_shapes[2]) != tuple(ctx.bottom_shapes[0]):
            raise ctx.error(
                f"the third bottom {list(ctx.bottom_shapes[2])} must have the shape of the first "
                f"{list(ctx.bottom_shapes[0])}"
            )
        p = layer.general_contrastive_loss_param
        return cls(
            p.positive_margin,
            p.negative_margin,
            p.positive_weight,
            p.negative_weight,
            p.normalize_negative if p.HasField("normalize_negative") else None,
            p.positive_outlier_thresh,
            p.max_negative_only,
            p.max_positive_only,
            p.positive_first,
            p.positive_upper_bound,
            p.exp_negative_weight,
            p.add_intra_mae,
            p.max_negative_margin,
            len(layer.top) == 2,
        )

    def _stats_size(self) -> int:
        return 3 if self.add_intra_mae else 2

    def forward(
        self, d: torch.Tensor, label: torch.Tensor, data: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = d.shape[0]
        rows = (data if data is not None else d).detach().reshape(num, -1)
        dim = rows.shape[1]
        labels = int_labels(label, num)
        onehot = one_hot(labels, num, dim, rows.device)
        pm, pw, nw = self.positive_margin, self.positive_weight, self.negative_weight
        wants_grad = needs_grad(d)
        with torch.no_grad():
            nm = (self.intra_mae.to(rows.dtype) + self.negative_margin) if self.add_intra_mae else None
            neg_margin = nm if nm is not None else torch.tensor(self.negative_margin, dtype=rows.dtype)
            neg_margin = neg_margin.to(rows.device)
            same = rows.gather(1, labels.unsqueeze(1)).squeeze(1)
            truncated = (same - pm).clamp(min=0.0).clamp(max=self.positive_outlier_thresh)
            positive = truncated * pw
            candidate = ~onehot & (rows < neg_margin)
            hinge = (neg_margin - rows).clamp(min=0.0)
            negative_term = torch.exp(-rows) * nw if self.exp_negative_weight else hinge * nw
            negative = torch.where(candidate, negative_term, torch.zeros_like(rows))
            terms = torch.where(onehot, positive.unsqueeze(1), negative)
            rows_index = torch.arange(num, device=rows.device)
            max_positive = int(torch.argmin(positive)) if self.max_positive_only and num else 0
            max_negative = None
            if self.max_negative_only:
                scores = torch.where(candidate, terms, torch.full_like(terms, -math.inf))
                scores[:, 0] = terms[:, 0]
                max_negative = torch.argmax(scores, dim=1)
            kept = terms
            if self.positive_first:
                kept = torch.where((same > self.positive_upper_bound).unsqueeze(1) & ~onehot, 0.0, kept)
            if self.max_positive_only:
                kept = torch.where(onehot & (rows_index != max_positive).unsqueeze(1), 0.0, kept)
            if max_negative is not None:
                not_max = torch.ones_like(onehot).scatter_(1, max_negative.unsqueeze(1), False)
                kept = torch.where(~onehot & not_max, 0.0, kept)
            positive_distance = truncated.sum()
            negative_distance = torch.where(candidate, hinge, torch.zeros_like(hinge)).sum()
            mae = 0.99 * self.intra_mae.to(rows.dtype) + 0.01 * positive_distance / num
            self.intra_mae.copy_(mae.clamp(max=self.max_negative_margin))
            loss = kept.abs().sum() / num
            unit_grad = None
            if wants_grad:
                unit_grad = (
                    self._caffe_diff(rows, same, onehot, candidate, neg_margin, max_positive, max_negative)
                    / num
                )
        stats = None
        if self.output_distances:
            values = [positive_distance / num, negative_distance / num / (dim - 1)]
            if self.add_intra_mae:
                values.append(self.intra_mae.to(rows.dtype))
            stats = torch.stack(values).to(d.dtype)
        return self._outputs(d, loss, unit_grad, stats)

    def _caffe_diff(
        self,
        rows: torch.Tensor,
        same: torch.Tensor,
        onehot: torch.Tensor,
        candidate: torch.Tensor,
        neg_margin: torch.Tensor,
        max_positive: int,
        max_negative: torch.Tensor | None,
    ) -> torch.Tensor:
        """``Backward_cpu``'s diff before the ``loss_weight / num`` factor."""
        num = rows.shape[0]
        pw, nw = self.positive_weight, self.negative_weight
        active_pos = (same > self.positive_margin) & (same < self.positive_outlier_thresh)
        if self.max_positive_only:
            active_pos &= torch.arange(num, device=rows.device) == max_positive
        active_neg = candidate
        if max_negative is not None:
            active_neg = active_neg & torch.zeros_like(onehot).scatter_(1, max_negative.unsqueeze(1), True)
        neg_value = torch.exp(-rows) * nw if self.exp_negative_weight else torch.full_like(rows, nw)
        neg_value = torch.where(active_neg, neg_value, torch.zeros_like(rows))
        first = (
            (same > self.positive_upper_bound)
            if self.positive_first
            else torch.zeros_like(same, dtype=torch.bool)
        )
        neg_value = torch.where(first.unsqueeze(1), 0.0, neg_value)
        target = torch.where(first | active_pos, pw, 0.0).to(rows.dtype)
        diff = torch.where(onehot, target.unsqueeze(1), -neg_value)
        if self.normalize_negative is not None:
            negative_sum = neg_value.sum().abs() / self.normalize_negative / num
            if float(negative_sum) > pw:
                diff = torch.where(onehot, diff, diff / negative_sum)
        return diff


@register("GeneralTripletLoss")
class GeneralTripletLoss(DistanceLoss):
    """NormFace's triplet loss on a distance matrix (``general_triplet_loss_layer.cpp``).

    Bottoms (d, label). Per non-target: ``max(0, d_iy + margin - d_ij) * negative_weight``;
    ``hardest_only`` keeps, per row, the first largest positive term; ``positive_first`` drops the
    non-targets of rows with ``d_iy > positive_upper_bound``. Loss = ``sum |terms| / num``.
    Second top: [mean target distance, mean non-target distance].

    Backward: Caffe's hand-written one, not the exact gradient: ``-negative_weight`` at active
    non-targets (``d_iy + margin > d_ij``; with ``hardest_only`` only at the hardest, and only
    if its distance is nonzero), ``positive_weight`` at the target when ``add_center_loss`` or
    any non-target is active (and always for ``positive_first`` rows, whose non-targets get 0),
    times ``loss_weight / num``. Entries the Caffe backward does not write keep the forward's
    per-element terms left in the diff buffer (``hardest_only`` rows), reproduced here.
    """

    family = "metric loss"

    example = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "loss" type: "GeneralTripletLoss" bottom: "d" bottom: "label" top: "loss" top: "distances"
  general_triplet_loss_param { margin: 0.8 hardest_only: true } }
"""

    def __init__(
        self,
        margin: float = 0.2,
        add_center_loss: bool = True,
        hardest_only: bool = False,
        positive_first: bool = False,
        positive_upper_bound: float = 1.0,
        positive_weight: float = 1.0,
        negative_weight: float = 1.0,
        output_distances: bool = False,
    ) -> None:
        super().__init__()
        self.margin = float(margin)
        self.add_center_loss = bool(add_center_loss)
        self.hardest_only = bool(hardest_only)
        self.positive_first = bool(positive_first)
        self.positive_upper_bound = float(positive_upper_bound)
        self.positive_weight = float(positive_weight)
        self.negative_weight = float(negative_weight)
        self.output_distances = bool(output_distances)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> GeneralTripletLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1, 2)
        _loss_checks(ctx)
        p = layer.general_triplet_loss_param
        return cls(
            p.margin,
            p.add_center_loss,
            p.hardest_only,
            p.positive_first,
            p.positive_upper_bound,
            p.positive_weight,
            p.negative_weight,
            len(layer.top) == 2,
        )

    def forward(
        self, d: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        num = d.shape[0]
        wants_grad = needs_grad(d)
        with torch.no_grad():
            rows = d.detach().reshape(num, -1)
            dim = rows.shape[1]
            labels = int_labels(label, num)
            onehot = one_hot(labels, num, dim, rows.device)
            same = rows.gather(1, labels.unsqueeze(1)).squeeze(1)
            hinge = (same.unsqueeze(1) + self.margin - rows).clamp(min=0.0) * self.negative_weight
            terms = torch.where(onehot, 0.0, hinge)
            hardest = valid = None
            if self.hardest_only:
                scores = torch.where(~onehot & (terms > 0), terms, torch.full_like(terms, -math.inf))
                hardest = torch.argmax(scores, dim=1)
                valid = torch.isfinite(scores.gather(1, hardest.unsqueeze(1)).squeeze(1))
                is_hardest = torch.zeros_like(onehot).scatter_(1, hardest.unsqueeze(1), True)
                terms = torch.where(valid.unsqueeze(1) & ~onehot & ~is_hardest, 0.0, terms)
            first = (
                (same > self.positive_upper_bound)
                if self.positive_first
                else torch.zeros_like(same, dtype=torch.bool)
            )
            terms = torch.where(first.unsqueeze(1) & ~onehot, 0.0, terms)
            loss = terms.abs().sum() / num
            positive_distance = same.sum()
            negative_distance = torch.where(onehot, 0.0, rows).sum()
            unit_grad = None
            if wants_grad:
                unit_grad = self._caffe_diff(rows, same, onehot, terms, first, hardest, valid) / num
        stats = None
        if self.output_distances:
            stats = torch.stack([positive_distance / num, negative_distance / num / (dim - 1)]).to(d.dtype)
        return self._outputs(d, loss, unit_grad, stats)

    def _caffe_diff(
        self,
        rows: torch.Tensor,
        same: torch.Tensor,
        onehot: torch.Tensor,
        leftover: torch.Tensor,
        first: torch.Tensor,
        hardest: torch.Tensor | None,
        valid: torch.Tensor | None,
    ) -> torch.Tensor:
        """``Backward_cpu``'s diff before ``loss_weight / num``, starting from the forward's terms."""
        pw, nw = self.positive_weight, self.negative_weight
        if hardest is not None:
            at_hardest = rows.gather(1, hardest.unsqueeze(1)).squeeze(1)
            chosen = valid & (at_hardest != 0)
            is_hardest = torch.zeros_like(onehot).scatter_(1, hardest.unsqueeze(1), True)
            diff = torch.where(is_hardest & chosen.unsqueeze(1), -nw, leftover)
            any_negative = chosen
        else:
            active = ~onehot & (same.unsqueeze(1) + self.margin > rows)
            diff = torch.where(onehot, leftover, torch.where(active, -nw, 0.0))
            any_negative = active.any(dim=1)
        set_target = any_negative | self.add_center_loss
        diff = torch.where(onehot & set_target.unsqueeze(1), pw, diff)
        diff = torch.where(first.unsqueeze(1), torch.where(onehot, pw, 0.0), diff)
        return diff.to(rows.dtype)
