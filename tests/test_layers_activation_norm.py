"""Activation, normalization, Scale and Bias layers against float64 transcriptions of Caffe's
C++ (forward and Caffe's own backward), beyond the parameter values the goldens cover."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers import activation, normalization
from caffe_compat.proto.io import blob_to_array

SHAPE = (2, 3, 5, 7)
GOLDENS = Path(__file__).parent / "goldens" / "layers"
FWD = {"rtol": 1e-5, "atol": 1e-6}
BWD = {"rtol": 1e-4, "atol": 1e-6}


def inputs_text(shapes: dict[str, tuple[int, ...]]) -> str:
    lines = []
    for name, shape in shapes.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(
            f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}'
        )
    return "\n".join(lines) + "\n"


def make_net(
    layers: str, shapes: dict[str, tuple[int, ...]] | None = None, phase: str = "TRAIN", **kw
) -> cc.Net:
    return cc.Net(inputs_text(shapes or {"x": SHAPE}) + layers, phase=phase, **kw)


def random_input(seed: int = 0, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def run_with_grad(
    net: cc.Net, dy: np.ndarray, **inputs: np.ndarray
) -> tuple[np.ndarray, dict[str, torch.Tensor]]:
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in inputs.items()}
    y = net(**tensors)["y"]
    y.backward(torch.tensor(dy))
    return y.detach().double().numpy(), tensors


# -- element-wise layers: (layer text, input transform, Caffe forward, Caffe backward) ---------
Ref = Callable[[np.ndarray], np.ndarray]
Back = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def _bnll(x: np.ndarray) -> np.ndarray:
    return np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 0))))


def _bnll_back(x: np.ndarray, y: np.ndarray, dy: np.ndarray) -> np.ndarray:
    e = np.exp(np.minimum(x, 50.0))
    return dy * e / (e + 1.0)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


ELEMENTWISE: dict[str, tuple[str, str, Ref, Ref, Back]] = {
    "elu_0.3": (
        "ELU",
        "elu_param { alpha: 0.3 }",
        lambda x: x,
        lambda x: np.maximum(x, 0) + 0.3 * (np.exp(np.minimum(x, 0)) - 1),
        lambda x, y, dy: dy * ((x > 0) + (0.3 + y) * (x <= 0)),
    ),
    "absval": ("AbsVal", "", lambda x: x, np.abs, lambda x, y, dy: dy * np.sign(x)),
    "bnll_extremes": ("BNLL", "", lambda x: x * 30.0, _bnll, _bnll_back),
    "power_general": (
        "Power",
        "power_param { power: 1.5 scale: 0.5 shift: 3 }",
        lambda x: x,
        lambda x: (3 + 0.5 * x) ** 1.5,
        lambda x, y, dy: dy * 0.75 * y / (3 + 0.5 * x),
    ),
    "power_square": (
        "Power",
        "power_param { power: 2 scale: -2 shift: 1 }",
        lambda x: x,
        lambda x: (1 - 2 * x) ** 2,
        lambda x, y, dy: dy * (-4 * (1 - 2 * x) * 1.0),
    ),
    "power_no_shift": (
        "Power",
        "power_param { power: 3 scale: 0.7 }",
        lambda x: x,
        lambda x: (0.7 * x) ** 3,
        lambda x, y, dy: dy * 3 * y / x,
    ),
    "power_one": (
        "Power",
        "power_param { scale: 2.5 shift: -1 }",
        lambda x: x,
        lambda x: 2.5 * x - 1,
        lambda x, y, dy: dy * 2.5,
    ),
    "power_sqrt": (
        "Power",
        "power_param { power: 0.5 }",
        lambda x: np.abs(x) + 0.1,
        np.sqrt,
        lambda x, y, dy: dy * 0.5 * y / x,
    ),
    "exp_e": ("Exp", "", lambda x: x, np.exp, lambda x, y, dy: dy * y),
    "exp_base3": (
        "Exp",
        "exp_param { base: 3 scale: 0.2 shift: -0.5 }",
        lambda x: x,
        lambda x: 3.0 ** (-0.5 + 0.2 * x),
        lambda x, y, dy: dy * y * math.log(3) * 0.2,
    ),
    "log_e": ("Log", "", lambda x: np.abs(x) + 0.1, np.log, lambda x, y, dy: dy / x),
    "log_base2": (
        "Log",
        "log_param { base: 2 scale: 2 shift: 8 }",
        lambda x: x,
        lambda x: np.log2(8 + 2 * x),
        lambda x, y, dy: dy * (2 / math.log(2)) / (2 * x + 8),
    ),
    "swish": (
        "Swish",
        "swish_param { beta: 1.7 }",
        lambda x: x,
        lambda x: x * _sigmoid(1.7 * x),
        lambda x, y, dy: dy * (1.7 * y + _sigmoid(1.7 * x) * (1 - 1.7 * y)),
    ),
    "swish_1": (
        "Swish",
        "",
        lambda x: x,
        lambda x: x * _sigmoid(x),
        lambda x, y, dy: dy * (y + _sigmoid(x) * (1 - y)),
    ),
    "clip": (
        "Clip",
        "clip_param { min: -0.5 max: 0.25 }",
        lambda x: np.round(x * 4) / 4,  # lands on the bounds: Caffe passes the gradient there
        lambda x: np.maximum(-0.5, np.minimum(x, 0.25)),
        lambda x, y, dy: dy * ((x >= -0.5) & (x <= 0.25)),
    ),
    "clip_inverted": (
        "Clip",
        "clip_param { min: 1 max: -1 }",
        lambda x: x,
        lambda x: np.maximum(1.0, np.minimum(x, -1.0)),
        lambda x, y, dy: dy * ((x >= 1) & (x <= -1)),
    ),
}


@pytest.mark.parametrize("case", sorted(ELEMENTWISE))
def test_elementwise_matches_caffe_formulas(case: str) -> None:
    type_name, param, transform, forward, backward = ELEMENTWISE[case]
    net = make_net(f'layer {{ name: "a" type: "{type_name}" bottom: "x" top: "y" {param} }}')
    x = transform(random_input(1)).astype(np.float32)
    dy = random_input(2)
    y, tensors = run_with_grad(net, dy, x=x)
    x64 = x.astype(np.float64)
    expected = forward(x64)
    np.testing.assert_allclose(y, expected, **FWD)
    grad = tensors["x"].grad
    np.testing.assert_allclose(grad.double().numpy(), backward(x64, expected, dy.astype(np.float64)), **BWD)


def test_power_constant_cases_ignore_the_input() -> None:
    x = torch.tensor(random_input(3), requires_grad=True)
    for param, value in [("power: 0 scale: 3 shift: 2", 1.0), ("power: 3 scale: 0 shift: 2", 8.0)]:
        net = make_net(f'layer {{ name: "p" type: "Power" bottom: "x" top: "y" power_param {{ {param} }} }}')
        y = net(x=x)["y"]
        assert torch.equal(y, torch.full(SHAPE, value))
        assert not y.requires_grad  # Caffe's bottom diff is zero


def test_threshold_is_a_step_without_gradient() -> None:
    net = make_net(
        'layer { name: "t" type: "Threshold" bottom: "x" top: "y" threshold_param { threshold: -0.3 } }'
    )
    x = random_input(4)
    x.flat[0] = -0.3  # not strictly above: 0
    y = net(x=torch.tensor(x, requires_grad=True))["y"]
    np.testing.assert_array_equal(y.numpy(), (x > np.float32(-0.3)).astype(np.float32))
    assert y.numpy().flat[0] == 0.0
    assert not y.requires_grad


@pytest.mark.parametrize("shared", [False, True])
def test_prelu_forward_backward_and_blob_shape(shared: bool) -> None:
    text = "channel_shared: true" if shared else ""
    net = make_net(
        f'layer {{ name: "p" type: "PReLU" bottom: "x" top: "y" prelu_param {{ {text} '
        'filler { type: "uniform" min: -1 max: 1 } } }'
    )
    slope = net.params["p"][0]
    assert tuple(slope.shape) == (() if shared else (3,))
    x, dy = random_input(5), random_input(6)
    x.flat[:4] = 0.0  # Caffe: x <= 0 takes the slope branch
    y, tensors = run_with_grad(net, dy, x=x)
    a = slope.detach().double().numpy().reshape(1, -1, 1, 1)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(y, np.maximum(x64, 0) + a * np.minimum(x64, 0), **FWD)
    np.testing.assert_allclose(tensors["x"].grad.numpy(), dy64 * ((x64 > 0) + a * (x64 <= 0)), **BWD)
    slope_diff = (dy64 * x64 * (x64 <= 0)).sum(axis=(0, 2, 3))
    expected = slope_diff.sum() if shared else slope_diff
    np.testing.assert_allclose(slope.grad.double().numpy(), expected, **BWD)


def test_prelu_default_filler_is_a_quarter_on_2d_bottoms() -> None:
    net = make_net('layer { name: "p" type: "PReLU" bottom: "x" top: "y" }', {"x": (4, 6)})
    assert torch.equal(net.params["p"][0], torch.full((6,), 0.25))
    y = net(x=torch.tensor([[-4.0] * 6] * 4))["y"]
    assert torch.equal(y, torch.full((4, 6), -1.0))


# -- Dropout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sqrt_scale", [False, True])
def test_dropout_train_zeroes_about_p_and_scales_the_rest(sqrt_scale: bool) -> None:
    torch.manual_seed(0)
    extra = " sqrt_scale: true" if sqrt_scale else ""
    net = make_net(
        f'layer {{ name: "d" type: "Dropout" bottom: "x" top: "y" '
        f"dropout_param {{ dropout_ratio: 0.3{extra} }} }}",
        {"x": (4, 5, 30, 40)},
    )
    x = torch.ones(4, 5, 30, 40, requires_grad=True)
    y = net(x=x)["y"]
    scale = 1 / (1 - 0.3)
    scale = math.sqrt(scale) if sqrt_scale else scale
    dropped = (y == 0).double().mean().item()
    assert abs(dropped - 0.3) < 0.015
    kept = y[y != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, scale))
    y.backward(torch.full_like(y, 2.0))
    torch.testing.assert_close(x.grad, (y != 0).float() * 2 * scale)  # Caffe reuses the mask


def test_dropout_test_phase_is_identity() -> None:
    net = make_net('layer { name: "d" type: "Dropout" bottom: "x" top: "y" }', phase="TEST")
    x = torch.tensor(random_input(7))
    assert torch.equal(net(x=x)["y"], x)


# -- LRN ---------------------------------------------------------------------------------------
def lrn_across_reference(x: np.ndarray, size: int, alpha: float, beta: float, k: float) -> np.ndarray:
    pre_pad = (size - 1) // 2
    channels = x.shape[1]
    scale = np.full_like(x, k)
    for c in range(channels):
        for j in range(max(0, c - pre_pad), min(channels, c + size - pre_pad)):
            scale[:, c] += alpha / size * x[:, j] ** 2
    return x * scale**-beta


def lrn_within_reference(x: np.ndarray, size: int, alpha: float, beta: float) -> np.ndarray:
    pad = (size - 1) // 2
    height, width = x.shape[2:]
    padded = np.zeros(x.shape[:2] + (height + 2 * pad, width + 2 * pad))
    padded[:, :, pad : pad + height, pad : pad + width] = x**2
    avg = np.zeros_like(x)
    for h in range(height):
        for w in range(width):
            avg[:, :, h, w] = padded[:, :, h : h + size, w : w + size].sum(axis=(2, 3)) / size**2
    return x * (1 + alpha * avg) ** -beta


@pytest.mark.parametrize("size", [1, 3, 7])
def test_lrn_across_channels(size: int) -> None:
    net = make_net(
        f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" '
        f"lrn_param {{ local_size: {size} alpha: 0.5 beta: 0.6 k: 2 }} }}"
    )
    x = random_input(8) * 3
    np.testing.assert_allclose(
        net(x=torch.tensor(x))["y"].numpy(), lrn_across_reference(x, size, 0.5, 0.6, 2), **FWD
    )


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_within_channel_ignores_k(size: int) -> None:
    net = make_net(
        f'layer {{ name: "n" type: "LRN" bottom: "x" top: "y" lrn_param {{ local_size: {size} alpha: 0.9 '
        "beta: 0.6 k: 7 norm_region: WITHIN_CHANNEL } }"
    )
    x = random_input(9) * 2
    np.testing.assert_allclose(
        net(x=torch.tensor(x))["y"].numpy(), lrn_within_reference(x, size, 0.9, 0.6), **FWD
    )


@pytest.mark.parametrize("within", [False, True])
def test_lrn_gradient_is_exact(within: bool) -> None:
    """Caffe's LRN backward (both regions) is the exact gradient: gradcheck in float64."""
    layer = normalization.LRN(3, alpha=0.7, beta=0.75, k=1.5, within_channel=within)
    x = torch.tensor(random_input(10, (1, 4, 3, 3)), dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,), fast_mode=True)


# -- BatchNorm ---------------------------------------------------------------------------------
BN = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" }'


def bn_net(param: str) -> cc.Net:
    return make_net(BN.replace(" }", f" batch_norm_param {{ {param} }} }}"))


def bn_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = x.astype(np.float64)
    return x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))


def test_batchnorm_train_accumulates_and_test_net_uses_shared_sums() -> None:
    train = make_net(BN)
    x1, x2, x3 = random_input(11) * 2 + 1, random_input(12) * 0.5 - 2, random_input(13)
    train(x=torch.tensor(x1))
    y2 = train(x=torch.tensor(x2))["y"].numpy()
    (m1, v1), (m2, v2) = bn_stats(x1), bn_stats(x2)
    maf, m = 0.99, 2 * 5 * 7
    corr = m / (m - 1)
    mean_sum, var_sum, factor = (t.double().numpy() for t in train.params["bn"])
    np.testing.assert_allclose(factor, [maf * 1 + 1], rtol=1e-6)
    np.testing.assert_allclose(mean_sum, maf * m1 + m2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var_sum, maf * corr * v1 + corr * v2, rtol=1e-5)
    expected_y2 = (x2 - m2.reshape(1, 3, 1, 1)) / np.sqrt(v2.reshape(1, 3, 1, 1) + 1e-5)
    np.testing.assert_allclose(y2, expected_y2, rtol=1e-4, atol=1e-5)

    test = make_net(BN, phase="TEST", share_from=train)
    for mine, theirs in zip(test.params["bn"], train.params["bn"], strict=True):
        assert mine.data_ptr() == theirs.data_ptr()
    y3 = test(x=torch.tensor(x3))["y"].numpy()
    mean, var = (mean_sum / factor).reshape(1, 3, 1, 1), (var_sum / factor).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(y3, (x3 - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
    assert torch.equal(test.params["bn"][2], train.params["bn"][2])  # TEST leaves the sums alone
    train(x=torch.tensor(x3))
    np.testing.assert_allclose(test.params["bn"][2].item(), maf * (maf + 1) + 1, rtol=1e-6)


def test_batchnorm_one_forward_from_zero_reproduces_caffes_stored_sums() -> None:
    folder = GOLDENS / "batchnorm_train"
    net = cc.Net(folder / "net.prototxt", phase="TRAIN")
    with np.load(folder / "inputs.npz") as data:
        net(x=torch.tensor(data["x"]))
    stored = [
        blob_to_array(b, "bn") for b in cc.read_caffemodel(folder / "weights.caffemodel").layer[1].blobs
    ]
    for mine, caffe in zip(net.params["bn"], stored, strict=True):
        np.testing.assert_allclose(mine.numpy().reshape(caffe.shape), caffe, rtol=1e-5, atol=1e-7)


def test_batchnorm_train_backward_is_caffes_formula_and_sums_get_no_gradient() -> None:
    net = bn_net("eps: 0.1")
    x, dy = random_input(14), random_input(15)
    y, tensors = run_with_grad(net, dy, x=x)
    mean, var = bn_stats(x)
    std = np.sqrt(var + 0.1).reshape(1, 3, 1, 1)
    axes = (0, 2, 3)
    dy64 = dy.astype(np.float64)
    expected = (
        dy64 - dy64.mean(axis=axes, keepdims=True) - y * (dy64 * y).mean(axis=axes, keepdims=True)
    ) / std
    np.testing.assert_allclose(tensors["x"].grad.numpy(), expected, rtol=1e-4, atol=1e-5)
    assert all(t.grad is None and not t.requires_grad for t in net.params["bn"])


def test_batchnorm_zero_factor_and_global_stats_in_train() -> None:
    net = bn_net("use_global_stats: true")
    x = torch.tensor(random_input(16), requires_grad=True)
    y = net(x=x)["y"]
    torch.testing.assert_close(y, x / math.sqrt(1e-5))  # factor 0: zero mean and variance
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / math.sqrt(1e-5)))
    assert net.params["bn"][2].item() == 0.0  # global statistics: no update


def test_batchnorm_disable_mean_and_variance() -> None:
    x = random_input(17)
    x64 = x.astype(np.float64)
    no_mean = bn_net("disable_mean: true")
    y = no_mean(x=torch.tensor(x))["y"].numpy()
    second = (x64**2).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(y, x64 / np.sqrt(second.reshape(1, 3, 1, 1) + 1e-5), rtol=1e-5, atol=1e-6)
    mean_sum, var_sum, factor = (t.double().numpy() for t in no_mean.params["bn"])
    np.testing.assert_array_equal(mean_sum, 0.0)
    np.testing.assert_allclose(var_sum, second * 70 / 69, rtol=1e-5)
    no_var = bn_net("disable_variance: true")
    y = no_var(x=torch.tensor(x))["y"].numpy()
    np.testing.assert_allclose(y, x64 - x64.mean(axis=(0, 2, 3), keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(no_var.params["bn"][1].numpy(), 0.0)


def test_batchnorm_lr_mult_zero_for_its_blobs() -> None:
    net = make_net(BN)
    entries = [e for e in net.param_entries if e.layer == "bn"]
    assert [(e.lr_mult, e.decay_mult) for e in entries] == [(0.0, 1.0)] * 3
    net = make_net(
        'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "y" param { lr_mult: 0 decay_mult: 0 } }'
    )
    entries = [e for e in net.param_entries if e.layer == "bn"]
    assert [(e.lr_mult, e.decay_mult) for e in entries] == [(0.0, 0.0), (0.0, 1.0), (0.0, 1.0)]


def test_batchnorm_on_2d_bottoms() -> None:
    net = make_net(BN, {"x": (6, 4)})
    x = random_input(18, (6, 4))
    y = net(x=torch.tensor(x))["y"].numpy()
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y, (x64 - x64.mean(0)) / np.sqrt(x64.var(0) + 1e-5), rtol=1e-4, atol=1e-5)


# -- MVN ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("across", [False, True])
@pytest.mark.parametrize("variance", [False, True])
def test_mvn_forward_and_caffes_backward(across: bool, variance: bool) -> None:
    eps = 0.5  # large, so Caffe's backward (which is not the exact gradient then) is what is tested
    net = make_net(
        f'layer {{ name: "m" type: "MVN" bottom: "x" top: "y" mvn_param {{ eps: {eps} '
        f"across_channels: {str(across).lower()} normalize_variance: {str(variance).lower()} }} }}"
    )
    x, dy = random_input(19), random_input(20)
    y, tensors = run_with_grad(net, dy, x=x)
    rows = x.astype(np.float64).reshape(2 if across else 6, -1)
    g = dy.astype(np.float64).reshape(rows.shape)
    centred = rows - rows.mean(axis=1, keepdims=True)
    if variance:
        denominator = np.sqrt((centred**2).mean(axis=1, keepdims=True)) + eps
        expected = centred / denominator
        grad = (
            g - g.mean(axis=1, keepdims=True) - expected * (g * expected).mean(axis=1, keepdims=True)
        ) / denominator
    else:
        expected, grad = centred, g - g.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(y.reshape(rows.shape), expected, **FWD)
    np.testing.assert_allclose(tensors["x"].grad.numpy().reshape(rows.shape), grad, **BWD)


def test_mvn_gives_a_legacy_4d_top() -> None:
    net = make_net(
        'layer { name: "m" type: "MVN" bottom: "x" top: "y" mvn_param { across_channels: true } }',
        {"x": (4, 6)},
    )
    assert net.blob_shapes["y"] == (4, 6, 1, 1)
    x = random_input(21, (4, 6)).astype(np.float64)
    y = net(x=torch.tensor(x, dtype=torch.float32))["y"].numpy().reshape(4, 6)
    expected = (x - x.mean(1, keepdims=True)) / (x.std(1, keepdims=True) + 1e-9)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)


# -- Scale and Bias ----------------------------------------------------------------------------
def scale_net(
    param: str, shapes: dict[str, tuple[int, ...]] | None = None, bottoms: str = 'bottom: "x"'
) -> cc.Net:
    return make_net(
        f'layer {{ name: "sc" type: "Scale" {bottoms} top: "y" scale_param {{ {param} }} }}', shapes
    )


@pytest.mark.parametrize(
    "param, blob_shape, view",
    [
        ("num_axes: -1", (3, 5, 7), (1, 3, 5, 7)),
        ("axis: -2", (5,), (1, 1, 5, 1)),
        ("axis: 0 num_axes: 2", (2, 3), (2, 3, 1, 1)),
        ("axis: 3 num_axes: 0", (), (1, 1, 1, 1)),
    ],
)
def test_scale_with_bias_over_axes(param: str, blob_shape: tuple, view: tuple) -> None:
    net = scale_net(
        f'{param} bias_term: true filler {{ type: "gaussian" }} bias_filler {{ type: "gaussian" }}'
    )
    weight, bias = net.params["sc"]
    assert tuple(weight.shape) == blob_shape and tuple(bias.shape) == blob_shape
    x, dy = random_input(22), random_input(23)
    y, tensors = run_with_grad(net, dy, x=x)
    w, b = weight.detach().double().numpy().reshape(view), bias.detach().double().numpy().reshape(view)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    np.testing.assert_allclose(y, x64 * w + b, **FWD)
    np.testing.assert_allclose(tensors["x"].grad.numpy(), dy64 * w, **BWD)
    reduce = tuple(i for i, d in enumerate(view) if d == 1)
    np.testing.assert_allclose(
        weight.grad.numpy().reshape(view), (dy64 * x64).sum(reduce, keepdims=True), **BWD
    )
    np.testing.assert_allclose(bias.grad.numpy().reshape(view), dy64.sum(reduce, keepdims=True), **BWD)


def test_scale_default_filler_is_one_and_bias_absent() -> None:
    net = scale_net("")
    assert [tuple(t.shape) for t in net.params["sc"]] == [(3,)]
    assert torch.equal(net.params["sc"][0], torch.ones(3))
    assert net.layers["sc"].bias is None


def test_scale_second_bottom_with_bias_term() -> None:
    net = scale_net(
        'axis: 1 bias_term: true bias_filler { type: "constant" value: 0.5 }',
        {"x": SHAPE, "s": (3, 5)},
        'bottom: "x" bottom: "s"',
    )
    assert [tuple(t.shape) for t in net.params["sc"]] == [(3, 5)]  # only the bias is a blob
    x, s, dy = random_input(24), random_input(25, (3, 5)), random_input(26)
    y, tensors = run_with_grad(net, dy, x=x, s=s)
    x64, s64, dy64 = x.astype(np.float64), s.astype(np.float64)[None, :, :, None], dy.astype(np.float64)
    np.testing.assert_allclose(y, x64 * s64 + 0.5, **FWD)
    np.testing.assert_allclose(tensors["s"].grad.numpy(), (dy64 * x64).sum(axis=(0, 3)), **BWD)
    np.testing.assert_allclose(net.params["sc"][0].grad.numpy(), dy64.sum(axis=(0, 3)), **BWD)


def test_scale_min_max_value_clamp_the_stored_scale_in_place() -> None:
    net = scale_net('filler { type: "gaussian" std: 3 } min_value: -0.5 max_value: 1')
    weight = net.params["sc"][0]
    raw = weight.detach().clone()
    assert (raw < -0.5).any() or (raw > 1).any()
    x = random_input(27)
    y = net(x=torch.tensor(x))["y"].detach().numpy()
    clamped = raw.clamp(-0.5, 1.0)
    assert torch.equal(weight.detach(), clamped)
    np.testing.assert_allclose(y, x * clamped.numpy().reshape(1, 3, 1, 1), **FWD)


def test_scale_min_value_on_second_bottom_passes_gradient() -> None:
    net = scale_net("axis: 0 min_value: 0", {"x": SHAPE, "s": (2, 3)}, 'bottom: "x" bottom: "s"')
    x, s = random_input(28), random_input(29, (2, 3))
    dy = np.ones(SHAPE, np.float32)
    y, tensors = run_with_grad(net, dy, x=x, s=s)
    np.testing.assert_allclose(y, x * np.maximum(s, 0)[:, :, None, None], **FWD)
    np.testing.assert_allclose(tensors["s"].grad.numpy(), x.astype(np.float64).sum(axis=(2, 3)), **BWD)


@pytest.mark.parametrize("two_bottoms", [False, True])
def test_bias_over_two_axes(two_bottoms: bool) -> None:
    if two_bottoms:
        net = make_net(
            'layer { name: "b" type: "Bias" bottom: "x" bottom: "c" top: "y" }', {"x": SHAPE, "c": (3, 5)}
        )
        assert net.params["b"] == []
    else:
        net = make_net(
            'layer { name: "b" type: "Bias" bottom: "x" top: "y" '
            'bias_param { num_axes: 2 filler { type: "uniform" min: -1 max: 1 } } }'
        )
    x, dy = random_input(30), random_input(31)
    c = random_input(32, (3, 5)) if two_bottoms else net.params["b"][0].detach().numpy()
    feeds = {"x": x, "c": c} if two_bottoms else {"x": x}
    y, tensors = run_with_grad(net, dy, **feeds)
    np.testing.assert_allclose(y, x + c[None, :, :, None], **FWD)
    np.testing.assert_allclose(tensors["x"].grad.numpy(), dy, **BWD)
    bias_grad = tensors["c"].grad if two_bottoms else net.params["b"][0].grad
    np.testing.assert_allclose(bias_grad.numpy(), dy.astype(np.float64).sum(axis=(0, 3)), **BWD)


# -- examples and errors -----------------------------------------------------------------------
EXAMPLE_CLASSES = [
    activation.PReLU,
    activation.ELU,
    activation.AbsVal,
    activation.BNLL,
    activation.Power,
    activation.Exp,
    activation.Log,
    activation.Threshold,
    activation.Dropout,
    activation.Swish,
    activation.Clip,
    normalization.LRN,
    normalization.BatchNorm,
    normalization.MVN,
    normalization.Scale,
    normalization.Bias,
]


@pytest.mark.parametrize("cls", EXAMPLE_CLASSES, ids=lambda c: c.__name__)
def test_examples_build_and_run(cls: type) -> None:
    net = cc.Net(cls.example, phase="TRAIN")
    x = torch.rand(*SHAPE) + 0.5  # positive: Log's example takes any input
    outputs = net(x=x)
    assert outputs["y"].shape == SHAPE
    assert torch.isfinite(outputs["y"]).all()


BAD = [
    ('type: "LRN" bottom: "x" lrn_param { local_size: 4 }', SHAPE, "odd values for local_size, got 4"),
    ('type: "LRN" bottom: "x"', (2, 3, 5), "must have 4 axes"),
    ('type: "Exp" bottom: "x" exp_param { base: -2 }', SHAPE, "base must be strictly positive"),
    ('type: "Log" bottom: "x" log_param { base: 0 }', SHAPE, "base must be strictly positive"),
    ('type: "Log" bottom: "x" log_param { base: 1 }', SHAPE, "base 1 has no logarithm"),
    (
        'type: "Dropout" bottom: "x" dropout_param { dropout_ratio: 1 }',
        SHAPE,
        r"dropout_ratio must be in \[0, 1\)",
    ),
    ('type: "PReLU" bottom: "x"', (6,), "at least 2 axes"),
    ('type: "BatchNorm" bottom: "x" param { lr_mult: 1 }', SHAPE, "cannot configure batch normalization"),
    ('type: "BatchNorm" bottom: "x"', (6,), "at least 2 axes"),
    ('type: "MVN" bottom: "x"', (2, 3, 4, 5, 6), "at most 4 axes"),
    ('type: "Clip" bottom: "x" clip_param { min: 0 }', SHAPE, "clip_param must give max"),
    ('type: "Scale" bottom: "x" scale_param { num_axes: -2 }', SHAPE, "num_axes must be non-negative"),
    ('type: "Scale" bottom: "x" scale_param { axis: 2 num_axes: 3 }', SHAPE, "extends past bottom"),
    ('type: "Scale" bottom: "x" scale_param { axis: 4 }', SHAPE, "axis 4 is out of range"),
    ('type: "Bias" bottom: "x" bias_param { num_axes: -3 }', SHAPE, "num_axes must be non-negative"),
    ('type: "ELU" bottom: "x" bottom: "x"', SHAPE, "takes 1 bottom blob"),
    ('type: "Scale" bottom: "x" bottom: "x" bottom: "x"', SHAPE, "takes 1 or 2 bottom blob"),
]


@pytest.mark.parametrize("layer, shape, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_parameters_raise_clear_errors(layer: str, shape: tuple, message: str) -> None:
    with pytest.raises(LayerError, match=message) as info:
        make_net(f'layer {{ name: "bad" {layer} top: "y" }}', {"x": shape})
    assert "layer 'bad'" in str(info.value)


@pytest.mark.parametrize("type_name", ["Scale", "Bias"])
def test_second_bottom_shape_mismatch(type_name: str) -> None:
    with pytest.raises(LayerError, match=r"dimension mismatch between bottom\[0\]->shape\(2\) = 5"):
        make_net(
            f'layer {{ name: "bad" type: "{type_name}" bottom: "x" bottom: "s" top: "y" }}',
            {"x": SHAPE, "s": (3, 4)},
        )
