"""A ``.caffemodel`` read blob by blob, so a large model is never held twice in memory.

``CaffemodelIndex`` scans the file's protobuf wire format for each layer's name, type and blobs
(shape and where its packed values lie) without decoding the values; ``read_into`` reads a blob's
values straight into a tensor's memory. Legacy files (V0/V1 ``layers``), unpacked values and
big-endian machines go through ``read_caffemodel`` (a full decode and upgrade) instead.

Rules followed (``Blob::ShapeEquals``, ``Blob::FromProto``): a blob stored with legacy
``num/channels/height/width`` is 4-D and matches a target shape padded with leading ones; a blob
with neither those nor ``shape`` is a 0-D scalar.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from caffe_compat.errors import CaffemodelError
from caffe_compat.proto.io import blob_shape, blob_to_array, check_blob_shape, checked_file, read_caffemodel

# Field numbers of caffe.proto (NetParameter, LayerParameter, BlobProto, BlobShape).
_NET_LAYERS_V1, _NET_LAYER = 2, 100
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_BLOB_LEGACY = (1, 2, 3, 4)
_BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE_DATA = 5, 7, 8
_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class _WireError(Exception):
    """The file does not have the layout the fast scanner reads; decode it fully instead."""


@dataclass
class StoredBlob:
    """One stored blob: its shape by Caffe's rule and where its values are.

    Attributes:
        shape: the blob's shape (``Blob::FromProto``).
        legacy: the 4-D ``(num, channels, height, width)`` when stored in that form, else None.
        offset: file offset of the packed values (None when ``array`` holds them).
        dtype: ``"<f4"`` (``data``) or ``"<f8"`` (``double_data``).
        array: the values, for files decoded in full.
    """

    shape: tuple[int, ...]
    legacy: tuple[int, int, int, int] | None = None
    offset: int | None = None
    count: int = 0
    dtype: str = "<f4"
    array: np.ndarray | None = None

    def matches(self, target: tuple[int, ...]) -> bool:
        """Caffe's ``Blob::ShapeEquals``."""
        if self.legacy is not None:
            if len(target) > 4:
                return False
            return (1,) * (4 - len(target)) + tuple(target) == self.legacy
        return tuple(target) == self.shape


@dataclass
class StoredLayer:
    name: str
    type: str
    blobs: list[StoredBlob] = field(default_factory=list)


def _count(shape: Iterable[int]) -> int:
    return math.prod(shape)


def _shape_text(shape: Iterable[int]) -> str:
    shape = tuple(shape)
    return f"{list(shape)} ({_count(shape)} values)"


class _Reader:
    """Protobuf wire-format primitives over a seekable binary file."""

    def __init__(self, handle: BinaryIO, size: int) -> None:
        self.handle = handle
        self.size = size

    def tell(self) -> int:
        return self.handle.tell()

    def seek(self, position: int) -> None:
        if position > self.size:
            raise _WireError("field runs past the end of the file")
        self.handle.seek(position)

    def read(self, count: int) -> bytes:
        if count > self.size - self.handle.tell():  # a corrupt length: never allocate it
            raise _WireError("field runs past the end of the file")
        data = self.handle.read(count)
        if len(data) != count:
            raise _WireError("truncated field")
        return data

    def varint(self) -> int:
        result = shift = 0
        while True:
            byte = self.handle.read(1)
            if not byte:
                raise _WireError("truncated varint")
            value = byte[0]
            result |= (value & 0x7F) << shift
            if value < 0x80:
                return result
            shift += 7
            if shift > 63:
                raise _WireError("varint too long")

    def key(self) -> tuple[int, int]:
        key = self.varint()
        return key >> 3, key & 7

    def skip(self, wire: int) -> None:
        if wire == _VARINT:
            self.varint()
        elif wire == _FIXED64:
            self.seek(self.tell() + 8)
        elif wire == _LEN:
            length = self.varint()
            self.seek(self.tell() + length)
        elif wire == _FIXED32:
            self.seek(self.tell() + 4)
        else:
            raise _WireError(f"unsupported wire type {wire}")


def _decode_varints(data: bytes) -> list[int]:
    values, result, shift = [], 0, 0
    for byte in data:
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            values.append(result)
            result = shift = 0
        else:
            shift += 7
    if shift:
        raise _WireError("truncated packed varints")
    return values


def _scan_blob(reader: _Reader, end: int) -> StoredBlob:
    legacy = {}
    dims: list[int] | None = None
    payload: tuple[int, int, str] | None = None
    while reader.tell() < end:
        number, wire = reader.key()
        if number in _BLOB_LEGACY and wire == _VARINT:
            value = reader.varint() & 0xFFFFFFFF  # int32 fields: negatives are 64-bit two's complement
            legacy[number] = value - (1 << 32) if value >= 1 << 31 else value
        elif number == _BLOB_SHAPE and wire == _LEN:
            length = reader.varint()
            dims = _scan_shape(reader.read(length))
        elif number in (_BLOB_DATA, _BLOB_DOUBLE_DATA):
            if wire != _LEN:
                raise _WireError("unpacked blob values")
            length = reader.varint()
            dtype = "<f4" if number == _BLOB_DATA else "<f8"
            # double_data wins when both are present, as Blob::FromProto reads it first.
            if payload is None or number == _BLOB_DOUBLE_DATA:
                payload = (reader.tell(), length, dtype)
            reader.seek(reader.tell() + length)
        else:
            reader.skip(wire)
    if reader.tell() != end:
        raise _WireError("blob overruns its length")
    if legacy:
        four = tuple(legacy.get(n, 0) for n in _BLOB_LEGACY)
        blob = StoredBlob(shape=four, legacy=four)  # type: ignore[arg-type]
    else:
        blob = StoredBlob(shape=tuple(dims or ()))
    if payload is not None:
        offset, length, dtype = payload
        width = 4 if dtype == "<f4" else 8
        if length % width:
            raise _WireError("packed values of odd length")
        blob.offset, blob.count, blob.dtype = offset, length // width, dtype
    return blob


def _scan_shape(data: bytes) -> list[int]:
    dims: list[int] = []
    position = 0
    while position < len(data):
        key, position = _varint_at(data, position)
        number, wire = key >> 3, key & 7
        if number == 1 and wire == _LEN:
            length, position = _varint_at(data, position)
            dims.extend(_decode_varints(data[position : position + length]))
            position += length
        elif number == 1 and wire == _VARINT:
            value, position = _varint_at(data, position)
            dims.append(value)
        else:
            raise _WireError("unexpected field in a blob shape")
    return [d - (1 << 64) if d >= 1 << 63 else d for d in dims]


def _varint_at(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data):
            raise _WireError("truncated varint")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _scan_layer(reader: _Reader, end: int) -> StoredLayer:
    layer = StoredLayer(name="", type="")
    while reader.tell() < end:
        number, wire = reader.key()
        if number in (_LAYER_NAME, _LAYER_TYPE) and wire == _LEN:
            try:
                text = reader.read(reader.varint()).decode("utf-8")
            except UnicodeDecodeError:  # the full decode names the field
                raise _WireError("a name that is not UTF-8") from None
            if number == _LAYER_NAME:
                layer.name = text
            else:
                layer.type = text
        elif number == _LAYER_BLOBS and wire == _LEN:
            length = reader.varint()
            layer.blobs.append(_scan_blob(reader, reader.tell() + length))
        else:
            reader.skip(wire)
    if reader.tell() != end:
        raise _WireError("layer overruns its length")
    return layer


class CaffemodelIndex:
    """The layers and blobs of a ``.caffemodel``; blob values are read on demand.

    Args:
        path: the caffemodel.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.layers: list[StoredLayer] = []
        self.streamed = False
        checked_file(self.path, "caffemodel")
        try:
            self._scan()
            self.streamed = True
        except _WireError:
            self._decode_fully()
        for layer in self.layers:
            for index, blob in enumerate(layer.blobs):
                where = f"{self.path}: layer '{layer.name}' blob {index}"
                expected = check_blob_shape(blob.shape, where)
                if blob.array is None and blob.count != expected:
                    shape = list(blob.shape)
                    raise CaffemodelError(
                        f"{where}: holds {blob.count} values but its shape {shape} needs {expected}"
                    )

    def _scan(self) -> None:
        if sys.byteorder != "little":
            raise _WireError("big-endian machine")
        size = self.path.stat().st_size
        with open(self.path, "rb") as handle:
            reader = _Reader(handle, size)
            layers = []
            while reader.tell() < size:
                number, wire = reader.key()
                if number == _NET_LAYERS_V1:
                    raise _WireError("legacy V1 layers")
                if number == _NET_LAYER and wire == _LEN:
                    length = reader.varint()
                    layers.append(_scan_layer(reader, reader.tell() + length))
                else:
                    reader.skip(wire)
        if not layers:
            raise _WireError("no layers")
        self.layers = layers

    def _decode_fully(self) -> None:
        net = read_caffemodel(self.path)
        for layer in net.layer:
            stored = StoredLayer(layer.name, layer.type)
            for index, blob in enumerate(layer.blobs):
                legacy = None
                if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
                    legacy = (blob.num, blob.channels, blob.height, blob.width)
                array = blob_to_array(blob, f"{self.path}: layer '{layer.name}' blob {index}")
                stored.blobs.append(StoredBlob(shape=blob_shape(blob), legacy=legacy, array=array))
            self.layers.append(stored)

    @property
    def nbytes(self) -> int:
        """Bytes of blob values (4 per float32, 8 per float64)."""
        return sum(
            (b.count * (4 if b.dtype == "<f4" else 8)) if b.array is None else b.array.nbytes
            for layer in self.layers
            for b in layer.blobs
        )

    def by_name(self) -> dict[str, StoredLayer]:
        """Layer name -> stored layer (the last of duplicate names wins, as Caffe copies each in turn)."""
        return {layer.name: layer for layer in self.layers}

    def read(self, layer: StoredLayer, index: int, handle: BinaryIO | None = None) -> np.ndarray:
        """The values of one blob as an array of its shape (a copy: safe to keep)."""
        blob = layer.blobs[index]
        where = f"{self.path}: layer '{layer.name}' blob {index}"
        if blob.array is not None:
            return blob.array
        expected = _count(blob.shape)
        if blob.count != expected:
            raise CaffemodelError(
                f"{where}: holds {blob.count} values but its shape {list(blob.shape)} needs {expected}"
            )
        if blob.offset is None:
            return np.zeros(blob.shape, dtype=np.float32)
        own = handle is None
        handle = handle or open(self.path, "rb")
        try:
            handle.seek(blob.offset)
            array = np.empty(blob.count, dtype=blob.dtype)
            if handle.readinto(memoryview(array).cast("B")) != array.nbytes:
                raise CaffemodelError(f"{where}: the file is truncated")
        finally:
            if own:
                handle.close()
        return array.reshape(blob.shape)

    def read_into(self, layer: StoredLayer, index: int, target: torch.Tensor, handle: BinaryIO) -> None:
        """Copy one blob's values into ``target`` (read straight into its memory when possible)."""
        blob = layer.blobs[index]
        direct = (
            blob.array is None
            and blob.offset is not None
            and blob.dtype == "<f4"
            and target.dtype == torch.float32
            and target.device.type == "cpu"
            and target.is_contiguous()
            and blob.count == target.numel() == _count(blob.shape)
        )
        if direct:
            handle.seek(blob.offset)
            buffer = target.detach().numpy().reshape(-1)
            if handle.readinto(memoryview(buffer).cast("B")) != buffer.nbytes:
                raise CaffemodelError(
                    f"{self.path}: layer '{layer.name}' blob {index}: the file is truncated"
                )
            return
        values = torch.from_numpy(np.array(self.read(layer, index, handle), dtype=np.float32))
        with torch.no_grad():
            target.copy_(values.reshape(target.shape))
