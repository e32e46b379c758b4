"""caffe-compat: original Caffe models and training configs, run faithfully on PyTorch.

The public API and nothing else; see the README for the contracts.
"""

from caffe_compat.net.net import TEST, TRAIN, Net
from caffe_compat.proto.io import read_blobproto, read_caffemodel, read_net, read_solver, write_caffemodel

__version__ = "0.1.0"

__all__ = [
    "TEST",
    "TRAIN",
    "Net",
    "read_blobproto",
    "read_caffemodel",
    "read_net",
    "read_solver",
    "write_caffemodel",
]
