"""Caffemodel <-> module blobs, generic over each layer's declared ``caffe_blobs``.

Rules followed (``Net::CopyTrainedLayersFrom``, ``Blob::ShapeEquals``, ``Net::ToProto``):
source layers are matched to the net's layers by name; a source layer the net lacks is skipped
with a logged note; a blob-count mismatch or a shape mismatch is an error (with Caffe's hint to
rename the layer); legacy 4-D blob shapes match a target shape padded with leading ones.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable
from functools import partial

import torch

from caffe_compat.errors import WeightsError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.caffemodel_index import CaffemodelIndex
from caffe_compat.proto.io import array_to_blob, blob_shape, blob_to_array

logger = logging.getLogger("caffe_compat")


def legacy_shape_equals(target: tuple[int, ...], blob: caffe_pb2.BlobProto) -> bool:
    """Caffe's ``Blob::ShapeEquals`` against a stored blob."""
    if blob.HasField("num") or blob.HasField("channels") or blob.HasField("height") or blob.HasField("width"):
        if len(target) > 4:
            return False
        padded = (1,) * (4 - len(target)) + tuple(target)
        return padded == (blob.num, blob.channels, blob.height, blob.width)
    return tuple(target) == blob_shape(blob)


def _shape_string(shape: Iterable[int]) -> str:
    shape = list(shape)
    count = math.prod(shape)  # exact: numpy's product overflows for a hostile file's shape
    return " ".join(str(d) for d in shape) + f" ({count})"


ShapeCheck = tuple[tuple[int, ...], Callable[[tuple[int, ...]], bool]]  # (stored shape, equals target?)


def check_stored_layer(
    source: str, layer_name: str, targets: list[torch.Tensor], stored: list[ShapeCheck]
) -> None:
    """Caffe's blob-count and ``Blob::ShapeEquals`` checks, with Caffe's messages and hint."""
    if len(targets) != len(stored):
        raise WeightsError(
            f"{source}: incompatible number of blobs for layer '{layer_name}': the weights hold "
            f"{len(stored)}, the net's layer has {len(targets)}"
        )
    for index, (target, (shape, equals)) in enumerate(zip(targets, stored, strict=True)):
        if not equals(tuple(target.shape)):
            raise WeightsError(
                f"{source}: cannot copy param {index} weights from layer '{layer_name}'; shape mismatch. "
                f"Source param shape is {_shape_string(shape)}; target param shape is "
                f"{_shape_string(target.shape)}. To learn this layer's parameters from scratch rather "
                "than copying from a saved net, rename the layer."
            )


def copy_trained_layers(
    layer_blobs: dict[str, list[torch.Tensor]], weights: caffe_pb2.NetParameter | str | os.PathLike
) -> list[str]:
    """Copy a caffemodel's blobs into ``layer_blobs`` (layer name -> its tensors in Caffe order).

    A file is read blob by blob straight into the tensors (``CaffemodelIndex``), so loading a
    large model needs about its own size in memory, not a decoded copy besides. Returns the
    names of source layers that were skipped because the net has no such layer.
    """
    skipped = []
    if isinstance(weights, caffe_pb2.NetParameter):
        for layer in weights.layer:
            if layer.name not in layer_blobs:
                logger.info("Ignoring source layer %s", layer.name)
                skipped.append(layer.name)
                continue
            targets = layer_blobs[layer.name]
            stored = [(blob_shape(b), partial(legacy_shape_equals, blob=b)) for b in layer.blobs]
            check_stored_layer("<weights>", layer.name, targets, stored)
            for index, (target, blob) in enumerate(zip(targets, layer.blobs, strict=True)):
                values = blob_to_array(blob, f"layer '{layer.name}' blob {index}")
                with torch.no_grad():
                    target.copy_(torch.from_numpy(values.copy()).reshape(target.shape))
        return skipped
    index = CaffemodelIndex(weights)
    with open(index.path, "rb") as handle:
        for layer in index.layers:
            if layer.name not in layer_blobs:
                logger.info("Ignoring source layer %s", layer.name)
                skipped.append(layer.name)
                continue
            targets = layer_blobs[layer.name]
            check_stored_layer(str(weights), layer.name, targets, [(b.shape, b.matches) for b in layer.blobs])
            for blob_index, target in enumerate(targets):
                index.read_into(layer, blob_index, target, handle)
    return skipped


def tensors_to_blobs(tensors: list[torch.Tensor]) -> list[caffe_pb2.BlobProto]:
    """Stored form of a layer's tensors (float32 data with an explicit shape)."""
    return [array_to_blob(t.detach().to("cpu", torch.float32).numpy()) for t in tensors]
