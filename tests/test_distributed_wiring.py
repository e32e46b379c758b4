"""The class-sharded layers wired into prototxt nets, checked in one process (a world of one
rank, where every collective is the identity): the replaced net computes what the original net
computes, full views give whole blobs, and what cannot be sharded is refused by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.cli import main as cli_main
from caffe_compat.distributed import ClassShard, Replicas, shard_classifiers
from caffe_compat.distributed.sharded_layers import ClassShardedLayer, full_blobs
from caffe_compat.errors import LayerError

ONE = Replicas(rank=0, world_size=1)
INPUTS = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 6 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 } } }
"""
AM_CHAIN = (
    INPUTS
    + """
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc"
  inner_product_param { num_output: 5 bias_term: false normalize: true weight_filler { type: "xavier" } } }
layer { name: "lsa" type: "LabelSpecificAdd" bottom: "fc" bottom: "label" top: "fcm"
  label_specific_add_param { bias: -0.35 } }
layer { name: "scale" type: "Scale" bottom: "fcm" top: "fcs" scale_param { filler { type: "constant" value: 30 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fcs" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "fc" bottom: "label" top: "acc" accuracy_param { top_k: 2 } }
"""
)
SPHERE = (
    INPUTS
    + """
layer { name: "fc" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "fc" top: "lambda"
  margin_inner_product_param { num_output: 5 type: QUADRUPLE base: 100 gamma: 0.5 power: 1
  lambda_min: 2 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss"
  loss_param { ignore_label: 3 } }
"""
)


def _run(net: cc.Net, x: torch.Tensor, label: torch.Tensor) -> tuple[dict, dict]:
    outputs = net(x=x, label=label)
    net.loss(outputs).backward()
    grads = {name: [t.grad.clone() for t in net.layers[name].caffe_blob_tensors()] for name in ("fc",)}
    return {k: v.detach().clone() for k, v in outputs.items()}, grads


@pytest.mark.parametrize("text", [AM_CHAIN, SPHERE], ids=["am_chain", "sphereface"])
def test_one_rank_sharded_net_computes_the_original(text: str) -> None:
    torch.manual_seed(0)
    original = cc.Net(text)
    torch.manual_seed(0)
    sharded = cc.Net(text)
    replaced = shard_classifiers(sharded, [], ["fc"], ONE)
    assert all(isinstance(sharded.layers[m.caffe_name], ClassShardedLayer) for m in replaced)
    assert {m.caffe_type for m in replaced} >= {"SoftmaxWithLoss"}
    x = torch.randn(6, 4)
    label = torch.tensor([0.0, 1, 2, 3, 4, 3])
    for _ in range(3):  # counters and in-place weight normalization advance alike
        ours, our_grads = _run(sharded, x, label)
        theirs, their_grads = _run(original, x, label)
        assert ours.keys() == theirs.keys()
        for name, value in theirs.items():
            torch.testing.assert_close(ours[name], value, rtol=1e-6, atol=1e-6)
        for a, b in zip(our_grads["fc"], their_grads["fc"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        for net in (original, sharded):
            net.zero_grad(set_to_none=True)
    assert float(theirs["loss"]) > 0


def test_full_view_swaps_whole_blobs_and_writes_back() -> None:
    net = cc.Net(AM_CHAIN)
    (fc, *_) = shard_classifiers(net, [], ["fc"], ONE)
    block = fc.weight
    with full_blobs([fc], gather=False, write_back=True) as whole:
        assert whole.owner(block) == (fc, "weight")
        assert fc.weight is not block and float(fc.weight.detach().abs().sum()) == 0.0
        fc.weight.data.fill_(2.0)
    assert fc.weight is block and bool((block == 2.0).all())
    with full_blobs([fc], gather=True, write_back=False):
        assert torch.equal(fc.weight, block)
    proto = net.to_proto()
    assert np.asarray(proto.layer[2].blobs[0].data).reshape(5, 4).tolist() == [[2.0] * 4] * 5


def test_what_cannot_be_sharded_is_refused_by_name() -> None:
    softmax = INPUTS + (
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 5 } }\n'
        'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n'
    )
    with pytest.raises(
        LayerError, match=r"layer 'prob' \(Softmax\) reads the class-sharded blob 'fc' of 'fc'"
    ):
        shard_classifiers(cc.Net(softmax), [], ["fc"], ONE)
    output = (
        INPUTS
        + 'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc" inner_product_param { num_output: 5 } }\n'
    )
    with pytest.raises(LayerError, match="the class-sharded blob 'fc' is a net output"):
        shard_classifiers(cc.Net(output), [], ["fc"], ONE)
    with pytest.raises(LayerError, match="model-parallel layer 'fc7' is not a layer of the train net"):
        shard_classifiers(cc.Net(AM_CHAIN), [], ["fc7"], ONE)
    with pytest.raises(
        LayerError, match=r"layer 'lsa' \(LabelSpecificAdd\): cannot be sharded by class: the classifier"
    ):
        shard_classifiers(cc.Net(AM_CHAIN), [], ["lsa"], ONE)
    with pytest.raises(LayerError, match="class sampling .* MarginHead classifiers only"):
        shard_classifiers(cc.Net(AM_CHAIN), [], ["fc"], ONE, sample_rate=0.5)
    with pytest.raises(ValueError, match="3 classes cannot be split over 4 ranks"):
        ClassShard(3, 0, 4)
    assert ClassShard(11, 1, 2).local_targets(torch.tensor([0, 5, 6, 10])).tolist() == [-1, -1, 0, 4]


def test_cli_refuses_model_parallel_without_torchrun(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "solver.prototxt").write_text('net: "none.prototxt"\n')
    assert cli_main(["train", "-solver", str(tmp_path / "solver.prototxt"), "--model-parallel", "fc6"]) == 1
    assert "--model-parallel and --sample-rate need a torchrun launch" in capsys.readouterr().err
