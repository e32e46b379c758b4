"""The main job (`caffe-compat demo`) and training the original configs with data-path overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import caffe_compat as cc
from caffe_compat.cli import main
from caffe_compat.data.synthetic_faces import make_faces
from caffe_compat.demo import DemoSettings, demo_solver

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
    assert solver.clip_gradients == settings.clip_gradients > 0 and solver.base_lr == pytest.approx(settings.base_lr)
    assert settings.test_interval == settings.max_iter  # one test, at the end
    assert settings.test_iter * settings.test_batch_size == settings.identities * max(1, settings.per_identity // 10)


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


def test_quick_settings_run_every_step_small() -> None:
    quick, full = DemoSettings.quick(), DemoSettings()
    assert quick.max_iter < 10 and quick.identities * quick.per_identity <= 50
    assert quick.folds * quick.pairs_per_fold * 2 == 40 and full.folds * full.pairs_per_fold * 2 == 600
    assert (quick.seed, quick.base_lr) == (full.seed, full.base_lr)


def test_demo_refuses_a_dataset_made_with_other_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "demo"
    out.mkdir()
    make_faces(
        out / "faces", identities=3, per_identity=3, seed=0, pair_identities=2, folds=1, pairs_per_fold=1
    )
    assert main(["demo", "--quick", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"caffe-compat demo: error: {out / 'faces'} holds a dataset of 3 identities, not the 10 these "
        "settings make: give another --out (or remove it)"
    )


@pytest.mark.slow
def test_full_demo_gives_the_readmes_numbers_and_beats_the_untrained_net(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The README's set-up command, run: its console block and numbers are what it prints, and
    training gains clearly over the same net with its initial weights, on the same pairs."""
    from test_readme import README, assert_prints, console_block

    monkeypatch.chdir(tmp_path)
    command = "caffe-compat demo --out caffe_compat_demo"
    assert main(command.split()[1:]) == 0
    out = capsys.readouterr().out
    assert_prints(console_block(command), out)
    result = re.search(
        r"trained net accuracy (\S+), AUC (\S+), std \S+; untrained net accuracy (\S+), AUC (\S+)$",
        out,
        re.MULTILINE,
    )
    trained, trained_auc, untrained, untrained_auc = (float(v) for v in result.groups())
    assert trained - untrained >= 0.1 and trained_auc - untrained_auc >= 0.1
    assert out.splitlines()[-1] == f"verification accuracy: {trained:.4f}"

    # the prose: the smoothed loss's start, peak and end, and the accuracies
    losses = {
        int(i): float(v)
        for i, v in re.findall(
            r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)",
            (tmp_path / "caffe_compat_demo" / "train.log").read_text(),
        )
    }
    start, end = min(losses), max(losses)
    peak_at = max((i for i in losses if i > start), key=losses.get)  # the climb after the first drop
    prose = re.search(
        r"starts at (\S+) .*?rises to (\S+) at iteration (\d+).*?falls to\s+(\S+) at iteration (\d+)",
        README,
        re.DOTALL,
    ).groups()
    assert prose == (
        f"{losses[start]:.2f}",
        f"{losses[peak_at]:.2f}",
        str(peak_at),
        f"{losses[end]:.2f}",
        str(end),
    )
    assert (
        f"verifies {trained:.4f} of the pairs (AUC {trained_auc:.4f}), against {untrained:.4f} (AUC {untrained_auc:.4f})"
        in " ".join(README.split())
    )

    # the README's file table: names and sizes (to the unit shown) of what the demo wrote
    folder = tmp_path / "caffe_compat_demo"
    for name, size, unit in re.findall(r"^\| `([^`]+)` \| ([\d.]+) ([kM]B) \|", README, re.MULTILINE):
        path = folder / name.rstrip("/")
        actual = (
            sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            if path.is_dir()
            else path.stat().st_size
        )
        assert abs(actual / (1e6 if unit == "MB" else 1e3) - float(size)) <= 0.15 * float(size) + 1, name
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    assert abs(total - float(re.search(r"writes about (\d+) MB", README).group(1))) <= 2
