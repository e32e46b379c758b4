"""Classification losses of happynear/caffe-windows beyond SoftmaxWithLoss: ``FocalLoss``,
``HingeLoss``, ``InfogainLoss``, ``MultinomialLogisticLoss``, ``ConfidencePenaltyLoss`` and the
``FCNAccuracy`` metric (each follows its ``<name>_layer.cpp``, CPU path, which produced the goldens).

Shared rules (see ``loss.py``): the loss top is a 0-D scalar; labels are float blobs truncated as
``static_cast<int>`` does; no gradient flows into labels (or an infogain matrix); the normalizer of
FocalLoss and InfogainLoss is ``max(1, n)`` with ``n`` chosen by ``loss_param.normalization``.
Where Caffe's backward is not the exact gradient of its forward (the focal weight ``g``, the
``1e-20`` floor of the logarithms), a ``torch.autograd.Function`` reproduces Caffe's.
Labels that are neither ignored nor in range make Caffe read out of bounds; here they raise.
"""

from __future__ import annotations

import torch

from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape, canonical_axis
from caffe_compat.layers.face.common import check_legacy, legacy_shape
from caffe_compat.layers.loss import (
    _MODE_NAMES,
    FLT_MIN,
    _check_label_count,
    _check_label_range,
    _count,
    _ignore_label,
    _label_positions,
    _legacy_normalization,
    _Loss,
    _loss_checks,
    _loss_repr,
    _normalizer,
    _SoftmaxLoss,
    _used_labels,
)
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import read_blobproto

#: ``kLOG_THRESHOLD`` of Caffe's loss layers: the floor of a probability before its log.
LOG_THRESHOLD = 1e-20
_Focal = caffe_pb2.FocalLossParameter
_Hinge = caffe_pb2.HingeLossParameter

_X_LABEL = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
"""


def _check_label_blob(ctx: BuildContext) -> None:
    """``CHECK_EQ(bottom[1]->channels(), 1)`` and the same for height and width (one label per
    image, read with the legacy accessors)."""
    label = ctx.bottom_shapes[1]
    check_legacy(ctx, label, "the label bottom")
    if legacy_shape(label)[1:] != (1, 1, 1):
        raise ctx.error(f"the label bottom must have channels, height and width 1, got {list(label)}")


def _per_image_labels(
    layer: CaffeLayer, x: torch.Tensor, label: torch.Tensor
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """``(N, rows, labels)``: ``x`` viewed as ``(N, dim)`` rows and ``static_cast<int>(label[i])``
    for the N images, each checked to lie in ``[0, dim)`` (errors name ``layer``)."""
    num = x.shape[0]
    rows = x.reshape(num, -1)
    labels = label.detach().reshape(-1)[:num].long()
    where = f"layer '{layer.caffe_name}' ({layer.caffe_type})"
    _check_label_range(labels, torch.ones_like(labels, dtype=torch.bool), rows.shape[1], where)
    return num, rows, labels


# -- FocalLoss -----------------------------------------------------------------------------------
class _FocalLossFunction(torch.autograd.Function):
    """``focal_loss_layer.cpp`` on ``(outer, C, inner)`` views: forward
    ``-sum (alpha -/+ p_t)^gamma * log max(p_t, FLT_MIN) / normalizer`` and Caffe's backward
    ``g * (p_c - [c = y]) * top_diff / normalizer`` (zero where ignored)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        labels: torch.Tensor,
        use: torch.Tensor,
        alpha: float,
        gamma: float,
        one_add_p: bool,
        mode: int,
    ) -> torch.Tensor:
        outer, _, inner = x.shape
        prob = torch.softmax(x, dim=1)
        p_t = prob.gather(1, labels.unsqueeze(1)).squeeze(1)
        log_p = torch.log(p_t.clamp_min(FLT_MIN))
        power = torch.pow(alpha + p_t if one_add_p else alpha - p_t, gamma)
        loss = -torch.where(use, power * log_p, 0.0).sum()
        normalizer = _normalizer(mode, outer, inner, use.sum().to(x.dtype))
        if one_add_p:
            g = gamma * (power / (1 + p_t).clamp_min(1e-10)) * log_p * p_t + power
        else:
            g = -gamma * (power / (1 - p_t).clamp_min(1e-10)) * log_p * p_t + power
        ctx.save_for_backward(prob, labels, use, g, normalizer)
        return loss / normalizer

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        prob, labels, use, g, normalizer = ctx.saved_tensors
        diff = prob.scatter_add(1, labels.unsqueeze(1), -torch.ones_like(prob[:, :1]))
        diff = diff * torch.where(use, g, 0.0).unsqueeze(1) * (grad / normalizer)
        return diff, None, None, None, None, None, None


@register("FocalLoss")
class FocalLoss(CaffeLayer):
    """Focal loss over a softmax (focal_loss_layer.cpp of happynear/caffe-windows).

    ``p = softmax(x)`` over ``softmax_param.axis`` (default 1), ``p_t`` the label's probability;
    loss ``-sum (alpha - p_t)^gamma * log max(p_t, FLT_MIN)`` (type ORIGIN, the default; LINEAR
    behaves the same) or ``-sum (alpha + p_t)^gamma * log p_t`` (ONEADDP) over the positions whose
    label is not ``ignore_label``, divided by the ``loss_param.normalization`` count (default VALID;
    the legacy ``normalize``). ``beta`` is unused, as in Caffe.

    Backward: Caffe's ``dx_c = g (p_c - [c = y]) top_diff / normalizer`` with
    ``g = -gamma (alpha - p_t)^gamma / max(1 - p_t, 1e-10) p_t log p_t + (alpha - p_t)^gamma``
    (ONEADDP: ``+gamma (alpha + p_t)^gamma / max(1 + p_t, 1e-10) ...``), which is the exact
    gradient only for ``alpha = 1``; it is reproduced as is.

    A second (probability) top is refused: Caffe aborts on it (the internal Softmax inherits the
    layer's two ``loss_weight`` entries, or the single default one mismatches two tops).
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 5 dim: 7 } } }
layer { name: "loss" type: "FocalLoss" bottom: "x" bottom: "label" top: "loss"
        focal_loss_param { type: ONEADDP gamma: 1 alpha: 0.5 } loss_param { ignore_label: 2 } }
"""

    def __init__(
        self,
        axis: int = 1,
        alpha: float = 1.0,
        gamma: float = 2.0,
        focal_type: int = _Focal.ORIGIN,
        ignore_label: int | None = None,
        normalization: int = _Loss.VALID,
    ) -> None:
        super().__init__()
        self.axis = int(axis)
        self.alpha = float(alpha)
        self.gamma = float(gamma)
        self.focal_type = int(focal_type)
        self.ignore_label = None if ignore_label is None else int(ignore_label)
        self.normalization = int(normalization)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> FocalLoss:
        ctx.check_bottoms(2)
        if len(layer.top) == 2:
            raise ctx.error(
                "a second (probability) top is not supported: Caffe aborts on it, because the "
                "internal Softmax layer inherits the loss_weight entries of this layer"
            )
        ctx.check_tops(1)
        _loss_checks(ctx)
        param = layer.focal_loss_param
        if param.gamma < 0:
            raise ctx.error(f"gamma must be larger than or equal to zero, got {param.gamma}")
        if param.alpha <= 0:
            raise ctx.error(f"alpha must be larger than zero, got {param.alpha}")
        shape = ctx.bottom_shapes[0]
        axis = canonical_axis(layer.softmax_param.axis, len(shape), ctx)
        _check_label_count(ctx, shape, axis, "softmax")
        loss = layer.loss_param
        mode = _legacy_normalization(loss, _Loss.VALID)
        return cls(axis, param.alpha, param.gamma, param.type, _ignore_label(loss), mode)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        channels, outer, inner, labels, use = _label_positions(x, label, self.axis, self.ignore_label)
        labels = _used_labels(labels, use, channels, f"layer '{self.caffe_name}' (FocalLoss)")
        return _FocalLossFunction.apply(
            x.reshape(outer, channels, inner),
            labels,
            use,
            self.alpha,
            self.gamma,
            self.focal_type == _Focal.ONEADDP,
            self.normalization,
        )

    def extra_repr(self) -> str:
        parts = [
            super().extra_repr(),
            f"type={_Focal.Type.Name(self.focal_type)}",
            f"alpha={self.alpha}",
            f"gamma={self.gamma}",
            f"normalization={_MODE_NAMES[self.normalization]}",
        ]
        return _loss_repr(parts, self.ignore_label)


# -- HingeLoss -----------------------------------------------------------------------------------
@register("HingeLoss")
class HingeLoss(CaffeLayer):
    """One-vs-all hinge loss (hinge_loss_layer.cpp).

    With ``x`` viewed as ``(N, dim)`` and one label per image: ``t_ij = max(0, 1 - x_ij)`` for the
    label ``j``, ``max(0, 1 + x_ij)`` otherwise; ``norm`` L1 (default) ``sum t / N``, L2
    ``sum t^2 / N``. Caffe's backward (``sign(t)`` resp. ``2 t``, negated at the label, times
    ``top_diff / N``) is the exact gradient, with 0 at the kink as autograd's ``relu``: autograd is
    used.
    """

    family = "loss"

    is_loss = True
    example = (
        _X_LABEL
        + """layer { name: "loss" type: "HingeLoss" bottom: "x" bottom: "label" top: "loss"
        hinge_loss_param { norm: L2 } }
"""
    )

    def __init__(self, norm: int = _Hinge.L1) -> None:
        super().__init__()
        self.norm = int(norm)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> HingeLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        _loss_checks(ctx)
        return cls(layer.hinge_loss_param.norm)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        num, scores, labels = _per_image_labels(self, x, label)
        target = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)
        t = torch.relu(1 + torch.where(target, -scores, scores))
        if self.norm == _Hinge.L2:
            return (t * t).sum() / num
        return t.sum() / num

    def extra_repr(self) -> str:
        return ", ".join(p for p in (super().extra_repr(), f"norm={_Hinge.Norm.Name(self.norm)}") if p)


# -- InfogainLoss --------------------------------------------------------------------------------
class _InfogainLossFunction(torch.autograd.Function):
    """infogain_loss_layer.cpp on ``(outer, L, inner)`` views: forward
    ``-sum_valid sum_l H[y, l] log max(p_l, 1e-20) / normalizer``; Caffe's backward
    ``(p_l sum_k H[y, k] - H[y, l]) * top_diff / normalizer`` (zero where ignored), H gets none."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx,
        x: torch.Tensor,
        labels: torch.Tensor,
        use: torch.Tensor,
        infogain: torch.Tensor,
        mode: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        outer, _, inner = x.shape
        prob = torch.softmax(x, dim=1)
        rows = infogain[labels].permute(0, 2, 1)  # (outer, L, inner): H[y, l]
        per_position = (rows * torch.log(prob.clamp_min(LOG_THRESHOLD))).sum(dim=1)
        loss = -torch.where(use, per_position, 0.0).sum()
        normalizer = _normalizer(mode, outer, inner, use.sum().to(x.dtype))
        ctx.save_for_backward(prob, rows, use, normalizer)
        ctx.mark_non_differentiable(prob)
        return loss / normalizer, prob

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor, _grad_prob: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, ...]:
        prob, rows, use, normalizer = ctx.saved_tensors
        diff = prob * rows.sum(dim=1, keepdim=True) - rows
        diff = torch.where(use.unsqueeze(1), diff, 0.0) * (grad / normalizer)
        return diff, None, None, None, None


@register("InfogainLoss")
class InfogainLoss(_SoftmaxLoss):
    """Infogain loss over an internal softmax (infogain_loss_layer.cpp).

    ``p = softmax(x)`` over ``infogain_loss_param.axis`` (default 1, L classes); the L x L matrix H
    comes from a third bottom or, with two bottoms, from the BlobProto file
    ``infogain_loss_param.source`` (read once when the layer is built, kept in the non-persistent
    buffer ``infogain``, not a Caffe blob). ``loss = -sum_valid sum_l H[y, l] log max(p_l, 1e-20) /
    normalizer`` with ``loss_param.normalization`` (default VALID; the legacy ``normalize`` is
    refused, as Caffe does) and ``ignore_label``. Backward: Caffe's
    ``(p_l sum_k H[y, k] - H[y, l]) * top_diff / normalizer`` (the 1e-20 floor is not
    differentiated); H and the labels get no gradient (Caffe aborts when asked to back-propagate
    into H). The optional second top is the probabilities, through which no gradient flows.
    """

    family = "loss"

    is_loss = True
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 dim: 5 dim: 7 } } }
layer { name: "H" type: "Input" top: "H" input_param { shape { dim: 3 dim: 3 } } }
layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" top: "prob"
        loss_weight: 1 loss_weight: 0 loss_param { ignore_label: 2 normalization: FULL } }
"""

    infogain: torch.Tensor | None

    def __init__(
        self,
        axis: int = 1,
        ignore_label: int | None = None,
        normalization: int = _Loss.VALID,
        infogain: torch.Tensor | None = None,
        num_tops: int = 1,
    ) -> None:
        super().__init__(axis, ignore_label, normalization, num_tops)
        self.register_buffer("infogain", infogain, persistent=False)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> InfogainLoss:
        ctx.check_bottoms(2, 3)
        ctx.check_tops(1, 2)
        _loss_checks(ctx)
        loss = layer.loss_param
        if loss.HasField("normalize"):
            raise ctx.error('loss_param.normalize is deprecated (Caffe refuses it); use "normalization"')
        shape = ctx.bottom_shapes[0]
        param = layer.infogain_loss_param
        axis = canonical_axis(param.axis, len(shape), ctx)
        _check_label_count(ctx, shape, axis, "infogain")
        num_labels = shape[axis]
        infogain = None
        if len(ctx.bottom_shapes) == 3:
            h_count, where = _count(ctx.bottom_shapes[2]), f"the H bottom {list(ctx.bottom_shapes[2])}"
        else:
            if not param.HasField("source"):
                raise ctx.error("infogain matrix source must be specified (infogain_loss_param.source)")
            path = ctx.resolve_path(param.source)
            try:
                infogain = torch.from_numpy(read_blobproto(path).astype("float32"))
            except (OSError, CaffeCompatError) as exc:
                raise ctx.error(f"cannot read the infogain matrix '{param.source}': {exc}") from exc
            h_count, where = infogain.numel(), f"the matrix in '{param.source}' {list(infogain.shape)}"
            infogain = infogain.reshape(num_labels, -1) if h_count == num_labels * num_labels else None
        if h_count != num_labels * num_labels:
            raise ctx.error(
                f"H must be {num_labels}x{num_labels} for {num_labels} classes, {where} has {h_count}"
            )
        return cls(axis, _ignore_label(loss), loss.normalization, infogain, len(layer.top))

    def forward(
        self, x: torch.Tensor, label: torch.Tensor, infogain: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        shape = tuple(x.shape)
        channels = shape[self.axis]
        matrix = self.infogain if infogain is None else infogain
        if matrix is None:
            raise LayerError(f"layer '{self.caffe_name}' (InfogainLoss): H is neither a bottom nor loaded")
        matrix = matrix.detach().reshape(channels, channels).to(device=x.device, dtype=x.dtype)
        _, outer, inner, labels, use = _label_positions(x, label, self.axis, self.ignore_label)
        labels = _used_labels(labels, use, channels, f"layer '{self.caffe_name}' (InfogainLoss)")
        loss, prob = _InfogainLossFunction.apply(
            x.reshape(outer, channels, inner), labels, use, matrix, self.normalization
        )
        return self._outputs(loss, prob, shape)


# -- MultinomialLogisticLoss ---------------------------------------------------------------------
class _MultinomialLogisticFunction(torch.autograd.Function):
    """multinomial_logistic_loss_layer.cpp: ``-sum log max(p[i, y_i], 1e-20) / N``; Caffe's backward
    ``-top_diff / N / max(p[i, y_i], 1e-20)`` at the label (also below the floor), 0 elsewhere."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, prob: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor:
        target = prob.gather(1, labels.unsqueeze(1)).clamp_min(LOG_THRESHOLD)
        ctx.save_for_backward(target, labels)
        ctx.shape = prob.shape
        return -torch.log(target).sum() / prob.shape[0]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None]:
        target, labels = ctx.saved_tensors
        diff = torch.zeros(ctx.shape, dtype=target.dtype, device=target.device)
        diff.scatter_(1, labels.unsqueeze(1), -(grad / ctx.shape[0]) / target)
        return diff, None


@register("MultinomialLogisticLoss")
class MultinomialLogisticLoss(CaffeLayer):
    """The log loss of given probabilities (multinomial_logistic_loss_layer.cpp).

    Bottom 0 holds probabilities viewed as ``(N, dim)``, bottom 1 one label per image (channels,
    height and width 1). ``loss = -sum_i log max(p[i, y_i], 1e-20) / N``; Caffe's backward
    ``-top_diff / (N max(p[i, y_i], 1e-20))`` at the label, which differs from the exact gradient
    (0) below the floor: it is reproduced.
    """

    family = "loss"

    is_loss = True
    example = (
        _X_LABEL
        + """layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "x" bottom: "label" top: "loss" }
"""
    )

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MultinomialLogisticLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        _loss_checks(ctx)
        _check_label_blob(ctx)
        return cls()

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        _, flat, labels = _per_image_labels(self, prob, label)
        return _MultinomialLogisticFunction.apply(flat, labels)


# -- ConfidencePenaltyLoss -----------------------------------------------------------------------
class _ConfidencePenaltyFunction(torch.autograd.Function):
    """confidence_penalty_loss_layer.cpp: ``-sum_ij w_ij log max(p_ij, 1e-20) / N`` with
    ``w = 1 - beta`` at the label and ``beta / (N - 1)`` elsewhere; Caffe's backward
    ``-top_diff / N * w / max(p, 1e-20)`` everywhere (also below the floor)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, prob: torch.Tensor, weights: torch.Tensor
    ) -> torch.Tensor:
        floored = prob.clamp_min(LOG_THRESHOLD)
        ctx.save_for_backward(floored, weights)
        return -(weights * torch.log(floored)).sum() / prob.shape[0]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor
    ) -> tuple[torch.Tensor | None, None]:
        floored, weights = ctx.saved_tensors
        return -(grad / floored.shape[0]) * weights / floored, None


@register("ConfidencePenaltyLoss")
class ConfidencePenaltyLoss(CaffeLayer):
    """Cross-entropy with a confidence penalty on given probabilities
    (confidence_penalty_loss_layer.cpp of happynear/caffe-windows).

    Bottom 0 holds probabilities viewed as ``(N, dim)``, bottom 1 one label per image. ``loss =
    -(1/N) sum_i [(1 - beta) log p_{i,y_i} + beta / (N - 1) sum_{j != y_i} log p_ij]`` with each
    ``p`` floored at 1e-20 and N the **batch size** (as in Caffe, not the class count); ``beta``
    from ``confidence_penalty_loss_param`` (default 0.1). Backward: Caffe's
    ``-top_diff w_ij / (N max(p_ij, 1e-20))``, the exact gradient except below the floor.
    """

    family = "loss"

    is_loss = True
    example = (
        _X_LABEL
        + """layer { name: "loss" type: "ConfidencePenaltyLoss" bottom: "x" bottom: "label" top: "loss"
        confidence_penalty_loss_param { beta: 0.3 } }
"""
    )

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = float(beta)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ConfidencePenaltyLoss:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        _loss_checks(ctx)
        _check_label_blob(ctx)
        return cls(layer.confidence_penalty_loss_param.beta)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    def forward(self, prob: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        num, flat, labels = _per_image_labels(self, prob, label)
        # beta / (N - 1) in floating point: +inf for a batch of one, as in Caffe
        other = torch.tensor(self.beta, dtype=prob.dtype) / (num - 1.0)
        target = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, labels.unsqueeze(1), True)
        weights = torch.where(target, 1.0 - self.beta, other.to(prob.device))
        return _ConfidencePenaltyFunction.apply(flat, weights)

    def extra_repr(self) -> str:
        return ", ".join(p for p in (super().extra_repr(), f"beta={self.beta}") if p)


# -- FCNAccuracy ---------------------------------------------------------------------------------
@register("FCNAccuracy")
class FCNAccuracy(CaffeLayer):
    """Group-maximum accuracy of happynear/caffe-windows (fcn_accuracy_layer.cpp); no gradient.

    ``accuracy_param.top_k`` (default 1) is a group size G: the images form consecutive groups of
    G (a trailing incomplete group is not counted). A group counts as correct when its maximum
    score (the first one in n, c, h, w order, found by Caffe's strict ``>`` scan from
    ``-max``) lies in image ``(G - 1) / 2`` of the group and the label at that position is > 0,
    where the label is read at image ``n mod G``, i.e. always from the first G images, as in Caffe.
    Top: correct groups / groups (NaN when there is no complete group). The optional third bottom
    is read by no one (as in Caffe); a second top, which Caffe shapes from an uninitialised axis
    and never writes, is refused. Scores are read with the legacy (num, channels, height, width)
    accessors, the label at the same (channel, height, width) with its own.
    """

    family = "loss"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 6 dim: 3 dim: 5 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 dim: 3 dim: 5 dim: 7 } } }
layer { name: "acc" type: "FCNAccuracy" bottom: "x" bottom: "label" top: "acc" accuracy_param { top_k: 3 } }
"""

    def __init__(self, group: int = 1) -> None:
        super().__init__()
        self.group = int(group)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> FCNAccuracy:
        ctx.check_bottoms(2, 3)
        if len(layer.top) == 2:
            raise ctx.error(
                "a second (per-class) top is not supported: Caffe shapes it from an uninitialised "
                "axis and never writes it"
            )
        ctx.check_tops(1)
        shapes = ctx.bottom_shapes
        for index, shape in enumerate(shapes[:2]):
            check_legacy(ctx, shape, f"bottom {index}")
        if _count(shapes[0]) != _count(shapes[1]):
            raise ctx.error(
                f"the scores {list(shapes[0])} and the labels {list(shapes[1])} must have the same count"
            )
        if len(shapes) == 3 and _count(shapes[2]) != _count(shapes[1]):
            raise ctx.error(
                f"number of loss weights must match number of labels: {list(shapes[2])} vs {list(shapes[1])}"
            )
        top_k = layer.accuracy_param.top_k
        if top_k < 1:
            raise ctx.error(f"accuracy_param.top_k (the group size) must be at least 1, got {top_k}")
        return cls(top_k)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [()]

    @torch.no_grad()
    def forward(
        self, x: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        num, channels, height, width = legacy_shape(tuple(x.shape))
        size, group = channels * height * width, self.group
        groups = num // group
        if groups == 0:  # no complete group: Caffe divides 0 by 0
            return torch.full((), float("nan"), dtype=x.dtype, device=x.device)
        scores = x.detach().reshape(-1)[: groups * group * size].reshape(groups, group * size)
        found = scores > -torch.finfo(x.dtype).max  # NaN and -inf never beat Caffe's start value
        best = torch.where(found, scores, float("-inf")).argmax(dim=1)  # the first maximum
        any_found = found.any(dim=1)
        best_n = torch.where(any_found, best // size, 0)
        best_c = (best % size) // (height * width)
        best_h = torch.where(any_found, (best % (height * width)) // width, 0)
        best_w = torch.where(any_found, best % width, 0)
        # A group with nothing above -FLT_MAX keeps the channel of the last group that had
        # something (Caffe resets n, h and w per group, not c), or 0 before any.
        index = torch.arange(groups, device=x.device)
        earlier = (index.unsqueeze(0) <= index.unsqueeze(1)) & any_found.unsqueeze(0)
        last = torch.where(earlier, index.unsqueeze(0), -1).amax(dim=1)
        best_c = torch.where(last >= 0, best_c[last.clamp_min(0)], 0)
        _, l_channels, l_height, l_width = legacy_shape(tuple(label.shape))
        offset = ((best_n * l_channels + best_c) * l_height + best_h) * l_width + best_w
        hit = (best_n == (group - 1) // 2) & (label.detach().reshape(-1).take(offset) > 0)
        return hit.sum().to(x.dtype) / groups

    def extra_repr(self) -> str:
        return ", ".join(p for p in (super().extra_repr(), f"group={self.group}") if p)
