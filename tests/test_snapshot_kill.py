"""Training killed with SIGKILL at any moment keeps its newest complete snapshot set loadable, and a
resume from it continues the very trajectory of an uninterrupted run.

The tiny MLP solver (tests/goldens/train/solver_sgd_step, 30 iterations, a snapshot set every
iteration, no test net) is run by child processes forked from a forkserver that has imported and
warmed up caffe-compat (``snapshot_kill_child``; a start then takes milliseconds). One training job
is killed again and again (36 plans; a child that finishes first starts a fresh job) and restarted
after each kill from ``latest_snapshot``, as a preemptible job would be: 12 kills at file operations (just before and just after each of the first six
``os.replace`` of a restarted child: a caffemodel, side file or solverstate of its first two
sets, leaving temporary files and half-written sets behind), then 24 at random moments.

After every kill: no solverstate lacks the rest of its set; the newest complete set loads
(solverstate, caffemodel, side file) and equals, bit for bit, the set the uninterrupted reference
run wrote at the same iteration; the next child resumes from it. The job, finished at last, ends
with the reference's weights and solver history bit for bit: every resumed segment followed the
reference trajectory.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from snapshot_kill_child import PREFIX, child, train
from test_solver_goldens import GOLDENS

from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import blob_to_array, read_caffemodel
from caffe_compat.solver import snapshot as snap

MAX_ITER = 30
EVENT_KILLS = 12
RANDOM_KILLS = 24


def _workdir(folder: Path) -> Path:
    work = folder / "run"
    shutil.copytree(GOLDENS / "solver_sgd_step", work, ignore=shutil.ignore_patterns("final_iter_*", "*.log"))
    param = caffe_pb2.SolverParameter()
    text_format.Parse((work / "solver.prototxt").read_text(), param)
    param.max_iter, param.snapshot, param.snapshot_prefix = MAX_ITER, 1, PREFIX
    param.ClearField("test_iter")
    param.test_interval = 0
    (work / "snaps").mkdir()
    (work / "solver.prototxt").write_text(text_format.MessageToString(param))
    return work


def _equal(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(a, b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _load_set(state_path: Path) -> dict:
    """A snapshot set as values: the weights, the solverstate and the side file's content."""
    state = snap.read_state(state_path)
    model = read_caffemodel(snap.learned_net_path(state_path, state.learned_net))
    return {
        "weights": [blob_to_array(b) for layer in model.layer for b in layer.blobs],
        "state": (state.iter, state.current_step, state.history),
        "side": snap.read_side_file(snap.side_file_for(state_path)),
    }


def _no_partial_sets(work: Path) -> None:
    """Every solverstate present belongs to a complete set (a set's solverstate is written last)."""
    for state in (work / "snaps").glob("mlp_iter_*.solverstate"):
        assert snap.side_file_for(state).is_file(), state
        assert state.with_suffix(".caffemodel").is_file(), state


def test_sigkill_at_any_moment_keeps_a_loadable_set_that_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the forkserver imports its preload modules with its own sys.path: give it this folder
    here = str(Path(__file__).resolve().parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([here, *filter(None, [os.environ.get("PYTHONPATH")])]))
    cwd = os.getcwd()
    try:
        reference_dir = _workdir(tmp_path / "reference")
        train(reference_dir, resume=False)
    finally:
        os.chdir(cwd)
    reference = {
        i: _load_set(reference_dir / "snaps" / f"mlp_iter_{i}.solverstate") for i in range(1, MAX_ITER + 1)
    }

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["snapshot_kill_child"])
    work = _workdir(tmp_path / "job")
    rng = random.Random(16)
    plans = [(i // 2, i % 2 == 1, None) for i in range(EVENT_KILLS)]
    plans += [(-1, False, rng.uniform(0.0, 0.5)) for _ in range(RANDOM_KILLS)]
    kills, checked, jobs, iterations = 0, 0, 0, []
    deadline = time.monotonic() + 300
    for kill_at, after, delay in plans:
        process = context.Process(target=child, args=(str(work), kill_at, after))
        process.start()
        if delay is not None:
            process.join(delay)
            if process.is_alive():
                os.kill(process.pid, signal.SIGKILL)
        process.join(max(1.0, deadline - time.monotonic()))
        assert not process.is_alive(), "the training child hung"
        if process.exitcode != -signal.SIGKILL:  # it finished before the kill: a fresh job
            assert process.exitcode == 0, process.exitcode
            jobs += 1
            work = _workdir(tmp_path / f"job{jobs}")
            continue
        kills += 1
        _no_partial_sets(work)
        latest = snap.latest_snapshot(work / PREFIX)
        if latest is None:  # killed before its first set was complete
            assert not list((work / "snaps").glob("*.solverstate"))
            continue
        found = _load_set(latest)
        iteration = found["state"][0]
        assert _equal(found, reference[iteration]), (
            f"the set of iteration {iteration} differs after kill {kills}"
        )
        iterations.append(iteration)
        checked += 1
    # the job, restarted after its last kill, finishes as the uninterrupted run did
    process = context.Process(target=child, args=(str(work), -1, False))
    process.start()
    process.join(120)
    assert process.exitcode == 0
    assert _equal(_load_set(work / "snaps" / f"mlp_iter_{MAX_ITER}.solverstate"), reference[MAX_ITER])
    # a child that finished before its kill started a fresh job: nearly every plan is a kill
    assert kills >= 30 and checked >= 24, (kills, checked)
    assert len(set(iterations)) >= 10, iterations  # the kills landed all along the run
