"""``DistributedSolver``: Caffe's solver on torch.distributed, with Caffe's multi-GPU semantics.

What one rank does (parallel.cpp's ``NCCL``/``Worker`` of BVLC Caffe, with the differences noted):

- the prototxt's ``batch_size`` is per rank; the data layers are sharded (``distributed.data``) so
  that N ranks read, batch for batch, what one process with N times the batch reads;
- the train net runs under ``DistributedDataParallel``: after the ``iter_size`` passes (the first
  ones under ``no_sync``) the diffs are summed over the ranks and scaled by ``1 / N``, as Caffe's
  ``on_gradients_ready`` allreduces and scales by ``1 / solver_count``; with Caffe's per-batch loss
  normalization, N ranks with batch B then step exactly as one process with batch N*B;
- the update itself is the one-process solver's, on every rank, on identical diffs;
- logged losses and outputs are averaged over the ranks (Caffe logs rank 0's only); the test nets
  run on every rank, each on its slice of the test data, and their outputs are averaged, which is
  the one-process mean when every rank sees the same number of samples (Caffe tests on rank 0);
- only rank 0 writes the log and the snapshots (the caller gives the other ranks a silent
  writer); classifiers sharded by class are gathered first, so a snapshot equals a one-process one;
- a signal seen by any rank (SIGINT, SIGHUP) acts on all ranks at the same iteration;
- random streams: data-layer seeds are drawn on rank 0 and shared; afterwards rank r > 0 re-seeds
  torch with ``random_seed + r`` (Caffe's per-solver seed) for its own random layers (Dropout);
- BatchNorm and other per-rank state: each rank normalizes with its own batch statistics and
  accumulates its own running statistics (as Caffe's multi-GPU solvers do); before each test the
  buffers of rank 0 are copied to every rank, and snapshots hold rank 0's, as in Caffe, whose test
  net and snapshot are rank 0's.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from caffe_compat.distributed import data as sharding
from caffe_compat.distributed.runtime import (
    Replicas,
    broadcast_object,
    broadcast_tensors,
    gather_objects,
    max_over_ranks,
    mean_arrays,
)
from caffe_compat.distributed.sharded_layers import ClassShardedLayer, full_blobs, shard_classifiers
from caffe_compat.errors import SolverError
from caffe_compat.log.glog import GlogWriter
from caffe_compat.net.net import Net
from caffe_compat.solver import snapshot as snap
from caffe_compat.solver.solver import Solver, SolverAction

_f32 = np.float32
_ACTIONS = (SolverAction.NONE, SolverAction.SNAPSHOT, SolverAction.STOP)


def layers_reaching_loss(net: Net) -> set[str]:
    """The layers whose tops flow into a loss top (their parameters get gradients)."""
    needed = set(net.loss_weights)
    reaching = set()
    for layer, key in reversed(list(zip(net.net_param.layer, net.layers, strict=True))):
        if needed & set(layer.top):
            reaching.add(key)
            needed.update(layer.bottom)
    return reaching


class DistributedSolver(Solver):
    """A ``Solver`` whose train net runs data-parallel over the ranks of a process group.

    Args:
        solver_path, weights, log, device, level, stages, net_transform: as ``Solver``; every rank
            builds the same nets (``device`` is this rank's). Ranks other than 0 log nowhere
            unless given a writer.
        replicas: the process group (default: ``Replicas.current()``, the initialized default).
        model_parallel: names of classifier layers to shard by class over the ranks (PartialFC:
            see ``caffe_compat.distributed.sharded_layers``).
        sample_rate: the fraction of each rank's classes a sharded ``MarginHead`` samples per
            pass in TRAIN (1: all, exact).
    """

    def __init__(
        self,
        solver_path,
        weights=None,
        *,
        replicas: Replicas | None = None,
        model_parallel: Sequence[str] = (),
        sample_rate: float = 1.0,
        log: GlogWriter | None = None,
        **kwargs,
    ) -> None:
        self.replicas = replicas if replicas is not None else Replicas.current()
        self.model_parallel = [name for name in model_parallel if name]
        self.sample_rate = float(sample_rate)
        self.ddp: DistributedDataParallel | None = None
        self.sharded: list[ClassShardedLayer] = []
        self._pass = 0
        self._rank_rng: list[dict] | None = None
        if log is None and not self.replicas.is_main:
            log = GlogWriter(stream=None)
        super().__init__(solver_path, weights, log=log, **kwargs)

    # -- set-up --------------------------------------------------------------------------------
    @property
    def _comm_device(self) -> torch.device:
        """Where host values travel: the GPU with NCCL, the CPU with gloo."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def _move_to_device(self) -> None:
        """Shard the data and the classifiers first, so that only this rank's class blocks ever
        reach its device."""
        r = self.replicas
        for net in [self.net, *self.test_nets]:
            sharding.shard_data_layers(net, r.rank, r.world_size)
        self._share_data_seeds()
        if self.model_parallel:
            self.sharded = shard_classifiers(
                self.net, self.test_nets, self.model_parallel, r, sample_rate=self.sample_rate
            )
        elif self.sample_rate != 1.0:
            raise SolverError("sample_rate applies to class-sharded classifiers: name them in model_parallel")
        super()._move_to_device()

    def _nets_ready(self) -> None:
        r = self.replicas
        self.ddp = self._wrap_train_net()
        self.log.info(
            f"Distributed training: rank {r.rank} of {r.world_size}, batch_size per rank, "
            f"effective batch = batch_size x {r.world_size} x iter_size {self.param.iter_size}",
            "parallel.cpp:0",
        )

    def _share_data_seeds(self) -> None:
        """Seed the data layers from rank 0 in the one-process order, then give each rank its own
        random stream (``random_seed + rank``)."""
        p, r = self.param, self.replicas
        testing_first = bool(self.test_nets) and p.test_interval > 0 and p.test_initialization
        order = [*self.test_nets, self.net] if testing_first else [self.net, *self.test_nets]
        layers = sharding.unseeded_data_layers(order)
        base = p.random_seed if p.random_seed >= 0 else None
        drawn = sharding.draw_seeds(len(layers)) if r.is_main else None
        if base is None and r.is_main:
            base = int(torch.randint(0, 2**31 - 1, (1,)).item())
        drawn, base = broadcast_object((drawn, base), r)
        sharding.set_seeds(order, layers, drawn)
        self._seed_base = int(base)
        if r.rank > 0:
            torch.manual_seed(self._seed_base + r.rank)

    def _wrap_train_net(self) -> DistributedDataParallel | None:
        """DDP over the parameters whose diffs the solver reads and that every rank holds whole
        (class blocks, blobs with ``lr_mult: 0`` and layers that do not reach a loss are left out,
        so no rank waits for a gradient that never comes)."""
        if self.replicas.world_size == 1:
            return None
        from caffe_compat.solver.param_groups import learnable_params

        reaching = layers_reaching_loss(self.net)
        synced = {id(p.tensor) for p in learnable_params(self.net) if p.gets_diff and p.layer in reaching}
        synced -= {id(t) for layer in self.sharded for t in layer.split_tensors()}
        ignored = [name for name, tensor in self.net.named_parameters() if id(tensor) not in synced]
        if len(ignored) == len(list(self.net.parameters())):
            return None
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self.net, ignored)
        cuda = self.device.type == "cuda"
        # buffers stay per rank (BatchNorm statistics, as in Caffe); torch >= 2.13 spells it anew
        names = inspect.signature(DistributedDataParallel.__init__).parameters
        buffers = (
            {"forward_sync_buffers": False}
            if "forward_sync_buffers" in names
            else {"broadcast_buffers": False}
        )
        return DistributedDataParallel(
            self.net,
            device_ids=[self.device.index] if cuda else None,
            output_device=self.device.index if cuda else None,
            process_group=self.replicas.group,
            find_unused_parameters=False,
            **buffers,
        )

    # -- the passes ----------------------------------------------------------------------------
    def _clear_diffs(self) -> None:
        super()._clear_diffs()
        self._pass = 0

    def _forward_backward(self, debug: bool) -> np.float32:
        self._pass += 1
        accumulate = self.ddp is not None and self._pass < self.param.iter_size
        with self.ddp.no_sync() if accumulate else nullcontext():
            return super()._forward_backward(debug)

    def _train_forward(self) -> dict[str, torch.Tensor]:
        return self.ddp() if self.ddp is not None else self.net()

    def _replica_mean(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return mean_arrays(values, self.replicas, self._comm_device)

    def _requested_action(self) -> SolverAction:
        local = super()._requested_action()
        code = max_over_ranks(_ACTIONS.index(local), self.replicas, self._comm_device)
        return _ACTIONS[code]

    def _sum_of_squares(self, tensors: Sequence[torch.Tensor]) -> np.float32:
        split = self._split_params()
        if not any(split):
            return super()._sum_of_squares(tensors)
        partial = torch.zeros(len(tensors), dtype=torch.float32, device=self._comm_device)
        for index, tensor in enumerate(tensors):
            if split[index]:
                values = tensor.detach().to(torch.float32)
                partial[index] = (values * values).sum().to(self._comm_device)
        torch.distributed.all_reduce(partial, group=self.replicas.head_group)
        sumsq = _f32(0)
        for index, tensor in enumerate(tensors):
            if split[index]:
                part = _f32(partial[index].item())
            else:
                values = tensor.detach().to(torch.float32)
                part = _f32((values * values).sum().item())
            sumsq = _f32(sumsq + part)
        return sumsq

    def _split_params(self) -> list[bool]:
        """For each of ``self.params``: is it a class shard?"""
        shards = {id(t) for layer in self.sharded for t in layer.split_tensors()}
        return [id(p.tensor) in shards for p in self.params]

    # -- testing -------------------------------------------------------------------------------
    def test_all(self) -> None:
        """Copy rank 0's buffers (BatchNorm statistics, counters) to every rank, then test."""
        shards = {id(t) for layer in self.sharded for t in layer.split_tensors()}
        buffers, seen = [], set()
        for net in [self.net, *self.test_nets]:
            for tensor in net.buffers():
                if id(tensor) not in seen and id(tensor) not in shards:
                    seen.add(id(tensor))
                    buffers.append(tensor)
        broadcast_tensors(buffers, self.replicas)
        super().test_all()

    # -- the whole model, for files ------------------------------------------------------------
    @contextmanager
    def _full_view(self, gather: bool, write_back: bool) -> Iterator[None]:
        """Make the class-sharded blobs and their history whole while the block runs: gathered
        from the ranks (``gather``) or zero placeholders; ``write_back`` puts each rank's slice of
        the (possibly reloaded) whole blobs back into its shards."""
        if not self.sharded:
            yield
            return
        split = self._split_params()
        count = len(self.params)
        saved = list(self.history)
        with full_blobs(self.sharded, gather=gather, write_back=write_back) as whole:
            try:
                for index, param in enumerate(self.params):
                    if split[index]:
                        layer, name = whole.owner(param.tensor)
                        for k in range(self.rule.history_sets):
                            slot = index + k * count
                            self.history[slot] = layer.whole_of(name, saved[slot], gather)
                yield
            finally:
                for index, param in enumerate(self.params):
                    if split[index]:
                        layer, name = whole.owner(param.tensor)
                        for k in range(self.rule.history_sets):
                            slot = index + k * count
                            if write_back:
                                saved[slot].copy_(layer.slice_of(name, self.history[slot]))
                            self.history[slot] = saved[slot]

    def copy_weights(self, weights) -> None:
        with self._full_view(gather=True, write_back=True):
            super().copy_weights(weights)

    def snapshot(self) -> tuple[str, str]:
        """Gather the shards and the ranks' random states; rank 0 writes the files."""
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        self._rank_rng = gather_objects(rng, self.replicas)
        with self._full_view(gather=True, write_back=False):
            if self.replicas.is_main:
                return super().snapshot()
        hdf5 = self.param.snapshot_format == self.param.HDF5
        prefix = self.param.snapshot_prefix
        return (
            snap.snapshot_filename(prefix, self.iter, ".caffemodel.h5" if hdf5 else ".caffemodel"),
            snap.snapshot_filename(prefix, self.iter, ".solverstate.h5" if hdf5 else ".solverstate"),
        )

    def _side_state(self) -> dict:
        content = super()._side_state()
        content["distributed"] = {"world_size": self.replicas.world_size, "rng": self._rank_rng}
        return content

    def restore(self, path: str | os.PathLike) -> None:
        """Every rank reads the same files (a shared filesystem), keeps its shards, and takes its
        own random state when the snapshot comes from as many ranks."""
        with self._full_view(gather=True, write_back=True):
            super().restore(path)
        side = snap.side_file_for(path)
        ranks = snap.read_side_file(side).get("distributed") if side.is_file() else None
        r = self.replicas
        if ranks and ranks.get("world_size") == r.world_size and ranks.get("rng"):
            mine = ranks["rng"][r.rank]
            torch.set_rng_state(mine["torch"])
            if "cuda" in mine and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(mine["cuda"])
        elif r.rank > 0:
            torch.manual_seed(self._seed_base + r.rank + self.iter)
