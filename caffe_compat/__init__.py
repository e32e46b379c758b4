"""caffe-compat: original Caffe models and training configs, run faithfully on PyTorch.

The public API and nothing else; see the README for the contracts. ``Net`` and ``Solver`` load
torch, so they are imported on first use: ``caffe_compat.eval``'s metrics and the file readers
work without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caffe_compat.proto.caffe_pb2 import TEST, TRAIN
from caffe_compat.proto.io import read_blobproto, read_caffemodel, read_net, read_solver, write_caffemodel

if TYPE_CHECKING:
    from caffe_compat.net.net import Net
    from caffe_compat.solver.solver import Solver

__version__ = "0.1.0"

__all__ = [
    "TEST",
    "TRAIN",
    "Net",
    "Solver",
    "read_blobproto",
    "read_caffemodel",
    "read_net",
    "read_solver",
    "write_caffemodel",
]

_LAZY = {"Net": "caffe_compat.net.net", "Solver": "caffe_compat.solver.solver"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'caffe_compat' has no attribute {name!r}")
