"""Bad input gives one clear message naming the file, line and what is wrong (table-driven)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import caffe_compat as cc
from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

GOLDENS = Path(__file__).resolve().parent / "goldens"
GOOD_LAYER = 'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'

# (id, file name, content (str: text, bytes: binary), reader, regex the message must match)
CASES = [
    (
        "missing-brace",
        "net.prototxt",
        GOOD_LAYER + 'layer { name: "a" type: "ReLU"\n',
        "net",
        r"net\.prototxt:2:\d+: syntax error at 'end of file \(after \"ReLU\"\)': Expected \"}\"",
    ),
    (
        "unquoted-string",
        "net.prototxt",
        "layer {\n  name: relu1\n}\n",
        "net",
        r"net\.prototxt:2:9: syntax error at 'relu1': Expected string",
    ),
    ("stray-brace", "net.prototxt", GOOD_LAYER + "}\n", "net", r"net\.prototxt:2:1: syntax error at '}'"),
    (
        "bad-bool",
        "net.prototxt",
        "force_backward: maybe\n",
        "net",
        r"net\.prototxt:1:17: syntax error at 'maybe': Expected \"true\" or \"false\"",
    ),
    (
        "float-for-int",
        "net.prototxt",
        'layer {\n name: "c" type: "Convolution"\n convolution_param { kernel_size: 3.5 } }\n',
        "net",
        r"net\.prototxt:3:35: syntax error at '3.5'.*integer",
    ),
    (
        "negative-uint",
        "net.prototxt",
        'layer { name: "c" convolution_param { num_output: -3 } }\n',
        "net",
        r"net\.prototxt:1:\d+: syntax error at '-3'.*out of range",
    ),
    (
        "duplicate-field",
        "net.prototxt",
        'layer { name: "a" name: "b" }\n',
        "net",
        r"net\.prototxt:1:\d+: syntax error .*multiple \"name\" fields",
    ),
    (
        "unknown-field-typo",
        "net.prototxt",
        'layr { name: "a" }\n',
        "net",
        r"net\.prototxt:1:1: unknown field 'layr' in NetParameter; did you mean 'layer'\?.*No known Caffe fork",
    ),
    (
        "unknown-nested-field",
        "net.prototxt",
        'layer {\n  name: "p"\n  pooling_param { kernal_size: 3 }\n}\n',
        "net",
        r"net\.prototxt:3:19: unknown field 'kernal_size' in PoolingParameter; did you mean 'kernel_size'\?",
    ),
    (
        "fork-field",
        "net.prototxt",
        'layer { name: "n" type: "Normalize" norm_param { across_spatial: false } }\n',
        "net",
        r"unknown field 'norm_param' in LayerParameter.*defined by the SSD fork",
    ),
    (
        "wrong-enum",
        "net.prototxt",
        'layer { name: "a" include { phase: TRAN } }\n',
        "net",
        r"net\.prototxt:1:36: Phase has no value 'TRAN'; did you mean TRAIN\?",
    ),
    (
        "wrong-pool-enum",
        "net.prototxt",
        'layer { name: "p" pooling_param { pool: AVERAGE } }\n',
        "net",
        r"PoolingParameter\.PoolMethod has no value 'AVERAGE'; did you mean AVE\?",
    ),
    (
        "solver-unknown-field",
        "solver.prototxt",
        'base_lr: 0.1\nlr_polcy: "step"\n',
        "solver",
        r"solver\.prototxt:2:1: unknown field 'lr_polcy' in SolverParameter; did you mean 'lr_policy'\?",
    ),
    (
        "solver-wrong-enum",
        "solver.prototxt",
        "solver_mode: TPU\n",
        "solver",
        r"SolverParameter\.SolverMode has no value 'TPU'",
    ),
    (
        "net-file-as-caffemodel",
        "net.caffemodel",
        GOOD_LAYER,
        "caffemodel",
        r"net\.caffemodel: is a text file \(prototxt\?\), not a binary caffemodel",
    ),
    ("zero-length", "empty.caffemodel", b"", "caffemodel", r"empty\.caffemodel: file is empty \(0 bytes\)"),
    (
        "random-bytes",
        "random.caffemodel",
        bytes(range(256)) * 3 + b"\xff\xff",
        "caffemodel",
        r"random\.caffemodel: cannot decode as a caffemodel .*truncated, corrupt or of another kind",
    ),
    (
        "truncated",
        "cut.caffemodel",
        None,
        "caffemodel",
        r"cut\.caffemodel: cannot decode as a caffemodel \(\d+ bytes\): the file is truncated",
    ),
    (
        "solverstate-as-caffemodel",
        "s.caffemodel",
        None,
        "caffemodel",
        r"s\.caffemodel: cannot decode as a caffemodel .*\(it looks like a \.solverstate\)",
    ),
    (
        "caffemodel-as-mean",
        "w.binaryproto",
        None,
        "blobproto",
        r"w\.binaryproto: .*\(it looks like a \.caffemodel\)",
    ),
    (
        "binary-as-prototxt",
        "w.prototxt",
        None,
        "net",
        r"w\.prototxt: not a text prototxt .*binary \.caffemodel",
    ),
    ("missing-file", "absent.prototxt", "MISSING", "net", r"net prototxt file not found: .*absent\.prototxt"),
    (
        "missing-caffemodel",
        "absent.caffemodel",
        "MISSING",
        "caffemodel",
        r"caffemodel file not found: .*absent\.caffemodel",
    ),
]

READERS = {
    "net": cc.read_net,
    "solver": cc.read_solver,
    "caffemodel": cc.read_caffemodel,
    "blobproto": cc.read_blobproto,
}


def _content(case_id: str, content):
    golden_model = (GOLDENS / "layers" / "conv_basic" / "weights.caffemodel").read_bytes()
    if case_id == "truncated":
        return golden_model[: len(golden_model) // 2]
    if case_id == "solverstate-as-caffemodel":
        return (GOLDENS / "train" / "solver_sgd_step" / "final_iter_7.solverstate").read_bytes()
    if case_id in ("caffemodel-as-mean", "binary-as-prototxt"):
        return golden_model
    return content


def test_there_are_at_least_15_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize(
    ("case_id", "name", "content", "reader", "pattern"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_message(
    tmp_path: Path, case_id: str, name: str, content, reader: str, pattern: str
) -> None:
    path = tmp_path / name
    content = _content(case_id, content)
    if content != "MISSING":
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    with pytest.raises(CaffeCompatError) as info:
        READERS[reader](path)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(pattern, message), message


def test_cli_prints_one_line_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layr { name: "a" }\n')
    assert main(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "unknown field 'layr' in NetParameter; did you mean 'layer'?" in err


def test_writes_are_atomic(tmp_path: Path) -> None:
    """A failed write leaves the previous file intact and no temporary file behind."""
    target = tmp_path / "model.caffemodel"
    target.write_bytes(b"previous")
    net = caffe_pb2.NetParameter(name="n")
    net.layer.add(name="a", type="ReLU")

    original = os.replace

    def failing_replace(src, dst):
        raise OSError(28, "No space left on device")

    os.replace = failing_replace
    try:
        with pytest.raises(OSError):
            cc.write_caffemodel(net, target)
    finally:
        os.replace = original
    assert target.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.caffemodel"]
    cc.write_caffemodel(net, target)
    assert cc.read_caffemodel(target).layer[0].name == "a"
    fresh = tmp_path / "fresh.caffemodel"
    cc.write_caffemodel(net, fresh)
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    with pytest.raises(CaffeCompatError, match="folder .* does not exist"):
        cc.write_caffemodel(net, tmp_path / "no" / "such" / "dir.caffemodel")
