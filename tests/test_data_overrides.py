"""apply_overrides: -set KEY=VALUE (phase-qualified keys, typed values) and --data-root OLD=NEW on
the AM-Softmax prototxt, whose two data layers are both named 'data'."""

from __future__ import annotations

from pathlib import Path

import pytest

import caffe_compat as cc
from caffe_compat.data.overrides import apply_overrides
from caffe_compat.errors import CaffeCompatError
from caffe_compat.proto import caffe_pb2

FACE = Path(__file__).resolve().parent.parent / "prototxt" / "amsoftmax" / "face_train_test.prototxt"


@pytest.fixture(scope="module")
def face() -> caffe_pb2.NetParameter:
    return cc.read_net(FACE)


def data_layers(net: caffe_pb2.NetParameter) -> tuple[caffe_pb2.LayerParameter, caffe_pb2.LayerParameter]:
    train, test = (layer for layer in net.layer if layer.name == "data")
    assert train.include[0].phase == caffe_pb2.TRAIN and test.include[0].phase == caffe_pb2.TEST
    return train, test


def test_phase_qualified_sets(face: caffe_pb2.NetParameter) -> None:
    out = apply_overrides(
        face,
        [
            "TRAIN:data.image_data_param.source=/data/train.txt",
            "test:data.image_data_param.batch_size=8",
            "TEST:data.image_data_param.shuffle=false",
            "TRAIN:data.transform_param.mean_value=104,117,123",
            "fc6_l2.inner_product_param.num_output=10",
            "fc6_l2.param[0].lr_mult=2.5",
            "TRAIN:data.data_param.backend=LMDB",
        ],
    )
    train, test = data_layers(out)
    assert train.image_data_param.source == "/data/train.txt"
    assert test.image_data_param.source == "C:/datasets/CASIA-maxpy-clean-aligned-96/val.txt"
    assert test.image_data_param.batch_size == 8 and not test.image_data_param.shuffle
    assert list(train.transform_param.mean_value) == [104, 117, 123]
    assert train.data_param.backend == caffe_pb2.DataParameter.LMDB
    fc6 = next(layer for layer in out.layer if layer.name == "fc6_l2")
    assert fc6.inner_product_param.num_output == 10 and fc6.param[0].lr_mult == 2.5
    assert data_layers(face)[0].image_data_param.source.startswith("C:/")  # the input is not changed


def test_data_root_maps_prefixes(face: caffe_pb2.NetParameter) -> None:
    out = apply_overrides(face, [], data_root="c:\\datasets=/home/me/data")
    train, test = data_layers(out)
    assert train.image_data_param.source == "/home/me/data/CASIA-maxpy-clean-aligned-96/list.txt"
    assert train.image_data_param.root_folder == "/home/me/data/CASIA-maxpy-clean-aligned-96/"
    assert test.image_data_param.source == "/home/me/data/CASIA-maxpy-clean-aligned-96/val.txt"
    # an explicit -set wins over the mapping
    out = apply_overrides(face, ["TEST:data.image_data_param.source=v.txt"], data_root="C:/datasets=/d")
    assert data_layers(out)[1].image_data_param.source == "v.txt"


def test_unqualified_key_with_a_phase_given(face: caffe_pb2.NetParameter) -> None:
    out = apply_overrides(face, ["data.image_data_param.batch_size=4"], phase="TEST")
    train, test = data_layers(out)
    assert test.image_data_param.batch_size == 4 and train.image_data_param.batch_size == 256


def test_data_root_prefix_must_end_at_a_separator() -> None:
    net = cc.read_net(
        'layer { name: "d" type: "Data" top: "x" data_param { source: "/data2/db" batch_size: 1 } '
        'transform_param { mean_file: "/data/mean.binaryproto" } }'
    )
    out = apply_overrides(net, [], data_root="/data=/mnt")
    assert out.layer[0].data_param.source == "/data2/db"
    assert out.layer[0].transform_param.mean_file == "/mnt/mean.binaryproto"


@pytest.mark.parametrize(
    ("sets", "data_root", "message"),
    [
        (
            ["data.image_data_param.source=x"],
            None,
            r"2 layers are named 'data'; qualify the key with the phase, e.g. TRAIN:",
        ),
        (["TRAIN:dta.image_data_param.source=x"], None, r"no layer named 'dta' \(did you mean 'data'\?\)"),
        (
            ["TRAIN:data.image_data_param.sorce=x"],
            None,
            r"ImageDataParameter has no field 'sorce' \(did you mean 'source'\?\)",
        ),
        (
            ["TRAIN:data.image_data_param.batch_size=-3"],
            None,
            r"'-3' is not a valid value for 'batch_size' \(a non-negative integer\)",
        ),
        (
            ["TRAIN:data.image_data_param.shuffle=yes"],
            None,
            r"'yes' is not a valid value for 'shuffle' \(true or false\)",
        ),
        (
            ["TRAIN:data.data_param.backend=ROCKS"],
            None,
            r"not a valid value for 'backend' \(one of LEVELDB, LMDB\)",
        ),
        (["TRAIN:data.image_data_param=3"], None, r"'image_data_param' is a message; name one of its fields"),
        (["TRAIN:data.image_data_param.source"], None, r"-set takes \[PHASE:\]layer.field=value"),
        (["fc6_l2.param.lr_mult=1"], None, r"'param' is repeated: pick one with param\[i\]"),
        (["fc6_l2.param[5].lr_mult=1"], None, r"'param' has 1 entries; param\[5\] does not exist"),
        (
            [],
            "D:/nothing=/x",
            r"--data-root 'D:/nothing=/x': 'D:/nothing' starts none of the net's data paths",
        ),
        ([], "C:/datasets", r"--data-root takes OLD=NEW"),
    ],
)
def test_override_errors(
    face: caffe_pb2.NetParameter, sets: list[str], data_root: str | None, message: str
) -> None:
    with pytest.raises(CaffeCompatError, match=message):
        apply_overrides(face, sets, data_root)


def test_phase_with_no_such_layer(face: caffe_pb2.NetParameter) -> None:
    with pytest.raises(CaffeCompatError, match="no layer 'Accuracy' is in the TRAIN phase"):
        apply_overrides(face, ["TRAIN:Accuracy.accuracy_param.top_k=2"])
