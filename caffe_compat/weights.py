"""Caffemodel <-> module blobs, generic over each layer's declared ``caffe_blobs``.

Rules followed (``Net::CopyTrainedLayersFrom``, ``Blob::ShapeEquals``, ``Net::ToProto``):
source layers are matched to the net's layers by name; a source layer the net lacks is skipped
with a logged note; a blob-count mismatch or a shape mismatch is an error (with Caffe's hint to
rename the layer); legacy 4-D blob shapes match a target shape padded with leading ones.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import numpy as np
import torch

from caffe_compat.errors import WeightsError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import array_to_blob, blob_shape, blob_to_array, read_caffemodel

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
    count = int(np.prod(shape)) if shape else 1
    return " ".join(str(d) for d in shape) + f" ({count})"


def copy_blobs_into(
    layer_name: str, targets: list[torch.Tensor], blobs: list[caffe_pb2.BlobProto], source: str
) -> None:
    """Copy stored blobs into a layer's tensors with Caffe's count and shape checks."""
    if len(targets) != len(blobs):
        raise WeightsError(
            f"{source}: incompatible number of blobs for layer '{layer_name}': the weights hold "
            f"{len(blobs)}, the net's layer has {len(targets)}"
        )
    for index, (target, blob) in enumerate(zip(targets, blobs, strict=True)):
        if not legacy_shape_equals(tuple(target.shape), blob):
            raise WeightsError(
                f"{source}: cannot copy param {index} weights from layer '{layer_name}'; shape mismatch. "
                f"Source param shape is {_shape_string(blob_shape(blob))}; target param shape is "
                f"{_shape_string(target.shape)}. To learn this layer's parameters from scratch rather "
                "than copying from a saved net, rename the layer."
            )
        values = torch.from_numpy(blob_to_array(blob, f"{source}: layer '{layer_name}' blob {index}").copy())
        with torch.no_grad():
            target.copy_(values.reshape(target.shape))


def copy_trained_layers(
    layer_blobs: dict[str, list[torch.Tensor]], weights: caffe_pb2.NetParameter | str | os.PathLike
) -> list[str]:
    """Copy a caffemodel's blobs into ``layer_blobs`` (layer name -> its tensors in Caffe order).

    Returns the names of source layers that were skipped because the net has no such layer.
    """
    if isinstance(weights, caffe_pb2.NetParameter):
        source_param, source = weights, "<weights>"
    else:
        source_param, source = read_caffemodel(weights), str(weights)
    skipped = []
    for layer in source_param.layer:
        if layer.name not in layer_blobs:
            logger.info("Ignoring source layer %s", layer.name)
            skipped.append(layer.name)
            continue
        copy_blobs_into(layer.name, layer_blobs[layer.name], list(layer.blobs), source)
    return skipped


def tensors_to_blobs(tensors: list[torch.Tensor]) -> list[caffe_pb2.BlobProto]:
    """Stored form of a layer's tensors (float32 data with an explicit shape)."""
    return [array_to_blob(t.detach().to("cpu", torch.float32).numpy()) for t in tensors]
