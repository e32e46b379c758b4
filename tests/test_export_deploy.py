"""Deploy form of training prototxts (caffe_compat/export/deploy.py) and converting from it.

Properties checked: data layers become Input layers with the data shape (given, read from the
HDF5 source, or from the layer's parameters), label tops and their consumers, losses, accuracy and
label-driven margins are dropped with a note each, and the converted deploy net computes what the
TRAIN/TEST net computes on the same blobs.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.export.convert import convert
from caffe_compat.export.deploy import deploy_net
from caffe_compat.export.errors import ExportError
from caffe_compat.export.standalone import import_file
from caffe_compat.proto.io import read_net

ROOT = Path(__file__).resolve().parent.parent
FACE_TRAIN = ROOT / "prototxt" / "amsoftmax" / "face_train_test.prototxt"
TRAIN_CASE = Path(__file__).parent / "goldens" / "train" / "solver_sgd_step"


def test_face_train_prototxt_in_deploy_form() -> None:
    deploy, notes = deploy_net(read_net(FACE_TRAIN), {"data": (1, 3, 112, 96)})
    names = [layer.name for layer in deploy.layer]
    assert deploy.layer[0].type == "Input" and list(deploy.layer[0].top) == ["data"]
    assert list(deploy.layer[0].input_param.shape[0].dim) == [1, 3, 112, 96]
    assert names[-3:] == ["fc5", "norm1", "fc6_l2"]
    for dropped in ("label_specific_margin", "fc6_margin_scale", "softmax_loss", "Accuracy"):
        assert dropped not in names
        assert any(f"'{dropped}'" in note for note in notes)
    assert (
        notes[0] == "data layer 'data' (ImageData) -> Input 'data' of shape [1, 3, 112, 96]; "
        "its top(s) ['label'] dropped"
    )
    assert any("label-driven margin" in note for note in notes)
    assert all(not layer.include and not layer.exclude for layer in deploy.layer)
    net = cc.Net(deploy, phase="TEST")
    assert net.input_names == ["data"] and net.output_names == ["fc6"]


def test_data_shape_that_cannot_be_known_asks_for_it() -> None:
    with pytest.raises(ExportError, match=r"layer 'data' \(ImageData\).*--input-shape data=1,3,112,96"):
        deploy_net(read_net(FACE_TRAIN))


def test_hdf5_data_shape_is_read_from_the_source() -> None:
    deploy, notes = deploy_net(read_net(TRAIN_CASE / "net.prototxt"), net_dir=TRAIN_CASE)
    with h5py.File(TRAIN_CASE / "test.h5") as data:
        rows = data["data"].shape[1:]
    assert list(deploy.layer[0].input_param.shape[0].dim) == [8, *rows]
    assert "Input 'data'" in notes[0]
    assert all(layer.type not in ("SoftmaxWithLoss", "Accuracy") for layer in deploy.layer)


def test_batch_replaces_the_first_axis() -> None:
    deploy, _ = deploy_net(read_net(TRAIN_CASE / "net.prototxt"), batch=3, net_dir=TRAIN_CASE)
    assert deploy.layer[0].input_param.shape[0].dim[0] == 3


def test_parameters_give_the_shape_of_image_and_dummy_data() -> None:
    text = """
    layer { name: "d" type: "ImageData" top: "img" top: "label"
            transform_param { crop_size: 32 }
            image_data_param { source: "nowhere.txt" batch_size: 4 is_color: false } }
    layer { name: "z" type: "DummyData" top: "noise" dummy_data_param { shape { dim: 4 dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "img" top: "y" inner_product_param { num_output: 2 } }
    layer { name: "sum" type: "Eltwise" bottom: "y" bottom: "noise" top: "s" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "label" top: "loss" }
    """
    deploy, notes = deploy_net(read_net(text))
    shapes = {
        layer.top[0]: list(layer.input_param.shape[0].dim) for layer in deploy.layer if layer.type == "Input"
    }
    assert shapes == {"img": [4, 1, 32, 32], "noise": [4, 2]}
    assert [layer.name for layer in deploy.layer] == ["d", "z", "ip", "sum"]
    assert notes[-1] == "dropped layer 'loss' (SoftmaxWithLoss): a loss layer"


def test_consumers_of_dropped_blobs_are_dropped_in_turn_but_in_place_blobs_stay() -> None:
    text = """
    layer { name: "in" type: "Input" top: "x" top: "label"
            input_param { shape { dim: 2 dim: 5 } shape { dim: 2 } } }
    layer { name: "ip" type: "InnerProduct" bottom: "x" top: "cos" inner_product_param { num_output: 3 } }
    layer { name: "margin" type: "LabelSpecificAdd" bottom: "cos" bottom: "label" top: "cos" }
    layer { name: "scaled" type: "Scale" bottom: "cos" top: "logits" }
    layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }
    """
    deploy, notes = deploy_net(read_net(text))
    assert [layer.name for layer in deploy.layer] == ["in", "ip", "scaled"]
    assert list(deploy.layer[0].top) == ["x"] and len(deploy.layer[0].input_param.shape) == 1
    assert "input ['label'] of layer 'in' dropped: only dropped layers read it" in notes


def test_train_prototxt_converts_with_deploy(tmp_path: Path) -> None:
    """The HDF5 MLP's TRAIN/TEST prototxt, --deploy, to py: the deploy net computes the TEST net's
    ip2 from the same data rows (the TEST net reads them from its HDF5 source)."""
    out = tmp_path / "mlp.py"
    result = convert(TRAIN_CASE / "net.prototxt", TRAIN_CASE / "init.caffemodel", "py", out, deploy=True)
    assert result.verification is not None and result.verification.ok
    assert any("Input 'data'" in note for note in result.notes)
    test_net = cc.Net(TRAIN_CASE / "net.prototxt", weights=TRAIN_CASE / "init.caffemodel", phase="TEST")
    with torch.no_grad():
        test_net()
    batch = test_net.blobs["data"]
    generated = import_file(out).load()
    with torch.no_grad():
        outputs = generated(data=batch)
    (name,) = outputs
    np.testing.assert_allclose(outputs[name].numpy(), test_net.blobs[name].numpy(), rtol=1e-6, atol=1e-7)


def test_deploy_pt_writes_the_deploy_prototxt(tmp_path: Path) -> None:
    out = tmp_path / "mlp.pt"
    convert(TRAIN_CASE / "net.prototxt", TRAIN_CASE / "init.caffemodel", "pt", out, deploy=True, batch=2)
    deploy = read_net(out.with_suffix(".prototxt"))
    assert deploy.layer[0].type == "Input" and deploy.layer[0].input_param.shape[0].dim[0] == 2
    net = cc.Net(deploy, phase="TEST")
    net.load_state_dict(torch.load(out, weights_only=True))
    assert "data" in net.input_names and "label" not in net.input_names


def test_deploy_caffemodel_comes_with_its_deploy_prototxt(tmp_path: Path) -> None:
    out = tmp_path / "mlp.caffemodel"
    result = convert(
        TRAIN_CASE / "net.prototxt", TRAIN_CASE / "init.caffemodel", "caffemodel", out, deploy=True
    )
    assert result.outputs == [out, out.with_suffix(".prototxt")]
    net = cc.Net(out.with_suffix(".prototxt"), weights=out, phase="TEST")
    source = cc.Net(TRAIN_CASE / "net.prototxt", weights=TRAIN_CASE / "init.caffemodel", phase="TEST")
    for name, blobs in net.params.items():
        for mine, theirs in zip(blobs, source.params[name], strict=True):
            assert torch.equal(mine, theirs)
