"""Helpers shared by the face layers: Caffe's legacy shape accessors, label reading, and the
autograd wrapper for Caffe's hand-written loss backward passes.

Labels are read as Caffe does, ``static_cast<int>`` of the float label (truncation toward zero);
a label outside ``[0, classes)`` is undefined behaviour in Caffe and an indexing error here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape

FLT_MAX = float(np.finfo(np.float32).max)

# -- shared helpers ------------------------------------------------------------------------------


def legacy_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Caffe's ``num()``, ``channels()``, ``height()``, ``width()``: missing trailing axes are 1."""
    dims = [int(d) for d in shape] + [1] * (4 - len(shape))
    return dims[0], dims[1], dims[2], dims[3]


def check_legacy(ctx: BuildContext, shape: Shape, what: str = "bottom") -> None:
    """Caffe's ``LegacyShape`` CHECK: the num/channels/height/width accessors need <= 4 axes."""
    if len(shape) > 4:
        raise ctx.error(
            f"{what} has shape {list(shape)}, but this layer reads it with Caffe's legacy "
            "num/channels/height/width accessors, which need at most 4 axes"
        )


def count_of(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    return math.prod(shape[start:end])


def int_labels(label: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` labels as int64 (``static_cast<int>`` of Caffe's float labels)."""
    return label.detach().reshape(-1)[:count].to(torch.long)


def check_labels(ctx: BuildContext, label_shape: Shape, needed: int) -> None:
    if count_of(label_shape) < needed:
        raise ctx.error(f"needs {needed} labels, but the label bottom has shape {list(label_shape)}")


class CaffeGradient(torch.autograd.Function):
    """Return ``value`` (computed without autograd); backward gives ``source`` the gradient
    ``grad_output * unit_grad``, the diff Caffe's hand-written backward writes for a top diff of 1.

    Used for the loss layers whose backward is linear in the loss weight (``caffe_scal``)."""

    @staticmethod
    def forward(ctx, source: torch.Tensor, value: torch.Tensor, unit_grad: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(unit_grad)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None]:
        (unit_grad,) = ctx.saved_tensors
        grad = grad_output * unit_grad if ctx.needs_input_grad[0] else None
        return grad, None, None


class DistanceLoss(CaffeLayer):
    """Shared parts of happynear/caffe-windows' losses over distance matrices: a scalar loss top,
    an optional second top of statistics (no gradient), and Caffe's hand-written backward applied
    through ``CaffeGradient``. Subclasses set ``family`` (the registry checks each type's own)."""

    is_loss = True

    output_distances: bool

    def _stats_size(self) -> int:
        return 2

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()] + ([(self._stats_size(),)] if self.output_distances else [])

    def _outputs(
        self, d: torch.Tensor, loss: torch.Tensor, unit_grad: torch.Tensor | None, stats: torch.Tensor | None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The loss (its gradient to ``d`` is ``unit_grad`` times the top diff, when given) and,
        with a second top, ``stats``."""
        if unit_grad is not None:
            loss = CaffeGradient.apply(d, loss.to(d.dtype), unit_grad.reshape(d.shape).to(d.dtype))
        if self.output_distances:
            return loss, stats
        return loss


def needs_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def one_hot(labels: torch.Tensor, num: int, dim: int, device: torch.device) -> torch.Tensor:
    return torch.zeros(num, dim, dtype=torch.bool, device=device).scatter_(1, labels.unsqueeze(1), True)
