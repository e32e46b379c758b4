"""The losses applied to a head's logits: softmax cross-entropy, focal loss, hard mining.

Rules followed: xiaoboCASIA/SV-X-Softmax ``loss.py``:

* ``softmax``: the mean cross-entropy.
* ``focal``: per-sample cross-entropy ``ce``, ``pt = exp(-ce)``, mean of ``(1 - pt)^gamma * ce``.
* ``hardmining``: the ``int(save_rate * N)`` samples of largest cross-entropy are kept and the loss
  is the **mean** of their cross-entropy. The seed writes ``torch.sum(F.cross_entropy(pred[kept],
  label[kept]))``, but ``F.cross_entropy`` already reduces to the mean, so its ``sum`` is of one
  scalar: the seed's loss is that mean (equal values and gradients). The seed gives NaN when no
  sample is kept; here that is an error.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn


class SoftmaxLoss(nn.Module):
    """``softmax``: mean cross-entropy of logits (N, C) and integer labels (N,)."""

    kind = "softmax"

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels.reshape(-1).long())


class FocalLoss(nn.Module):
    """``focal``: mean of ``(1 - pt)^gamma * ce`` with ``pt = exp(-ce)``.

    Args:
        gamma: the focusing parameter, >= 0 (0 gives the softmax loss).
    """

    kind = "focal"

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"the focal loss needs gamma >= 0, got {gamma}")
        self.gamma = float(gamma)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, labels.reshape(-1).long(), reduction="none")
        pt = (-ce).exp()
        return ((1.0 - pt) ** self.gamma * ce).mean()

    def extra_repr(self) -> str:
        return f"gamma={self.gamma:g}"


class HardMining(nn.Module):
    """``hardmining``: mean cross-entropy of the ``int(save_rate * N)`` hardest samples.

    Args:
        save_rate: the fraction of the batch kept, in (0, 1].
    """

    kind = "hardmining"

    def __init__(self, save_rate: float = 0.9) -> None:
        super().__init__()
        if not 0.0 < save_rate <= 1.0:
            raise ValueError(f"save_rate must be in (0, 1], got {save_rate}")
        self.save_rate = float(save_rate)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, labels.reshape(-1).long(), reduction="none")
        kept = int(self.save_rate * ce.numel())
        if kept < 1:
            raise ValueError(
                f"hard mining keeps int({self.save_rate:g} * {ce.numel()}) = 0 samples of this batch"
            )
        return ce.topk(kept, sorted=False).values.mean()

    def extra_repr(self) -> str:
        return f"save_rate={self.save_rate:g}"


LOSS_KINDS: dict[str, type[nn.Module]] = {cls.kind: cls for cls in (SoftmaxLoss, FocalLoss, HardMining)}


def make_loss(kind: str, **params: Any) -> nn.Module:
    """Build a loss by name: ``softmax``, ``focal`` (``gamma``, 2), ``hardmining`` (``save_rate``, 0.9).

    The loss is called as ``loss(logits, labels)``. A parameter the kind does not take is an error.
    """
    try:
        cls = LOSS_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown loss kind {kind!r}; known kinds: {', '.join(LOSS_KINDS)}") from None
    accepted = [n for n in inspect.signature(cls.__init__).parameters if n != "self"]
    if cls.__init__ is nn.Module.__init__:
        accepted = []
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        takes = ", ".join(accepted) if accepted else "no parameters"
        raise TypeError(f"loss kind {kind!r} takes no parameter {', '.join(unknown)}; it takes {takes}")
    return cls(**params)
