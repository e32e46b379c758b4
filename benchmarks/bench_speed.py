"""Speed of the AM-Softmax face nets against the machine's own 3x3-convolution rate (issue 14).

Everything in one process, interleaved (one run of each variant per round), medians of
``--repeats`` rounds after a warm-up; FLOPs from ``torch.utils.flop_counter`` (counted at batch 1
and scaled: every counted op is linear in the batch).

Table 1, training (``face_train_test.prototxt``, data layers as Input, forward+backward):
  the machine's conv rate (channels_last oneDNN 3x3 at 128 and 256 channels, forward+backward, at
  the net's batch); the built Net; a hand-written PyTorch module of the same net; a full
  ``Solver.step`` iteration (DummyData data, forward, backward, SGD update); ``caffe-compat time``
  (its whole-net figure and the sum of its per-layer figures). Efficiency = GFLOP/s over the conv
  rate (target >= 0.95); ``step / fwd+bwd`` (target <= 1.05); ``time`` within 10% of plain.
Table 2, inference (``face_deploy_mirror_normalize.prototxt``, mirrored inside the net, forward):
  the conv rate (forward, at 2x the batch) and the Net's inference path (``inference_mode``,
  ``keep_blobs=False``) and its default path (autograd on, every blob kept), per batch.
Real Caffe's figures (recorded constants, ``face_nets.CAFFE``) are shown beside the rows they
were measured for; the ratio to them is only meaningful on their machine.

    python benchmarks/bench_speed.py [--batch 32] [--deploy-batches 1,100] [--repeats 3]
                                     [--threads 2] [--quick] [--allocator kept|default]

``--allocator kept`` (the default, as the ``caffe-compat`` command runs) keeps freed memory for
reuse (``caffe_compat.net.allocator``); ``default`` leaves glibc's malloc as it is.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import statistics
import tempfile
from pathlib import Path

import torch

import caffe_compat as cc
from caffe_compat.log.glog import GlogWriter
from caffe_compat.net.allocator import keep_freed_memory
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import format_text
from caffe_compat.solver.tools import benchmark

from face_nets import (  # isort: skip
    CAFFE,
    HandWrittenFaceNet,
    conv_cases,
    count_flops,
    deploy_param,
    hand_step,
    inference,
    labels,
    median_times,
    train_param,
    train_step,
)


def _row(name: str, seconds: float, flops: float, rate: float, extra: str = "") -> str:
    """A table row; ``rate`` is the conv rate in FLOP/s."""
    gflops, efficiency = flops / seconds / 1e9, flops / seconds / rate
    return f"{name:<44}{seconds * 1e3:>10.1f}{gflops:>9.1f}{efficiency:>8.2f}  {extra}"


def _header(title: str) -> None:
    print(title)
    print(f"{'':<44}{'ms':>10}{'GFLOP/s':>9}{'eff.':>8}  notes")


def _solver(batch: int) -> cc.Solver:
    param = caffe_pb2.SolverParameter(
        base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="fixed", max_iter=10**6, display=0
    )
    param.net_param.CopyFrom(train_param(batch, data="DummyData"))
    return cc.Solver(param, log=GlogWriter(stream=None))


def _time_command(path: Path) -> tuple[float, float]:
    """One ``caffe-compat time`` iteration: (whole-net forward+backward s, sum of per-layer s)."""
    log = io.StringIO()
    layers = benchmark(path, 1, GlogWriter(stream=log))
    text = log.getvalue()
    forward = float(re.search(r"Average Forward pass: (\S+) ms", text).group(1))
    backward = float(re.search(r"Average Backward pass: (\S+) ms", text).group(1))
    return (forward + backward) / 1e3, sum(f + b for f, b in layers.values()) / 1e3


def training_table(batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    net = cc.Net(train_param(batch), phase="TRAIN")
    hand = HandWrittenFaceNet()
    x, label = torch.randn(batch, 3, 112, 96), labels(batch)
    # experiment (not a library option): the same Net with channels_last weights and input
    net_cl = cc.Net(train_param(batch), phase="TRAIN")
    net_cl.load_state_dict(net.state_dict())
    net_cl.to(memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    one = cc.Net(train_param(1), phase="TRAIN")
    flops = batch * count_flops(train_step(one, x[:1], label[:1]))
    convs = conv_cases(batch, backward=True)
    solver = _solver(batch)
    solver_net_step = train_step(solver.net, x, label)
    time_runs: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.prototxt"
        path.write_text(format_text(train_param(batch)))
        fns = {name: fn for name, (fn, _) in convs.items()}
        fns |= {
            "net": train_step(net, x, label),
            "net_cl": train_step(net_cl, x_cl, label),
            "hand": hand_step(hand, x, label),
            "solver_fb": solver_net_step,
            "solver_step": lambda: solver.step(1),
            "time": lambda: time_runs.append(_time_command(path)),
        }
        times = median_times(fns, repeats)
    rates = [convs[name][1] / times[name] for name in convs]
    rate = statistics.mean(rates)
    whole = statistics.median(w for w, _ in time_runs)
    layer_sum = statistics.median(s for _, s in time_runs)
    _header(
        f"Training: face_train_test (Input data), batch {batch}x3x112x96, forward+backward, "
        f"{flops / 1e9:.1f} GFLOP; median of {repeats} interleaved rounds; eff. = rate / conv rate"
    )
    for name in convs:
        print(_row(f"{name} channels_last (oneDNN)", times[name], convs[name][1], rate))
    print(f"{'machine conv rate (mean of the two)':<44}{'':>10}{rate / 1e9:>9.1f}{1.0:>8.2f}")
    print(
        _row(
            "caffe_compat.Net", times["net"], flops, rate, f"{times['net'] / times['hand']:.3f}x hand-written"
        )
    )
    print(_row("hand-written nn.Module", times["hand"], flops, rate))
    print(
        _row(
            "Net, channels_last weights+input (experiment)",
            times["net_cl"],
            flops,
            rate,
            f"{times['net_cl'] / times['net']:.3f}x the default Net",
        )
    )
    print(
        _row(
            "Solver.step (data+fwd+bwd+update)",
            times["solver_step"],
            flops,
            rate,
            f"{times['solver_step'] / times['solver_fb']:.3f}x its net's fwd+bwd (target <= 1.05)",
        )
    )
    print(
        _row(
            "caffe-compat time: whole net",
            whole,
            flops,
            rate,
            f"{whole / times['net']:.3f}x plain fwd+bwd; layers sum to {layer_sum / whole:.3f} of it",
        )
    )
    low, high = CAFFE["train_fwd_bwd_s"]
    caffe_s = (low + high) / 2
    if batch == CAFFE["train_batch"]:
        print(
            _row(
                "real Caffe (recorded, see notes)",
                caffe_s,
                flops,
                rate,
                f"{caffe_s / times['net']:.2f}x slower",
            )
        )
    efficiency = flops / times["net"] / rate
    print(f"target: Net efficiency >= 0.95: {'met' if efficiency >= 0.95 else 'NOT met'} ({efficiency:.2f})")
    print()


def inference_table(batches: list[int], repeats: int) -> None:
    _header(
        f"Inference: face_deploy_mirror_normalize (mirrored inside: 2b images), forward; median of "
        f"{repeats} interleaved rounds; eff. = rate / conv forward rate at 2b"
    )
    for batch in batches:
        torch.manual_seed(0)
        net = cc.Net(deploy_param(batch), phase="TEST")
        x = torch.randn(batch, 3, 112, 96)
        flops = batch * count_flops(inference(cc.Net(deploy_param(1), phase="TEST"), x[:1]))
        convs = conv_cases(2 * batch, backward=False)
        fns = {name: fn for name, (fn, _) in convs.items()}
        fns |= {"inference": inference(net, x), "default": lambda net=net, x=x: net(data=x)}
        times = median_times(fns, repeats)
        rate = statistics.mean(convs[name][1] / times[name] for name in convs)
        print(f"{'conv rate at ' + str(2 * batch) + ' images (forward)':<44}{'':>10}{rate / 1e9:>9.1f}")
        print(
            _row(
                f"batch {batch}: Net inference path",
                times["inference"],
                flops,
                rate,
                f"{flops / 1e9:.1f} GFLOP; {times['default'] / times['inference']:.2f}x faster than default",
            )
        )
        print(_row(f"batch {batch}: Net default (autograd, all blobs)", times["default"], flops, rate))
        if batch == CAFFE["deploy_batch"]:
            caffe_s = CAFFE["deploy_fwd_s"]
            print(
                _row(
                    f"batch {batch}: real Caffe (recorded)",
                    caffe_s,
                    flops,
                    rate,
                    f"{caffe_s / times['inference']:.2f}x slower",
                )
            )
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--deploy-batches", default="1,100")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument(
        "--allocator",
        choices=("kept", "default"),
        default="kept",
        help="kept: freed memory reused (what the caffe-compat command does); default: glibc's",
    )
    args = parser.parse_args()
    kept = keep_freed_memory(args.allocator == "kept")
    if args.quick:
        args.batch, args.deploy_batches, args.repeats = 1, "1", 1
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average "
        f"{os.getloadavg()[0]:.1f} at start; allocator: {'freed memory kept' if kept else 'glibc default'}; "
        f"real Caffe recorded on {CAFFE['machine']}"
    )
    print()
    if not args.skip_training:
        training_table(args.batch, args.repeats)
    if not args.skip_inference:
        inference_table([int(b) for b in args.deploy_batches.split(",")], args.repeats)
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
