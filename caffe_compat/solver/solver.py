"""``caffe_compat.Solver``: Caffe's training loop (solver.cpp, sgd_solver.cpp of the AM-Softmax fork).

``Solver("solver.prototxt", weights="init.caffemodel").solve()`` does what ``caffe train`` does,
logging the same messages with the same numbers:

- set-up (``Solver::Init``): the train net from ``net``/``net_param``/``train_net``/``train_net_param``
  and one test net per ``test_iter`` (``test_net``/``test_net_param`` first, then the generic net),
  each in the NetState Caffe merges (phase, the net's own ``state``, then ``train_state`` or
  ``test_state``), the test nets sharing the train net's blobs by layer name;
- ``Step``: clear diffs; test when ``iter % test_interval == 0`` (at 0 only with
  ``test_initialization``); ``iter_size`` forward/backward passes accumulating gradients; their mean
  loss; a NaN mean skips the update ("ignore and continue", the fork's addition; the iteration still
  counts); the smoothed loss over ``average_loss`` iterations; the display lines; ``ApplyUpdate``;
  ``++iter``; a snapshot every ``snapshot`` iterations or when requested (SIGINT/SIGHUP);
- ``ApplyUpdate`` (sgd_solver.cpp): the policy's rate; ClipGradients (global L2 norm, before the
  ``1/iter_size`` normalization); per blob Normalize, Regularize (L2/L1 times ``decay_mult``) and the
  type's rule with ``rate * lr_mult``; the fork's ClipWeights and ClampWeights (on the data before
  the step); ``Net::Update`` (``data -= step``);
- ``Solve``: after ``max_iter`` the snapshot (``snapshot_after_train``), one more forward pass of one
  batch for the last ``Iteration N, loss = L`` line, a last test, ``Optimization Done.``;
- ``TestAll``/``Test``: each output averaged over ``test_iter`` batches (``Test loss`` with
  ``test_compute_loss``).

Numbers are kept in float32 with Caffe's order of operations (losses, smoothed loss, test means,
rates), so the logged values are Caffe's. Deliberate deviations: the random streams are torch's
(``random_seed`` seeds torch), not Caffe's; a solverstate from Caffe restores what it holds (data
layers and layer counters start afresh, as in Caffe); our own snapshots also save a side file so a
resumed run continues exactly.
"""

from __future__ import annotations

import enum
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from caffe_compat.errors import CaffeCompatError, SolverError, name_file
from caffe_compat.log.glog import GlogWriter, format_number
from caffe_compat.net.net import Net
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import read_net, read_solver
from caffe_compat.solver import snapshot as snap
from caffe_compat.solver.lr_policy import check_lr_policy, learning_rate
from caffe_compat.solver.net_log import DebugInfo, debug_string, first_nonfinite, log_net_setup
from caffe_compat.solver.param_groups import LearnableParam, learnable_params
from caffe_compat.solver.updates import UpdateRule, make_rule, solver_type

_f32 = np.float32


#: What a NaN or infinite loss does: ``skip`` the update for NaN (the AM-Softmax fork's rule; an
#: infinite loss is updated with, as in the fork), ``stop`` training with an error, or ``none``
#: (BVLC Caffe: update whatever the loss). Each is logged with the layer the value came from.
NONFINITE_EFFECTS = ("skip", "stop", "none")


class SolverAction(enum.Enum):
    """Caffe's ``SolverAction``: what a signal asks the solver to do."""

    NONE = "none"
    STOP = "stop"
    SNAPSHOT = "snapshot"


def _resolve(path: str, solver_dir: Path | None, log: GlogWriter, what: str) -> Path:
    """A path named in the solver: relative to the working directory as in Caffe, falling back to
    the solver file's folder (with a logged note)."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists() or solver_dir is None:
        return candidate
    fallback = solver_dir / candidate
    if fallback.exists():
        log.info(f"{what} '{path}' not found in the working directory; using {fallback}", "solver.cpp:0")
        return fallback
    return candidate


def default_device(param: caffe_pb2.SolverParameter) -> torch.device:
    """Caffe's choice: the GPU ``device_id`` when ``solver_mode`` is GPU (the default) and CUDA is
    present, else the CPU."""
    if param.solver_mode == caffe_pb2.SolverParameter.GPU and torch.cuda.is_available():
        return torch.device("cuda", param.device_id)
    return torch.device("cpu")


class Solver:
    """A Caffe solver driving a train net and its test nets.

    Args:
        solver_path: a solver prototxt (path, text) or a SolverParameter.
        weights: caffemodel(s) to start from (a path, a comma-separated list or a sequence), copied
            into the train and test nets as ``caffe train -weights`` does.
        log: where the Caffe-format log goes (stderr when None).
        device: a torch device; by default CUDA when the solver's ``solver_mode`` is GPU (Caffe's
            default) and CUDA is present, else the CPU.
        level, stages: set into the solver's ``train_state`` (``caffe train -level -stage``).
        net_transform: applied to every net read (``(net_param, phase) -> net_param``), e.g. the
            data-path overrides of ``caffe-compat train -set/--data-root``.
        allow_python_layers: run Caffe's ``Python`` layers (they import and run the module the
            prototxt names); refused by default.
        solver_type: the update rule to use whatever the solver file says (``"SGD"``, ``"Adam"``
            ...), as constructing pycaffe's ``caffe.AdamSolver`` does.
        nonfinite_effect: what a NaN or infinite loss does (``NONFINITE_EFFECTS``): ``skip``
            (default, the fork's NaN skip), ``stop`` (a SolverError naming the iteration and the
            layer) or ``none`` (update anyway, as BVLC Caffe).

    Attributes:
        net: the train net. test_nets: the test nets. iter: updates done so far.
        param: the SolverParameter. current_step: Caffe's step counter (step/multistep).
        history: the history blobs, in solverstate order.
        action_request: a callable returning a SolverAction (Caffe's ``SetActionFunction``).
        on_iteration: optional callback ``f(iter)`` after each iteration (progress bars).
        callbacks: ``(on_start, on_gradients_ready)`` pairs (``add_callback``), called as Caffe's
            ``Solver::Callback``: after the test at the start of an iteration, and before the update.
    """

    def __init__(
        self,
        solver_path: str | os.PathLike | caffe_pb2.SolverParameter,
        weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
        *,
        log: GlogWriter | None = None,
        device: str | torch.device | None = None,
        level: int | None = None,
        stages: Sequence[str] = (),
        net_transform: Callable[[caffe_pb2.NetParameter, int], caffe_pb2.NetParameter] | None = None,
        allow_python_layers: bool = False,
        solver_type: str | None = None,
        nonfinite_effect: str = "skip",
    ) -> None:
        if nonfinite_effect not in NONFINITE_EFFECTS:
            raise SolverError(
                f"nonfinite_effect must be one of {', '.join(NONFINITE_EFFECTS)}, got {nonfinite_effect!r}"
            )
        self.nonfinite_effect = nonfinite_effect
        self.log = log if log is not None else GlogWriter()
        self.net_transform = net_transform
        self.allow_python_layers = allow_python_layers
        if isinstance(solver_path, caffe_pb2.SolverParameter):
            self.param = caffe_pb2.SolverParameter()
            self.param.CopyFrom(solver_path)
            self.source, self.solver_dir = "<SolverParameter>", None
        else:
            self.param = read_solver(solver_path)
            is_file = isinstance(solver_path, os.PathLike) or os.path.isfile(str(solver_path))
            self.source = str(solver_path) if is_file else "<solver text>"
            self.solver_dir = Path(solver_path).resolve().parent if is_file else None
        if solver_type is not None:
            self.param.type = solver_type
            self.param.ClearField("solver_type")
        if level is not None:
            self.param.train_state.level = level
        self.param.train_state.stage.extend(stages)
        self.action_request: Callable[[], SolverAction] | None = None
        self.on_iteration: Callable[[int], None] | None = None
        self.callbacks: list[tuple[Callable[[], None], Callable[[], None]]] = []
        self.requested_early_exit = False
        self.log.info("Initializing solver from parameters: \n" + debug_string(self.param), "solver.cpp:44")
        self._check_param()
        self.rule: UpdateRule = make_rule(self.param, self.source)
        self.device = self._pick_device(device)
        if self.param.random_seed >= 0:
            torch.manual_seed(self.param.random_seed)
        self.net = self._init_train_net()
        self.test_nets = self._init_test_nets()
        self._move_to_device()
        self._nets_ready()
        self.log.info("Solver scaffolding done.", "solver.cpp:56")
        self.iter = 0
        self.current_step = 0
        self.params: list[LearnableParam] = learnable_params(self.net)
        self.history: list[torch.Tensor] = [
            torch.zeros_like(p.tensor, dtype=torch.float32)
            for _ in range(self.rule.history_sets)
            for p in self.params
        ]
        self._losses: list[np.float32] = []
        self._smoothed = _f32(0)
        self._loss_start_iter = 0
        self._keep_loss_window = False
        self._iterations_last = 0
        if weights:
            self.copy_weights(weights)

    # -- set-up --------------------------------------------------------------------------------
    def _check_param(self) -> None:
        p, source = self.param, self.source
        check_lr_policy(p, source)
        if p.average_loss < 1:
            raise SolverError(f"{source}: average_loss should be at least 1, got {p.average_loss}")
        if p.iter_size < 1:
            raise SolverError(f"{source}: iter_size should be at least 1, got {p.iter_size}")
        if p.regularization_type not in ("L1", "L2"):
            raise SolverError(f"{source}: unknown regularization_type '{p.regularization_type}' (L1 or L2)")
        if p.snapshot_format not in (caffe_pb2.SolverParameter.BINARYPROTO, caffe_pb2.SolverParameter.HDF5):
            raise SolverError(f"{source}: unsupported snapshot_format {p.snapshot_format}")
        if p.max_iter < 0:
            raise SolverError(f"{source}: max_iter must not be negative, got {p.max_iter}")
        if p.snapshot < 0 or p.display < 0 or p.test_interval < 0:
            raise SolverError(f"{source}: snapshot, display and test_interval must not be negative")
        self._check_snapshot_prefix()

    def _check_snapshot_prefix(self) -> None:
        """Caffe's ``CheckSnapshotWritePermissions``: a prefix is needed and its folder writable."""
        p = self.param
        if not p.snapshot:
            return
        if not p.HasField("snapshot_prefix"):
            raise SolverError(f"{self.source}: snapshot is specified but snapshot_prefix is not")
        prefix = p.snapshot_prefix
        folder = Path(prefix).parent
        if not folder.is_dir() and self.solver_dir is not None and (self.solver_dir / folder).is_dir():
            prefix = str(self.solver_dir / prefix)
            self.log.info(
                f"snapshot_prefix folder '{folder}' not found in the working directory; using {prefix}",
                "solver.cpp:0",
            )
            p.snapshot_prefix = prefix
            folder = Path(prefix).parent
        if not folder.is_dir() or not os.access(folder, os.W_OK):
            raise SolverError(
                f"{self.source}: cannot write to snapshot prefix '{p.snapshot_prefix}'. Make sure that the "
                "directory exists and is writeable."
            )

    def _pick_device(self, device: str | torch.device | None) -> torch.device:
        chosen = torch.device(device) if device is not None else default_device(self.param)
        if chosen.type == "cuda":
            # Caffe computes in true float32: no TF32 in convolutions or matrix products.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        return chosen

    def _read_net_file(self, name: str, what: str) -> tuple[Path, caffe_pb2.NetParameter]:
        path = _resolve(name, self.solver_dir, self.log, what)
        if not path.is_file():
            raise SolverError(f"{self.source}: {what} '{name}' not found")
        return path, read_net(path)

    def _build_net(
        self, net: Path | caffe_pb2.NetParameter, state: caffe_pb2.NetState, share_from: Net | None = None
    ) -> Net:
        """Build a net in the merged NetState; a file keeps its folder for the data layers' paths."""
        level = state.level if state.HasField("level") else None
        folder = net.resolve().parent if isinstance(net, Path) else None
        label = str(net) if isinstance(net, Path) else self.source
        try:
            if self.net_transform is not None:
                net = self.net_transform(read_net(net), state.phase)
            built = Net(
                net,
                phase=state.phase,
                level=level,
                stages=list(state.stage),
                share_from=share_from,
                source_dir=folder,
                allow_python_layers=self.allow_python_layers,
            )
        except CaffeCompatError as exc:
            raise name_file(exc, label) from None
        log_net_setup(self.log, built)
        return built

    def _init_train_net(self) -> Net:
        p = self.param
        given = [f for f in ("net", "net_param", "train_net", "train_net_param") if p.HasField(f)]
        names = "net, net_param, train_net, train_net_param"
        if not given:
            raise SolverError(
                f"{self.source}: SolverParameter must specify a train net using one of these fields: {names}"
            )
        if len(given) > 1:
            raise SolverError(
                f"{self.source}: SolverParameter must not contain more than one of these fields specifying a "
                f"train_net: {names} (it has {', '.join(given)})"
            )
        if p.HasField("train_net_param"):
            self.log.info("Creating training net specified in train_net_param.", "solver.cpp:76")
            source, param = p.train_net_param, read_net(p.train_net_param)
        elif p.HasField("train_net"):
            self.log.info(f"Creating training net from train_net file: {p.train_net}", "solver.cpp:80")
            source, param = self._read_net_file(p.train_net, "train_net file")
        elif p.HasField("net_param"):
            self.log.info("Creating training net specified in net_param.", "solver.cpp:84")
            source, param = p.net_param, read_net(p.net_param)
        else:
            self.log.info(f"Creating training net from net file: {p.net}", "solver.cpp:87")
            source, param = self._read_net_file(p.net, "net file")
        state = caffe_pb2.NetState(phase=caffe_pb2.TRAIN)
        state.MergeFrom(param.state)
        state.MergeFrom(p.train_state)
        net = self._build_net(source if isinstance(source, Path) else param, state)
        if not net.loss_weights:
            raise SolverError(
                f"{self.source}: the train net has no loss (no top with a nonzero loss_weight): "
                "nothing to train"
            )
        return net

    def _init_test_nets(self) -> list[Net]:
        p = self.param
        generic = int(p.HasField("net_param")) + int(p.HasField("net"))
        if generic > 1:
            raise SolverError(f"{self.source}: both net_param and net file may not be specified")
        num_specific = len(p.test_net_param) + len(p.test_net)
        if generic and len(p.test_iter) < num_specific:
            raise SolverError(f"{self.source}: test_iter must be specified for each test network")
        if not generic and len(p.test_iter) != num_specific:
            raise SolverError(
                f"{self.source}: test_iter must be specified for each test network "
                f"({len(p.test_iter)} test_iter for {num_specific} test nets)"
            )
        instances = len(p.test_iter) if generic else num_specific
        if p.test_state and len(p.test_state) != instances:
            raise SolverError(
                f"{self.source}: test_state must be unspecified or specified once per test net ({instances})"
            )
        if instances and p.test_interval <= 0:
            raise SolverError(
                f"{self.source}: test nets need a positive test_interval, got {p.test_interval}"
            )
        sources: list[tuple[str, Path | caffe_pb2.NetParameter, caffe_pb2.NetParameter]] = []
        for net_param in p.test_net_param:
            sources.append(("test_net_param", net_param, read_net(net_param)))
        for name in p.test_net:
            path, param = self._read_net_file(name, "test_net file")
            sources.append((f"test_net file: {name}", path, param))
        for _ in range(instances - num_specific):
            if p.HasField("net_param"):
                sources.append(("net_param", p.net_param, read_net(p.net_param)))
            else:
                path, param = self._read_net_file(p.net, "net file")
                sources.append((f"net file: {p.net}", path, param))
        nets = []
        for index, (label, source, param) in enumerate(sources):
            state = caffe_pb2.NetState(phase=caffe_pb2.TEST)
            state.MergeFrom(param.state)
            if p.test_state:
                state.MergeFrom(p.test_state[index])
            self.log.info(f"Creating test net (#{index}) specified by {label}", "solver.cpp:172")
            nets.append(
                self._build_net(source if isinstance(source, Path) else param, state, share_from=self.net)
            )
        return nets

    def _move_to_device(self) -> None:
        if self.device.type == "cpu":
            return
        self.net.to(self.device)
        for test_net in self.test_nets:
            for name, module in test_net.layers.items():
                source = self.net.layers.get(name)
                if source is None:
                    continue
                for spec in module.present_blob_specs():
                    if spec.name in {s.name for s in source.present_blob_specs()}:
                        module.set_blob(spec.name, getattr(source, spec.name))
            test_net.to(self.device)

    def _nets_ready(self) -> None:
        """Hook: the nets are built and on their device, the solver's parameter list not yet taken
        (the distributed solver shards data and classifiers and wraps the train net here)."""

    def _replica_mean(self, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Hook: values this process computed (losses, outputs) combined over the replicas that
        train together; one process has nothing to combine."""
        return values

    def _train_forward(self) -> dict[str, torch.Tensor]:
        """Hook: one forward pass of the train net (the distributed solver runs it through DDP)."""
        return self.net()

    def _sum_of_squares(self, tensors: Sequence[torch.Tensor]) -> np.float32:
        """The float32 sum of squares of the tensors' values, one tensor after another (the norms
        of ClipGradients and ClipWeights); ``tensors`` are aligned with ``self.params``."""
        sumsq = _f32(0)
        for tensor in tensors:
            values = tensor.detach().to(torch.float32)
            sumsq = _f32(sumsq + _f32((values * values).sum().item()))
        return sumsq

    def copy_weights(self, weights: str | os.PathLike | Sequence[str | os.PathLike]) -> None:
        """Caffe's ``CopyLayers``: each caffemodel into the train net and every test net."""
        if isinstance(weights, (str, os.PathLike)):
            names = [w for w in str(weights).split(",") if w]
        else:
            names = [str(w) for w in weights]
        for name in names:
            self.log.info(f"Finetuning from {name}", "caffe.cpp:155")
            with self.log.capture("caffe_compat"):
                for net in [self.net, *self.test_nets]:
                    snap.load_weights(net, name)

    # -- the loop ------------------------------------------------------------------------------
    def add_callback(self, on_start: Callable[[], None], on_gradients_ready: Callable[[], None]) -> None:
        """Caffe's ``add_callback``: ``on_start()`` after an iteration's test, before its forward
        passes; ``on_gradients_ready()`` after its backward passes, before the update."""
        self.callbacks.append((on_start, on_gradients_ready))

    def _run_net(self, net: Net) -> dict[str, torch.Tensor]:
        """One forward pass of a net (the test passes and the final pass of ``solve``)."""
        return net()

    def _requested_action(self) -> SolverAction:
        if self.action_request is None:
            return SolverAction.NONE
        return self.action_request()

    def _forward_backward(self, debug: bool) -> np.float32:
        info = DebugInfo(self.net, self.log) if debug else None
        if info is not None:
            info.__enter__()
        try:
            outputs = self._train_forward()
            loss = self.net.loss(outputs)
            if info is not None:
                info.log_forward()
            if loss.requires_grad:
                loss.backward()
            if info is not None:
                info.log_backward(self.params)
        finally:
            if info is not None:
                info.__exit__(None, None, None)
        return _f32(loss.item())

    def _clear_diffs(self) -> None:
        for tensor in self.net.parameters():
            tensor.grad = None

    def _update_smoothed_loss(self, loss: np.float32, start_iter: int, average_loss: int) -> None:
        """Caffe's ``UpdateSmoothedLoss``: the mean of the last ``average_loss`` losses."""
        if len(self._losses) < average_loss:
            self._losses.append(_f32(loss))
            size = len(self._losses)
            self._smoothed = _f32((self._smoothed * _f32(size - 1) + _f32(loss)) / _f32(size))
        else:
            index = (self.iter - start_iter) % average_loss
            self._smoothed = _f32(self._smoothed + (_f32(loss) - self._losses[index]) / _f32(average_loss))
            self._losses[index] = _f32(loss)

    def _log_outputs(self, net: Net, values: dict[str, np.ndarray], label: str, where: str) -> None:
        index = 0
        for name in net.output_names:
            weight = _f32(net.loss_weights.get(name, 0.0))
            for value in np.asarray(values[name], dtype=np.float32).reshape(-1):
                extra = ""
                if weight:
                    extra = f" (* {format_number(weight)} = {format_number(_f32(weight * value))} loss)"
                self.log.info(
                    f"    {label} net output #{index}: {name} = {format_number(value)}{extra}", where
                )
                index += 1

    def step(self, iters: int) -> None:
        """Run ``iters`` iterations (Caffe's ``Solver::Step``)."""
        p = self.param
        start_iter = self.iter
        stop_iter = self.iter + int(iters)
        average_loss = p.average_loss
        if self._keep_loss_window:
            start_iter = self._loss_start_iter
            self._keep_loss_window = False
        else:
            self._losses, self._smoothed = [], _f32(0)
        self._loss_start_iter = start_iter
        timer = time.perf_counter()
        self._iterations_last = self.iter
        while self.iter < stop_iter:
            self._clear_diffs()
            if (
                p.test_interval
                and self.iter % p.test_interval == 0
                and (self.iter > 0 or p.test_initialization)
            ):
                self.test_all()
                if self.requested_early_exit:
                    break
            for on_start, _ in self.callbacks:
                on_start()
            display = bool(p.display) and self.iter % p.display == 0
            debug = display and p.debug_info
            loss = _f32(0)
            culprit = ""
            for _ in range(p.iter_size):
                pass_loss = self._forward_backward(debug)
                if not culprit and not math.isfinite(pass_loss):
                    culprit = first_nonfinite(self.net)
                loss = _f32(loss + pass_loss)
            loss = _f32(loss / _f32(p.iter_size))
            loss = self._replica_mean({"loss": np.array(loss)})["loss"][()]
            skip = math.isnan(loss) and self.nonfinite_effect == "skip"
            if skip:
                self.log.info(
                    f"Iteration {self.iter}, loss = {format_number(loss)}, ignore and continue.",
                    "solver.cpp:214",
                )
            if not math.isfinite(loss):
                self._report_nonfinite(loss, culprit)
            if skip:
                self.iter += 1
                self._notify()
                continue
            self._update_smoothed_loss(loss, start_iter, average_loss)
            if display:
                lapse = _f32(time.perf_counter() - timer)
                per_s = _f32((self.iter - self._iterations_last) / (lapse if lapse else _f32(1)))
                self.log.info(
                    f"Iteration {self.iter} ({format_number(per_s)} iter/s, {format_number(lapse)}s/"
                    f"{p.display} iters), loss = {format_number(self._smoothed)}",
                    "solver.cpp:224",
                )
                timer = time.perf_counter()
                self._iterations_last = self.iter
                values = {name: self.net.blobs[name].detach().cpu().numpy() for name in self.net.output_names}
                values = self._replica_mean(values)
                self._log_outputs(self.net, values, "Train", "solver.cpp:243")
            for _, on_gradients_ready in self.callbacks:
                on_gradients_ready()
            self.apply_update()
            self.iter += 1
            request = self._requested_action()
            if (p.snapshot and self.iter % p.snapshot == 0) or request == SolverAction.SNAPSHOT:
                self.snapshot()
            self._notify()
            if request == SolverAction.STOP:
                self.requested_early_exit = True
                break

    def _report_nonfinite(self, loss: np.float32, culprit: str) -> None:
        """Log a NaN or infinite loss with the layer it first came from; stop if so configured."""
        what = f"Iteration {self.iter}: the loss is {format_number(loss)}; {culprit or 'cause unknown'}"
        if self.nonfinite_effect == "stop":
            self.log.error(f"{what}; stopping (nonfinite_effect: stop)", "solver.cpp:0")
            raise SolverError(f"{self.source}: {what}; stopped (-nonfinite_effect stop)")
        action = (
            "the update is skipped (the fork's NaN rule)"
            if self.nonfinite_effect == "skip" and math.isnan(loss)
            else "the update is applied"
        )
        self.log.warning(f"{what}; {action}", "solver.cpp:0")

    def _notify(self) -> None:
        if self.on_iteration is not None:
            self.on_iteration(self.iter)

    def solve(self, resume_file: str | os.PathLike | None = None) -> None:
        """Train to ``max_iter`` (Caffe's ``Solver::Solve``), then the final forward pass and test."""
        p = self.param
        self.log.info(f"Solving {self.net.net_param.name}", "solver.cpp:278")
        self.log.info(f"Learning Rate Policy: {p.lr_policy}", "solver.cpp:279")
        self.requested_early_exit = False
        if resume_file is not None:
            self.log.info(f"Restoring previous solver status from {resume_file}", "solver.cpp:284")
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            self.log.info("Optimization stopped early.", "solver.cpp:302")
            return
        if p.display and self.iter % p.display == 0:
            with torch.no_grad():
                loss = _f32(self.net.loss(self._run_net(self.net)).item())
            loss = self._replica_mean({"loss": np.array(loss)})["loss"][()]
            self._update_smoothed_loss(loss, self._loss_start_iter, p.average_loss)
            self.log.info(f"Iteration {self.iter}, loss = {format_number(self._smoothed)}", "solver.cpp:316")
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()
        self.log.info("Optimization Done.", "solver.cpp:321")

    # -- testing -------------------------------------------------------------------------------
    def test_all(self) -> None:
        """Caffe's ``TestAll``: every test net, until a stop is requested."""
        for index in range(len(self.test_nets)):
            if self.requested_early_exit:
                break
            self.test(index)

    def test(self, index: int = 0) -> dict[str, np.ndarray]:
        """Caffe's ``Test``: run ``test_iter`` batches, log each output's mean; returns the means."""
        p = self.param
        self.log.info(f"Iteration {self.iter}, Testing net (#{index})", "solver.cpp:336")
        net = self.test_nets[index]
        scores: dict[str, np.ndarray] = {}
        loss = _f32(0)
        iterations = p.test_iter[index]
        for i in range(iterations):
            request = self._requested_action()
            while request != SolverAction.NONE:
                if request == SolverAction.SNAPSHOT:
                    self.snapshot()
                elif request == SolverAction.STOP:
                    self.requested_early_exit = True
                request = self._requested_action()
            if self.requested_early_exit:
                break
            with torch.no_grad():
                if p.debug_info:
                    with DebugInfo(net, self.log) as info:
                        outputs = self._run_net(net)
                        info.log_forward()
                else:
                    outputs = self._run_net(net)
                iter_loss = _f32(net.loss(outputs).item()) if net.loss_weights else _f32(0)
            if p.test_compute_loss:
                loss = _f32(loss + iter_loss)
            for name in net.output_names:
                value = outputs[name].detach().cpu().numpy().astype(np.float32).reshape(-1)
                scores[name] = value.copy() if i == 0 else (scores[name] + value).astype(np.float32)
        if self.requested_early_exit:
            self.log.info("Test interrupted.", "solver.cpp:375")
            return {}
        means = {name: (score / _f32(iterations)).astype(np.float32) for name, score in scores.items()}
        means = self._replica_mean({**means, "": np.array(_f32(loss / _f32(iterations)))})
        if p.test_compute_loss:
            loss = means[""][()]
            self.log.info(f"Test loss: {format_number(loss)}", "solver.cpp:380")
        del means[""]
        self._log_outputs(net, means, "Test", "solver.cpp:403")
        return means

    # -- the update ----------------------------------------------------------------------------
    def apply_update(self) -> None:
        """Caffe's ``SGDSolver::ApplyUpdate`` on the accumulated diffs."""
        p = self.param
        rate = learning_rate(p, self.iter, self.current_step)
        if rate.stepped:
            self.log.info(
                f"MultiStep Status: Iteration {self.iter}, step = {rate.current_step}", "sgd_solver.cpp:46"
            )
        self.current_step = rate.current_step
        if p.display and self.iter % p.display == 0:
            self.log.info(f"Iteration {self.iter}, lr = {format_number(rate.rate)}", "sgd_solver.cpp:137")
        with torch.no_grad():
            diffs = [param.diff() for param in self.params]
            self._clip_gradients(diffs)
            count = len(self.params)
            weight_decay = _f32(p.weight_decay)
            normalization = _f32(1) / _f32(p.iter_size)
            steps = []
            for i, (param, diff) in enumerate(zip(self.params, diffs, strict=True)):
                if p.iter_size != 1:
                    diff.mul_(float(normalization))
                local_decay = _f32(weight_decay * param.decay_mult)
                if local_decay:
                    data = param.tensor.detach().to(torch.float32)
                    regularizer = data if p.regularization_type == "L2" else torch.sign(data)
                    diff.add_(regularizer, alpha=float(local_decay))
                history = [self.history[i + k * count] for k in range(self.rule.history_sets)]
                local_rate = _f32(rate.rate * param.lr_mult)
                steps.append(self.rule.compute(diff, history, local_rate, self.iter))
            self._clip_weights()
            self._clamp_weights()
            self._apply_steps(steps)

    def _apply_steps(self, steps: list[torch.Tensor]) -> None:
        """``Net::Update``: ``data -= step`` for each learnable blob."""
        for param, update in zip(self.params, steps, strict=True):
            param.tensor.sub_(update.to(param.tensor.dtype))

    def _clip_gradients(self, diffs: list[torch.Tensor]) -> None:
        clip = _f32(self.param.clip_gradients)
        if clip < 0:
            return
        norm = _f32(np.sqrt(self._sum_of_squares(diffs)))
        if norm > clip:
            scale = _f32(clip / norm)
            self.log.info(
                f"Gradient clipping: scaling down gradients (L2 norm {format_number(norm)} > "
                f"{format_number(clip)}) by scale factor {format_number(scale)}",
                "sgd_solver.cpp:113",
            )
            for diff in diffs:
                diff.mul_(float(scale))

    def _clip_weights(self) -> None:
        clip = _f32(self.param.clip_weights)
        if clip < 0:
            return
        norm = _f32(np.sqrt(self._sum_of_squares([param.tensor for param in self.params])))
        if norm > clip:
            scale = _f32(clip / norm)
            self.log.info(
                f"Weight clipping: scaling down weights (L2 norm {format_number(norm)} > "
                f"{format_number(clip)}) by scale factor {format_number(scale)}",
                "sgd_solver.cpp:92",
            )
            for param in self.params:
                param.tensor.mul_(float(scale))

    def _clamp_weights(self) -> None:
        p = self.param
        if not p.HasField("clamp_weights_lower") and not p.HasField("clamp_weights_upper"):
            return
        lower, upper = float(_f32(p.clamp_weights_lower)), float(_f32(p.clamp_weights_upper))
        for param in self.params:
            param.tensor.clamp_(min=lower, max=upper)

    # -- snapshots -----------------------------------------------------------------------------
    def snapshot(self) -> tuple[str, str]:
        """Write the weights, the solverstate and the side file (Caffe's ``Snapshot``).

        Returns the caffemodel and solverstate names.
        """
        p = self.param
        hdf5 = p.snapshot_format == caffe_pb2.SolverParameter.HDF5
        prefix = p.snapshot_prefix
        if hdf5:
            model = snap.snapshot_filename(prefix, self.iter, ".caffemodel.h5")
            self.log.info(f"Snapshotting to HDF5 file {model}", "solver.cpp:461")
        else:
            model = snap.snapshot_filename(prefix, self.iter, ".caffemodel")
            self.log.info(f"Snapshotting to binary proto file {model}", "solver.cpp:453")
        snap.write_net_snapshot(self.net, model, hdf5=hdf5, write_diff=p.snapshot_diff)
        state_name = snap.snapshot_filename(prefix, self.iter, ".solverstate.h5" if hdf5 else ".solverstate")
        # the solverstate last: once it exists, its set is complete (snapshot.latest_snapshot)
        snap.write_side_file(snap.side_file_for(state_name), self._side_state())
        if hdf5:
            self.log.info(f"Snapshotting solver state to HDF5 file {state_name}", "sgd_solver.cpp:371")
        else:
            self.log.info(
                f"Snapshotting solver state to binary proto file {state_name}", "sgd_solver.cpp:361"
            )
        state = snap.SolverStateData(
            self.iter, model, self.current_step, [h.detach().cpu().numpy() for h in self.history]
        )
        snap.write_state(state_name, state, hdf5=hdf5)
        return model, state_name

    def _nets(self) -> dict[str, Net]:
        return {"train": self.net, **{f"test{i}": net for i, net in enumerate(self.test_nets)}}

    def _side_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "iter": self.iter,
            "layers": {key: snap.layer_extra_state(net) for key, net in self._nets().items()},
            "data": {key: snap.data_states(net) for key, net in self._nets().items()},
            "rng": rng,
            "losses": {
                "values": [float(v) for v in self._losses],
                "smoothed": float(self._smoothed),
                "start_iter": self._loss_start_iter,
            },
        }

    def restore(self, path: str | os.PathLike) -> None:
        """Resume from a solverstate (Caffe's ``Restore``), and from its side file when present.

        From Caffe's solverstate: the iteration, ``current_step``, the history and the weights of
        ``learned_net`` (train net). From our side file also: layer counters, data cursors, RNG
        states and the smoothed-loss window. Without a side file, data layers and counters stay
        as they are (fresh after construction: Caffe's behaviour).
        """
        source = str(path)
        state = snap.read_state(path)
        count = len(self.params) * self.rule.history_sets
        if len(state.history) != count:
            raise SolverError(
                f"{source}: incorrect length of history blobs: the solverstate holds {len(state.history)}, "
                f"this {solver_type(self.param)} solver on this net needs {count} (a snapshot of another net "
                "or solver type?)"
            )
        for index, (array, mine) in enumerate(zip(state.history, self.history, strict=True)):
            if array.size != mine.numel():
                owner = self.params[index % len(self.params)]
                raise SolverError(
                    f"{source}: history blob {index} has shape {list(array.shape)} but param "
                    f"{owner.label} has shape {list(mine.shape)} (a snapshot of another net?)"
                )
        if state.learned_net:
            learned = snap.learned_net_path(path, state.learned_net)
            if str(learned) != state.learned_net:
                self.log.info(
                    f"learned_net '{state.learned_net}' not found in the working directory; using {learned}",
                    "solver.cpp:0",
                )
            try:
                with self.log.capture("caffe_compat"):
                    snap.load_weights(self.net, learned)
            except CaffeCompatError as exc:
                raise SolverError(f"{source}: cannot restore the weights of learned_net: {exc}") from None
        self.iter = int(state.iter)
        self.current_step = int(state.current_step)
        self.log.info("SGDSolver: restoring history", "sgd_solver.cpp:406")
        with torch.no_grad():
            for array, mine in zip(state.history, self.history, strict=True):
                mine.copy_(torch.from_numpy(np.array(array, dtype=np.float32)).reshape(mine.shape))
        side = snap.side_file_for(path)
        if side.is_file():
            self._restore_side(side, state.iter)

    def _restore_side(self, side: Path, iteration: int) -> None:
        content = snap.read_side_file(side)
        if content.get("iter") != iteration:
            self.log.warning(
                f"Ignoring {side}: it belongs to iteration {content.get('iter')}, "
                f"the solverstate to {iteration}",
                "solver.cpp:0",
            )
            return
        nets = self._nets()
        for key, states in content["layers"].items():
            if key not in nets:
                raise SolverError(f"{side}: holds state for net '{key}' which this solver lacks")
            snap.load_layer_extra_state(nets[key], states, str(side))
        for key, states in content["data"].items():
            if key not in nets:
                raise SolverError(f"{side}: holds data cursors for net '{key}' which this solver lacks")
            snap.load_data_states(nets[key], states, str(side))
        try:
            torch.set_rng_state(content["rng"]["torch"])
            if "cuda" in content["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(content["rng"]["cuda"])
        except (RuntimeError, ValueError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SolverError(f"{side}: the generator state does not restore ({first})") from None
        losses = content["losses"]
        self._losses = [_f32(v) for v in losses["values"]]
        self._smoothed = _f32(losses["smoothed"])
        self._loss_start_iter = int(losses["start_iter"])
        self._keep_loss_window = True
        self.log.info(f"Restored layer counters, data cursors and RNG state from {side}", "solver.cpp:0")
