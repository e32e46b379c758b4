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
