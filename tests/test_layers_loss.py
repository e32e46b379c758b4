"""Softmax and the loss layers against float64 transcriptions of the fork's CPU loops.

The goldens (test_layer_goldens.py) cover softmax, softmax_loss(_ignore, _weight), accuracy_top2,
euclidean_loss and sigmoid_ce_loss; these tests cover the other parameters: spatial labels, every
normalization mode, the weight bottom and class weights, ties in Accuracy, the FLT_MIN floor,
Caffe's non-exact gradients, and every error message.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers import registered_types
from caffe_compat.layers.loss import FLT_MIN

MODES = {"FULL": 0, "VALID": 1, "BATCH_SIZE": 2, "NONE": 3}


def make_net(inputs: dict[str, tuple[int, ...]], layer: str) -> cc.Net:
    text = "force_backward: true\n"
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "in_{name}" type: "Input" top: "{name}" '
        text += f"input_param {{ shape {{ {dims} }} }} }}\n"
    return cc.Net(text + layer, phase="TRAIN")


def caffe_normalizer(mode: int, outer: int, inner: int, valid: float) -> float:
    value = {0: outer * inner, 1: valid, 2: outer, 3: 1}[mode]
    return max(1.0, float(value))


def ref_softmax_loss(x, label, axis, ignore, mode, weights=None, class_weight=None, top_diff=1.0):
    """softmax_loss_layer.cpp Forward_cpu/Backward_cpu, element by element, in float64."""
    shape = x.shape
    channels = shape[axis]
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
    xv = x.reshape(outer, channels, inner).astype(np.float64)
    prob = np.exp(xv - xv.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    lab = label.reshape(outer, inner)
    w = None if weights is None else weights.reshape(outer, inner)
    loss, count = 0.0, 0.0
    for i in range(outer):
        for j in range(inner):
            value = int(lab[i, j])
            if w is None:
                if ignore is not None and value == ignore:
                    continue
                loss -= math.log(max(prob[i, value, j], FLT_MIN))
                count += 1
            else:
                wv = w[i, j] * (class_weight[value] if class_weight is not None else 1.0)
                if wv == 0 or (ignore is not None and value == ignore):
                    continue
                loss -= wv * math.log(max(prob[i, value, j], FLT_MIN))
                count += wv
    loss /= caffe_normalizer(mode, outer, inner, count)
    grad = prob.copy()
    count = 0.0
    for i in range(outer):
        for j in range(inner):
            value = int(lab[i, j])
            if ignore is not None and value == ignore:
                grad[i, :, j] = 0
                continue
            grad[i, value, j] -= 1
            if w is not None:
                grad[i, :, j] *= w[i, j] * (class_weight[value] if class_weight is not None else 1.0)
                if w[i, j] != 0:
                    count += w[i, j]
            else:
                count += 1
    grad *= top_diff / caffe_normalizer(mode, outer, inner, count)
    return loss, grad.reshape(shape), prob


def loss_param(mode: str) -> str:
    if mode == "legacy_true":
        return "loss_param { normalize: true ignore_label: 1 }"
    if mode == "legacy_false":
        return "loss_param { normalize: false ignore_label: 1 }"
    return f"loss_param {{ normalization: {mode} ignore_label: 1 }}"


MODE_VALUES = {**MODES, "legacy_true": 1, "legacy_false": 2}


@pytest.mark.parametrize("mode", list(MODE_VALUES))
@pytest.mark.parametrize("label_shape", [(2, 4, 3), (2, 1, 4, 3)])
def test_softmax_loss_spatial_modes(mode: str, label_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 4, 3)) * 3
    label = rng.integers(0, 5, size=label_shape).astype(np.float64)
    label.reshape(-1)[[0, 3, 7]] = 1  # some ignored positions
    net = make_net(
        {"x": x.shape, "label": label_shape},
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
        f"{loss_param(mode)} }}",
    )
    xt = torch.tensor(x, requires_grad=True)
    out = net(x=xt, label=torch.tensor(label))
    loss = out["loss"]
    assert loss.shape == ()
    loss.backward(torch.tensor(0.7, dtype=torch.float64))
    ref_loss, ref_grad, _ = ref_softmax_loss(x, label, 1, 1, MODE_VALUES[mode], top_diff=0.7)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


def test_softmax_loss_axis_and_prob_top() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 6))
    label = rng.integers(0, 6, size=(2, 3)).astype(np.float32)
    net = make_net(
        {"x": x.shape, "label": label.shape},
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" top: "prob" '
        "softmax_param { axis: -1 } }",
    )
    assert net.loss_weights == {"loss": 1.0}
    assert net.blob_shapes["prob"] == (2, 3, 6)
    xt = torch.tensor(x, requires_grad=True)
    out = net(x=xt, label=torch.tensor(label))
    ref_loss, ref_grad, ref_prob = ref_softmax_loss(x, label, 2, None, 1)
    np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(out["prob"].numpy(), ref_prob.reshape(2, 3, 6), rtol=1e-12)
    assert not out["prob"].requires_grad  # Caffe ignores the diff of the probability top
    net.loss(out).backward()
    np.testing.assert_allclose(xt.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)


def test_softmax_loss_weight_bottom_and_class_weight() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 4, 2))
    label = np.array([[0, 1], [2, 3], [1, 1]], dtype=np.float64)
    weights = np.array([[0.5, 0.0], [2.0, 1.0], [1.5, 0.25]])
    class_weight = [1.0, 3.0, 0.5, 2.0]
    cw_text = " ".join(f"class_weight: {v}" for v in class_weight)
    for mode in ("VALID", "FULL"):
        net = make_net(
            {"x": x.shape, "label": label.shape, "w": weights.shape},
            'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" bottom: "w" '
            'top: "loss" '
            f"softmax_param {{ {cw_text} }} loss_param {{ normalization: {mode} ignore_label: 3 }} }}",
        )
        xt = torch.tensor(x, requires_grad=True)
        w = torch.tensor(weights, requires_grad=True)
        out = net(x=xt, label=torch.tensor(label), w=w)
        out["loss"].backward()
        ref_loss, ref_grad, _ = ref_softmax_loss(x, label, 1, 3, MODES[mode], weights, class_weight)
        np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-12)
        np.testing.assert_allclose(xt.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-14)
        assert w.grad is None


def test_softmax_loss_flt_min_floor_and_caffe_gradient() -> None:
    net = make_net(
        {"x": (1, 2), "label": (1,)},
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" }',
    )
    x = torch.tensor([[0.0, -200.0]], requires_grad=True)
    out = net(x=x, label=torch.tensor([1.0]))
    np.testing.assert_allclose(out["loss"].item(), 87.336544750553, rtol=1e-6)  # -log(FLT_MIN)
    out["loss"].backward()
    np.testing.assert_allclose(x.grad.numpy(), [[1.0, -1.0]], atol=1e-7)  # p - onehot, despite the floor


def test_softmax_loss_all_ignored_is_zero() -> None:
    net = make_net(
        {"x": (3, 4), "label": (3,)},
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "x" bottom: "label" top: "loss" '
        "loss_param { ignore_label: 255 } }",
    )
    x = torch.randn(3, 4, requires_grad=True)
    out = net(x=x, label=torch.full((3,), 255.0))
    assert out["loss"].item() == 0.0
    out["loss"].backward()
    assert torch.count_nonzero(x.grad) == 0


def test_softmax_matches_reference_and_gradcheck() -> None:
    net = make_net(
        {"x": (2, 3, 4, 5)},
        'layer { name: "s" type: "Softmax" bottom: "x" top: "y" softmax_param { axis: 2 } }',
    )
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = net(x=x)["y"].numpy()
    e = np.exp(x.numpy() - x.numpy().max(axis=2, keepdims=True))
    np.testing.assert_allclose(y, e / e.sum(axis=2, keepdims=True), rtol=1e-12)
    layer = net.layers["s"]
    assert torch.autograd.gradcheck(layer, (x.clone().requires_grad_(),))


# -- Accuracy ----------------------------------------------------------------------------------
def ref_accuracy(x, label, axis, top_k, ignore=None, weights=None, min_is_better=False):
    """accuracy_layer.cpp of the fork: partial_sort of (score, class) pairs."""
    shape = x.shape
    channels = shape[axis]
    outer, inner = math.prod(shape[:axis]), math.prod(shape[axis + 1 :])
    xv = x.reshape(outer, channels, inner)
    lab = label.reshape(outer, inner)
    correct = count = 0
    hits, nums = np.zeros(channels), np.zeros(channels)
    for i in range(outer):
        for j in range(inner):
            value = int(lab[i, j])
            if weights is not None and weights.reshape(outer, inner)[i, j] == 0:
                continue
            if ignore is not None and value == ignore:
                continue
            nums[value] += 1
            pairs = sorted(((xv[i, k, j], k) for k in range(channels)), reverse=not min_is_better)
            if value in [k for _, k in pairs[:top_k]]:
                correct += 1
                hits[value] += 1
            count += 1
    per_class = np.where(nums == 0, 0, hits / np.maximum(nums, 1))
    return (correct / count if count else float("nan")), per_class


@pytest.mark.parametrize("top_k", [1, 2, 3])
@pytest.mark.parametrize("min_is_better", [False, True])
def test_accuracy_ties_ignore_per_class(top_k: int, min_is_better: bool) -> None:
    rng = np.random.default_rng(3)
    x = rng.integers(0, 3, size=(4, 5, 3)).astype(np.float32)  # many ties
    label = rng.integers(0, 5, size=(4, 3)).astype(np.float32)
    label[0, 0] = 4
    net = make_net(
        {"x": x.shape, "label": label.shape},
        'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "acc" top: "per_class" '
        f"accuracy_param {{ top_k: {top_k} ignore_label: 4 min_is_better: {str(min_is_better).lower()} }} }}",
    )
    out = net(x=torch.tensor(x, requires_grad=True), label=torch.tensor(label))
    acc, per_class = ref_accuracy(x, label, 1, top_k, ignore=4, min_is_better=min_is_better)
    assert out["acc"].shape == () and out["per_class"].shape == (5,)
    assert not out["acc"].requires_grad
    np.testing.assert_allclose(out["acc"].item(), acc, rtol=1e-6)
    np.testing.assert_allclose(out["per_class"].numpy(), per_class, rtol=1e-6)


def test_accuracy_axis_weights_and_nan_when_nothing_counted() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3, 6)).astype(np.float32)
    label = rng.integers(0, 6, size=(2, 3)).astype(np.float32)
    weights = np.array([[1, 0, 2], [0, 1, 1]], dtype=np.float32)
    net = make_net(
        {"x": x.shape, "label": label.shape, "w": weights.shape},
        'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" bottom: "w" top: "acc" '
        "accuracy_param { axis: 2 top_k: 2 } }",
    )
    out = net(x=torch.tensor(x), label=torch.tensor(label), w=torch.tensor(weights))
    np.testing.assert_allclose(out["acc"].item(), ref_accuracy(x, label, 2, 2, weights=weights)[0], rtol=1e-6)
    out = net(x=torch.tensor(x), label=torch.tensor(label), w=torch.zeros(2, 3))
    assert math.isnan(out["acc"].item())  # the fork divides 0 by 0


# -- EuclideanLoss -----------------------------------------------------------------------------
def test_euclidean_loss_shapes_and_gradients() -> None:
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(4, 3)), rng.normal(size=(4, 3, 1, 1))
    net = make_net(
        {"a": a.shape, "b": b.shape},
        'layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }',
    )
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    loss = net(a=at, b=bt)["loss"]
    diff = a - b.reshape(4, 3)
    np.testing.assert_allclose(loss.item(), (diff**2).sum() / 4 / 2, rtol=1e-12)
    loss.backward(torch.tensor(2.0, dtype=torch.float64))
    np.testing.assert_allclose(at.grad.numpy(), 2.0 * diff / 4, rtol=1e-12)
    np.testing.assert_allclose(bt.grad.numpy(), -2.0 * diff.reshape(4, 3, 1, 1) / 4, rtol=1e-12)


def test_euclidean_loss_weighted_uses_caffe_gradient() -> None:
    rng = np.random.default_rng(6)
    a, b, w = rng.normal(size=(2, 5)), rng.normal(size=(2, 5)), rng.uniform(0.5, 2, size=(2, 5))
    net = make_net(
        {"a": a.shape, "b": b.shape, "w": w.shape},
        'layer { name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" bottom: "w" top: "loss" }',
    )
    at, bt, wt = (torch.tensor(v, requires_grad=True) for v in (a, b, w))
    loss = net(a=at, b=bt, w=wt)["loss"]
    diff = (a - b) * w
    np.testing.assert_allclose(loss.item(), (diff**2).sum() / 2 / 2, rtol=1e-12)
    loss.backward()
    np.testing.assert_allclose(at.grad.numpy(), diff / 2, rtol=1e-12)  # not the exact w**2 gradient
    np.testing.assert_allclose(bt.grad.numpy(), -diff / 2, rtol=1e-12)
    assert wt.grad is None


# -- SigmoidCrossEntropyLoss -------------------------------------------------------------------
def ref_sigmoid_ce(x, t, ignore, mode):
    loss, valid = 0.0, 0
    flat_x, flat_t = x.reshape(-1), t.reshape(-1)
    grad = np.zeros_like(flat_x)
    for i in range(flat_x.size):
        if ignore is not None and int(flat_t[i]) == ignore:
            continue
        xi = flat_x[i]
        pos = 1.0 if xi >= 0 else 0.0
        loss -= xi * (flat_t[i] - pos) - math.log(1 + math.exp(xi - 2 * xi * pos))
        grad[i] = 1 / (1 + math.exp(-xi)) - flat_t[i]
        valid += 1
    norm = caffe_normalizer(mode, x.shape[0], x.size // x.shape[0], valid)
    return loss / norm, grad.reshape(x.shape) / norm


@pytest.mark.parametrize(
    "param,mode",
    [
        ("", 2),  # the fork's default: BATCH_SIZE
        ("loss_param { ignore_label: -1 }", 2),
        ("loss_param { ignore_label: -1 normalization: VALID }", 1),
        ("loss_param { ignore_label: -1 normalization: FULL }", 0),
        ("loss_param { ignore_label: -1 normalization: NONE }", 3),
        ("loss_param { ignore_label: -1 normalize: true }", 1),
        ("loss_param { ignore_label: -1 normalize: false }", 2),
    ],
)
def test_sigmoid_cross_entropy_modes(param: str, mode: int) -> None:
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3, 2, 4)) * 5
    x[0, 0, 0] = 0.0
    x[1, 1, 1] = 60.0
    x[2, 0, 3] = -60.0
    t = rng.uniform(0, 1, size=x.shape)
    t[0, 1, :2] = -1.0
    ignore = -1 if "ignore_label" in param else None
    net = make_net(
        {"x": x.shape, "t": t.shape},
        f'layer {{ name: "loss" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '
        f"{param} }}",
    )
    xt, tt = torch.tensor(x, requires_grad=True), torch.tensor(t, requires_grad=True)
    loss = net(x=xt, t=tt)["loss"]
    loss.backward()
    ref_loss, ref_grad = ref_sigmoid_ce(x, t, ignore, mode)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(xt.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-15)
    assert tt.grad is None


# -- examples and errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "type_name", ["Softmax", "SoftmaxWithLoss", "Accuracy", "EuclideanLoss", "SigmoidCrossEntropyLoss"]
)
def test_examples_build_and_run(type_name: str) -> None:
    cls = registered_types()[type_name]
    net = cc.Net(cls.example, phase="TRAIN")
    inputs = {}
    for name in net.input_names:
        shape = net.blob_shapes[name]
        inputs[name] = torch.randint(0, 3, shape).float() if name in ("label", "t") else torch.randn(shape)
    outputs = net(**inputs)
    for name, value in outputs.items():
        assert value.shape == net.blob_shapes[name]
        assert torch.isfinite(value).all()


SOFTMAX_LOSS = 'layer {{ name: "loss" type: "SoftmaxWithLoss" {body} }}'


@pytest.mark.parametrize(
    "inputs,layer,message",
    [
        ({"x": (4, 5), "label": (3,)}, 'bottom: "x" bottom: "label" top: "loss"', "same first dimension"),
        ({"x": (4, 5, 2), "label": (4,)}, 'bottom: "x" bottom: "label" top: "loss"', "needs 8 labels"),
        ({"x": (4, 5)}, 'bottom: "x" top: "loss"', "takes 2 or 3 bottom blob(s), got 1"),
        (
            {"x": (4, 5), "label": (4,), "w": (3,)},
            'bottom: "x" bottom: "label" bottom: "w" top: "loss"',
            "number of loss weights must match",
        ),
        (
            {"x": (4, 5), "label": (4,)},
            'bottom: "x" bottom: "label" top: "loss" top: "a" top: "b"',
            "produces 1 or 2 top blob(s), got 3",
        ),
        (
            {"x": (4, 5), "label": (4,)},
            'bottom: "x" bottom: "label" top: "loss" softmax_param { label_smooth_factor: 0.1 }',
            "label_smooth_factor is not supported",
        ),
        (
            {"x": (4, 5), "label": (4,)},
            'bottom: "x" bottom: "label" top: "loss" softmax_param { cutting_point: 0.5 }',
            "cutting_point is not supported",
        ),
        (
            {"x": (4, 5), "label": (4,)},
            'bottom: "x" bottom: "label" top: "loss" softmax_param { normalize_type: "L2" }',
            "normalize_type 'L2'",
        ),
        (
            {"x": (4, 5), "label": (4,)},
            'bottom: "x" bottom: "label" top: "loss" softmax_param { class_weight: 1 class_weight: 2 }',
            "2 class_weight values for 5 classes",
        ),
        (
            {"x": (4, 5), "label": (4,)},
            'bottom: "x" bottom: "label" top: "loss" softmax_param { axis: 2 }',
            "axis 2 is out of range",
        ),
    ],
)
def test_softmax_loss_errors(inputs: dict, layer: str, message: str) -> None:
    with pytest.raises(LayerError, match="layer 'loss' \\(SoftmaxWithLoss\\)") as info:
        make_net(inputs, SOFTMAX_LOSS.format(body=layer))
    assert message in str(info.value)


def test_label_out_of_range_is_an_error() -> None:
    net = make_net(
        {"x": (2, 3), "label": (2,)}, SOFTMAX_LOSS.format(body='bottom: "x" bottom: "label" top: "loss"')
    )
    with pytest.raises(
        LayerError, match=r"layer 'loss' \(SoftmaxWithLoss\): label 3 is out of range \[0, 3\)"
    ):
        net(x=torch.randn(2, 3), label=torch.tensor([0.0, 3.0]))
    acc = make_net(
        {"x": (2, 3), "label": (2,)},
        'layer { name: "acc" type: "Accuracy" bottom: "x" bottom: "label" top: "a" }',
    )
    with pytest.raises(LayerError, match=r"label -1 is out of range"):
        acc(x=torch.randn(2, 3), label=torch.tensor([0.0, -1.0]))


@pytest.mark.parametrize(
    "inputs,layer,message",
    [
        (
            {"x": (4, 3), "label": (4,)},
            'layer { name: "l" type: "Accuracy" bottom: "x" bottom: "label" top: "a" '
            "accuracy_param { top_k: 4 } }",
            "top_k (4) must be less than or equal to the number of classes (3)",
        ),
        (
            {"x": (4, 3), "label": (4, 2)},
            'layer { name: "l" type: "Accuracy" bottom: "x" bottom: "label" top: "a" }',
            "needs 4 labels",
        ),
        (
            {"a": (4, 3), "b": (4, 2)},
            'layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }',
            "inputs must have the same dimension",
        ),
        (
            {"a": (4, 3), "b": (4, 3), "w": (4, 2)},
            'layer { name: "l" type: "EuclideanLoss" bottom: "a" bottom: "b" bottom: "w" top: "loss" }',
            "as many elements",
        ),
        (
            {"a": (4, 3), "b": (4, 2)},
            'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "a" bottom: "b" top: "loss" }',
            "inputs must have the same count",
        ),
        (
            {"a": (4, 3), "b": (2, 6)},
            'layer { name: "l" type: "SigmoidCrossEntropyLoss" bottom: "a" bottom: "b" top: "loss" }',
            "same first dimension",
        ),
        (
            {"a": (4, 3), "b": (4, 3)},
            'layer { name: "l" type: "Softmax" bottom: "a" bottom: "b" top: "y" }',
            "takes 1",
        ),
    ],
)
def test_other_errors(inputs: dict, layer: str, message: str) -> None:
    with pytest.raises(LayerError, match="layer 'l'") as info:
        make_net(inputs, layer)
    assert message in str(info.value)
