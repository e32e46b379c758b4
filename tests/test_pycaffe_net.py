"""pycaffe's ``caffe.Net`` and solvers (``caffe_compat.pycaffe``): numbers equal to the native
``cc.Net``/``cc.Solver``, blob views shared with the net, Caffe's forward/backward ranges,
need-backward rules, constructors, name maps, weights I/O and the solver API."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat as cc
import caffe_compat.pycaffe as caffe
from caffe_compat.log.glog import GlogWriter
from caffe_compat.pycaffe import runtime

# Convolution + in-place BatchNorm/Scale/ReLU, fan-out into an Eltwise, in-place Dropout, a
# parameter shared by two layers (param { name }), lr_mult 0 blobs, a loss and an Accuracy.
BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 }
                      bias_filler { type: "constant" value: 0.1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 5 kernel_size: 3 pad: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "sum" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "sum" }
layer { name: "pool" type: "Pooling" bottom: "sum" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool" top: "pool" dropout_param { dropout_ratio: 0.3 } }
layer { name: "ip" type: "InnerProduct" bottom: "pool" top: "ip" param { lr_mult: 1 } param { lr_mult: 2 }
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "ip2" type: "InnerProduct" bottom: "pool" top: "ip2" param { name: "w" } param { lr_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "ip3" type: "InnerProduct" bottom: "pool" top: "ip3" param { name: "w" } param { lr_mult: 0 }
  inner_product_param { num_output: 6 weight_filler { type: "xavier" } } }
layer { name: "add" type: "Eltwise" bottom: "ip" bottom: "ip2" bottom: "ip3" top: "logits"
  eltwise_param { coeff: 1 coeff: 0.5 coeff: -0.25 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }
layer { name: "acc" type: "Accuracy" bottom: "logits" bottom: "label" top: "acc" }
"""
INPUTS = """name: "eq" force_backward: true
layer { name: "in" type: "Input" top: "data" top: "label"
  input_param { shape { dim: 4 dim: 3 dim: 9 dim: 7 } shape { dim: 4 } } }
"""
DUMMY = """name: "eq"
layer { name: "in" type: "DummyData" top: "data" top: "label"
  dummy_data_param { shape { dim: 4 dim: 3 dim: 9 dim: 7 } shape { dim: 4 }
    data_filler { type: "gaussian" std: 1 } data_filler { type: "constant" value: 2 } } }
"""

SMALL = """name: "small" force_backward: true
layer { name: "in" type: "Input" top: "x" top: "y" input_param { shape { dim: 3 dim: 2 dim: 2 } shape { dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "ip" inner_product_param { num_output: 4
  weight_filler { type: "gaussian" std: 1 } bias_filler { type: "constant" value: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }
"""


@pytest.fixture(autouse=True)
def _quiet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(runtime._state, "min_level", 2)


def _write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_forward_and_backward_equal_the_native_net_bit_for_bit(tmp_path: Path) -> None:
    model = _write(tmp_path, "net.prototxt", INPUTS + BODY)
    torch.manual_seed(0)
    native = cc.Net(model, phase="TRAIN")
    native.save_caffemodel(tmp_path / "w.caffemodel")
    net = caffe.Net(model, caffe.TRAIN, weights=str(tmp_path / "w.caffemodel"))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 9, 7)).astype(np.float32)
    y = np.array([0, 5, 2, 3], np.float32)

    torch.manual_seed(7)  # the same Dropout mask on both sides
    data = torch.from_numpy(x.copy()).requires_grad_()
    outputs = native(data=data, label=torch.from_numpy(y))
    native.loss(outputs).backward()

    torch.manual_seed(7)
    net.blobs["data"].data[...] = x
    net.blobs["label"].data[...] = y
    result = net.forward()
    diffs = net.backward()

    assert set(result) == {"acc", "loss"} and float(result["loss"]) == outputs["loss"].item()
    assert 1.0 < float(result["loss"]) < 20.0
    for name in ("conv1", "conv2", "sum", "pool", "ip", "ip2", "logits"):
        np.testing.assert_array_equal(net.blobs[name].data, native.blobs[name].detach().numpy())
    np.testing.assert_array_equal(diffs["data"], data.grad.numpy())
    assert np.abs(diffs["data"]).sum() > 0
    assert list(net.params) == ["conv1", "bn1", "sc1", "conv2", "ip", "ip2", "ip3"]
    for name, tensors in native.params.items():
        for index, tensor in enumerate(tensors):
            blob = net.params[name][index]
            np.testing.assert_array_equal(blob.data, tensor.detach().numpy())
            expected = tensor.grad.numpy() if tensor.grad is not None else np.zeros(tensor.shape, np.float32)
            np.testing.assert_array_equal(blob.diff, expected, err_msg=f"{name}[{index}]")
    # force_backward: even the lr_mult 0 biases get their diff, as Caffe sets param_propagate_down
    assert net.params["ip2"][1].diff.any()
    # the shared blob is one tensor, holding the sum of both layers' gradients
    assert net.params["ip2"][0].data_tensor().data_ptr() == net.params["ip3"][0].data_tensor().data_ptr()
    assert np.abs(net.params["ip2"][0].diff).sum() > 0


def _step_losses(solver, net_blobs) -> list[float]:
    losses: list[float] = []
    solver.add_callback(lambda: None, lambda: losses.append(float(net_blobs()["loss"])))
    solver.step(3)
    return losses


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_solver_steps_equal_the_native_solver(tmp_path: Path, kind: str) -> None:
    _write(tmp_path, "train.prototxt", DUMMY + BODY)
    solver_text = (
        'net: "train.prototxt" base_lr: 0.02 momentum: 0.9 weight_decay: 0.001 lr_policy: "step" gamma: 0.5 '
        "stepsize: 2 max_iter: 3 display: 1 random_seed: 3 snapshot_after_train: false "
        f'test_iter: 1 test_interval: 2 type: "{kind}"'
    )
    path = _write(tmp_path, "solver.prototxt", solver_text)
    native = cc.Solver(path, log=GlogWriter(None))
    native_losses = _step_losses(native, lambda: {"loss": native.net.blobs["loss"].item()})
    mine = caffe.get_solver(path)
    assert type(mine) is {"SGD": caffe.SGDSolver, "Adam": caffe.AdamSolver}[kind]
    my_losses = _step_losses(mine, lambda: {"loss": mine.net.blobs["loss"].data})
    assert mine.iter == native.iter == 3
    assert my_losses == native_losses and my_losses[0] != my_losses[-1]
    for (name, a), (_, b) in zip(native.net.params.items(), mine.cc_solver.net.params.items(), strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.detach().numpy(), y.detach().numpy(), err_msg=name)
    # the test net shares the train net's parameters
    assert (
        mine.test_nets[0].params["ip"][0].data_tensor().data_ptr()
        == mine.net.params["ip"][0].data_tensor().data_ptr()
    )


def test_blob_data_is_shared_with_the_net_and_reshape_keeps_caffes_memory_rules(tmp_path: Path) -> None:
    net = caffe.Net(_write(tmp_path, "small.prototxt", SMALL), caffe.TEST)
    x, ip = net.blobs["x"], net.blobs["ip"]
    assert x.shape == (3, 2, 2) and x.count == 12 and (x.num, x.channels, x.height, x.width) == (3, 2, 2, 1)
    assert x.data.dtype == np.float32 and not x.data.any()
    held = ip.data  # an array held across forward sees what the net writes
    x.data[...] = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    net.forward()
    weight, bias = (blob.data for blob in net.params["ip"])
    np.testing.assert_allclose(held, x.data.reshape(3, 4) @ weight.T + bias, rtol=1e-6, atol=1e-5)
    weight[...] = 0  # writing a parameter view changes the net
    net.forward()
    np.testing.assert_array_equal(ip.data, np.full((3, 4), 0.5, np.float32))
    x.reshape(2, 2, 2)  # fits: same memory, values kept in flat order
    np.testing.assert_array_equal(x.data.reshape(-1), np.arange(8, dtype=np.float32))
    x.reshape(5, 2, 2)  # grows: fresh zeroed memory
    assert x.shape == (5, 2, 2) and not x.data.any()
    net.blobs["y"].reshape(5)
    net.forward()
    assert ip.data.shape == (5, 4) and net.blobs["loss"].data.shape == ()
    net.blobs["x"].reshape(1, 2, 2)
    net.blobs["y"].reshape(1)
    net.reshape()
    assert net.blobs["ip"].shape == (1, 4)


def test_forward_and_backward_from_and_to_named_layers(tmp_path: Path) -> None:
    net = caffe.Net(_write(tmp_path, "small.prototxt", SMALL), caffe.TRAIN)
    weight, bias = (blob.data for blob in net.params["ip"])
    sample = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 2, 2)
    net.blobs["x"].data[...] = sample
    out = net.forward(start="ip", end="ip")
    assert set(out) == {"ip"}
    np.testing.assert_allclose(out["ip"], sample.reshape(3, 4) @ weight.T + bias, rtol=1e-6, atol=1e-6)
    top_diff = np.arange(12, dtype=np.float32).reshape(3, 4)
    net.blobs["ip"].diff[...] = top_diff
    diffs = net.backward(start="ip", end="ip")
    assert set(diffs) == {"x"}
    np.testing.assert_allclose(diffs["x"], (top_diff @ weight).reshape(3, 2, 2), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        net.params["ip"][0].diff, top_diff.T @ sample.reshape(3, 4), rtol=1e-6, atol=1e-6
    )
    net.backward(start="ip", end="ip")  # parameter diffs accumulate, bottom diffs are overwritten
    np.testing.assert_allclose(
        net.params["ip"][0].diff, 2 * top_diff.T @ sample.reshape(3, 4), rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(diffs["x"], (top_diff @ weight).reshape(3, 2, 2), rtol=1e-6, atol=1e-6)
    held = net.params["ip"][0].diff
    net.clear_param_diffs()
    assert not held.any()
    # inputs by name, the loss top's diff is its loss weight, labels get no diff
    out = net.forward(x=sample, y=np.array([1, 0, 3], np.float32))
    assert set(out) == {"loss"} and net.blobs["loss"].diff == 1.0
    net.backward()
    assert not net.blobs["y"].diff.any() and net.blobs["x"].diff.any()
    with pytest.raises(RuntimeError, match="Input blob arguments do not match net inputs"):
        net.forward(x=sample)
    with pytest.raises(RuntimeError, match="Input is not batch sized"):
        net.forward(x=sample[:2], y=np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="no layer named 'fc9'"):
        net.forward(start="fc9")


def test_constructors_names_and_maps(tmp_path: Path) -> None:
    text = """name: "n"
layer { name: "data" type: "DummyData" top: "data" top: "label"
        dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "a" inner_product_param { num_output: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "a" top: "b" inner_product_param { num_output: 3 } }
layer { name: "deploy_only" type: "ReLU" bottom: "b" top: "c" include { stage: "deploy" } }
layer { name: "lvl" type: "Sigmoid" bottom: "b" top: "d" include { min_level: 1 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "b" bottom: "label" top: "loss" loss_weight: 2 }
"""
    model = _write(tmp_path, "n.prototxt", text)
    net = caffe.Net(model, caffe.TRAIN)
    assert net._layer_names == ["data", "fc", "fc", "loss"]
    assert net.inputs == [] and net.outputs == ["loss"]
    assert list(net.blobs) == ["data", "label", "a", "b", "loss"]
    assert net.blob_loss_weights == {"data": 0.0, "label": 0.0, "a": 0.0, "b": 0.0, "loss": 2.0}
    assert dict(net.top_names) == {"data": ["data", "label"], "fc": ["b"], "loss": ["loss"]}
    assert net.bottom_names["loss"] == ["b", "label"]
    assert net.layer_dict["fc"] is net.layers[2] and net.layers[2].type == "InnerProduct"
    assert net.params["fc"][0].shape == (3, 2)  # a repeated name reaches the last layer
    assert net.blobs["loss"].diff == 2.0
    staged = caffe.Net(model, caffe.TEST, level=1, stages=["deploy"])
    assert list(staged.blobs) == ["data", "label", "a", "b", "c", "d", "loss"]
    small = _write(tmp_path, "small.prototxt", SMALL)
    first = caffe.Net(small, caffe.TRAIN)
    first.save(str(tmp_path / "w.caffemodel"))
    with pytest.warns(DeprecationWarning, match="deprecated use of Python interface"):
        legacy = caffe.Net(small, str(tmp_path / "w.caffemodel"), caffe.TRAIN)
    named = caffe.Net(small, caffe.TRAIN, weights=str(tmp_path / "w.caffemodel"))
    for other in (legacy, named):
        np.testing.assert_array_equal(other.params["ip"][0].data, first.params["ip"][0].data)
    with pytest.raises(TypeError, match="needs a phase"):
        caffe.Net(model)
    with pytest.raises(RuntimeError, match="Could not open file .*missing.prototxt"):
        caffe.Net(str(tmp_path / "missing.prototxt"), caffe.TEST)


def test_weights_io_share_with_and_forward_all(tmp_path: Path) -> None:
    model = _write(tmp_path, "small.prototxt", SMALL.replace("force_backward: true", ""))
    a = caffe.Net(model, caffe.TEST)
    b = caffe.Net(model, caffe.TEST)
    assert not np.array_equal(a.params["ip"][0].data, b.params["ip"][0].data)
    a.save_hdf5(str(tmp_path / "w.h5"))
    b.load_hdf5(str(tmp_path / "w.h5"))
    np.testing.assert_array_equal(a.params["ip"][0].data, b.params["ip"][0].data)
    c = caffe.Net(model, caffe.TEST)
    c.share_with(a)
    a.params["ip"][1].data[...] = 7
    np.testing.assert_array_equal(c.params["ip"][1].data, np.full(4, 7, np.float32))
    # forward_all pads the last batch and trims it again (a deploy net: per-item outputs)
    deploy = SMALL.replace(
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "y" top: "loss" }', ""
    )
    d = caffe.Net(_write(tmp_path, "deploy.prototxt", deploy.replace("force_backward: true", "")), caffe.TEST)
    d.share_with(a)
    items = np.random.default_rng(0).standard_normal((7, 2, 2)).astype(np.float32)
    labels = np.arange(7, dtype=np.float32)
    out = d.forward_all(blobs=["y"], x=items, y=labels)
    assert set(out) == {"ip", "y"} and out["ip"].shape == (7, 4)
    np.testing.assert_array_equal(out["y"], labels)
    weight, bias = (blob.data for blob in a.params["ip"])
    np.testing.assert_allclose(out["ip"], items.reshape(7, 4) @ weight.T + bias, rtol=1e-5, atol=1e-5)
    # a net with no loss and no force_backward needs no backward (Caffe's rule): diffs stay zero
    outs, diffs = d.forward_backward_all(x=items, y=labels, ip=np.ones((7, 4), np.float32))
    assert outs["ip"].shape == (7, 4) and diffs["x"].shape == (7, 2, 2) and not diffs["x"].any()
    assert not d.params["ip"][0].diff.any()


def test_a_constant_dummy_data_top_keeps_what_the_caller_wrote(tmp_path: Path) -> None:
    net = caffe.Net(_write(tmp_path, "d.prototxt", DUMMY + BODY), caffe.TRAIN)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, np.full(4, 2, np.float32))
    first = net.blobs["data"].data.copy()
    net.blobs["label"].data[...] = [1, 0, 5, 3]  # Caffe fills a constant top once (refill_ false)
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [1, 0, 5, 3])
    assert not np.array_equal(net.blobs["data"].data, first)  # a gaussian top is refilled


def test_set_input_arrays_feeds_the_memory_data_layer(tmp_path: Path) -> None:
    model = _write(
        tmp_path,
        "mem.prototxt",
        """layer { name: "mem" type: "MemoryData" top: "data" top: "label"
                   memory_data_param { batch_size: 2 channels: 1 height: 2 width: 3 } }
           layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 2 } }
           layer { name: "s" type: "Silence" bottom: "label" }""",
    )
    net = caffe.Net(model, caffe.TEST)
    data = np.arange(24, dtype=np.float32).reshape(4, 1, 2, 3)
    net.set_input_arrays(data, np.array([5, 6, 7, 8], np.float32))
    net.forward()
    np.testing.assert_array_equal(net.blobs["data"].data, data[:2])
    np.testing.assert_array_equal(net.blobs["label"].data, [5, 6])
    net.forward()
    np.testing.assert_array_equal(net.blobs["label"].data, [7, 8])
    with pytest.raises(RuntimeError, match="data array must be float32"):
        net.set_input_arrays(data.astype(np.float64), np.zeros(4, np.float32))
    with pytest.raises(RuntimeError, match="multiple of batch size"):
        net.set_input_arrays(data[:3], np.zeros(3, np.float32))


def test_solver_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "train.prototxt", DUMMY + BODY)
    path = _write(
        tmp_path,
        "solver.prototxt",
        'net: "train.prototxt" base_lr: 0.01 lr_policy: "fixed" max_iter: 2 type: "Adam" '
        'snapshot_prefix: "snap" random_seed: 1 snapshot_after_train: false',
    )
    sgd = caffe.SGDSolver(path)  # the class fixes the rule, whatever the file says
    assert sgd.cc_solver.rule.type_name == "SGD" and sgd.lr == pytest.approx(0.01)
    assert sgd.net is sgd.net and sgd.test_nets == [] and sgd.param.max_iter == 2
    events: list[str] = []
    sgd.add_callback(lambda: events.append(f"start{sgd.iter}"), lambda: events.append(f"ready{sgd.iter}"))
    sgd.add_callback(caffe.NCCL(sgd, b""))  # Caffe's NCCL hook: a no-op here
    held = sgd.net.params["conv1"][0].diff
    sgd.step(1)
    assert events == ["start0", "ready0"] and held.any()  # diffs live in the held array
    conv = sgd.net.layers[1].blobs[0]
    conv.data[...] = 0
    conv.diff[...] = 1
    sgd.apply_update()
    np.testing.assert_allclose(conv.data, np.full(conv.shape, -0.01, np.float32))
    np.testing.assert_allclose(conv.diff, np.full(conv.shape, 0.01, np.float32))  # the step, as in Caffe
    sgd.snapshot()
    assert Path("snap_iter_1.caffemodel").is_file() and Path("snap_iter_1.solverstate").is_file()
    sgd.solve()
    assert sgd.iter == 2
    restored = caffe.get_solver(path)
    assert isinstance(restored, caffe.AdamSolver)
    sgd2 = caffe.SGDSolver(path)
    sgd2.restore("snap_iter_1.solverstate")
    assert sgd2.iter == 1
    np.testing.assert_array_equal(sgd2.net.params["conv1"][0].data, np.full(conv.shape, -0.01, np.float32))


def test_runtime_functions() -> None:
    types = caffe.layer_type_list()
    assert {"Python", "Convolution", "Data", "InnerProduct"} <= set(types) and types == sorted(types)
    assert caffe.has_nccl() is False and caffe.TRAIN == 0 and caffe.TEST == 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runtime._state["warned_gpu"] = False
        caffe.set_mode_gpu()
        caffe.set_mode_cpu()
    assert any("computes on the CPU" in str(w.message) for w in caught)
    timer = caffe.Timer()
    timer.start()
    timer.stop()
    assert timer.ms >= 0.0
    caffe.set_random_seed(5)
    first = torch.rand(1)
    caffe.set_random_seed(5)
    assert torch.equal(first, torch.rand(1))
