"""Conversion cost and exported-model speed, side by side in one run.

Part 1: converting a ~100 MB caffemodel (a chain of InnerProduct layers) to each format, each in a
fresh Python process: wall time and the peak resident memory the conversion adds to the process
(Linux ``VmHWM`` minus the resident size after imports). The same conversion of a one-layer model
(25 MB) is measured too, and the memory per caffemodel byte is the difference of the two peaks
over the difference of the sizes: the fixed cost of code loaded on first use (the ONNX exporter,
fx code generation) is not a copy of the weights. Target (convert issue): at most about 2.5x the
caffemodel. The first row, building the Net and loading the weights, is the floor every
conversion starts from (the ordinary ``caffe_compat.Net(..., weights=...)`` is shown below it).

Part 2: inference latency of the AM-Softmax face deploy net (random weights, batch 1): the
caffe_compat Net, the generated standalone module, the TorchScript file and ONNX Runtime, each
with the same number of intra-op threads (default 1: with more, a busy shared machine makes
torch's OpenMP workers spin and the numbers meaningless); the median of interleaved runs and the
ratio to the caffe_compat Net.

    python benchmarks/bench_convert.py [--mb 100] [--repeats 20] [--threads 1]
                                       [--skip-memory] [--skip-latency]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FACE_DEPLOY = ROOT / "prototxt" / "amsoftmax" / "face_deploy_mirror_normalize.prototxt"
WIDTH = 2500
FORMATS = ("pt", "py", "onnx", "torchscript", "caffemodel")

_CHILD = r"""
import json, sys, time
import caffe_compat
from caffe_compat.export.convert import convert, load_weights
from caffe_compat.net.net import Net

def status_mb(field):
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across exec.
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1e3

model, weights, fmt, output = sys.argv[1:5]
base = status_mb("VmRSS")
start = time.perf_counter()
if fmt == "load":
    from caffe_compat.export.build import net_for_weights
    net = net_for_weights(model)
    load_weights(net, weights)
elif fmt == "Net":
    net = Net(model, weights=weights, phase="TEST")
else:
    convert(model, weights, fmt, output, verify=sys.argv[5] == "1")
seconds = time.perf_counter() - start
peak = status_mb("VmHWM")
print(json.dumps({"seconds": seconds, "added_mb": peak - base}))
"""


def make_model(folder: Path, megabytes: int) -> tuple[Path, Path]:
    """A prototxt of InnerProduct layers (WIDTH x WIDTH) and a caffemodel of random weights."""
    from caffe_compat.proto import caffe_pb2
    from caffe_compat.proto.io import array_to_blob, format_text, write_caffemodel

    layers = max(1, megabytes * 1_000_000 // (WIDTH * WIDTH * 4))
    net = caffe_pb2.NetParameter(name="bench_ip_chain")
    data = net.layer.add(name="data", type="Input", top=["x0"])
    data.input_param.shape.add().dim.extend([1, WIDTH])
    weights = caffe_pb2.NetParameter(name="bench_ip_chain")
    rng = np.random.default_rng(0)
    for i in range(layers):
        layer = net.layer.add(name=f"fc{i}", type="InnerProduct", bottom=[f"x{i}"], top=[f"x{i + 1}"])
        layer.inner_product_param.num_output = WIDTH
        stored = weights.layer.add()
        stored.CopyFrom(layer)
        scale = np.float32(1.0 / np.sqrt(WIDTH))
        array_to_blob(rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) * scale, stored.blobs.add())
        array_to_blob(np.zeros(WIDTH, dtype=np.float32), stored.blobs.add())
    prototxt = folder / "chain.prototxt"
    prototxt.write_text(format_text(net))
    caffemodel = folder / "chain.caffemodel"
    write_caffemodel(weights, caffemodel)
    return prototxt, caffemodel


def measure(prototxt: Path, caffemodel: Path, fmt: str, folder: Path, verify: bool) -> dict:
    output = folder / ("chain_out.py" if fmt == "py" else f"chain_out.{fmt}")
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(prototxt),
            str(caffemodel),
            fmt,
            str(output),
            "1" if verify else "0",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def memory_table(megabytes: int) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        small_folder = folder / "small"
        small_folder.mkdir()
        prototxt, caffemodel = make_model(folder, megabytes)
        small_prototxt, small_caffemodel = make_model(small_folder, 1)
        size = caffemodel.stat().st_size / 1e6
        small_size = small_caffemodel.stat().st_size / 1e6
        print(
            f"\nconverting a {size:.0f} MB caffemodel ({prototxt.name}: InnerProduct chain) and a "
            f"{small_size:.0f} MB "
            "one, one process per conversion"
        )
        print(f"{'what':<38}{'seconds':>9}{'peak added MB':>15}{'(small model)':>15}{'x per MB':>10}")
        rows = [
            ("build Net (meta) + stream weights", "load", True),
            ("caffe_compat.Net(weights=...)", "Net", True),
        ]
        rows += [(f"convert --to {fmt}", fmt, True) for fmt in FORMATS]
        rows += [("convert --to onnx --no-verify", "onnx", False)]
        worst = 0.0
        for label, fmt, verify in rows:
            result = measure(prototxt, caffemodel, fmt, folder, verify)
            small = measure(small_prototxt, small_caffemodel, fmt, small_folder, verify)
            ratio = (result["added_mb"] - small["added_mb"]) / (size - small_size)
            if fmt not in ("load", "Net"):
                worst = max(worst, ratio)
            print(
                f"{label:<38}{result['seconds']:>9.2f}{result['added_mb']:>15.0f}{small['added_mb']:>15.0f}"
                f"{ratio:>10.2f}"
            )
        print(
            f"target: <= ~2.5 MB of memory per caffemodel MB: {'met' if worst <= 2.5 else 'NOT met'} "
            f"(worst {worst:.2f})"
        )


def latency_table(repeats: int, threads: int) -> None:
    import os

    import onnxruntime
    import torch

    import caffe_compat as cc
    from caffe_compat.export.convert import convert
    from caffe_compat.export.standalone import import_file
    from caffe_compat.export.trace import example_inputs

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        net = cc.Net(FACE_DEPLOY, phase="TEST")
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for tensor in net.parameters():
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
        weights = folder / "face.caffemodel"
        net.save_caffemodel(weights)
        for fmt, out in (("py", "face_net.py"), ("torchscript", "face.ts"), ("onnx", "face.onnx")):
            convert(FACE_DEPLOY, weights, fmt, folder / out, batch=1)
        source = cc.Net(FACE_DEPLOY, weights=weights, phase="TEST")
        generated = import_file(folder / "face_net.py").load()
        scripted = torch.jit.load(str(folder / "face.ts"))
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(folder / "face.onnx"), options, providers=["CPUExecutionProvider"]
        )
        x = example_inputs({"data": (1, 3, 112, 96)})["data"]
        feed = {"data": x.numpy()}
        runners = {
            "caffe_compat.Net (eager)": lambda: source(data=x),
            "generated net.py (eager)": lambda: generated(data=x),
            "TorchScript (torch.jit.load)": lambda: scripted(x),
            "ONNX Runtime (CPU)": lambda: session.run(None, feed),
        }
        times: dict[str, list[float]] = {key: [] for key in runners}
        with torch.no_grad():
            for run in runners.values():  # warm up
                run()
                run()
            for _ in range(repeats):
                for key, run in runners.items():
                    start = time.perf_counter()
                    run()
                    times[key].append(time.perf_counter() - start)
    base = statistics.median(times["caffe_compat.Net (eager)"])
    print(
        f"\nface deploy net (AM-Softmax, {FACE_DEPLOY.name}), batch 1 (x2 mirrored), {threads} thread(s) "
        f"each, median of {repeats} interleaved runs (load average {os.getloadavg()[0]:.1f})"
    )
    print(f"{'runtime':<32}{'ms':>9}{'ratio':>9}")
    for key, values in times.items():
        median = statistics.median(values)
        print(f"{key:<32}{median * 1e3:>9.2f}{median / base:>9.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="intra-op threads of torch and ONNX Runtime (1: steady on a busy box)",
    )
    args = parser.parse_args()
    if not args.skip_memory:
        memory_table(args.mb)
    if not args.skip_latency:
        latency_table(args.repeats, args.threads)


if __name__ == "__main__":
    main()
