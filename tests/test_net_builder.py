"""The net builder: Caffe's rule filtering, dataflow, sharing, loss weights and weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import CaffeCompatError, LayerError, WeightsError
from caffe_compat.layers import Blob, BuildContext, CaffeLayer, register
from caffe_compat.proto import caffe_pb2


@register("TestChannelAffine")
class ChannelAffine(CaffeLayer):
    """Test-only layer: ``y = x * weight + bias`` per channel; blobs weight (C,), bias (C,)."""

    caffe_blobs = (Blob("weight"), Blob("bias", optional=True))
    example = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }
layer { name: "aff" type: "TestChannelAffine" bottom: "x" top: "y" }
"""

    def __init__(self, channels: int, bias: bool = True) -> None:
        super().__init__()
        self.set_blob("weight", torch.linspace(0.5, 1.5, channels))
        self.set_blob("bias", torch.linspace(-1, 1, channels) if bias else None)

    @classmethod
    def from_caffe(cls, layer: caffe_pb2.LayerParameter, ctx: BuildContext) -> ChannelAffine:
        ctx.check_bottoms(1)
        return cls(ctx.bottom_shapes[0][1], bias=layer.name != "nobias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        y = x * self.weight.view(shape)
        return y + self.bias.view(shape) if self.bias is not None else y


INPUT = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 7 } } }\n'


def test_include_exclude_rules_follow_caffe() -> None:
    text = INPUT + (
        'layer { name: "train_only" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }\n'
        'layer { name: "test_only" type: "ReLU" bottom: "x" top: "b" include { phase: TEST } }\n'
        'layer { name: "not_test" type: "ReLU" bottom: "x" top: "c" exclude { phase: TEST } }\n'
        'layer { name: "level2" type: "ReLU" bottom: "x" top: "d" include { min_level: 2 } }\n'
        'layer { name: "staged" type: "ReLU" bottom: "x" top: "e" include { stage: "deploy" } }\n'
        'layer { name: "unstaged" type: "ReLU" bottom: "x" top: "f" include { not_stage: "deploy" } }\n'
        'layer { name: "either" type: "ReLU" bottom: "x" top: "g" include { phase: TEST } include { stage: "s" } }\n'
    )
    names = lambda net: list(net.layers)  # noqa: E731
    assert names(cc.Net(text, phase="TRAIN")) == ["in", "train_only", "not_test", "unstaged"]
    assert names(cc.Net(text, phase=cc.TEST)) == ["in", "test_only", "unstaged", "either"]
    assert names(cc.Net(text, phase="TRAIN", level=2, stages=["deploy"])) == [
        "in",
        "train_only",
        "not_test",
        "level2",
        "staged",
    ]
    assert names(cc.Net(text, phase="TRAIN", stages=["s"])) == [
        "in",
        "train_only",
        "not_test",
        "unstaged",
        "either",
    ]
    with pytest.raises(LayerError, match="either include rules or exclude rules"):
        cc.Net(
            INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" include { phase: TRAIN } '
            "exclude { phase: TEST } }"
        )


def test_outputs_are_alphabetical_and_in_place_blobs_keep_their_final_value() -> None:
    net = cc.Net(
        INPUT
        + (
            'layer { name: "z" type: "Sigmoid" bottom: "x" top: "zz" }\n'
            'layer { name: "a" type: "TanH" bottom: "x" top: "aa" }\n'
            'layer { name: "ip" type: "ReLU" bottom: "aa" top: "aa" }\n'
        )
    )
    x = torch.randn(2, 3, 5, 7)
    outs = net(x=x)
    assert list(outs) == ["aa", "zz"]
    torch.testing.assert_close(outs["aa"], torch.relu(torch.tanh(x)))
    torch.testing.assert_close(net.blobs["aa"], outs["aa"])
    torch.testing.assert_close(net.blobs["x"], x)


def test_keep_blobs_limits_what_a_forward_keeps_and_not_what_it_computes() -> None:
    text = INPUT + (
        'layer { name: "t" type: "TanH" bottom: "x" top: "a" }\n'
        'layer { name: "s" type: "Sigmoid" bottom: "a" top: "b" }\n'
        'layer { name: "r" type: "ReLU" bottom: "b" top: "c" }\n'
    )
    x = torch.randn(2, 3, 5, 7)
    full = cc.Net(text)(x=x)["c"]
    net = cc.Net(text, keep_blobs=False)
    outs = net(x=x)
    assert sorted(net.blobs) == ["c", "x"]
    torch.testing.assert_close(outs["c"], full, rtol=0, atol=0)
    torch.testing.assert_close(outs["c"], torch.relu(torch.sigmoid(torch.tanh(x))))
    net.keep_blobs = {"a"}
    net(x=x)
    assert sorted(net.blobs) == ["a", "c", "x"]
    torch.testing.assert_close(net.blobs["a"], torch.tanh(x))
    net.keep_blobs = True
    net(x=x)
    assert sorted(net.blobs) == ["a", "b", "c", "x"]
    net.keep_blobs = {"nope"}
    with pytest.raises(CaffeCompatError, match=r"keep_blobs names unknown blobs \['nope'\]"):
        net(x=x)


def test_channels_last_is_an_opt_in_with_rounding_level_differences(tmp_path: Path) -> None:
    """``net.to(memory_format=torch.channels_last)`` (documented in benchmarks/README.md) runs the
    convolutions in oneDNN's native layout: outputs and gradients differ from the default path by
    rounding only, and the blobs still read and write as Caffe's (N, C, H, W) arrays."""
    text = (
        'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 8 dim: 11 dim: 9 } } }\n'
        'layer { name: "c1" type: "Convolution" bottom: "x" top: "c1" convolution_param { num_output: 16 '
        'kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }\n'
        'layer { name: "p1" type: "PReLU" bottom: "c1" top: "c1" }\n'
        'layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2" convolution_param { num_output: 16 '
        'kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.1 } } }\n'
        'layer { name: "sum" type: "Eltwise" bottom: "c1" bottom: "c2" top: "s" }\n'
    )
    torch.manual_seed(0)
    default = cc.Net(text)
    fast = cc.Net(text)
    fast.load_state_dict(default.state_dict())
    fast.to(memory_format=torch.channels_last)
    assert fast.c1.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 11, 9)
    a, b = default(x=x)["s"], fast(x=x)["s"]
    a.square().sum().backward()
    b.square().sum().backward()
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(default.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-5 * float(p.grad.abs().max()), msg=name)
    fast.save_caffemodel(tmp_path / "w.caffemodel")
    reloaded = cc.Net(text, weights=tmp_path / "w.caffemodel")
    assert all(torch.equal(p, q) for p, q in zip(fast.parameters(), reloaded.parameters(), strict=True))


def test_fan_out_sums_gradients_and_propagate_down_stops_them() -> None:
    text = INPUT + (
        'layer { name: "t" type: "TanH" bottom: "x" top: "a" }\n'
        'layer { name: "s" type: "Sigmoid" bottom: "x" top: "b" propagate_down: false }\n'
    )
    net = cc.Net(text)
    x = torch.randn(2, 3, 5, 7, requires_grad=True)
    outs = net(x=x)
    (outs["a"].sum() + outs["b"].sum()).backward()
    torch.testing.assert_close(x.grad, 1 - torch.tanh(x.detach()) ** 2)


def test_loss_weights_explicit_and_implicit() -> None:
    text = INPUT + (
        'layer { name: "t" type: "TanH" bottom: "x" top: "a" loss_weight: 0.5 }\n'
        'layer { name: "s" type: "Sigmoid" bottom: "x" top: "b" }\n'
    )
    net = cc.Net(text)
    x = torch.randn(2, 3, 5, 7)
    outs = net(x=x)
    assert net.loss_weights == {"a": 0.5}
    torch.testing.assert_close(net.loss(outs), 0.5 * torch.tanh(x).sum())
    with pytest.raises(CaffeCompatError, match="no loss"):
        cc.Net(INPUT + 'layer { name: "s" type: "Sigmoid" bottom: "x" top: "b" }\n').loss()


def test_named_params_are_shared() -> None:
    text = INPUT + (
        'layer { name: "a1" type: "TestChannelAffine" bottom: "x" top: "y1" param { name: "w" } }\n'
        'layer { name: "a2" type: "TestChannelAffine" bottom: "x" top: "y2" param { name: "w" } }\n'
    )
    net = cc.Net(text)
    assert net.params["a1"][0] is net.params["a2"][0]
    assert net.params["a1"][1] is not net.params["a2"][1]
    learnable = net.learnable_params()
    assert [(e.layer, e.index) for e in learnable] == [("a1", 0), ("a1", 1), ("a2", 1)]
    x = torch.randn(2, 3, 5, 7)
    outs = net(x=x)
    (outs["y1"].sum() + outs["y2"].sum()).backward()
    torch.testing.assert_close(net.params["a1"][0].grad, 2 * x.sum(dim=(0, 2, 3)))


def test_train_and_test_nets_share_blobs() -> None:
    text = INPUT + 'layer { name: "a" type: "TestChannelAffine" bottom: "x" top: "y" }\n'
    train = cc.Net(text, phase="TRAIN")
    test = cc.Net(text, phase="TEST", share_from=train)
    assert all(t is s for t, s in zip(train.params["a"], test.params["a"], strict=True))


def test_errors_name_the_layer_and_blob() -> None:
    with pytest.raises(LayerError, match=r"layer 'r' \(ReLU\): bottom blob 'nope' .* not produced"):
        cc.Net(INPUT + 'layer { name: "r" type: "ReLU" bottom: "nope" top: "y" }\n')
    with pytest.raises(
        LayerError, match=r"layer 's' \(Sigmoid\): top blob 'y' is produced by multiple sources"
    ):
        cc.Net(
            INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n'
            'layer { name: "s" type: "Sigmoid" bottom: "x" top: "y" }\n'
        )
    with pytest.raises(
        LayerError,
        match=r"layer 'f': unknown layer type 'Frobnicate'\. Known types: .*ReLU.*To add one.*register",
    ):
        cc.Net(INPUT + 'layer { name: "f" type: "Frobnicate" bottom: "x" top: "y" }\n')
    with pytest.raises(LayerError, match=r"layer 'r' \(ReLU\): takes 1 bottom blob\(s\), got 2"):
        cc.Net(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" bottom: "x" top: "y" }\n')
    net = cc.Net(INPUT + 'layer { name: "r" type: "ReLU" bottom: "x" top: "y" }\n')
    with pytest.raises(CaffeCompatError, match=r"missing inputs \['x'\]"):
        net()
    with pytest.raises(CaffeCompatError, match=r"unknown inputs \['data'\]"):
        net(x=torch.zeros(1), data=torch.zeros(1))


def test_weights_load_by_name_with_caffe_checks(tmp_path: Path) -> None:
    text = INPUT + 'layer { name: "a" type: "TestChannelAffine" bottom: "x" top: "y" }\n'
    net = cc.Net(text)
    with torch.no_grad():
        net.params["a"][0].copy_(torch.tensor([2.0, 3.0, 4.0]))
    path = tmp_path / "w.caffemodel"
    net.save_caffemodel(path)
    again = cc.Net(text, weights=path)
    torch.testing.assert_close(again.params["a"][0], torch.tensor([2.0, 3.0, 4.0]))
    # a source layer the net lacks is skipped; blob count and shape mismatches are errors
    other = cc.Net(INPUT + 'layer { name: "b" type: "TestChannelAffine" bottom: "x" top: "y" }\n')
    assert other.copy_from(path) == ["a"]
    nobias = cc.Net(INPUT + 'layer { name: "nobias" type: "TestChannelAffine" bottom: "x" top: "y" }\n')
    proto = net.to_proto()
    proto.layer[1].name = "nobias"
    with pytest.raises(WeightsError, match="incompatible number of blobs for layer 'nobias'"):
        nobias.copy_from(proto)
    wide = cc.Net(text.replace("dim: 3", "dim: 4"))
    with pytest.raises(
        WeightsError, match=r"cannot copy param 0 weights from layer 'a'; shape mismatch.*rename the layer"
    ):
        wide.copy_from(path)


def test_generated_code_is_plain_pytorch_and_traces() -> None:
    net = cc.Net(
        INPUT + 'layer { name: "a" type: "TestChannelAffine" bottom: "x" top: "y" }\n'
        'layer { name: "r" type: "ReLU" bottom: "y" top: "y" }\n'
    )
    assert "def forward(self, x)" in net.code and "self.a(x)" in net.code
    x = torch.randn(2, 3, 5, 7)
    exported = torch.export.export(net, (x,))
    torch.testing.assert_close(exported.module()(x)["y"], net(x=x)["y"])


def test_python_layers_are_refused_without_importing_their_module(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "hostile_layer.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Boom: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    prototxt = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "py" type: "Python" bottom: "x" top: "y" python_param { module: "hostile_layer" layer: "Boom" } }
"""
    with pytest.raises(
        LayerError,
        match=r"layer 'py' \(Python\).*'Boom' of module 'hostile_layer'.*refused.*allow_python_layers=True",
    ):
        cc.Net(prototxt)
    assert not marker.exists()
