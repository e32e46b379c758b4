"""``HDF5Output``: writes its two bottoms to an HDF5 file (BVLC's ``hdf5_output_layer.cpp``, as
in the fork).

Caffe's rules followed: the layer takes exactly two bottoms and has no top; a forward writes
the first bottom as dataset ``data`` and the second as ``label`` of
``hdf5_output_param.file_name``, float32, each reshaped to Caffe's legacy 4-D shape
``(num, channels, height, width)`` (missing axes read as 1, so a ``(N,)`` label is stored as
``(N, 1, 1, 1)``; more than 4 axes is an error); both bottoms must have the same ``num``;
backward does nothing. Caffe creates the file at set-up and adds the two datasets at the first
forward; a second forward fails there, because the datasets exist already
(``H5LTmake_dataset_float`` cannot replace them; BVLC/caffe#1726). This layer raises the same
failure as a clear error on its second forward: build a new net to write again.

Deliberate deviations: the file is written at the first forward, complete, to a temporary file
in the target folder that is then renamed over ``file_name`` (atomic: a reader never sees a
half-written file, and building a net writes nothing); Caffe creates (truncates) it at set-up.
Forwards that only trace or compile the graph (``torch.jit.trace``, ``torch.compile``,
``torch.export``, meta tensors) write nothing. A relative ``file_name`` resolves against the
working directory (Caffe's rule) unless only the prototxt's folder holds its parent folder.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.layers.base import BuildContext, CaffeLayer, Shape
from caffe_compat.layers.registry import register
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import atomic_output

DATA_DATASET = "data"
LABEL_DATASET = "label"


def legacy_shape(shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Caffe's ``(num(), channels(), height(), width())``: axes past the blob's count read as 1."""
    if len(shape) > 4:
        raise ValueError(
            f"a blob of {len(shape)} axes {list(shape)} has no legacy 4-D shape (at most 4 axes)"
        )
    padded = tuple(int(d) for d in shape) + (1,) * (4 - len(shape))
    return padded  # type: ignore[return-value]


@register("HDF5Output")
class HDF5Output(CaffeLayer):
    """Writes bottoms ``data`` and ``label`` to ``hdf5_output_param.file_name`` at the first forward
    (see the module docstring for Caffe's rules and the deviations)."""

    family = "data"

    example = """
layer { name: "input" type: "Input" top: "features" top: "label"
        input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } shape { dim: 2 } } }
layer { name: "dump" type: "HDF5Output" bottom: "features" bottom: "label"
        hdf5_output_param { file_name: "features.h5" } }
"""

    def __init__(self, file_name: Path) -> None:
        super().__init__()
        self.file_name = Path(file_name)
        self.written = False

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> HDF5Output:
        ctx.check_bottoms(2)
        ctx.check_tops(0)
        name = layer.hdf5_output_param.file_name
        if not name:
            raise ctx.error("hdf5_output_param.file_name (the HDF5 file to write) is missing")
        data_shape, label_shape = ctx.bottom_shapes
        try:
            data, label = legacy_shape(data_shape), legacy_shape(label_shape)
        except ValueError as exc:
            raise ctx.error(str(exc)) from None
        if data[0] != label[0]:
            raise ctx.error(
                f"the bottoms differ in num: '{layer.bottom[0]}' {list(data_shape)}, "
                f"'{layer.bottom[1]}' {list(label_shape)} (Caffe writes them row for row)"
            )
        path = Path(name)
        if not path.is_absolute():
            path = ctx.resolve_path(os.fspath(path.parent)) / path.name
        return cls(path.absolute())

    def top_shapes(self, bottom_shapes: Sequence[Shape] = ()) -> list[Shape]:
        return []

    def _error(self, message: str) -> LayerError:
        return LayerError(f"layer '{self.caffe_name}' (HDF5Output): {message}")

    @staticmethod
    def _tracing(*tensors: torch.Tensor) -> bool:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return True
        return any(not isinstance(t, torch.Tensor) or t.device.type == "meta" for t in tensors)

    def forward(self, data: torch.Tensor, label: torch.Tensor) -> None:
        """Write both bottoms (once per layer, as Caffe); returns nothing (no top)."""
        if self._tracing(data, label):
            return None
        if self.written:
            raise self._error(
                f"a second forward: '{self.file_name}' already holds the datasets 'data' and 'label' from "
                "the first one, and Caffe's HDF5Output fails when it makes them again (BVLC/caffe#1726); "
                "build a new net to write the file again"
            )
        try:
            data_shape, label_shape = legacy_shape(data.shape), legacy_shape(label.shape)
        except ValueError as exc:
            raise self._error(str(exc)) from None
        if data_shape[0] != label_shape[0]:
            raise self._error(
                f"data has num {data_shape[0]} but label has {label_shape[0]}: Caffe needs equal nums"
            )
        arrays = {
            DATA_DATASET: data.detach().to("cpu", torch.float32).numpy().reshape(data_shape),
            LABEL_DATASET: label.detach().to("cpu", torch.float32).numpy().reshape(label_shape),
        }
        self._write(arrays)
        self.written = True
        return None

    def _write(self, arrays: dict[str, np.ndarray]) -> None:
        import h5py

        try:
            with atomic_output(self.file_name) as temp, h5py.File(temp, "w") as out:
                for name, array in arrays.items():
                    out.create_dataset(name, data=array)
        except CaffeCompatError as exc:
            raise self._error(str(exc)) from None
        except OSError as exc:
            raise self._error(f"cannot write '{self.file_name}': {exc}") from None

    def extra_repr(self) -> str:
        parts = [super().extra_repr(), f"file_name={os.fspath(self.file_name)!r}"]
        return ", ".join(p for p in parts if p)
