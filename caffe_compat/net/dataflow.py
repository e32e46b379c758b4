"""Blob bookkeeping for a filtered NetParameter, as Caffe's ``Net::Init`` does it.

Rules followed (``src/caffe/net.cpp``):
- a bottom must have been produced by an earlier layer (``AppendBottom``: "Unknown bottom blob");
- a top is in place when it equals the bottom of the same index; any other reuse of a name is
  "produced by multiple sources" (``AppendTop``);
- the net's outputs are the blobs no later layer consumes, in the order of a ``std::set``
  (alphabetical), which is also the ``#i`` numbering of Caffe's log;
- loss weights: ``loss_weight`` per top if given, else the layer's default for its first top (1
  for a loss layer, ``LossLayer::LayerSetUp``; the class's ``default_loss_weight``), else 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from caffe_compat.errors import LayerError
from caffe_compat.proto import caffe_pb2


@dataclass
class Dataflow:
    """Which blobs exist, which are inputs and outputs, and the loss weight of each top."""

    blob_order: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    loss_weights: dict[str, float] = field(default_factory=dict)


def layer_label(layer: caffe_pb2.LayerParameter) -> str:
    return f"layer '{layer.name}' ({layer.type})"


def analyse(net: caffe_pb2.NetParameter, default_loss_weights: list[float]) -> Dataflow:
    """Check the blob wiring of a filtered net and derive its outputs and loss weights.

    ``default_loss_weights[i]`` is the weight of layer i's first top when its prototxt gives no
    ``loss_weight`` (1 for most loss layers, 0 for layers that are no loss).
    """
    flow = Dataflow()
    available: set[str] = set()
    produced: set[str] = set()
    for layer, default_weight in zip(net.layer, default_loss_weights, strict=True):
        for index, bottom in enumerate(layer.bottom):
            if bottom not in produced:
                raise LayerError(
                    f"{layer_label(layer)}: bottom blob '{bottom}' (bottom #{index}) is not produced by "
                    "any earlier layer"
                )
            available.discard(bottom)
        if layer.propagate_down and len(layer.propagate_down) != len(layer.bottom):
            raise LayerError(
                f"{layer_label(layer)}: propagate_down has {len(layer.propagate_down)} entries but the "
                f"layer has {len(layer.bottom)} bottoms"
            )
        if layer.loss_weight and len(layer.loss_weight) != len(layer.top):
            raise LayerError(
                f"{layer_label(layer)}: loss_weight has {len(layer.loss_weight)} entries but the layer "
                f"has {len(layer.top)} tops"
            )
        for index, top in enumerate(layer.top):
            in_place = index < len(layer.bottom) and layer.bottom[index] == top
            if top in produced and not in_place:
                raise LayerError(f"{layer_label(layer)}: top blob '{top}' is produced by multiple sources")
            if top not in produced:
                flow.blob_order.append(top)
            produced.add(top)
            available.add(top)
            if layer.loss_weight:
                weight = float(layer.loss_weight[index])
            else:
                weight = float(default_weight) if index == 0 else 0.0
            if weight != 0.0:
                flow.loss_weights[top] = weight
    flow.outputs = sorted(available)
    return flow
