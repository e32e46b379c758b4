"""Net-builder overhead: the AM-Softmax trunk built from its prototxt vs a hand-written PyTorch module.

The trunk is ``prototxt/amsoftmax/face_train_test.prototxt`` from ``conv1_1`` to ``fc5`` (the
20-layer residual net, full width, 112x96 input) fed by an Input layer. The hand-written module
has the same architecture in plain ``nn.Conv2d``/``nn.PReLU``/``nn.Linear``; it gets the same
weights, and the outputs are checked equal before timing. Forward+backward is timed for both,
interleaved in one process; the table prints medians and the ratio (target: at most 1.05).

    python benchmarks/bench_net_overhead.py [--batch 8] [--repeats 15]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

import caffe_compat as cc
from caffe_compat.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOTXT = ROOT / "prototxt" / "amsoftmax" / "face_train_test.prototxt"


def trunk_param(batch: int) -> caffe_pb2.NetParameter:
    """The prototxt's layers from conv1_1 to fc5, fed by an Input layer."""
    full = cc.read_net(PROTOTXT)
    trunk = caffe_pb2.NetParameter(name="face_trunk")
    data = trunk.layer.add(name="data", type="Input", top=["data"])
    data.input_param.shape.add(dim=[batch, 3, 112, 96])
    started = False
    for layer in full.layer:
        started = started or layer.name == "conv1_1"
        if started:
            trunk.layer.add().CopyFrom(layer)
        if layer.name == "fc5":
            break
    return trunk


class HandWrittenFaceResNet20(nn.Module):
    """The same 20-layer residual face net, written directly in PyTorch."""

    STAGES = ((64, 1), (128, 2), (256, 4), (512, 1))  # (channels, residual blocks)

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        self.blocks = nn.ModuleList()
        channels_in = 3
        for channels, blocks in self.STAGES:
            self.down.append(nn.Sequential(nn.Conv2d(channels_in, channels, 3, 2, 1), nn.PReLU(channels)))
            self.blocks.append(
                nn.ModuleList(
                    nn.Sequential(
                        nn.Conv2d(channels, channels, 3, 1, 1),
                        nn.PReLU(channels),
                        nn.Conv2d(channels, channels, 3, 1, 1),
                        nn.PReLU(channels),
                    )
                    for _ in range(blocks)
                )
            )
            channels_in = channels
        self.fc5 = nn.Linear(512 * 7 * 6, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for down, blocks in zip(self.down, self.blocks, strict=True):
            x = down(x)
            for block in blocks:
                x = x + block(x)
        return self.fc5(x.flatten(1))

    def load_from(self, net: cc.Net) -> None:
        """Copy the Caffe net's blobs in architecture order (convs, PReLUs, then fc5)."""
        convs = [blobs for name, blobs in net.params.items() if name.startswith("conv")]
        prelus = [blobs for name, blobs in net.params.items() if name.startswith("relu")]
        in_order = [
            module
            for down, blocks in zip(self.down, self.blocks, strict=True)
            for module in [*down, *(m for block in blocks for m in block)]
        ]
        mine_convs = [m for m in in_order if isinstance(m, nn.Conv2d)]
        mine_prelus = [m for m in in_order if isinstance(m, nn.PReLU)]
        with torch.no_grad():
            for module, (weight, bias) in zip(mine_convs, convs, strict=True):
                module.weight.copy_(weight)
                module.bias.copy_(bias)
            for module, (slope,) in zip(mine_prelus, prelus, strict=True):
                module.weight.copy_(slope)
            weight, bias = net.params["fc5"]
            self.fc5.weight.copy_(weight)
            self.fc5.bias.copy_(bias)


def step(model: nn.Module, x: torch.Tensor, caffe: bool) -> float:
    start = time.perf_counter()
    out = model(data=x)["fc5"] if caffe else model(x)
    out.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = cc.Net(trunk_param(args.batch), phase="TRAIN")
    hand = HandWrittenFaceResNet20()
    hand.load_from(net)
    x = torch.randn(args.batch, 3, 112, 96)
    with torch.no_grad():
        difference = (net(data=x)["fc5"] - hand(x)).abs().max().item()
    for _ in range(2):  # warm-up
        step(net, x, True), step(hand, x, False)
    ours, theirs = [], []
    for _ in range(args.repeats):
        ours.append(step(net, x, True))
        theirs.append(step(hand, x, False))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(
        f"AM-Softmax trunk (conv1_1..fc5), batch {args.batch}x3x112x96, forward+backward, "
        f"median of {args.repeats} interleaved runs; outputs differ by at most {difference:.2e}"
    )
    print(f"{'model':<36}{'ms':>10}{'ratio':>10}")
    print(f"{'hand-written nn.Module':<36}{b * 1e3:>10.1f}{1.0:>10.3f}")
    print(f"{'caffe_compat.Net (fx graph)':<36}{a * 1e3:>10.1f}{a / b:>10.3f}")
    print(f"target: ratio <= 1.05: {'met' if a / b <= 1.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
