"""Can the ImageData layer feed the AM-Softmax face net? Images per second of the data layer at
112x96 (PNG decode, Caffe's transform: mean 128, scale 1/128, random mirror, shuffled list) with
0 (in the calling thread), 1 and 2 worker processes, side by side with the forward+backward images
per second of the face net (prototxt/amsoftmax/face_train_test.prototxt, TRAIN phase, built with
input_shapes and fed random data), measured in one run on this machine.

    python benchmarks/bench_data_loading.py [--batch 64] [--batches 20] [--net-batch 16] [--net-iters 3]

The ratio column is loader images/s over net images/s: above 1 the loader keeps ahead of training
(with workers it decodes while the net computes, so a training step does not wait on decoding).
The row "own ImageData" trains the face net reading its own (overridden) TRAIN data layer with one
worker: its ratio near 1 shows that decoding overlaps with compute.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import caffe_compat as cc
from caffe_compat.data.overrides import apply_overrides
from caffe_compat.data.synthetic_faces import make_faces

ROOT = Path(__file__).resolve().parent.parent
FACE_NET = ROOT / "prototxt" / "amsoftmax" / "face_train_test.prototxt"

LAYER = """
layer {{ name: "data" type: "ImageData" top: "data" top: "label"
        transform_param {{ mean_value: 128 scale: 0.0078125 mirror: true }}
        image_data_param {{ source: "{source}" root_folder: "{root}/" batch_size: {batch} shuffle: true }} }}
"""


def loader_rate(folder: Path, batch: int, batches: int, workers: int) -> float:
    net = cc.Net(LAYER.format(source=folder / "train.txt", root=folder, batch=batch), phase="TRAIN")
    layer = net.layers["data"]
    layer.seed = 0
    layer.configure_loading(num_workers=workers, prefetch=4)
    for _ in range(2):  # start the workers, fill the queue
        layer.next_batch()
    start = time.perf_counter()
    for _ in range(batches):
        data, _ = layer.next_batch()
        assert data.shape == (batch, 3, 112, 96)
    rate = batch * batches / (time.perf_counter() - start)
    layer.close()
    return rate


def net_rate(batch: int, iters: int, folder: Path | None = None, workers: int = 1) -> float:
    """Forward+backward images/s of the face net: fed random data, or (``folder`` given) reading
    its own TRAIN ImageData layer, pointed at the synthetic set with ``apply_overrides``."""
    torch.manual_seed(0)
    if folder is None:
        net = cc.Net(FACE_NET, phase="TRAIN", input_shapes={"data": (batch, 3, 112, 96), "label": (batch,)})
        inputs = {"data": torch.randn(batch, 3, 112, 96), "label": torch.randint(0, 10516, (batch,)).float()}
    else:
        sets = [
            f"TRAIN:data.image_data_param.source={folder / 'train.txt'}",
            f"TRAIN:data.image_data_param.root_folder={folder}/",
            f"TRAIN:data.image_data_param.batch_size={batch}",
        ]
        net = cc.Net(apply_overrides(cc.read_net(FACE_NET), sets), phase="TRAIN")
        net.layers["data"].configure_loading(num_workers=workers)
        inputs = {}

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net.loss(net(**inputs)).backward()

    step()  # warm-up
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return batch * iters / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64, help="data layer batch size")
    parser.add_argument("--batches", type=int, default=20, help="timed data batches per configuration")
    parser.add_argument("--net-batch", type=int, default=16, help="face net batch size")
    parser.add_argument("--net-iters", type=int, default=3, help="timed forward+backward passes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "faces"
        make_faces(folder, identities=40, per_identity=20, seed=0, folds=10, pairs_per_fold=5)
        loaders = {workers: loader_rate(folder, args.batch, args.batches, workers) for workers in (0, 1, 2)}
        net = net_rate(args.net_batch, args.net_iters)
        fed = net_rate(args.net_batch, args.net_iters, folder, workers=1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'configuration':<52} {'images/s':>10} {'vs net':>8}")
    label = f"face net forward+backward, random inputs (batch {args.net_batch})"
    print(f"{label:<52} {net:>10.1f} {1.0:>8.2f}")
    print(f"{'face net forward+backward, own ImageData, 1 worker':<52} {fed:>10.1f} {fed / net:>8.2f}")
    for workers, rate in loaders.items():
        label = f"ImageData 112x96, {workers} worker{'s' if workers != 1 else ''}"
        label += " (in-thread)" if workers == 0 else ""
        print(f"{label:<52} {rate:>10.1f} {rate / net:>8.2f}")


if __name__ == "__main__":
    main()
