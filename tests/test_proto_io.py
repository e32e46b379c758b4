"""Reading and writing every Caffe file kind: prototxts, caffemodels, solverstates, mean files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from google.protobuf.internal import encoder

import caffe_compat as cc
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import (
    array_to_blob,
    blob_shape,
    blob_to_array,
    format_text,
    read_solverstate,
    write_solverstate,
)

ROOT = Path(__file__).resolve().parent.parent
GOLDENS = ROOT / "tests" / "goldens"
PROTOTXTS = sorted((ROOT / "prototxt").rglob("*.prototxt"))
GOLDEN_NETS = sorted(GOLDENS.rglob("net.prototxt"))
GOLDEN_SOLVERS = sorted(GOLDENS.rglob("solver.prototxt"))
CAFFEMODELS = sorted(GOLDENS.rglob("*.caffemodel"))
SOLVERSTATES = sorted(GOLDENS.rglob("*.solverstate"))


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_the_files_exist() -> None:
    assert len(PROTOTXTS) >= 6 and len(GOLDEN_NETS) >= 90 and len(GOLDEN_SOLVERS) == 10
    assert len(CAFFEMODELS) >= 100 and len(SOLVERSTATES) >= 20


@pytest.mark.parametrize("path", PROTOTXTS, ids=_rel)
def test_shipped_prototxt_parses(path: Path) -> None:
    if "solver" in path.name:
        solver = cc.read_solver(path)
        assert solver.base_lr > 0 and solver.lr_policy
    else:
        net = cc.read_net(path)
        assert len(net.layer) > 0 and all(layer.type for layer in net.layer)


def test_amsoftmax_head_fields_decode() -> None:
    net = cc.read_net(ROOT / "prototxt" / "amsoftmax" / "face_train_test.prototxt")
    by_name = {layer.name: layer for layer in net.layer}
    kinds = {layer.type for layer in net.layer}
    assert {"ImageData", "Convolution", "PReLU", "Eltwise", "InnerProduct", "Normalize"} <= kinds
    normalized = [layer for layer in net.layer if layer.inner_product_param.normalize]
    assert len(normalized) == 1 and normalized[0].inner_product_param.num_output == 10516
    margin = [layer for layer in net.layer if layer.type == "LabelSpecificAdd"]
    assert margin and margin[0].label_specific_add_param.bias == pytest.approx(-0.35)
    assert by_name["data"].image_data_param.batch_size in (256, 32)


@pytest.mark.parametrize("path", GOLDEN_NETS + GOLDEN_SOLVERS, ids=_rel)
def test_golden_prototxt_parses_and_round_trips(path: Path) -> None:
    reader = cc.read_solver if path.name == "solver.prototxt" else cc.read_net
    message = reader(path)
    text = format_text(message)
    again = reader(text) if reader is cc.read_net else text_format.Parse(text, caffe_pb2.SolverParameter())
    assert again == message
    assert format_text(again) == text


@pytest.mark.parametrize("path", CAFFEMODELS, ids=_rel)
def test_caffemodel_reads_and_round_trips(path: Path, tmp_path: Path) -> None:
    net = cc.read_caffemodel(path)
    assert net.layer
    for layer in net.layer:
        for blob in layer.blobs:
            array = blob_to_array(blob)
            assert array.shape == blob_shape(blob)
    out = tmp_path / "copy.caffemodel"
    cc.write_caffemodel(net, out)
    again = cc.read_caffemodel(out)
    assert again == net
    for a, b in zip(net.layer, again.layer, strict=True):
        for blob_a, blob_b in zip(a.blobs, b.blobs, strict=True):
            assert blob_a.SerializeToString() == blob_b.SerializeToString()
    # a file we wrote from the same message is byte-identical to re-serialising the original
    assert out.read_bytes() == net.SerializeToString()


def test_channel_shared_prelu_slope_is_a_scalar() -> None:
    net = cc.read_caffemodel(GOLDENS / "layers" / "prelu_shared" / "weights.caffemodel")
    (slope,) = [b for layer in net.layer for b in layer.blobs]
    array = blob_to_array(slope)
    assert array.shape == () and array.dtype == np.float32


def test_batchnorm_stores_three_blobs() -> None:
    net = cc.read_caffemodel(GOLDENS / "layers" / "batchnorm_global" / "weights.caffemodel")
    (bn,) = [layer for layer in net.layer if layer.blobs]
    assert [blob_shape(b) for b in bn.blobs] == [(3,), (3,), (1,)]
    assert blob_to_array(bn.blobs[2])[0] == pytest.approx(2.0)


@pytest.mark.parametrize("path", SOLVERSTATES, ids=_rel)
def test_solverstate_reads(path: Path, tmp_path: Path) -> None:
    state = read_solverstate(path)
    assert f"final_iter_{state.iter}.solverstate" == path.name
    assert state.learned_net == f"final_iter_{state.iter}.caffemodel"
    weights = cc.read_caffemodel(path.with_suffix(".caffemodel"))
    param_shapes = [blob_shape(b) for layer in weights.layer for b in layer.blobs]
    # one history blob per parameter blob, in Caffe's order (AdaDelta and Adam keep two sets)
    history_shapes = [blob_shape(b) for b in state.history]
    assert len(history_shapes) % len(param_shapes) == 0
    assert history_shapes[: len(param_shapes)] == param_shapes
    write_solverstate(state, tmp_path / "s.solverstate")
    assert read_solverstate(tmp_path / "s.solverstate") == state


def test_mean_binaryproto_reads() -> None:
    mean = cc.read_blobproto(GOLDENS / "data" / "mean.binaryproto")
    assert mean.shape == (1, 3, 22, 18) and mean.dtype == np.float32
    assert 0 < mean.min() <= mean.max() < 256


def test_blob_array_conversion_round_trips() -> None:
    rng = np.random.default_rng(0)
    for array in (
        rng.standard_normal((2, 3, 5, 7)).astype(np.float32),
        np.float32(3.5).reshape(()),
        rng.random(4),
    ):
        blob = array_to_blob(array)
        back = blob_to_array(blob)
        assert back.shape == array.shape and back.dtype == (
            np.float64 if array.dtype == np.float64 else np.float32
        )
        np.testing.assert_array_equal(back, array)
    legacy = caffe_pb2.BlobProto(num=1, channels=2, height=1, width=3)
    legacy.data.extend([1, 2, 3, 4, 5, 6])
    assert blob_to_array(legacy).shape == (1, 2, 1, 3)


def test_caffemodel_with_undecodable_fork_parameters_still_gives_weights(tmp_path: Path) -> None:
    """A fork that reuses a field number for its own message: the weights still load."""
    layer = caffe_pb2.LayerParameter(name="fc", type="InnerProduct", bottom=["x"], top=["y"])
    array_to_blob(np.arange(6, dtype=np.float32).reshape(2, 3), layer.blobs.add())
    garbage = b"\xff\xff\xff"
    payload = (
        layer.SerializeToString() + encoder.TagBytes(214, 2) + encoder._VarintBytes(len(garbage)) + garbage
    )
    data = encoder.TagBytes(100, 2) + encoder._VarintBytes(len(payload)) + payload
    path = tmp_path / "fork.caffemodel"
    path.write_bytes(data)
    net = cc.read_caffemodel(path)
    assert [(layer.name, layer.type, list(layer.bottom), list(layer.top)) for layer in net.layer] == [
        ("fc", "InnerProduct", ["x"], ["y"])
    ]
    np.testing.assert_array_equal(blob_to_array(net.layer[0].blobs[0]), np.arange(6).reshape(2, 3))


def test_v1_caffemodel_upgrades(tmp_path: Path) -> None:
    net = caffe_pb2.NetParameter(name="v1")
    conv = net.layers.add(
        name="conv1", type=caffe_pb2.V1LayerParameter.CONVOLUTION, bottom=["data"], top=["c"]
    )
    conv.blobs_lr.extend([1, 2])
    conv.weight_decay.extend([1, 0])
    conv.convolution_param.num_output = 2
    weight = conv.blobs.add(num=2, channels=1, height=1, width=3)
    weight.data.extend(range(6))
    ip = net.layers.add(name="fc", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT, bottom=["c"], top=["y"])
    bias = ip.blobs.add(num=1, channels=1, height=1, width=4)
    bias.data.extend([0.5] * 4)
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(net.SerializeToString())
    upgraded = cc.read_caffemodel(path)
    assert not upgraded.layers
    assert [(layer.name, layer.type) for layer in upgraded.layer] == [
        ("conv1", "Convolution"),
        ("fc", "InnerProduct"),
    ]
    assert [(p.lr_mult, p.decay_mult) for p in upgraded.layer[0].param] == [(1, 1), (2, 0)]
    assert blob_to_array(upgraded.layer[0].blobs[0]).shape == (2, 1, 1, 3)
    assert blob_to_array(upgraded.layer[1].blobs[0]).shape == (1, 1, 1, 4)


def test_v1_prototxt_upgrades_on_read() -> None:
    net = cc.read_net(
        'name: "v1" input: "data" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 7\n'
        'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" blobs_lr: 1 blobs_lr: 2\n'
        "  weight_decay: 1 weight_decay: 0 convolution_param { num_output: 4 kernel_size: 3 } }\n"
        'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n'
    )
    expected = text_format.Parse(
        'name: "v1"\n'
        'layer { name: "input" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 5 dim: 7 } } }\n'
        'layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
        "  param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }\n"
        "  convolution_param { num_output: 4 kernel_size: 3 } }\n"
        'layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }\n',
        caffe_pb2.NetParameter(),
    )
    assert net == expected


def test_generated_code_is_current() -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools (a dev dependency) regenerates caffe_pb2.py")
    result = subprocess.run(
        [sys.executable, "-m", "caffe_compat.proto.regenerate", "--check"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is current" in result.stdout


def test_schema_keeps_the_fork_field_numbers() -> None:
    layer = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    numbers = {name: layer[name].number for name in layer}
    assert numbers["normalize_param"] == 214 and numbers["label_specific_add_param"] == 241
    assert numbers["margin_inner_product_param"] == 232 and numbers["channel_scale_param"] == 237
    assert numbers["flip_param"] == 212 and numbers["inner_distance_param"] == 213
    assert caffe_pb2.InnerProductParameter.DESCRIPTOR.fields_by_name["normalize"].number == 7
    solver = caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name
    assert solver["clamp_weights_lower"].number == 42 and solver["clip_weights"].number == 44
    assert caffe_pb2.BatchNormParameter().moving_average_fraction == pytest.approx(0.99)
