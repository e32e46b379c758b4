"""Layers of happynear/caffe-windows that combine blobs or channels: Axpy, Pairwise, Gram and Slope
(each follows its ``<name>_layer.cpp``).

Their backward passes are the exact gradients of their forwards, so autograd gives Caffe's diffs;
the two places where Caffe's code does something else are documented on the classes.
"""

from __future__ import annotations

import math

import torch

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import register
from caffe_compat.layers.shape import _check_coeffs
from caffe_compat.proto import caffe_pb2

_Pairwise = caffe_pb2.PairwiseParameter


def _legacy(shape: Shape) -> tuple[int, int, int, int]:
    """Caffe's ``num()``, ``channels()``, ``height()``, ``width()``: missing trailing axes are 1."""
    dims = [int(d) for d in shape] + [1] * (4 - len(shape))
    return dims[0], dims[1], dims[2], dims[3]


def _check_legacy(ctx: BuildContext, shape: Shape, what: str = "the bottom") -> None:
    if len(shape) > 4:
        raise ctx.error(
            f"{what} has shape {list(shape)}, but this layer reads it with Caffe's legacy "
            "num/channels/height/width accessors, which need at most 4 axes"
        )


# -- Axpy ------------------------------------------------------------------------------------------


@register("Axpy")
class Axpy(CaffeLayer):
    """``z = a * x + y`` with one scale per (sample, channel) (``axpy_layer.cpp``, SENet's fused
    scale-and-add).

    Bottoms: ``a`` of shape (N, C) or (N, C, 1, 1), ``x`` and ``y`` of one shape (N, C, ...); ``a``
    is broadcast over the trailing axes of ``x``. Backward: ``da = sum(dy * x)`` over those axes,
    ``dx = a * dy``, ``dy_y = dy``.

    Caffe quirk reproduced: ``Backward_cpu`` computes ``x``'s diff inside the branch for ``a``
    (both blocks test ``propagate_down[0]``), so ``x`` gets no gradient when ``a`` needs none (its
    diff stays zero). Here ``x`` is detached when ``a`` does not require grad.
    """

    family = "combine"

    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 dim: 1 dim: 1 } } }
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "y" type: "Input" top: "y" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "axpy" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Axpy:
        ctx.check_bottoms(3)
        ctx.check_tops(1)
        module = cls()
        module.caffe_name = layer.name
        module._check_shapes(*ctx.bottom_shapes)
        return module

    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name or '?'}' ({self.caffe_type}): {message}")

    def _check_shapes(self, a: Shape, x: Shape, y: Shape) -> None:
        if len(x) < 2:
            raise self._error(f"x (bottom 1) must have at least 2 axes (N, C, ...), got shape {list(x)}")
        if tuple(x) != tuple(y):
            raise self._error(
                f"x (bottom 1) and y (bottom 2) must have one shape, got {list(x)} and {list(y)}"
            )
        if len(a) < 2 or tuple(a[:2]) != tuple(x[:2]):
            raise self._error(
                f"the scale a (bottom 0) must have shape (N, C) = {list(x[:2])} or (N, C, 1, 1), "
                f"got {list(a)}"
            )
        if len(a) == 4 and tuple(a[2:]) != (1, 1):
            raise self._error(f"a 4-D scale a (bottom 0) must be (N, C, 1, 1), got {list(a)}")
        if math.prod(a) != a[0] * a[1]:
            raise self._error(f"the scale a (bottom 0) must hold N * C values, got shape {list(a)}")

    def _scale(self, a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self._check_shapes(tuple(a.shape), tuple(x.shape), tuple(x.shape))
        return a.reshape(tuple(x.shape[:2]) + (1,) * (x.dim() - 2))

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != tuple(y.shape):
            self._check_shapes(tuple(a.shape), tuple(x.shape), tuple(y.shape))
        if not a.requires_grad:
            x = x.detach()
        return y + self._scale(a, x) * x

    def export_forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The forward without the autograd quirk (no gradient in an exported graph)."""
        return y + self._scale(a, x) * x


# -- Pairwise --------------------------------------------------------------------------------------


@register("Pairwise")
class Pairwise(CaffeLayer):
    """Every pair of rows of two matrices combined element-wise (``pairwise_layer.cpp``).

    Bottoms ``a`` (M, K) and ``b`` (N, K) (Caffe's ``num`` and ``channels``; further axes must be
    1); top (M, N, K) with ``top[m, n] = op(a[m], b[n])``: ``SUM`` (the default)
    ``coeff0 * a + coeff1 * b`` (``coeff`` absent, or one per bottom), ``PROD`` ``a * b`` (no
    coefficients), ``MAX`` the element-wise maximum, where a tie goes to ``b``. The backward sums
    over the other index, each diff to the winner for MAX.

    Deviation: Caffe's MAX backward adds ``a``'s diff onto the diff already in the blob without
    clearing it first (the other branches clear it), so from the second backward on a Caffe net
    accumulates ``a``'s diffs across iterations; here each backward gives one pass's gradient (what
    Caffe gives on the first).
    """

    family = "combine"

    OPERATIONS = ("SUM", "PROD", "MAX")
    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 3 dim: 5 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 4 dim: 5 } } }
layer { name: "pairwise" type: "Pairwise" bottom: "a" bottom: "b" top: "y"
        pairwise_param { operation: SUM coeff: 1 coeff: -1 } }
"""

    def __init__(self, operation: str = "SUM", coeffs: tuple[float, float] = (1.0, 1.0)) -> None:
        super().__init__()
        if operation not in self.OPERATIONS:
            raise ValueError(f"unknown Pairwise operation {operation!r}; known: {', '.join(self.OPERATIONS)}")
        if len(coeffs) != 2:
            raise ValueError(f"Pairwise takes one coefficient per bottom blob (2), got {len(coeffs)}")
        self.operation = operation
        self.coeffs = (float(coeffs[0]), float(coeffs[1]))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Pairwise:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        param = layer.pairwise_param
        operation = _Pairwise.PairwiseOp.Name(param.operation)
        _check_coeffs(ctx, param.coeff, operation, len(layer.bottom))
        for index, shape in enumerate(ctx.bottom_shapes):
            _check_legacy(ctx, shape, f"bottom {index}")
            if math.prod(shape[2:]) != 1:
                raise ctx.error(f"bottom {index} must be a (rows, K) matrix, got shape {list(shape)}")
        channels = [_legacy(shape)[1] for shape in ctx.bottom_shapes]
        if channels[0] != channels[1]:
            raise ctx.error(
                f"both bottoms must have the same number of channels K, got {channels[0]} and {channels[1]}"
            )
        coeffs = tuple(param.coeff) if param.coeff else (1.0, 1.0)
        module = cls(operation, coeffs)  # type: ignore[arg-type]
        module.caffe_name = layer.name
        return module

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        rows_a, rows_b = int(a.shape[0]), int(b.shape[0])
        channels = int(a.shape[1]) if a.dim() > 1 else 1
        if a.numel() != rows_a * channels or b.numel() != rows_b * channels:
            raise LayerError(
                f"layer '{self.caffe_name or '?'}' ({self.caffe_type}): bottoms must be (M, K) and (N, K), "
                f"got shapes {list(a.shape)} and {list(b.shape)}"
            )
        left = a.reshape(rows_a, 1, channels)
        right = b.reshape(1, rows_b, channels)
        if self.operation == "PROD":
            return left * right
        if self.operation == "MAX":
            return torch.where(left > right, left, right)
        return left * self.coeffs[0] + right * self.coeffs[1]

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, operation={self.operation}, coeffs={self.coeffs}".lstrip(", ")


# -- Gram ------------------------------------------------------------------------------------------


@register("Gram")
class Gram(CaffeLayer):
    """The Gram matrix of each image's channels (``gram_layer.cpp``, style transfer).

    Bottom (N, C, H, W); top (N, C, C, 1) = ``X @ X.T / (H * W) / C`` with X the C x (H * W) matrix
    of one image. Backward (the exact gradient): ``(T + T.T) @ X / (H * W) / C``. Bottoms with fewer
    than 4 axes are read with Caffe's legacy accessors (missing axes are 1).
    """

    family = "combine"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "gram" type: "Gram" bottom: "x" top: "y" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Gram:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        _check_legacy(ctx, ctx.bottom_shapes[0])
        return cls()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num, channels, height, width = _legacy(tuple(x.shape))
        spatial = height * width
        features = x.reshape(num, channels, spatial)
        # Caffe's gemm alpha is 1 / (Dtype)spatial_dim / (Dtype)channel
        gram = torch.bmm(features, features.transpose(1, 2)) * (1.0 / spatial / channels)
        return gram.reshape(num, channels, channels, 1)


# -- Slope -----------------------------------------------------------------------------------------


@register("Slope")
class Slope(CaffeLayer):
    """Append two coordinate channels (``slope_layer.cpp``): top (N, C + 2, H, W) holds the bottom's
    C channels, then ``h / H`` and ``w / W`` at each position (row and column index over the map
    size). Backward passes the first C channels' diff to the bottom.

    Caffe builds the two maps once, in ``LayerSetUp``, for the H x W of the bottom at set-up; a
    later bottom of another spatial size would read past them, so a forward with another H or W
    raises an error here (build the net for that size). The top is always 4-D (a bottom with
    fewer axes is read with the legacy accessors).
    """

    family = "combine"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "slope" type: "Slope" bottom: "x" top: "y" }
"""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        self.height = int(height)
        self.width = int(width)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Slope:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        _check_legacy(ctx, ctx.bottom_shapes[0])
        _, _, height, width = _legacy(ctx.bottom_shapes[0])
        return cls(height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        num, channels, height, width = _legacy(tuple(x.shape))
        if (height, width) != (self.height, self.width):
            raise LayerError(
                f"layer '{self.caffe_name or '?'}' ({self.caffe_type}): its coordinate maps were built "
                f"for {self.height}x{self.width} bottoms (as Caffe's LayerSetUp does), got {height}x{width}; "
                "build the net for this size"
            )
        rows = torch.arange(height, dtype=x.dtype, device=x.device) / height
        cols = torch.arange(width, dtype=x.dtype, device=x.device) / width
        maps = torch.stack(
            (rows.reshape(height, 1).expand(height, width), cols.reshape(1, width).expand(height, width))
        )
        data = x.reshape(num, channels, height, width)
        return torch.cat((data, maps.unsqueeze(0).expand(num, 2, height, width)), dim=1)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, height={self.height}, width={self.width}".lstrip(", ")
