"""Caffe's update rules (``ComputeUpdateValue`` of each solver in src/caffe/solvers/*.cpp).

Each rule turns a parameter's diff (already clipped, normalized by ``iter_size`` and regularized)
and its history blobs into the step ``Net::Update`` subtracts from the data. Constants are rounded
to float32 first, as Caffe's ``Dtype`` holds them, and the operations follow Caffe's order:

- SGD (sgd_solver.cpp): ``h = momentum*h + local_rate*diff``; step ``h`` (the rate is folded into
  the momentum history, unlike ``torch.optim.SGD``).
- Nesterov (nesterov_solver.cpp): as SGD, step ``(1+momentum)*h_new - momentum*h_old``.
- AdaGrad (adagrad_solver.cpp): ``h += diff^2``; step ``local_rate * diff / (sqrt(h) + delta)``.
- RMSProp (rmsprop_solver.cpp): ``h = rms_decay*h + (1-rms_decay)*diff^2``; step as AdaGrad.
- AdaDelta (adadelta_solver.cpp): ``h = m*h + (1-m)*diff^2`` (m = ``momentum``);
  ``d = diff * sqrt((h2 + delta) / (h + delta))``; ``h2 = m*h2 + (1-m)*d^2``; step
  ``local_rate * d``. Its second history set (``h2``) follows the first in the solverstate.
- Adam (adam_solver.cpp): ``m = b1*m + (1-b1)*diff``; ``v = b2*v + (1-b2)*diff^2``; step
  ``local_rate * sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + delta)`` with ``t = iter + 1``: the
  epsilon is added before the bias correction (``torch.optim.Adam`` adds it after). ``v`` is the
  second history set.

The constructor checks what each Caffe solver's constructor checks (AdaGrad and RMSProp take no
momentum; RMSProp's ``rms_decay`` lies in [0, 1)).
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch

from caffe_compat.errors import SolverError
from caffe_compat.proto import caffe_pb2

_f32 = np.float32


def _c(value: float) -> float:
    """A constant as Caffe's float ``Dtype`` holds it (as a Python float for torch ops)."""
    return float(_f32(value))


class UpdateRule:
    """Base of the update rules.

    Attributes:
        type_name: the solver ``type`` string.
        history_sets: how many history blobs each learnable blob has (stored set after set).
    """

    type_name: ClassVar[str] = ""
    history_sets: ClassVar[int] = 1

    def __init__(self, param: caffe_pb2.SolverParameter, source: str = "solver") -> None:
        self.param = param
        self.source = source
        self.momentum = _c(param.momentum)
        self.delta = _c(param.delta)

    def compute(
        self, diff: torch.Tensor, history: list[torch.Tensor], local_rate: np.float32, iteration: int
    ) -> torch.Tensor:
        """The step for one blob; ``history`` holds its ``history_sets`` blobs, updated in place."""
        raise NotImplementedError


class SGD(UpdateRule):
    type_name = "SGD"

    def compute(
        self, diff: torch.Tensor, history: list[torch.Tensor], local_rate: np.float32, iteration: int
    ) -> torch.Tensor:
        (h,) = history
        h.mul_(self.momentum).add_(diff, alpha=float(local_rate))
        # the history itself is the step (nothing changes it before the update is applied): no
        # copy of every parameter's size per iteration
        return h


class Nesterov(UpdateRule):
    type_name = "Nesterov"

    def compute(
        self, diff: torch.Tensor, history: list[torch.Tensor], local_rate: np.float32, iteration: int
    ) -> torch.Tensor:
        (h,) = history
        previous = h.clone()
        h.mul_(self.momentum).add_(diff, alpha=float(local_rate))
        return h * _c(1 + _f32(self.momentum)) - previous * self.momentum


class AdaGrad(UpdateRule):
    type_name = "AdaGrad"

    def __init__(self, param: caffe_pb2.SolverParameter, source: str = "solver") -> None:
        super().__init__(param, source)
        if param.momentum != 0:
            raise SolverError(
                f"{source}: momentum cannot be used with AdaGrad (momentum: {param.momentum:g})"
            )

    def compute(
        self, diff: torch.Tensor, history: list[torch.Tensor], local_rate: np.float32, iteration: int
    ) -> torch.Tensor:
        (h,) = history
        h.add_(diff * diff)
        return (diff / (h.sqrt() + self.delta)) * float(local_rate)


class RMSProp(UpdateRule):
    type_name = "RMSProp"

    def __init__(self, param: caffe_pb2.SolverParameter, source: str = "solver") -> None:
        super().__init__(param, source)
        if param.momentum != 0:
            raise SolverError(
                f"{source}: momentum cannot be used with RMSProp (momentum: {param.momentum:g})"
            )
        if not 0 <= param.rms_decay < 1:
            raise SolverError(f"{source}: rms_decay should lie between 0 and 1, got {param.rms_decay:g}")
        self.rms_decay = _c(param.rms_decay)

    def compute(
        self, diff: torch.Tensor, history: list[torch.Tensor], local_rate: np.float32, iteration: int
    ) -> torch.Tensor:
        (h,) = history
        h.mul_(self.rms_decay).add_(diff * diff, alpha=_c(1 - _f32(self.rms_decay)))
        return (diff / (h.sqrt() + self.delta)) * float(local_rate)


class AdaDelta(UpdateRule):
    type_name = "AdaDelta"
    history_sets = 2

    def compute(
        self, diff: torch.Tensor, history: list[torch.Tensor], local_rate: np.float32, iteration: int
    ) -> torch.Tensor:
        grad_sq, update_sq = history
        rest = _c(1 - _f32(self.momentum))
        grad_sq.mul_(self.momentum).add_(diff * diff, alpha=rest)
        scale = ((update_sq + self.delta) / (grad_sq + self.delta)).sqrt()
        step = diff * scale
        update_sq.mul_(self.momentum).add_(step * step, alpha=rest)
        return step * float(local_rate)


class Adam(UpdateRule):
    type_name = "Adam"
    history_sets = 2

    def __init__(self, param: caffe_pb2.SolverParameter, source: str = "solver") -> None:
        super().__init__(param, source)
        self.beta2 = _c(param.momentum2)

    def compute(
        self, diff: torch.Tensor, history: list[torch.Tensor], local_rate: np.float32, iteration: int
    ) -> torch.Tensor:
        m, v = history
        beta1, beta2 = self.momentum, self.beta2
        t = iteration + 1
        correction = _f32(math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t))
        m.mul_(beta1).add_(diff, alpha=_c(1 - _f32(beta1)))
        v.mul_(beta2).add_(diff * diff, alpha=_c(1 - _f32(beta2)))
        return (m / (v.sqrt() + self.delta)) * float(_f32(local_rate) * correction)


RULES: dict[str, type[UpdateRule]] = {
    rule.type_name: rule for rule in (SGD, Nesterov, AdaGrad, RMSProp, AdaDelta, Adam)
}

# Legacy ``solver_type`` enum values, in case a solver was not upgraded (upgrade_proto.cpp).
_LEGACY = {
    caffe_pb2.SolverParameter.SGD: "SGD",
    caffe_pb2.SolverParameter.NESTEROV: "Nesterov",
    caffe_pb2.SolverParameter.ADAGRAD: "AdaGrad",
    caffe_pb2.SolverParameter.RMSPROP: "RMSProp",
    caffe_pb2.SolverParameter.ADADELTA: "AdaDelta",
    caffe_pb2.SolverParameter.ADAM: "Adam",
}


def solver_type(param: caffe_pb2.SolverParameter) -> str:
    """The solver's type string (``type``, or the legacy ``solver_type`` enum when ``type`` is unset)."""
    if not param.HasField("type") and param.HasField("solver_type"):
        return _LEGACY.get(param.solver_type, "SGD")
    return param.type


def make_rule(param: caffe_pb2.SolverParameter, source: str = "solver") -> UpdateRule:
    """The update rule of the solver's ``type`` (Caffe's SolverRegistry)."""
    name = solver_type(param)
    if name not in RULES:
        raise SolverError(f"{source}: unknown solver type '{name}' (known: {', '.join(RULES)})")
    return RULES[name](param, source)
