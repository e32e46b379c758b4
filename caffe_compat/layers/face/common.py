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
from google.protobuf.message import Message

from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape, canonical_axis

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


class MarginInnerProductBase(CaffeLayer):
    """Shared machinery of the angular-margin inner products, SphereFace's ``MarginInnerProduct``
    and L-Softmax's ``LargeMarginInnerProduct``: the margin type ``m`` (1..4 for
    SINGLE..QUADRUPLE), rows flattened from ``axis`` with one label each, and the lambda schedule
    ``max(base * (1 + gamma * it)^(-power), lambda_min)`` at the counter ``it``, which every
    forward advances first (the int64 buffer ``iter_count``, in ``state_dict`` but not a Caffe
    blob). Subclasses register ``iter_count`` after their weight."""

    iter_count: torch.Tensor

    def __init__(
        self,
        num_output: int,
        in_features: int,
        margin: int,
        axis: int,
        base: float,
        gamma: float,
        power: float,
        lambda_min: float,
    ) -> None:
        super().__init__()
        if margin not in (1, 2, 3, 4):
            raise ValueError(f"margin must be 1, 2, 3 or 4, got {margin}")
        self.num_output = int(num_output)
        self.in_features = int(in_features)
        self.margin = int(margin)
        self.axis = int(axis)
        self.base = float(base)
        self.gamma = float(gamma)
        self.power = float(power)
        self.lambda_min = float(lambda_min)

    @property
    def iteration(self) -> int:
        """Caffe's ``iter_``: the number of forwards so far plus the ``iteration`` parameter."""
        return int(self.iter_count)

    @staticmethod
    def _check_label_bottom(ctx: BuildContext) -> None:
        x_shape, label_shape = ctx.bottom_shapes[0], ctx.bottom_shapes[1]
        if not x_shape:
            raise ctx.error("the data bottom must have a batch axis")
        if not label_shape or label_shape[0] != x_shape[0]:
            raise ctx.error(
                f"the number of labels must match the number of outputs: data {list(x_shape)}, "
                f"labels {list(label_shape)} (one integer label in [0, num_output) per sample)"
            )

    @staticmethod
    def _flatten(ctx: BuildContext, axis: int) -> tuple[int, int]:
        """The canonical ``axis`` and the row width of the data flattened from it (one label per
        row)."""
        x_shape, label_shape = ctx.bottom_shapes[0], ctx.bottom_shapes[1]
        axis = canonical_axis(axis, len(x_shape), ctx)
        check_labels(ctx, label_shape, count_of(x_shape, 0, axis))
        return axis, count_of(x_shape, axis)

    @staticmethod
    def _schedule_options(p: Message) -> dict:
        """The margin type and the lambda schedule's constructor arguments from the layer param."""
        return {
            "margin": int(p.type) + 1,
            "base": p.base,
            "gamma": p.gamma,
            "power": p.power,
            "iteration": p.iteration,
            "lambda_min": p.lambda_min,
        }

    def _logits_shape(self, bottom_shapes: list[Shape]) -> Shape:
        return tuple(bottom_shapes[0][: self.axis]) + (self.num_output,)

    def lambda_at(self, iteration: int | torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """``max(base * (1 + gamma * iteration)^(-power), lambda_min)`` in ``dtype``."""
        it = torch.as_tensor(iteration, device=self.iter_count.device).to(dtype)
        lam = self.base * torch.pow(1.0 + self.gamma * it, -self.power)
        return torch.clamp(lam, min=self.lambda_min)

    def _advance(self) -> None:
        with torch.no_grad():
            self.iter_count.add_(1)

    def _rows(self, x: torch.Tensor, label: torch.Tensor) -> tuple[torch.Size, torch.Tensor, torch.Tensor]:
        """The outer shape, x as ``(outer, in_features)`` rows, and one int64 label per row."""
        outer = x.shape[: self.axis]
        rows = x.reshape(math.prod(outer), self.in_features)
        return outer, rows, int_labels(label, rows.shape[0])
