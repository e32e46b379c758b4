"""Reliability: the memory budget, NaN and infinite losses, SIGINT/SIGHUP, the newest complete
snapshot set, the side file's content and data workers that die."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from test_solver import MLP, _case, _messages, _train, _weights

from caffe_compat.cli import main as cli_main
from caffe_compat.data.loader import BatchLoader
from caffe_compat.errors import CaffeCompatError, LayerError, SolverError
from caffe_compat.log.glog import GlogWriter
from caffe_compat.net.budget import (
    BUDGET_ENV,
    MemoryBudgetError,
    machine_memory,
    memory_budget,
    memory_budget_limit,
    parse_size,
)
from caffe_compat.net.net import Net
from caffe_compat.solver import commands
from caffe_compat.solver import snapshot as snap
from caffe_compat.solver.solver import Solver


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


# --------------------------------------------------------------------------------------------
# the memory budget


def test_budget_sizes_and_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_size("123") == 123
    assert parse_size("512M") == 512 << 20
    assert parse_size("8GiB") == 8 << 30
    assert parse_size("1.5t") == 3 << 39
    assert parse_size("off") is None and parse_size("0") is None
    with pytest.raises(CaffeCompatError, match=r"CAFFE_COMPAT_MEMORY_BUDGET='lots' is not a size"):
        parse_size("lots")
    monkeypatch.setenv(BUDGET_ENV, "3G")
    assert memory_budget() == 3 << 30
    with memory_budget_limit(1000):
        assert memory_budget() == 1000
    assert memory_budget() == 3 << 30
    monkeypatch.setenv(BUDGET_ENV, "off")
    assert memory_budget() is None
    monkeypatch.delenv(BUDGET_ENV)
    assert memory_budget() == machine_memory() > 1 << 28


def _ip_chain(count: int, width: int = 1024, inputs: int = 512) -> str:
    layers = [
        f'layer {{ name: "x" type: "Input" top: "ip0" input_param {{ shape {{ dim: 1 dim: {inputs} }} }} }}'
    ]
    for i in range(1, count + 1):
        size = width if i % 2 else inputs
        layers.append(
            f'layer {{ name: "ip{i}" type: "InnerProduct" bottom: "ip{i - 1}" top: "ip{i}" '
            f"inner_product_param {{ num_output: {size} }} }}"
        )
    return "\n".join(layers)


def test_the_build_guard_counts_the_memory_a_build_keeps() -> None:
    """Each InnerProduct weight is 2 MiB, allocated twice while it is filled (the placeholder and
    the filled blob): 7 MiB hold two layers (peaks of 4 and 6 MiB) but not the third's 8 MiB."""
    with memory_budget_limit(9 << 20):
        net = Net(_ip_chain(3))
        assert [tuple(t.shape) for t in net.params["ip3"]] == [(1024, 512), (1024,)]
    with memory_budget_limit(7 << 20):
        Net(_ip_chain(2))
        with pytest.raises(
            MemoryBudgetError,
            match=r"^layer 'ip3' \(InnerProduct\): a blob of shape \[1024, 512\] needs 2\.0 MiB with 6\.0 MiB held "
            r"already, more than the memory budget of 7\.0 MiB \(set CAFFE_COMPAT_MEMORY_BUDGET",
        ):
            Net(_ip_chain(3))


def test_the_blobs_are_checked_once_built_and_meta_builds_count_too(tmp_path: Path) -> None:
    text = (
        'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 64 dim: 3 dim: 512 dim: 512 } } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "data" top: "r" }\n'
    )
    with memory_budget_limit(100 << 20):
        with pytest.raises(
            MemoryBudgetError,
            match=r"^the net's blobs and parameters need 384\.0 MiB \(the largest, blob 'data' of layer 'data' "
            r"\(Input\), has shape \[64, 3, 512, 512\]: 192\.0 MiB\), more than the memory budget of 100\.0 MiB",
        ):
            Net(text)
        path = tmp_path / "big.prototxt"
        path.write_text(text)
        with pytest.raises(MemoryBudgetError, match=r"^.*big\.prototxt: the net's blobs"):
            Net(path)
        with torch.device("meta"):  # a conversion's shapes-only build is held to the budget as well
            with pytest.raises(MemoryBudgetError, match="the net's blobs and parameters need"):
                Net(text)
    with memory_budget_limit(0):  # off
        assert Net(text).blob_shapes["r"] == (64, 3, 512, 512)


# --------------------------------------------------------------------------------------------
# NaN and infinite losses

NAN_SOLVER = """
net_param {
  layer { name: "data" type: "DummyData" top: "data" top: "label"
          dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 }
                             data_filler { type: "constant" value: -1 } data_filler { type: "constant" value: 0 } } }
  layer { name: "log" type: "Log" bottom: "data" top: "log" }
  layer { name: "ip" type: "InnerProduct" bottom: "log" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.1 } } }
  layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
}
base_lr: 0.1 lr_policy: "fixed" max_iter: 3 display: 1 solver_mode: CPU random_seed: 3
"""

INF_SOLVER = """
net_param {
  layer { name: "data" type: "DummyData" top: "data" top: "target"
          dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 2 }
                             data_filler { type: "constant" value: 1e30 } data_filler { type: "constant" value: 0 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
          inner_product_param { num_output: 2 weight_filler { type: "constant" value: 1 } } }
  layer { name: "pow" type: "Power" bottom: "ip" top: "pow" power_param { power: 2 } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "pow" bottom: "target" top: "loss" }
}
base_lr: 0.1 lr_policy: "fixed" max_iter: 2 display: 1 solver_mode: CPU
"""


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Solvers without a snapshot_prefix snapshot into the working directory after training."""
    monkeypatch.chdir(tmp_path)


def _solver(text: str, **kwargs: object) -> tuple[Solver, list[str]]:
    log = GlogWriter(stream=None)
    log.lines = []
    return Solver(text, log=log, **kwargs), log.lines


def test_a_nan_loss_is_skipped_by_default_and_names_its_layer() -> None:
    solver, lines = _solver(NAN_SOLVER)
    before = solver.net.params["ip"][0].detach().clone()
    solver.solve()
    text = "\n".join(lines)
    assert solver.iter == 3
    assert re.search(r"Iteration 0, loss = -?nan, ignore and continue\.", text)  # glibc prints -nan
    assert re.search(
        r"Iteration 2: the loss is -?nan; the first non-finite blob is 'log', top of layer 'log' \(Log\); the "
        r"update is skipped \(the fork's NaN rule\)",
        text,
    )
    assert torch.equal(solver.net.params["ip"][0], before)  # no update was applied


def test_a_nan_loss_stops_training_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    solver, _ = _solver(NAN_SOLVER, nonfinite_effect="stop")
    with pytest.raises(
        SolverError,
        match=r"^<solver text>: Iteration 0: the loss is -?nan; the first non-finite blob is 'log', top of layer "
        r"'log' \(Log\); stopped \(-nonfinite_effect stop\)$",
    ):
        solver.solve()
    assert solver.iter == 0
    (tmp_path / "solver.prototxt").write_text(NAN_SOLVER)
    monkeypatch.chdir(tmp_path)
    assert cli_main(["train", "-solver", "solver.prototxt", "-nonfinite_effect", "stop"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert re.match(r"caffe-compat train: error: solver\.prototxt: Iteration 0: the loss is -?nan;", last), (
        last
    )
    with pytest.raises(SolverError, match="nonfinite_effect must be one of skip, stop, none"):
        _solver(NAN_SOLVER, nonfinite_effect="ignore")


def test_nonfinite_effect_none_updates_as_bvlc_caffe() -> None:
    solver, lines = _solver(NAN_SOLVER, nonfinite_effect="none")
    solver.solve()
    assert "ignore and continue" not in "\n".join(lines)
    assert "the update is applied" in "\n".join(lines)
    assert torch.isnan(solver.net.params["ip"][0]).all()  # the NaN gradient went into the weights


def test_an_infinite_loss_names_its_layer_and_is_updated_with_as_in_the_fork() -> None:
    solver, lines = _solver(INF_SOLVER)
    solver.step(1)
    text = "\n".join(lines)
    assert solver.iter == 1
    assert (
        "Iteration 0: the loss is inf; the first non-finite blob is 'pow', top of layer 'pow' (Power); the "
        "update is applied" in text
    )
    assert "Iteration 0 (" in text and "loss = inf" in text


# --------------------------------------------------------------------------------------------
# SIGINT and SIGHUP


@pytest.mark.parametrize(
    ("signum", "flags", "stops", "snapshots"),
    [
        (signal.SIGHUP, [], False, True),  # Caffe's default -sighup_effect snapshot
        (signal.SIGHUP, ["-sighup_effect", "stop"], True, True),  # stop, then snapshot_after_train
        (signal.SIGINT, ["-sigint_effect", "snapshot"], False, True),
        (signal.SIGINT, ["-sigint_effect", "none"], False, False),
    ],
    ids=["sighup-snapshot", "sighup-stop", "sigint-snapshot", "sigint-none"],
)
def test_signal_effects(
    signum: int,
    flags: list[str],
    stops: bool,
    snapshots: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    work = _case(tmp_path)
    sent = {}

    @__import__("contextlib").contextmanager
    def progress(total: int):
        def advance(iteration: int) -> None:
            if iteration == 3 and not sent:
                sent["yes"] = True
                os.kill(os.getpid(), signum)

        yield None, advance

    monkeypatch.setattr(commands, "_progress", progress)
    messages = _messages(_train(work, monkeypatch, "-weights", "init.caffemodel", *flags))
    assert sent
    assert ("Optimization stopped early." in messages) == stops
    assert (work / "final_iter_4.solverstate").is_file() == snapshots
    assert (work / "final_iter_21.solverstate").is_file() == (not stops)


# --------------------------------------------------------------------------------------------
# the newest complete snapshot set


def test_latest_snapshot_skips_incomplete_and_broken_sets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _case(tmp_path)
    _train(work, monkeypatch, "-weights", "init.caffemodel")
    assert snap.latest_snapshot("final") == Path("final_iter_21.solverstate")
    (work / "final_iter_21.solverstate").unlink()  # a set killed before its solverstate
    assert snap.latest_snapshot(work / "final") == work / "final_iter_14.solverstate"
    (work / "final_iter_14.caffe_compat.pt").write_bytes(b"garbage")  # a broken side file
    assert snap.latest_snapshot("final") == Path("final_iter_7.solverstate")
    text = _train(work, monkeypatch, "-snapshot", "latest", log="resumed.log")
    assert "Resuming from final_iter_7.solverstate" in text
    resumed = _weights(work / "final_iter_21.caffemodel")
    clean = _case(tmp_path / "clean")
    _train(clean, monkeypatch, "-weights", "init.caffemodel")
    for layer, blobs in _weights(clean / "final_iter_21.caffemodel").items():
        for a, b in zip(resumed[layer], blobs, strict=True):
            np.testing.assert_array_equal(a, b)
    (work / "final_iter_7.caffemodel").unlink()
    for name in ("final_iter_14.solverstate", "final_iter_21.solverstate"):
        (work / name).unlink()
    assert snap.latest_snapshot(work / "final") is None
    monkeypatch.chdir(work)
    assert cli_main(["train", "-solver", "solver.prototxt", "-snapshot", "latest"]) == 1


def test_the_side_file_holds_tensors_and_plain_values_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _case(tmp_path)
    net = (work / "net.prototxt").read_text()
    (work / "net.prototxt").write_text(
        net.replace('source: "train.txt"', 'source: "train.txt"\n    shuffle: true')
    )
    monkeypatch.chdir(work)
    solver = Solver("solver.prototxt", "init.caffemodel", log=GlogWriter(stream=None))
    solver.step(3)
    _, state = solver.snapshot()
    side = snap.side_file_for(state)
    content = torch.load(side, weights_only=True)
    assert snap.check_side_content(content, str(side)) is content
    assert content["iter"] == 3 and content["data"]["train"]["data"]["rng_state"] is not None
    with pytest.raises(SolverError, match="values other than tensors, numbers, strings, lists and dicts"):
        snap.write_side_file(
            side, {**{k: v for k, v in content.items() if k != "version"}, "extra": np.zeros(2)}
        )
    assert torch.load(side, weights_only=True)["iter"] == 3  # the refused write left the file alone


def test_restore_finds_learned_net_beside_the_solverstate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """learned_net is relative to the training run's folder; resuming from elsewhere finds the
    caffemodel next to its solverstate."""
    work = _case(tmp_path, snapshot_prefix="snaps/final")
    (work / "snaps").mkdir()
    _train(work, monkeypatch, "-weights", "init.caffemodel")
    assert (
        snap.read_state(work / "snaps/final_iter_7.solverstate").learned_net
        == "snaps/final_iter_7.caffemodel"
    )
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(work, elsewhere)
    monkeypatch.chdir(elsewhere / "snaps")
    solver = Solver(str(elsewhere / "solver.prototxt"), log=GlogWriter(stream=None))
    solver.restore("final_iter_7.solverstate")
    assert solver.iter == 7


# --------------------------------------------------------------------------------------------
# data workers


class _DyingSource:
    """Batch 0 is fine; batch 1 waits for the test's go, then its worker kills itself."""

    where = "layer 'data' (Test)"

    def __init__(self, flag: Path, how: str) -> None:
        self.flag, self.how = flag, how

    def batch(self, number: int) -> tuple[torch.Tensor, ...]:
        if number >= 1:
            while not self.flag.exists():
                time.sleep(0.01)
            time.sleep(0.3)  # the main process is waiting in next() by now
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise ValueError("boom")
        return (torch.zeros(1),)


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("kill", r"^layer 'data' \(Test\): a data worker process died \(DataLoader worker \(pid"),
        (
            "raise",
            r"^layer 'data' \(Test\): a data worker failed while reading batch data: ValueError: boom$",
        ),
    ],
)
def test_a_dead_or_failing_worker_is_reported_not_hung_on(tmp_path: Path, how: str, message: str) -> None:
    loader = BatchLoader(_DyingSource(tmp_path / "go", how), num_workers=1, prefetch=1)
    assert loader.next()[0].shape == (1,)
    (tmp_path / "go").touch()
    start = time.monotonic()
    with pytest.raises(LayerError, match=message):
        loader.next()
    assert time.monotonic() - start < 30
    loader.close()


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            RuntimeError("DataLoader worker (pid 123) is killed by signal: Killed. "),
            "caffe-compat time: error: a data worker process died (DataLoader worker (pid 123) is killed by "
            "signal: Killed.)",
        ),
        (MemoryError(), "caffe-compat time: error: out of memory (lower CAFFE_COMPAT_MEMORY_BUDGET"),
    ],
)
def test_the_cli_reports_dead_workers_and_memory_errors_in_one_line(
    error: BaseException, line: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    help_text, add, _ = commands.COMMANDS["time"]

    def run(args: object) -> int:
        raise error

    monkeypatch.setitem(commands.COMMANDS, "time", (help_text, add, run))
    assert cli_main(["time", "-model", "x.prototxt"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(line) and "Traceback" not in err


def test_other_runtime_errors_still_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    help_text, add, _ = commands.COMMANDS["time"]

    def run(args: object) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setitem(commands.COMMANDS, "time", (help_text, add, run))
    with pytest.raises(RuntimeError, match=re.escape("a bug")):
        cli_main(["time", "-model", "x.prototxt"])


def test_mlp_fixture_is_present() -> None:
    assert (MLP / "solver.prototxt").is_file()
