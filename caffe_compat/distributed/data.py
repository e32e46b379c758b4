"""Rank-aware data: N ranks with a prototxt ``batch_size`` of B read what one process with batch
N*B reads.

Each global batch of N*B samples, in the one-process order (shuffling and random crops/mirrors
included), is cut into N consecutive slices and rank r takes slice r. Two ways get there:

- ``ImageData`` and ``Data`` compute every sample from its position in the stream (and the
  layer's seed), so rank r's batch n is the B-sample batch ``n * N + r`` of the same stream: each
  rank decodes only its own images.
- ``HDF5Data``, ``WindowData`` and ``MultiLabelImageData`` (without ``label_cut``) read the whole
  global batch of N*B and keep rank r's rows: exact whatever their state, at N times the reading
  (HDF5 files are in memory anyway).

``MemoryData`` (fed by the caller, per rank), ``DummyData`` (generated) and ``Input`` are left
alone. Any other data layer is refused with its name. The read cursor each layer snapshots is
then the one-process cursor of the N*B stream, so snapshots move between a distributed run and a
one-process run with the doubled batch.

Seeds: a layer whose seed is unset draws it from torch's generator at its first batch; here the
seeds are drawn once on rank 0, in the order the one-process solver draws them, and broadcast,
so that all ranks shuffle alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from caffe_compat.errors import LayerError
from caffe_compat.net.net import Net

#: Data layers whose samples are functions of their stream position: rank r reads batch n*N + r.
POSITIONAL = ("ImageData", "Data")
#: Data layers sharded by reading the global batch and keeping the rank's rows.
SLICED = ("HDF5Data", "WindowData", "MultiLabelImageData")
#: Data layers left to each rank (fed by the caller or generated).
PER_RANK = ("MemoryData", "DummyData")


class InterleavedBatches:
    """A batch source whose batch ``n`` is batch ``n * world + rank`` of ``inner`` (picklable, so
    the layer's loader workers can decode it)."""

    def __init__(self, inner: object, rank: int, world: int) -> None:
        self.inner, self.rank, self.world = inner, rank, world

    def batch(self, number: int) -> tuple[torch.Tensor, ...]:
        return self.inner.batch(number * self.world + self.rank)

    def first_shape(self) -> tuple[int, ...]:
        return self.inner.first_shape()


class _InterleavedMaker:
    """Replaces a loading layer's ``_make_source``: the layer's own source, interleaved."""

    def __init__(self, make: Callable[[int], object], rank: int, world: int) -> None:
        self.make, self.rank, self.world = make, rank, world

    def __call__(self, seed: int) -> InterleavedBatches:
        return InterleavedBatches(self.make(seed), self.rank, self.world)


class RankRows:
    """Replaces a data layer's ``next_batch``: the global batch, then rows ``start:start+size``
    of every top."""

    def __init__(self, read: Callable[[], Sequence[torch.Tensor]], start: int, size: int) -> None:
        self.read, self.start, self.size = read, start, size

    def __call__(self) -> tuple[torch.Tensor, ...]:
        batch = self.read()
        batch = (batch,) if isinstance(batch, torch.Tensor) else batch
        return tuple(top[self.start : self.start + self.size] for top in batch)


def _where(name: str, layer: object) -> str:
    return f"layer '{name}' ({getattr(layer, 'caffe_type', type(layer).__name__)})"


def shard_data_layers(net: Net, rank: int, world: int) -> list[str]:
    """Make every data layer of ``net`` read rank ``rank``'s slice of each global batch.

    Call before the first batch is read. Returns the names of the layers sharded.
    """
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in [0, {world})")
    sharded = []
    for name in net.data_layer_names:
        layer = net.layers[name]
        kind = getattr(layer, "caffe_type", type(layer).__name__)
        if world == 1 or kind in PER_RANK or getattr(layer, "is_input", False):
            continue
        if getattr(layer, "_data_shard", None) is not None:
            raise LayerError(f"{_where(name, layer)}: already sharded")
        if kind in POSITIONAL:
            layer._make_source = _InterleavedMaker(layer._make_source, rank, world)
        elif kind in SLICED:
            if getattr(layer, "label_cut", 0):
                raise LayerError(
                    f"{_where(name, layer)}: label_cut_start cuts labels from each batch's ends, so a "
                    "batch cannot be split over ranks; train it in one process"
                )
            per_rank = int(layer.batch_size)
            layer.batch_size = per_rank * world
            layer.next_batch = RankRows(layer.next_batch, rank * per_rank, per_rank)
        else:
            raise LayerError(
                f"{_where(name, layer)}: no rule to split this data layer over {world} ranks (sharded: "
                f"{', '.join(POSITIONAL + SLICED)}; per rank: {', '.join(PER_RANK)}, Input)"
            )
        layer._data_shard = (rank, world)
        sharded.append(name)
    return sharded


def _needs_seed(layer: object) -> bool:
    if hasattr(layer, "_needs_seed"):
        return bool(layer._needs_seed())
    return bool(getattr(layer, "shuffle", False))


def unseeded_data_layers(nets: Sequence[Net]) -> list[tuple[int, str]]:
    """(net index, layer name) of the data layers that would draw a seed at their first batch, in
    the order of ``nets``."""
    found = []
    for index, net in enumerate(nets):
        for name in net.data_layer_names:
            layer = net.layers[name]
            if hasattr(layer, "seed") and layer.seed is None and _needs_seed(layer):
                found.append((index, name))
    return found


def draw_seeds(count: int) -> list[int]:
    """``count`` seeds drawn from torch's generator as a data layer draws its own."""
    return [int(torch.randint(0, 2**62, (1,)).item()) for _ in range(count)]


def set_seeds(nets: Sequence[Net], layers: Sequence[tuple[int, str]], seeds: Sequence[int]) -> None:
    for (index, name), seed in zip(layers, seeds, strict=True):
        nets[index].layers[name].seed = seed
