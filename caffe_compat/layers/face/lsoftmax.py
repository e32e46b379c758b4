"""L-Softmax (Liu et al., ICML 2016, "Large-Margin Softmax Loss for Convolutional Neural
Networks"), as carried by happynear/caffe-windows: ``LargeMarginInnerProduct``, the inner product
whose target logit gets an angular margin, with its lambda annealing schedule.

Its backward is Caffe's hand-written one, reproduced with a ``torch.autograd.Function``. The
iteration counter Caffe keeps in a C++ member lives in a buffer that is not a Caffe blob: it
travels with ``state_dict()`` but never with a caffemodel.
"""

from __future__ import annotations

import torch

from caffe_compat.layers.base import Blob, BuildContext, Shape
from caffe_compat.layers.face.common import MarginInnerProductBase, count_of
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

#: Caffe's epsilon in ``|x| |w| + eps`` (forward) and ``|w| + eps`` (backward).
_EPS = 1e-9


def _signs(cos: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The sign blobs of ``largemargin_inner_product_layer.cpp``: (sign_0, -) for DOUBLE,
    (sign_1, sign_2) for TRIPLE, (sign_3, sign_4) for QUADRUPLE."""
    sign_0 = torch.sign(cos)
    if margin == 2:
        return sign_0, sign_0
    if margin == 3:
        sign_1 = torch.sign(cos.abs() - 0.5)
        return sign_1, sign_0 * (1.0 + sign_1) - 2.0
    sign_3 = sign_0 * torch.sign(2.0 * cos.pow(2) - 1.0)
    return sign_3, 2.0 * sign_0 + sign_3 - 3.0


def _psi(cos: torch.Tensor, margin: int) -> torch.Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` with Caffe's sign tricks (DOUBLE..QUADRUPLE)."""
    sign_a, sign_b = _signs(cos, margin)
    if margin == 2:
        return 2.0 * sign_a * cos.pow(2) - 1.0
    if margin == 3:
        return sign_a * (4.0 * cos.pow(3) - 3.0 * cos) + sign_b
    return sign_a * (8.0 * cos.pow(4) - 8.0 * cos.pow(2) + 1.0) + sign_b


def _target_coefficients(cos: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) of the hand-written target gradient: d(|x||w| psi)/dx = a w - b |w|/|x| x and
    d/dw = a x - b |x|/|w| w (Caffe's ``coeff`` expressions per margin type)."""
    sign_a, sign_b = _signs(cos, margin)
    if margin == 2:
        return 4.0 * sign_a * cos, 2.0 * sign_a * cos.pow(2) + 1.0
    if margin == 3:
        return sign_a * (12.0 * cos.pow(2) - 3.0), 8.0 * sign_a * cos.pow(3) - sign_b
    a = sign_a * (32.0 * cos.pow(3) - 16.0 * cos)
    b = sign_a * (24.0 * cos.pow(4) - 8.0 * cos.pow(2) - 1.0) - sign_b
    return a, b


def _forward_parts(
    rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(logits, target cosines, |x|, |w|) of Caffe's ``Forward_cpu``."""
    xw = rows @ weight.t()
    if margin == 1:
        return xw, None, None, None
    index = labels.unsqueeze(1)
    x_norm = rows.square().sum(dim=1).sqrt()
    w_norm = weight.square().sum(dim=1).sqrt()
    norm_product = x_norm * w_norm[labels] + _EPS
    cos = xw.gather(1, index).squeeze(1) / norm_product
    base = xw.scatter(1, index, (norm_product * _psi(cos, margin)).unsqueeze(1))
    return (base + lam * xw) * (1.0 / (1.0 + lam)), cos, x_norm, w_norm


def lsoftmax_logits(
    rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor | float, margin: int
) -> torch.Tensor:
    """L-Softmax logits (differentiable with autograd's exact gradient).

    ``x.w_j`` for ``j != y``; ``(lambda x.w_y + (|x||w_y| + 1e-9) psi(theta_y)) / (1 + lambda)`` at
    the label, ``cos theta_y = x.w_y / (|x||w_y| + 1e-9)``; ``margin`` 1 (SINGLE: plain ``x W^T``)
    to 4 (QUADRUPLE).
    """
    lam_t = torch.as_tensor(lam, dtype=rows.dtype, device=rows.device)
    return _forward_parts(rows, weight, labels, lam_t, margin)[0]


class _LargeMarginFunction(torch.autograd.Function):
    """L-Softmax logits with Caffe's hand-written ``Backward_cpu``: with ``r = |x| / (|w| +
    1e-9)`` and ``inv = 1 / (1 + lambda)``, non-target entries give ``inv dy x`` to w and ``inv dy
    w`` to x, target entries ``inv dy (a x - r b w)`` to w and ``inv dy (a w - b / r x)`` to x,
    and every entry adds ``lambda inv dy x`` / ``lambda inv dy w``; SINGLE is ``dy^T x`` / ``dy
    W``."""

    @staticmethod
    def forward(
        ctx, rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
    ) -> torch.Tensor:
        logits, cos, x_norm, w_norm = _forward_parts(rows, weight, labels, lam, margin)
        ctx.save_for_backward(rows, weight, labels, lam, cos, x_norm, w_norm)
        ctx.margin = margin
        return logits

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        rows, weight, labels, lam, cos, x_norm, w_norm = ctx.saved_tensors
        margin = ctx.margin
        want_x, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if margin == 1:
            dx = dy @ weight if want_x else None
            dw = dy.t() @ rows if want_w else None
            return dx, dw, None, None, None
        index = labels.unsqueeze(1)
        inv = 1.0 / (1.0 + lam)
        dy_target = dy.gather(1, index)
        off_target = dy.scatter(1, index, torch.zeros_like(dy_target))
        a, b = _target_coefficients(cos, margin)
        ratio = (x_norm / (w_norm[labels] + _EPS)).unsqueeze(1)
        factor = inv * dy_target
        w_target = weight[labels]
        dx = dw = None
        if want_x:
            dx = (inv * off_target) @ weight + (factor * a.unsqueeze(1)) * w_target
            dx = dx + (factor / -ratio * b.unsqueeze(1)) * rows
            dx = dx + (lam * inv * dy) @ weight
        if want_w:
            per_sample = (factor * a.unsqueeze(1)) * rows + (factor * -ratio * b.unsqueeze(1)) * w_target
            dw = (inv * off_target).t() @ rows
            dw = dw.index_add(0, labels, per_sample)
            dw = dw + (lam * inv * dy).t() @ rows
        return dx, dw, None, None, None


@register("LargeMarginInnerProduct")
class LargeMarginInnerProduct(MarginInnerProductBase):
    """L-Softmax's large-margin inner product (``largemargin_inner_product_layer.cpp``,
    happynear/caffe-windows commit 967eedf2). Bottoms (x, label[, weight]); tops y and lambda.

    Every forward (TRAIN and TEST alike) first advances the counter, ``it += 1``, then computes
    ``lambda = max(base * (1 + gamma * it)^(-power), lambda_min)`` (in the data's precision, as
    Caffe's ``Dtype``) and outputs it as the second top (shape (1,)). The logits are ``x.w_j`` for
    ``j != y`` and ``(lambda x.w_y + (|x||w_y| + 1e-9) psi(theta_y)) / (1 + lambda)`` at the label,
    ``cos theta_y = x.w_y / (|x||w_y| + 1e-9)`` and ``psi(theta) = (-1)^k cos(m theta) - 2k``
    from Caffe's sign tricks, ``m`` = 1..4 for SINGLE..QUADRUPLE (SINGLE: a plain ``x W^T``, lambda
    still advanced and output). Unlike SphereFace's MarginInnerProduct the weight is not
    normalised. Rows are x flattened from ``axis``; one label per row.

    Backward: Caffe's hand-written one (``_LargeMarginFunction``), which is the analytic
    gradient of the target term with Caffe's epsilons (``|w| + 1e-9`` in the ratio ``|x| / |w|``)
    and no derivative of the sign blobs. The counter is the int64 buffer ``iter_count``
    (``iteration`` property), in ``state_dict`` but not in caffemodels: Caffe restarts it at
    ``iteration`` on resume.

    Deviations: Caffe's Reshape writes the lambda top unconditionally (undefined with one top):
    one top is an error here. With a third bottom Caffe takes the weight (N, K) from it (no blob)
    but its backward still reads and writes the absent blob (a crash); here the weight bottom gets
    the gradient the blob would have.
    """

    family = "L-Softmax"

    caffe_blobs = (Blob("weight", optional=True),)
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "fc6" type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" top: "y" top: "lambda"
  largemargin_inner_product_param { num_output: 7 type: QUADRUPLE base: 1000 gamma: 0.12 power: 1
  lambda_min: 5 weight_filler { type: "xavier" } } }
"""

    weight: torch.nn.Parameter | None

    def __init__(
        self,
        num_output: int,
        in_features: int,
        margin: int = 1,
        axis: int = 1,
        base: float = 1.0,
        gamma: float = 0.0,
        power: float = 1.0,
        iteration: int = 0,
        lambda_min: float = 0.0,
        weight_bottom: bool = False,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(num_output, in_features, margin, axis, base, gamma, power, lambda_min)
        self.weight_bottom = bool(weight_bottom)
        if self.weight_bottom:
            self.set_blob("weight", None)
        else:
            if weight is None:
                weight = torch.zeros(self.num_output, self.in_features)
            self.set_blob("weight", weight)
        self.register_buffer("iter_count", torch.tensor(int(iteration), dtype=torch.int64))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> LargeMarginInnerProduct:
        ctx.check_bottoms(2, 3)
        if len(layer.top) != 2:
            raise ctx.error(
                f"produces 2 top blobs (the logits and lambda: Caffe's Reshape always writes the "
                f"second), got {len(layer.top)}"
            )
        p = layer.largemargin_inner_product_param
        cls._check_label_bottom(ctx)
        axis, in_features = cls._flatten(ctx, p.axis)
        x_shape = ctx.bottom_shapes[0]
        weight = None
        if len(layer.bottom) == 3:
            w_shape = ctx.bottom_shapes[2]
            if not w_shape or count_of(w_shape, 1) != in_features:
                raise ctx.error(
                    f"the weight bottom {list(w_shape)} must be (num_output, {in_features}) for data "
                    f"{list(x_shape)} flattened from axis {axis}"
                )
            num_output = w_shape[0]
        else:
            num_output = p.num_output
            if num_output <= 0:
                raise ctx.error("largemargin_inner_product_param.num_output must be positive")
            weight = fill((num_output, in_features), p.weight_filler, f"layer '{layer.name}'")
        return cls(
            num_output,
            in_features,
            axis=axis,
            weight_bottom=len(layer.bottom) == 3,
            weight=weight,
            **cls._schedule_options(p),
        )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [self._logits_shape(bottom_shapes), (1,)]

    def forward(
        self, x: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._advance()
        lam = self.lambda_at(self.iter_count, x.dtype).to(x.device)
        w = weight.reshape(self.num_output, self.in_features) if self.weight_bottom else self.weight
        outer, rows, labels = self._rows(x, label)
        y = _LargeMarginFunction.apply(rows, w.to(rows.dtype), labels, lam, self.margin)
        return y.reshape(*outer, self.num_output), lam.detach().reshape(1)

    def extra_repr(self) -> str:
        text = f"num_output={self.num_output}, margin={self.margin}, iteration={self.iteration}"
        return f"{super().extra_repr()}, {text}".lstrip(", ")
