"""Streaming caffemodel reading and writing (caffe_compat/export/caffemodel.py).

References: ``read_caffemodel`` (a full protobuf decode), the real-Caffe goldens' weights, and
``Net.to_proto()`` (what Caffe's ``Net::ToProto`` writes): the streamed file must decode to it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import CaffemodelError, WeightsError
from caffe_compat.export.caffemodel import (
    CaffemodelIndex,
    compare_blobs,
    load_into,
    write_caffemodel_streaming,
)
from caffe_compat.export.convert import convert
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import array_to_blob, blob_to_array, read_caffemodel, write_caffemodel

GOLDENS = Path(__file__).parent / "goldens"
LAYERS = GOLDENS / "layers"
ALL_CAFFEMODELS = sorted(GOLDENS.glob("*/*/*.caffemodel"))


def test_index_reads_every_golden_caffemodel_like_a_full_decode() -> None:
    assert len(ALL_CAFFEMODELS) > 80
    for path in ALL_CAFFEMODELS:
        index = CaffemodelIndex(path)
        full = read_caffemodel(path)
        assert index.streamed, path
        assert [layer.name for layer in index.layers] == [layer.name for layer in full.layer], path
        for stored, layer in zip(index.layers, full.layer, strict=True):
            assert stored.type == layer.type
            assert len(stored.blobs) == len(layer.blobs), (path, layer.name)
            for i, blob in enumerate(layer.blobs):
                expected = blob_to_array(blob)
                actual = index.read(stored, i)
                assert actual.shape == expected.shape and np.array_equal(actual, expected), (
                    path,
                    layer.name,
                    i,
                )


@pytest.mark.parametrize(
    "case", ["conv_basic", "prelu_shared", "batchnorm_global", "ip_transpose", "scale_bias"]
)
def test_streamed_file_decodes_to_what_caffe_to_proto_writes(case: str, tmp_path: Path) -> None:
    net = cc.Net(LAYERS / case / "net.prototxt", weights=LAYERS / case / "weights.caffemodel", phase="TEST")
    path = tmp_path / "out.caffemodel"
    write_caffemodel_streaming(net.net_param, dict(net.params), path)
    decoded = caffe_pb2.NetParameter()
    decoded.ParseFromString(path.read_bytes())
    assert decoded == net.to_proto()
    assert compare_blobs(path, dict(net.params)) == []


def test_zero_d_blob_keeps_its_shapeless_form(tmp_path: Path) -> None:
    case = LAYERS / "prelu_shared"
    net = cc.Net(case / "net.prototxt", weights=case / "weights.caffemodel", phase="TEST")
    path = tmp_path / "p.caffemodel"
    write_caffemodel_streaming(net.net_param, dict(net.params), path)
    (blob,) = [b for layer in read_caffemodel(path).layer for b in layer.blobs]
    assert blob.HasField("shape") and list(blob.shape.dim) == []
    assert blob_to_array(blob).shape == ()
    assert float(blob_to_array(blob)) == net.params["p"][0].detach().item()


def test_load_into_reads_straight_into_the_tensors() -> None:
    case = LAYERS / "conv_stride2_pad1"
    net = cc.Net(case / "net.prototxt", phase="TEST")
    report = load_into(dict(net.params), CaffemodelIndex(case / "weights.caffemodel"))
    assert report.missing == []
    reference = read_caffemodel(case / "weights.caffemodel")
    for layer in reference.layer:
        for index, blob in enumerate(layer.blobs):
            np.testing.assert_array_equal(net.params[layer.name][index].detach().numpy(), blob_to_array(blob))


def _v1_caffemodel(path: Path, weight: np.ndarray, bias: np.ndarray) -> None:
    net = caffe_pb2.NetParameter(name="legacy")
    layer = net.layers.add(name="ip", type=caffe_pb2.V1LayerParameter.INNER_PRODUCT, bottom=["x"], top=["y"])
    layer.inner_product_param.num_output = weight.shape[0]
    blob = layer.blobs.add(num=1, channels=1, height=weight.shape[0], width=weight.shape[1])
    blob.data.extend(weight.reshape(-1).tolist())
    array_to_blob(bias, layer.blobs.add())
    write_caffemodel(net, path)


def test_legacy_v1_file_with_4d_blobs_falls_back_to_the_full_decode(tmp_path: Path) -> None:
    weight = np.arange(12, dtype=np.float32).reshape(3, 4)
    bias = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    path = tmp_path / "v1.caffemodel"
    _v1_caffemodel(path, weight, bias)
    index = CaffemodelIndex(path)
    assert not index.streamed
    (layer,) = index.layers
    assert layer.name == "ip" and layer.blobs[0].legacy == (1, 1, 3, 4)
    net = cc.Net(
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 4 } } }\n'
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"\n'
        "        inner_product_param { num_output: 3 } }",
        phase="TEST",
    )
    load_into(dict(net.params), index)
    np.testing.assert_array_equal(net.params["ip"][0].detach().numpy(), weight)
    np.testing.assert_array_equal(net.params["ip"][1].detach().numpy(), bias)


def test_truncated_caffemodel_is_an_error_naming_the_file(tmp_path: Path) -> None:
    source = (LAYERS / "conv_basic" / "weights.caffemodel").read_bytes()
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(source[: len(source) // 2])
    with pytest.raises(CaffemodelError, match=r"cut\.caffemodel"):
        CaffemodelIndex(path)


def test_weights_of_another_net_list_every_misfit() -> None:
    net = cc.Net(LAYERS / "conv_basic" / "net.prototxt", phase="TEST")
    with pytest.raises(WeightsError) as info:
        load_into(dict(net.params), CaffemodelIndex(LAYERS / "ip_basic" / "weights.caffemodel"))
    message = str(info.value)
    assert "different net" in message and "'conv'" in message and "ip_basic" in message
    assert "layers in the weights but not in the net: ['ip']" in message


def test_shape_mismatches_are_all_listed(tmp_path: Path) -> None:
    text = (LAYERS / "conv_basic" / "net.prototxt").read_text().replace("num_output: 4", "num_output: 5")
    assert "num_output: 5" in text
    net = cc.Net(text, phase="TEST")
    with pytest.raises(WeightsError) as info:
        load_into(dict(net.params), CaffemodelIndex(LAYERS / "conv_basic" / "weights.caffemodel"))
    message = str(info.value)
    assert "layer 'conv' blob 0: stored shape [4, 3, 3, 3]" in message and "[5, 3, 3, 3]" in message
    assert "layer 'conv' blob 1: stored shape [4]" in message


@pytest.mark.parametrize("case", ["conv_basic", "prelu_shared", "batchnorm_global", "ip_normalize", "deconv"])
def test_caffemodel_conversion_round_trips_blob_for_blob(case: str, tmp_path: Path) -> None:
    folder = LAYERS / case
    with np.load(folder / "inputs.npz") as data:
        inputs = {key: torch.from_numpy(data[key]) for key in data.files}
    out = tmp_path / "round.caffemodel"
    result = convert(folder / "net.prototxt", folder / "weights.caffemodel", "caffemodel", out, inputs=inputs)
    assert result.verification is not None and result.verification.ok
    source, written = read_caffemodel(folder / "weights.caffemodel"), read_caffemodel(out)
    assert [layer.name for layer in written.layer] == [layer.name for layer in source.layer]
    for a, b in zip(source.layer, written.layer, strict=True):
        assert len(a.blobs) == len(b.blobs)
        for x, y in zip(a.blobs, b.blobs, strict=True):
            np.testing.assert_array_equal(blob_to_array(x), blob_to_array(y))
