"""Caffe's ``Input`` layer (``input_layer.cpp``): declares the net's input blobs and shapes.

One ``shape`` per top, or a single shape shared by every top. It has no compute: its tops are
the placeholders of the net's graph, and the batch dimension may differ at run time.
"""

from __future__ import annotations

from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import register
from caffe_compat.net.budget import MAX_BLOB_AXES
from caffe_compat.proto import caffe_pb2


@register("Input")
class Input(CaffeLayer):
    """Input blobs of the given shapes."""

    family = "data"

    is_input = True
    example = """
layer { name: "in" type: "Input" top: "x" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } shape { dim: 2 } } }
"""

    def __init__(self, shapes: list[Shape]) -> None:
        super().__init__()
        self.shapes = [tuple(s) for s in shapes]

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> Input:
        ctx.check_bottoms(0)
        shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
        for shape in shapes:  # Blob::Reshape's checks
            if len(shape) > MAX_BLOB_AXES:
                raise ctx.error(f"a shape has {len(shape)} axes; Caffe allows at most {MAX_BLOB_AXES}")
            if any(d < 0 for d in shape):
                raise ctx.error(f"shape {list(shape)} has a negative dimension")
        num_tops = len(layer.top)
        if len(shapes) == 1 and num_tops > 1:
            shapes = shapes * num_tops
        overrides = ctx.extra.get("input_shapes", {})
        if len(shapes) != num_tops and not all(top in overrides for top in layer.top):
            raise ctx.error(
                f"input_param gives {len(shapes)} shapes for {num_tops} tops (give one shape, or one per top)"
            )
        return cls(shapes)

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return list(self.shapes)

    def forward(self, *bottoms):  # pragma: no cover - never called: tops are graph placeholders
        raise RuntimeError("the Input layer is a placeholder and is not called")
