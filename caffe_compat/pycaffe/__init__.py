"""pycaffe's API on caffe-compat: existing Caffe Python scripts run on PyTorch.

``import caffe_compat.pycaffe as caffe`` gives what ``import caffe`` gives with BVLC Caffe:
``Net`` (numpy ``blobs``/``params`` shared with the net, ``forward``/``backward`` from/to any
layer), the solvers, ``Layer`` for Python layers, ``io``, ``NetSpec``/``layers``/``params``,
``coord_map``, ``draw`` (optional ``pydot``), ``Classifier``, ``Detector`` and the process-wide
functions. To run a script unchanged, put the folder ``caffe-compat pycaffe-path`` prints on
``PYTHONPATH``: it holds a ``caffe`` package that is an alias of this one (nothing named ``caffe``
is installed otherwise, so a real pycaffe is never shadowed by installing caffe-compat).

Everything runs on the native ``caffe_compat.Net`` and ``Solver`` (``net.cc_net``,
``solver.cc_solver``), so the numbers are theirs. Python layers are allowed here: pycaffe's API is
the opt-in for them.
"""

from __future__ import annotations

from pathlib import Path

from caffe_compat import proto
from caffe_compat.proto.caffe_pb2 import TEST, TRAIN
from caffe_compat.pycaffe import io
from caffe_compat.pycaffe.blob import Blob, BlobVec
from caffe_compat.pycaffe.classifier import Classifier
from caffe_compat.pycaffe.detector import Detector
from caffe_compat.pycaffe.net import Net, PycaffeError
from caffe_compat.pycaffe.net_spec import NetSpec, layers, params, to_proto
from caffe_compat.pycaffe.python_layer import Layer
from caffe_compat.pycaffe.runtime import (
    NCCL,
    Timer,
    __version__,
    has_nccl,
    init_log,
    layer_type_list,
    log,
    set_device,
    set_mode_cpu,
    set_mode_gpu,
    set_multiprocess,
    set_random_seed,
    set_solver_count,
    set_solver_rank,
    solver_count,
    solver_rank,
)
from caffe_compat.pycaffe.solver import (
    AdaDeltaSolver,
    AdaGradSolver,
    AdamSolver,
    NesterovSolver,
    RMSPropSolver,
    SGDSolver,
    Solver,
    get_solver,
)


def alias_path() -> Path:
    """The folder holding the ``caffe`` alias package (what ``caffe-compat pycaffe-path`` prints)."""
    return Path(__file__).resolve().parent / "alias"


__all__ = [
    "NCCL",
    "TEST",
    "TRAIN",
    "AdaDeltaSolver",
    "AdaGradSolver",
    "AdamSolver",
    "Blob",
    "BlobVec",
    "Classifier",
    "Detector",
    "Layer",
    "NesterovSolver",
    "Net",
    "NetSpec",
    "PycaffeError",
    "RMSPropSolver",
    "SGDSolver",
    "Solver",
    "Timer",
    "__version__",
    "alias_path",
    "get_solver",
    "has_nccl",
    "init_log",
    "io",
    "layer_type_list",
    "layers",
    "log",
    "params",
    "proto",
    "set_device",
    "set_mode_cpu",
    "set_mode_gpu",
    "set_multiprocess",
    "set_random_seed",
    "set_solver_count",
    "set_solver_rank",
    "solver_count",
    "solver_rank",
    "to_proto",
]
