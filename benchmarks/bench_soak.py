"""Soak: resident memory of a long training run stays flat (no growth from logs, blobs or workers).

A small config trained for 10,000 iterations: an ``ImageData`` layer (64 generated 16x16 images,
shuffled and mirrored, read by a background worker process) into a convolution, pooling, an
inner product and SoftmaxWithLoss; a TEST net run every 500 iterations; a line logged every 100
iterations to a log file; a snapshot set every 2,500. The resident set size of the process and of
its data workers is sampled at fixed iterations. Target: the total at 10,000 iterations within 5%
of the total at 100 (after the allocator and the worker have warmed up).

    python benchmarks/bench_soak.py [--iters 10000] [--at 100,1000,2500,5000,10000] [--workers 1]

prints a table of RSS per sampled iteration and the change against the first sample.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

PAGE = os.sysconf("SC_PAGE_SIZE")

NET = """name: "soak"
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TRAIN }
        transform_param { scale: 0.00390625 mirror: true }
        image_data_param { source: "list.txt" root_folder: "images/" batch_size: 8 shuffle: true } }
layer { name: "data" type: "ImageData" top: "data" top: "label" include { phase: TEST }
        transform_param { scale: 0.00390625 }
        image_data_param { source: "list.txt" root_folder: "images/" batch_size: 8 } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 8 kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "ip" bottom: "label" top: "acc" include { phase: TEST } }
"""

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 500
base_lr: 0.01
momentum: 0.9
weight_decay: 0.0005
lr_policy: "step"
gamma: 0.5
stepsize: 2500
display: 100
max_iter: {iters}
snapshot: {snapshot}
snapshot_prefix: "snaps/soak"
solver_mode: CPU
random_seed: 1
"""


def rss(pid: int) -> int:
    """Resident bytes of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * PAGE
    except OSError:
        return 0


def children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (the data workers)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def make_config(folder: Path, iters: int, snapshot: int) -> None:
    rng = np.random.default_rng(0)
    (folder / "images").mkdir()
    (folder / "snaps").mkdir()
    lines = []
    for index in range(64):
        label = index % 4
        image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        image[:, :, label % 3] //= 2  # something to learn
        cv2.imwrite(str(folder / "images" / f"{index}.png"), image)
        lines.append(f"{index}.png {label}")
    (folder / "list.txt").write_text("\n".join(lines) + "\n")
    (folder / "net.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(SOLVER.format(iters=iters, snapshot=snapshot))


def soak(iters: int, at: list[int], workers: int = 1, snapshot: int = 2500) -> list[dict]:
    """Train the soak config for ``iters`` iterations; a row of RSS per iteration in ``at``."""
    from caffe_compat.data.loader import WORKERS_ENV
    from caffe_compat.log.glog import GlogWriter
    from caffe_compat.solver.solver import Solver

    os.environ[WORKERS_ENV] = str(workers)
    torch.set_num_threads(1)
    rows: list[dict] = []
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        make_config(Path(folder), iters, snapshot)
        os.chdir(folder)
        log = GlogWriter(stream=None, path="train.log")
        try:
            solver = Solver("solver.prototxt", log=log)
            start = time.perf_counter()
            wanted = set(at)

            def sample(iteration: int) -> None:
                if iteration in wanted:
                    workers_rss = sum(rss(pid) for pid in children(os.getpid()))
                    rows.append(
                        {
                            "iter": iteration,
                            "main": rss(os.getpid()),
                            "workers": workers_rss,
                            "seconds": time.perf_counter() - start,
                        }
                    )

            solver.on_iteration = sample
            solver.solve()
            rows.sort(key=lambda row: row["iter"])
            for row in rows:
                row["log_lines"] = 0
            lines = Path("train.log").read_text().count("\n")
            rows[-1]["log_lines"] = lines
        finally:
            log.close()
            os.chdir(cwd)
    return rows


def table(rows: list[dict]) -> str:
    mib = 1 << 20
    first = rows[0]["main"] + rows[0]["workers"]
    header = (("iteration", 10), ("main MiB", 9), ("workers MiB", 12), ("total MiB", 10), ("vs first", 9))
    out = [" ".join(f"{name:>{width}}" for name, width in header) + f" {'seconds':>8}"]
    for row in rows:
        total = row["main"] + row["workers"]
        change = 100.0 * (total - first) / first
        out.append(
            f"{row['iter']:>10} {row['main'] / mib:>9.1f} {row['workers'] / mib:>12.1f} {total / mib:>10.1f} "
            f"{change:>+8.1f}% {row['seconds']:>8.1f}"
        )
    last = rows[-1]["main"] + rows[-1]["workers"]
    change = 100.0 * (last - first) / first
    verdict = "yes" if abs(change) <= 5.0 else "NO"
    out.append(
        f"RSS at iteration {rows[-1]['iter']} vs {rows[0]['iter']}: {change:+.1f}% (within 5%: {verdict}); "
        f"log lines written: {rows[-1]['log_lines']}"
    )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=10000)
    parser.add_argument("--at", default="100,1000,2500,5000,7500,10000", help="iterations to sample RSS at")
    parser.add_argument("--workers", type=int, default=1, help="data worker processes per data layer")
    parser.add_argument("--snapshot", type=int, default=2500, help="snapshot interval")
    args = parser.parse_args()
    at = [int(a) for a in args.at.split(",") if a]
    print(table(soak(args.iters, at, args.workers, args.snapshot)))


if __name__ == "__main__":
    main()
