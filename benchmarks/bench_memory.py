"""Peak resident memory of training the face net and of running the deploy net (issue 14).

Each case runs in a fresh Python process and reports its peak resident set (Linux ``VmHWM``) for
the whole process (torch and its libraries included, as a ``caffe`` process's RSS includes its
own), and the resident set just before the measured work (imports, net built, weights filled).

Cases: training (``Solver.step`` on the train net fed by DummyData at ``--batch``, 2 iterations:
data, forward, backward, momentum SGD update); the deploy net at ``--deploy-batch`` (mirrored
inside, so twice the images): its inference path (``inference_mode``, ``keep_blobs=False``), the
default forward (autograd on, every blob kept), ``caffe-compat time`` (2 iterations) and
``caffe-compat convert`` to ``pt`` with verification.

Real Caffe: no measured peak RSS of real Caffe on this net was available (Caffe cannot be
installed by pip). The ``Caffe allocates`` column is computed from Caffe's own allocation rules
instead, and is a lower bound of its RSS: every blob's data (one per blob name: in-place layers
share it), in training also every blob's diff, the parameters (training: data, diff and the
momentum history), and each convolution layer's own ``col_buffer_`` (im2col of one image:
``C_in k_h k_w H_out W_out`` floats), all float32; the process's own code and libraries excluded.

    python benchmarks/bench_memory.py [--batch 32] [--deploy-batch 100] [--quick] [--allocator kept|default]

``--allocator kept`` (the default, as the ``caffe-compat`` command runs) keeps freed memory for
reuse in each case's process (``caffe_compat.net.allocator``); ``default`` leaves glibc's malloc.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

_CHILD = r"""
import json, sys, io
sys.path.insert(0, {here!r})
import torch
torch.set_num_threads(2)
import caffe_compat as cc
from caffe_compat.log.glog import GlogWriter
from caffe_compat.proto import caffe_pb2
from face_nets import deploy_param, train_param, inference, peak_rss_mb
case, batch, folder = {case!r}, {batch}, {folder!r}
if {kept!r}:
    from caffe_compat.net.allocator import keep_freed_memory
    keep_freed_memory()

def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0

if case == "train":
    param = caffe_pb2.SolverParameter(base_lr=0.01, momentum=0.9, weight_decay=5e-4, lr_policy="fixed",
                                      max_iter=10**6, display=0)
    param.net_param.CopyFrom(train_param(batch, data="DummyData"))
    solver = cc.Solver(param, log=GlogWriter(stream=None))
    before = rss()
    solver.step(2)
elif case == "time":
    from caffe_compat.solver.tools import benchmark
    before = rss()
    benchmark(folder + "/deploy.prototxt", 2, GlogWriter(stream=None), phase="TEST")
elif case == "convert":
    from caffe_compat.export.convert import convert
    before = rss()
    convert(folder + "/deploy.prototxt", folder + "/deploy.caffemodel", "pt", folder + "/out.pt")
else:
    net = cc.Net(deploy_param(batch), phase="TEST")
    x = torch.randn(batch, 3, 112, 96)
    before = rss()
    if case == "inference":
        inference(net, x)()
    else:
        net(data=x)
print(json.dumps({{"before": before, "peak": peak_rss_mb()}}))
"""


def run_child(case: str, batch: int, folder: str, kept: bool = True) -> dict[str, float]:
    code = _CHILD.format(here=str(HERE), case=case, batch=batch, folder=folder, kept=kept)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"case {case} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def caffe_allocation_mb(net, training: bool) -> float:  # noqa: ANN001 - a caffe_compat.Net
    """Caffe's float32 allocations for this net (see the module docstring), MB."""
    blobs = sum(math.prod(shape) for shape in net.blob_shapes.values())
    params = sum(t.numel() for entry in net.learnable_params() for t in [entry.tensor])
    col = 0
    for name, layer in net.layers.items():
        if type(layer).__name__ == "Convolution":
            bottom = net.blob_shapes[net.layer_params[name].bottom[0]]
            top = net.blob_shapes[net.layer_params[name].top[0]]
            col += bottom[1] * math.prod(layer.kernel_size) * math.prod(top[2:])
    floats = blobs * (2 if training else 1) + params * (3 if training else 1) + col
    return floats * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--deploy-batch", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="tiny batches, fewer cases (a smoke test)")
    parser.add_argument(
        "--allocator",
        choices=("kept", "default"),
        default="kept",
        help="kept: freed memory reused (what the caffe-compat command does); default: glibc's",
    )
    args = parser.parse_args()
    if args.quick:
        args.batch, args.deploy_batch = 1, 1
    sys.path.insert(0, str(HERE))
    from face_nets import deploy_param, train_param

    import caffe_compat as cc

    train_net = cc.Net(train_param(args.batch), phase="TRAIN")
    deploy = cc.Net(deploy_param(args.deploy_batch), phase="TEST")
    caffe_train = caffe_allocation_mb(train_net, training=True)
    caffe_deploy = caffe_allocation_mb(deploy, training=False)
    cases = [("train", args.batch, caffe_train, f"training, Solver.step, batch {args.batch}")]
    deploy_cases = [("inference", "inference path"), ("default", "default forward")]
    if not args.quick:
        deploy_cases += [("time", "caffe-compat time"), ("convert", "caffe-compat convert -to pt")]
    for case, label in deploy_cases:
        cases.append((case, args.deploy_batch, caffe_deploy, f"deploy b{args.deploy_batch}: {label}"))
    print(
        f"Peak RSS of the whole process (MB), each case in a fresh process (allocator: {args.allocator}); "
        "'Caffe allocates' is computed from Caffe's allocation rules (a lower bound of its RSS, not a "
        "measurement)"
    )
    print(f"{'case':<44}{'before':>9}{'peak':>9}{'Caffe allocates':>17}{'ratio':>8}")
    with tempfile.TemporaryDirectory() as folder:
        from caffe_compat.proto.io import format_text

        (Path(folder) / "deploy.prototxt").write_text(format_text(deploy.net_param))
        deploy.save_caffemodel(Path(folder) / "deploy.caffemodel")
        del train_net, deploy
        for case, batch, caffe_mb, label in cases:
            result = run_child(case, batch, folder, kept=args.allocator == "kept")
            ratio = result["peak"] / caffe_mb
            print(f"{label:<44}{result['before']:>9.0f}{result['peak']:>9.0f}{caffe_mb:>17.0f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()
