"""``MarginHead``: the margin-loss heads of ``caffe_compat.losses`` as one Caffe layer type.

A caffe-compat layer (no Caffe fork has it): bottoms (x, label), one top (logits), blob ``weight``
(num_output, in_features) and, with ``learnable_scale``, blob ``scale`` (1,). Parameters come
from ``margin_head_param`` (``MarginHeadParameter``); a field left unset takes the native head's
default (``caffe_compat.losses.make_head``). ``x`` is flattened from axis 1 as InnerProduct does.

Phases: in TRAIN the margin (and MV/SV re-weighting) is applied and SphereFace's iteration counter
advances on every forward, as MarginInnerProduct's ``iter_`` does; in TEST the top is the plain
``s * cos`` (``fc``: ``x @ W.T``), as AM-Softmax's ``LabelSpecificAdd`` is the identity in TEST
(``label_specific_add.cpp``). The fork's ``MarginInnerProduct`` differs: it has no phase check
and applies its margin in TEST too (``margin_inner_product_layer.cpp``). The counter is not
stored in the caffemodel (Caffe's restarts at zero on resume too). The backward is the exact
gradient (including through the weight normalization, which Caffe's normalized layers do not
back-propagate).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from caffe_compat.layers.base import Blob, BuildContext, CaffeLayer, Shape
from caffe_compat.layers.fillers import fill
from caffe_compat.layers.registry import register
from caffe_compat.losses.heads import HEAD_KINDS, MarginHead, head_parameters, make_head
from caffe_compat.proto import caffe_pb2

#: MarginHeadParameter fields passed to ``make_head`` when set.
_HEAD_FIELDS = (
    "m",
    "s",
    "t",
    "easy_margin",
    "conditional",
    "learnable_scale",
    "base",
    "gamma",
    "power",
    "lambda_min",
    "mode",
)


@register("MarginHead")
class MarginHeadLayer(CaffeLayer):
    """Logits of a margin head (``fc``, ``normface``, ``sphereface``, ``am``, ``arc``, ``mv-am``,
    ``mv-arc``, ``sv-am``, ``sv-arc``): with the margin in TRAIN, plain ``s * cos`` in TEST.

    Args:
        kind: the head kind.
        in_features, num_classes: the weight is (num_classes, in_features).
        train: TRAIN phase (margin applied, schedules advance).
        params: the head's parameters (``make_head``'s names).
    """

    family = "margin_heads"

    caffe_blobs = (Blob("weight"), Blob("scale", optional=True))
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "head" type: "MarginHead" bottom: "x" bottom: "label" top: "logits"
  margin_head_param { kind: "mv-am" num_output: 11 m: 0.35 s: 30 t: 0.2
                      weight_filler { type: "xavier" } } }
"""

    def __init__(self, kind: str, in_features: int, num_classes: int, train: bool = True, **params) -> None:
        super().__init__()
        learnable_scale = bool(params.pop("learnable_scale", False))
        if learnable_scale and kind == "fc":
            raise ValueError("kind 'fc' has no scale to learn")
        scale = params.pop("s", None) if learnable_scale else None
        self.head: MarginHead = make_head(kind, in_features, num_classes, own_weight=False, **params)
        self.kind = kind
        self.train_phase = bool(train)
        self.set_blob("weight", torch.zeros(num_classes, in_features))
        if learnable_scale:
            initial = float(self.head.s) if scale is None else float(scale)
            if not initial > 0:
                raise ValueError(f"the scale s must be positive, got {initial}")
            self.head.s = 1.0
            self.set_blob("scale", torch.full((1,), initial))
        else:
            self.set_blob("scale", None)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> MarginHeadLayer:
        ctx.check_bottoms(2)
        ctx.check_tops(1)
        param = layer.margin_head_param
        kind = param.kind
        if not param.HasField("kind"):
            raise ctx.error(f"margin_head_param needs a kind, one of {', '.join(HEAD_KINDS)}")
        if kind not in HEAD_KINDS:
            raise ctx.error(f"unknown margin_head_param kind '{kind}'; known kinds: {', '.join(HEAD_KINDS)}")
        if not param.num_output:
            raise ctx.error("margin_head_param needs num_output > 0")
        x_shape, label_shape = ctx.bottom_shapes
        if len(x_shape) < 2:
            raise ctx.error(f"bottom x must have a batch axis and features, got shape {list(x_shape)}")
        label_count = math.prod(label_shape) if label_shape else 1
        if label_count != x_shape[0]:
            raise ctx.error(
                f"got {label_count} labels for a batch of {x_shape[0]} (label shape {list(label_shape)})"
            )
        accepted = set(head_parameters(kind)) | {"learnable_scale"}
        params = {}
        for field in _HEAD_FIELDS:
            if param.HasField(field):
                if field not in accepted:
                    raise ctx.error(f"kind '{kind}' takes no margin_head_param field '{field}'")
                params[field] = getattr(param, field)
        in_features = math.prod(x_shape[1:])
        try:
            module = cls(kind, in_features, param.num_output, train=ctx.train, **params)
        except (ValueError, TypeError) as exc:
            raise ctx.error(str(exc)) from None
        where = f"layer '{layer.name}' (MarginHead)"
        module.set_blob("weight", fill((param.num_output, in_features), param.weight_filler, where))
        return module

    def top_shapes(self, bottom_shapes: list[Shape]) -> list[Shape]:
        return [(bottom_shapes[0][0], self.head.num_classes)]

    def forward(self, x: Tensor, label: Tensor) -> Tensor:
        if self.train_phase:
            self.head.step()
        logits = self.head.logits(x.flatten(1), label.reshape(-1), self.weight, margin=self.train_phase)
        return logits * self.scale if self.scale is not None else logits

    def extra_repr(self) -> str:
        phase = "TRAIN" if self.train_phase else "TEST"
        return f"{super().extra_repr()}, kind={self.kind!r}, phase={phase}".lstrip(", ")
