"""``caffe-compat train`` under torchrun: what the command needs to know about the launch.

``train_job(args, solver_param)`` yields a ``TrainJob``: in one process a plain job (the
``Solver``); under torchrun (``RANK``/``WORLD_SIZE`` set) it joins the process group on this
rank's device (Caffe's ``-gpu`` list indexed by the local rank) and makes a
``DistributedSolver``; rank 0 alone logs. After a restart by ``torchrun --max-restarts``
(``TORCHELASTIC_RESTART_COUNT`` > 0) training resumes from the newest complete snapshot of the
solver's ``snapshot_prefix``, if there is one.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from caffe_compat.distributed.runtime import Replicas, init_from_env, launched, pick_device, shutdown
from caffe_compat.errors import CaffeCompatError
from caffe_compat.log.glog import GlogWriter
from caffe_compat.proto import caffe_pb2

RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The distributed options of ``caffe-compat train``."""
    parser.add_argument(
        "--model-parallel",
        "--model_parallel",
        dest="model_parallel",
        default="",
        metavar="LAYER[,LAYER]",
        help="under torchrun: shard these classifier layers (InnerProduct, MarginInnerProduct, MarginHead) "
        "by class over the ranks (PartialFC)",
    )
    parser.add_argument(
        "--sample-rate",
        "--sample_rate",
        dest="sample_rate",
        type=float,
        default=1.0,
        help="with --model-parallel MarginHead layers: the fraction of each rank's classes sampled per "
        "pass in TRAIN (PartialFC; 1 = all)",
    )


@dataclass
class TrainJob:
    """One training process: alone, or one rank of a torchrun job."""

    replicas: Replicas | None = None
    device: torch.device | None = None
    options: dict = field(default_factory=dict)

    @property
    def is_main(self) -> bool:
        return self.replicas is None or self.replicas.is_main

    @property
    def restarts(self) -> int:
        return int(os.environ.get(RESTART_ENV, "0") or 0) if self.replicas is not None else 0

    def quiet_log(self) -> GlogWriter:
        """The writer of a rank other than 0: nothing is written."""
        return GlogWriter(stream=None)

    def make_solver(self, solver_path: str, **kwargs):
        if self.replicas is None:
            from caffe_compat.solver.solver import Solver

            return Solver(solver_path, **kwargs)
        from caffe_compat.distributed.solver import DistributedSolver

        return DistributedSolver(solver_path, replicas=self.replicas, **kwargs, **self.options)

    def resume_file(self, snapshot: str, solver) -> str:
        """The solverstate to resume from: after a torchrun restart, the newest complete snapshot
        (else ``snapshot``, which may be empty)."""
        if self.restarts and solver.param.snapshot_prefix:
            from caffe_compat.solver.snapshot import latest_snapshot

            latest = latest_snapshot(solver.param.snapshot_prefix)
            if latest is not None:
                solver.log.info(
                    f"Restart {self.restarts} of this torchrun job: resuming from the last snapshot {latest}",
                    "parallel.cpp:0",
                )
                return str(latest)
        return snapshot


@contextmanager
def train_job(args: argparse.Namespace, solver_param: caffe_pb2.SolverParameter) -> Iterator[TrainJob]:
    """The job of this process (see the module docstring); leaves the process group at the end."""
    model_parallel = [name.strip() for name in getattr(args, "model_parallel", "").split(",") if name.strip()]
    sample_rate = float(getattr(args, "sample_rate", 1.0))
    if not launched():
        if model_parallel or sample_rate != 1.0:
            raise CaffeCompatError(
                "--model-parallel and --sample-rate need a torchrun launch (docs/distributed.md)"
            )
        yield TrainJob()
        return
    if not 0.0 < sample_rate <= 1.0:
        raise CaffeCompatError(f"--sample-rate must be in (0, 1], got {sample_rate}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    gpu_mode = solver_param.solver_mode == caffe_pb2.SolverParameter.GPU
    device = pick_device(gpu_mode, getattr(args, "gpu", ""), local_rank)
    replicas = init_from_env(device)
    try:
        yield TrainJob(replicas, device, {"model_parallel": model_parallel, "sample_rate": sample_rate})
    except BaseException:
        shutdown()
        raise
    else:
        shutdown(synchronize=True)
