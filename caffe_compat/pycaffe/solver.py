"""pycaffe's solvers (``caffe.SGDSolver`` ... ``caffe.get_solver``) over ``caffe_compat.Solver``.

The training loop, update rules, lr policies, test schedule, log and snapshots are the native
``Solver``'s; its nets are driven through pycaffe's ``caffe.Net`` (layer by layer, between the
blobs users read and write), so ``solver.net.blobs['loss'].data`` after ``step`` is the last
iteration's, values written into the blobs are what the layers read, and Python layers run with
the net's own blobs. Each class fixes its update rule whatever the file's ``type`` says, as the
C++ class does; ``get_solver`` picks the class the file names. Param diffs are cleared in place,
so arrays held from ``net.params[...][i].diff`` stay valid, and after an update they hold the step
it subtracted, as Caffe's ``ComputeUpdateValue`` leaves them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from caffe_compat.net.net import Net as NativeNet
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import read_solver
from caffe_compat.pycaffe.net import Net, PycaffeError, _check_file
from caffe_compat.pycaffe.runtime import log_writer
from caffe_compat.solver.lr_policy import learning_rate
from caffe_compat.solver.solver import Solver as NativeSolver
from caffe_compat.solver.updates import solver_type

_f32 = np.float32


class _LayerwiseSolver(NativeSolver):
    """The native solver with its nets run by pycaffe's layer-by-layer ``Net``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.views: dict[int, Net] = {}
        super().__init__(*args, **kwargs)

    def view(self, net: NativeNet) -> Net:
        key = id(net)
        if key not in self.views:
            self.views[key] = Net.wrap(net)
        return self.views[key]

    def _forward_backward(self, debug: bool) -> np.float32:
        view = self.view(self.net)
        if debug:  # Caffe's debug_info lines come from the native graph's hooks
            loss = super()._forward_backward(debug)
            for name, value in self.net.blobs.items():
                if name in view.blobs:
                    view.blobs[name].set_data(value)
            return loss
        last = len(view.layers) - 1
        view._forward(0, last)
        loss = self.net.loss(self.net.blobs)
        view._backward(last, 0)
        return _f32(loss.item())

    def _run_net(self, net: NativeNet) -> dict[str, torch.Tensor]:
        view = self.view(net)
        view._forward(0, len(view.layers) - 1, record=False)
        return {name: net.blobs[name] for name in net.output_names}

    def _clear_diffs(self) -> None:
        self.view(self.net).clear_param_diffs()

    def _apply_steps(self, steps: list[torch.Tensor]) -> None:
        """As Caffe's ``ComputeUpdateValue`` leaves it, a parameter's diff holds the step the
        update subtracted (scripts read ``|diff| / |data|`` after ``step``)."""
        super()._apply_steps(steps)
        with torch.no_grad():
            for param, update in zip(self.params, steps, strict=True):
                tensor = param.tensor
                if isinstance(tensor, torch.nn.Parameter):
                    if tensor.grad is None:
                        tensor.grad = torch.zeros_like(tensor)
                    tensor.grad.copy_(update)


class Solver:
    """pycaffe's ``caffe.Solver``: ``net``, ``test_nets``, ``iter``, ``step``, ``solve``, ``snapshot``,
    ``restore``, ``apply_update``, ``add_callback``, ``share_weights``, ``param``.

    ``cc_solver`` is the ``caffe_compat.Solver`` it drives.
    """

    solver_type: ClassVar[str | None] = None

    def __init__(self, filename: str | os.PathLike) -> None:
        _check_file(filename)
        self.cc_solver = _LayerwiseSolver(
            os.fspath(filename), allow_python_layers=True, solver_type=self.solver_type, log=log_writer()
        )

    @property
    def net(self) -> Net:
        return self.cc_solver.view(self.cc_solver.net)

    @property
    def test_nets(self) -> list[Net]:
        return [self.cc_solver.view(net) for net in self.cc_solver.test_nets]

    @property
    def iter(self) -> int:
        return self.cc_solver.iter

    @property
    def param(self) -> caffe_pb2.SolverParameter:
        """The SolverParameter (``base_lr`` ... may be changed between steps)."""
        return self.cc_solver.param

    def step(self, iters: int) -> None:
        self.cc_solver.step(iters)

    def solve(self, resume_file: str | os.PathLike | None = None) -> None:
        self.cc_solver.solve(resume_file)

    def snapshot(self) -> None:
        """Write ``<prefix>_iter_<iter>.caffemodel`` and ``.solverstate`` (Caffe's ``Snapshot``)."""
        self.cc_solver.snapshot()

    def restore(self, state_file: str | os.PathLike) -> None:
        _check_file(state_file)
        self.cc_solver.restore(state_file)

    def apply_update(self) -> None:
        """One update from the current diffs (Caffe's ``ApplyUpdate``)."""
        self.cc_solver.apply_update()

    def add_callback(
        self, on_start: Callable[[], None] | Any, on_gradients_ready: Callable[[], None] | None = None
    ) -> None:
        """``on_start()`` before each iteration's forward passes, ``on_gradients_ready()`` before
        its update. Given an ``NCCL`` object (Caffe's multi-GPU hook) it does nothing."""
        if on_gradients_ready is None:
            if type(on_start).__name__ == "NCCL":
                return
            raise TypeError("add_callback(on_start, on_gradients_ready) takes two callables")
        self.cc_solver.add_callback(on_start, on_gradients_ready)

    def share_weights(self, net: Net) -> None:
        """Make ``net`` share the train net's parameter blobs (by layer name)."""
        net.share_with(self.net)

    @property
    def lr(self) -> float:
        """The learning rate of the current iteration (``GetLearningRate``)."""
        solver = self.cc_solver
        return float(learning_rate(solver.param, solver.iter, solver.current_step).rate)


class SGDSolver(Solver):
    solver_type = "SGD"


class NesterovSolver(SGDSolver):
    solver_type = "Nesterov"


class AdaGradSolver(SGDSolver):
    solver_type = "AdaGrad"


class RMSPropSolver(SGDSolver):
    solver_type = "RMSProp"


class AdaDeltaSolver(SGDSolver):
    solver_type = "AdaDelta"


class AdamSolver(SGDSolver):
    solver_type = "Adam"


_BY_TYPE = {
    cls.solver_type: cls
    for cls in (SGDSolver, NesterovSolver, AdaGradSolver, RMSPropSolver, AdaDeltaSolver, AdamSolver)
}


def get_solver(filename: str | os.PathLike) -> Solver:
    """The solver the file's ``type`` (or legacy ``solver_type``) names (Caffe's ``SolverRegistry``)."""
    _check_file(filename)
    name = solver_type(read_solver(filename))
    if name not in _BY_TYPE:
        raise PycaffeError(
            f"{os.fspath(filename)}: unknown solver type '{name}' (known: {', '.join(_BY_TYPE)})"
        )
    return _BY_TYPE[name](filename)
