"""The main job (`caffe-compat demo`) and training the original configs with data-path overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import caffe_compat as cc
from caffe_compat.cli import main
from caffe_compat.data.synthetic_faces import make_faces
from caffe_compat.demo import DemoSettings, demo_solver, run_demo

AMSOFTMAX = Path(__file__).resolve().parent.parent / "prototxt" / "amsoftmax"


def _architecture(net) -> list[tuple]:
    """Everything but the data layers' parameters."""
    rows = []
    for layer in net.layer:
        if layer.type == "ImageData":
            continue
        copy = type(layer)()
        copy.CopyFrom(layer)
        rows.append((copy.name, copy.type, copy.SerializeToString(deterministic=True)))
    return rows


def test_demo_keeps_the_original_architecture(tmp_path: Path) -> None:
    settings = DemoSettings()
    solver = demo_solver(tmp_path / "faces", tmp_path, settings)
    original = cc.read_net(AMSOFTMAX / "face_train_test.prototxt")
    assert _architecture(solver.net_param) == _architecture(original)
    data = [layer for layer in solver.net_param.layer if layer.type == "ImageData"]
    assert [layer.image_data_param.batch_size for layer in data] == [
        settings.batch_size,
        settings.test_batch_size,
    ]
    assert all(str(tmp_path / "faces") in layer.image_data_param.source for layer in data)
    original_solver = cc.read_solver(AMSOFTMAX / "face_solver.prototxt")
    assert (solver.lr_policy, solver.momentum, solver.weight_decay, solver.gamma) == (
        original_solver.lr_policy,
        original_solver.momentum,
        original_solver.weight_decay,
        original_solver.gamma,
    )
    assert solver.max_iter == settings.max_iter and list(solver.stepvalue) == list(settings.stepvalues)


@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faces") / "faces"
    make_faces(out, identities=4, per_identity=3, seed=1, pair_identities=2, folds=1, pairs_per_fold=2)
    return out


def test_train_cli_overrides_data_paths_of_the_original_config(
    tiny_faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        f'net: "{AMSOFTMAX / "face_train_test.prototxt"}"\n'
        'base_lr: 0.001 lr_policy: "fixed" max_iter: 2 display: 1 momentum: 0.9 weight_decay: 0.0005\n'
        "test_iter: 1 test_interval: 2 snapshot_after_train: false solver_mode: CPU random_seed: 3\n"
    )
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            "-solver",
            str(solver),
            "-log",
            "train.log",
            "--data-root",
            f"C:/datasets/CASIA-maxpy-clean-aligned-96={tiny_faces}",
            "-set",
            f"TRAIN:data.image_data_param.source={tiny_faces / 'train.txt'}",
            "-set",
            f"TEST:data.image_data_param.source={tiny_faces / 'val.txt'}",
            "-set",
            "TRAIN:data.image_data_param.batch_size=4",
            "-set",
            "TEST:data.image_data_param.batch_size=2",
        ]
    )
    assert code == 0
    log = (tmp_path / "train.log").read_text()
    losses = [float(v) for v in re.findall(r"Iteration \d+ \(.*\), loss = (\S+)", log)]
    assert len(losses) == 2 and all(v > 0 for v in losses)
    assert "Test net output #0: accuracy" in log and "Optimization Done." in log


def test_train_without_the_data_names_the_configs_windows_path_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    solver = str(AMSOFTMAX / "face_solver.prototxt")
    assert main(["train", "-solver", solver]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == (
        f"caffe-compat train: error: {AMSOFTMAX / 'face_train_test.prototxt'}:16: layer 'data' (ImageData, "
        "TRAIN): image_data_param.source is 'C:/datasets/CASIA-maxpy-clean-aligned-96/list.txt', a Windows "
        "path written in the original config, and it does not exist here; map it to your copy of the data "
        f"without editing the file: caffe-compat train -solver {solver} --data-root "
        "C:/datasets/CASIA-maxpy-clean-aligned-96=/path/to/CASIA-maxpy-clean-aligned-96"
    )
    assert "input_shapes" not in err and str(tmp_path) not in err
    # mapped to a folder that does not hold the data either: the mapped path and both ways to fix it
    assert main(["train", "-solver", solver, "--data-root", f"C:/datasets={tmp_path / 'data'}"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]
    assert f"source '{tmp_path / 'data'}/CASIA-maxpy-clean-aligned-96/list.txt' does not exist" in err
    assert "--data-root OLD=NEW" in err and "-set TRAIN:data.image_data_param.source=" in err
    # the same check before `time` and `test` read the data
    assert main(["time", "-model", str(AMSOFTMAX / "face_train_test.prototxt")]) == 1
    assert "a Windows path written in the original config" in capsys.readouterr().err


def test_an_unqualified_key_naming_both_data_layers_is_an_error(
    tiny_faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        f'net: "{AMSOFTMAX / "face_train_test.prototxt"}"\nbase_lr: 0.1 lr_policy: "fixed" max_iter: 1\n'
    )
    assert main(["train", "-solver", str(solver), "-set", "data.image_data_param.batch_size=4"]) == 1
    err = capsys.readouterr().err
    assert "2 layers are named 'data'; qualify the key with the phase" in err and "Traceback" not in err


@pytest.mark.slow
def test_demo_loss_falls_and_verification_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    accuracy = run_demo(tmp_path / "demo")
    out = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"verification accuracy: 0\.\d{4}", out[-1])
    assert accuracy >= 0.65
    losses = [
        float(v)
        for v in re.findall(
            r"Iteration \d+ \(.*\), loss = (\S+)", (tmp_path / "demo" / "train.log").read_text()
        )
    ]
    assert losses[-1] < losses[0]
    for name in ("face_deploy.onnx", "train_curve.png", "face_train_test_iter_150.caffemodel"):
        assert (tmp_path / "demo" / name).stat().st_size > 1000
