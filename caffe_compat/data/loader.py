"""Background batch loading: Caffe's prefetch thread (``base_data_layer.cpp``) as torch
``DataLoader`` worker processes.

A *batch source* is a picklable object with ``batch(number) -> tuple[Tensor, ...]`` that computes
batch ``number`` (0, 1, 2, ...) from the number alone: its order and random draws are a function
of the layer's seed and the stream position. Workers can therefore decode batches in any order
and the result does not depend on how many there are. ``BatchLoader`` hands the batches out in
order, ``prefetch`` batches ahead per worker (Caffe's ``data_param.prefetch``, default 4), with
persistent workers; ``num_workers=0`` reads each batch in the calling thread when asked.

The default number of workers is 1 (Caffe's single prefetch thread), or the value of the
``CAFFE_COMPAT_DATA_WORKERS`` environment variable; ``configure_loading(net, ...)`` sets it per net.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from caffe_compat.errors import CaffeCompatError, LayerError

WORKERS_ENV = "CAFFE_COMPAT_DATA_WORKERS"


class BatchSource(Protocol):
    def batch(self, number: int) -> tuple[torch.Tensor, ...]: ...


def default_workers() -> int:
    """Worker processes per data layer: ``$CAFFE_COMPAT_DATA_WORKERS`` or 1."""
    value = os.environ.get(WORKERS_ENV, "").strip()
    if not value:
        return 1
    try:
        workers = int(value)
    except ValueError:
        raise CaffeCompatError(f"{WORKERS_ENV}={value!r} is not a number of workers") from None
    if workers < 0:
        raise CaffeCompatError(f"{WORKERS_ENV} must be 0 or more, got {workers}")
    return workers


@dataclass
class _Failure:
    """A user-facing error raised in a worker, carried to the main process as a value (a raised
    exception would come back wrapped in the worker's traceback)."""

    message: str


class _Batches(Dataset):
    def __init__(self, source: BatchSource) -> None:
        self.source = source

    def __getitem__(self, number: int) -> tuple[torch.Tensor, ...] | _Failure:
        try:
            return self.source.batch(number)
        except CaffeCompatError as exc:
            return _Failure(str(exc))


class _CountFrom(Sampler[int]):
    """Batch numbers ``start, start + 1, ...`` without end."""

    def __init__(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


def worker_failure(where: str, exc: BaseException) -> str:
    """One line for a batch worker that died (killed, out of memory) or raised an unexpected error
    (torch re-raises it with the worker's traceback as a paragraph)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, RuntimeError) and lines and lines[0].startswith("DataLoader worker"):
        return f"{where}: a data worker process died ({lines[0]}); its batch was not read"
    name = type(exc).__name__
    last = lines[-1] if lines else name
    if not last.startswith(f"{name}:"):  # torch ends the message with the worker's traceback
        last = f"{name}: {last}"
    return f"{where}: a data worker failed while reading batch data: {last}"


class BatchLoader:
    """Hands out a source's batches ``start, start + 1, ...`` in order.

    Args:
        source: the batch source.
        num_workers: worker processes decoding ahead (0: read in the calling thread).
        prefetch: batches each worker keeps ready (DataLoader's ``prefetch_factor``).
        start: the first batch number.
    """

    def __init__(self, source: BatchSource, num_workers: int = 1, prefetch: int = 4, start: int = 0) -> None:
        if num_workers < 0:
            raise CaffeCompatError(f"num_workers must be 0 or more, got {num_workers}")
        self.source = source
        self.num_workers = int(num_workers)
        self.prefetch = max(1, int(prefetch))
        self.position = int(start)
        self._iterator: Iterator | None = None

    def _start(self) -> Iterator:
        loader = DataLoader(
            _Batches(self.source),
            batch_size=None,
            sampler=_CountFrom(self.position),
            num_workers=self.num_workers,
            prefetch_factor=self.prefetch,
            persistent_workers=True,
        )
        return iter(loader)

    def next(self) -> tuple[torch.Tensor, ...]:
        """The next batch (CPU tensors, one per top)."""
        if self.num_workers == 0:
            result = _Batches(self.source)[self.position]
        else:
            if self._iterator is None:
                self._iterator = self._start()
            try:
                result = next(self._iterator)
            except Exception as exc:  # noqa: BLE001  (a worker died, or failed outside our errors)
                self.close()
                raise LayerError(worker_failure(getattr(self.source, "where", "data layer"), exc)) from None
        if isinstance(result, _Failure):
            self.close()
            raise LayerError(result.message)
        self.position += 1
        return result

    def close(self) -> None:
        """Stop the workers (the next ``next()`` starts new ones at ``position``)."""
        iterator, self._iterator = self._iterator, None
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass


def configure_loading(
    net: torch.nn.Module, num_workers: int | None = None, prefetch: int | None = None
) -> None:
    """Set the worker count and prefetch depth of every image data layer of ``net`` (a ``Net``);
    running loaders restart with the new setting at their current position."""
    layers = getattr(net, "layers", {})
    for layer in layers.values():
        setter = getattr(layer, "configure_loading", None)
        if setter is not None:
            setter(num_workers=num_workers, prefetch=prefetch)
