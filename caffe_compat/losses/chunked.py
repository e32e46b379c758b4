"""Softmax cross-entropy of a margin head computed class chunk by class chunk.

``chunked_cross_entropy(head, embeddings, labels, chunk_size)`` is the mean of
``F.cross_entropy(head(embeddings, labels), labels)`` without ever holding the (batch, classes)
logits: forward walks the classes in chunks with an online log-sum-exp and keeps only (batch,)
vectors; backward recomputes each chunk's logits, turns them into ``softmax - one_hot`` and
writes that chunk's rows of the weight gradient. Peak memory above the weight and its gradient is
a few (batch, chunk_size) buffers, whatever the class count (1,000,000 classes at batch 256 would
otherwise need a 1 GB logits matrix plus its gradient and the head's masks).

Every head kind is supported (``fc`` with or without bias, and the cosine heads with their
margins and re-weighting), except a learnable scale. The gradient is the one of the unchunked head
(the same rules as ``heads._CosineMarginLogits``: the re-weighting mask and the clamp are
constants, the target's derivative comes from autograd on the (batch,) vector).

Numerics (an explicit option, not the default path of the heads): the target cosine ``cos_y`` is
computed as the dot product of the embedding with its class row (the unchunked head gathers it
from the matrix product), the log-sum-exp is accumulated chunk by chunk; both change the rounding
only. ``tests/test_losses_chunked.py`` measures the difference against the unchunked head for every
kind: in float64 the loss and both gradients agree to 1e-9 relative, in float32 the loss to 1e-5.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from caffe_compat.losses.heads import NORM_EPS, LinearHead, LogitRule, MarginHead, NormFaceHead

#: Classes per chunk by default: (256, 65536) float32 buffers are 64 MB.
DEFAULT_CHUNK = 65536


class _ChunkLogits:
    """The logits of one class chunk and what backward needs to differentiate them."""

    def __init__(
        self,
        xn: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        start: int,
        rule: LogitRule | None,
        cos_y: Tensor | None,
        threshold: Tensor | None,
    ) -> None:
        stop = start + weight.shape[0]
        self.weight = weight
        self.inside = ((labels >= start) & (labels < stop)).nonzero().squeeze(1)  # rows with label here
        self.columns = labels.index_select(0, self.inside) - start
        self.rule = rule
        self.hard = self.outside = self.tiny = self.inv_norm = None
        if rule is None:
            self.z = F.linear(xn, weight, bias)
            return
        norm = torch.linalg.vector_norm(weight, dim=1)
        self.tiny = norm < NORM_EPS
        self.inv_norm = norm.clamp_min_(NORM_EPS).reciprocal_()
        z = torch.mm(xn, weight.t()).mul_(self.inv_norm)
        self.outside = z.abs() > 1.0
        z.clamp_(-1.0, 1.0)
        if threshold is not None:
            self.hard = z > threshold.unsqueeze(1)
            z = torch.where(self.hard, (z + rule.offset / rule.slope) * rule.slope, z)
        if rule.target is not None and self.inside.numel():
            z[self.inside, self.columns] = rule.target(cos_y.index_select(0, self.inside))
        if rule.scale != 1.0:
            z.mul_(rule.scale)
        self.z = z

    def label_logits(self) -> Tensor:
        return self.z[self.inside, self.columns]


class _ChunkedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        labels: Tensor,
        rule: LogitRule | None,
        chunk: int,
    ) -> Tensor:
        batch, classes = x.shape[0], weight.shape[0]
        cos_y = threshold = None
        if rule is not None:
            rows = weight.index_select(0, labels)
            norm_y = torch.linalg.vector_norm(rows, dim=1).clamp_min(NORM_EPS)
            cos_y = ((x * rows).sum(1) / norm_y).clamp(-1.0, 1.0)
            threshold = rule.threshold(cos_y) if rule.threshold is not None else None
        peak = torch.full((batch,), float("-inf"), dtype=x.dtype, device=x.device)
        total = torch.zeros(batch, dtype=x.dtype, device=x.device)
        label_logit = torch.zeros(batch, dtype=x.dtype, device=x.device)
        for start in range(0, classes, chunk):
            stop = min(start + chunk, classes)
            part = _ChunkLogits(
                x,
                weight[start:stop],
                None if bias is None else bias[start:stop],
                labels,
                start,
                rule,
                cos_y,
                threshold,
            )
            label_logit.index_copy_(0, part.inside, part.label_logits())
            new_peak = torch.maximum(peak, part.z.amax(1))
            total = total * torch.exp(peak - new_peak) + torch.exp(part.z - new_peak.unsqueeze(1)).sum(1)
            peak = new_peak
            del part
        lse = peak + torch.log(total)
        ctx.rule, ctx.chunk = rule, chunk
        ctx.save_for_backward(x, weight, bias, labels, lse, cos_y, threshold)
        return (lse - label_logit).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, labels, lse, cos_y, threshold = ctx.saved_tensors
        rule: LogitRule | None = ctx.rule
        batch, classes = x.shape[0], weight.shape[0]
        grad_x = torch.zeros_like(x)
        grad_weight = torch.empty_like(weight)
        grad_bias = None if bias is None else torch.empty_like(bias)
        target_slope = None
        if rule is not None and rule.target is not None:
            with torch.enable_grad():
                leaf = cos_y.detach().requires_grad_()
                (target_slope,) = torch.autograd.grad(rule.target(leaf), leaf, torch.ones_like(leaf))
        for start in range(0, classes, ctx.chunk):
            stop = min(start + ctx.chunk, classes)
            w = weight[start:stop]
            part = _ChunkLogits(
                x, w, None if bias is None else bias[start:stop], labels, start, rule, cos_y, threshold
            )
            # d loss / d logit: (softmax - one_hot) * grad / batch
            d_z = torch.exp(part.z.sub_(lse.unsqueeze(1)))
            d_z[part.inside, part.columns] -= 1.0
            d_z.mul_(grad / batch)
            if rule is None:
                grad_x.addmm_(d_z, w)
                torch.mm(d_z.t(), x, out=grad_weight[start:stop])
                if grad_bias is not None:
                    grad_bias[start:stop] = d_z.sum(0)
                continue
            d_label = d_z[part.inside, part.columns]
            d_raw = d_z.mul_(part.inv_norm * rule.scale)
            if part.hard is not None and rule.slope != 1.0:
                d_raw = torch.where(part.hard, d_raw * rule.slope, d_raw)
            if target_slope is not None and part.inside.numel():
                slope_y = target_slope.index_select(0, part.inside)
                d_raw[part.inside, part.columns] = (
                    d_label * rule.scale * slope_y * part.inv_norm[part.columns]
                )
            d_raw.masked_fill_(part.outside, 0.0)
            grad_x.addmm_(d_raw, w)
            # the same projection as heads._CosineMarginLogits: g_j - (g_j . w_j) w_j / |w_j|^2
            g = torch.mm(d_raw.t(), x)
            coef = (g * w).sum(1).mul_(part.inv_norm).mul_(part.inv_norm).masked_fill_(part.tiny, 0.0)
            grad_weight[start:stop] = g.addcmul_(w, coef.unsqueeze(1), value=-1.0)
        return grad_x, grad_weight, grad_bias, None, None, None


def chunked_cross_entropy(
    head: MarginHead,
    embeddings: Tensor,
    labels: Tensor,
    chunk_size: int = DEFAULT_CHUNK,
    weight: Tensor | None = None,
) -> Tensor:
    """Mean softmax cross-entropy of ``head``'s logits, ``chunk_size`` classes at a time.

    Equals ``F.cross_entropy(head(embeddings, labels), labels)`` up to rounding (see the module
    docstring) and advances the head's schedule (SphereFace) as its forward does in training mode.
    ``weight`` replaces the head's own (for heads built with ``own_weight=False``).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    weight = head.weight if weight is None else weight
    if weight is None:
        raise ValueError("this head has no weight of its own: pass weight=")
    if embeddings.dim() != 2 or weight.dim() != 2 or embeddings.shape[1] != weight.shape[1]:
        shapes = f"{list(embeddings.shape)} and {list(weight.shape)}"
        raise ValueError(f"embeddings must be (N, D) and weight (C, D); got {shapes}")
    labels = labels.reshape(-1).long()
    if labels.shape[0] != embeddings.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {embeddings.shape[0]} embeddings")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weight.shape[0]):
        raise ValueError(f"labels must lie in [0, {weight.shape[0]})")
    if head.training:
        head.step()
    if isinstance(head, LinearHead):
        return _ChunkedCrossEntropy.apply(embeddings, weight, head.bias, labels, None, chunk_size)
    if not isinstance(head, NormFaceHead):
        raise ValueError(f"head kind {head.kind!r} is not supported by the chunked loss")
    if head.learnable_scale:
        raise ValueError("a learnable scale is not supported by the chunked loss")
    xn = F.normalize(embeddings, dim=1, eps=NORM_EPS) if head.normalize_embeddings else embeddings
    return _ChunkedCrossEntropy.apply(xn, weight, None, labels, head.rule(True), chunk_size)
