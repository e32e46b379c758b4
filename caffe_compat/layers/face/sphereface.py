"""SphereFace's layer (Liu et al. 2017, wy1iu/sphereface, carried by happynear/caffe-windows):
``MarginInnerProduct``, the angular-margin (A-Softmax) inner product with its lambda schedule.

Its backward is Caffe's hand-written one, not the exact gradient of its forward; it is reproduced
with a ``torch.autograd.Function``. The iteration counter Caffe keeps in a C++ member lives in a
buffer that is not a Caffe blob: it travels with ``state_dict()`` but never with a caffemodel.
"""

from __future__ import annotations

import torch

from caffe_compat.layers.base import Blob, BuildContext, Shape
from caffe_compat.layers.face.common import MarginInnerProductBase
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_MarginType = caffe_pb2.MarginInnerProductParameter

# -- MarginInnerProduct (SphereFace) -------------------------------------------------------------


def _margin_signs(cos: torch.Tensor, margin: int) -> tuple[torch.Tensor, torch.Tensor]:
    """SphereFace's sign tricks: (sign_a, sign_b) with ``psi = sign_a * T_m(cos) + sign_b``."""
    sign_0 = torch.sign(cos)
    if margin == 2:
        return sign_0, torch.full_like(cos, -1.0)
    if margin == 3:
        sign_1 = torch.sign(cos.abs() - 0.5)
        return sign_1, sign_0 * (1.0 + sign_1) - 2.0
    sign_3 = sign_0 * torch.sign(2.0 * cos * cos - 1.0)
    return sign_3, 2.0 * sign_0 + sign_3 - 3.0


def margin_psi(cos: torch.Tensor, margin: int) -> torch.Tensor:
    """``psi(theta) = (-1)^k cos(m theta) - 2k`` (``k = floor(m theta / pi)``) from ``cos theta``
    with the Chebyshev polynomials and sign tricks of ``margin_inner_product_layer.cpp``."""
    if margin == 1:
        return cos
    c2 = cos * cos
    sign_a, sign_b = _margin_signs(cos, margin)
    if margin == 2:
        return 2.0 * torch.sign(cos) * c2 - 1.0
    if margin == 3:
        return sign_a * (4.0 * c2 * cos - 3.0 * cos) + sign_b
    return sign_a * (8.0 * c2 * c2 - 8.0 * c2 + 1.0) + sign_b


def _psi_coefficients(
    cos: torch.Tensor, x_norm: torch.Tensor, margin: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Caffe's (coeff_w, coeff_x): the exact d(|x| psi)/dx = coeff_w * w + coeff_x * x, divided
    by ``sqrt(coeff_w^2 + coeff_x^2)`` as the hand-written backward does."""
    c2 = cos * cos
    sign_a, sign_b = _margin_signs(cos, margin)
    if margin == 2:
        sign_0 = torch.sign(cos)
        coeff_w = 4.0 * sign_0 * cos
        coeff_x = -(2.0 * sign_0 * c2 + 1.0) / x_norm
    elif margin == 3:
        coeff_w = sign_a * (12.0 * c2 - 3.0)
        coeff_x = -(8.0 * sign_a * c2 * cos - sign_b) / x_norm
    else:
        coeff_w = sign_a * (32.0 * c2 * cos - 16.0 * cos)
        coeff_x = -(sign_a * (24.0 * c2 * c2 - 8.0 * c2 - 1.0) - sign_b) / x_norm
    coeff_norm = torch.sqrt(coeff_w * coeff_w + coeff_x * coeff_x)
    return coeff_w / coeff_norm, coeff_x / coeff_norm


def _margin_parts(
    rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """The logits of ``margin_logits`` with the target cosines and ``|x|`` (None for SINGLE)."""
    xw = rows @ weight.t()
    if margin == 1:
        return xw, None, None
    index = labels.unsqueeze(1)
    x_norm = rows.square().sum(dim=1).sqrt()
    cos = xw.gather(1, index).squeeze(1) * (1.0 / x_norm)
    base = xw.scatter(1, index, (x_norm * margin_psi(cos, margin)).unsqueeze(1))
    return (lam * xw + base) * (1.0 / (1.0 + lam)), cos, x_norm


def margin_logits(
    rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
) -> torch.Tensor:
    """SphereFace's logits (differentiable: its autograd gradient is the exact one).

    ``x.w_j`` for ``j != y``; ``(lambda * x.w_y + |x| psi(theta_y)) / (1 + lambda)`` at the label,
    ``cos theta_y = x.w_y / |x|``, evaluated in Caffe's order (``(lambda * x.W^T + base) * 1/(1 +
    lambda)`` with ``base`` the plain logits whose target entries hold ``|x| psi``).
    """
    return _margin_parts(rows, weight, labels, lam, margin)[0]


class _MarginInnerProductFunction(torch.autograd.Function):
    """SphereFace's logits with Caffe's hand-written backward (``Backward_cpu``):
    ``dW = dy^T x`` (no margin, no normalisation term) and ``dx = dy_nt W / (1 + lambda) +
    lambda / (1 + lambda) dy W + dy_y / (1 + lambda) (coeff_w w_y + coeff_x x)`` with the
    normalised coefficients of ``_psi_coefficients``."""

    @staticmethod
    def forward(
        ctx, rows: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, lam: torch.Tensor, margin: int
    ) -> torch.Tensor:
        logits, cos, x_norm = _margin_parts(rows, weight, labels, lam, margin)
        ctx.save_for_backward(rows, weight, labels, lam, cos, x_norm)
        ctx.margin = margin
        return logits

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        rows, weight, labels, lam, cos, x_norm = ctx.saved_tensors
        margin = ctx.margin
        dx = dw = None
        if ctx.needs_input_grad[1]:
            dw = dy.t() @ rows
        if ctx.needs_input_grad[0]:
            if margin == 1:
                dx = dy @ weight
            else:
                index = labels.unsqueeze(1)
                inv = 1.0 / (1.0 + lam)
                dy_target = dy.gather(1, index)
                scaled = dy.scatter(1, index, torch.zeros_like(dy_target)) * inv + dy * (lam * inv)
                coeff_w, coeff_x = _psi_coefficients(cos, x_norm, margin)
                factor = inv * dy_target
                dx = scaled @ weight + (factor * coeff_w.unsqueeze(1)) * weight[labels]
                dx = dx + (factor * coeff_x.unsqueeze(1)) * rows
        return dx, dw, None, None, None


@register("MarginInnerProduct")
class MarginInnerProduct(MarginInnerProductBase):
    """SphereFace's A-Softmax inner product (``margin_inner_product_layer.cpp``, identical in
    wy1iu/sphereface and happynear/caffe-windows). Bottoms (x, label); tops y and optionally lambda.

    Every forward (TRAIN and TEST alike: the fork has no phase test) first advances the counter,
    ``it += 1``, then computes ``lambda = max(base * (1 + gamma * it)^(-power), lambda_min)``,
    normalises the weight rows **in place** in the parameter (``w / sqrt(|w|^2)``, no epsilon) and
    outputs ``x.w_j`` for ``j != y`` and ``(lambda * x.w_y + |x| psi(theta_y)) / (1 + lambda)`` for
    the label ``y``, ``psi(theta) = (-1)^k cos(m theta) - 2k`` evaluated with Caffe's sign tricks
    (``m`` = 1..4 for SINGLE..QUADRUPLE; SINGLE is a plain inner product). x is not normalised.

    Backward (default): Caffe's hand-written one, which is **not** the exact gradient: the weight
    gets ``dy^T x`` (no margin term; with respect to the normalised weight), and the target's x
    gradient uses the analytic coefficients of ``d(|x| psi)/dx = a w_y + b x`` divided by
    ``sqrt(a^2 + b^2)``. With ``exact_grad=True`` the autograd gradient of the same forward is used
    instead (still with respect to the normalised weight). The counter is the int64 buffer
    ``iter_count`` (``iteration`` property), in ``state_dict`` but not in caffemodels: Caffe
    restarts it at ``iteration`` on resume. Deviation: Caffe's CPU forward writes the lambda top
    unconditionally (a crash with one top); here the second top is simply optional.
    """

    family = "SphereFace"

    caffe_blobs = (Blob("weight"),)
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "fc6" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "y" top: "lambda"
  margin_inner_product_param { num_output: 7 type: QUADRUPLE base: 1000 gamma: 0.12 power: 1
  lambda_min: 5 weight_filler { type: "xavier" } } }
"""

    weight: torch.nn.Parameter

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
        output_lambda: bool = True,
        exact_grad: bool = False,
        weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(num_output, in_features, margin, axis, base, gamma, power, lambda_min)
        self.output_lambda = bool(output_lambda)
        self.exact_grad = bool(exact_grad)
        if weight is None:
            weight = torch.empty(self.num_output, self.in_features)
        self.set_blob("weight", weight)
        self.register_buffer("iter_count", torch.tensor(int(iteration), dtype=torch.int64))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MarginInnerProduct:
        ctx.check_bottoms(2)
        ctx.check_tops(1, 2)
        p = layer.margin_inner_product_param
        cls._check_label_bottom(ctx)
        if p.num_output <= 0:
            raise ctx.error("margin_inner_product_param.num_output must be positive")
        axis, in_features = cls._flatten(ctx, p.axis)
        weight = fill((p.num_output, in_features), p.weight_filler, f"layer '{layer.name}'")
        return cls(
            p.num_output,
            in_features,
            axis=axis,
            output_lambda=len(layer.top) == 2,
            weight=weight,
            **cls._schedule_options(p),
        )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [self._logits_shape(bottom_shapes)] + ([(1,)] if self.output_lambda else [])

    def normalize_weight_(self) -> None:
        """Caffe's in-place row normalisation of the weight blob (``w *= 1 / sqrt(|w|^2)``)."""
        with torch.no_grad():
            self.weight.mul_(1.0 / self.weight.square().sum(dim=1, keepdim=True).sqrt())

    def forward(
        self, x: torch.Tensor, label: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        self._advance()
        lam = self.lambda_at(self.iter_count)
        self.normalize_weight_()
        outer, rows, labels = self._rows(x, label)
        lam_x = lam.to(rows.dtype)
        if self.exact_grad:
            y = margin_logits(rows, self.weight, labels, lam_x, self.margin)
        else:
            y = _MarginInnerProductFunction.apply(rows, self.weight, labels, lam_x, self.margin)
        y = y.reshape(*outer, self.num_output)
        if self.output_lambda:
            return y, lam.detach().reshape(1).to(x.dtype)
        return y
