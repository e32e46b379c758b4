"""Layer names as Caffe has them: not unique. A name reaches the last layer that has it
(``Net::layer_names_index_``), which is where ``CopyTrainedLayersFrom`` copies a source layer of
that name and what ``ShareTrainedLayersWith`` shares; earlier layers of the name are keyed
``name#k`` in ``Net.layers``/``Net.params``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import caffe_compat as cc
from caffe_compat.net.naming import layer_keys
from caffe_compat.proto.io import blob_to_array

AUTOENCODER = Path(__file__).parent / "nets" / "bvlc" / "mnist_autoencoder.prototxt"

TWO_FC = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "a"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "b"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }
"""


def test_keys_follow_caffes_last_name_wins_rule() -> None:
    assert layer_keys(["a", "loss", "b", "loss", "loss"]) == ["a", "loss#0", "b", "loss#1", "loss"]
    assert layer_keys(["x", "y"]) == ["x", "y"]
    # a layer literally named like a generated key stays distinct
    keys = layer_keys(["loss", "loss#0", "loss"])
    assert keys[1] == "loss#0" and keys[2] == "loss" and len(set(keys)) == 3


def test_bvlc_mnist_autoencoder_builds_runs_and_round_trips(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = cc.Net(AUTOENCODER, phase="TRAIN", input_shapes={"data": (4, 1, 28, 28)})
    types = {key: param.type for key, param in net.layer_params.items()}
    assert types["loss#0"] == "SigmoidCrossEntropyLoss" and types["loss"] == "EuclideanLoss"
    assert list(net.layers).index("loss#0") < list(net.layers).index("loss")
    assert net.output_names == ["cross_entropy_loss", "l2_error"]
    assert net.loss_weights == {"cross_entropy_loss": 1.0}  # the EuclideanLoss has loss_weight 0
    data = torch.rand(4, 1, 28, 28)
    outputs = net(data=data)
    # the reconstruction losses computed independently from the net's own decode1 blob
    logits, target = net.blobs["decode1"].detach().double(), data.reshape(4, -1).double()
    bce = (torch.clamp(logits, min=0) - logits * target + torch.log1p(torch.exp(-logits.abs()))).sum() / 4
    l2 = ((torch.sigmoid(logits) - target) ** 2).sum() / (2 * 4)
    torch.testing.assert_close(outputs["cross_entropy_loss"].double(), bce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["l2_error"].double(), l2, rtol=1e-5, atol=1e-5)
    net.loss(outputs).backward()
    grad = net.params["encode1"][0].grad
    assert grad is not None and grad.abs().sum() > 0
    # a caffemodel holding both `loss` layers, written and read back as Caffe does
    path = tmp_path / "autoencoder.caffemodel"
    net.save_caffemodel(path)
    stored = cc.read_caffemodel(path)
    assert [layer.name for layer in stored.layer].count("loss") == 2
    fresh = cc.Net(AUTOENCODER, phase="TRAIN", input_shapes={"data": (4, 1, 28, 28)})
    assert fresh.copy_from(path) == []
    for key, blobs in net.params.items():
        for a, b in zip(blobs, fresh.params[key], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(fresh(data=data)["l2_error"], outputs["l2_error"], rtol=0, atol=0)


def test_test_phase_of_the_autoencoder_picks_its_stage() -> None:
    net = cc.Net(AUTOENCODER, phase="TEST", stages=["test-on-test"], input_shapes={"data": (2, 1, 28, 28)})
    data_layers = [k for k, p in net.layer_params.items() if p.type == "Data"]
    assert data_layers == ["data"]
    assert net.layer_params["data"].data_param.source == "examples/mnist/mnist_test_lmdb"


def test_weights_of_a_repeated_name_go_to_the_last_layer_of_that_name(tmp_path: Path) -> None:
    torch.manual_seed(1)
    source = cc.Net(TWO_FC)
    path = tmp_path / "two_fc.caffemodel"
    source.save_caffemodel(path)
    stored = cc.read_caffemodel(path)
    assert [layer.name for layer in stored.layer] == ["x", "fc", "fc"]
    first_w = blob_to_array(stored.layer[1].blobs[0])
    second_w = blob_to_array(stored.layer[2].blobs[0])
    assert not np.allclose(first_w, second_w)
    torch.manual_seed(2)
    target = cc.Net(TWO_FC)
    before_first = target.params["fc#0"][0].detach().clone()
    target.copy_from(path)
    # both source layers named fc are copied into the target's last fc, in order: the second wins
    np.testing.assert_array_equal(target.params["fc"][0].detach().numpy(), second_w)
    # the earlier fc is not reachable by name, as in Caffe: it keeps its filled values
    torch.testing.assert_close(target.params["fc#0"][0], before_first, rtol=0, atol=0)


def test_a_test_net_shares_only_the_last_layer_of_a_repeated_name() -> None:
    train = cc.Net(TWO_FC, phase="TRAIN")
    test = cc.Net(TWO_FC, phase="TEST", share_from=train)
    assert test.params["fc"][0] is train.params["fc"][0]
    assert test.params["fc#0"][0] is not train.params["fc#0"][0]
