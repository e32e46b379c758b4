"""The process group this package trains in: who we are (rank, world size, local rank), the device
a rank computes on, and the few collectives the solver needs beyond DDP.

Launch with ``torchrun`` (it sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``); ``init_from_env`` then joins the group with NCCL on CUDA devices and gloo on the
CPU. Every helper takes an explicit ``Replicas`` so that tests can run several groups side by side.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from caffe_compat.errors import CaffeCompatError

#: Environment variables torchrun sets for every worker.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
#: Seconds a collective may wait for the other ranks (``$CAFFE_COMPAT_DIST_TIMEOUT``, default 1800).
TIMEOUT_ENV = "CAFFE_COMPAT_DIST_TIMEOUT"

# torch >= 2.10 renames the single-tensor collectives; older releases have the former names only.
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting its variables)."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE"))


@dataclass
class Replicas:
    """The ranks that train one model together.

    Attributes:
        rank, world_size: this process's rank and the number of ranks.
        local_rank: the rank on this node (it picks the GPU).
        group: the process group of data parallelism (None: the default group).
        head_group: a second group over the same ranks for the class-sharded classifier, so that
            its collectives never interleave with DDP's gradient reductions.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: object | None = None
    head_group: object | None = field(default=None, repr=False)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes snapshots (Caffe's root solver)."""
        return self.rank == 0

    @classmethod
    def current(cls, group: object | None = None) -> Replicas:
        """The initialized default group (or ``group``) as seen from this process."""
        if not dist.is_available() or not dist.is_initialized():
            raise CaffeCompatError(
                "torch.distributed is not initialized: launch with torchrun (see docs/distributed.md) "
                "or call caffe_compat.distributed.init_from_env() first"
            )
        local = int(os.environ.get("LOCAL_RANK", dist.get_rank(group)))
        ranks = None if group is None else dist.get_process_group_ranks(group)
        return cls(
            rank=dist.get_rank(group),
            world_size=dist.get_world_size(group),
            local_rank=local,
            group=group,
            head_group=dist.new_group(ranks),
        )


def pick_device(solver_gpu: bool, gpus: str = "", local_rank: int = 0) -> torch.device:
    """The device of one rank: Caffe's ``-gpu 0,1,2,3`` list indexed by the local rank (``all``: the
    local rank), else the local rank's GPU when the solver asks for the GPU and CUDA is present,
    else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if gpus:
        ids = [g.strip() for g in gpus.split(",") if g.strip()]
        if ids == ["all"]:
            index = local_rank
        else:
            try:
                index = int(ids[local_rank % len(ids)])
            except ValueError:
                raise CaffeCompatError(
                    f"-gpu must be 'all' or device ids separated by ',', got '{gpus}'"
                ) from None
    elif solver_gpu:
        index = local_rank % torch.cuda.device_count()
    else:
        return torch.device("cpu")
    if not 0 <= index < torch.cuda.device_count():
        raise CaffeCompatError(f"GPU {index}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


def init_from_env(device: torch.device | None = None) -> Replicas:
    """Join the process group torchrun describes (NCCL for a CUDA ``device``, else gloo)."""
    missing = [name for name in LAUNCH_VARIABLES if name not in os.environ]
    if missing:
        raise CaffeCompatError(
            f"not started by torchrun: {', '.join(missing)} unset (see docs/distributed.md for the launch "
            "commands)"
        )
    if not dist.is_available():
        raise CaffeCompatError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "1800")))
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            timeout=timeout,
            device_id=device if cuda else None,
            **_attempt_store(timeout),
        )
    return Replicas.current()


def _attempt_store(timeout: timedelta) -> dict:
    """Under a torchrun agent, the agent's store seen through a prefix naming this attempt.

    The agent keeps one store across ``--max-restarts`` restarts (torch 2.13), so the workers of a
    restarted attempt would read the addresses the dead attempt's workers published there and wait
    for them forever; a prefix per attempt keeps each attempt's keys apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != str(True):
        return {}
    world = int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False, timeout=timeout
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    prefixed = dist.PrefixStore(f"/caffe_compat/attempt_{attempt}", store)
    return {"store": prefixed, "rank": int(os.environ["RANK"]), "world_size": world}


def shutdown(synchronize: bool = False) -> None:
    """Leave the process group (a no-op when none was joined). ``synchronize`` (a job that ended
    normally on every rank) waits at a barrier first, so no rank tears its connections down while
    a peer still uses them (gloo then aborts the peer at exit: "terminate called without an active
    exception")."""
    if dist.is_available() and dist.is_initialized():
        if synchronize:
            dist.barrier()
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# collectives on host values


def mean_arrays(
    values: dict[str, np.ndarray], replicas: Replicas, device: torch.device
) -> dict[str, np.ndarray]:
    """Each float32 array averaged over the ranks (one all-reduce of their concatenation).

    The sum is taken in float32 and divided by the world size in float32, as Caffe's multi-GPU
    solver scales the reduced diffs by ``1 / solver_count``. Every rank must pass the same keys with
    the same sizes.
    """
    if replicas.world_size == 1 or not values:
        return values
    names = list(values)
    flat = [np.asarray(values[name], dtype=np.float32).reshape(-1) for name in names]
    buffer = torch.from_numpy(np.concatenate(flat)).to(device)
    dist.all_reduce(buffer, group=replicas.group)
    buffer = (buffer / float(replicas.world_size)).cpu().numpy().astype(np.float32)
    result, start = {}, 0
    for name, array in zip(names, flat, strict=True):
        shape = np.asarray(values[name]).shape
        result[name] = buffer[start : start + array.size].reshape(shape)
        start += array.size
    return result


def broadcast_object(value: object, replicas: Replicas, source: int = 0) -> object:
    """A picklable value of rank ``source`` on every rank."""
    if replicas.world_size == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=_global_rank(replicas, source), group=replicas.group)
    return holder[0]


def gather_objects(value: object, replicas: Replicas) -> list[object]:
    """Every rank's picklable value, in rank order, on every rank."""
    if replicas.world_size == 1:
        return [value]
    gathered: list[object] = [None] * replicas.world_size
    dist.all_gather_object(gathered, value, group=replicas.group)
    return gathered


def max_over_ranks(value: int, replicas: Replicas, device: torch.device) -> int:
    """The largest of the ranks' integers."""
    if replicas.world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=replicas.group)
    return int(tensor.item())


def broadcast_tensors(tensors: Sequence[torch.Tensor], replicas: Replicas, source: int = 0) -> None:
    """Overwrite the tensors (in place) with rank ``source``'s."""
    if replicas.world_size == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor.data, src=_global_rank(replicas, source), group=replicas.group)


def gather_rows(tensor: torch.Tensor, sizes: Sequence[int], group: object | None) -> torch.Tensor:
    """Concatenate the ranks' tensors along axis 0, rank ``r`` contributing ``sizes[r]`` rows
    (the sizes may differ: the tensors travel padded to the largest). No autograd."""
    world = len(sizes)
    if world == 1:
        return tensor
    rows = max(sizes)
    padded = tensor.new_zeros((rows, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    out = tensor.new_empty((world * rows, *tensor.shape[1:]))
    _all_gather_single(out, padded.contiguous(), group=group)
    return torch.cat([out[r * rows : r * rows + sizes[r]] for r in range(world)])


def all_gather_equal(tensor: torch.Tensor, world: int, group: object | None) -> torch.Tensor:
    """Concatenate the ranks' same-shaped tensors along axis 0 (no autograd)."""
    if world == 1:
        return tensor
    out = tensor.new_empty((world * tensor.shape[0], *tensor.shape[1:]))
    _all_gather_single(out, tensor.contiguous(), group=group)
    return out


def _global_rank(replicas: Replicas, rank: int) -> int:
    if replicas.group is None:
        return rank
    return dist.get_global_rank(replicas.group, rank)
