"""Margin heads: ``head(embeddings, labels) -> logits`` for softmax-family face-recognition losses.

Every head but ``fc`` computes ``cos = normalize(x) @ normalize(W).T`` (rows of ``W`` are the
class centres, ``W`` has shape ``(num_classes, in_features)`` like ``nn.Linear``), clamps it to
``[-1, 1]``, replaces the target column ``cos_y`` by a margin function ``f(cos_y)``, optionally
re-weights the mis-classified negatives (MV/SV heads) and multiplies by ``s``. Feed the logits to
a cross-entropy (``caffe_compat.losses.criteria``).

Rules followed (read from xiaoboCASIA/SV-X-Softmax ``fc_layers.py`` and the papers):

Defaults are the seed's (``FC.__init__``: ``margin=0.35, t=0.2, scale=32, easy_margin=True`` for
every type); ``caffe_compat.losses.seed.from_seed`` takes the seed's own arguments and checkpoints.

* ``am`` (AM-Softmax / CosFace): ``f(c) = c - m``; ``easy_margin`` (default, as the seed):
  ``c - m`` only where ``c > 0``; ``conditional`` as Caffe's ``LabelSpecificAdd``
  (happynear/caffe-windows ``label_specific_add.cpp``): ``c - m`` only where ``c > m``.
* ``arc`` (ArcFace): ``f(c) = cos(acos(c) + m) = c cos m - sqrt(1 - c^2) sin m``; ``easy_margin``:
  only where ``c > 0`` (no ``th``/``mm`` fallback, as the seed).
* ``sphereface`` (A-Softmax, as the seed): ``f(c) = (lambda c + psi(c)) / (1 + lambda)`` with
  ``psi = (-1)^k cos(m theta) - 2k``, ``k = floor(m theta / pi)``,
  ``lambda = max(lambda_min, base (1 + gamma iter)^-power)``; ``iter`` is incremented before each
  training-mode forward. Scaled by ``s`` (not by ``|x|`` as Caffe's MarginInnerProduct).
* ``mv-am`` / ``mv-arc`` (MV-Softmax): negatives with ``cos_k > g(cos_y)`` become
  ``(t + 1) cos_k + t`` (``mode="adaptive"``) or ``cos_k + t`` (``mode="fixed"``), where ``g`` is the
  margin function *without* ``easy_margin`` (the seed compares with ``cos_y - m`` and
  ``cos(theta_y + m)`` whatever ``easy_margin`` says); the target is the AM / Arc target.
* ``sv-am`` / ``sv-arc`` (SV-X-Softmax, arXiv 1812.11317): those negatives become
  ``t cos_k + t - 1`` with ``t >= 1`` (``t = t_mv + 1`` gives the adaptive MV head).

Deliberate deviations from the seed: embeddings are normalized here (the seed expects the caller
to; ``normalize_embeddings=False`` takes them as given, as the seed); the SphereFace angle
multiplier ``m`` must be an integer and defaults to 4 (the seed's ``int(margin)`` silently turns
its shared default 0.35 into 0, a head whose target is the constant 1); ``sqrt(1 - c^2)`` is
evaluated as ``sqrt(max(1 - c^2, 1e-12))`` so
that ``|cos_y| = 1`` gives a finite derivative (the seed's is infinite, then NaN after the clamp);
SphereFace's counter only advances in training mode.

Memory: the cosine, the margin and the re-weighting run in one ``autograd.Function`` that owns a
single ``(batch, num_classes)`` buffer, modifies it in place and keeps only a boolean mask of the
re-weighted entries for backward; the weight is never copied (its row norms are applied to the
logits). Its backward is the exact gradient of the forward (checked by ``gradcheck``).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

#: ``F.normalize``'s epsilon: norms below it are clamped (their gradient is then zero).
NORM_EPS = 1e-12
#: Floor of ``1 - c^2`` under the square root of the ArcFace target (see the module docstring).
SIN_SQ_FLOOR = 1e-12


@dataclass(frozen=True)
class LogitRule:
    """What happens to the clamped cosine matrix of one forward pass.

    Attributes:
        scale: the factor ``s`` of every logit.
        target: the margin function applied to the target cosine ``cos_y`` (batch,) or None
            (identity). It must be written with differentiable torch ops: backward
            differentiates it with autograd on the (batch,) vector.
        threshold: negatives with ``cos_k > threshold(cos_y)`` are re-weighted, or None.
        slope, offset: a re-weighted negative becomes ``slope * cos_k + offset``.
    """

    scale: float = 1.0
    target: Callable[[Tensor], Tensor] | None = None
    threshold: Callable[[Tensor], Tensor] | None = None
    slope: float = 1.0
    offset: float = 0.0


class _CosineMarginLogits(torch.autograd.Function):
    """``scale * rule(clamp(xn @ normalize(W).T))`` with a hand-fused, exact backward.

    ``normalize`` is ``F.normalize``'s (``w / max(|w|, eps)``); the backward is once
    differentiable (no double backward).
    """

    @staticmethod
    def forward(ctx: Any, xn: Tensor, weight: Tensor, labels: Tensor | None, rule: LogitRule) -> Tensor:
        norm = torch.linalg.vector_norm(weight, dim=1)
        tiny_rows = norm < NORM_EPS  # F.normalize clamps these norms: no gradient through them
        tiny_rows = tiny_rows if bool(tiny_rows.any()) else None
        inv_norm = norm.clamp_min_(NORM_EPS).reciprocal_()
        logits = torch.mm(xn, weight.t())
        logits.mul_(inv_norm)
        outside = None
        low, high = torch.aminmax(logits)
        if bool(high > 1.0) or bool(low < -1.0):
            outside = logits.abs() > 1.0
            logits.clamp_(-1.0, 1.0)
        index = cos_y = hard = None
        if rule.target is not None or rule.threshold is not None:
            if labels is None:
                raise ValueError("this head needs the labels: call head(embeddings, labels)")
            index = labels.reshape(-1, 1)
            cos_y = logits.gather(1, index).squeeze(1)
        if rule.threshold is not None:
            hard = logits > rule.threshold(cos_y).unsqueeze(1)
            reweighted = torch.add(logits, rule.offset / rule.slope).mul_(rule.slope)
            torch.where(hard, reweighted, logits, out=logits)
            del reweighted
        if rule.target is not None:
            logits.scatter_(1, index, rule.target(cos_y).unsqueeze(1))
        if rule.scale != 1.0:
            logits.mul_(rule.scale)
        ctx.rule = rule
        ctx.save_for_backward(xn, weight, inv_norm, tiny_rows, index, cos_y, hard, outside)
        return logits

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        xn, weight, inv_norm, tiny_rows, index, cos_y, hard, outside = ctx.saved_tensors
        rule: LogitRule = ctx.rule
        # d loss / d raw (x . w_j): chain through scale, re-weighting, target, clamp, 1/|w_j|.
        grad_raw = grad * (inv_norm * rule.scale)
        if hard is not None and rule.slope != 1.0:
            torch.where(hard, grad_raw * rule.slope, grad_raw, out=grad_raw)
        if rule.target is not None:
            with torch.enable_grad():
                leaf = cos_y.detach().requires_grad_()
                target = rule.target(leaf)
                grad_y = grad.gather(1, index).squeeze(1) * rule.scale
                (d_cos_y,) = torch.autograd.grad(target, leaf, grad_y)
            grad_raw.scatter_(1, index, (d_cos_y * inv_norm[index.squeeze(1)]).unsqueeze(1))
        if outside is not None:
            grad_raw.masked_fill_(outside, 0.0)
        grad_xn = torch.mm(grad_raw, weight) if ctx.needs_input_grad[0] else None
        grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = normalized_weight_grad(grad_raw, xn, weight, inv_norm, tiny_rows)
        return grad_xn, grad_weight, None, None


def normalized_weight_grad(
    grad_raw: Tensor, xn: Tensor, weight: Tensor, inv_norm: Tensor, tiny_rows: Tensor | None
) -> Tensor:
    """The gradient of the raw class weights of ``cos = xn @ (w / |w|).T`` given ``grad_raw``
    (the gradient of ``cos``): d cos_ij / d w_j = (xn_i - cos_ij u_j) / |w_j| with
    u_j = w_j / |w_j|, hence grad w_j = g_j - (g_j . w_j) w_j / |w_j|^2 with
    g_j = sum_i grad_raw_ij xn_i. Rows in ``tiny_rows`` (norm clamped) get no projection."""
    grad_weight = torch.mm(grad_raw.t(), xn)
    dots = torch.bmm(grad_weight.unsqueeze(1), weight.unsqueeze(2)).view(-1)
    coef = dots.mul_(inv_norm).mul_(inv_norm)
    if tiny_rows is not None:
        coef.masked_fill_(tiny_rows, 0.0)
    grad_weight.addcmul_(weight, coef.unsqueeze(1), value=-1.0)
    return grad_weight


def cosine_margin_logits(
    embeddings: Tensor, weight: Tensor, labels: Tensor | None, rule: LogitRule, normalize: bool = True
) -> Tensor:
    """Apply ``rule`` to the clamped cosines between ``embeddings`` (N, D) and ``weight`` rows (C, D).

    Returns the (N, C) logits. Labels (N,) are needed when the rule has a target or threshold.
    ``normalize=False`` takes the embeddings as already L2-normalized (the seed's contract).
    """
    if embeddings.dim() != 2 or weight.dim() != 2 or embeddings.shape[1] != weight.shape[1]:
        shapes = f"{list(embeddings.shape)} and {list(weight.shape)}"
        raise ValueError(f"embeddings must be (N, D) and weight (C, D); got {shapes}")
    if labels is not None:
        labels = _check_labels(labels, embeddings.shape[0], weight.shape[0])
    xn = F.normalize(embeddings, dim=1, eps=NORM_EPS) if normalize else embeddings
    return _CosineMarginLogits.apply(xn, weight, labels, rule)


def _check_labels(labels: Tensor, batch: int, num_classes: int) -> Tensor:
    labels = labels.reshape(-1)
    if labels.numel() != batch:
        raise ValueError(f"got {labels.numel()} labels for a batch of {batch} embeddings")
    return labels if labels.dtype == torch.long else labels.long()  # Caffe feeds labels as floats


def _safe_sin(cos: Tensor) -> Tensor:
    return torch.sqrt((1.0 - cos * cos).clamp_min(SIN_SQ_FLOOR))


def chebyshev(cos: Tensor, m: int) -> Tensor:
    """``cos(m theta)`` as the Chebyshev polynomial ``T_m(cos theta)`` (differentiable in ``cos``)."""
    previous, current = torch.ones_like(cos), cos
    if m == 0:
        return previous
    for _ in range(m - 1):
        previous, current = current, 2.0 * cos * current - previous
    return current


# ---------------------------------------------------------------------------------------------
class MarginHead(nn.Module):
    """Base of the heads: a classifier weight (num_classes, in_features) and ``forward``.

    Args:
        in_features: embedding size D.
        num_classes: number of classes C.
        own_weight: False builds a head without a ``weight`` parameter; call
            ``logits(x, labels, weight)`` with a weight you own (the Caffe layer does).
    """

    kind: ClassVar[str] = ""

    def __init__(self, in_features: int, num_classes: int, own_weight: bool = True) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1:
            raise ValueError(
                f"in_features and num_classes must be positive, got {in_features}, {num_classes}"
            )
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        if own_weight:
            self.weight = nn.Parameter(torch.empty(self.num_classes, self.in_features))
            self.reset_parameters()
        else:
            self.register_parameter("weight", None)

    def reset_parameters(self) -> None:
        """Initialise ``weight``."""
        raise NotImplementedError

    def step(self) -> None:
        """Advance a per-iteration schedule (SphereFace's lambda); nothing for the other heads."""

    def logits(
        self, embeddings: Tensor, labels: Tensor | None, weight: Tensor, margin: bool = True
    ) -> Tensor:
        """Logits (N, C) of ``embeddings`` (N, D) against ``weight`` (C, D); ``margin=False`` gives
        the logits without margin and re-weighting (``s * cos``)."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, labels: Tensor | None = None) -> Tensor:
        """Logits (N, C) for embeddings (N, D) and integer labels (N,)."""
        if self.weight is None:
            raise RuntimeError("this head was built without a weight: call head.logits(x, labels, weight)")
        if self.training:
            self.step()
        return self.logits(embeddings, labels, self.weight)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, in_features={self.in_features}, num_classes={self.num_classes}"


class LinearHead(MarginHead):
    """``fc``: a plain fully connected classifier ``x @ W.T (+ b)`` for softmax; labels are ignored.

    Args:
        bias: add a learnable bias (num_classes,).
    """

    kind = "fc"

    def __init__(
        self, in_features: int, num_classes: int, bias: bool = False, own_weight: bool = True
    ) -> None:
        super().__init__(in_features, num_classes, own_weight)
        self.bias = nn.Parameter(torch.zeros(num_classes)) if bias else None

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def logits(
        self, embeddings: Tensor, labels: Tensor | None, weight: Tensor, margin: bool = True
    ) -> Tensor:
        return F.linear(embeddings, weight, self.bias)


class NormFaceHead(MarginHead):
    """``normface``: ``s * cos`` (NormFace); labels are ignored. The base of every cosine head.

    Args:
        s: the scale (alias ``scale``); must be positive.
        learnable_scale: make ``s`` a learnable parameter initialised to ``s`` (NormFace).

    Attributes:
        normalize_embeddings: L2-normalize the embeddings first (True); False takes them as
            given, as the seed's ``FC`` does (``caffe_compat.losses.seed``).
    """

    kind = "normface"
    normalize_embeddings: bool = True

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        s: float = 32.0,
        learnable_scale: bool = False,
        own_weight: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, own_weight)
        if not s > 0:
            raise ValueError(f"the scale s must be positive, got {s}")
        self.learnable_scale = bool(learnable_scale)
        if self.learnable_scale:
            self.s: float | nn.Parameter = nn.Parameter(torch.tensor(float(s)))
        else:
            self.s = float(s)

    def reset_parameters(self) -> None:
        # The seed's init: uniform(-1, 1), then every class vector rescaled to unit norm.
        with torch.no_grad():
            self.weight.uniform_(-1.0, 1.0)
            self.weight.div_(torch.linalg.vector_norm(self.weight, dim=1, keepdim=True).clamp_min(NORM_EPS))

    def target(self, cos_y: Tensor) -> Tensor:
        """The margin function of the target cosine (identity here)."""
        return cos_y

    def rule(self, margin: bool = True) -> LogitRule:
        """The LogitRule of one forward pass (``margin=False``: plain ``s * cos``)."""
        scale = 1.0 if self.learnable_scale else self.s
        if not margin or type(self).target is NormFaceHead.target:
            return LogitRule(scale=scale)
        return LogitRule(scale=scale, target=self.target)

    def logits(
        self, embeddings: Tensor, labels: Tensor | None, weight: Tensor, margin: bool = True
    ) -> Tensor:
        out = cosine_margin_logits(embeddings, weight, labels, self.rule(margin), self.normalize_embeddings)
        return out * self.s if self.learnable_scale else out

    def extra_repr(self) -> str:
        s = self.s.item() if isinstance(self.s, Tensor) else self.s
        return f"{super().extra_repr()}, s={s:g}" + (", learnable_scale=True" if self.learnable_scale else "")


class SphereFaceHead(NormFaceHead):
    """``sphereface``: A-Softmax with the seed's lambda annealing (see the module docstring).

    Args:
        m: the integer angle multiplier (alias ``margin``), >= 1.
        base, gamma (alias ``alpha``), power, lambda_min: ``lambda = max(lambda_min,
            base * (1 + gamma * iter)^-power)``; the seed's defaults.
    """

    kind = "sphereface"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float = 4,
        s: float = 32.0,
        base: float = 1000.0,
        gamma: float = 1e-4,
        power: float = 2.0,
        lambda_min: float = 5.0,
        learnable_scale: bool = False,
        own_weight: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, s, learnable_scale, own_weight)
        if float(m) != int(m) or int(m) < 1:
            raise ValueError(f"sphereface needs an integer angle multiplier m >= 1, got {m}")
        self.m = int(m)
        self.base, self.gamma, self.power, self.lambda_min = (
            float(base),
            float(gamma),
            float(power),
            float(lambda_min),
        )
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def step(self) -> None:
        self.iteration.add_(1)

    @property
    def lambda_(self) -> float:
        """The current lambda (from the iteration counter)."""
        iteration = int(self.iteration)
        return max(self.lambda_min, self.base * (1.0 + self.gamma * iteration) ** (-self.power))

    def target(self, cos_y: Tensor) -> Tensor:
        return sphereface_target(cos_y, self.m, self.lambda_)

    def rule(self, margin: bool = True) -> LogitRule:
        rule = super().rule(margin)
        if not margin:
            return rule
        lam, m = self.lambda_, self.m
        return LogitRule(scale=rule.scale, target=lambda c: sphereface_target(c, m, lam))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, iteration={int(self.iteration)}"


def sphereface_target(cos_y: Tensor, m: int, lam: float) -> Tensor:
    """SphereFace's target ``(lam * c + psi(c)) / (1 + lam)``.

    ``psi = (-1)^k cos(m theta) - 2k`` with ``theta = acos(c)`` and ``k = floor(m theta / pi)``.
    """
    k = torch.floor(m * torch.acos(cos_y.detach()) / math.pi)
    sign = 1.0 - 2.0 * torch.remainder(k, 2.0)
    psi = sign * chebyshev(cos_y, m) - 2.0 * k
    return (lam * cos_y + psi) / (1.0 + lam)


class AMSoftmaxHead(NormFaceHead):
    """``am``: AM-Softmax / CosFace, target ``cos_y - m``.

    Args:
        m: the additive cosine margin (alias ``margin``), the seed's 0.35 by default.
        easy_margin: subtract only where ``cos_y > 0``; None (default) means True, the seed's
            default, unless ``conditional`` is given.
        conditional: subtract only where ``cos_y > m`` (Caffe's LabelSpecificAdd rule).
    """

    kind = "am"
    default_m: ClassVar[float] = 0.35

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float | None = None,
        s: float = 32.0,
        easy_margin: bool | None = None,
        conditional: bool = False,
        learnable_scale: bool = False,
        own_weight: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, s, learnable_scale, own_weight)
        self.m = float(self.default_m if m is None else m)
        if self.m < 0:
            raise ValueError(f"the margin m must be >= 0, got {self.m}")
        if easy_margin and conditional:
            raise ValueError("easy_margin and conditional are exclusive (threshold 0 or threshold m)")
        if easy_margin is None:
            easy_margin = not conditional
        self.easy_margin, self.conditional = bool(easy_margin), bool(conditional)

    def margin_function(self, cos_y: Tensor) -> Tensor:
        """``f`` without the easy/conditional rule (the MV threshold)."""
        return cos_y - self.m

    def target(self, cos_y: Tensor) -> Tensor:
        shifted = self.margin_function(cos_y)
        if self.easy_margin:
            return torch.where(cos_y > 0, shifted, cos_y)
        if self.conditional:
            return torch.where(cos_y > self.m, shifted, cos_y)
        return shifted

    def extra_repr(self) -> str:
        flags = "".join(f", {f}=True" for f in ("easy_margin", "conditional") if getattr(self, f, False))
        return f"{super().extra_repr()}, m={self.m:g}{flags}"


class ArcFaceHead(AMSoftmaxHead):
    """``arc``: ArcFace, target ``cos(theta_y + m)``.

    Args:
        m: the additive angular margin (alias ``margin``), radians; the seed's 0.35 by default
            (ArcFace's paper uses 0.5).
        easy_margin: apply only where ``cos_y > 0`` (default, as the seed).
    """

    kind = "arc"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float | None = None,
        s: float = 32.0,
        easy_margin: bool = True,
        learnable_scale: bool = False,
        own_weight: bool = True,
    ) -> None:
        super().__init__(in_features, num_classes, m, s, easy_margin, False, learnable_scale, own_weight)

    def margin_function(self, cos_y: Tensor) -> Tensor:
        return cos_y * math.cos(self.m) - _safe_sin(cos_y) * math.sin(self.m)


class MVAMHead(AMSoftmaxHead):
    """``mv-am``: MV-AM-Softmax (the seed's ``MV-AM``).

    Args:
        t: the re-weighting parameter, >= 0.
        mode: ``"adaptive"`` (``(t+1) cos_k + t``, the seed's) or ``"fixed"`` (``cos_k + t``).
    """

    kind = "mv-am"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float | None = None,
        s: float = 32.0,
        t: float = 0.2,
        mode: str = "adaptive",
        easy_margin: bool = True,
        learnable_scale: bool = False,
        own_weight: bool = True,
    ) -> None:
        AMSoftmaxHead.__init__(
            self, in_features, num_classes, m, s, easy_margin, False, learnable_scale, own_weight
        )
        if mode not in ("adaptive", "fixed"):
            raise ValueError(f"mode must be 'adaptive' or 'fixed', got {mode!r}")
        if t < 0:
            raise ValueError(f"the MV re-weighting t must be >= 0, got {t}")
        self.t, self.mode = float(t), mode

    def reweighting(self) -> tuple[float, float]:
        """(slope, offset) of a re-weighted negative."""
        if self.mode == "fixed":
            return 1.0, self.t
        return self.t + 1.0, self.t

    def rule(self, margin: bool = True) -> LogitRule:
        rule = super().rule(margin)
        if not margin:
            return rule
        slope, offset = self.reweighting()
        return LogitRule(rule.scale, rule.target, self.margin_function, slope, offset)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, t={self.t:g}, mode={self.mode!r}"


class MVArcHead(MVAMHead):
    """``mv-arc``: MV-Arc-Softmax (the seed's ``MV-Arc``); parameters as ``mv-am``."""

    kind = "mv-arc"
    margin_function = ArcFaceHead.margin_function


class SVAMHead(MVAMHead):
    """``sv-am``: SV-AM-Softmax (arXiv 1812.11317): hard negatives become ``t cos_k + t - 1``.

    Args:
        t: the re-weighting parameter, >= 1 (1.2 equals ``mv-am`` with t = 0.2).
    """

    kind = "sv-am"

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        m: float | None = None,
        s: float = 32.0,
        t: float = 1.2,
        easy_margin: bool = True,
        learnable_scale: bool = False,
        own_weight: bool = True,
    ) -> None:
        if t < 1:
            raise ValueError(f"SV-Softmax needs t >= 1, got {t}")
        super().__init__(
            in_features, num_classes, m, s, t, "adaptive", easy_margin, learnable_scale, own_weight
        )

    def reweighting(self) -> tuple[float, float]:
        return self.t, self.t - 1.0

    def extra_repr(self) -> str:
        return AMSoftmaxHead.extra_repr(self) + f", t={self.t:g}"


class SVArcHead(SVAMHead):
    """``sv-arc``: SV-Arc-Softmax; parameters as ``sv-am``."""

    kind = "sv-arc"
    margin_function = ArcFaceHead.margin_function


HEAD_KINDS: dict[str, type[MarginHead]] = {
    cls.kind: cls
    for cls in (
        LinearHead,
        NormFaceHead,
        SphereFaceHead,
        AMSoftmaxHead,
        ArcFaceHead,
        MVAMHead,
        MVArcHead,
        SVAMHead,
        SVArcHead,
    )
}

#: The seed's spellings of the parameters.
PARAM_ALIASES = {"margin": "m", "scale": "s", "alpha": "gamma"}


def head_parameters(kind: str) -> list[str]:
    """The parameter names ``make_head`` accepts for ``kind`` (besides the aliases)."""
    cls = _head_class(kind)
    names = list(inspect.signature(cls.__init__).parameters)
    return [n for n in names if n not in ("self", "in_features", "num_classes")]


def _head_class(kind: str) -> type[MarginHead]:
    try:
        return HEAD_KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown head kind {kind!r}; known kinds: {', '.join(HEAD_KINDS)}") from None


def make_head(kind: str, in_features: int, num_classes: int, **params: Any) -> MarginHead:
    """Build a head by name: ``fc``, ``normface``, ``sphereface``, ``am``, ``arc``, ``mv-am``,
    ``mv-arc``, ``sv-am``, ``sv-arc``.

    Parameters (the seed's spellings are accepted too: ``margin`` for ``m``, ``scale`` for ``s``,
    ``alpha`` for ``gamma``): ``m`` (0.35 as the seed; sphereface 4), ``s`` (32), ``t`` (mv 0.2, sv
    1.2), ``mode`` (mv: "adaptive"), ``easy_margin`` (True as the seed), ``conditional`` (am),
    ``learnable_scale``, ``base``/``gamma``/``power``/``lambda_min`` (sphereface: 1000, 1e-4, 2, 5),
    ``bias`` (fc). A parameter the kind does not take is an error.
    """
    cls = _head_class(kind)
    canonical: dict[str, Any] = {}
    for name, value in params.items():
        key = PARAM_ALIASES.get(name, name)
        if key in canonical:
            raise TypeError(f"parameter {key!r} given twice (as {key!r} and its alias)")
        canonical[key] = value
    accepted = head_parameters(kind)
    unknown = sorted(set(canonical) - set(accepted))
    if unknown:
        raise TypeError(
            f"head kind {kind!r} takes no parameter {', '.join(unknown)}; it takes {', '.join(accepted)}"
        )
    return cls(in_features, num_classes, **canonical)
