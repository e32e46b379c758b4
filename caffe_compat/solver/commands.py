"""Command-line front ends of this package (argument parsing -> one library call).

``COMMANDS`` maps a ``caffe-compat`` subcommand to ``(help, add_arguments(parser), run(args) -> int)``.

- ``train -solver S [-weights W[,W2]] [-snapshot S.solverstate|latest] [-sigint_effect ...]
  [-sighup_effect ...] [-nonfinite_effect skip|stop|none] [-gpu ID] [-log FILE]``: Caffe's ``caffe
  train`` (tools/caffe.cpp ``train``): the solver's ``train_state`` gets ``-level`` and the ``-stage``
  list; ``-snapshot`` resumes (``latest``: the newest complete set of the snapshot prefix),
  ``-weights`` finetunes (not both); SIGINT stops (by default; ``snapshot_after_train`` then
  snapshots) and SIGHUP snapshots; a NaN loss skips the update (the fork's rule) unless
  ``-nonfinite_effect`` says otherwise.
- ``test -model M -weights W -iterations N``: Caffe's ``caffe test``: per-batch outputs, the mean
  loss and each output's mean.
- ``time -model M [-iterations N]``: Caffe's ``caffe time``: per-layer forward and backward times,
  measured with hooks on the layer modules.

Log lines go to stderr (and to ``-log FILE``); a progress bar is drawn only when stderr is a
terminal and never enters the log file.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext

import torch

from caffe_compat.errors import CaffeCompatError, SolverError
from caffe_compat.log.glog import GlogWriter

_EFFECTS = ("stop", "snapshot", "none")


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--gpu",
        default="",
        help="run on this CUDA device ('all' or a list: the first is used); the CPU when CUDA is absent",
    )


def _add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="[PHASE:]LAYER.FIELD=VALUE",
        help="override a layer field without editing the prototxt, e.g. "
        "TRAIN:data.image_data_param.source=/data/train.txt (repeatable)",
    )
    parser.add_argument(
        "--data-root",
        "--data_root",
        dest="data_root",
        default=None,
        metavar="OLD=NEW",
        help="replace the path prefix OLD of every data source, root_folder and mean_file, "
        "e.g. C:/datasets=/home/me/data",
    )


def _net_transform(args: argparse.Namespace, net_file: str | None, command: str):
    """Apply ``-set``/``--data-root`` to each net read, then refuse data paths that do not exist
    (with the command line that fixes them) before any layer reads them."""
    from caffe_compat.data.overrides import check_data_paths, net_transform
    from caffe_compat.net.filter import filter_net, make_state
    from caffe_compat.proto import caffe_pb2

    overrides = net_transform(args.set, args.data_root)
    stages = [s for s in args.stage.split(",") if s]

    def transform(net_param: caffe_pb2.NetParameter, phase: int) -> caffe_pb2.NetParameter:
        net = overrides(net_param, phase) if overrides is not None else net_param
        state = make_state(net.state if net.HasField("state") else None, phase, args.level, stages)
        phase_name = "TRAIN" if phase == caffe_pb2.TRAIN else "TEST"
        check_data_paths(net, filter_net(net, state).layer, net_file, command, phase_name)
        return net

    return transform


def _solver_net_file(solver_path: str) -> str | None:
    """The net file a solver names (``net`` or ``train_net``), found as the solver finds it; None
    for a net given inline (``net_param``)."""
    from pathlib import Path

    from caffe_compat.proto.io import read_solver

    param = read_solver(solver_path)
    name = param.net or param.train_net
    if not name:
        return None
    if not Path(name).exists() and (Path(solver_path).resolve().parent / name).exists():
        return str(Path(solver_path).resolve().parent / name)
    return name


def _add_python_layers(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-python-layers",
        action="store_true",
        help="run the net's Python layers (imports and runs the modules its python_param names)",
    )


def _add_state(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--level", type=int, default=0, help="the NetState level")
    parser.add_argument("--stage", default="", help="NetState stages, separated by ','")


def _writer(args: argparse.Namespace, console: Callable[[str], None] | None = None) -> GlogWriter:
    try:
        return GlogWriter(path=getattr(args, "log", None), console=console)
    except OSError as exc:
        raise CaffeCompatError(f"cannot open the log file {args.log}: {exc.strerror}") from None


def _device(args: argparse.Namespace, log: GlogWriter) -> torch.device | None:
    """``-gpu`` as Caffe reads it; None leaves the choice to the solver (its solver_mode)."""
    if not args.gpu:
        return None
    first = args.gpu.split(",")[0].strip()
    if not torch.cuda.is_available():
        log.info(f"-gpu {args.gpu} given but CUDA is not available: using the CPU", "caffe.cpp:212")
        return torch.device("cpu")
    if first == "all":
        first = "0"
    try:
        index = int(first)
    except ValueError:
        raise CaffeCompatError(
            f"-gpu must be 'all' or device ids separated by ',', got '{args.gpu}'"
        ) from None
    if not 0 <= index < torch.cuda.device_count():
        raise CaffeCompatError(f"-gpu {index}: only {torch.cuda.device_count()} CUDA device(s) present")
    return torch.device("cuda", index)


def _log_device(log: GlogWriter, device: torch.device) -> None:
    if device.type == "cuda":
        log.info(f"Using GPUs {device.index or 0}", "caffe.cpp:217")
        log.info(f"GPU {device.index or 0}: {torch.cuda.get_device_name(device)}", "caffe.cpp:222")
    else:
        log.info("Use CPU.", "caffe.cpp:212")


# --------------------------------------------------------------------------------------------
# train


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solver", required=True, help="the solver prototxt")
    parser.add_argument("--weights", default="", help="caffemodel(s) to finetune from, separated by ','")
    parser.add_argument(
        "--snapshot",
        default="",
        help="a .solverstate (or .solverstate.h5) to resume from; 'latest': the newest complete snapshot "
        "set of the solver's snapshot_prefix",
    )
    parser.add_argument("--sigint_effect", default="stop", choices=_EFFECTS, help="what Ctrl-C does")
    parser.add_argument("--sighup_effect", default="snapshot", choices=_EFFECTS, help="what SIGHUP does")
    parser.add_argument(
        "--nonfinite_effect",
        default="skip",
        choices=("skip", "stop", "none"),
        help="what a NaN or infinite loss does: skip the update on NaN (the AM-Softmax fork, default), "
        "stop with an error, or none (update anyway, as BVLC Caffe); each is logged with its layer",
    )
    parser.add_argument("--log", default=None, help="also write the log to this file")
    _add_python_layers(parser)
    _add_device(parser)
    _add_state(parser)
    _add_overrides(parser)
    from caffe_compat.distributed.launch import add_arguments

    add_arguments(parser)


class _SignalHandler:
    """Caffe's ``SignalHandler``: a signal sets a flag; the solver asks for the action once."""

    def __init__(self, sigint: str, sighup: str) -> None:
        from caffe_compat.solver.solver import SolverAction

        self.actions = {"sigint": SolverAction(sigint), "sighup": SolverAction(sighup)}
        self.none = SolverAction.NONE
        self.pending: str | None = None

    def _catch(self, name: str) -> Callable[[int, object], None]:
        def handler(signum: int, frame: object) -> None:
            self.pending = name

        return handler

    @contextmanager
    def installed(self) -> Iterator[None]:
        saved = {}
        for name, number in (("sigint", signal.SIGINT), ("sighup", getattr(signal, "SIGHUP", None))):
            if number is not None:
                saved[number] = signal.signal(number, self._catch(name))
        try:
            yield
        finally:
            for number, previous in saved.items():
                signal.signal(number, previous)

    def requested(self) -> object:
        if self.pending is None:
            return self.none
        name, self.pending = self.pending, None
        return self.actions[name]


@contextmanager
def _progress(total: int) -> Iterator[tuple[Callable[[str], None] | None, Callable[[int], None] | None]]:
    """A tqdm bar on stderr when it is a terminal: (line writer, iteration callback)."""
    if not sys.stderr.isatty():
        yield None, None
        return
    from tqdm import tqdm

    bar = tqdm(total=total, file=sys.stderr, leave=False, unit="iter", dynamic_ncols=True)
    state = {"last": 0}

    def write(line: str) -> None:
        tqdm.write(line, file=sys.stderr)

    def advance(iteration: int) -> None:
        if iteration > state["last"]:
            bar.update(iteration - state["last"])
            state["last"] = iteration

    try:
        yield write, advance
    finally:
        bar.close()


def _latest(solver: object) -> str:
    """``-snapshot latest``: the newest complete snapshot set of the solver's prefix."""
    from caffe_compat.solver.snapshot import latest_snapshot

    prefix = solver.param.snapshot_prefix
    if not prefix:
        raise SolverError(f"{solver.source}: -snapshot latest needs a snapshot_prefix in the solver")
    found = latest_snapshot(prefix)
    if found is None:
        raise SolverError(f"-snapshot latest: no complete snapshot set with prefix '{prefix}'")
    return str(found)


def _run_train(args: argparse.Namespace) -> int:
    from caffe_compat.distributed.launch import train_job
    from caffe_compat.proto.io import read_solver
    from caffe_compat.solver.solver import default_device

    if args.snapshot and args.weights:
        raise SolverError("give a snapshot to resume training or weights to finetune, but not both")
    solver_param = read_solver(args.solver)
    total = max(solver_param.max_iter, 1)
    with (
        train_job(args, solver_param) as job,
        _progress(total) if job.is_main else nullcontext((None, None)) as (console, advance),
    ):
        log = _writer(args, console) if job.is_main else job.quiet_log()
        try:
            device = job.device or _device(args, log) or default_device(solver_param)
            _log_device(log, device)
            solver = job.make_solver(
                args.solver,
                log=log,
                device=device,
                level=args.level,
                stages=args.stage.split(","),
                net_transform=_net_transform(
                    args, _solver_net_file(args.solver), f"caffe-compat train -solver {args.solver}"
                ),
                allow_python_layers=args.allow_python_layers,
                nonfinite_effect=args.nonfinite_effect,
            )
            handler = _SignalHandler(args.sigint_effect, args.sighup_effect)
            solver.action_request = handler.requested
            solver.on_iteration = advance
            if args.snapshot == "latest":
                args.snapshot = _latest(solver)
            resume = job.resume_file(args.snapshot, solver)
            if resume:
                log.info(f"Resuming from {resume}", "caffe.cpp:243")
                solver.restore(resume)
            elif args.weights:
                solver.copy_weights(args.weights)
            if advance is not None:
                advance(solver.iter)
            log.info("Starting Optimization", "caffe.cpp:249")
            with handler.installed():
                solver.solve()
            log.info("Optimization Done.", "caffe.cpp:260")
        finally:
            log.close()
    return 0


# --------------------------------------------------------------------------------------------
# test


def _add_test(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the net prototxt (run in TEST phase)")
    parser.add_argument("--weights", required=True, help="the caffemodel to score")
    parser.add_argument("--iterations", type=int, default=50, help="number of batches")
    parser.add_argument("--log", default=None, help="also write the log to this file")
    _add_python_layers(parser)
    _add_device(parser)
    _add_state(parser)
    _add_overrides(parser)


def _run_test(args: argparse.Namespace) -> int:
    from caffe_compat.solver.tools import score

    log = _writer(args)
    try:
        device = _device(args, log)
        score(
            args.model,
            args.weights,
            args.iterations,
            log,
            device,
            args.level,
            args.stage.split(","),
            net_transform=_net_transform(
                args, args.model, f"caffe-compat test -model {args.model} -weights {args.weights}"
            ),
            allow_python_layers=args.allow_python_layers,
        )
    finally:
        log.close()
    return 0


# --------------------------------------------------------------------------------------------
# time


def _add_time(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="the net prototxt")
    parser.add_argument("--iterations", type=int, default=50, help="number of forward-backward passes")
    parser.add_argument("--phase", default="TRAIN", choices=("TRAIN", "TEST"), help="the net's phase")
    parser.add_argument("--log", default=None, help="also write the log to this file")
    _add_python_layers(parser)
    _add_device(parser)
    _add_state(parser)
    _add_overrides(parser)


def _run_time(args: argparse.Namespace) -> int:
    from caffe_compat.solver.tools import benchmark

    log = _writer(args)
    try:
        device = _device(args, log)
        benchmark(
            args.model,
            args.iterations,
            log,
            device,
            args.phase,
            args.level,
            args.stage.split(","),
            net_transform=_net_transform(args, args.model, f"caffe-compat time -model {args.model}"),
            allow_python_layers=args.allow_python_layers,
        )
    finally:
        log.close()
    return 0


COMMANDS: dict = {
    "train": ("train or finetune a model (Caffe's caffe train)", _add_train, _run_train),
    "test": ("score a model (Caffe's caffe test)", _add_test, _run_test),
    "time": ("benchmark a model's execution time per layer (Caffe's caffe time)", _add_time, _run_time),
}
