"""The in-memory source of Caffe's ``MemoryData`` layer (``memory_data_layer.cpp`` and pycaffe's
``set_input_arrays``).

Rules followed:
- ``reset(data, labels)`` (Caffe's ``Reset``, pycaffe's ``set_input_arrays``) hands over arrays
  that are used *as they are* (no transform): ``data`` is ``(N, channels, height, width)``
  float32, ``labels`` has ``N`` values, and ``N`` is a multiple of ``batch_size``;
- ``add_mat_vector(images, labels)`` (``AddMatVector``) transforms OpenCV images ``(H, W, C)``
  with the layer's DataTransformer; the layer's batch size becomes the number of images, so one
  forward pass returns them all, and new images may be added only once they are consumed;
  with the fork's ``transpose`` each image is transposed and its channel order reversed, as the
  fork's transformer loop does;
- ``add_datum_vector(datums)`` (``AddDatumVector``) transforms Datums likewise;
- each forward returns ``batch_size`` items from the current position and advances it modulo
  ``N`` (``pos_ = (pos_ + batch_size_) % n_``).

Deliberate deviations: the label top keeps its set-up shape ``(batch_size,)`` (Caffe's Forward
reshapes it to ``(batch_size, 1, 1, 1)``; the values are the same); ``AddDatumVector`` keeps
the layer's channel count (Caffe's sets ``channels_`` to the number of Datums, a known bug).
"""

from __future__ import annotations

import numpy as np
import torch

from caffe_compat.data.images import datum_to_array
from caffe_compat.data.transformer import DataTransformer, sample_generator
from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2


class MemoryStore:
    """The arrays a MemoryData layer serves and its read position.

    Args:
        batch_size, channels, height, width: ``memory_data_param``.
        transformer: the layer's DataTransformer (used by ``add_*_vector`` only).
        transpose: the fork's ``memory_data_param.transpose``.
        where: error prefix naming the layer.
        seed: seeds the random transforms of added images.
    """

    def __init__(
        self,
        batch_size: int,
        channels: int,
        height: int,
        width: int,
        transformer: DataTransformer,
        transpose: bool = False,
        where: str = "MemoryData",
        seed: int = 0,
    ) -> None:
        self.batch_size = batch_size
        self.channels, self.height, self.width = channels, height, width
        self.transformer = transformer
        self.transpose = transpose
        self.where = where
        self.seed = seed
        self.data: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.pos = 0
        self.has_new_data = False
        self._added = 0  # images transformed so far (their stream positions seed the draws)

    def _error(self, message: str) -> CaffeCompatError:
        return CaffeCompatError(f"{self.where}: {message}")

    # -- handing data over ---------------------------------------------------------------------
    def reset(self, data: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        """Serve ``data`` (N, C, H, W) and ``labels`` (N values) untransformed, from item 0."""
        data_t = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data)
        labels_t = torch.as_tensor(np.asarray(labels) if not isinstance(labels, torch.Tensor) else labels)
        expected = (self.channels, self.height, self.width)
        if data_t.dim() != 4 or tuple(data_t.shape[1:]) != expected:
            raise self._error(
                f"data must have shape (N, {', '.join(map(str, expected))}) as memory_data_param says, "
                f"got {list(data_t.shape)}"
            )
        count = data_t.shape[0]
        if labels_t.numel() != count or (labels_t.dim() > 1 and labels_t.shape[0] != count):
            raise self._error(f"{count} data items but {labels_t.numel()} labels: give one label per item")
        if count == 0 or count % self.batch_size:
            raise self._error(
                f"the number of items ({count}) must be a positive multiple of batch_size {self.batch_size}"
            )
        self._install(data_t.to(torch.float32).contiguous(), labels_t.reshape(count).to(torch.float32))

    def _install(self, data: torch.Tensor, labels: torch.Tensor) -> None:
        self.data, self.labels = data, labels
        self.pos = 0

    def _transform_all(self, arrays: list[np.ndarray], what: str) -> torch.Tensor:
        out = []
        for index, array in enumerate(arrays):
            rng = sample_generator(self.seed, self._added + index) if self.transformer.needs_random else None
            try:
                out.append(self.transformer(array, rng, f"{what} {index}"))
            except CaffeCompatError as exc:
                raise self._error(str(exc)) from None
        self._added += len(arrays)
        if any(item.shape != out[0].shape for item in out):
            raise self._error(
                f"the {what}s transform to different shapes: {sorted({item.shape for item in out})}"
            )
        return torch.from_numpy(np.stack(out))

    def add_mat_vector(self, images: list[np.ndarray], labels: list[int]) -> None:
        """Transform OpenCV images ``(H, W, C)`` or ``(H, W)`` and serve them as one batch."""
        if self.has_new_data:
            raise self._error("cannot add images until the current ones have been consumed by a forward pass")
        if not images:
            raise self._error("there is no image to add")
        arrays = []
        for index, image in enumerate(images):
            image = np.asarray(image)
            chw = image[np.newaxis] if image.ndim == 2 else image.transpose(2, 0, 1)
            if self.transpose:
                if self.transformer.crop is not None or self.transformer.mean_path is not None:
                    raise self._error("transpose with a crop or mean_file is not supported")
                chw = chw.transpose(0, 2, 1)[::-1]
            if chw.shape[0] != self.channels:
                raise self._error(f"image {index} has {chw.shape[0]} channels, the layer has {self.channels}")
            arrays.append(np.ascontiguousarray(chw))
        data = self._transform_all(arrays, "image")
        values = torch.zeros(len(images), dtype=torch.float32)
        given = torch.as_tensor(np.asarray(labels[: len(images)], dtype=np.float32))
        values[: given.numel()] = given
        self.batch_size = len(images)
        self._install(data, values)
        self.has_new_data = True

    def add_datum_vector(self, datums: list[caffe_pb2.Datum]) -> None:
        """Transform Datums and serve them as one batch (labels from the Datums)."""
        if self.has_new_data:
            raise self._error("cannot add data until the current data has been consumed by a forward pass")
        if not datums:
            raise self._error("there is no datum to add")
        arrays = [
            datum_to_array(d, self.transformer.force_color, self.transformer.force_gray, f"datum {i}")
            for i, d in enumerate(datums)
        ]
        data = self._transform_all(arrays, "datum")
        self.batch_size = len(datums)
        self._install(data, torch.tensor([d.label for d in datums], dtype=torch.float32))
        self.has_new_data = True

    # -- serving -------------------------------------------------------------------------------
    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.data is None or self.labels is None:
            raise self._error(
                "has no data: call reset(data, labels) (pycaffe's set_input_arrays) or add_mat_vector() "
                "on the layer (net.layers[name]) first, or feed its tops to the net"
            )
        end = self.pos + self.batch_size
        data, labels = self.data[self.pos : end], self.labels[self.pos : end]
        self.pos = end % self.data.shape[0]
        if self.pos == 0:
            self.has_new_data = False
        return data, labels
