"""The AM-Softmax face nets the speed, memory and scaling benchmarks run, and shared measurements.

``train_param``: ``prototxt/amsoftmax/face_train_test.prototxt`` in TRAIN phase with its ImageData
layers replaced by an Input layer (``data``, ``label``) or a DummyData layer (the solver needs a
net that reads its own batches). ``deploy_param``: ``face_deploy_mirror_normalize.prototxt`` (the
net mirrors its input inside, so batch b runs 2b images) at a chosen batch. ``HandWrittenFaceNet``:
the same train net written directly in PyTorch (the trunk of ``bench_net_overhead``, then
normalize, the normalized-weight classifier, the AM margin, the scale and the softmax loss).

``conv_rate``: the machine's 3x3 convolution rate, measured as the issue defines it: oneDNN
convolution in channels_last at the net's 128- and 256-channel layer shapes (28x24 and 14x12),
forward or forward+backward, GFLOP/s (2 N C^2 9 H W per forward; backward counts twice that).

Real Caffe cannot be installed by pip; its figures are recorded constants (``CAFFE``).
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import caffe_compat as cc
from caffe_compat.proto import caffe_pb2

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_net_overhead import HandWrittenFaceResNet20  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TRAIN_PROTOTXT = ROOT / "prototxt" / "amsoftmax" / "face_train_test.prototxt"
DEPLOY_PROTOTXT = ROOT / "prototxt" / "amsoftmax" / "face_deploy_mirror_normalize.prototxt"
CLASSES = 10516

#: Real Caffe (the happynear/caffe-windows AM-Softmax fork, OpenBLAS), ``caffe time`` on a 2-core
#: AMD EPYC Zen 3 (AVX2/FMA), as recorded in issue 14. Seconds per pass.
CAFFE = {
    "machine": "2-core AMD EPYC Zen 3 (AVX2/FMA), OpenBLAS, `caffe time` (issue 14)",
    "train_batch": 32,
    "train_fwd_bwd_s": (6.6, 7.3),
    "train_gflop": 337.0,
    "deploy_batch": 100,
    "deploy_fwd_s": 23.1,
}


def train_param(batch: int, data: str = "Input", classes: int = CLASSES) -> caffe_pb2.NetParameter:
    """The TRAIN net fed by an Input layer (``data``, ``label``) or a DummyData layer."""
    full = cc.read_net(TRAIN_PROTOTXT)
    param = caffe_pb2.NetParameter(name=full.name)
    source = param.layer.add(name="data", type=data, top=["data", "label"])
    if data == "Input":
        source.input_param.shape.add(dim=[batch, 3, 112, 96])
        source.input_param.shape.add(dim=[batch])
    else:
        dummy = source.dummy_data_param
        dummy.shape.add(dim=[batch, 3, 112, 96])
        dummy.shape.add(dim=[batch])
        dummy.data_filler.add(type="gaussian", std=1.0)
        dummy.data_filler.add(type="constant", value=1.0)
    for layer in full.layer:
        if layer.type == "ImageData" or any(r.phase == caffe_pb2.TEST for r in layer.include):
            continue
        copy = param.layer.add()
        copy.CopyFrom(layer)
        if copy.type == "InnerProduct" and copy.inner_product_param.num_output == CLASSES:
            copy.inner_product_param.num_output = classes
    return param


def deploy_param(batch: int) -> caffe_pb2.NetParameter:
    """The mirrored deploy net at input batch ``batch`` (2 * batch images run inside)."""
    param = cc.read_net(DEPLOY_PROTOTXT)  # its input_dim is upgraded to an Input layer
    param.layer[0].input_param.shape[0].dim[0] = batch
    return param


def labels(batch: int, classes: int = CLASSES) -> torch.Tensor:
    return (torch.arange(batch) * 7919 % classes).float()


class HandWrittenFaceNet(nn.Module):
    """The AM-Softmax train net in plain PyTorch: trunk, normalize, cosine classifier, margin 0.35
    where the cosine exceeds it (Caffe's LabelSpecificAdd), scale 30, softmax loss."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.trunk = HandWrittenFaceResNet20()
        self.fc6 = nn.Parameter(torch.randn(classes, 512) * 0.01)

    def forward(self, x: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        feature = F.normalize(self.trunk(x), dim=1)
        cos = F.linear(feature, F.normalize(self.fc6, dim=1))
        index = label.long().unsqueeze(1)
        target = cos.gather(1, index)
        cos = cos.scatter(1, index, torch.where(target > 0.35, target - 0.35, target))
        return F.cross_entropy(cos * 30.0, label.long())


def median_times(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, run interleaved (one of each per round) after a warm-up."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def count_flops(fn: Callable[[], object]) -> float:
    """FLOPs ``torch.utils.flop_counter`` counts for one call (convolutions and matrix products)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def conv_case(batch: int, channels: int, height: int, width: int, backward: bool) -> tuple[Callable, float]:
    """One channels_last 3x3 convolution (stride 1, pad 1) and its FLOPs."""
    x = torch.randn(batch, channels, height, width).contiguous(memory_format=torch.channels_last)
    w = (torch.randn(channels, channels, 3, 3) * 0.02).contiguous(memory_format=torch.channels_last)
    b = torch.zeros(channels)
    flops = 2.0 * batch * channels * channels * 9 * height * width
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                F.conv2d(x, w, b, 1, 1)

        return forward, flops
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()

    def forward_backward() -> None:
        y = F.conv2d(x, w, b, 1, 1)
        y.backward(torch.ones_like(y))
        x.grad = w.grad = b.grad = None

    return forward_backward, 3 * flops


#: The net's 128- and 256-channel 3x3 layers (stage 2 at 28x24, stage 3 at 14x12).
CONV_SHAPES = ((128, 28, 24), (256, 14, 12))


def conv_cases(batch: int, backward: bool) -> dict[str, tuple[Callable, float]]:
    return {f"conv3x3 {c}ch {h}x{w}": conv_case(batch, c, h, w, backward) for c, h, w in CONV_SHAPES}


def train_step(net: cc.Net, x: torch.Tensor, label: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        net.zero_grad(set_to_none=True)
        net.loss(net(data=x, label=label)).backward()

    return step


def hand_step(model: HandWrittenFaceNet, x: torch.Tensor, label: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(x, label).backward()

    return step


def inference(net: cc.Net, x: torch.Tensor) -> Callable[[], None]:
    """The deploy net's inference path: no autograd, only the outputs kept."""

    def forward() -> None:
        kept = net.keep_blobs
        net.keep_blobs = False
        try:
            with torch.inference_mode():
                net(data=x)
        finally:
            net.keep_blobs = kept

    return forward


def peak_rss_mb() -> float:
    """This process's peak resident set (Linux ``VmHWM``), MB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")
