"""``caffe-compat train`` under torchrun (gloo, loopback only) against one process.

A golden face20 case (tests/goldens/train/face20_*: batch 8, iter_size 2, HDF5 data), cut to 20
iterations: 2 ranks must log the same losses and outputs (1e-5 relative) and snapshot the same
weights as one process with batch 16, with data parallelism alone, with the classifier sharded by
class (``--model-parallel``), over two "nodes" with a c10d rendezvous, and after a rank is killed
and torchrun restarts the job from the last snapshot.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_solver_goldens import GOLDENS, TrainLog, parse_train_log

from caffe_compat.cli import main as cli_main
from caffe_compat.proto.io import blob_to_array, read_caffemodel

ROOT = Path(__file__).resolve().parent.parent
ITERS = 20
RTOL = 1e-5
TIMEOUT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_env(*paths: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *map(str, paths), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", CAFFE_COMPAT_DIST_TIMEOUT="120")
    return env


def torchrun(
    work: Path, launch: list[str], args: list[str], env: dict | None = None, options: tuple[str, ...] = ()
) -> subprocess.Popen:
    """Start ``torchrun LAUNCH -m caffe_compat.cli OPTIONS train ARGS`` in ``work`` (output to a file)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launch,
        "-m",
        "caffe_compat.cli",
        *options,
        "train",
        *args,
    ]
    out = (work / f"torchrun_{free_port()}.txt").open("w")
    return subprocess.Popen(command, cwd=work, env=env or launch_env(), stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, work: Path) -> None:
    try:
        code = process.wait(TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    if code != 0:
        logs = "\n".join(p.read_text()[-3000:] for p in work.glob("torchrun_*.txt"))
        raise AssertionError(f"torchrun exited with {code}:\n{logs}")


def copy_case(case: str, work: Path, **solver: object) -> Path:
    shutil.copytree(GOLDENS / case, work, ignore=shutil.ignore_patterns("final_iter_*", "caffe_*.log"))
    text = (work / "solver.prototxt").read_text().replace("max_iter: 60", f"max_iter: {ITERS}")
    for key, value in solver.items():
        text = "\n".join(line for line in text.splitlines() if not line.startswith(f"{key}:"))
        text += f"\n{key}: {value}\n"
    (work / "solver.prototxt").write_text(text)
    return work


def one_process(case: str, work: Path) -> Path:
    """The reference: one process, batch 16 (train and test), same solver."""
    copy_case(case, work)
    cwd = os.getcwd()
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    os.chdir(work)
    try:
        args = ["train", "-solver", "solver.prototxt", "-weights", "init.caffemodel", "-log", "ours.log"]
        args += [
            "-set",
            "TRAIN:data.hdf5_data_param.batch_size=16",
            "-set",
            "TEST:data.hdf5_data_param.batch_size=16",
        ]
        assert cli_main(args) == 0
    finally:
        os.chdir(cwd)
        torch.set_num_threads(saved)
    return work


def two_ranks(case: str, work: Path, *extra: str, **solver: object) -> Path:
    copy_case(case, work, **solver)
    launch = ["--nproc_per_node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    args = ["-solver", "solver.prototxt", "-weights", "init.caffemodel", "-log", "ours.log", *extra]
    finish(torchrun(work, launch, args), work)
    return work


def weights(path: Path) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [blob_to_array(b) for b in layer.blobs]
        for layer in read_caffemodel(path).layer
        if layer.blobs
    }


def compare(ours: TrainLog, reference: TrainLog) -> float:
    """Every logged number against the reference within RTOL; returns the largest relative
    difference of the losses."""
    assert sorted(ours.loss) == sorted(reference.loss) == list(range(ITERS))
    worst = 0.0
    for it, value in reference.loss.items():
        worst = max(worst, abs(ours.loss[it] - value) / abs(value))
        for name, output in reference.train[it].items():
            assert ours.train[it][name] == pytest.approx(output, rel=RTOL), (it, name)
    assert sorted(ours.test) == sorted(reference.test)
    for it, outputs in reference.test.items():
        for name, value in outputs.items():
            assert ours.test[it][name] == pytest.approx(value, rel=0 if "acc" in name else RTOL), (it, name)
    assert ours.final.keys() == reference.final.keys()
    for it, value in reference.final.items():
        worst = max(worst, abs(ours.final[it] - value) / abs(value))
    assert worst <= RTOL, worst
    return worst


def compare_weights(ours: Path, reference: Path, atol: float = 1e-5) -> float:
    mine, theirs = weights(ours), weights(reference)
    assert mine.keys() == theirs.keys()
    worst = 0.0
    for layer, blobs in theirs.items():
        for a, b in zip(mine[layer], blobs, strict=True):
            assert a.shape == b.shape, layer
            worst = max(worst, float(np.abs(a - b).max()))
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=layer)
    return worst


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return one_process("face20_amsoftmax", tmp_path_factory.mktemp("one") / "case")


@pytest.fixture(scope="module")
def data_parallel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return two_ranks("face20_amsoftmax", tmp_path_factory.mktemp("two") / "case")


def test_two_ranks_train_as_one_process_with_the_doubled_batch(data_parallel: Path, reference: Path) -> None:
    text = (data_parallel / "ours.log").read_text()
    ours, ref = parse_train_log(text), parse_train_log((reference / "ours.log").read_text())
    worst = compare(ours, ref)
    print(f"data parallel: max relative loss difference {worst:.2e}")
    assert text.count("Iteration 7 (") == 1 and ours.done == 2  # rank 0 logs, alone
    assert "Distributed training: rank 0 of 2" in text
    assert "effective batch = batch_size x 2 x iter_size 2" in text
    diff = compare_weights(
        data_parallel / f"final_iter_{ITERS}.caffemodel", reference / f"final_iter_{ITERS}.caffemodel"
    )
    print(f"data parallel: max weight difference {diff:.2e}")
    side = torch.load(data_parallel / f"final_iter_{ITERS}.caffe_compat.pt", weights_only=False)
    assert side["distributed"]["world_size"] == 2 and len(side["distributed"]["rng"]) == 2


def test_classifier_sharded_by_class_trains_as_one_process(tmp_path: Path, reference: Path) -> None:
    """The AM-Softmax chain (InnerProduct normalize + LabelSpecificAdd + Scale + SoftmaxWithLoss,
    Accuracy in TEST) with fc6_l2 split over the two ranks."""
    work = two_ranks("face20_amsoftmax", tmp_path / "case", "--model-parallel", "fc6_l2")
    ours, ref = (
        parse_train_log((work / "ours.log").read_text()),
        parse_train_log((reference / "ours.log").read_text()),
    )
    worst = compare(ours, ref)
    print(f"model parallel: max relative loss difference {worst:.2e}")
    model = work / f"final_iter_{ITERS}.caffemodel"
    assert [b.shape for b in weights(model)["fc6_l2"]] == [(10, 64)]  # gathered from both ranks
    diff = compare_weights(model, reference / f"final_iter_{ITERS}.caffemodel")
    print(f"model parallel: max weight difference {diff:.2e}")


@pytest.mark.slow
def test_sphereface_classifier_sharded_by_class(tmp_path: Path) -> None:
    """MarginInnerProduct (SphereFace, Caffe's hand-written backward) split over the two ranks."""
    ref = one_process("face20_sphereface", tmp_path / "one")
    work = two_ranks("face20_sphereface", tmp_path / "two", "--model-parallel", "fc6")
    compare(parse_train_log((work / "ours.log").read_text()), parse_train_log((ref / "ours.log").read_text()))
    compare_weights(
        work / f"final_iter_{ITERS}.caffemodel", ref / f"final_iter_{ITERS}.caffemodel", atol=5e-5
    )


@pytest.mark.slow
def test_two_nodes_with_a_c10d_rendezvous(tmp_path: Path, reference: Path) -> None:
    """``--nnodes 2 --nproc_per_node 1`` with a c10d rendezvous on 127.0.0.1 (two agents)."""
    work = copy_case("face20_amsoftmax", tmp_path / "case")
    port = free_port()
    launch = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d"]
    launch += ["--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "face20", "--local-addr", "127.0.0.1"]
    args = ["-solver", "solver.prototxt", "-weights", "init.caffemodel", "-log", "ours.log"]
    agents = [torchrun(work, launch, args) for _ in range(2)]
    for agent in agents:
        finish(agent, work)
    ours, ref = (
        parse_train_log((work / "ours.log").read_text()),
        parse_train_log((reference / "ours.log").read_text()),
    )
    compare(ours, ref)
    compare_weights(work / f"final_iter_{ITERS}.caffemodel", reference / f"final_iter_{ITERS}.caffemodel")


KILLER = '''
import os
import signal

from caffe_compat.solver.solver import Solver

_update = Solver.apply_update


def apply_update(self):
    """Rank 1 dies before the update of iteration {at}, in the first attempt only."""
    first = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first and os.environ.get("RANK") == "1" and self.iter == {at}:
        os.kill(os.getpid(), signal.SIGKILL)
    _update(self)


Solver.apply_update = apply_update
'''


@pytest.mark.slow
def test_killed_rank_restarts_from_the_last_snapshot(tmp_path: Path, data_parallel: Path) -> None:
    """Rank 1 is killed at iteration 12; torchrun --max-restarts 1 restarts both ranks, which
    resume from the snapshot of iteration 10 and end with the uninterrupted run's weights."""
    work = copy_case("face20_amsoftmax", tmp_path / "case", snapshot=5)
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "kill_rank1.py").write_text(KILLER.format(at=12))
    launch = [
        "--nproc_per_node",
        "2",
        "--max-restarts",
        "1",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(free_port()),
    ]
    args = ["-solver", "solver.prototxt", "-weights", "init.caffemodel", "-log", "ours.log"]
    finish(torchrun(work, launch, args, launch_env(plugin), ("--plugin", "kill_rank1")), work)
    output = "".join(p.read_text() for p in work.glob("torchrun_*.txt"))
    assert "failed (exitcode: -9) local_rank: 1" in output, output[-2000:]  # the agent saw rank 1 killed
    text = (work / "ours.log").read_text()
    assert "resuming from the last snapshot" in text and "final_iter_10.solverstate" in text
    ours = parse_train_log(text)
    assert min(ours.loss) == 10 and max(ours.loss) == ITERS - 1
    uninterrupted = parse_train_log((data_parallel / "ours.log").read_text())
    for it in range(10, ITERS):
        assert ours.loss[it] == uninterrupted.loss[it], it
    mine = weights(work / f"final_iter_{ITERS}.caffemodel")
    theirs = weights(data_parallel / f"final_iter_{ITERS}.caffemodel")
    for layer, blobs in theirs.items():
        for a, b in zip(mine[layer], blobs, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=layer)
