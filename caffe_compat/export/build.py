"""Building a Net whose blobs will all be overwritten by stored weights, without filling them.

``Net(...)`` runs every layer's fillers (xavier, gaussian ...) and, per blob, allocates a
placeholder and then the filled tensor: for a large model that costs seconds and, through the
allocator's retention of the freed placeholders, up to ~2.5x the weights in resident memory
before a single stored value is read. A conversion replaces every blob anyway, so it builds the
Net on the ``meta`` device (shapes only) and then gives each parameter and buffer uninitialised
CPU memory (buffers that are not Caffe blobs start at zero), into which the weights are read.

Where that is not safe the ordinary build is used instead: nets with shared parameters
(``param { name }``), layers holding buffers that are not Caffe blobs (counters, whose initial
values matter) or tensors outside their parameters and buffers, or any build that fails on the
meta device (the ordinary build then reports the net's own errors).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from caffe_compat.net.net import Net
from caffe_compat.proto import caffe_pb2

Shape = tuple[int, ...]


def _meta_safe(net: Net) -> bool:
    if any(entry.owner is not None for entry in net.param_entries):
        return False
    for layer in net.layers.values():
        blob_names = {spec.name for spec in layer.caffe_blobs}
        for module in layer.modules():
            if module is layer and any(
                name not in blob_names for name, b in module._buffers.items() if b is not None
            ):
                return False
            if module is not layer and module._buffers:
                return False
            if any(isinstance(value, torch.Tensor) for value in vars(module).values()):
                return False
    return True


def _materialize(net: Net) -> None:
    replaced: dict[int, torch.Tensor] = {}
    for layer in net.layers.values():
        for module in layer.modules():
            for name, param in list(module._parameters.items()):
                if param is not None and param.is_meta:
                    new = replaced.setdefault(
                        id(param),
                        nn.Parameter(torch.empty(param.shape, dtype=param.dtype), param.requires_grad),
                    )
                    module._parameters[name] = new  # type: ignore[assignment]
            for name, buffer in list(module._buffers.items()):
                if buffer is not None and buffer.is_meta:
                    module._buffers[name] = replaced.setdefault(
                        id(buffer), torch.empty(buffer.shape, dtype=buffer.dtype)
                    )
    for entry in net.param_entries:
        entry.tensor = replaced.get(id(entry.tensor), entry.tensor)


def net_for_weights(
    definition: str | os.PathLike | caffe_pb2.NetParameter,
    input_shapes: dict[str, Shape] | None = None,
) -> Net:
    """A TEST-phase Net whose blobs hold uninitialised memory (every one must then be loaded)."""
    try:
        with torch.device("meta"):
            net = Net(definition, phase="TEST", input_shapes=input_shapes)
    except Exception:  # noqa: BLE001  (a layer whose set-up needs real values: build normally)
        return Net(definition, phase="TEST", input_shapes=input_shapes)
    if not _meta_safe(net):
        return Net(definition, phase="TEST", input_shapes=input_shapes)
    _materialize(net)
    return net
