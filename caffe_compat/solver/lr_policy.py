"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``, sgd_solver.cpp).

Each policy is a pure function of the iteration (and, for ``multistep``, of the step counter the
solver carries between iterations), computed with Caffe's own float/double mix so the logged rate
is the same float Caffe logs:

- ``fixed``: ``base_lr``
- ``step``: ``base_lr * gamma ^ floor(iter / stepsize)`` (the exponent becomes ``current_step``)
- ``exp``: ``base_lr * gamma ^ iter``
- ``inv``: ``base_lr * (1 + gamma * iter) ^ (-power)``
- ``multistep``: ``base_lr * gamma ^ current_step``, where ``current_step`` moves on by at most
  one per call, when ``iter >= stepvalue[current_step]`` (Caffe's rule, kept as is)
- ``poly``: ``base_lr * (1 - iter / max_iter) ^ power``
- ``sigmoid``: ``base_lr / (1 + exp(-gamma * (iter - stepsize)))``

``check_lr_policy`` rejects what Caffe cannot compute (an unknown policy, ``step`` without a positive
``stepsize``, ``poly`` without ``max_iter``) and, as a deliberate addition, ``multistep`` stepvalues
that do not increase (Caffe would silently stop stepping). A negative ``gamma`` is accepted, as the
fork does (BVLC rejects it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from caffe_compat.errors import SolverError
from caffe_compat.proto import caffe_pb2

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")

_f32 = np.float32


@dataclass(frozen=True)
class Rate:
    """A learning rate and the step counter after computing it.

    Attributes:
        rate: the rate, a float32 value as Caffe's ``Dtype rate``.
        current_step: Caffe's ``current_step_`` after the call.
        stepped: True when ``multistep`` moved on to the next stepvalue in this call (Caffe then
            logs ``MultiStep Status: Iteration N, step = k``).
    """

    rate: np.float32
    current_step: int
    stepped: bool = False


def check_lr_policy(param: caffe_pb2.SolverParameter, source: str = "solver") -> None:
    """Raise SolverError for a policy Caffe cannot compute."""
    policy = param.lr_policy
    if not param.HasField("lr_policy"):
        raise SolverError(f"{source}: lr_policy is not set (one of {', '.join(POLICIES)})")
    if policy not in POLICIES:
        raise SolverError(f"{source}: unknown lr_policy '{policy}' (known: {', '.join(POLICIES)})")
    if policy == "step" and param.stepsize <= 0:
        raise SolverError(f"{source}: lr_policy 'step' needs a positive stepsize, got {param.stepsize}")
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError(f"{source}: lr_policy 'poly' needs a positive max_iter, got {param.max_iter}")
    if policy == "multistep":
        values = list(param.stepvalue)
        for earlier, later in zip(values, values[1:], strict=False):
            if later <= earlier:
                raise SolverError(f"{source}: stepvalue must increase: {later} follows {earlier} in {values}")
        if values and values[0] < 0:
            raise SolverError(f"{source}: stepvalue must not be negative, got {values[0]}")


def learning_rate(param: caffe_pb2.SolverParameter, iteration: int, current_step: int = 0) -> Rate:
    """The rate Caffe uses at ``iteration`` (``GetLearningRate``), and the new ``current_step``.

    The arithmetic follows Caffe's types: ``pow(float, int)`` is computed in double (step, exp,
    multistep), the float overloads of ``pow``/``exp`` elsewhere, the product rounded to float.
    """
    policy = param.lr_policy
    base = _f32(param.base_lr)
    gamma = _f32(param.gamma)
    power = _f32(param.power)
    stepped = False
    if policy == "fixed":
        rate = base
    elif policy == "step":
        current_step = iteration // param.stepsize
        rate = _f32(float(base) * float(gamma) ** current_step)
    elif policy == "exp":
        rate = _f32(float(base) * float(gamma) ** iteration)
    elif policy == "inv":
        with np.errstate(all="ignore"):
            rate = base * np.power(_f32(1) + gamma * _f32(iteration), -power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iteration >= param.stepvalue[current_step]:
            current_step += 1
            stepped = True
        rate = _f32(float(base) * float(gamma) ** current_step)
    elif policy == "poly":
        with np.errstate(all="ignore"):
            rate = base * np.power(_f32(1) - _f32(iteration) / _f32(param.max_iter), power)
    elif policy == "sigmoid":
        with np.errstate(all="ignore"):
            rate = base * (_f32(1) / (_f32(1) + np.exp(-gamma * (_f32(iteration) - _f32(param.stepsize)))))
    else:
        raise SolverError(f"unknown lr_policy '{policy}' (known: {', '.join(POLICIES)})")
    return Rate(_f32(rate), int(current_step), stepped)
