"""Layers that reorder or select data: Permute (SSD's ``permute_param``), BatchReindex and Filter
(``<name>_layer.cpp`` of happynear/caffe-windows, which carries them from SSD and BVLC).

They only move values, so their autograd gradients are Caffe's backward passes: Permute's inverse
permutation, BatchReindex's sum over repeated indices, Filter's copy back to the kept items (zero
for the others). Index and selector bottoms never receive a diff (Caffe refuses to back-propagate
to them).
"""

from __future__ import annotations

import torch

from caffe_compat.errors import LayerError
from caffe_compat.export.errors import ExportError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2


class _ReorderLayer(CaffeLayer):
    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name or '?'}' ({self.caffe_type}): {message}")


# -- Permute ---------------------------------------------------------------------------------------


@register("Permute")
class Permute(_ReorderLayer):
    """Reorder the axes (``permute_layer.cpp``, from SSD): ``permute_param { order: ... }``.

    The listed axes come first, in that order, then every axis not listed in its original order
    (so ``order: 0 order: 2`` on a 4-D bottom is ``(0, 2, 1, 3)``). An order must be below the
    bottom's number of axes and appear once. The top is a contiguous copy, or the bottom itself
    when the order changes nothing; the backward is the inverse permutation. The number of axes is
    fixed when the layer is set up, as in Caffe.
    """

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "permute" type: "Permute" bottom: "x" top: "y"
        permute_param { order: 0 order: 2 order: 3 order: 1 } }
"""

    def __init__(self, order: tuple[int, ...]) -> None:
        super().__init__()
        self.order = tuple(int(i) for i in order)
        if sorted(self.order) != list(range(len(self.order))):
            raise ValueError(f"order {list(self.order)} is not a permutation of the axes")
        self.need_permute = self.order != tuple(range(len(self.order)))

    @staticmethod
    def full_order(given: list[int], num_axes: int) -> tuple[int, ...]:
        """Caffe's ``LayerSetUp``: the given axes, then every other axis in its original order."""
        orders: list[int] = []
        for axis in given:
            if axis >= num_axes:
                raise ValueError(f"order {axis} should be less than the input dimension ({num_axes})")
            if axis in orders:
                raise ValueError(f"there are duplicate orders ({axis} in {list(given)})")
            orders.append(axis)
        return tuple(orders + [axis for axis in range(num_axes) if axis not in orders])

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Permute:
        ctx.check_bottoms(1)
        ctx.check_tops(1)
        try:
            return cls(cls.full_order(list(layer.permute_param.order), len(ctx.bottom_shapes[0])))
        except ValueError as exc:
            raise ctx.error(f"permute_param: {exc}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != len(self.order):
            raise self._error(
                f"was set up for {len(self.order)}-D bottoms, got shape {list(x.shape)} (rebuild the net)"
            )
        if not self.need_permute:
            return x
        return x.permute(self.order).contiguous()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, order={list(self.order)}".lstrip(", ")


# -- BatchReindex ----------------------------------------------------------------------------------


@register("BatchReindex")
class BatchReindex(_ReorderLayer):
    """Gather items of the batch by index (``batch_reindex_layer.cpp``).

    Bottoms: data (N, ...) and a 1-D index blob (K) of item numbers (floats, as Caffe stores
    them, truncated toward zero; integer tensors are accepted). Top (K, ...) with
    ``top[k] = data[int(index[k])]``. Every index must satisfy ``0 <= index < N`` (checked on the
    values, as Caffe's CHECKs do). Backward: each item's diff is the sum of the diffs of the top
    rows that copied it (zero for items never picked); the index gets no diff.
    """

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 dim: 7 } } }
layer { name: "index" type: "Input" top: "index" input_param { shape { dim: 6 } } }
layer { name: "reindex" type: "BatchReindex" bottom: "x" bottom: "index" top: "y" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> BatchReindex:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        data, index = ctx.bottom_shapes
        if len(index) != 1:
            raise ctx.error(f"the index (bottom 1) must be 1-D, got shape {list(index)}")
        if len(data) < 1:
            raise ctx.error("the data (bottom 0) must have at least 1 axis")
        return cls()

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        data, index = bottom_shapes
        return [(int(index[0]), *data[1:])]

    def _gather(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        if index.dim() != 1:
            raise self._error(f"the index (bottom 1) must be 1-D, got shape {list(index.shape)}")
        return torch.index_select(x, 0, index.detach().to(device=x.device, dtype=torch.long))

    def forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        values = index.detach()
        if values.numel() and bool(((values < 0) | (values >= x.shape[0])).any()):
            bad = values[(values < 0) | (values >= x.shape[0])][0].item()
            raise self._error(f"index {bad} is outside the batch [0, {x.shape[0]})")
        return self._gather(x, index)

    def export_forward(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """The gather without the value check (no Python branch on tensor values)."""
        return self._gather(x, index)


# -- Filter ----------------------------------------------------------------------------------------


@register("Filter")
class Filter(_ReorderLayer):
    """Keep the items whose selector is non-zero (``filter_layer.cpp``).

    Bottoms: K blobs to filter, then the selector (N, 1, ...) (every axis but the first a
    singleton); every bottom has N items. Tops: the K blobs restricted, in order, to the items
    whose selector value is non-zero (NaN counts as non-zero), so the top size depends on the data.
    Backward: kept items get their top diff, filtered ones zero; the selector gets none.

    At build time the tops have all N items, as Caffe's first Reshape gives them. The forward runs
    in eager mode (``Net``); exporting (py, onnx, torchscript) is refused with an ``ExportError``,
    since a traced graph has fixed shapes.
    """

    family = "shape"

    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 5 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "keep" type: "Input" top: "keep" input_param { shape { dim: 4 dim: 1 } } }
layer { name: "filter" type: "Filter" bottom: "x" bottom: "label" bottom: "keep" top: "y" top: "label_kept" }
"""

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Filter:
        if len(layer.bottom) < 2:
            raise ctx.error(f"takes at least 2 bottom blobs (data..., selector), got {len(layer.bottom)}")
        if len(layer.top) != len(layer.bottom) - 1:
            raise ctx.error(
                f"needs one top per filtered bottom: {len(layer.bottom) - 1} bottoms to filter, "
                f"{len(layer.top)} tops"
            )
        module = cls()
        module.caffe_name = layer.name
        module._check_shapes(ctx.bottom_shapes)
        return module

    def _check_shapes(self, shapes: list[Shape]) -> None:
        selector = shapes[-1]
        if len(selector) < 1 or any(d != 1 for d in selector[1:]):
            raise self._error(
                "selector (last bottom) dimensions must be singletons (1), except the first; got "
                f"{list(selector)}"
            )
        for index, shape in enumerate(shapes[:-1]):
            if len(shape) < 1 or shape[0] != selector[0]:
                raise self._error(
                    f"each bottom must have the selector's 0th dimension {selector[0]}: bottom {index} has "
                    f"shape {list(shape)}"
                )

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        self._check_shapes(bottom_shapes)
        return [tuple(shape) for shape in bottom_shapes[:-1]]

    def forward(self, *bottoms: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        self._check_shapes([tuple(b.shape) for b in bottoms])
        selector = bottoms[-1].detach().reshape(-1)
        kept = torch.nonzero(selector != 0).reshape(-1)
        tops = tuple(torch.index_select(b, 0, kept.to(b.device)) for b in bottoms[:-1])
        return tops[0] if len(tops) == 1 else tops

    def export_forward(self, *bottoms: torch.Tensor) -> torch.Tensor:
        raise ExportError(
            f"layer '{self.caffe_name}' (Filter) cannot be exported: the number of items it outputs "
            "depends on the selector's values, which a traced graph with fixed shapes cannot express "
            "(run it with caffe_compat.Net instead)"
        )
