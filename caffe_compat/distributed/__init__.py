"""torch.distributed glue: rank-aware data slicing, DDP wrapping, the class-sharded head.

- ``DistributedSolver``: Caffe's solver data-parallel over the ranks torchrun starts (DDP; NCCL on
  GPUs, gloo on the CPU), with Caffe's multi-GPU semantics (``docs/distributed.md``).
- ``shard_data_layers``: N ranks with batch B read what one process with batch N*B reads.
- ``PartialFC`` and ``shard_classifiers``: classifiers sharded by class over the ranks (the
  PartialFC idea of insightface's arcface_torch), for the heads of ``caffe_compat.losses`` and the
  prototxt margin layers.
- ``init_from_env``/``Replicas``: the process group and this rank's place in it.
"""

from caffe_compat.distributed.collectives import ClassShard, gather_batch
from caffe_compat.distributed.data import shard_data_layers
from caffe_compat.distributed.partial_fc import PartialFC, sharded_cross_entropy
from caffe_compat.distributed.runtime import Replicas, init_from_env, launched, pick_device, shutdown
from caffe_compat.distributed.sharded_layers import shard_classifiers
from caffe_compat.distributed.solver import DistributedSolver
from caffe_compat.solver.snapshot import latest_snapshot

__all__ = [
    "ClassShard",
    "DistributedSolver",
    "PartialFC",
    "Replicas",
    "gather_batch",
    "init_from_env",
    "latest_snapshot",
    "launched",
    "pick_device",
    "shard_classifiers",
    "shard_data_layers",
    "sharded_cross_entropy",
    "shutdown",
]
