"""Differentiable collectives of the class-sharded classifier, and the class partition itself.

- ``ClassShard``: classes ``[start, stop)`` of rank r; the C classes are split as evenly as
  possible (the first ``C % N`` ranks hold one more), in class order, so gathering the shards in rank
  order gives the whole classifier.
- ``gather_batch``: every rank's batch rows (embeddings), concatenated in rank order, which is the
  one-process order of the global batch. Its backward sums the gradients the ranks computed for
  the global batch (each from its own classes) and returns this rank's rows times ``grad_scale``
  (the world size by default: DDP then averages the backbone's gradients over the ranks, which
  turns the sum back into the global batch's gradient; insightface's ``AllGather`` does the same).
- ``replicated``: the identity whose backward sums the gradient over the ranks, for a parameter
  every rank holds whole but that acts on class-sharded values (MarginHead's learnable scale): each
  rank's gradient is then the full gradient, whatever DDP does with it afterwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from caffe_compat.distributed.runtime import all_gather_equal

_reduce_scatter_single = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


@dataclass(frozen=True)
class ClassShard:
    """Rank ``rank``'s share of ``num_classes`` classes over ``world`` ranks.

    Attributes:
        group: the process group of the shard's collectives (None: the default group).
    """

    num_classes: int
    rank: int
    world: int
    group: object | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.world < 1 or not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in [0, {self.world})")
        if self.num_classes < self.world:
            raise ValueError(f"{self.num_classes} classes cannot be split over {self.world} ranks")

    @property
    def sizes(self) -> list[int]:
        """Classes per rank."""
        base, extra = divmod(self.num_classes, self.world)
        return [base + (1 if r < extra else 0) for r in range(self.world)]

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def stop(self) -> int:
        return self.start + self.sizes[self.rank]

    @property
    def size(self) -> int:
        return self.sizes[self.rank]

    def local_targets(self, labels: torch.Tensor) -> torch.Tensor:
        """Each label's column in this shard (long), -1 where another rank holds the class."""
        labels = labels.reshape(-1).long()
        inside = (labels >= self.start) & (labels < self.stop)
        return torch.where(inside, labels - self.start, torch.full_like(labels, -1))


def _backend(group: object | None) -> str:
    return str(dist.get_backend(group)).lower()


class _GatherBatch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, world: int, rank: int, group: object | None, grad_scale: float):
        ctx.world, ctx.rank, ctx.group, ctx.grad_scale, ctx.rows = world, rank, group, grad_scale, x.shape[0]
        return all_gather_equal(x, world, group)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        rows = ctx.rows
        if ctx.world == 1:
            mine = grad
        elif _backend(ctx.group) == "nccl":
            mine = grad.new_empty((rows, *grad.shape[1:]))
            _reduce_scatter_single(mine, grad, group=ctx.group)
        else:
            total = grad.clone()
            dist.all_reduce(total, group=ctx.group)
            mine = total[ctx.rank * rows : (ctx.rank + 1) * rows]
        if ctx.grad_scale != 1.0:
            mine = mine * ctx.grad_scale
        return mine, None, None, None, None


def gather_batch(x: torch.Tensor, shard: ClassShard, grad_scale: float | None = None) -> torch.Tensor:
    """All ranks' ``x`` (same shape on each) concatenated along axis 0, in rank order; see the
    module docstring for the backward (``grad_scale`` defaults to the world size)."""
    scale = float(shard.world if grad_scale is None else grad_scale)
    return _GatherBatch.apply(x, shard.world, shard.rank, shard.group, scale)


def gather_labels(labels: torch.Tensor, shard: ClassShard) -> torch.Tensor:
    """All ranks' labels of the global batch (no gradient)."""
    return all_gather_equal(labels.detach().reshape(-1), shard.world, shard.group)


class _Replicated(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, group: object | None, world: int):
        ctx.group, ctx.world = group, world
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.clone()
        if ctx.world > 1:
            dist.all_reduce(grad, group=ctx.group)
        return grad, None, None


def replicated(x: torch.Tensor, shard: ClassShard) -> torch.Tensor:
    """``x`` unchanged; its gradient summed over the ranks (see the module docstring)."""
    return _Replicated.apply(x, shard.group, shard.world)


def sum_over_ranks(x: torch.Tensor, shard: ClassShard) -> torch.Tensor:
    """An all-reduced (summed) copy of ``x``; no gradient."""
    out = x.detach().clone()
    if shard.world > 1:
        dist.all_reduce(out, group=shard.group)
    return out


def max_over_ranks(x: torch.Tensor, shard: ClassShard) -> torch.Tensor:
    """An all-reduced (maximum) copy of ``x``; no gradient."""
    out = x.detach().clone()
    if shard.world > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=shard.group)
    return out
