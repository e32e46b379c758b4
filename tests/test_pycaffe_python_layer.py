"""Caffe's ``Python`` layer type: refused by the native API and the CLI unless opted in; run by
pycaffe's ``caffe.Net`` with the net's blobs and by ``cc.Net`` through an autograd Function, with
the same numbers; parameter blobs saved, loaded and trained like any layer's."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat as cc
import caffe_compat.pycaffe as caffe
from caffe_compat.cli import main as cli_main
from caffe_compat.errors import LayerError
from caffe_compat.log.glog import GlogWriter
from caffe_compat.pycaffe import runtime

LAYERS = '''
import numpy as np
import caffe_compat.pycaffe as caffe


class Affine(caffe.Layer):
    """top = a * bottom + b with learnable a, b (two 1-element parameter blobs); param_str: a."""

    def setup(self, bottom, top):
        self.blobs.add_blob(1)
        self.blobs.add_blob(1)
        self.blobs[0].data[0] = float(self.param_str)
        self.blobs[1].data[0] = 0.25

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = self.blobs[0].data[0] * bottom[0].data + self.blobs[1].data[0]

    def backward(self, top, propagate_down, bottom):
        self.blobs[0].diff[0] += (top[0].diff * bottom[0].data).sum()
        self.blobs[1].diff[0] += top[0].diff.sum()
        if propagate_down[0]:
            bottom[0].diff[...] = self.blobs[0].data[0] * top[0].diff


class Counter(caffe.Layer):
    """A data layer: each forward yields the batch index, in a (2, 3) top; phase in the second."""

    def setup(self, bottom, top):
        self.calls = 0

    def reshape(self, bottom, top):
        top[0].reshape(2, 3)
        top[1].reshape()

    def forward(self, bottom, top):
        top[0].data[...] = self.calls
        top[1].data[()] = self.phase
        self.calls += 1


class Broken(caffe.Layer):
    def setup(self, bottom, top):
        raise ValueError("param_str must name a file")
'''

NET = """name: "py" force_backward: true
layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 5
        weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "aff" type: "Python" bottom: "ip" top: "aff"
        python_param { module: "user_layers" layer: "Affine" param_str: "1.5" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "aff" bottom: "label" top: "loss" }
"""


@pytest.fixture
def user_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "user_layers.py").write_text(textwrap.dedent(LAYERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(runtime._state, "min_level", 2)
    return tmp_path


def test_native_api_refuses_python_layers_unless_allowed(user_layers: Path) -> None:
    with pytest.raises(LayerError, match=r"layer 'aff' \(Python\).*refused.*allow_python_layers=True"):
        cc.Net(NET)
    net = cc.Net(NET, phase="TRAIN", allow_python_layers=True)
    assert type(net.layers["aff"]).__name__ == "PythonLayer"
    assert [tuple(t.shape) for t in net.params["aff"]] == [(1,), (1,)]


def test_native_and_pycaffe_python_layers_give_the_same_numbers(user_layers: Path, tmp_path: Path) -> None:
    model = tmp_path / "net.prototxt"
    model.write_text(NET)
    torch.manual_seed(0)
    native = cc.Net(model, phase="TRAIN", allow_python_layers=True)
    native.save_caffemodel(tmp_path / "w.caffemodel")
    net = caffe.Net(str(model), caffe.TRAIN, weights=str(tmp_path / "w.caffemodel"))
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    y = np.array([0, 4, 2], np.float32)
    data = torch.from_numpy(x.copy()).requires_grad_()
    outputs = native(x=data, label=torch.from_numpy(y))
    native.loss(outputs).backward()
    out = net.forward(x=x, label=y)
    diffs = net.backward()
    np.testing.assert_array_equal(net.blobs["aff"].data, 1.5 * net.blobs["ip"].data + np.float32(0.25))
    assert float(out["loss"]) == outputs["loss"].item()
    np.testing.assert_array_equal(diffs["x"], data.grad.numpy())
    layer = net.layers[list(net._layer_names).index("aff")]  # the user's own object, as in Caffe
    assert layer.type == "Python" and layer.param_str == "1.5" and layer.phase == caffe.TRAIN
    assert layer.blobs[0].diff[0] != 0  # (the bias's diff is a sum of softmax gradients: about 0)
    for index in range(2):
        assert layer.blobs[index].diff[0] == native.params["aff"][index].grad[0].item()
    np.testing.assert_array_equal(net.params["ip"][0].diff, native.params["ip"][0].grad.numpy())
    # parameter blobs go to and from caffemodels
    layer.blobs[0].data[0] = 3.0
    net.save(str(tmp_path / "changed.caffemodel"))
    layer.blobs[0].data[0] = -1.0
    net.copy_from(str(tmp_path / "changed.caffemodel"))
    assert layer.blobs[0].data[0] == 3.0


def test_python_data_layer_phase_and_errors(user_layers: Path, tmp_path: Path) -> None:
    model = tmp_path / "counter.prototxt"
    model.write_text(
        'layer { name: "c" type: "Python" top: "n" top: "phase" python_param { module: "user_layers" layer: "Counter" } }'
    )
    for phase in (caffe.TRAIN, caffe.TEST):
        net = caffe.Net(str(model), phase)
        first, second = net.forward()["n"].copy(), net.forward()["n"].copy()
        assert net.forward()["phase"] == phase
        np.testing.assert_array_equal(first, np.zeros((2, 3), np.float32))
        np.testing.assert_array_equal(second, np.ones((2, 3), np.float32))
    native = cc.Net(model, phase="TEST", allow_python_layers=True)
    assert native()["n"].shape == (2, 3) and native()["phase"].item() == 1.0
    model.write_text(
        'layer { name: "b" type: "Python" top: "t" python_param { module: "user_layers" layer: "Broken" } }'
    )
    with pytest.raises(ValueError, match="param_str must name a file") as caught:
        caffe.Net(str(model), caffe.TEST)
    assert "layer 'b' (Python: user_layers.Broken).setup" in "".join(caught.value.__notes__)
    model.write_text(
        'layer { name: "m" type: "Python" top: "t" python_param { module: "no_such_mod" layer: "X" } }'
    )
    with pytest.raises(LayerError, match=r"layer 'm' \(Python\): cannot import module 'no_such_mod'"):
        caffe.Net(str(model), caffe.TEST)


def test_python_layer_trains_the_same_in_both_solvers(user_layers: Path, tmp_path: Path) -> None:
    (tmp_path / "train.prototxt").write_text(
        NET.replace(
            'layer { name: "in" type: "Input" top: "x" top: "label" input_param { shape { dim: 3 dim: 4 } shape { dim: 3 } } }',
            'layer { name: "in" type: "DummyData" top: "x" top: "label" dummy_data_param { shape { dim: 3 dim: 4 } '
            'shape { dim: 3 } data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 1 } } }',
        )
    )
    solver = tmp_path / "solver.prototxt"
    solver.write_text(
        f'net: "{tmp_path / "train.prototxt"}" base_lr: 0.1 momentum: 0.5 lr_policy: "fixed" max_iter: 3 '
        "display: 0 random_seed: 11 snapshot_after_train: false"
    )
    with pytest.raises(LayerError, match="allow_python_layers"):
        cc.Solver(solver, log=GlogWriter(None))
    native = cc.Solver(solver, log=GlogWriter(None), allow_python_layers=True)
    native.step(3)
    mine = caffe.SGDSolver(str(solver))
    mine.step(3)
    a = native.net.params["aff"][0].item()
    assert a != 1.5 and mine.net.params["aff"][0].data[0] == a
    np.testing.assert_array_equal(mine.net.params["ip"][0].data, native.net.params["ip"][0].detach().numpy())


def test_cli_needs_allow_python_layers(
    user_layers: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = tmp_path / "net.prototxt"
    model.write_text(NET)
    torch.manual_seed(0)
    cc.Net(model, phase="TEST", allow_python_layers=True).save_caffemodel(tmp_path / "w.caffemodel")
    args = ["test", "-model", str(model), "-weights", str(tmp_path / "w.caffemodel"), "-iterations", "1"]
    assert cli_main(args) == 1
    assert "--allow-python-layers" in capsys.readouterr().err
    assert cli_main([*args, "--allow-python-layers"]) == 0
    assert "loss = " in capsys.readouterr().err
