"""Caffemodels loaded into nets and written blob by blob (for conversions of large models).

Reading goes through ``caffe_compat.proto.caffemodel_index.CaffemodelIndex``; ``load_into`` checks
every layer against the net (all mismatches listed at once), then reads each blob's values straight
into its tensor.

Writing: ``write_caffemodel_streaming`` writes Caffe's ``NetParameter`` layer by layer: each
layer's definition (as ``Net::ToProto`` copies it) followed by its blobs, each with an explicit
``shape`` and its float32 values as the packed ``data`` field, the values written from the
tensors' memory. The bytes decode to the message ``Net::ToProto`` would build (field order aside,
which protobuf parsers ignore), so real Caffe loads the file.

Rules followed (``Net::CopyTrainedLayersFrom``): layers match by name. Deliberate deviation: Caffe
silently keeps filler values for net layers the weights lack; a conversion refuses that (unless
asked), since it would export random weights.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from caffe_compat.errors import WeightsError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.caffemodel_index import (  # noqa: F401  (CaffemodelIndex is part of this API)
    _BLOB_DATA,
    _BLOB_SHAPE,
    _LAYER_BLOBS,
    _LEN,
    _NET_LAYER,
    CaffemodelIndex,
    _shape_text,
)
from caffe_compat.proto.io import encode_varint

MAX_LISTED = 20


@dataclass
class LoadReport:
    """What loading weights into a net did: source layers it ignored, net layers left as filled."""

    ignored: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def _listed(items: list[str]) -> str:
    shown = items[:MAX_LISTED]
    more = f"; and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return "; ".join(shown) + more


def check_layers(
    source: str,
    stored: dict[str, list[tuple[tuple[int, ...], Callable[[tuple[int, ...]], bool]]]],
    targets: dict[str, list[torch.Tensor]],
    allow_missing: bool = False,
) -> LoadReport:
    """Compare stored layers (name -> [(shape, shape_equals)]) with the net's, raising one
    ``WeightsError`` that lists every difference.

    Net layers with blobs that the weights lack are errors unless ``allow_missing``; source
    layers the net lacks are ignored (Caffe's rule) and reported.
    """
    report = LoadReport()
    problems: list[str] = []
    for name, tensors in targets.items():
        if not tensors:
            continue
        if name not in stored:
            report.missing.append(name)
            continue
        blobs = stored[name]
        if len(blobs) != len(tensors):
            problems.append(
                f"layer '{name}': the weights hold {len(blobs)} blobs, the net's layer has {len(tensors)}"
            )
            continue
        for index, ((shape, equals), tensor) in enumerate(zip(blobs, tensors, strict=True)):
            if not equals(tuple(tensor.shape)):
                problems.append(
                    f"layer '{name}' blob {index}: stored shape {_shape_text(shape)}, the net's is "
                    f"{_shape_text(tensor.shape)}"
                )
    report.ignored = [name for name in stored if name not in targets]
    if report.missing and not allow_missing:
        problems.insert(0, f"the net's layers {report.missing} have no weights in the file")
    if problems:
        if report.ignored:
            problems.append(f"layers in the weights but not in the net: {report.ignored}")
        raise WeightsError(
            f"{source}: the weights do not fit the net (are they from a different net?): {_listed(problems)}"
        )
    return report


def load_into(
    targets: dict[str, list[torch.Tensor]],
    index: CaffemodelIndex,
    allow_missing: bool = False,
    progress: bool = False,
) -> LoadReport:
    """Copy a caffemodel's blobs into the net's tensors (layer name -> tensors in Caffe order)."""
    by_name = index.by_name()
    stored = {name: [(blob.shape, blob.matches) for blob in layer.blobs] for name, layer in by_name.items()}
    report = check_layers(str(index.path), stored, targets, allow_missing)
    work = [(name, by_name[name]) for name, tensors in targets.items() if tensors and name in by_name]
    with open(index.path, "rb") as handle, progress_bar(progress, index.nbytes, "reading weights") as bar:
        for name, layer in work:
            for blob_index, tensor in enumerate(targets[name]):
                index.read_into(layer, blob_index, tensor, handle)
                bar.update(tensor.numel() * 4)
    return report


# -- writing ---------------------------------------------------------------------------------------


def _key(number: int, wire: int) -> bytes:
    return encode_varint(number << 3 | wire)


def _blob_parts(tensor: torch.Tensor) -> tuple[bytes, np.ndarray]:
    """The blob's shape field and data field header, and its float32 values."""
    array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
    shape = caffe_pb2.BlobShape(dim=[int(d) for d in array.shape]).SerializeToString()
    head = _key(_BLOB_SHAPE, _LEN) + encode_varint(len(shape)) + shape
    if array.size:
        head += _key(_BLOB_DATA, _LEN) + encode_varint(array.nbytes)
    return head, array


def write_caffemodel_streaming(
    net_param: caffe_pb2.NetParameter,
    layer_tensors: dict[str, list[torch.Tensor]],
    path: str | os.PathLike,
    progress: bool = False,
) -> None:
    """Write ``net_param`` with each layer's blobs taken from ``layer_tensors`` as a binary caffemodel.

    ``path`` is written directly (the caller stages it); the layer definitions are copied as
    ``Net::ToProto`` does, their stored blobs replaced by the tensors.
    """
    header = caffe_pb2.NetParameter()
    header.CopyFrom(net_param)
    del header.layer[:]
    total = sum(t.numel() * 4 for tensors in layer_tensors.values() for t in tensors)
    with open(path, "wb") as handle, progress_bar(progress, total, "writing caffemodel") as bar:
        handle.write(header.SerializeToString())
        for layer in net_param.layer:
            definition = caffe_pb2.LayerParameter()
            definition.CopyFrom(layer)
            del definition.blobs[:]
            layer_bytes = definition.SerializeToString()
            blobs = [_blob_parts(t) for t in layer_tensors.get(layer.name, [])]
            body = len(layer_bytes)
            for head, array in blobs:
                blob_size = len(head) + array.nbytes
                body += len(_key(_LAYER_BLOBS, _LEN)) + len(encode_varint(blob_size)) + blob_size
            handle.write(_key(_NET_LAYER, _LEN) + encode_varint(body) + layer_bytes)
            for head, array in blobs:
                blob_size = len(head) + array.nbytes
                handle.write(_key(_LAYER_BLOBS, _LEN) + encode_varint(blob_size) + head)
                if array.size:
                    handle.write(memoryview(array.reshape(-1)).cast("B"))
                bar.update(array.nbytes)


def compare_blobs(written: str | os.PathLike, layer_tensors: dict[str, list[torch.Tensor]]) -> list[str]:
    """Blob-for-blob check of a written caffemodel against the tensors it was written from:
    the differences (layer names, blob counts, shapes, values), empty when identical."""
    index = CaffemodelIndex(written)
    by_name = index.by_name()
    problems = []
    names = [layer.name for layer in index.layers]
    expected = [name for name in layer_tensors]
    if names != expected:
        problems.append(f"layer names/order {names} != {expected}")
    with open(index.path, "rb") as handle:
        for name, tensors in layer_tensors.items():
            layer = by_name.get(name)
            if layer is None:
                continue
            if len(layer.blobs) != len(tensors):
                problems.append(f"layer '{name}': {len(layer.blobs)} blobs written, {len(tensors)} expected")
                continue
            for blob_index, tensor in enumerate(tensors):
                if layer.blobs[blob_index].shape != tuple(tensor.shape):
                    problems.append(
                        f"layer '{name}' blob {blob_index}: shape {list(layer.blobs[blob_index].shape)} "
                        "written, "
                        f"{list(tensor.shape)} expected"
                    )
                    continue
                values = index.read(layer, blob_index, handle)
                reference = tensor.detach().to("cpu", torch.float32).numpy()
                if not np.array_equal(values, reference, equal_nan=True):
                    problems.append(f"layer '{name}' blob {blob_index}: values differ")
    return problems


class _NoBar:
    def update(self, amount: int) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


PROGRESS_MIN_BYTES = 64 * 1024 * 1024


def progress_bar(enabled: bool, total: int, what: str) -> object:
    """A tqdm bar in bytes for transfers of at least 64 MB (a no-op otherwise or without tqdm)."""
    if not enabled or total < PROGRESS_MIN_BYTES:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return _NoBar()
    return tqdm(total=total, unit="B", unit_scale=True, desc=what, leave=False, disable=None)
