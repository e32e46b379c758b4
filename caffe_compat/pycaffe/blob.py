"""pycaffe's ``Blob`` and ``BlobVec``: numpy views of the tensors a net computes with.

Rules followed (``blob.cpp``, ``syncedmem.cpp`` and ``_caffe.cpp`` of BVLC Caffe):

- ``blob.data`` and ``blob.diff`` are float32 numpy arrays *sharing memory* with the net: writing
  ``blob.data[...] = x`` changes what the next forward pass reads, and the arrays a caller holds
  see what the net writes, until the blob is reallocated;
- ``reshape(*shape)`` keeps the memory while the new count fits the capacity (the values stay in
  flat order, as Caffe's ``Reshape`` keeps its buffer) and allocates zeroed memory when it grows;
- ``shape`` is the shape (a tuple here; an ``IntVec`` in Caffe), ``count`` the number of values
  (1 for a 0-d blob), ``num``/``channels``/``height``/``width`` Caffe's ``LegacyShape`` (1 past
  the last axis);
- a parameter blob (``net.params[name][i]``) is a view of the layer module's own tensor: its data
  *is* the parameter, its diff the parameter's ``.grad`` (allocated once, then zeroed in place, so
  held arrays stay valid); statistics buffers (BatchNorm's) get a diff of their own that stays 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from caffe_compat.errors import CaffeCompatError


def _shape_of(dims: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(d) for d in dims)
    if any(d < 0 for d in shape):
        raise CaffeCompatError(f"blob dimensions must not be negative, got {list(shape)}")
    return shape


def _legacy(shape: tuple[int, ...], index: int) -> int:
    """Caffe's ``LegacyShape``: blobs of more than 4 axes have none; missing axes count as 1."""
    if len(shape) > 4:
        raise CaffeCompatError(
            f"num/channels/height/width are only defined for blobs of at most 4 axes (shape {list(shape)})"
        )
    return shape[index] if index < len(shape) else 1


class Blob:
    """A blob of the net: float32 data and diff of one shape (``caffe.Blob``).

    Args:
        shape: the initial shape (values zero).
    """

    def __init__(self, shape: Sequence[int] = ()) -> None:
        self._shape = _shape_of(shape)
        count = math.prod(self._shape)
        self._data = torch.zeros(count, dtype=torch.float32)
        self._diff = torch.zeros(count, dtype=torch.float32)

    # -- shape ---------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    @property
    def num(self) -> int:
        return _legacy(self.shape, 0)

    @property
    def channels(self) -> int:
        return _legacy(self.shape, 1)

    @property
    def height(self) -> int:
        return _legacy(self.shape, 2)

    @property
    def width(self) -> int:
        return _legacy(self.shape, 3)

    def reshape(self, *shape: int) -> None:
        """Caffe's ``Blob::Reshape``: same memory while the count fits, else zeroed memory."""
        new = _shape_of(shape)
        count = math.prod(new)
        if count > self._data.numel():
            self._data = torch.zeros(count, dtype=torch.float32)
            self._diff = torch.zeros(count, dtype=torch.float32)
        self._shape = new

    # -- values --------------------------------------------------------------------------------
    def data_tensor(self) -> torch.Tensor:
        """The data as a tensor sharing the blob's memory."""
        return self._data[: self.count].view(self.shape)

    def diff_tensor(self) -> torch.Tensor:
        """The diff as a tensor sharing the blob's memory."""
        return self._diff[: self.count].view(self.shape)

    @property
    def data(self) -> np.ndarray:
        return self.data_tensor().numpy()

    @property
    def diff(self) -> np.ndarray:
        return self.diff_tensor().numpy()

    def set_data(self, value: torch.Tensor) -> None:
        """Copy a computed top into the blob, reshaping it to the value's shape first."""
        if tuple(value.shape) != self.shape:
            self.reshape(*value.shape)
        with torch.no_grad():
            self.data_tensor().copy_(value.detach())

    def __repr__(self) -> str:
        return f"Blob(shape={list(self.shape)})"


class ParamBlob(Blob):
    """A parameter blob: a view of one declared blob (``weight``, ``bias``, ...) of a layer module.

    The module attribute is looked up at each access, so a blob shared later (``share_with``)
    or replaced by ``Module.to`` is followed.
    """

    def __init__(self, module: nn.Module, name: str) -> None:  # noqa: D107 - no Blob storage
        self._module = module
        self._name = name
        self._buffer_diff: torch.Tensor | None = None

    def _tensor(self) -> torch.Tensor:
        tensor = getattr(self._module, self._name)
        if tensor.device.type != "cpu":
            raise CaffeCompatError(
                f"parameter blob '{self._name}' lives on {tensor.device}; pycaffe's numpy views need the CPU"
            )
        return tensor

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._tensor().shape)

    def data_tensor(self) -> torch.Tensor:
        return self._tensor().detach()

    def diff_tensor(self) -> torch.Tensor:
        tensor = self._tensor()
        if isinstance(tensor, nn.Parameter):
            if tensor.grad is None or tensor.grad.shape != tensor.shape:
                tensor.grad = torch.zeros_like(tensor, dtype=torch.float32)
            return tensor.grad
        if self._buffer_diff is None or self._buffer_diff.shape != tensor.shape:
            self._buffer_diff = torch.zeros(tensor.shape, dtype=torch.float32)
        return self._buffer_diff

    def reshape(self, *shape: int) -> None:
        """Replace the parameter by a zeroed one of the new shape (Caffe reshapes its memory)."""
        new = _shape_of(shape)
        if new == self.shape:
            return
        old = self._tensor()
        fresh = torch.zeros(new, dtype=torch.float32)
        value = (
            nn.Parameter(fresh, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else fresh
        )
        set_blob = getattr(self._module, "set_blob", None)
        if set_blob is None:
            raise CaffeCompatError(f"cannot reshape parameter blob '{self._name}'")
        set_blob(self._name, value)

    def __repr__(self) -> str:
        return f"ParamBlob({self._name}, shape={list(self.shape)})"


class BlobVec(Sequence):
    """A layer's parameter blobs (``caffe.BlobVec``): indexable, iterable, ``add_blob(*shape)``.

    Args:
        blobs: the blobs in Caffe order.
        add: what ``add_blob`` calls with the new shape to create and return a blob; None makes
            the vector fixed (only Python layers grow theirs).
    """

    def __init__(self, blobs: Sequence[Blob] = (), add=None) -> None:
        self._blobs = list(blobs)
        self._add = add

    def __getitem__(self, index):  # type: ignore[override]
        return self._blobs[index]

    def __len__(self) -> int:
        return len(self._blobs)

    def __iter__(self) -> Iterator[Blob]:
        return iter(self._blobs)

    def add_blob(self, *shape: int) -> None:
        """Append a zeroed blob of the given shape (``BlobVec.add_blob``)."""
        if self._add is None:
            raise CaffeCompatError("only a Python layer can add blobs to its blob vector")
        self._blobs.append(self._add(_shape_of(shape)))

    def __repr__(self) -> str:
        return f"BlobVec({self._blobs!r})"
