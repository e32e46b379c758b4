"""``caffe-compat train`` against real Caffe's training logs (tests/goldens/train/*).

Each case runs in a copy of its directory, as ``caffe train`` ran: every logged ``lr`` must equal
Caffe's, every smoothed loss and ``Train net output`` must be within 1e-4 relative (5e-4 for the
face20 nets) of Caffe's at every iteration, the test outputs likewise (accuracy exactly), and the
snapshots' weights within 1e-4 of Caffe's. Resuming from Caffe's own solverstate must reproduce
Caffe's resumed log (``caffe_resume.log``).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch

from caffe_compat.cli import main as cli_main
from caffe_compat.proto.io import blob_to_array, read_caffemodel

GOLDENS = Path(__file__).parent / "goldens" / "train"
SOLVER_CASES = sorted(p.name for p in GOLDENS.glob("solver_*"))
FACE_CASES = ["face20_softmax", "face20_amsoftmax", "face20_sphereface"]

_PREFIX = re.compile(r"^[IWEF]\d{4,8} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]+\] (.*)$")
_ITER = re.compile(r"^Iteration (\d+) \(.*\), loss = (\S+)$")
_FINAL = re.compile(r"^Iteration (\d+), loss = (\S+)$")
_LR = re.compile(r"^Iteration (\d+), lr = (\S+)$")
_TESTING = re.compile(r"^Iteration (\d+), Testing net \(#(\d+)\)$")
_OUTPUT = re.compile(r"^    (Train|Test) net output #(\d+): (\S+) = (\S+)(?: \(\* (\S+) = (\S+) loss\))?$")
_SNAPSHOT = re.compile(r"^Snapshotting (?:solver state )?to binary proto file (\S+)$")


@dataclass
class TrainLog:
    """What a ``caffe train`` log says, by iteration."""

    loss: dict[int, float] = field(default_factory=dict)  # smoothed loss of "Iteration N (...)"
    lr: dict[int, str] = field(default_factory=dict)  # the rate exactly as printed
    train: dict[int, dict[str, float]] = field(default_factory=dict)
    test: dict[int, dict[str, float]] = field(default_factory=dict)
    final: dict[int, float] = field(default_factory=dict)  # "Iteration N, loss = L" after training
    snapshots: list[str] = field(default_factory=list)
    done: int = 0  # "Optimization Done." lines


def parse_train_log(text: str) -> TrainLog:
    """A small parser of Caffe's training log (message text only; prefix fields are ignored)."""
    log = TrainLog()
    current, testing = None, None
    for line in text.splitlines():
        match = _PREFIX.match(line)
        if not match:
            continue
        message = match.group(1)
        if m := _ITER.match(message):
            current, testing = int(m.group(1)), None
            log.loss[current] = float(m.group(2))
            log.train[current] = {}
        elif m := _FINAL.match(message):
            log.final[int(m.group(1))] = float(m.group(2))
        elif m := _LR.match(message):
            log.lr[int(m.group(1))] = m.group(2)
        elif m := _TESTING.match(message):
            testing = int(m.group(1))
            log.test[testing] = {}
        elif m := _OUTPUT.match(message):
            kind, name, value = m.group(1), m.group(3), float(m.group(4))
            target = log.train[current] if kind == "Train" else log.test[testing]
            target[name] = value
        elif m := _SNAPSHOT.match(message):
            log.snapshots.append(m.group(1))
        elif message == "Optimization Done.":
            log.done += 1
    return log


def _close(ours: float, theirs: float, rtol: float) -> bool:
    return abs(ours - theirs) <= rtol * max(abs(theirs), 1e-6)


def compare_logs(ours: TrainLog, caffe: TrainLog, rtol: float) -> list[str]:
    """Every difference beyond ``rtol`` between two parsed logs (an empty list when they agree)."""
    problems = []
    if sorted(ours.loss) != sorted(caffe.loss):
        problems.append(f"iterations differ: {sorted(ours.loss)} vs {sorted(caffe.loss)}")
    if ours.lr != caffe.lr:
        problems.append(
            f"lr differs: {[(k, ours.lr.get(k), v) for k, v in caffe.lr.items() if ours.lr.get(k) != v]}"
        )
    for it, value in caffe.loss.items():
        if it in ours.loss and not _close(ours.loss[it], value, rtol):
            problems.append(f"iteration {it}: loss {ours.loss[it]} vs {value}")
    for it, outputs in caffe.train.items():
        if ours.train.get(it, {}).keys() != outputs.keys():
            problems.append(f"iteration {it}: train outputs {ours.train.get(it)} vs {outputs}")
            continue
        for name, value in outputs.items():
            if not _close(ours.train[it][name], value, rtol):
                problems.append(f"iteration {it}: train {name} {ours.train[it][name]} vs {value}")
    if sorted(ours.test) != sorted(caffe.test):
        problems.append(f"test iterations differ: {sorted(ours.test)} vs {sorted(caffe.test)}")
    for it, outputs in caffe.test.items():
        if ours.test.get(it, {}).keys() != outputs.keys():
            problems.append(f"test at {it}: outputs {ours.test.get(it)} vs {outputs}")
            continue
        for name, value in outputs.items():
            tol = 0.0 if "acc" in name else rtol
            if not _close(ours.test[it][name], value, tol):
                problems.append(f"test at {it}: {name} {ours.test[it][name]} vs {value}")
    for it, value in caffe.final.items():
        if it not in ours.final or not _close(ours.final[it], value, rtol):
            problems.append(f"final loss at {it}: {ours.final.get(it)} vs {value}")
    if [Path(s).name for s in ours.snapshots] != [Path(s).name for s in caffe.snapshots]:
        problems.append(f"snapshots {ours.snapshots} vs {caffe.snapshots}")
    if ours.done != caffe.done:
        problems.append(f"'Optimization Done.' printed {ours.done} times, Caffe {caffe.done}")
    return problems


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny nets: one intra-op thread is fastest, and avoids oversubscribing a shared machine."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _copy_case(name: str, tmp_path: Path) -> Path:
    """The case directory without Caffe's snapshots (our run writes its own)."""
    work = tmp_path / name
    shutil.copytree(GOLDENS / name, work, ignore=shutil.ignore_patterns("final_iter_*"))
    return work


def _train(work: Path, monkeypatch: pytest.MonkeyPatch, *args: str) -> TrainLog:
    monkeypatch.chdir(work)
    assert cli_main(["train", "-solver", "solver.prototxt", *args, "-log", "ours.log"]) == 0
    return parse_train_log((work / "ours.log").read_text())


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [blob_to_array(b) for b in layer.blobs]
        for layer in read_caffemodel(path).layer
        if layer.blobs
    }


def _rtol(case: str) -> float:
    return 5e-4 if case.startswith("face20") else 1e-4


def _check_iters_json(case: str, ours: TrainLog) -> None:
    """The run against the case's ``iters.json`` (Caffe's numbers, as the README describes them)."""
    golden = json.loads((GOLDENS / case / "iters.json").read_text())
    rtol = _rtol(case)
    for key, entry in golden["train"].items():
        it = int(key)
        loss = ours.loss.get(it, ours.final.get(it))
        assert loss is not None and _close(loss, entry["loss"], rtol), (case, it, loss, entry["loss"])
        if "lr" in entry:
            assert float(ours.lr[it]) == pytest.approx(entry["lr"], rel=1e-6), (case, it)
        for name, value in entry["outputs"].items():
            assert _close(ours.train[it][name], value, rtol), (case, it, name, ours.train[it][name], value)
    for key, outputs in golden["test"].items():
        for name, value in outputs.items():
            tol = 0.0 if "acc" in name else rtol
            assert _close(ours.test[int(key)][name], value, tol), (case, key, name)


def _run_case(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, TrainLog]:
    work = _copy_case(case, tmp_path)
    ours = _train(work, monkeypatch, "-weights", "init.caffemodel")
    caffe = parse_train_log((GOLDENS / case / "caffe_train.log").read_text())
    problems = compare_logs(ours, caffe, _rtol(case))
    assert not problems, "\n".join(problems[:20])
    _check_iters_json(case, ours)
    return work, ours


@pytest.mark.parametrize("case", SOLVER_CASES)
def test_solver_case_matches_caffe(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work, ours = _run_case(case, tmp_path, monkeypatch)
    assert ours.lr, "no lr lines parsed"
    for snapshot in sorted((GOLDENS / case).glob("final_iter_*.caffemodel")):
        mine, theirs = _weights(work / snapshot.name), _weights(snapshot)
        assert mine.keys() == theirs.keys()
        for layer, blobs in theirs.items():
            for a, b in zip(mine[layer], blobs, strict=True):
                np.testing.assert_allclose(
                    a, b, rtol=1e-4, atol=1e-6, err_msg=f"{case} {snapshot.name} {layer}"
                )


@pytest.mark.parametrize("case", SOLVER_CASES)
def test_solver_case_resumes_like_caffe(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-snapshot final_iter_7.solverstate`` (Caffe's own file, no side file) gives Caffe's resumed log."""
    work = _copy_case(case, tmp_path)
    for name in ("final_iter_7.solverstate", "final_iter_7.caffemodel"):
        shutil.copy(GOLDENS / case / name, work / name)
    ours = _train(work, monkeypatch, "-snapshot", "final_iter_7.solverstate")
    caffe = parse_train_log((GOLDENS / case / "caffe_resume.log").read_text())
    problems = compare_logs(ours, caffe, _rtol(case))
    assert not problems, "\n".join(problems[:20])


@pytest.mark.parametrize("case", FACE_CASES)
def test_face20_case_matches_caffe(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _run_case(case, tmp_path, monkeypatch)


@pytest.mark.parametrize("case", FACE_CASES)
def test_face20_case_resumes_like_caffe(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _copy_case(case, tmp_path)
    for name in ("final_iter_20.solverstate", "final_iter_20.caffemodel"):
        shutil.copy(GOLDENS / case / name, work / name)
    ours = _train(work, monkeypatch, "-snapshot", "final_iter_20.solverstate")
    caffe = parse_train_log((GOLDENS / case / "caffe_resume.log").read_text())
    problems = compare_logs(ours, caffe, _rtol(case))
    assert not problems, "\n".join(problems[:20])


def test_parser_reads_caffe_log() -> None:
    """The parser itself, on Caffe's log of solver_sgd_step (values read off the file)."""
    log = parse_train_log((GOLDENS / "solver_sgd_step" / "caffe_train.log").read_text())
    assert sorted(log.loss) == list(range(21))
    assert log.loss[0] == 1.31015 and log.train[0] == {"loss": 1.30513}
    assert log.lr[7] == "0.01" and log.lr[14] == "0.001"
    assert log.test[7] == {"acc": 0.4375, "loss": 1.36126}
    assert log.final == {21: 1.1188}
    assert log.done == 2 and len(log.snapshots) == 6
