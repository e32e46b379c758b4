"""The training child of test_snapshot_kill (a module of its own: the forkserver imports it).

Importing it builds and trains a tiny net once, so the forkserver's children start warm (torch.fx
code generation and the first autograd pass cost a second in a fresh process).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import torch

from caffe_compat.log.glog import GlogWriter
from caffe_compat.net.net import Net
from caffe_compat.solver import snapshot as snap
from caffe_compat.solver.solver import Solver

PREFIX = "snaps/mlp"


#: Seconds each iteration of a child waits (a solver callback): the job lasts about a second
#: whatever the machine's speed, so kills at random moments land inside it. Numbers are unchanged.
PACE = 0.03


def train(work: Path, resume: bool, pace: float = 0.0) -> None:
    """Train to the end in ``work``, resuming from the newest complete set when asked and found."""
    torch.set_num_threads(1)
    os.chdir(work)
    solver = Solver("solver.prototxt", "init.caffemodel", log=GlogWriter(stream=None))
    if pace:
        solver.add_callback(lambda: time.sleep(pace), lambda: None)
    latest = snap.latest_snapshot(PREFIX) if resume else None
    if latest is not None:
        solver.restore(latest)
    solver.solve()


def child(work: str, kill_at: int, after: bool) -> None:
    """Train in a child; with ``kill_at`` >= 0, SIGKILL itself just before (or after) its
    ``kill_at``-th ``os.replace`` (0 = the first file of its first snapshot set)."""
    if kill_at >= 0:
        real = os.replace
        count = [0]

        def replace(src: object, dst: object) -> None:
            if count[0] == kill_at and not after:
                os.kill(os.getpid(), signal.SIGKILL)
            real(src, dst)
            if count[0] == kill_at and after:
                os.kill(os.getpid(), signal.SIGKILL)
            count[0] += 1

        os.replace = replace
    train(Path(work), resume=True, pace=PACE)


def _warm_up() -> None:
    net = Net(
        'layer { name: "x" type: "Input" top: "x" top: "y" input_param { shape { dim: 2 dim: 3 } '
        'shape { dim: 2 } } } layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" '
        "inner_product_param { num_output: 2 } } "
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }'
    )
    net.loss(net(x=torch.ones(2, 3), y=torch.zeros(2))).backward()


_warm_up()
