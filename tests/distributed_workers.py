"""Worker functions of the multi-process tests (``torch.multiprocessing.spawn`` imports them in
each rank). Each rank joins a gloo group on 127.0.0.1, runs the checks and saves what the parent
test asserts on (``numpy.savez`` / logs / caffemodels in the output folder)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

D_IN, D, CLASSES, BATCH, STEPS = 6, 5, 11, 4, 10
KINDS = {
    "am": {"m": 0.35, "s": 8.0},
    "arc": {"m": 0.5, "s": 8.0},
    "mv-arc": {"m": 0.35, "s": 8.0, "t": 0.2},
    "mv-am": {"m": 0.35, "s": 8.0, "t": 0.2, "learnable_scale": True},
    "sv-arc": {"m": 0.3, "s": 8.0, "t": 1.2},
    "sphereface": {"m": 4, "s": 8.0, "gamma": 0.1, "power": 1.0},
    "normface": {"s": 8.0},
    "fc": {"bias": True},
}


def join(rank: int, world: int, port: int) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)


def head_checks(rank: int, world: int, out: Path) -> None:
    """PartialFC against the one-process head on the global batch, for every head kind."""
    from caffe_compat.distributed import PartialFC, Replicas, sharded_cross_entropy
    from caffe_compat.losses import make_head

    replicas = Replicas.current()
    results = {}
    for kind, params in KINDS.items():
        torch.manual_seed(0)
        backbone = nn.Linear(D_IN, D)
        head = make_head(kind, D, CLASSES, **params)
        inputs = torch.randn(STEPS, world * BATCH, D_IN)
        labels = torch.randint(0, CLASSES, (STEPS, world * BATCH))
        mine = slice(rank * BATCH, (rank + 1) * BATCH)
        sharded = PartialFC(kind, D, CLASSES, replicas=replicas, grad_scale=1.0, **params)
        sharded.load_full_weight(head.weight.detach())
        if getattr(head, "bias", None) is not None:
            with torch.no_grad():
                sharded.bias.copy_(head.bias[sharded.shard.start : sharded.shard.stop])
        local_backbone = copy.deepcopy(backbone)
        start, stop = sharded.shard.start, sharded.shard.stop

        # one pass: logits, loss, gradients
        emb = backbone(inputs[0])
        emb.retain_grad()
        logits = head(emb, labels[0])
        loss = F.cross_entropy(logits, labels[0])
        loss.backward()
        emb_r = local_backbone(inputs[0][mine])
        emb_r.retain_grad()
        logits_r, targets = sharded.logits(emb_r, labels[0][mine])
        loss_r = sharded_cross_entropy(logits_r, targets, sharded.shard).mean()
        loss_r.backward()
        rec = {
            "logits": (logits_r - logits[:, start:stop]).abs().max().item(),
            "logits_scale": logits.abs().max().item(),
            "loss": abs(loss_r.item() - loss.item()) / loss.item(),
            "grad_x": (emb_r.grad - emb.grad[mine]).abs().max().item(),
            "grad_x_scale": emb.grad.abs().max().item(),
            "grad_w": (sharded.weight.grad - head.weight.grad[start:stop]).abs().max().item(),
            "grad_w_scale": head.weight.grad.abs().max().item(),
            "hard_negatives": _hard_negatives(head, emb.detach(), labels[0]),
            "weight_bytes": sharded.weight.numel() * 4,
            "full_weight_bytes": head.weight.numel() * 4,
            "logits_bytes": logits_r.numel() * 4,
            "full_logits_bytes": logits.numel() * 4,
        }

        # ten SGD steps: backbone under DDP (default grad_scale), head sharded
        torch.manual_seed(1)
        head = make_head(kind, D, CLASSES, **params)
        backbone = nn.Linear(D_IN, D)
        sharded = PartialFC(kind, D, CLASSES, replicas=replicas, **params)
        sharded.load_full_weight(head.weight.detach())
        if getattr(head, "bias", None) is not None:
            with torch.no_grad():
                sharded.bias.copy_(head.bias[start:stop])
        ddp = DistributedDataParallel(copy.deepcopy(backbone))
        opt = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.5, momentum=0.9)
        opt_r = torch.optim.SGD([*ddp.parameters(), *sharded.parameters()], lr=0.5, momentum=0.9)
        losses = []
        for step in range(STEPS):
            opt.zero_grad()
            loss = F.cross_entropy(head(backbone(inputs[step]), labels[step]), labels[step])
            loss.backward()
            opt.step()
            opt_r.zero_grad()
            loss_r = sharded(ddp(inputs[step][mine]), labels[step][mine])
            loss_r.backward()
            opt_r.step()
            losses.append(abs(loss_r.item() - loss.item()) / loss.item())
        rec["steps_loss"] = max(losses)
        rec["steps_weight"] = (sharded.full_weight() - head.weight.detach()).abs().max().item()
        rec["steps_backbone"] = (ddp.module.weight - backbone.weight).abs().max().item()
        if getattr(head, "learnable_scale", False):
            rec["steps_scale"] = abs(sharded.head.s.item() - head.s.item())
        results[kind] = rec
    torch.save(results, out / f"heads_{rank}.pt")


def _hard_negatives(head: nn.Module, emb: torch.Tensor, labels: torch.Tensor) -> int:
    """How many negatives an MV/SV head re-weights in this batch (0 for other heads)."""
    if not hasattr(head, "reweighting"):
        return 0
    cos = F.normalize(emb, dim=1) @ F.normalize(head.weight.detach(), dim=1).t()
    cos_y = cos.gather(1, labels.unsqueeze(1))
    hard = cos > head.margin_function(cos_y)
    hard.scatter_(1, labels.unsqueeze(1), False)
    return int(hard.sum())


def sampling_check(rank: int, world: int, out: Path) -> None:
    """Class sampling: the loss is the one-process loss over the classes the ranks sampled."""
    from caffe_compat.distributed import PartialFC, Replicas
    from caffe_compat.distributed.runtime import gather_objects
    from caffe_compat.losses import make_head

    replicas = Replicas.current()
    torch.manual_seed(0)
    classes = 40
    head = make_head("arc", D, classes, m=0.5, s=8.0)
    x = torch.randn(world * BATCH, D)
    y = torch.randint(0, classes, (world * BATCH,))
    sharded = PartialFC("arc", D, classes, replicas=replicas, sample_rate=0.25, seed=3, m=0.5, s=8.0)
    sharded.load_full_weight(head.weight.detach())
    mine = slice(rank * BATCH, (rank + 1) * BATCH)
    loss = sharded(x[mine], y[mine])
    kept = int(0.25 * sharded.shard.size)
    # the columns this rank sampled: replay its sampler's draw
    sampler = copy.deepcopy(sharded.sampler)
    sampler.passes.sub_(1)
    targets = sharded.shard.local_targets(y)
    index, _ = sampler(targets)
    columns = gather_objects((index + sharded.shard.start).tolist(), replicas)
    union = sorted(c for part in columns for c in part)
    logits = head(x, y)[:, union]
    remap = torch.tensor([union.index(int(label)) for label in y])
    reference = F.cross_entropy(logits, remap)
    torch.save(
        {
            "loss": loss.item(),
            "reference": reference.item(),
            "sampled": len(index),
            "kept": kept,
            "positives": int(torch.unique(targets[targets >= 0]).numel()),
            "labels_in_union": all(int(label) in union for label in y),
        },
        out / f"sampling_{rank}.pt",
    )


def solver_check(rank: int, world: int, out: Path, kinds: list[str]) -> None:
    """DistributedSolver with a MarginHead layer sharded by class, per kind: 10 iterations from
    scratch, then 5 more resumed from the one-process snapshot of iteration 5."""
    from caffe_compat.distributed import DistributedSolver, Replicas
    from caffe_compat.distributed.sharded_layers import sharded_memory
    from caffe_compat.log.glog import GlogWriter

    replicas = Replicas.current()
    memory = {}
    for kind in kinds:
        folder = out / kind
        for name, resume in (("dist", None), ("resumed", folder / "one_iter_5.solverstate")):
            log = GlogWriter(stream=None, path=folder / f"{name}.log") if rank == 0 else None
            solver = DistributedSolver(
                folder / "solver_dist.prototxt", replicas=replicas, model_parallel=["head"], log=log
            )
            solver.param.snapshot_prefix = str(folder / name)
            solver.solve(resume)
            memory[kind] = sharded_memory(solver.sharded)
            if log is not None:
                log.close()
    torch.save(memory, out / f"solver_memory_{rank}.pt")


def run(rank: int, world: int, port: int, out: str, solver_kinds: list[str]) -> None:
    join(rank, world, port)
    try:
        folder = Path(out)
        head_checks(rank, world, folder)
        sampling_check(rank, world, folder)
        solver_check(rank, world, folder, solver_kinds)
    finally:
        dist.destroy_process_group()


__all__ = ["KINDS", "run"]
