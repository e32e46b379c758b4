"""Softmax and the loss layers (``softmax_layer.cpp``, ``softmax_loss_layer.cpp``,
``accuracy_layer.cpp``, ``euclidean_loss_layer.cpp``, ``sigmoid_cross_entropy_loss_layer.cpp``).

Rules followed (happynear/caffe-windows, CPU path, which produced the goldens):
- a loss layer's top is a 0-D scalar (``LossLayer::Reshape``) and its first two bottoms must agree
  on the first dimension; its first top has loss weight 1 unless the prototxt says otherwise (the
  builder applies this through ``is_loss``);
- labels arrive as float (or integer) tensors and are truncated to integers as ``static_cast<int>``
  does; no gradient ever flows into labels or weights (``AllowForceBackward`` / ``LOG(FATAL)``);
- the normalizer of SoftmaxWithLoss and SigmoidCrossEntropyLoss is ``max(1, n)`` with ``n`` chosen
  by the normalization mode (``get_normalizer``).

Labels that are neither ignored nor in ``[0, C)`` make Caffe read out of bounds; here they raise an
error instead (one host synchronisation per forward on an accelerator).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_Loss = caffe_pb2.LossParameter
#: ``FLT_MIN``: the smallest normal float32, Caffe's floor for a probability before its log.
FLT_MIN = float(torch.finfo(torch.float32).tiny)
_MODE_NAMES = {_Loss.FULL: "FULL", _Loss.VALID: "VALID", _Loss.BATCH_SIZE: "BATCH_SIZE", _Loss.NONE: "NONE"}


def _count(shape: Shape, start: int = 0, end: int | None = None) -> int:
    """Caffe's ``Blob::count(start, end)``."""
    return math.prod(shape[start:end])


def _normalizer(mode: int, outer: int, inner: int, valid_count: torch.Tensor) -> torch.Tensor:
    """``get_normalizer`` of softmax_loss_layer.cpp / sigmoid_cross_entropy_loss_layer.cpp:
    FULL ``outer*inner``, VALID the valid count, BATCH_SIZE ``outer``, NONE 1; at least 1."""
    if mode == _Loss.VALID:
        return valid_count.clamp_min(1.0)
    if mode == _Loss.FULL:
        value = outer * inner
    elif mode == _Loss.BATCH_SIZE:
        value = outer
    else:
        value = 1
    return valid_count.new_tensor(float(max(1, value)))


def _check_label_range(labels: torch.Tensor, use: torch.Tensor, num_classes: int, where: str) -> None:
    """Raise if a label that is used (not ignored) lies outside ``[0, num_classes)``."""
    if labels.device.type == "meta":
        return
    bad = use & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise LayerError(
            f"{where}: label {value} is out of range [0, {num_classes}) (and not the ignore_label)"
        )


def _ignore_label(param: caffe_pb2.LossParameter | caffe_pb2.AccuracyParameter) -> int | None:
    """``ignore_label`` where the param sets it, else None (no label is ignored)."""
    return param.ignore_label if param.HasField("ignore_label") else None


def _use_mask(labels: torch.Tensor, ignore_label: int | None) -> torch.Tensor:
    """Positions whose label is not the ``ignore_label``."""
    if ignore_label is None:
        return torch.ones_like(labels, dtype=torch.bool)
    return labels != ignore_label


def _check_label_count(ctx: BuildContext, shape: Shape, axis: int, axis_name: str) -> tuple[int, int]:
    """One label per position: ``outer * inner`` (the counts before and after ``axis``) labels in
    the second bottom. Returns ``(outer, inner)``."""
    label_shape = ctx.bottom_shapes[1]
    outer, inner = _count(shape, 0, axis), _count(shape, axis + 1)
    if outer * inner != _count(label_shape):
        raise ctx.error(
            f"number of labels must match number of predictions: prediction shape {list(shape)} with "
            f"{axis_name} axis {axis} needs {outer * inner} labels, the label blob {list(label_shape)} has "
            f"{_count(label_shape)}"
        )
    return outer, inner


def _check_weight_count(ctx: BuildContext, count: int, noun: str) -> None:
    """An optional third bottom holds one weight per label (``count``)."""
    if len(ctx.bottom_shapes) == 3 and _count(ctx.bottom_shapes[2]) != count:
        raise ctx.error(
            f"number of {noun} must match number of labels: {count} labels, the weight "
            f"blob {list(ctx.bottom_shapes[2])} has {_count(ctx.bottom_shapes[2])}"
        )


def _label_positions(
    x: torch.Tensor, label: torch.Tensor, axis: int, ignore_label: int | None
) -> tuple[int, int, int, torch.Tensor, torch.Tensor]:
    """``(channels, outer, inner, labels, use)``: the classes along ``axis``, the counts before
    and after it, the labels as ``(outer, inner)`` int64 (``static_cast<int>``) and the positions
    not ignored."""
    shape = tuple(x.shape)
    outer, inner = _count(shape, 0, axis), _count(shape, axis + 1)
    labels = label.detach().reshape(outer, inner).long()
    return shape[axis], outer, inner, labels, _use_mask(labels, ignore_label)


def _used_labels(labels: torch.Tensor, use: torch.Tensor, num_classes: int, where: str) -> torch.Tensor:
    """The labels checked to lie in ``[0, num_classes)`` where used, 0 where not."""
    _check_label_range(labels, use, num_classes, where)
    return torch.where(use, labels, 0)


def _loss_repr(parts: list[str], ignore_label: int | None) -> str:
    """``extra_repr`` of a loss layer: ``parts`` and the ``ignore_label`` when set."""
    if ignore_label is not None:
        parts.append(f"ignore_label={ignore_label}")
    return ", ".join(p for p in parts if p)


def _loss_checks(ctx: BuildContext) -> None:
    """``LossLayer::Reshape``: the data and the label have the same first dimension."""
    first, second = ctx.bottom_shapes[0], ctx.bottom_shapes[1]
    if len(first) == 0 or len(second) == 0 or first[0] != second[0]:
        raise ctx.error(
            f"the data and label should have the same first dimension, got {list(first)} and {list(second)}"
        )


def _legacy_normalization(loss_param: caffe_pb2.LossParameter, default: int) -> int:
    """The normalization mode: ``normalization`` if given, else the legacy bool ``normalize``
    (true VALID, false BATCH_SIZE), else ``default``."""
    if loss_param.HasField("normalization"):
        return loss_param.normalization
    if loss_param.HasField("normalize"):
        return _Loss.VALID if loss_param.normalize else _Loss.BATCH_SIZE
    return default


# ------------------------------------------------------------------------------------------------
@register("Softmax")
class Softmax(CaffeLayer):
    """``y = exp(x - max) / sum(exp(x - max))`` along ``axis`` (default 1), softmax_layer.cpp.

    Caffe's backward, ``(dy - sum(dy * y)) * y``, is the exact gradient, so autograd is used.
    """

    family = "loss"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "prob" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 1 } }
"""

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = int(axis)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Softmax:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        shape = ctx.bottom_shapes[0]
        return cls(canonical_axis(layer.softmax_param.axis, len(shape), ctx))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x, dim=self.axis)


# ------------------------------------------------------------------------------------------------
class _SoftmaxLossFunction(torch.autograd.Function):
    """Forward and backward of ``SoftmaxWithLossLayer`` (CPU), on ``(outer, C, inner)`` views.

    The loss is ``-sum w * log(max(p_label, FLT_MIN)) / normalizer``; the backward is Caffe's
    ``(p - onehot) * w * top_diff / normalizer`` even where the floor cut the true gradient. With a
    weight bottom the forward counts ``weight * class_weight`` while the backward counts the bare
    weights (both as in softmax_loss_layer.cpp), so the two normalizers may differ.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        labels: torch.Tensor,
        use: torch.Tensor,
        weights: torch.Tensor | None,
        class_weight: torch.Tensor | None,
        mode: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outer, _, inner = x.shape
        prob = torch.softmax(x, dim=1)
        target_prob = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
        nll = -torch.log(target_prob.clamp_min(FLT_MIN))
        if weights is None:
            loss = torch.where(use, nll, 0.0).sum()
            count_forward = use.sum().to(x.dtype)
            count_backward = count_forward
            scale = None
        else:
            scale = weights if class_weight is None else weights * class_weight[labels]
            used = use & (scale != 0)
            loss = torch.where(used, scale * nll, 0.0).sum()
            count_forward = torch.where(used, scale, 0.0).sum()
            count_backward = torch.where(use & (weights != 0), weights, 0.0).sum()
        loss = loss / _normalizer(mode, outer, inner, count_forward)
        ctx.save_for_backward(prob, labels, use, scale, _normalizer(mode, outer, inner, count_backward))
        ctx.mark_non_differentiable(prob)
        return loss, prob

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_loss: torch.Tensor, _grad_prob: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        prob, labels, use, scale, normalizer = ctx.saved_tensors
        grad = prob.clone()
        index = labels.unsqueeze(1)
        grad.scatter_add_(1, index, torch.full(index.shape, -1.0, dtype=prob.dtype, device=prob.device))
        factor = use.to(prob.dtype) if scale is None else torch.where(use, scale, 0.0)
        grad = grad * factor.unsqueeze(1) * (grad_loss / normalizer)
        return grad, None, None, None, None, None


class _SoftmaxLoss(CaffeLayer):
    """Shared parts of the losses over an internal softmax along ``axis`` with one label per
    position (SoftmaxWithLoss, InfogainLoss): ``ignore_label``, the normalization mode, and an
    optional second top with the probabilities (no gradient flows back from it)."""

    def __init__(self, axis: int, ignore_label: int | None, normalization: int, num_tops: int) -> None:
        super().__init__()
        self.axis = int(axis)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.normalization = int(normalization)
        self.num_tops = int(num_tops)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(), tuple(bottom_shapes[0])][: self.num_tops]

    def _outputs(
        self, loss: torch.Tensor, prob: torch.Tensor, shape: Sequence[int]
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The loss, and with a second top the probabilities in the data's ``shape``."""
        if self.num_tops == 1:
            return loss
        return loss, prob.reshape(shape)

    def extra_repr(self) -> str:
        parts = [
            super().extra_repr(),
            f"axis={self.axis}",
            f"normalization={_MODE_NAMES[self.normalization]}",
        ]
        return _loss_repr(parts, self.ignore_label)


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(_SoftmaxLoss):
    """Softmax over ``axis`` followed by the multinomial logistic loss (softmax_loss_layer.cpp).

    Labels hold ``outer * inner`` values (``(N,)``, ``(N, H, W)``, ``(N, 1, H, W)`` ...). Positions
    whose label equals ``ignore_label`` add neither loss nor count. ``normalization`` (default
    VALID; the legacy ``normalize: false`` is BATCH_SIZE) picks the divisor. An optional third
    bottom gives per-position weights (the fork), scaled by ``softmax_param.class_weight`` when
    given; the optional second top is the probabilities (loss weight 0, no gradient flows back
    from it).

    Deviations: the fork's ``label_smooth_factor`` and ``cutting_point`` act only in its GPU
    kernels (its CPU path ignores them) and ``normalize_type`` L1/L2 replaces the softmax by a
    Normalize layer; these raise an error rather than give numbers one of the fork's paths would
    not. ``hard_ratio`` has no effect in the fork at all, ``hard_mining_label`` only qualifies
    ``cutting_point``: both are ignored.
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 5 dim: 7 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob"
        loss_param { ignore_label: 255 normalization: VALID } }
"""

    def __init__(
        self,
        axis: int = 1,
        ignore_label: int | None = None,
        normalization: int = _Loss.VALID,
        class_weight: list[float] | None = None,
        num_tops: int = 1,
    ) -> None:
        super().__init__(axis, ignore_label, normalization, num_tops)
        weight = None if not class_weight else torch.tensor(class_weight, dtype=torch.float32)
        self.register_buffer("class_weight", weight, persistent=False)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> SoftmaxWithLoss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        _loss_checks(ctx)
        softmax = layer.softmax_param
        if softmax.normalize_type != "Softmax":
            raise ctx.error(
                f"softmax_param.normalize_type '{softmax.normalize_type}' (the fork's Normalize-based loss) "
                "is not supported; only 'Softmax'"
            )
        for name, active in (
            ("label_smooth_factor", softmax.label_smooth_factor != 0),
            ("cutting_point", softmax.HasField("cutting_point")),
        ):
            if active:
                raise ctx.error(
                    f"softmax_param.{name} is not supported: the fork applies it only in its GPU kernels "
                    "(softmax_loss_layer.cu) and its CPU path ignores it"
                )
        shape = ctx.bottom_shapes[0]
        axis = canonical_axis(softmax.axis, len(shape), ctx)
        outer, inner = _check_label_count(ctx, shape, axis, "softmax")
        _check_weight_count(ctx, outer * inner, "loss weights")
        class_weight = list(softmax.class_weight)
        if class_weight and len(class_weight) != shape[axis]:
            raise ctx.error(
                f"softmax_param gives {len(class_weight)} class_weight values for {shape[axis]} classes"
            )
        mode = _legacy_normalization(layer.loss_param, _Loss.VALID)
        return cls(axis, _ignore_label(layer.loss_param), mode, class_weight, len(layer.top))

    def forward(
        self, x: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape = x.shape
        channels, outer, inner, labels, use = _label_positions(x, label, self.axis, self.ignore_label)
        labels = _used_labels(labels, use, channels, f"layer '{self.caffe_name}' (SoftmaxWithLoss)")
        weights = None if weight is None else weight.detach().reshape(outer, inner).to(x.dtype)
        class_weight = None
        if weights is not None and self.class_weight is not None:
            class_weight = self.class_weight.to(device=x.device, dtype=x.dtype)
        loss, prob = _SoftmaxLossFunction.apply(
            x.reshape(outer, channels, inner), labels, use, weights, class_weight, self.normalization
        )
        return self._outputs(loss, prob, shape)


# ------------------------------------------------------------------------------------------------
@register("Accuracy")
class Accuracy(CaffeLayer):
    """Top-k classification accuracy (accuracy_layer.cpp of the fork); no gradient.

    The fork ranks the classes with ``std::partial_sort`` on ``(score, class)`` pairs, so a
    prediction is correct when fewer than ``top_k`` classes beat the label's pair: a strictly
    greater score, or an equal score and a greater class index (``min_is_better``: smaller score,
    or equal score and smaller index). Ignored labels, and positions whose optional third-bottom
    weight is 0, are skipped; the accuracy is ``correct / counted`` (NaN when nothing is counted,
    as in the fork). The optional second top holds the per-class accuracy (0 for absent classes).
    """

    family = "loss"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 5 dim: 7 } } }
layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" top: "per_class"
        accuracy_param { top_k: 2 } }
"""

    def __init__(
        self,
        top_k: int = 1,
        axis: int = 1,
        ignore_label: int | None = None,
        min_is_better: bool = False,
        num_tops: int = 1,
    ) -> None:
        super().__init__()
        self.top_k = int(top_k)
        self.axis = int(axis)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.min_is_better = bool(min_is_better)
        self.num_tops = int(num_tops)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Accuracy:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        param = layer.accuracy_param
        shape, label_shape = ctx.bottom_shapes[0], ctx.bottom_shapes[1]
        per_label = _count(shape) // max(1, _count(label_shape))
        if param.top_k > per_label:
            raise ctx.error(
                f"top_k ({param.top_k}) must be less than or equal to the number of classes ({per_label})"
            )
        if param.top_k < 1:
            raise ctx.error("top_k must be at least 1")
        axis = canonical_axis(param.axis, len(shape), ctx)
        outer, inner = _check_label_count(ctx, shape, axis, "label")
        _check_weight_count(ctx, outer * inner, "weights")
        return cls(param.top_k, axis, _ignore_label(param), param.min_is_better, len(layer.top))

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(), (bottom_shapes[0][self.axis],)][: self.num_tops]

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        channels, outer, inner, labels, use = _label_positions(x, label, self.axis, self.ignore_label)
        scores = x.detach().reshape(outer, channels, inner)
        if weight is not None:
            use = use & (weight.detach().reshape(outer, inner) != 0)
        labels = _used_labels(labels, use, channels, f"layer '{self.caffe_name}' (Accuracy)")
        target = scores.gather(1, labels.unsqueeze(1))
        classes = torch.arange(channels, device=x.device).view(1, channels, 1)
        if self.min_is_better:
            ahead = (scores < target) | ((scores == target) & (classes < labels.unsqueeze(1)))
        else:
            ahead = (scores > target) | ((scores == target) & (classes > labels.unsqueeze(1)))
        correct = use & (ahead.sum(dim=1) < self.top_k)
        accuracy = correct.sum().to(x.dtype) / use.sum().to(x.dtype)
        if self.num_tops == 1:
            return accuracy
        flat_labels = labels.reshape(-1)
        totals = torch.zeros(channels, dtype=x.dtype, device=x.device).scatter_add_(
            0, flat_labels, use.reshape(-1).to(x.dtype)
        )
        hits = torch.zeros(channels, dtype=x.dtype, device=x.device).scatter_add_(
            0, flat_labels, correct.reshape(-1).to(x.dtype)
        )
        per_class = torch.where(totals == 0, 0.0, hits / totals.clamp_min(1.0))
        return accuracy, per_class


# ------------------------------------------------------------------------------------------------
class _EuclideanLossFunction(torch.autograd.Function):
    """``d = (a - b) [* w]``, ``loss = d.d / N / 2``; Caffe's backward gives ``a`` the diff
    ``top_diff / N * d`` and ``b`` its negative, the weights no diff (euclidean_loss_layer.cpp).
    With weights this is not the exact gradient (which has ``w**2``): Caffe's is kept."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, a: torch.Tensor, b: torch.Tensor, w: torch.Tensor | None
    ) -> torch.Tensor:
        diff = a - b.reshape(a.shape)
        if w is not None:
            diff = diff * w.reshape(a.shape)
        num = a.shape[0]
        ctx.b_shape = b.shape
        ctx.num = num
        ctx.save_for_backward(diff)
        return (diff * diff).sum() / num / 2

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (diff,) = ctx.saved_tensors
        grad_a = diff * (grad / ctx.num)
        grad_b = None
        if ctx.needs_input_grad[1]:
            grad_b = (-grad_a).reshape(ctx.b_shape)
        return grad_a, grad_b, None


@register("EuclideanLoss")
class EuclideanLoss(CaffeLayer):
    """``sum((a - b)**2) / (2 N)`` with ``N = a.shape[0]`` (euclidean_loss_layer.cpp).

    Both bottoms get a gradient (the layer allows force_backward on either). The fork's optional
    third bottom multiplies ``a - b`` element-wise; Caffe then back-propagates ``w (a - b) / N``,
    not the exact gradient, and that is reproduced.
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> EuclideanLoss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1)
        _loss_checks(ctx)
        shapes = ctx.bottom_shapes
        if _count(shapes[0], 1) != _count(shapes[1], 1):
            raise ctx.error(
                f"inputs must have the same dimension: {list(shapes[0])} and {list(shapes[1])} differ "
                "after axis 0"
            )
        if len(shapes) == 3 and _count(shapes[2]) != _count(shapes[0]):
            raise ctx.error(
                f"the weight blob {list(shapes[2])} must have as many elements as {list(shapes[0])}"
            )
        return cls()

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        return _EuclideanLossFunction.apply(a, b, None if weight is None else weight.detach())


# ------------------------------------------------------------------------------------------------
class _SigmoidCrossEntropyFunction(torch.autograd.Function):
    """The stable cross-entropy ``-(x (t - [x>=0]) - log(1 + exp(-|x|)))`` summed over the used
    elements and divided by the normalizer; backward ``(sigmoid(x) - t) * top_diff / normalizer``,
    zero where ignored (sigmoid_cross_entropy_loss_layer.cpp). ``log1p`` stands for Caffe's
    ``log(1 + .)``: the same value up to float rounding."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        t: torch.Tensor,
        use: torch.Tensor | None,
        mode: int,
    ) -> torch.Tensor:
        positive = (x >= 0).to(x.dtype)
        log_likelihood = x * (t - positive) - torch.log1p(torch.exp(-x.abs()))
        if use is None:
            loss = -log_likelihood.sum()
            valid = x.new_tensor(float(x.numel()))
        else:
            loss = -torch.where(use, log_likelihood, 0.0).sum()
            valid = use.sum().to(x.dtype)
        outer = x.shape[0] if x.dim() else 1
        normalizer = _normalizer(mode, outer, x.numel() // max(1, outer), valid)
        ctx.save_for_backward(x, t, use, normalizer)
        return loss / normalizer

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        x, t, use, normalizer = ctx.saved_tensors
        diff = torch.sigmoid(x) - t
        if use is not None:
            diff = torch.where(use, diff, 0.0)
        return diff * (grad / normalizer), None, None, None


@register("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(CaffeLayer):
    """Cross-entropy of ``sigmoid(x)`` against targets ``t`` (sigmoid_cross_entropy_loss_layer.cpp).

    Targets may be soft (used as float); an element whose target truncates to ``ignore_label`` is
    skipped. The fork's normalization: ``normalization`` if given, else the legacy ``normalize``
    (true VALID, false BATCH_SIZE), else BATCH_SIZE (divide by ``N``), not the proto default VALID.
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "t" type: "Input" top: "t" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss"
        loss_param { ignore_label: -1 normalization: VALID } }
"""

    def __init__(self, ignore_label: int | None = None, normalization: int = _Loss.BATCH_SIZE) -> None:
        super().__init__()
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.normalization = int(normalization)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> SigmoidCrossEntropyLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        _loss_checks(ctx)
        first, second = ctx.bottom_shapes
        if _count(first) != _count(second):
            raise ctx.error(
                f"inputs must have the same count: {list(first)} has {_count(first)} elements, "
                f"{list(second)} has {_count(second)}"
            )
        param = layer.loss_param
        return cls(_ignore_label(param), _legacy_normalization(param, _Loss.BATCH_SIZE))

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.detach().reshape(x.shape).to(x.dtype)
        use = None if self.ignore_label is None else t.long() != self.ignore_label
        return _SigmoidCrossEntropyFunction.apply(x, t, use, self.normalization)

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"normalization={_MODE_NAMES[self.normalization]}"]
        return _loss_repr(parts, self.ignore_label)
