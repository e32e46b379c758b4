"""The caffe-compat command line: inspect, upgrade, Caffe's single-dash flags, one-line errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import caffe_compat as cc
from caffe_compat.cli import main, normalize_flags
from caffe_compat.proto import caffe_pb2

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = ROOT / "tests" / "goldens"


def test_single_dash_flags_are_accepted() -> None:
    assert normalize_flags(["train", "-solver", "s.prototxt", "-gpu", "0", "-v", "-3", "--x"]) == [
        "train",
        "--solver",
        "s.prototxt",
        "--gpu",
        "0",
        "-v",
        "-3",
        "--x",
    ]
    assert normalize_flags(["-weights=a,b"]) == ["--weights=a,b"]


def test_inspect_caffemodel(capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", str(GOLDENS / "train" / "face20_softmax" / "init.caffemodel")]) == 0
    out = capsys.readouterr().out
    assert "60 layers, 220,968 parameters" in out
    assert "conv1_1" in out and "[8, 3, 3, 3] [8]" in out


def test_inspect_solverstate_mean_and_solver(capsys: pytest.CaptureFixture) -> None:
    main(["inspect", str(GOLDENS / "train" / "solver_sgd_step" / "final_iter_7.solverstate")])
    assert "iter 7" in capsys.readouterr().out
    main(["inspect", str(GOLDENS / "data" / "mean.binaryproto")])
    assert "shape [1, 3, 22, 18]" in capsys.readouterr().out
    main(["inspect", str(ROOT / "prototxt" / "amsoftmax" / "face_solver.prototxt")])
    out = capsys.readouterr().out
    assert 'lr_policy: "multistep"' in out and "stepvalue: 28000" in out


def test_inspect_net_prototxt(capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "-phase", "TRAIN", str(GOLDENS / "layers" / "relu" / "net.prototxt")]) == 0
    out = capsys.readouterr().out
    assert "2 layers in phase TRAIN" in out and "ReLU" in out


def test_upgrade_text_and_binary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    legacy = tmp_path / "v1.prototxt"
    legacy.write_text(
        'name: "v1"\nlayers { name: "ip" type: INNER_PRODUCT bottom: "x" top: "y" blobs_lr: 1 blobs_lr: 2 '
        "inner_product_param { num_output: 3 } }\n"
    )
    out_text = tmp_path / "v2.prototxt"
    assert main(["upgrade", str(legacy), str(out_text)]) == 0
    net = cc.read_net(out_text)
    assert "layers" not in out_text.read_text() and net.layer[0].type == "InnerProduct"
    assert [p.lr_mult for p in net.layer[0].param] == [1, 2]
    binary = tmp_path / "v1.caffemodel"
    legacy_net = caffe_pb2.NetParameter(name="v1")
    layer = legacy_net.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT)
    layer.blobs.add(num=1, channels=1, height=2, width=2).data.extend([1, 2, 3, 4])
    binary.write_bytes(legacy_net.SerializeToString())
    out_binary = tmp_path / "v2.caffemodel"
    assert main(["upgrade", str(binary), str(out_binary)]) == 0
    upgraded = caffe_pb2.NetParameter.FromString(out_binary.read_bytes())
    assert not upgraded.layers and upgraded.layer[0].type == "InnerProduct"
    assert list(upgraded.layer[0].blobs[0].data) == [1, 2, 3, 4]
    assert "upgraded" in capsys.readouterr().out


def test_console_script_error_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "caffe_compat.cli", "inspect", str(tmp_path / "nope.caffemodel")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == f"caffe-compat inspect: error: file not found: {tmp_path / 'nope.caffemodel'}"
    )


def test_plugin_that_does_not_import(capsys: pytest.CaptureFixture) -> None:
    assert main(["--plugin", "no_such_module_xyz", "inspect", "x"]) == 1
    assert "cannot import plugin module 'no_such_module_xyz'" in capsys.readouterr().err


# -- inspect: phase, stages, input shapes --------------------------------------------------------

AMSOFTMAX = ROOT / "prototxt" / "amsoftmax"


def _inspect(capsys: pytest.CaptureFixture, *argv: str) -> list[str]:
    assert main(["inspect", *argv]) == 0
    return capsys.readouterr().out.splitlines()


def test_inspect_lists_only_the_layers_of_the_phase(capsys: pytest.CaptureFixture) -> None:
    """face_train_test has a TRAIN and a TEST data layer and a TEST-only Accuracy layer."""
    test_lines = _inspect(capsys, str(AMSOFTMAX / "face_train_test.prototxt"))
    assert "56 layers in phase TEST (1 more in other phases or states)" in test_lines[0]
    assert [line.split()[0] for line in test_lines[2:]].count("data") == 1
    assert any(line.startswith("Accuracy ") for line in test_lines)
    # without the data (C:/datasets/...) nothing can be shaped: the note says which flag helps
    assert test_lines[-1].startswith("(no blob shapes or parameter counts: the data layer 'data' (ImageData)")
    assert test_lines[-1].endswith("give --input-shape data=N,C,H,W)")
    train_lines = _inspect(capsys, str(AMSOFTMAX / "face_train_test.prototxt"), "-phase", "TRAIN")
    assert "55 layers in phase TRAIN (2 more in other phases or states)" in train_lines[0]
    assert not any(line.startswith("Accuracy ") for line in train_lines)


def test_inspect_takes_input_shapes_for_data_layers(capsys: pytest.CaptureFixture) -> None:
    lines = _inspect(
        capsys,
        str(AMSOFTMAX / "face_train_test.prototxt"),
        "--phase",
        "train",
        "--input-shape",
        "data=32,3,112,96",
    )
    assert lines[0].endswith(
        "55 layers in phase TRAIN (2 more in other phases or states), 28,065,364 parameters"
    )
    rows = {line.split()[0]: line for line in lines[2:]}
    assert "data [32, 3, 112, 96], label [32]" in rows["data"]
    assert "conv1_1 [32, 64, 56, 48]" in rows["conv1_1"] and rows["conv1_1"].endswith("[64, 3, 3, 3] [64]")
    assert "fc5 [32, 512]" in rows["fc5"] and rows["fc5"].endswith("[512, 21504] [512]")
    assert "fc6 [32, 10516]" in rows["fc6_l2"] and rows["fc6_l2"].endswith("[10516, 512]")
    # the deploy net has an Input layer: shapes and parameters without any flag
    deploy = _inspect(capsys, str(AMSOFTMAX / "face_deploy_mirror_normalize.prototxt"))
    assert deploy[0].endswith("55 layers in phase TEST, 22,670,656 parameters")
    assert any("concat_data [200, 3, 112, 96]" in line for line in deploy)


def test_inspect_filters_by_stage_and_level(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    net = tmp_path / "staged.prototxt"
    net.write_text(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
        'layer { name: "plain" type: "ReLU" bottom: "x" top: "a" }\n'
        'layer { name: "deployed" type: "Sigmoid" bottom: "a" top: "b" include { stage: "deploy" } }\n'
        'layer { name: "deep" type: "TanH" bottom: "a" top: "c" include { min_level: 2 } }\n'
    )
    names = lambda lines: [line.split()[0] for line in lines[3:]]  # noqa: E731
    assert names(_inspect(capsys, str(net))) == ["x", "plain"]
    assert names(_inspect(capsys, str(net), "-stage", "deploy")) == ["x", "plain", "deployed"]
    lines = _inspect(capsys, str(net), "--stage", "deploy", "--level", "2")
    assert names(lines) == ["x", "plain", "deployed", "deep"]
    assert "4 layers in phase TEST, level 2, stages deploy" in lines[0]
    assert main(["inspect", str(net), "--input-shape", "nope=1,2"]) == 1
    assert "--input-shape names ['nope'], which no layer in phase TEST produces" in capsys.readouterr().err


# -- empty nets and files that are not what the command expects ----------------------------------


def test_empty_or_layerless_nets_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty, layerless = tmp_path / "empty.prototxt", tmp_path / "layerless.prototxt"
    empty.write_text("")
    layerless.write_text('name: "nothing"\n')
    for argv, message in (
        (["time", "-model", str(empty)], f"{empty}: the net has no layers: nothing to run"),
        (["time", "-model", str(layerless)], f"{layerless}: the net has no layers: nothing to run"),
        (["test", "-model", str(layerless), "-weights", "w.caffemodel"], "the net has no layers"),
        (
            ["inspect", str(empty)],
            f"{empty}: the file is empty (0 bytes): not a net or solver prototxt, caffemodel, solverstate "
            "or mean file",
        ),
        (["inspect", str(layerless)], f"{layerless}: the net has no layers"),
    ):
        assert main(argv) == 1, argv
        last = capsys.readouterr().err.splitlines()[-1]  # after the tool's log lines (time, test)
        assert last.startswith(f"caffe-compat {argv[0]}: error: ") and message in last, last


def test_a_net_given_as_solver_and_the_reverse_are_named(capsys: pytest.CaptureFixture) -> None:
    deploy = AMSOFTMAX / "face_deploy_mirror_normalize.prototxt"
    assert main(["train", "-solver", str(deploy)]) == 1
    err = capsys.readouterr().err
    assert err.rstrip("\n").endswith(
        "1:1: unknown field 'input' in SolverParameter. No known Caffe fork defines it. This looks like a "
        "net prototxt, not a solver: a solver names it in its 'net' field (give nets to -model)."
    )
    assert main(["time", "-model", str(AMSOFTMAX / "face_solver.prototxt")]) == 1
    err = capsys.readouterr().err
    assert (
        "unknown field 'net' in NetParameter. No known Caffe fork defines it. This looks like a solver" in err
    )


def test_a_missing_file_names_the_files_it_may_be(capsys: pytest.CaptureFixture) -> None:
    guessed = AMSOFTMAX / "face_deploy.prototxt"  # the demo's ONNX used to be face_deploy.onnx
    hint = f"; did you mean {AMSOFTMAX / 'face_deploy_mirror_normalize.prototxt'}?"
    assert main(["inspect", str(guessed)]) == 1
    assert capsys.readouterr().err.rstrip("\n").endswith(f"file not found: {guessed}{hint}")
    assert main(["time", "-model", str(guessed)]) == 1
    assert capsys.readouterr().err.rstrip("\n").endswith(f"net prototxt file not found: {guessed}{hint}")
