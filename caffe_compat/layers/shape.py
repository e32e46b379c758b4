"""Shape and element-wise layers: Concat, Slice, Split, Flatten, Reshape, Crop, Tile, Eltwise,
Reduction, ArgMax, Silence, Parameter, Embed (``<name>_layer.cpp`` of happynear/caffe-windows).

Shapes are recomputed from the bottoms at every forward, as Caffe's ``Reshape`` runs before every
``Forward``; the parameters are checked once when the layer is built, so a bad prototxt fails
with a message naming the layer. Layers that only move data (Concat, Slice, Split, Flatten,
Reshape, Crop, Tile) are views or single fused copies whose autograd gradient is Caffe's backward.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from caffe_compat.errors import LayerError
from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2

_Eltwise = caffe_pb2.EltwiseParameter
_Reduction = caffe_pb2.ReductionParameter


class _ShapeLayer(CaffeLayer):
    """Shared helpers: errors naming the layer, Caffe's axis canonicalization, build-time checks."""

    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name or '?'}' ({self.caffe_type}): {message}")

    def _axis(self, axis: int, num_axes: int, what: str = "axis") -> int:
        """Caffe's ``CanonicalAxisIndex``: ``-num_axes <= axis < num_axes``, negatives from the end."""
        if not -num_axes <= axis < num_axes:
            raise self._error(f"{what} {axis} is out of range for a {num_axes}-D bottom")
        return axis % num_axes

    def _checked(self, layer: caffe_pb2.LayerParameter, bottom_shapes: list[Shape]) -> _ShapeLayer:
        """Name the module after its layer and run its shape rule once on the build-time shapes."""
        self.caffe_name = layer.name
        self.top_shapes(bottom_shapes)
        return self


def _no_in_place(layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> None:
    if layer.bottom and layer.top and layer.top[0] == layer.bottom[0]:
        raise ctx.error("does not allow in-place computation (top and bottom are the same blob)")


def _check_coeffs(ctx: BuildContext, coeffs: Sequence[float], operation: str, num_bottoms: int) -> None:
    """Eltwise's coefficient rules (the fork's Pairwise follows them): none, or one per bottom,
    and none for PROD."""
    if coeffs and len(coeffs) != num_bottoms:
        raise ctx.error(
            f"takes one coefficient per bottom blob: {len(coeffs)} coeff for {num_bottoms} bottoms"
        )
    if coeffs and operation == "PROD":
        raise ctx.error("only takes coefficients for summation (operation SUM), not PROD")


def _legacy_axis(
    ctx: BuildContext, param: caffe_pb2.ConcatParameter | caffe_pb2.SliceParameter, legacy: str, num_axes: int
) -> int:
    """``axis`` or the legacy unsigned ``<legacy>`` field (never both), as Concat/Slice read them."""
    if param.HasField("axis") and param.HasField(legacy):
        raise ctx.error(f"either axis or {legacy} should be specified; not both")
    if param.HasField(legacy):
        value = getattr(param, legacy)
        if value >= num_axes:
            raise ctx.error(f"{legacy} {value} is out of range for a {num_axes}-D bottom")
        return value
    return param.axis


# -- Concat / Slice / Split ----------------------------------------------------------------------


@register("Concat")
class Concat(_ShapeLayer):
    """Concatenate the bottoms along ``axis`` (``concat_layer.cpp``).

    Every bottom must have the same number of axes and the same dims except at ``axis``; the legacy
    ``concat_dim`` (non-negative) may replace ``axis``. One bottom is passed through unchanged.
    """

    family = "shape"

    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 4 dim: 5 dim: 7 } } }
layer { name: "concat" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { axis: 1 } }
"""

    def __init__(self, axis: int = 1) -> None:
        super().__init__()
        self.axis = int(axis)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Concat:
        if not layer.bottom:
            raise ctx.error("takes at least 1 bottom blob, got 0")
        ctx.check_tops(1)
        axis = _legacy_axis(ctx, layer.concat_param, "concat_dim", len(ctx.bottom_shapes[0]))
        return cls(axis)._checked(layer, ctx.bottom_shapes)

    def _concat_axis(self, shapes: Sequence[Shape]) -> int:
        first = shapes[0]
        axis = self._axis(self.axis, len(first))
        for index, shape in enumerate(shapes[1:], start=1):
            if len(shape) != len(first):
                raise self._error(
                    f"all inputs must have the same number of axes: bottom 0 has shape {list(first)}, "
                    f"bottom {index} has shape {list(shape)}"
                )
            if any(a != b for i, (a, b) in enumerate(zip(first, shape, strict=True)) if i != axis):
                raise self._error(
                    f"all inputs must have the same shape except at axis {axis}: bottom 0 has shape "
                    f"{list(first)}, bottom {index} has shape {list(shape)}"
                )
        return axis

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        axis = self._concat_axis([tuple(b.shape) for b in bottoms])
        if len(bottoms) == 1:
            return bottoms[0]
        return torch.cat(bottoms, dim=axis)


@register("Slice")
class Slice(_ShapeLayer):
    """Split the bottom along ``axis`` into the tops (``slice_layer.cpp``).

    With ``slice_point`` (one fewer than the tops, strictly increasing, positive) the tops take the
    ranges between the points, the last one up to the end (possibly empty, as Caffe allows); without
    it the axis is split evenly, and its size must be divisible by the number of tops.
    """

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "slice" type: "Slice" bottom: "x" top: "y1" top: "y2"
        slice_param { axis: -1 slice_point: 3 } }
"""

    def __init__(self, num_tops: int, axis: int = 1, slice_points: Sequence[int] = ()) -> None:
        super().__init__()
        self.num_tops = int(num_tops)
        self.axis = int(axis)
        self.slice_points = [int(p) for p in slice_points]

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Slice:
        ctx.check_bottoms(1)
        if not layer.top:
            raise ctx.error("produces at least 1 top blob, got 0")
        param = layer.slice_param
        axis = _legacy_axis(ctx, param, "slice_dim", len(ctx.bottom_shapes[0]))
        return cls(len(layer.top), axis, list(param.slice_point))._checked(layer, ctx.bottom_shapes)

    def sizes(self, shape: Shape) -> tuple[int, list[int]]:
        """The slice axis and the size of each top along it."""
        axis = self._axis(self.axis, len(shape))
        size = shape[axis]
        if self.slice_points:
            if len(self.slice_points) != self.num_tops - 1:
                raise self._error(
                    f"{len(self.slice_points)} slice_point(s) for {self.num_tops} tops: give one fewer "
                    "slice point than tops"
                )
            if self.num_tops > size:
                raise self._error(f"{self.num_tops} tops cannot slice axis {axis} of size {size}")
            sizes, previous = [], 0
            for point in self.slice_points:
                if point <= previous:
                    raise self._error(
                        f"slice_point {point} must be greater than the previous point ({previous}): "
                        f"slice points must be positive and strictly increasing, got {self.slice_points}"
                    )
                sizes.append(point - previous)
                previous = point
            if previous > size:
                raise self._error(
                    f"slice_point {previous} is out of range for axis {axis} of size {size} "
                    f"(bottom shape {list(shape)})"
                )
            sizes.append(size - previous)
            return axis, sizes
        if size % self.num_tops:
            raise self._error(
                f"the number of top blobs ({self.num_tops}) should evenly divide the input slice axis "
                f"{axis} of size {size} (bottom shape {list(shape)})"
            )
        return axis, [size // self.num_tops] * self.num_tops

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        axis, sizes = self.sizes(tuple(x.shape))
        if self.num_tops == 1:
            return x
        return tuple(torch.split(x, sizes, dim=axis))


@register("Split")
class Split(_ShapeLayer):
    """Copy one bottom to every top (``split_layer.cpp``); the top diffs are summed in backward."""

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "split" type: "Split" bottom: "x" top: "y1" top: "y2" }
"""

    def __init__(self, num_tops: int) -> None:
        super().__init__()
        self.num_tops = int(num_tops)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Split:
        ctx.check_bottoms(1)
        if not layer.top:
            raise ctx.error("produces at least 1 top blob, got 0")
        if layer.bottom[0] in layer.top:
            raise ctx.error("does not allow in-place computation (a top is the bottom blob)")
        return cls(len(layer.top))

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return x if self.num_tops == 1 else (x,) * self.num_tops


# -- Flatten / Reshape / Crop / Tile -------------------------------------------------------------


@register("Flatten")
class Flatten(_ShapeLayer):
    """Merge the axes ``axis..end_axis`` (inclusive, negatives from the end) into one axis
    (``flatten_layer.cpp``); ``end_axis = axis - 1`` inserts a unit axis, as Caffe's count does."""

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "flatten" type: "Flatten" bottom: "x" top: "y" flatten_param { axis: 1 end_axis: -2 } }
"""

    def __init__(self, axis: int = 1, end_axis: int = -1) -> None:
        super().__init__()
        self.axis = int(axis)
        self.end_axis = int(end_axis)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Flatten:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        _no_in_place(layer, ctx)
        param = layer.flatten_param
        return cls(param.axis, param.end_axis)._checked(layer, ctx.bottom_shapes)

    def top_shape(self, shape: Shape) -> Shape:
        start = self._axis(self.axis, len(shape), "axis")
        end = self._axis(self.end_axis, len(shape), "end_axis")
        if start > end + 1:
            raise self._error(
                f"axis {self.axis} comes after end_axis {self.end_axis} for a {len(shape)}-D bottom"
            )
        return (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.top_shape(tuple(x.shape)))


@register("Reshape")
class Reshape(_ShapeLayer):
    """Replace the axes ``[axis, axis + num_axes)`` by ``shape`` (``reshape_layer.cpp``).

    A ``0`` copies the bottom's dim at the same position (counted from ``axis``), one ``-1`` is
    inferred from the count; ``axis`` may be negative (``-1`` is past the last axis) and
    ``num_axes: -1`` replaces every axis from ``axis`` on.
    """

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "reshape" type: "Reshape" bottom: "x" top: "y"
        reshape_param { shape { dim: 0 dim: -1 dim: 7 } } }
"""

    def __init__(self, dims: Sequence[int], axis: int = 0, num_axes: int = -1) -> None:
        super().__init__()
        self.dims = [int(d) for d in dims]
        self.axis = int(axis)
        self.num_axes = int(num_axes)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Reshape:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        _no_in_place(layer, ctx)
        param = layer.reshape_param
        dims = list(param.shape.dim)
        if dims.count(-1) > 1:
            raise ctx.error(
                f"new shape {dims} contains multiple -1 dims; at most a single -1 may be specified"
            )
        if any(d < -1 for d in dims):
            raise ctx.error(f"new shape {dims} has a dim below -1 (0 copies, -1 infers)")
        return cls(dims, param.axis, param.num_axes)._checked(layer, ctx.bottom_shapes)

    def top_shape(self, shape: Shape) -> Shape:
        ndim = len(shape)
        start = self.axis if self.axis >= 0 else ndim + self.axis + 1
        if not 0 <= start <= ndim:
            raise self._error(f"axis {self.axis} is out of range for a {ndim}-D bottom")
        if self.num_axes < -1:
            raise self._error(f"num_axes must be >= 0, or -1 for all, got {self.num_axes}")
        end = ndim if self.num_axes == -1 else start + self.num_axes
        if end > ndim:
            raise self._error(
                f"end axis = axis + num_axes = {start} + {self.num_axes} is out of range for a "
                f"{ndim}-D bottom"
            )
        top = [*shape[:start], *self.dims, *shape[end:]]
        for index, dim in enumerate(self.dims):
            if dim == 0:
                if start + index >= ndim:
                    raise self._error(
                        f"new shape contains a 0 at position {index}, but the bottom {list(shape)} has no "
                        f"axis {start + index} to copy"
                    )
                top[start + index] = shape[start + index]
        count = math.prod(shape)
        if -1 in self.dims:
            inferred = start + self.dims.index(-1)
            explicit = math.prod(d for i, d in enumerate(top) if i != inferred)
            if explicit == 0 or count % explicit:
                raise self._error(
                    f"bottom count ({count}, shape {list(shape)}) must be divisible by the product of the "
                    f"specified dimensions ({explicit})"
                )
            top[inferred] = count // explicit
        if math.prod(top) != count:
            raise self._error(
                f"output count must match input count: shape {self.dims} gives {top} ({math.prod(top)} "
                f"values) for a bottom {list(shape)} ({count} values)"
            )
        return tuple(top)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(self.top_shape(tuple(x.shape)))


@register("Crop")
class Crop(_ShapeLayer):
    """Crop bottom 0 to bottom 1's shape on every axis from ``axis`` (``crop_layer.cpp``).

    ``offset`` is empty (0), one value for every cropped axis, or one value per cropped axis.
    Bottom 1 only gives a shape: it receives no gradient.
    """

    family = "shape"

    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 dim: 3 dim: 4 } } }
layer { name: "crop" type: "Crop" bottom: "a" bottom: "b" top: "y"
        crop_param { axis: 2 offset: 1 offset: 2 } }
"""

    def __init__(self, axis: int = 2, offsets: Sequence[int] = ()) -> None:
        super().__init__()
        self.axis = int(axis)
        self.offsets = [int(o) for o in offsets]

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Crop:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        param = layer.crop_param
        return cls(param.axis, list(param.offset))._checked(layer, ctx.bottom_shapes)

    def crop(self, shape: Shape, reference: Shape) -> list[tuple[int, int, int]]:
        """``(axis, offset, size)`` for each cropped axis."""
        ndim = len(shape)
        start = self._axis(self.axis, ndim)
        if len(self.offsets) > 1 and start + len(self.offsets) != ndim:
            raise self._error(
                f"{len(self.offsets)} offsets given, but a {ndim}-D bottom cropped from axis {start} needs "
                f"one offset, or one per cropped axis ({ndim - start})"
            )
        if len(reference) < ndim:
            raise self._error(
                f"bottom 1 {list(reference)} has fewer axes than bottom 0 {list(shape)}: it has no size "
                f"for axis {len(reference)}"
            )
        plan = []
        for i in range(start, ndim):
            offset = (
                self.offsets[0]
                if len(self.offsets) == 1
                else (self.offsets[i - start] if self.offsets else 0)
            )
            if offset < 0 or shape[i] - offset < reference[i]:
                raise self._error(
                    f"the crop for axis {i} is out of bounds: size {reference[i]} at offset {offset} in a "
                    f"dimension of {shape[i]} (bottom 0 {list(shape)}, bottom 1 {list(reference)})"
                )
            plan.append((i, offset, reference[i]))
        return plan

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        shape = list(bottom_shapes[0])
        for axis, _, size in self.crop(tuple(bottom_shapes[0]), tuple(bottom_shapes[1])):
            shape[axis] = size
        return [tuple(shape)]

    def forward(self, x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        for axis, offset, size in self.crop(tuple(x.shape), tuple(reference.shape)):
            if offset != 0 or size != x.shape[axis]:
                x = x.narrow(axis, offset, size)
        return x


@register("Tile")
class Tile(_ShapeLayer):
    """Repeat the bottom ``tiles`` times along ``axis``: ``[x, x, ...]`` concatenated (``tile_layer.cpp``)."""

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "tile" type: "Tile" bottom: "x" top: "y" tile_param { axis: 1 tiles: 2 } }
"""

    def __init__(self, tiles: int, axis: int = 1) -> None:
        super().__init__()
        self.tiles = int(tiles)
        self.axis = int(axis)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Tile:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        param = layer.tile_param
        if not param.HasField("tiles"):
            raise ctx.error("tile_param.tiles (the number of tiles) must be specified")
        if param.tiles <= 0:
            raise ctx.error(f"the number of tiles must be positive, got {param.tiles}")
        return cls(param.tiles, param.axis)._checked(layer, ctx.bottom_shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self._axis(self.axis, x.dim())
        repeats = [1] * x.dim()
        repeats[axis] = self.tiles
        return x.repeat(repeats)


# -- Eltwise ---------------------------------------------------------------------------------------


class _QuotientGradProduct(torch.autograd.Function):
    """``prod(factors)`` whose backward is Caffe's ``stable_prod_grad: false`` rule ``top / x_i * dy``."""

    @staticmethod
    def forward(ctx, *factors: torch.Tensor) -> torch.Tensor:  # noqa: D102
        top = factors[0] * factors[1]
        for factor in factors[2:]:
            top = top * factor
        ctx.save_for_backward(top, *factors)
        return top

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # noqa: D102
        top, *factors = ctx.saved_tensors
        return tuple(
            top / factor * grad if needed else None
            for factor, needed in zip(factors, ctx.needs_input_grad, strict=True)
        )


@register("Eltwise")
class Eltwise(_ShapeLayer):
    """Element-wise combination of bottoms of one shape (``eltwise_layer.cpp``).

    Operations: ``SUM`` (``sum coeff_i * x_i``, one coeff per bottom, default 1), ``PROD``,
    ``MAX`` and the fork's ``SORT`` (``prod(1 + x_i)``). ``MAX`` follows Caffe's loop: bottom 1 wins
    a tie with bottom 0, later bottoms must be strictly greater, and the whole diff goes to the
    winner. ``PROD``/``SORT`` back-propagate the product of the other factors with
    ``stable_prod_grad`` (the default, the exact gradient) and Caffe's ``top / x_i`` otherwise
    (inf/nan where a factor is 0, as in Caffe). Coefficients are ignored by MAX and SORT, as Caffe does.
    """

    family = "shape"

    OPERATIONS = ("PROD", "SUM", "MAX", "SORT")
    example = """
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "eltwise" type: "Eltwise" bottom: "a" bottom: "b" top: "y"
        eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
"""

    def __init__(
        self, operation: str = "SUM", coeffs: Sequence[float] = (), stable_prod_grad: bool = True
    ) -> None:
        super().__init__()
        if operation not in self.OPERATIONS:
            raise ValueError(f"unknown Eltwise operation {operation!r}; known: {', '.join(self.OPERATIONS)}")
        self.operation = operation
        self.coeffs = [float(c) for c in coeffs]
        self.stable_prod_grad = bool(stable_prod_grad)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Eltwise:
        if len(layer.bottom) < 2:
            raise ctx.error(f"takes at least 2 bottom blobs, got {len(layer.bottom)}")
        ctx.check_tops(1)
        param = layer.eltwise_param
        operation = _Eltwise.EltwiseOp.Name(param.operation)
        _check_coeffs(ctx, param.coeff, operation, len(layer.bottom))
        return cls(operation, list(param.coeff), param.stable_prod_grad)._checked(layer, ctx.bottom_shapes)

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        first = tuple(bottoms[0].shape)
        for index, bottom in enumerate(bottoms[1:], start=1):
            if tuple(bottom.shape) != first:
                raise self._error(
                    f"all bottoms must have the same shape: bottom 0 has {list(first)}, bottom {index} has "
                    f"{list(bottom.shape)}"
                )
        if self.operation == "SUM":
            coeffs = self.coeffs or [1.0] * len(bottoms)
            top = bottoms[0] if coeffs[0] == 1.0 else bottoms[0] * coeffs[0]
            for coeff, bottom in zip(coeffs[1:], bottoms[1:], strict=True):
                top = torch.add(top, bottom, alpha=coeff)
            return top
        if self.operation == "MAX":
            top = torch.where(bottoms[0] > bottoms[1], bottoms[0], bottoms[1])
            for bottom in bottoms[2:]:
                top = torch.where(bottom > top, bottom, top)
            return top
        factors = bottoms if self.operation == "PROD" else tuple(1.0 + b for b in bottoms)
        if not self.stable_prod_grad:
            return _QuotientGradProduct.apply(*factors)
        top = factors[0] * factors[1]
        for factor in factors[2:]:
            top = top * factor
        return top

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"operation={self.operation}"]
        if self.coeffs:
            parts.append(f"coeffs={self.coeffs}")
        return ", ".join(part for part in parts if part)


# -- Reduction / ArgMax ----------------------------------------------------------------------------


@register("Reduction")
class Reduction(_ShapeLayer):
    """Reduce every axis from ``axis`` on, times ``coeff`` (``reduction_layer.cpp``, fork version).

    ``SUM``, ``ASUM`` (sum of ``|x|``), ``SUMSQ`` (sum of ``x^2``), ``MEAN`` (sum / count). The top
    keeps the dims before ``axis`` (a 0-D scalar for ``axis: 0``). Gradients: ``coeff * dy`` (SUM),
    ``coeff / count * dy`` (MEAN), ``coeff * sign(x) * dy`` (ASUM, 0 at 0), ``2 coeff x dy`` (SUMSQ).
    """

    family = "shape"

    OPERATIONS = ("SUM", "ASUM", "SUMSQ", "MEAN")
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "reduction" type: "Reduction" bottom: "x" top: "y"
        reduction_param { operation: MEAN axis: 1 coeff: 2 } }
"""

    def __init__(self, operation: str = "SUM", axis: int = 0, coeff: float = 1.0) -> None:
        super().__init__()
        if operation not in self.OPERATIONS:
            raise ValueError(
                f"unknown Reduction operation {operation!r}; known: {', '.join(self.OPERATIONS)}"
            )
        self.operation = operation
        self.axis = int(axis)
        self.coeff = float(coeff)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Reduction:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        param = layer.reduction_param
        operation = _Reduction.ReductionOp.Name(param.operation)
        return cls(operation, param.axis, param.coeff)._checked(layer, ctx.bottom_shapes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axis = self._axis(self.axis, x.dim())
        flat = x.reshape(*x.shape[:axis], math.prod(x.shape[axis:]))
        if self.operation == "ASUM":
            top = flat.abs().sum(dim=-1)
        elif self.operation == "SUMSQ":
            top = (flat * flat).sum(dim=-1)
        else:
            top = flat.sum(dim=-1)
            if self.operation == "MEAN":
                top = top * (1.0 / flat.shape[-1])
        return top if self.coeff == 1.0 else top * self.coeff


@register("ArgMax")
class ArgMax(_ShapeLayer):
    """Indices (or values) of the ``top_k`` largest entries (``argmax_layer.cpp``); no backward.

    Without ``axis`` each item's ``count(1)`` values are ranked and the top is ``(N, 1, top_k)``
    (``(N, 2, top_k)`` with ``out_max_val``: indices then values), padded with unit axes to the
    bottom's number of axes; with ``axis`` the top is the bottom with that axis replaced by
    ``top_k`` and holds values when ``out_max_val`` is set, indices otherwise. Ties rank the larger
    index first (Caffe sorts ``(value, index)`` pairs with ``std::greater``). Indices are floats.
    """

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "argmax" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 2 axis: 1 } }
"""

    def __init__(self, top_k: int = 1, out_max_val: bool = False, axis: int | None = None) -> None:
        super().__init__()
        self.top_k = int(top_k)
        self.out_max_val = bool(out_max_val)
        self.axis = None if axis is None else int(axis)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ArgMax:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        param = layer.argmax_param
        axis = param.axis if param.HasField("axis") else None
        return cls(param.top_k, param.out_max_val, axis)._checked(layer, ctx.bottom_shapes)

    def _ranked(self, values: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``top_k`` largest along ``dim``, ties to the larger index: a stable descending sort of
        the reversed axis."""
        size = values.shape[dim]
        if not 1 <= self.top_k <= size:
            raise self._error(f"top_k {self.top_k} must be between 1 and the {size} values ranked")
        reversed_values = values.flip(dim)
        sorted_values, order = torch.sort(reversed_values, dim=dim, descending=True, stable=True)
        best = sorted_values.narrow(dim, 0, self.top_k)
        index = (size - 1) - order.narrow(dim, 0, self.top_k)
        return best, index.to(values.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        if self.axis is not None:
            axis = self._axis(self.axis, x.dim())
            best, index = self._ranked(x, axis)
            return best if self.out_max_val else index
        if x.dim() < 1:
            raise self._error("needs a bottom with at least one axis")
        flat = x.reshape(x.shape[0], -1)
        best, index = self._ranked(flat, 1)
        top = torch.stack([index, best], dim=1) if self.out_max_val else index.unsqueeze(1)
        return top.reshape(*top.shape, *([1] * (x.dim() - 3)))


# -- Silence / Parameter / Embed -------------------------------------------------------------------


@register("Silence")
class Silence(_ShapeLayer):
    """Consume bottoms and produce nothing (``silence_layer.cpp``): they get no gradient (zeros)."""

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "silence" type: "Silence" bottom: "x" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Silence:
        if not layer.bottom:
            raise ctx.error("takes at least 1 bottom blob, got 0")
        ctx.check_tops(0)
        return cls()

    def forward(self, *bottoms: torch.Tensor) -> tuple[()]:
        return ()


@register("Parameter")
class Parameter(_ShapeLayer):
    """Output a learnable blob ``weight`` of ``parameter_param.shape`` (``parameter_layer.hpp``).

    The blob is filled with the fork's ``blob_filler`` (constant 0 by default); its diff is the top's.
    """

    family = "shape"

    caffe_blobs = (Blob("weight"),)
    example = """
layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 3 dim: 5 } } }
"""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.set_blob("weight", torch.zeros(tuple(int(d) for d in shape)))

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Parameter:
        ctx.check_bottoms(0)
        ctx.check_tops(1)
        param = layer.parameter_param
        shape = tuple(param.shape.dim)
        if any(d < 0 for d in shape):
            raise ctx.error(f"parameter_param.shape {list(shape)} has a negative dim")
        module = cls(shape)
        module.set_blob("weight", fill(shape, param.blob_filler, f"layer '{layer.name}'"))
        return module

    def forward(self) -> torch.Tensor:
        return self.weight


@register("Embed")
class Embed(_ShapeLayer):
    """Look up rows of ``weight`` (``(input_dim, num_output)``) by index (``embed_layer.cpp``).

    The bottom holds indices as floats, truncated toward zero as ``static_cast<int>`` does; the top
    is ``bottom.shape + (num_output,)`` plus the optional ``bias``. The bottom gets no gradient
    (Caffe refuses to back-propagate to it); indices outside ``[0, input_dim)`` raise an error.
    """

    family = "shape"

    caffe_blobs = (Blob("weight"), Blob("bias", optional=True))
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "embed" type: "Embed" bottom: "x" top: "y"
        embed_param { num_output: 5 input_dim: 7 weight_filler { type: "gaussian" std: 1 } } }
"""

    def __init__(self, num_output: int, input_dim: int, bias_term: bool = True) -> None:
        super().__init__()
        self.num_output = int(num_output)
        self.input_dim = int(input_dim)
        self.set_blob("weight", torch.zeros(self.input_dim, self.num_output))
        self.set_blob("bias", torch.zeros(self.num_output) if bias_term else None)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Embed:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        param = layer.embed_param
        if param.num_output <= 0:
            raise ctx.error(f"embed_param.num_output must be positive, got {param.num_output}")
        if param.input_dim <= 0:
            raise ctx.error(f"embed_param.input_dim must be positive, got {param.input_dim}")
        module = cls(param.num_output, param.input_dim, param.bias_term)
        where = f"layer '{layer.name}'"
        module.set_blob("weight", fill((param.input_dim, param.num_output), param.weight_filler, where))
        if param.bias_term:
            module.set_blob("bias", fill((param.num_output,), param.bias_filler, where))
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        index = x.detach().to(torch.long)
        if index.device.type == "cpu" and index.numel():
            low, high = int(index.min()), int(index.max())
            if low < 0 or high >= self.input_dim:
                bad = low if low < 0 else high
                raise self._error(f"index {bad} is out of range for input_dim {self.input_dim}")
        top = F.embedding(index, self.weight)
        return top if self.bias is None else top + self.bias
