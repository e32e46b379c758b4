"""The solver's parts against independent references and stated properties.

lr policies and update rules against float64 re-implementations of Caffe's formulas; our own
snapshot/resume against the uninterrupted run (identical numbers); HDF5 snapshots; the fork's NaN
skip, clip_weights and clamp_weights; stop requests; the ``test``/``time`` commands; the glog
format; and a one-line SolverError for each kind of bad input.
"""

from __future__ import annotations

import io
import math
import re
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_solver_goldens import GOLDENS, parse_train_log

from caffe_compat import Solver
from caffe_compat.cli import main as cli_main
from caffe_compat.errors import SolverError
from caffe_compat.log.glog import GlogWriter, format_number, glog_prefix
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import blob_to_array, read_caffemodel, read_solverstate, write_solverstate
from caffe_compat.solver import commands
from caffe_compat.solver.lr_policy import check_lr_policy, learning_rate
from caffe_compat.solver.updates import RULES, make_rule

MLP = GOLDENS / "solver_sgd_step"
PREFIX = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [^\]]+\] ")


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def _case(tmp_path: Path, name: str = "solver_sgd_step", **changes: object) -> Path:
    """A copy of a golden case (without Caffe's snapshots) with solver fields changed."""
    work = tmp_path / name
    shutil.copytree(GOLDENS / name, work, ignore=shutil.ignore_patterns("final_iter_*", "*.log"))
    if changes:
        param = caffe_pb2.SolverParameter()
        from google.protobuf import text_format

        text_format.Parse((work / "solver.prototxt").read_text(), param)
        for key, value in changes.items():
            if isinstance(value, list):
                param.ClearField(key)
                getattr(param, key).extend(value)
            elif value is None:
                param.ClearField(key)
            else:
                setattr(param, key, value)
        (work / "solver.prototxt").write_text(text_format.MessageToString(param))
    return work


def _train(work: Path, monkeypatch: pytest.MonkeyPatch, *args: str, log: str = "ours.log") -> str:
    monkeypatch.chdir(work)
    assert cli_main(["train", "-solver", "solver.prototxt", *args, "-log", log]) == 0
    return (work / log).read_text()


def _messages(text: str) -> list[str]:
    return [PREFIX.sub("", line) for line in text.splitlines() if PREFIX.match(line)]


def _numbers_after(text: str, iteration: int) -> list[str]:
    """The log's training/test messages from ``Iteration <iteration>`` on, timing removed."""
    keep, out = False, []
    for message in _messages(text):
        if message.startswith(f"Iteration {iteration},") or message.startswith(f"Iteration {iteration} ("):
            keep = True
        if not keep:
            continue
        if message.startswith(("Iteration", "    Train", "    Test", "Test loss", "MultiStep", "Gradient")):
            out.append(re.sub(r"\(.* iters\), ", "", message))
    return out


def _weights(path: Path) -> dict[str, list[np.ndarray]]:
    return {
        layer.name: [blob_to_array(b) for b in layer.blobs]
        for layer in read_caffemodel(path).layer
        if layer.blobs
    }


# --------------------------------------------------------------------------------------------
# lr policies (float64 formulas of sgd_solver.cpp)


def _policy(**fields: object) -> caffe_pb2.SolverParameter:
    param = caffe_pb2.SolverParameter(base_lr=0.1, gamma=0.5, power=0.75, stepsize=7, max_iter=40)
    for key, value in fields.items():
        if isinstance(value, list):
            getattr(param, key).extend(value)
        else:
            setattr(param, key, value)
    return param


@pytest.mark.parametrize(
    ("policy", "formula"),
    [
        ("fixed", lambda it: 0.1),
        ("step", lambda it: 0.1 * 0.5 ** (it // 7)),
        ("exp", lambda it: 0.1 * 0.5**it),
        ("inv", lambda it: 0.1 * (1 + 0.5 * it) ** -0.75),
        ("poly", lambda it: 0.1 * (1 - it / 40) ** 0.75),
        ("sigmoid", lambda it: 0.1 / (1 + math.exp(-0.5 * (it - 7)))),
    ],
)
def test_lr_policy_matches_formula(policy: str, formula: object) -> None:
    param = _policy(lr_policy=policy)
    check_lr_policy(param)
    for it in range(0, 40, 3):
        rate = learning_rate(param, it, 0)
        assert isinstance(rate.rate, np.float32)
        assert float(rate.rate) == pytest.approx(formula(it), rel=2e-6, abs=1e-30), (policy, it)
    if policy == "step":
        assert learning_rate(param, 15, 0).current_step == 2


def test_multistep_moves_one_step_per_call() -> None:
    param = _policy(lr_policy="multistep", stepvalue=[3, 5])
    step, rates, stepped = 0, [], []
    for it in range(8):
        rate = learning_rate(param, it, step)
        step = rate.current_step
        rates.append(float(rate.rate))
        stepped.append(rate.stepped)
    assert rates == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.025])
    assert stepped == [False, False, False, True, False, True, False, False]
    # Caffe's rule: a restored counter behind the iteration catches up one step per call.
    assert learning_rate(param, 7, 0).current_step == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"lr_policy": "cosine"}, "unknown lr_policy 'cosine'"),
        ({"lr_policy": "multistep", "stepvalue": [20, 10]}, "stepvalue must increase: 10 follows 20"),
        ({"lr_policy": "multistep", "stepvalue": [5, 5]}, "stepvalue must increase"),
        ({"lr_policy": "step", "stepsize": 0}, "needs a positive stepsize"),
    ],
)
def test_lr_policy_errors(fields: dict, message: str) -> None:
    with pytest.raises(SolverError, match=re.escape(message)):
        check_lr_policy(_policy(**fields))


# --------------------------------------------------------------------------------------------
# update rules (float64 re-implementations of src/caffe/solvers/*.cpp)


def _reference_steps(kind: str, diffs: list[np.ndarray], rate: float, p: dict) -> list[np.ndarray]:
    h = np.zeros_like(diffs[0])
    h2 = np.zeros_like(diffs[0])
    steps = []
    for it, g in enumerate(diffs):
        if kind == "SGD":
            h = p["momentum"] * h + rate * g
            steps.append(h.copy())
        elif kind == "Nesterov":
            old = h.copy()
            h = p["momentum"] * h + rate * g
            steps.append((1 + p["momentum"]) * h - p["momentum"] * old)
        elif kind == "AdaGrad":
            h = h + g * g
            steps.append(rate * g / (np.sqrt(h) + p["delta"]))
        elif kind == "RMSProp":
            h = p["rms_decay"] * h + (1 - p["rms_decay"]) * g * g
            steps.append(rate * g / (np.sqrt(h) + p["delta"]))
        elif kind == "AdaDelta":
            h = p["momentum"] * h + (1 - p["momentum"]) * g * g
            d = g * np.sqrt((h2 + p["delta"]) / (h + p["delta"]))
            h2 = p["momentum"] * h2 + (1 - p["momentum"]) * d * d
            steps.append(rate * d)
        elif kind == "Adam":
            b1, b2, t = p["momentum"], p["momentum2"], it + 1
            h = b1 * h + (1 - b1) * g
            h2 = b2 * h2 + (1 - b2) * g * g
            steps.append(rate * math.sqrt(1 - b2**t) / (1 - b1**t) * h / (np.sqrt(h2) + p["delta"]))
    return steps


@pytest.mark.parametrize("kind", sorted(RULES))
def test_update_rule_matches_reference(kind: str) -> None:
    momentum = 0.0 if kind in ("AdaGrad", "RMSProp") else 0.9
    p = {"momentum": momentum, "momentum2": 0.999, "delta": 1e-6, "rms_decay": 0.95}
    param = caffe_pb2.SolverParameter(type=kind, **p)
    rule = make_rule(param)
    rng = np.random.default_rng(3)
    diffs = [rng.standard_normal((5, 4)).astype(np.float32) for _ in range(6)]
    history = [torch.zeros(5, 4) for _ in range(rule.history_sets)]
    expected = _reference_steps(
        kind, [d.astype(np.float64) for d in diffs], 0.05, {k: float(np.float32(v)) for k, v in p.items()}
    )
    for it, (diff, want) in enumerate(zip(diffs, expected, strict=True)):
        got = rule.compute(torch.from_numpy(diff.copy()), history, np.float32(0.05), it)
        np.testing.assert_allclose(got.numpy(), want, rtol=2e-5, atol=1e-8, err_msg=f"{kind} step {it}")


def test_adam_epsilon_is_added_before_the_bias_correction() -> None:
    """Caffe: sqrt(1-b2^t)/(1-b1^t) * m/(sqrt(v)+eps); torch.optim.Adam puts eps after the correction."""
    param = caffe_pb2.SolverParameter(type="Adam", momentum=0.9, momentum2=0.999, delta=0.1)
    rule = make_rule(param)
    g = torch.full((3,), 0.01)
    step = rule.compute(g.clone(), [torch.zeros(3), torch.zeros(3)], np.float32(1.0), 0)
    caffe = math.sqrt(1 - 0.999) / (1 - 0.9) * (0.1 * 0.01) / (math.sqrt(0.001 * 1e-4) + 0.1)
    torch_style = (0.1 * 0.01 / 0.1) / (math.sqrt(0.001 * 1e-4 / 0.001) + 0.1)
    assert float(step[0]) == pytest.approx(caffe, rel=1e-5)
    assert abs(float(step[0]) - torch_style) > 1e-3 * abs(torch_style)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"type": "AdaGrad", "momentum": 0.9}, "momentum cannot be used with AdaGrad"),
        ({"type": "RMSProp", "momentum": 0.5}, "momentum cannot be used with RMSProp"),
        ({"type": "RMSProp", "rms_decay": 1.5}, "rms_decay should lie between 0 and 1"),
        ({"type": "Foo"}, "unknown solver type 'Foo'"),
    ],
)
def test_update_rule_errors(fields: dict, message: str) -> None:
    with pytest.raises(SolverError, match=re.escape(message)):
        make_rule(caffe_pb2.SolverParameter(**fields))


# --------------------------------------------------------------------------------------------
# snapshots and resuming


def test_solverstate_layout_matches_caffe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One history blob per learnable blob, Adam's second set appended, values close to Caffe's."""
    for case in ("solver_adam_sigmoid", "solver_adadelta_fixed", "solver_sgd_step"):
        work = _case(tmp_path, case)
        _train(work, monkeypatch, "-weights", "init.caffemodel")
        for name in ("final_iter_7.solverstate", "final_iter_21.solverstate"):
            mine, theirs = read_solverstate(work / name), read_solverstate(GOLDENS / case / name)
            assert (mine.iter, mine.learned_net, mine.current_step) == (
                theirs.iter,
                theirs.learned_net,
                theirs.current_step,
            )
            assert len(mine.history) == len(theirs.history)
            for a, b in zip(mine.history, theirs.history, strict=True):
                a, b = blob_to_array(a), blob_to_array(b)
                assert a.shape == b.shape
                np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6, err_msg=f"{case} {name}")


def test_own_resume_equals_uninterrupted_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """k + m iterations == k, snapshot, restore, m: identical numbers (smoothing window included)."""
    full = _case(tmp_path / "a", "solver_adam_sigmoid", average_loss=3)
    text = _train(full, monkeypatch, "-weights", "init.caffemodel")
    resumed = _case(tmp_path / "b", "solver_adam_sigmoid", average_loss=3)
    for path in full.glob("final_iter_7.*"):
        shutil.copy(path, resumed / path.name)
    assert (resumed / "final_iter_7.caffe_compat.pt").is_file()
    resumed_text = _train(resumed, monkeypatch, "-snapshot", "final_iter_7.solverstate")
    assert _numbers_after(resumed_text, 7) == _numbers_after(text, 7)
    assert len(_numbers_after(text, 7)) > 40
    for name in ("final_iter_14.caffemodel", "final_iter_21.caffemodel"):
        a, b = _weights(full / name), _weights(resumed / name)
        for layer in a:
            for x, y in zip(a[layer], b[layer], strict=True):
                assert np.array_equal(x, y), (name, layer)


def test_own_resume_restores_layer_counters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SphereFace's iteration counter and the data cursors come back from the side file."""
    full = _case(tmp_path / "a", "face20_sphereface")
    text = _train(full, monkeypatch, "-weights", "init.caffemodel")
    resumed = _case(tmp_path / "b", "face20_sphereface")
    for path in full.glob("final_iter_20.*"):
        shutil.copy(path, resumed / path.name)
    resumed_text = _train(resumed, monkeypatch, "-snapshot", "final_iter_20.solverstate")
    assert _numbers_after(resumed_text, 20) == _numbers_after(text, 20)
    assert any("lambda" in m for m in _numbers_after(text, 20))
    a, b = _weights(full / "final_iter_60.caffemodel"), _weights(resumed / "final_iter_60.caffemodel")
    assert all(np.array_equal(x, y) for layer in a for x, y in zip(a[layer], b[layer], strict=True))


def test_hdf5_snapshots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot_format: HDF5 writes Caffe's HDF5 layout; resuming from it (without our side file)
    reproduces Caffe's own resumed run, and with it the uninterrupted run."""
    binary = _case(tmp_path / "bin")
    _train(binary, monkeypatch, "-weights", "init.caffemodel")
    work = _case(tmp_path / "h5", snapshot_format=caffe_pb2.SolverParameter.HDF5)
    text = _train(work, monkeypatch, "-weights", "init.caffemodel")
    assert "Snapshotting to HDF5 file final_iter_7.caffemodel.h5" in text
    assert "Snapshotting solver state to HDF5 file final_iter_7.solverstate.h5" in text
    assert not list(work.glob("final_iter_*.caffemodel")) and not list(work.glob("*.tmp"))
    with h5py.File(work / "final_iter_7.solverstate.h5", "r") as handle:
        assert int(handle["iter"][0]) == 7 and int(handle["current_step"][0]) == 0
        assert handle["learned_net"][()].rstrip(b"\0") == b"final_iter_7.caffemodel.h5"
        assert [handle["history"][str(i)].shape for i in range(4)] == [(16, 12), (16,), (4, 16), (4,)]
    with h5py.File(work / "final_iter_21.caffemodel.h5", "r") as handle:
        assert sorted(handle["data"]) == ["data", "ip1", "ip2", "loss", "relu1"]
        reference = _weights(binary / "final_iter_21.caffemodel")
        for layer in ("ip1", "ip2"):
            for i, blob in enumerate(reference[layer]):
                assert np.array_equal(handle["data"][layer][str(i)][()], blob)
    # without the side file: Caffe's semantics, Caffe's numbers
    caffe_like = _case(tmp_path / "caffe_like")
    for name in ("final_iter_7.solverstate.h5", "final_iter_7.caffemodel.h5"):
        shutil.copy(work / name, caffe_like / name)
    ours = parse_train_log(_train(caffe_like, monkeypatch, "-snapshot", "final_iter_7.solverstate.h5"))
    caffe = parse_train_log((MLP / "caffe_resume.log").read_text())
    assert ours.loss.keys() == caffe.loss.keys()
    for it, value in caffe.loss.items():
        assert ours.loss[it] == pytest.approx(value, rel=1e-4)
    # with the side file: the uninterrupted run exactly
    exact = _case(tmp_path / "exact", snapshot_format=caffe_pb2.SolverParameter.HDF5)
    for path in work.glob("final_iter_7.*"):
        shutil.copy(path, exact / path.name)
    assert _numbers_after(_train(exact, monkeypatch, "-snapshot", "final_iter_7.solverstate.h5"), 7) == (
        _numbers_after(text, 7)
    )


def test_snapshot_write_is_atomic_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = _case(tmp_path, max_iter=3, snapshot=0)
    monkeypatch.chdir(work)
    solver = Solver("solver.prototxt", "init.caffemodel", log=GlogWriter(stream=None))
    solver.step(2)
    (work / "final_iter_2.caffemodel").write_bytes(b"old")

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("caffe_compat.solver.snapshot.write_solverstate", fail)
    with pytest.raises(OSError):
        solver.snapshot()
    assert not list(work.glob("*.tmp")) and not list(work.glob(".final*"))
    assert not (work / "final_iter_2.solverstate").exists()


# --------------------------------------------------------------------------------------------
# the fork's additions and other solver fields


def _nan_case(tmp_path: Path) -> Path:
    """The tiny MLP on 16 rows whose second batch is NaN."""
    work = _case(
        tmp_path, max_iter=4, iter_size=1, lr_policy="fixed", snapshot=0, test_iter=[], test_interval=0
    )
    with h5py.File(MLP / "train.h5", "r") as src, h5py.File(work / "train.h5", "w") as dst:
        data = src["data"][:16].copy()
        data[8:] = np.nan
        dst["data"], dst["label"] = data, src["label"][:16]
    return work


def test_nan_loss_skips_the_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _nan_case(tmp_path / "nan")
    text = _train(work, monkeypatch, "-weights", "init.caffemodel")
    messages = _messages(text)
    assert re.search(r"^Iteration 1, loss = -?nan, ignore and continue\.$", "\n".join(messages), re.M)
    assert re.search(r"^Iteration 3, loss = -?nan, ignore and continue\.$", "\n".join(messages), re.M)
    assert "Iteration 1, lr = 0.1" not in messages and "Iteration 2, lr = 0.1" in messages
    # Updates happened at iterations 0 and 2 on the same (first) batch: the same weights as two
    # clean iterations on that batch.
    clean = _case(
        tmp_path / "clean",
        max_iter=2,
        iter_size=1,
        lr_policy="fixed",
        snapshot=0,
        test_iter=[],
        test_interval=0,
    )
    with h5py.File(MLP / "train.h5", "r") as src, h5py.File(clean / "train.h5", "w") as dst:
        dst["data"], dst["label"] = src["data"][:8], src["label"][:8]
    _train(clean, monkeypatch, "-weights", "init.caffemodel")
    a, b = _weights(work / "final_iter_4.caffemodel"), _weights(clean / "final_iter_2.caffemodel")
    for layer in a:
        for x, y in zip(a[layer], b[layer], strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


def test_clip_and_clamp_weights_act_on_the_data_before_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init = _weights(MLP / "init.caffemodel")
    norm = math.sqrt(sum(float((b.astype(np.float64) ** 2).sum()) for blobs in init.values() for b in blobs))
    work = _case(
        tmp_path / "clip",
        base_lr=0.0,
        max_iter=1,
        clip_weights=norm / 2,
        snapshot=0,
        test_iter=[],
        test_interval=0,
    )
    text = _train(work, monkeypatch, "-weights", "init.caffemodel")
    assert "Weight clipping: scaling down weights (L2 norm" in text
    clipped = _weights(work / "final_iter_1.caffemodel")
    for layer, blobs in init.items():
        for a, b in zip(clipped[layer], blobs, strict=True):
            np.testing.assert_allclose(a, b * 0.5, rtol=1e-5, atol=1e-8)
    work = _case(
        tmp_path / "clamp",
        base_lr=0.0,
        max_iter=1,
        clamp_weights_upper=0.05,
        snapshot=0,
        test_iter=[],
        test_interval=0,
    )
    _train(work, monkeypatch, "-weights", "init.caffemodel")
    clamped = _weights(work / "final_iter_1.caffemodel")
    for layer, blobs in init.items():
        for a, b in zip(clamped[layer], blobs, strict=True):
            np.testing.assert_array_equal(a, np.minimum(b, np.float32(0.05)))


def test_test_compute_loss_display_and_average_loss(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _case(tmp_path, test_compute_loss=True, display=5, average_loss=4)
    log = parse_train_log(_train(work, monkeypatch, "-weights", "init.caffemodel"))
    text = (work / "ours.log").read_text()
    assert sorted(log.loss) == [0, 5, 10, 15, 20]
    assert sorted(log.lr) == [0, 5, 10, 15, 20]
    losses = [float(m) for m in re.findall(r"\] Test loss: (\S+)", text)]
    assert losses == pytest.approx([log.test[it]["loss"] for it in sorted(log.test)], rel=1e-5)
    # average_loss 4: the logged loss at 0 is the first loss; later ones are 4-iteration means
    caffe = parse_train_log((MLP / "caffe_train.log").read_text())
    assert log.loss[0] == pytest.approx(caffe.loss[0], rel=1e-5)
    # Caffe's log (average_loss 1) shows each iteration's own loss
    assert log.loss[20] == pytest.approx(np.mean([caffe.loss[i] for i in range(17, 21)]), rel=2e-4)


def test_stop_request_snapshots_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (sigint_effect stop, Caffe's default): stop after the iteration, snapshot_after_train."""
    work = _case(tmp_path)
    sent = {}

    @__import__("contextlib").contextmanager
    def fake_progress(total: int):
        def advance(iteration: int) -> None:
            if iteration == 3 and not sent:
                sent["yes"] = True
                import os
                import signal

                os.kill(os.getpid(), signal.SIGINT)

        yield None, advance

    monkeypatch.setattr(commands, "_progress", fake_progress)
    text = _train(work, monkeypatch, "-weights", "init.caffemodel")
    messages = _messages(text)
    assert "Optimization stopped early." in messages
    assert "Snapshotting to binary proto file final_iter_4.caffemodel" in messages
    assert (work / "final_iter_4.solverstate").is_file() and not (work / "final_iter_7.caffemodel").exists()


def test_action_request_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from caffe_compat.solver.solver import SolverAction

    work = _case(tmp_path, snapshot=0, snapshot_after_train=False)
    monkeypatch.chdir(work)
    solver = Solver("solver.prototxt", "init.caffemodel", log=GlogWriter(stream=None))
    # asked before each of the 2 test batches at iteration 0, then after each update
    calls = iter([SolverAction.NONE, SolverAction.NONE, SolverAction.NONE, SolverAction.SNAPSHOT])
    solver.action_request = lambda: next(calls, SolverAction.NONE)
    solver.solve()
    assert sorted(p.name for p in work.glob("final_iter_*")) == [
        "final_iter_2.caffe_compat.pt",
        "final_iter_2.caffemodel",
        "final_iter_2.solverstate",
    ]


def test_paths_fall_back_to_the_solver_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _case(tmp_path / "case")
    elsewhere = tmp_path / "run"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    solver_path = str(work / "solver.prototxt")
    assert (
        cli_main(
            ["train", "-solver", solver_path, "-weights", str(work / "init.caffemodel"), "-log", "x.log"]
        )
        == 0
    )
    text = (elsewhere / "x.log").read_text()
    assert "net file 'net.prototxt' not found in the working directory; using" in text
    assert (elsewhere / "final_iter_21.caffemodel").is_file()  # snapshot_prefix stays relative to the cwd
    log = parse_train_log(text)
    assert log.loss[20] == pytest.approx(
        parse_train_log((MLP / "caffe_train.log").read_text()).loss[20], rel=1e-4
    )


def test_python_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _case(tmp_path)
    monkeypatch.chdir(work)
    log = GlogWriter(stream=None)
    log.lines = []
    solver = Solver("solver.prototxt", weights="init.caffemodel", log=log)
    assert solver.iter == 0 and len(solver.test_nets) == 1
    # the test net shares the train net's blobs
    assert solver.test_nets[0].layers["ip1"].weight is solver.net.layers["ip1"].weight
    solver.step(3)
    assert solver.iter == 3
    model, state = solver.snapshot()
    assert (model, state) == ("final_iter_3.caffemodel", "final_iter_3.solverstate")
    other = Solver("solver.prototxt", log=GlogWriter(stream=None))
    other.restore(state)
    assert other.iter == 3
    assert torch.equal(other.net.layers["ip2"].weight, solver.net.layers["ip2"].weight)
    assert any("Iteration 2, lr = 0.1" in line for line in log.lines)


def test_debug_info_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = _case(tmp_path, debug_info=True, max_iter=1, test_iter=[], test_interval=0)
    messages = _messages(_train(work, monkeypatch, "-weights", "init.caffemodel"))
    first = messages[: messages.index(next(m for m in messages if m.startswith("Iteration 0 (")))]
    forward = [m for m in first if m.startswith("    [Forward] ")]
    backward = [m for m in first if m.startswith("    [Backward] Layer ")]
    assert len(forward) == 2 * 10  # two passes (iter_size 2): 6 tops and 4 param blobs each
    assert len(backward) == 2 * 7  # 3 bottoms needing diffs and 4 param blobs each
    assert sum(m.startswith("    [Backward] All net params (data, diff): L1 norm = (") for m in first) == 2
    ip1 = [float(m.split()[-1]) for m in forward if m.startswith("    [Forward] Layer ip1, top blob ip1")]
    relu = [float(m.split()[-1]) for m in forward if m.startswith("    [Forward] Layer relu1, top blob ip1")]
    assert all(r <= i for r, i in zip(relu, ip1, strict=True)) and ip1 != relu  # in place: before and after
    loss = [m for m in forward if m.startswith("    [Forward] Layer loss, top blob loss data: ")][-1]
    output = next(m for m in messages if m.startswith("    Train net output #0: loss = "))
    assert loss.split()[-1] == output.split()[6]


def test_train_net_and_several_test_nets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """train_net/test_net files and an inline net_param give the same numbers as ``net``."""
    work = _case(
        tmp_path / "files",
        net=None,
        train_net="net.prototxt",
        test_net=["net.prototxt", "net.prototxt"],
        test_iter=[2, 1],
    )
    log = _train(work, monkeypatch, "-weights", "init.caffemodel")
    messages = _messages(log)
    assert "Creating training net from train_net file: net.prototxt" in messages
    assert "Creating test net (#1) specified by test_net file: net.prototxt" in messages
    assert "Iteration 7, Testing net (#1)" in messages
    caffe = parse_train_log((MLP / "caffe_train.log").read_text())
    ours = parse_train_log(log)
    assert ours.loss == pytest.approx(caffe.loss, rel=1e-4)
    inline = _case(tmp_path / "inline", net=None)
    param = caffe_pb2.SolverParameter()
    from google.protobuf import text_format

    text_format.Parse((inline / "solver.prototxt").read_text(), param)
    text_format.Parse((inline / "net.prototxt").read_text(), param.net_param)
    param.snapshot_diff = True
    (inline / "solver.prototxt").write_text(text_format.MessageToString(param))
    inline_log = _train(inline, monkeypatch, "-weights", "init.caffemodel")
    assert "Creating training net specified in net_param." in inline_log
    assert parse_train_log(inline_log).loss == pytest.approx(caffe.loss, rel=1e-4)
    model = read_caffemodel(inline / "final_iter_7.caffemodel")
    ip1 = next(layer for layer in model.layer if layer.name == "ip1")
    assert len(ip1.blobs[0].diff) == 16 * 12 and any(v != 0 for v in ip1.blobs[0].diff)


def test_batchnorm_statistics_are_left_to_the_layer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BatchNorm's blobs are learnable_params with lr_mult 0: weight decay reaches their diff (and
    AdaGrad's history), but the solver never moves them; the layer's forward does."""
    work = _case(tmp_path, type="AdaGrad", momentum=0.0, lr_policy="fixed", test_iter=[], test_interval=0)
    text = (work / "net.prototxt").read_text()
    bn = (
        'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
        'layer { name: "scale" type: "Scale" bottom: "bn" top: "bn" scale_param { bias_term: true } }\n'
    )
    old_ip1 = 'layer {\n  name: "ip1"\n  type: "InnerProduct"\n  bottom: "data"'
    assert old_ip1 in text
    (work / "net.prototxt").write_text(text.replace(old_ip1, bn + old_ip1.replace('"data"', '"bn"')))
    monkeypatch.chdir(work)
    solver = Solver("solver.prototxt", log=GlogWriter(stream=None))
    labels = [p.label for p in solver.params]
    assert labels[:5] == ["bn[0]", "bn[1]", "bn[2]", "scale[0]", "scale[1]"]
    assert [float(p.lr_mult) for p in solver.params[:3]] == [0.0, 0.0, 0.0]
    solver.step(3)
    mean_sum, var_sum, factor = (p.tensor for p in solver.params[:3])
    # 3 iterations of iter_size 2: factor = sum of maf^k over 6 passes (the fork's maf default .99)
    assert float(factor) == pytest.approx(sum(0.99**k for k in range(6)), rel=1e-6)
    count = len(solver.params)
    # AdaGrad's history of the statistics holds the squared decay term: (wd * data)^2 summed
    assert float(solver.history[2]) > 0 and not torch.isnan(mean_sum).any() and not torch.isnan(var_sum).any()
    assert len(solver.history) == count


# --------------------------------------------------------------------------------------------
# caffe test / caffe time


def test_test_command_scores_like_caffe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """Caffe's test pass at iteration 21 used final_iter_21's weights on the whole test set."""
    work = _case(tmp_path)
    shutil.copy(MLP / "final_iter_21.caffemodel", work)
    monkeypatch.chdir(work)
    assert (
        cli_main(
            ["test", "-model", "net.prototxt", "-weights", "final_iter_21.caffemodel", "-iterations", "2"]
        )
        == 0
    )
    messages = _messages(capsys.readouterr().err)
    assert "acc = 0.5625" in messages
    assert "loss = 1.25553 (* 1 = 1.25553 loss)" in messages
    assert "Loss: 1.25553" in messages
    assert sum(m.startswith("Batch ") for m in messages) == 4


def test_time_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    work = _case(tmp_path)
    monkeypatch.chdir(work)
    assert cli_main(["time", "-model", "net.prototxt", "-iterations", "3"]) == 0
    messages = _messages(capsys.readouterr().err)
    for layer in ("data", "ip1", "relu1", "ip2", "loss"):
        forward = [m for m in messages if re.fullmatch(rf" *{layer}\tforward: \S+ ms\.", m)]
        backward = [m for m in messages if re.fullmatch(rf" *{layer}\tbackward: \S+ ms\.", m)]
        assert len(forward) == 1 and len(backward) == 1, layer
        assert float(forward[0].split()[-2]) >= 0
    assert float([m for m in messages if re.match(r" *ip1\tbackward", m)][0].split()[-2]) > 0
    assert sum(m.startswith("Iteration: ") for m in messages) == 3
    assert "*** Benchmark ends ***" in messages


def test_time_of_a_net_without_loss_frees_each_blob_after_its_last_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy net has nothing to back-propagate: timing it keeps neither an autograd graph nor
    every blob (the face deploy net at its declared batch 100 peaked at 5.8 GB, now ~1 GB)."""
    import weakref

    from caffe_compat.solver import tools

    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 8 dim: 3 dim: 16 dim: 16 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "conv"\n'
        "        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: 'xavier' } } }\n"
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n'
        'layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "y" inner_product_param { num_output: 5 } }\n'
    )
    built: dict = {"alive": []}
    original = tools.build_tool_net

    def keep_watch(*args: object, **kwargs: object):  # noqa: ANN202
        net = original(*args, **kwargs)
        built["net"] = net
        for name in ("conv", "relu", "pool"):
            net.layers[name].register_forward_hook(
                lambda module, bottoms, top: built["alive"].append(weakref.ref(top))
            )
        return net

    monkeypatch.setattr(tools, "build_tool_net", keep_watch)
    times = tools.benchmark(prototxt, 3, GlogWriter(stream=io.StringIO()))
    assert list(times) == ["conv", "relu", "pool", "ip"]
    assert all(forward > 0 and backward == 0 for forward, backward in times.values())
    assert len(built["alive"]) == 3 * 4  # three layers, the initial pass and three timed ones
    assert all(ref() is None for ref in built["alive"])  # no intermediate blob outlives the pass
    assert set(built["net"].blobs) <= {"x", "y"}  # only the inputs and outputs are kept


def test_time_partitions_the_pass_and_runs_a_net_without_loss(tmp_path: Path) -> None:
    """Per-layer figures add up to the whole pass; a net without a loss is timed forward only."""
    from caffe_compat.log.glog import GlogWriter
    from caffe_compat.solver.tools import benchmark

    text = (
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 3 dim: 9 dim: 7 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 5 '
        'kernel_size: 3 weight_filler { type: "xavier" } } }\n'
        'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "c" top: "y" inner_product_param { num_output: 2 } }\n'
    )
    for loss, phase in (
        ("", "TEST"),
        ('layer { name: "l" type: "EuclideanLoss" bottom: "y" bottom: "y" top: "l" }\n', "TRAIN"),
    ):
        model = tmp_path / f"net_{phase}.prototxt"
        model.write_text(text + loss)
        log = io.StringIO()
        result = benchmark(model, 3, GlogWriter(stream=log), phase=phase)
        messages = _messages(log.getvalue())
        forward = float(next(m for m in messages if m.startswith("Average Forward pass")).split()[-2])
        backward = float(next(m for m in messages if m.startswith("Average Backward pass")).split()[-2])
        layers_forward = sum(f for f, _ in result.values())
        layers_backward = sum(b for _, b in result.values())
        assert set(result) == ({"conv", "relu", "ip", "l"} if loss else {"conv", "relu", "ip"})
        assert 0 < layers_forward <= forward and layers_backward <= backward
        assert all(f > 0 for f, _ in result.values())
        if loss:
            assert result["conv"][1] > 0 and result["ip"][1] > 0
        else:
            assert layers_backward == 0


# --------------------------------------------------------------------------------------------
# the log format


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (np.float32(0.1), "0.1"),
        (np.float32(1.42286), "1.42286"),
        (np.float32(1e-5), "1e-05"),
        (-3.40694e12, "-3.40694e+12"),
        (np.float32(52.63157), "52.6316"),
        (np.float32(0.0), "0"),
        (1234567.0, "1.23457e+06"),
        (7, "7"),
        (float("nan"), "nan"),
        (-float("nan"), "-nan"),
        (float("inf"), "inf"),
    ],
)
def test_format_number_is_iostream_default(value: object, text: str) -> None:
    assert format_number(value) == text


def test_glog_prefix_and_writer(tmp_path: Path) -> None:
    prefix = glog_prefix("I", when=1795442409.381027, thread_id=9698, where="solver.cpp:224")
    assert re.fullmatch(r"I\d{4} \d\d:\d\d:09\.3810\d\d  9698 solver\.cpp:224\] ", prefix)
    assert re.fullmatch(r"W\d{8} .*", glog_prefix("WARNING", with_year=True))
    stream = io.StringIO()
    writer = GlogWriter(stream=stream, path=tmp_path / "f.log")
    writer.info("Iteration 0, lr = 0.1", "sgd_solver.cpp:137")
    writer.close()
    header, body = (tmp_path / "f.log").read_text().split("\n", 3)[:3], (tmp_path / "f.log").read_text()
    assert header[0].startswith("Log file created at: 20") and header[1].startswith("Running on machine: ")
    assert header[2] == "Log line format: [IWEF]mmdd hh:mm:ss.uuuuuu threadid file:line] msg"
    assert body.endswith(stream.getvalue()) and stream.getvalue().count("\n") == 1
    assert stream.getvalue().endswith("sgd_solver.cpp:137] Iteration 0, lr = 0.1\n")


def test_progress_bar_never_enters_the_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    work = _case(tmp_path)
    text = _train(work, monkeypatch, "-weights", "init.caffemodel")
    assert "%|" in terminal.getvalue()  # the bar was drawn on the terminal
    assert "\r" not in text and "%|" not in text
    assert "Optimization Done." in terminal.getvalue()


# --------------------------------------------------------------------------------------------
# bad input: one line, SolverError


def _cli_error(work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> str:
    monkeypatch.chdir(work)
    assert cli_main(["train", "-solver", "solver.prototxt", *args]) == 1
    last = capsys.readouterr().err.rstrip("\n").splitlines()[-1]
    assert last.startswith("caffe-compat train: error: ")
    return last


def test_error_missing_net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path, net="missing.prototxt")
    assert "net file 'missing.prototxt' not found" in _cli_error(work, monkeypatch, capsys)
    with pytest.raises(SolverError, match="not found"):
        Solver(work / "solver.prototxt", log=GlogWriter(stream=None))


def test_error_net_without_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path)
    text = (work / "net.prototxt").read_text()
    start = text.index('layer {\n  name: "loss"')
    end = text.index('layer {\n  name: "acc"')
    (work / "net.prototxt").write_text(text[:start] + text[end:])
    assert "the train net has no loss" in _cli_error(work, monkeypatch, capsys)


def test_error_unknown_solver_type(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path, type="Lion")
    assert "unknown solver type 'Lion'" in _cli_error(work, monkeypatch, capsys)


def test_error_unknown_lr_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path, lr_policy="cosine")
    assert "unknown lr_policy 'cosine'" in _cli_error(work, monkeypatch, capsys)


def test_error_inconsistent_stepvalues(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path, lr_policy="multistep", stepvalue=[14, 7])
    assert "stepvalue must increase: 7 follows 14" in _cli_error(work, monkeypatch, capsys)


def test_error_snapshot_of_another_net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path)
    shutil.copy(GOLDENS / "face20_softmax" / "final_iter_20.solverstate", work / "other.solverstate")
    line = _cli_error(work, monkeypatch, capsys, "-snapshot", "other.solverstate")
    assert "incorrect length of history blobs: the solverstate holds 63" in line
    state = read_solverstate(MLP / "final_iter_7.solverstate")
    state.history[1].shape.dim[:] = [8]
    del state.history[1].data[8:]
    write_solverstate(state, work / "shapes.solverstate")
    line = _cli_error(work, monkeypatch, capsys, "-snapshot", "shapes.solverstate")
    assert "history blob 1 has shape [8] but param ip1[1] has shape [16]" in line
    # an Adam solverstate (two history sets) on this SGD solver
    shutil.copy(GOLDENS / "solver_adam_sigmoid" / "final_iter_7.solverstate", work / "adam.solverstate")
    assert "holds 8, this SGD solver on this net needs 4" in _cli_error(
        work, monkeypatch, capsys, "-snapshot", "adam.solverstate"
    )


def test_error_snapshot_and_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path)
    line = _cli_error(work, monkeypatch, capsys, "-snapshot", "a.solverstate", "-weights", "init.caffemodel")
    assert "but not both" in line


def test_error_snapshot_prefix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    work = _case(tmp_path, snapshot_prefix="no/such/folder/final")
    assert "cannot write to snapshot prefix 'no/such/folder/final'" in _cli_error(work, monkeypatch, capsys)
    work = _case(tmp_path / "b", snapshot_prefix=None)
    assert "snapshot is specified but snapshot_prefix is not" in _cli_error(work, monkeypatch, capsys)
