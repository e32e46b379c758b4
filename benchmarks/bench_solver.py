"""Solver overhead: ``caffe_compat.Solver.step`` against a bare PyTorch loop on the same net.

Both train the face20_softmax golden net (iter_size 2, momentum SGD, weight decay) from the same
weights, interleaved in one process: the bare loop does the forward/backward passes and Caffe's
SGD update by hand (no logging, no float32 bookkeeping, no display); the solver does everything
``caffe train`` does with ``display: 1``. Target: the solver's time per iteration at most 1.2x the
bare loop's (its own work is small next to the net's). The table prints the medians and the ratio.

    python benchmarks/bench_solver.py [--iters 20] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from caffe_compat import Solver
from caffe_compat.log.glog import GlogWriter

CASE = Path(__file__).resolve().parent.parent / "tests" / "goldens" / "train" / "face20_softmax"


def bare_loop(solver: Solver, iters: int) -> float:
    """Forward/backward ``iter_size`` times and ``h = m h + lr g; w -= h`` per blob, by hand."""
    net, params = solver.net, solver.params
    history = [torch.zeros_like(p.tensor) for p in params]
    start = time.perf_counter()
    for _ in range(iters):
        for tensor in net.parameters():
            tensor.grad = None
        for _ in range(solver.param.iter_size):
            net.loss(net()).backward()
        with torch.no_grad():
            for p, h in zip(params, history, strict=True):
                grad = p.tensor.grad if p.gets_diff and p.tensor.grad is not None else 0.0 * p.tensor
                grad = grad / solver.param.iter_size + 5e-4 * float(p.decay_mult) * p.tensor
                h.mul_(0.9).add_(grad, alpha=0.01 * float(p.lr_mult))
                p.tensor.sub_(h)
    return (time.perf_counter() - start) / iters


def solver_loop(solver: Solver, iters: int) -> float:
    start = time.perf_counter()
    solver.step(iters)
    return (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder) / "case"
        shutil.copytree(CASE, work, ignore=shutil.ignore_patterns("final_iter_*", "*.log"))
        text = (work / "solver.prototxt").read_text()
        (work / "solver.prototxt").write_text(
            "\n".join(line for line in text.splitlines() if not line.startswith(("test_", "snapshot")))
        )
        cwd = os.getcwd()
        os.chdir(work)
        try:
            solver = Solver("solver.prototxt", "init.caffemodel", log=GlogWriter(stream=None))
            solver.param.max_iter = 10**6
            bare, ours = [], []
            bare_loop(solver, 2), solver_loop(solver, 2)  # warm-up
            for _ in range(args.repeats):
                bare.append(bare_loop(solver, args.iters))
                ours.append(solver_loop(solver, args.iters))
        finally:
            os.chdir(cwd)
    b, o = statistics.median(bare), statistics.median(ours)
    print(f"{'loop':<28}{'ms/iter':>10}")
    print(f"{'bare PyTorch (hand SGD)':<28}{b * 1e3:>10.2f}")
    print(f"{'caffe_compat.Solver.step':<28}{o * 1e3:>10.2f}")
    print(f"{'ratio (target <= 1.2)':<28}{o / b:>10.2f}")


if __name__ == "__main__":
    main()
