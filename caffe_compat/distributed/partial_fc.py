"""The margin heads of ``caffe_compat.losses`` sharded by class over ranks (the PartialFC idea of
insightface's arcface_torch, written for these heads).

Each rank holds the rows ``[start, stop)`` of the classifier weight. A forward pass gathers the
embeddings of the global batch (G = N*B rows) from all ranks and computes its (G, C/N) block of
cosines; the margin acts on the target column, which lives on one rank only; MV/SV re-weighting
compares every negative with the target cosine, which is summed over the ranks first (zero where
a rank does not hold the class). The softmax cross-entropy takes the row maxima and the sums of
exponentials over the ranks (``sharded_cross_entropy``), so no rank ever holds a whole (G, C)
matrix or the whole weight: per rank the weight and the logits are 1/N of one process's.

The numbers are the one-process head's on the global batch: the logits are its columns
``[start, stop)``, the loss is its loss, the weight gradient its rows. The embeddings' gradient is
the one-process gradient of the rank's rows times ``grad_scale`` (the world size by default,
because DDP averages the backbone's gradients over the ranks).

Class sampling (``sample_rate < 1``, training only): each rank keeps the classes of its shard that
are labels of the global batch plus random others, ``int(sample_rate * size)`` in all (at least
the positives), and the softmax runs over the sampled classes of all ranks. Rows not sampled get a
zero gradient; the draws come from a generator seeded by ``(seed, rank, pass count)``, so they
are reproducible and resume with the counter.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from caffe_compat.distributed.collectives import (
    ClassShard,
    gather_batch,
    gather_labels,
    max_over_ranks,
    replicated,
    sum_over_ranks,
)
from caffe_compat.distributed.runtime import Replicas, gather_rows
from caffe_compat.losses.criteria import FocalLoss, HardMining, SoftmaxLoss, make_loss
from caffe_compat.losses.heads import (
    NORM_EPS,
    LinearHead,
    LogitRule,
    MarginHead,
    NormFaceHead,
    make_head,
    normalized_weight_grad,
)

#: ``-log(FLT_MIN)``: Caffe's SoftmaxWithLoss floors the target probability at FLT_MIN.
CAFFE_NLL_CAP = -math.log(float(torch.finfo(torch.float32).tiny))


# ---------------------------------------------------------------------------------------------
# cross-entropy over class-sharded logits


class _ShardedNLL(torch.autograd.Function):
    """Per-row ``-log softmax(z)[y]`` of logits split by class over the ranks."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, shard: ClassShard, cap: float | None) -> Tensor:
        row_max = max_over_ranks(logits.detach().amax(dim=1), shard)
        prob = torch.sub(logits.detach(), row_max.unsqueeze(1)).exp_()
        denom = sum_over_ranks(prob.sum(dim=1), shard)
        owned = targets >= 0
        column = targets.clamp_min(0).unsqueeze(1)
        shifted = torch.where(owned, logits.detach().gather(1, column).squeeze(1) - row_max, 0.0)
        shifted = sum_over_ranks(shifted, shard)
        nll = torch.log(denom) - shifted
        if cap is not None:
            nll = nll.clamp_max(cap)
        prob.div_(denom.unsqueeze(1))
        ctx.save_for_backward(prob, targets)
        return nll

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        prob, targets = ctx.saved_tensors
        out = prob.mul_(grad.unsqueeze(1))  # the saved buffer is not needed again
        owned = targets >= 0
        rows = owned.nonzero().squeeze(1)
        out[rows, targets[rows]] -= grad[rows]
        return out, None, None, None


def sharded_cross_entropy(
    logits: Tensor, targets: Tensor, shard: ClassShard, caffe_floor: bool = False
) -> Tensor:
    """Per-row cross-entropy (G,) of class-sharded logits (G, C_r), identical on every rank.

    ``targets`` (G,) holds each row's label column in this rank's block, -1 where another rank
    holds it. ``caffe_floor`` caps the loss at ``-log(FLT_MIN)`` as Caffe's SoftmaxWithLoss floors
    the probability (its backward is still ``p - onehot``). Every row must have its label on some
    rank (rows to ignore are masked by the caller).
    """
    return _ShardedNLL.apply(logits, targets, shard, CAFFE_NLL_CAP if caffe_floor else None)


# ---------------------------------------------------------------------------------------------
# cosine-margin logits over a block of classes


class _ShardedCosineMarginLogits(torch.autograd.Function):
    """``scale * rule(clamp(xn @ normalize(W_r).T))`` on this rank's block of classes, with the
    target cosines taken from (and, for re-weighting, shared by) the rank that holds each label.
    Forward and backward follow ``caffe_compat.losses.heads._CosineMarginLogits`` step by step."""

    @staticmethod
    def forward(ctx: Any, xn: Tensor, weight: Tensor, targets: Tensor, rule: LogitRule, shard: ClassShard):
        norm = torch.linalg.vector_norm(weight, dim=1)
        tiny_rows = norm < NORM_EPS
        tiny_rows = tiny_rows if bool(tiny_rows.any()) else None
        inv_norm = norm.clamp_min_(NORM_EPS).reciprocal_()
        logits = torch.mm(xn, weight.t())
        logits.mul_(inv_norm)
        outside = None
        if logits.numel():
            low, high = torch.aminmax(logits)
            if bool(high > 1.0) or bool(low < -1.0):
                outside = logits.abs() > 1.0
                logits.clamp_(-1.0, 1.0)
        owned = targets >= 0
        rows = owned.nonzero().squeeze(1)
        columns = targets[rows]
        cos_y = None
        if rule.target is not None or rule.threshold is not None:
            cos_y = torch.zeros(xn.shape[0], dtype=logits.dtype, device=logits.device)
            cos_y[rows] = logits[rows, columns]
            if rule.threshold is not None:
                cos_y = sum_over_ranks(cos_y, shard)
        hard = None
        if rule.threshold is not None:
            hard = logits > rule.threshold(cos_y).unsqueeze(1)
            reweighted = torch.add(logits, rule.offset / rule.slope).mul_(rule.slope)
            torch.where(hard, reweighted, logits, out=logits)
            del reweighted
        if rule.target is not None:
            logits[rows, columns] = rule.target(cos_y[rows])
        if rule.scale != 1.0:
            logits.mul_(rule.scale)
        ctx.rule = rule
        ctx.save_for_backward(xn, weight, inv_norm, tiny_rows, rows, columns, cos_y, hard, outside)
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor):
        xn, weight, inv_norm, tiny_rows, rows, columns, cos_y, hard, outside = ctx.saved_tensors
        rule: LogitRule = ctx.rule
        grad_raw = grad * (inv_norm * rule.scale)
        if hard is not None and rule.slope != 1.0:
            torch.where(hard, grad_raw * rule.slope, grad_raw, out=grad_raw)
        if rule.target is not None and rows.numel():
            with torch.enable_grad():
                leaf = cos_y[rows].detach().requires_grad_()
                target = rule.target(leaf)
                grad_y = grad[rows, columns] * rule.scale
                (d_cos_y,) = torch.autograd.grad(target, leaf, grad_y)
            grad_raw[rows, columns] = d_cos_y * inv_norm[columns]
        if outside is not None:
            grad_raw.masked_fill_(outside, 0.0)
        grad_xn = torch.mm(grad_raw, weight) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = normalized_weight_grad(grad_raw, xn, weight, inv_norm, tiny_rows)
        return grad_xn, grad_weight, None, None, None


def sharded_head_logits(
    head: MarginHead,
    xg: Tensor,
    weight: Tensor,
    targets: Tensor,
    shard: ClassShard,
    margin: bool = True,
    bias: Tensor | None = None,
) -> Tensor:
    """The (G, C_r) logits of ``head`` for the gathered embeddings ``xg`` against this rank's
    weight block; ``targets`` as in ``sharded_cross_entropy``. Cosine heads expect ``xg`` already
    L2-normalized when ``head.normalize_embeddings`` (normalize before gathering). A learnable
    scale is applied as a replicated parameter."""
    if isinstance(head, LinearHead):
        return F.linear(xg, weight, bias)
    if not isinstance(head, NormFaceHead):
        raise TypeError(f"no sharded form of the head {type(head).__name__}")
    out = _ShardedCosineMarginLogits.apply(xg, weight, targets, head.rule(margin), shard)
    if head.learnable_scale:
        out = out * replicated(head.s, shard)
    return out


# ---------------------------------------------------------------------------------------------
# class sampling


class ClassSampler(nn.Module):
    """PartialFC's sampling of one rank's classes: the labels of the batch plus random others.

    Args:
        size: the classes of the shard.
        rate: the fraction kept, in (0, 1].
        seed: with the rank and the pass count, seeds each draw.
    """

    def __init__(self, size: int, rate: float, rank: int, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {rate}")
        self.size, self.rate, self.rank, self.seed = int(size), float(rate), int(rank), int(seed)
        self.register_buffer("passes", torch.zeros((), dtype=torch.int64))

    @property
    def active(self) -> bool:
        return self.rate < 1.0

    def forward(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """The sampled columns (sorted, long) and the targets remapped to them (-1 kept)."""
        positive = torch.unique(targets[targets >= 0])
        count = max(int(self.rate * self.size), positive.numel())
        generator = torch.Generator().manual_seed(
            hash((self.seed, self.rank, int(self.passes))) & (2**62 - 1)
        )
        self.passes.add_(1)
        scores = torch.rand(self.size, generator=generator).to(targets.device)
        scores[positive] = 2.0
        index = torch.topk(scores, count, sorted=False).indices.sort().values
        remapped = torch.searchsorted(index, targets.clamp_min(0))
        remapped = torch.where(targets >= 0, remapped, torch.full_like(remapped, -1))
        return index, remapped


# ---------------------------------------------------------------------------------------------
# the module


class PartialFC(nn.Module):
    """A margin head and its loss, sharded by class over the ranks of a process group.

    ``PartialFC("arc", 512, 360232, m=0.5, s=64)(embeddings, labels)`` returns the loss of the
    global batch (identical on every rank) for this rank's embeddings (B, D) and labels (B,);
    every rank must pass the same B. Put the backbone under DDP and this module outside it.

    Args:
        kind: a head kind of ``caffe_compat.losses.make_head``; ``head_params`` its parameters.
        in_features, num_classes: D and C (the whole classifier's).
        loss: ``softmax``, ``focal`` or ``hardmining``; ``loss_params`` its parameters.
        sample_rate: PartialFC class sampling in training mode (1: every class).
        replicas: the process group (default: the initialized default group).
        grad_scale: factor of the embeddings' gradient (default: the world size; see the module
            docstring).
        seed: seeds the class sampling.

    Attributes:
        weight: this rank's (size, D) block of the classifier (rows ``shard.start:shard.stop``).
        shard: the ``ClassShard``. head: the head (its schedule and parameters; no weight).
    """

    def __init__(
        self,
        kind: str,
        in_features: int,
        num_classes: int,
        loss: str = "softmax",
        *,
        sample_rate: float = 1.0,
        replicas: Replicas | None = None,
        grad_scale: float | None = None,
        seed: int = 0,
        loss_params: dict | None = None,
        **head_params: Any,
    ) -> None:
        super().__init__()
        replicas = replicas if replicas is not None else Replicas.current()
        group = replicas.head_group if replicas.head_group is not None else replicas.group
        self.shard = ClassShard(num_classes, replicas.rank, replicas.world_size, group)
        local = make_head(kind, in_features, self.shard.size, **head_params)
        self.weight = nn.Parameter(local.weight.detach().clone())
        self.head = make_head(kind, in_features, num_classes, own_weight=False, **head_params)
        bias = getattr(local, "bias", None)
        if bias is not None:
            self.head.bias = None
            self.bias = nn.Parameter(bias.detach().clone())
        else:
            self.bias = None
        self.criterion = make_loss(loss, **(loss_params or {}))
        self.grad_scale = grad_scale
        self.sampler = ClassSampler(self.shard.size, sample_rate, replicas.rank, seed)

    def logits(self, embeddings: Tensor, labels: Tensor | None, margin: bool = True) -> tuple[Tensor, Tensor]:
        """(logits (G, K), targets (G,)): this rank's block of the global batch's logits and each
        row's label column in it (-1 elsewhere); K is the shard size, or the sampled count."""
        if labels is None and margin and not isinstance(self.head, LinearHead):
            raise ValueError("the margin needs the labels: call logits(embeddings, labels)")
        if self.training and margin:
            self.head.step()
        x = embeddings.reshape(embeddings.shape[0], -1)
        if isinstance(self.head, NormFaceHead) and self.head.normalize_embeddings:
            x = F.normalize(x, dim=1, eps=NORM_EPS)
        xg = gather_batch(x, self.shard, self.grad_scale)
        if labels is None:
            targets = torch.full((xg.shape[0],), -1, dtype=torch.long, device=xg.device)
        else:
            targets = self.shard.local_targets(gather_labels(labels.to(xg.device), self.shard))
        weight, bias = self.weight, self.bias
        if self.training and self.sampler.active and labels is not None:
            index, targets = self.sampler(targets)
            weight = weight.index_select(0, index)
            bias = None if bias is None else bias.index_select(0, index)
        return sharded_head_logits(self.head, xg, weight, targets, self.shard, margin, bias), targets

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        global_labels = gather_labels(labels.to(embeddings.device), self.shard).long()
        if bool(((global_labels < 0) | (global_labels >= self.shard.num_classes)).any()):
            raise ValueError(f"labels must lie in [0, {self.shard.num_classes})")
        logits, targets = self.logits(embeddings, labels)
        nll = sharded_cross_entropy(logits, targets, self.shard)
        return reduce_nll(self.criterion, nll)

    @torch.no_grad()
    def full_weight(self) -> Tensor:
        """The whole (C, D) weight, gathered from the ranks (on every rank)."""
        return gather_rows(self.weight.detach(), self.shard.sizes, self.shard.group)

    @torch.no_grad()
    def load_full_weight(self, weight: Tensor) -> None:
        """Keep this rank's rows of a whole (C, D) weight (e.g. a one-process head's)."""
        if tuple(weight.shape) != (self.shard.num_classes, self.weight.shape[1]):
            raise ValueError(
                f"expected a ({self.shard.num_classes}, {self.weight.shape[1]}) weight, "
                f"got {list(weight.shape)}"
            )
        self.weight.copy_(weight[self.shard.start : self.shard.stop])

    def extra_repr(self) -> str:
        s = self.shard
        return f"classes [{s.start}, {s.stop}) of {s.num_classes}, rank {s.rank} of {s.world}"


def reduce_nll(criterion: nn.Module, nll: Tensor) -> Tensor:
    """A ``caffe_compat.losses.criteria`` loss computed from per-row cross-entropies."""
    if isinstance(criterion, SoftmaxLoss):
        return nll.mean()
    if isinstance(criterion, FocalLoss):
        pt = (-nll).exp()
        return ((1.0 - pt) ** criterion.gamma * nll).mean()
    if isinstance(criterion, HardMining):
        kept = int(criterion.save_rate * nll.numel())
        if kept < 1:
            raise ValueError(f"hard mining keeps int({criterion.save_rate:g} * {nll.numel()}) = 0 samples")
        return nll.topk(kept, sorted=False).values.mean()
    raise TypeError(f"no sharded form of the loss {type(criterion).__name__}")
