"""The class-sharded classifier (PartialFC) per rank: 1 rank against 2 (and more with --world).

For each world size the ranks (gloo over 127.0.0.1 on the CPU, one thread each; NCCL with
``--device cuda``) build ``PartialFC("mv-arc", dim, classes)``, run one untimed forward+backward,
then ``--repeats`` timed ones (the global batch's loss, backward to the embeddings and the weight
block) on a fixed per-rank batch. The table gives, per rank, the classes held, the bytes of the
weight block and of the logits block, and the median step time; the ratios compare with one
rank, which holds the whole classifier (with one rank the module is the one-process head). On one
machine with fewer cores than ranks the times measure contention as much as the work: read the
memory columns.

    python benchmarks/bench_distributed.py [--quick] [--world 1 2] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

FULL = {"classes": 86876, "batch": 64, "dim": 512}
QUICK = {"classes": 8192, "batch": 32, "dim": 128}


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _rank(rank: int, world: int, port: int, config: dict, device: str, repeats: int, out: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # one thread per rank: the ranks do not fight over the cores
    cuda = device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group(
        "nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        from caffe_compat.distributed import PartialFC, Replicas

        target = torch.device("cuda", rank) if cuda else torch.device("cpu")
        head = PartialFC(
            "mv-arc", config["dim"], config["classes"], replicas=Replicas.current(), m=0.5, s=64.0
        )
        head.to(target)
        generator = torch.Generator().manual_seed(rank)
        x = torch.randn(config["batch"], config["dim"], generator=generator).to(target).requires_grad_()
        y = torch.randint(0, config["classes"], (config["batch"],), generator=generator).to(target)
        times = []
        for step in range(repeats + 1):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            logits, targets = head.logits(x, y)
            from caffe_compat.distributed import sharded_cross_entropy

            loss = sharded_cross_entropy(logits, targets, head.shard).mean()
            loss.backward()
            if cuda:
                torch.cuda.synchronize()
            if step:
                times.append(time.perf_counter() - start)
            logits_bytes = logits.numel() * logits.element_size()
            del logits, loss
            head.weight.grad = None
            x.grad = None
        report = {
            "classes": head.shard.size,
            "weight_bytes": head.weight.numel() * head.weight.element_size(),
            "logits_bytes": logits_bytes,
            "seconds": statistics.median(times),
        }
        Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    finally:
        dist.destroy_process_group()


def measure(world: int, config: dict, device: str, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(_rank, args=(world, _port(), config, device, repeats, out), nprocs=world, join=True)
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK} instead of {FULL}")
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    args = parser.parse_args()
    config = QUICK if args.quick else FULL
    print(
        f"PartialFC mv-arc, {config['classes']} classes, {config['dim']}-d, batch {config['batch']} per rank"
    )
    header = f"{'ranks':>5} {'classes/rank':>12} {'weight MiB':>10} {'logits MiB':>10} {'ms/step':>8}"
    print(header + "  ratios to 1 rank")
    base = None
    for world in args.world:
        ranks = measure(world, config, args.device, args.repeats)
        worst = max(ranks, key=lambda r: r["weight_bytes"])
        seconds = max(r["seconds"] for r in ranks)
        row = (worst["weight_bytes"], worst["logits_bytes"] / world, seconds)
        if base is None:
            base = row
        ratios = (
            f"weight {row[0] / base[0]:.2f}x, logits per sample {row[1] / base[1]:.2f}x, "
            f"time {row[2] / base[2]:.2f}x"
        )
        print(
            f"{world:>5} {worst['classes']:>12} {worst['weight_bytes'] / 2**20:>10.1f} "
            f"{worst['logits_bytes'] / 2**20:>10.1f} {seconds * 1e3:>8.1f}  {ratios}"
        )


if __name__ == "__main__":
    main()
