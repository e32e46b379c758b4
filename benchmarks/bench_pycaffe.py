"""pycaffe's layer-by-layer ``caffe.Net`` vs the native ``cc.Net`` (one fx graph) on the same net.

Two jobs on the AM-Softmax face nets (full width, 112x96 input): the deploy net's forward pass
(``face_deploy_mirror_normalize.prototxt``, feature extraction: no layer needs backward), and the
20-layer trunk's forward+backward (``face_train_test.prototxt`` from ``conv1_1`` to ``fc5`` with a
Euclidean loss, as ``bench_net_overhead.py`` builds it). Both nets get the same weights; the
outputs are checked equal before timing; the runs interleave in one process and the table prints
medians and the ratio pycaffe / native.

    python benchmarks/bench_pycaffe.py [--batch 8] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import caffe_compat as cc
import caffe_compat.pycaffe as caffe
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import format_text, read_net

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_net_overhead import trunk_param  # noqa: E402

DEPLOY = ROOT / "prototxt" / "amsoftmax" / "face_deploy_mirror_normalize.prototxt"


def _median_ms(job, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        job()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _deploy(folder: Path, batch: int, repeats: int) -> tuple[float, float]:
    param = read_net(DEPLOY)
    param.layer[0].input_param.shape[0].dim[0] = batch
    path = folder / "deploy.prototxt"
    path.write_text(format_text(param))
    native = cc.Net(path, phase="TEST")
    native.save_caffemodel(folder / "deploy.caffemodel")
    net = caffe.Net(str(path), caffe.TEST, weights=str(folder / "deploy.caffemodel"))
    x = np.random.default_rng(0).standard_normal(net.blobs["data"].shape).astype(np.float32)
    net.blobs["data"].data[...] = x
    tensor = torch.from_numpy(x)

    def run_native() -> None:
        with torch.no_grad():
            native(data=tensor)

    run_native()
    net.forward()
    for name in native.output_names:
        np.testing.assert_array_equal(net.blobs[name].data, native.blobs[name].numpy())
    times_native, times_py = [], []
    for _ in range(repeats):
        times_native.append(_median_ms(run_native, 1))
        times_py.append(_median_ms(net.forward, 1))
    return statistics.median(times_py), statistics.median(times_native)


def _train(folder: Path, batch: int, repeats: int) -> tuple[float, float]:
    param = trunk_param(batch)
    target_layer = param.layer.add(name="target", type="Input", top=["target"])
    target_layer.input_param.shape.add(dim=[batch, 512])
    param.layer.add().CopyFrom(
        caffe_pb2.LayerParameter(name="loss", type="EuclideanLoss", bottom=["fc5", "target"], top=["loss"])
    )
    path = folder / "trunk.prototxt"
    path.write_text(format_text(param))
    native = cc.Net(path, phase="TRAIN")
    native.save_caffemodel(folder / "trunk.caffemodel")
    net = caffe.Net(str(path), caffe.TRAIN, weights=str(folder / "trunk.caffemodel"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal(net.blobs["data"].shape).astype(np.float32)
    target = rng.standard_normal((batch, 512)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.blobs["target"].data[...] = target
    inputs = {"data": torch.from_numpy(x), "target": torch.from_numpy(target)}

    def run_native() -> None:
        for p in native.parameters():
            p.grad = None
        native.loss(native(**inputs)).backward()

    def run_py() -> None:
        net.clear_param_diffs()
        net.forward()
        net.backward()

    run_native()
    run_py()
    np.testing.assert_array_equal(net.params["fc5"][0].diff, native.params["fc5"][0].grad.numpy())
    times_native, times_py = [], []
    for _ in range(repeats):
        times_native.append(_median_ms(run_native, 1))
        times_py.append(_median_ms(run_py, 1))
    return statistics.median(times_py), statistics.median(times_native)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        rows = [
            ("deploy forward (feature extraction)", *_deploy(Path(folder), args.batch, args.repeats)),
            ("trunk forward+backward", *_train(Path(folder), args.batch, args.repeats)),
        ]
    print(f"batch {args.batch}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| job | caffe.Net ms | cc.Net ms | ratio |")
    print("| --- | --- | --- | --- |")
    for name, mine, native in rows:
        print(f"| {name} | {mine:.1f} | {native:.1f} | {mine / native:.2f}x |")


if __name__ == "__main__":
    main()
