"""pycaffe's process-wide functions (``caffe.set_mode_cpu`` ...), ``Timer`` and ``NCCL``.

Modes: computation runs on the CPU, because blob data and diffs are numpy views of the net's
memory; ``set_mode_gpu()`` is accepted (scripts written for GPU machines call it first) and warns
once. ``set_random_seed`` seeds torch's generator, which draws every random number caffe-compat
uses (not Caffe's own streams). There is no NCCL: ``has_nccl()`` is False, ``NCCL`` objects do
nothing, and the solver count stays what ``set_solver_count`` says.
"""

from __future__ import annotations

import os
import sys
import time
import warnings

import torch

from caffe_compat.layers.registry import registered_types
from caffe_compat.log.glog import GlogWriter

__version__ = "1.0.0"

_state = {"mode": "CPU", "device": 0, "solver_count": 1, "solver_rank": 0, "multiprocess": False,
          "warned_gpu": False, "min_level": int(os.environ.get("GLOG_minloglevel") or 0)}  # fmt: skip


def set_mode_cpu() -> None:
    _state["mode"] = "CPU"


def set_mode_gpu() -> None:
    """Accepted; pycaffe's nets still compute on the CPU (warned once)."""
    _state["mode"] = "GPU"
    if not _state["warned_gpu"]:
        _state["warned_gpu"] = True
        warnings.warn(
            "caffe_compat's pycaffe computes on the CPU (blob data and diffs are numpy views of the "
            "net's memory); use caffe_compat.Net/Solver or `caffe-compat train -gpu 0` for CUDA",
            RuntimeWarning,
            stacklevel=2,
        )


def set_device(device_id: int) -> None:
    _state["device"] = int(device_id)


def set_random_seed(seed: int) -> None:
    """Seed torch's generator (fillers, Dropout, data shuffling)."""
    torch.manual_seed(int(seed))


def layer_type_list() -> list[str]:
    """The registered layer types and ``Python`` (sorted, as Caffe's registry lists them)."""
    return sorted({*registered_types(), "Python"})


def has_nccl() -> bool:
    return False


def solver_count() -> int:
    return _state["solver_count"]


def set_solver_count(count: int) -> None:
    _state["solver_count"] = int(count)


def solver_rank() -> int:
    return _state["solver_rank"]


def set_solver_rank(rank: int) -> None:
    _state["solver_rank"] = int(rank)


def set_multiprocess(multiprocess: bool) -> None:
    _state["multiprocess"] = bool(multiprocess)


def init_log(level: int = 0, stderr: bool = True) -> None:
    """Caffe's ``init_log``: messages below ``level`` (0 INFO, 1 WARNING, 2 ERROR) are dropped."""
    _state["min_level"] = int(level)


def log_writer() -> GlogWriter:
    """Where the solvers log: stderr, or nowhere when ``init_log(level)`` or the environment's
    ``GLOG_minloglevel`` (as Caffe users set it) drops INFO lines."""
    return GlogWriter(sys.stderr) if _state["min_level"] <= 0 else GlogWriter(None)


def log(message: str) -> None:
    """One INFO line in Caffe's log format on stderr."""
    if _state["min_level"] <= 0:
        GlogWriter(sys.stderr).info(str(message), "_caffe.cpp:62")


class Timer:
    """``caffe.Timer``: ``start()``, ``stop()``, ``ms`` (milliseconds between them)."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._elapsed = 0.0

    def start(self) -> None:
        self._start = time.perf_counter()

    def stop(self) -> None:
        if self._start is not None:
            self._elapsed = time.perf_counter() - self._start
            self._start = None

    @property
    def ms(self) -> float:
        if self._start is not None:
            self.stop()
        return self._elapsed * 1000.0


class NCCL:
    """``caffe.NCCL`` of a Caffe built without NCCL: constructing it does nothing."""

    def __init__(self, solver: object = None, uid: object = "") -> None:
        self.solver = solver
        self.uid = uid
