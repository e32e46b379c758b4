"""How time per iteration grows with the batch size and the class count (issue 14).

Table 1: the AM-Softmax train net (``face_train_test.prototxt``, data layers as Input),
forward+backward, at each batch of ``--batches``: median ms per iteration (of ``--repeats`` after a
warm-up), ms per image, the marginal ms per image from the previous batch, GFLOP/s, and the share
of the time spent in convolutions (``torch.profiler``, one extra pass). Growth is linear where the
marginal cost per image is flat; below that the fixed per-iteration work (the weight gradients'
reductions, the 10,516 x 512 classifier's normalization, per-layer dispatch) dominates, which the
falling convolution share shows.

Table 2: a margin head (``--kind``, default ``am``) with the softmax loss at batch 256, 512-d,
for each class count of ``--classes``, one step each in a fresh process (``bench_margin_heads``'s
child): the unchunked head (up to ``--max-unchunked`` classes: above it the (batch, classes)
logits and their gradient alone take gigabytes) and the class-chunked loss; seconds, ms per 1,000
classes, and peak resident memory above the weight and inputs.

    python benchmarks/bench_scaling.py [--batches 1,2,4,8,16,32,64,128] [--repeats 2]
                                       [--classes 1000,10000,100000,1000000] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

import caffe_compat as cc

from bench_margin_heads import run_scale_child  # isort: skip
from face_nets import count_flops, labels, train_param, train_step  # isort: skip


def conv_share(step) -> float:  # noqa: ANN001 - a no-argument callable
    """Fraction of the CPU time of one pass spent in convolution ops (forward and backward)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total if total else 0.0


def batch_table(batches: list[int], repeats: int) -> None:
    flops_per_image = count_flops(train_step(cc.Net(train_param(1)), torch.randn(1, 3, 112, 96), labels(1)))
    print(
        f"Train net forward+backward against the batch ({flops_per_image / 1e9:.1f} GFLOP per image); "
        f"median of {repeats}"
    )
    print(f"{'batch':>6}{'ms/iter':>10}{'ms/image':>10}{'marginal':>10}{'GFLOP/s':>9}{'conv share':>12}")
    previous = None
    for batch in batches:
        torch.manual_seed(0)
        net = cc.Net(train_param(batch))
        step = train_step(net, torch.randn(batch, 3, 112, 96), labels(batch))
        step()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        share = conv_share(step)
        marginal = "" if previous is None else f"{(seconds - previous[1]) / (batch - previous[0]) * 1e3:.1f}"
        rate = flops_per_image * batch / seconds / 1e9
        per_image = seconds / batch * 1e3
        print(f"{batch:>6}{seconds * 1e3:>10.1f}{per_image:>10.1f}{marginal:>10}{rate:>9.1f}{share:>12.2f}")
        previous = (batch, seconds)
        del net, step
    print()


def class_table(classes: list[int], kind: str, sizes: dict[str, int], chunk: int, max_unchunked: int) -> None:
    print(
        f"Margin head '{kind}' + softmax loss against the class count, batch {sizes['batch']}, dim "
        f"{sizes['dim']}, one step per row in a fresh process; chunks of {chunk} classes"
    )
    print(f"{'classes':>9}{'variant':>11}{'s':>9}{'ms/1k classes':>15}{'peak MB above weight':>22}")
    for count in classes:
        for chunked in (False, True):
            if not chunked and count > max_unchunked:
                continue
            result = run_scale_child(kind, {**sizes, "classes": count}, chunk, chunked)
            per_k = result["seconds"] / count * 1e6
            name = "chunked" if chunked else "unchunked"
            print(f"{count:>9}{name:>11}{result['seconds']:>9.2f}{per_k:>15.2f}{result['peak_mb']:>22.0f}")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--classes", default="1000,10000,100000,1000000")
    parser.add_argument("--kind", default="am")
    parser.add_argument("--chunk", type=int, default=65536)
    parser.add_argument("--max-unchunked", type=int, default=100000)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repeat (a smoke test)")
    args = parser.parse_args()
    sizes = {"batch": 256, "dim": 512}
    if args.quick:
        args.batches, args.repeats, args.classes = "1,2", 1, "1000,4000"
        sizes, args.chunk, args.max_unchunked = {"batch": 16, "dim": 32}, 1024, 1000
    torch.set_num_threads(args.threads)
    batch_table([int(b) for b in args.batches.split(",")], args.repeats)
    classes = [int(c) for c in args.classes.split(",")]
    class_table(classes, args.kind, sizes, args.chunk, args.max_unchunked)


if __name__ == "__main__":
    main()
