"""Extra tests of the face layers (caffe_compat/layers/face/) beyond the goldens.

References are float64 numpy transcriptions of the fork's loops (``src/caffe/layers/*.cpp`` and,
for GlobalLSEMargin, the ``.cu`` kernels); gradchecks cover the layers whose gradient is exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers.face import (
    ChannelScale,
    Flip,
    GeneralContrastiveLoss,
    GeneralTripletLoss,
    GlobalLSEMargin,
    InnerDistance,
    LabelSpecificAdd,
    MarginInnerProduct,
    Normalize,
    margin_logits,
    margin_psi,
    mean_shift,
)
from caffe_compat.layers.registry import registered_types

FLT_MAX = float(np.finfo(np.float32).max)


def t64(array: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(array, dtype=torch.float64, requires_grad=grad)


def sign(v: float) -> float:
    return float(int(v > 0) - int(v < 0))


# -- Normalize -----------------------------------------------------------------------------------


def ref_normalize(x: np.ndarray, kind: str, dy: np.ndarray, dnorm: np.ndarray | None):
    n, c = x.shape[:2]
    x3 = x.reshape(n, c, -1)
    dy3 = dy.reshape(n, c, -1)
    y = np.zeros_like(x3)
    norm = np.zeros((n, 1, x3.shape[2]))
    dx = np.zeros_like(x3)
    for i in range(n):
        for s in range(x3.shape[2]):
            col = x3[i, :, s]
            nv = math.sqrt((col**2).sum() + 1e-6) if kind == "L2" else np.abs(col).sum() + 1e-6
            norm[i, 0, s] = nv
            y[i, :, s] = col / nv
            a = (y[i, :, s] * dy3[i, :, s]).sum()
            direction = y[i, :, s] if kind == "L2" else np.sign(col)
            dx[i, :, s] = (dy3[i, :, s] - direction * a) / nv
            if dnorm is not None:
                dx[i, :, s] += dnorm.reshape(n, -1)[i, s] * direction
    return y, norm, dx


@pytest.mark.parametrize("kind", ["L2", "L1"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 6)])
@pytest.mark.parametrize("bp_norm", [False, True])
def test_normalize_matches_caffe_loops(kind: str, shape: tuple, bp_norm: bool) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=shape)
    layer = Normalize(kind, bp_norm=bp_norm, output_norm=True)
    xt = t64(x, grad=True)
    y, norm = layer(xt)
    legacy = tuple(shape) + (1,) * (4 - len(shape))
    assert y.shape == legacy and norm.shape == (shape[0], 1, *legacy[2:])
    dy = rng.normal(size=legacy)
    dnorm = rng.normal(size=norm.shape)
    ref_y, ref_norm, ref_dx = ref_normalize(x, kind, dy, dnorm if bp_norm else None)
    np.testing.assert_allclose(y.detach().numpy().reshape(ref_y.shape), ref_y, rtol=1e-12)
    np.testing.assert_allclose(norm.detach().numpy().reshape(ref_norm.shape), ref_norm, rtol=1e-12)
    tops = [y, norm] if bp_norm else [y]
    torch.autograd.backward(tops, [t64(dy), t64(dnorm)][: len(tops)])
    np.testing.assert_allclose(xt.grad.numpy().reshape(ref_dx.shape), ref_dx, rtol=1e-10, atol=1e-12)
    assert norm.requires_grad == bp_norm


def test_normalize_gradcheck() -> None:
    x = torch.randn(3, 4, 2, 5, dtype=torch.float64, requires_grad=True)
    for kind in ("L2", "L1"):
        layer = Normalize(kind, bp_norm=True, output_norm=True)
        assert torch.autograd.gradcheck(lambda v, m=layer: m(v), (x,))


# -- LabelSpecificAdd ----------------------------------------------------------------------------


def test_label_specific_add_conditional_margin() -> None:
    rng = np.random.default_rng(1)
    x = rng.uniform(-1, 1, size=(6, 5))
    label = np.array([0, 4, 2, 2, 1, 3], dtype=float)
    layer = LabelSpecificAdd(bias=-0.35, output_bias=True)
    xt = t64(x, grad=True)
    y, b = layer(xt, t64(label))
    ref = x.copy()
    for i, lab in enumerate(label.astype(int)):
        if ref[i, lab] > 0.35:
            ref[i, lab] -= 0.35
    np.testing.assert_allclose(y.detach().numpy(), ref, rtol=1e-12)
    assert float(b) == pytest.approx(-0.35) and not b.requires_grad
    dy = rng.normal(size=x.shape)
    y.backward(t64(dy))
    np.testing.assert_allclose(xt.grad.numpy(), dy)
    assert layer.iteration == 0  # no annealing: the counter stays


def test_label_specific_add_anneal_schedule_and_test_phase() -> None:
    layer = LabelSpecificAdd(
        anneal=True, bias_gamma=-5e-5, bias_power=1.0, bias_min=-0.4, bias_max=0.0, output_bias=True
    )
    x = torch.full((2, 3), 0.9)
    label = torch.tensor([0.0, 2.0])
    seen = []
    for _ in range(3):
        y, b = layer(x, label)
        seen.append(float(b))
    np.testing.assert_allclose(seen, [0.0, -5e-5, -1e-4], atol=5e-8)  # float32, as in Caffe
    assert layer.iteration == 3
    np.testing.assert_allclose(y[0, 0].item(), 0.9 - 1e-4, rtol=1e-6)
    layer.iter_count.fill_(8000 - 1)
    assert float(layer.current_bias()) == pytest.approx(-0.39995, abs=1e-6)
    layer.iter_count.fill_(20000)
    assert float(layer.current_bias()) == pytest.approx(-0.4)
    test_layer = LabelSpecificAdd(bias=-0.35, train=False, output_bias=True)
    y, b = test_layer(x, label)
    assert torch.equal(y, x) and float(b) == 0.0


def test_counters_survive_state_dict_but_not_caffemodel() -> None:
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "lsa" type: "LabelSpecificAdd" bottom: "x" bottom: "label" top: "y" top: "b"
  label_specific_add_param { bias_base: 0 bias_gamma: -0.01 bias_min: -0.5 iteration: 7 } }
layer { name: "mip" type: "MarginInnerProduct" bottom: "y" bottom: "label" top: "z" top: "lambda"
  margin_inner_product_param { num_output: 3 type: DOUBLE base: 10 gamma: 0.5 iteration: 2
  weight_filler { type: "gaussian" std: 0.5 } } }
"""
    net = cc.Net(text, phase="TRAIN")
    inputs = {"x": torch.randn(4, 6), "label": torch.tensor([0.0, 1.0, 2.0, 1.0])}
    net(**inputs)
    net(**inputs)
    assert net.layers["lsa"].iteration == 9 and net.layers["mip"].iteration == 4
    state = net.state_dict()
    assert any(k.endswith("iter_count") for k in state)
    fresh = cc.Net(text, phase="TRAIN")
    assert fresh.layers["lsa"].iteration == 7 and fresh.layers["mip"].iteration == 2
    fresh.load_state_dict(state)
    assert fresh.layers["lsa"].iteration == 9 and fresh.layers["mip"].iteration == 4
    out_a, out_b = net(**inputs), fresh(**inputs)
    np.testing.assert_allclose(out_a["lambda"].numpy(), out_b["lambda"].numpy())
    np.testing.assert_allclose(out_a["b"].numpy(), out_b["b"].numpy())
    assert float(out_a["lambda"]) == pytest.approx(10 / (1 + 0.5 * 5))
    assert net.params["lsa"] == [] and len(net.params["mip"]) == 1
    proto = net.to_proto()
    assert [len(layer.blobs) for layer in proto.layer if layer.name in ("lsa", "mip")] == [0, 1]


# -- ChannelScale --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "flags", [(True, True, True), (True, False, True), (True, True, False), (False, True, True)]
)
def test_channel_scale_caffe_backward_flags(flags: tuple[bool, bool, bool]) -> None:
    do_forward, do_feature, do_scale = flags
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 4, 5))
    s = rng.normal(size=(2, 1, 4, 5))
    dy = rng.normal(size=x.shape)
    layer = ChannelScale(do_forward, do_feature, do_scale)
    xt, st = t64(x, grad=True), t64(s, grad=True)
    y = layer(xt, st)
    np.testing.assert_allclose(y.detach().numpy(), x * s if do_forward else x)
    y.backward(t64(dy))
    np.testing.assert_allclose(xt.grad.numpy(), dy * s if do_feature else dy)
    ref_ds = (x * dy).sum(axis=1, keepdims=True) if do_scale else np.zeros_like(s)
    np.testing.assert_allclose(st.grad.numpy(), ref_ds, rtol=1e-12)


def test_channel_scale_global_scale_running_mean() -> None:
    layer = ChannelScale(use_global_scale=True, output_scale=True, max_global_scale=5.0)
    x = torch.ones(2, 3)
    s1 = torch.tensor([[2.0], [-4.0]])
    y, scale = layer(x, s1)
    assert float(scale) == pytest.approx(3.0)  # first use: mean |s|
    np.testing.assert_allclose(y.numpy(), np.full((2, 3), 3.0))
    y, scale = layer(x, torch.tensor([[10.0], [10.0]]))
    assert float(scale) == pytest.approx(3.0 * 0.99 + 0.1)
    _, scale = layer(x, torch.tensor([[1e4], [1e4]]))
    assert float(scale) == pytest.approx(5.0)  # clipped to max_global_scale
    test_layer = ChannelScale(use_global_scale=True, train=False)
    test_layer.global_scale.fill_(2.5)
    np.testing.assert_allclose(test_layer(x, s1).numpy(), np.full((2, 3), 2.5))
    xt, st = x.clone().requires_grad_(), s1.clone().requires_grad_()
    ChannelScale(use_global_scale=True)(xt, st).sum().backward()
    np.testing.assert_allclose(xt.grad.numpy(), np.repeat(s1.numpy(), 3, axis=1))  # Caffe's dx uses s


# -- Flip ----------------------------------------------------------------------------------------


def test_flip_axes() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float64).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(Flip()(x).numpy(), x.numpy()[..., ::-1])
    np.testing.assert_array_equal(Flip(False, True)(x).numpy(), x.numpy()[:, :, ::-1])
    np.testing.assert_array_equal(Flip(True, True)(x).numpy(), x.numpy()[:, :, ::-1, ::-1])
    x3 = torch.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(Flip()(x3).numpy(), x3.numpy())  # width is a missing axis: 1
    np.testing.assert_array_equal(Flip(False, True)(x3).numpy(), x3.numpy()[:, :, ::-1])


# -- MarginInnerProduct --------------------------------------------------------------------------


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_margin_psi_is_monotone_extension_of_cos_m_theta(m: int) -> None:
    theta = np.linspace(0.0, math.pi, 2001)[1:-1]
    theta = theta[np.abs(np.modf(m * theta / math.pi)[0]) > 1e-9]
    k = np.floor(m * theta / math.pi)
    expected = (-1.0) ** k * np.cos(m * theta) - 2.0 * k
    got = margin_psi(torch.tensor(np.cos(theta), dtype=torch.float64), m).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-9)
    assert np.all(np.diff(got) < 0)  # psi decreases monotonically in theta


def test_sphereface_lambda_schedule() -> None:
    layer = MarginInnerProduct(3, 4, margin=4, base=1000, gamma=0.12, power=1, lambda_min=5)
    values = {it: float(layer.lambda_at(it)) for it in (1, 100, 1000, 1658, 1659, 5000)}
    assert values[1] == pytest.approx(892.857, rel=1e-5)
    assert values[100] == pytest.approx(76.923, rel=1e-4)
    assert values[1000] == pytest.approx(8.264, rel=1e-3)
    assert values[1658] > 5.0 and values[1659] == 5.0 and values[5000] == 5.0


def ref_margin_ip(x, w, label, lam, m, dy):
    """Float64 transcription of margin_inner_product_layer.cpp (Forward_cpu / Backward_cpu)."""
    num, k_dim = x.shape
    n_out = w.shape[0]
    w = w / np.sqrt((w * w).sum(axis=1, keepdims=True))
    x_norm = np.sqrt((x * x).sum(axis=1))
    cos = (x @ w.T) / x_norm[:, None]
    s0 = np.sign(cos)
    top = x @ w.T
    coeffs = {}
    for i in range(num):
        j = int(label[i])
        c = cos[i, j]
        if m == 1:
            continue
        if m == 2:
            psi = 2 * s0[i, j] * c**2 - 1
            cw, cx = 4 * s0[i, j] * c, -(2 * s0[i, j] * c**2 + 1) / x_norm[i]
        elif m == 3:
            s1 = sign(abs(c) - 0.5)
            s2 = s0[i, j] * (1 + s1) - 2
            psi = s1 * (4 * c**3 - 3 * c) + s2
            cw, cx = s1 * (12 * c**2 - 3), -(8 * s1 * c**3 - s2) / x_norm[i]
        else:
            s3 = s0[i, j] * sign(2 * c**2 - 1)
            s4 = 2 * s0[i, j] + s3 - 3
            psi = s3 * (8 * c**4 - 8 * c**2 + 1) + s4
            cw, cx = s3 * (32 * c**3 - 16 * c), -(s3 * (24 * c**4 - 8 * c**2 - 1) - s4) / x_norm[i]
        top[i, j] = x_norm[i] * psi
        norm = math.sqrt(cw * cw + cx * cx)
        coeffs[i] = (cw / norm, cx / norm)
    if m > 1:
        top = (top + lam * (x @ w.T)) / (1 + lam)
    dw = dy.T @ x
    dx = np.zeros_like(x)
    if m == 1:
        dx = dy @ w
    else:
        for i in range(num):
            for j in range(n_out):
                if j != int(label[i]):
                    dx[i] += dy[i, j] / (1 + lam) * w[j]
                else:
                    cw, cx = coeffs[i]
                    dx[i] += dy[i, j] / (1 + lam) * (cw * w[j] + cx * x[i])
        dx += lam / (1 + lam) * dy @ w
    return w, top, dx, dw


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_margin_inner_product_matches_caffe_loops(m: int) -> None:
    rng = np.random.default_rng(10 + m)
    x = rng.normal(size=(7, 2, 3))
    w = rng.normal(size=(5, 6))
    label = np.array([0, 1, 2, 3, 4, 0, 2], dtype=float)
    dy = rng.normal(size=(7, 5))
    layer = MarginInnerProduct(5, 6, margin=m, base=20, gamma=0.3, power=1.5, iteration=3, lambda_min=0.5)
    layer = layer.double()
    layer.weight.data.copy_(t64(w))
    xt = t64(x, grad=True)
    y, lam = layer(xt, t64(label))
    lam_ref = max(20 * (1 + 0.3 * 4) ** -1.5, 0.5)
    assert float(lam) == pytest.approx(lam_ref, rel=1e-6)
    ref_w, ref_y, ref_dx, ref_dw = ref_margin_ip(x.reshape(7, 6), w, label, float(lam), m, dy)
    np.testing.assert_allclose(layer.weight.detach().numpy(), ref_w, rtol=1e-12)  # normalised in place
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-10, atol=1e-12)
    y.backward(t64(dy))
    np.testing.assert_allclose(xt.grad.numpy().reshape(7, 6), ref_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad.numpy(), ref_dw, rtol=1e-10, atol=1e-12)
    if m > 1:  # Caffe's backward is not the gradient of its forward
        exact = MarginInnerProduct(5, 6, margin=m, base=20, gamma=0.3, power=1.5, iteration=3, lambda_min=0.5)
        exact = exact.double()
        exact.exact_grad = True
        exact.weight.data.copy_(t64(w))
        xe = t64(x, grad=True)
        exact(xe, t64(label))[0].backward(t64(dy))
        assert not np.allclose(xe.grad.numpy().reshape(7, 6), ref_dx, rtol=1e-3)


@pytest.mark.parametrize("m", [2, 3, 4])
def test_margin_logits_exact_gradcheck(m: int) -> None:
    torch.manual_seed(m)
    rows = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.nn.functional.normalize(torch.randn(3, 4, dtype=torch.float64), dim=1).requires_grad_()
    labels = torch.tensor([0, 1, 2, 1, 0])
    lam = torch.tensor(2.5, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, b: margin_logits(a, b, labels, lam, m), (rows, weight))


def test_margin_inner_product_test_phase_is_the_same_layer() -> None:
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 3 } } }
layer { name: "mip" type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "y"
  margin_inner_product_param { num_output: 2 type: TRIPLE weight_filler { type: "gaussian" std: 1 } } }
"""
    train, test = cc.Net(text, phase="TRAIN"), cc.Net(text, phase="TEST")
    test.layers["mip"].weight.data.copy_(train.layers["mip"].weight.data)
    inputs = {"x": torch.randn(3, 4), "label": torch.tensor([1.0, 0.0, 1.0])}
    np.testing.assert_allclose(train(**inputs)["y"].detach().numpy(), test(**inputs)["y"].detach().numpy())
    assert test.layers["mip"].iteration == 1


# -- InnerDistance -------------------------------------------------------------------------------


def ref_inner_distance(x, w, kind, dy, label=None):
    m_num, n_num = x.shape[0], w.shape[0]
    y = np.zeros((m_num, n_num))
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for m in range(m_num):
        for n in range(n_num):
            diff = x[m] - w[n]
            y[m, n] = (diff**2).sum() if kind == "L2" else np.abs(diff).sum()
            g = 2 * diff if kind == "L2" else np.sign(diff)
            dx[m] += dy[m, n] * g
            if label is None or int(label[m]) == n:
                dw[n] -= dy[m, n] * g
    return y, dx, dw


@pytest.mark.parametrize("kind", ["L2", "L1"])
def test_inner_distance_matches_caffe_loops(kind: str) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 5))
    w = rng.normal(size=(5, 4))  # transpose: stored K x N, read as N x K memory
    dy = rng.normal(size=(6, 4))
    layer = InnerDistance(4, 5, kind, normalize=True, transpose=True, weight=t64(w)).double()
    xt = t64(x, grad=True)
    y = layer(xt)
    rows = w.reshape(4, 5)
    rows = rows / np.sqrt((rows**2).sum(axis=1, keepdims=True) + 1e-6)
    ref_y, ref_dx, ref_dw = ref_inner_distance(x, rows, kind, dy)
    np.testing.assert_allclose(layer.weight.detach().numpy().reshape(4, 5), rows, rtol=1e-12)
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-10)
    y.backward(t64(dy))
    np.testing.assert_allclose(xt.grad.numpy(), ref_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad.numpy().reshape(4, 5), ref_dw, rtol=1e-10, atol=1e-12)


def test_inner_distance_update_center_only() -> None:
    rng = np.random.default_rng(4)
    x, w, dy = rng.normal(size=(6, 3)), rng.normal(size=(4, 3)), rng.normal(size=(6, 4))
    label = np.array([0, 3, 3, 1, 0, 2], dtype=float)
    layer = InnerDistance(4, 3, "L2", centers_from_bottom=True, update_center_only=True)
    xt, wt = t64(x, grad=True), t64(w, grad=True)
    y = layer(xt, wt, t64(label))
    ref_y, ref_dx, ref_dw = ref_inner_distance(x, w, "L2", dy, label)
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-10)
    y.backward(t64(dy))
    np.testing.assert_allclose(xt.grad.numpy(), ref_dx, rtol=1e-10)
    np.testing.assert_allclose(wt.grad.numpy(), ref_dw, rtol=1e-10, atol=1e-12)


def test_inner_distance_gradcheck() -> None:
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    layer = InnerDistance(5, 3, "L2", centers_from_bottom=True)
    assert torch.autograd.gradcheck(layer, (x, w))


# -- GlobalLSEMargin -----------------------------------------------------------------------------


def ref_mean_shift(margins: np.ndarray, mu: float, loop: int) -> float:
    last = mu
    while loop:
        loop -= 1
        near = [v for v in margins if abs(v - mu) < 0.1]
        if not near:
            mu = float(np.mean(margins))
            last = mu
            loop += 1
            continue
        mu = float(np.mean(near))
        if abs(last - mu) < 0.001:
            break
        last = mu
    return mu


def ref_global_lse(cos, label, scale, margin, norm=None):
    """Float64 transcription of global_lse_margin_layer.cu (Forward_gpu and Backward_gpu)."""
    num, dim = cos.shape
    s = norm if norm is not None else np.full(num, scale)
    target = np.array([cos[i, int(label[i])] for i in range(num)])
    max_neg = np.full(num, -1.0)
    for i in range(num):
        for j in range(dim):
            if j != int(label[i]) and cos[i, j] > max_neg[i]:
                max_neg[i] = cos[i, j]
    lse = np.zeros(num)
    for i in range(num):
        total = sum(math.exp(s[i] * (cos[i, j] - max_neg[i])) for j in range(dim) if j != int(label[i]))
        lse[i] = math.log(total) / s[i] + max_neg[i]
    margins = target - lse
    if margin == 0:
        batch = ref_mean_shift(margins, float(margins.mean()), 20)
        margin = batch
    else:
        batch = ref_mean_shift(margins, margin, 1)
        margin = 0.9 * margin + 0.1 * batch
    top = cos.copy()
    if margin > 0:
        for i in range(num):
            top[i, int(label[i])] -= margin
    top *= s[:, None]
    first = norm.mean() if norm is not None else scale
    stats = np.array([first, target.mean(), lse.mean(), max_neg.mean(), margin])
    return top, stats, margin, s


@pytest.mark.parametrize("original_norm", [False, True])
def test_global_lse_margin_matches_cuda_kernels(original_norm: bool) -> None:
    rng = np.random.default_rng(5)
    layer = GlobalLSEMargin(scale=12.0, original_norm=original_norm, output_statistics=True)
    margin = 0.0
    for step in range(3):
        label = rng.integers(0, 6, size=8).astype(float)
        cos = rng.uniform(-0.5, 0.5, size=(8, 6))
        for i, lab in enumerate(label.astype(int)):
            cos[i, lab] = 0.9 - 0.02 * i + 0.1 * step  # targets well above the negatives
        norm = rng.uniform(5, 15, size=8) if original_norm else None
        cos32 = torch.tensor(cos, dtype=torch.float32, requires_grad=True)
        norm32 = torch.tensor(norm, dtype=torch.float32, requires_grad=True) if original_norm else None
        y, stats = layer(cos32, torch.tensor(label), *([norm32] if original_norm else []))
        ref_top, ref_stats, margin, s = ref_global_lse(cos, label, 12.0, margin, norm)
        assert margin > 0
        np.testing.assert_allclose(y.detach().numpy(), ref_top, rtol=2e-5, atol=1e-5)
        np.testing.assert_allclose(stats.numpy(), ref_stats, rtol=2e-5, atol=1e-6)
        dy = rng.normal(size=(8, 6))
        y.backward(torch.tensor(dy, dtype=torch.float32))
        np.testing.assert_allclose(cos32.grad.numpy(), dy * s[:, None], rtol=1e-5)
        if original_norm:
            np.testing.assert_allclose(norm32.grad.numpy(), (dy * ref_top).sum(1) / norm, rtol=1e-4)
            assert layer.scale.grad is None
        else:
            np.testing.assert_allclose(layer.scale.grad.numpy(), [(dy * ref_top).sum() / 12.0], rtol=1e-4)
            layer.scale.grad = None
    assert float(layer.margin) == pytest.approx(margin, rel=1e-5)


def test_mean_shift_clusters_and_guard() -> None:
    values = np.array([0.30, 0.31, 0.32, 0.90, 0.91], dtype=np.float32)
    assert mean_shift(values, 0.35, 20) == pytest.approx(0.31, abs=1e-6)
    assert mean_shift(values, 0.35, 1) == pytest.approx(0.31, abs=1e-6)
    assert mean_shift(values, 0.86, 20) == pytest.approx(0.905, abs=1e-6)
    clustered = np.array([0.30, 0.31, 0.32, 0.33, 0.60], dtype=np.float32)
    assert mean_shift(clustered, 5.0, 1) == pytest.approx(0.315, abs=1e-6)  # restart from the mean
    # nothing within 0.1 of the overall mean 0.548: Caffe would loop forever; the mean is returned
    assert mean_shift(values, 0.5, 20) == pytest.approx(0.548, abs=1e-6)


def test_global_lse_margin_clips_scale_and_param_specs() -> None:
    text = """
layer { name: "cos" type: "Input" top: "cos" input_param { shape { dim: 4 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "lse" type: "GlobalLSEMargin" bottom: "cos" bottom: "label" top: "y"
  scale_param { filler { type: "constant" value: 80 } max_value: 64 } }
"""
    net = cc.Net(text, phase="TRAIN")
    entries = [(e.lr_mult, e.decay_mult) for e in net.param_entries if e.layer == "lse"]
    assert entries == [(1.0, 0.0), (0.0, 0.0)]
    net(cos=torch.rand(4, 3), label=torch.tensor([0.0, 1.0, 2.0, 0.0]))
    assert float(net.layers["lse"].scale.detach()) == 64.0


# -- NormFace losses -----------------------------------------------------------------------------


def ref_contrastive(d, label, cfg, intra_mae=0.0, loss_weight=1.0):
    """Float64 transcription of general_constrastive_loss_layer.cpp."""
    pm, nm0, pw, nw = cfg["pm"], cfg["nm"], cfg["pw"], cfg["nw"]
    thresh, ub = cfg["thresh"], cfg["ub"]
    num, dim = d.shape
    nm = intra_mae + nm0 if cfg["intra"] else nm0
    diff = np.zeros_like(d)
    pos = neg = 0.0
    maxpos = 0
    maxneg = np.zeros(num, dtype=int)
    for i in range(num):
        lab = int(label[i])
        same = d[i, lab]
        for j in range(dim):
            if j == lab:
                tv = min(thresh, max(0.0, d[i, j] - pm))
                diff[i, j] = tv * pw
                pos += tv
                if cfg["maxpos"] and diff[i, j] < diff[maxpos, int(label[maxpos])]:
                    maxpos = i
            elif d[i, j] < nm:
                diff[i, j] = math.exp(-d[i, j]) * nw if cfg["exp"] else max(0.0, nm - d[i, j]) * nw
                neg += max(0.0, nm - d[i, j])
                if cfg["maxneg"] and diff[i, j] > diff[i, maxneg[i]]:
                    maxneg[i] = j
            else:
                diff[i, j] = 0.0
        if cfg["first"] and same > ub:
            for j in range(dim):
                if j != lab:
                    diff[i, j] = 0.0
    for i in range(num):
        for j in range(dim):
            lab = int(label[i])
            if cfg["maxpos"] and j == lab and i != maxpos:
                diff[i, j] = 0.0
            if cfg["maxneg"] and j != lab and j != maxneg[i]:
                diff[i, j] = 0.0
    new_mae = min(0.99 * intra_mae + 0.01 * pos / num, cfg["max_nm"])
    loss = np.abs(diff).sum() / num
    stats = [pos / num, neg / num / (dim - 1)] + ([new_mae] if cfg["intra"] else [])
    grad = np.zeros_like(d)
    negative_sum = 0.0
    for i in range(num):
        lab = int(label[i])
        if cfg["first"] and d[i, lab] > ub:
            grad[i] = 0.0
            grad[i, lab] = pw
            continue
        for j in range(dim):
            if j == lab:
                ok = pm < d[i, j] < thresh and not (cfg["maxpos"] and i != maxpos)
                grad[i, j] = pw if ok else 0.0
            elif d[i, j] < nm and not (cfg["maxneg"] and j != maxneg[i]):
                value = math.exp(-d[i, j]) * nw if cfg["exp"] else nw
                grad[i, j] = -value
                negative_sum += value
    if cfg["norm"] is not None:
        negative_sum = abs(negative_sum) / cfg["norm"] / num
        if negative_sum > pw:
            for i in range(num):
                for j in range(dim):
                    if j != int(label[i]):
                        grad[i, j] /= negative_sum
    return loss, np.array(stats), grad * loss_weight / num, new_mae


CONTRASTIVE_BASE = dict(
    pm=0.2, nm=1.0, pw=1.0, nw=1.0, thresh=4.0, ub=1.0, maxpos=False, maxneg=False, first=False,
    exp=False, norm=None, intra=False, max_nm=1.2,
)  # fmt: skip
CONTRASTIVE_CONFIGS = [
    {},
    {"maxneg": True},
    {"maxpos": True, "pw": 0.5},
    {"first": True, "ub": 1.1, "thresh": 1.0},
    {"exp": True, "nw": 0.7},
    {"norm": 0.5},
    {"intra": True, "nm": 0.9},
    {"maxneg": True, "first": True, "ub": 1.2, "nw": 2.0},
]


@pytest.mark.parametrize("overrides", CONTRASTIVE_CONFIGS)
def test_general_contrastive_loss_matches_caffe_loops(overrides: dict) -> None:
    cfg = {**CONTRASTIVE_BASE, **overrides}
    layer = GeneralContrastiveLoss(
        positive_margin=cfg["pm"],
        negative_margin=cfg["nm"],
        positive_weight=cfg["pw"],
        negative_weight=cfg["nw"],
        normalize_negative=cfg["norm"],
        positive_outlier_thresh=cfg["thresh"],
        max_negative_only=cfg["maxneg"],
        max_positive_only=cfg["maxpos"],
        positive_first=cfg["first"],
        positive_upper_bound=cfg["ub"],
        exp_negative_weight=cfg["exp"],
        add_intra_mae=cfg["intra"],
        max_negative_margin=cfg["max_nm"],
        output_distances=True,
    )
    rng = np.random.default_rng(6)
    mae = 0.0
    for _ in range(2):
        d = rng.uniform(0.0, 1.6, size=(7, 5))
        label = np.array([0, 0, 3, 4, 1, 0, 2], dtype=float)
        dt = t64(d, grad=True)
        loss, stats = layer(dt, t64(label))
        ref_loss, ref_stats, ref_grad, mae = ref_contrastive(d, label, cfg, mae, loss_weight=2.0)
        assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-7)  # intra_mae is float32, as in Caffe
        np.testing.assert_allclose(stats.numpy(), ref_stats, rtol=1e-6)
        assert not stats.requires_grad
        (loss * 2.0).backward()
        np.testing.assert_allclose(dt.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-12)
    assert float(layer.intra_mae) == pytest.approx(mae, rel=1e-6)


def test_general_contrastive_loss_third_bottom_supplies_the_values() -> None:
    rng = np.random.default_rng(7)
    d, values = rng.uniform(0, 1.5, size=(4, 3)), rng.uniform(0, 1.5, size=(4, 3))
    label = np.array([2, 0, 1, 1], dtype=float)
    layer = GeneralContrastiveLoss(positive_margin=0.1)
    dt, vt = t64(d, grad=True), t64(values, grad=True)
    loss = layer(dt, t64(label), vt)
    cfg = {**CONTRASTIVE_BASE, "pm": 0.1}
    ref_loss, _, ref_grad, _ = ref_contrastive(values, label, cfg)
    assert float(loss.detach()) == pytest.approx(ref_loss)
    loss.backward()
    np.testing.assert_allclose(dt.grad.numpy(), ref_grad)
    assert vt.grad is None


def ref_triplet(d, label, cfg, loss_weight=1.0):
    """Float64 transcription of general_triplet_loss_layer.cpp, including the diff the backward
    leaves from the forward."""
    margin, nw, pw, ub = cfg["margin"], cfg["nw"], cfg["pw"], cfg["ub"]
    num, dim = d.shape
    diff = np.zeros_like(d)
    hardest = np.full(num, -1)
    pos = neg = 0.0
    for i in range(num):
        lab = int(label[i])
        same = d[i, lab]
        pos += same
        for j in range(dim):
            if j != lab:
                diff[i, j] = max(0.0, same + margin - d[i, j]) * nw
                neg += d[i, j]
                better = hardest[i] < 0 or diff[i, j] > diff[i, hardest[i]]
                if cfg["hardest"] and diff[i, j] > 0 and better:
                    hardest[i] = j
            else:
                diff[i, j] = 0.0
        if cfg["hardest"] and hardest[i] >= 0:
            for j in range(dim):
                if j != lab and j != hardest[i]:
                    diff[i, j] = 0.0
        if cfg["first"] and same > ub:
            for j in range(dim):
                if j != lab:
                    diff[i, j] = 0.0
    loss = np.abs(diff).sum() / num
    stats = np.array([pos / num, neg / num / (dim - 1)])
    grad = diff.copy()
    for i in range(num):
        lab = int(label[i])
        same = d[i, lab]
        if cfg["first"] and same > ub:
            grad[i] = 0.0
            grad[i, lab] = pw
            continue
        count = 0
        if cfg["hardest"]:
            if hardest[i] >= 0 and d[i, hardest[i]] != 0:
                grad[i, hardest[i]] = -nw
                count += 1
        else:
            for j in range(dim):
                if j != lab:
                    grad[i, j] = -nw if same + margin > d[i, j] else 0.0
                    count += same + margin > d[i, j]
        if cfg["center"] or count > 0:
            grad[i, lab] = pw
    return loss, stats, grad * loss_weight / num


TRIPLET_BASE = dict(margin=0.3, nw=1.0, pw=1.0, ub=1.0, hardest=False, center=True, first=False)
TRIPLET_CONFIGS = [
    {},
    {"hardest": True},
    {"hardest": True, "center": False, "nw": 0.5},
    {"center": False, "first": True, "ub": 0.8},
    {"hardest": True, "first": True, "ub": 0.9, "pw": 2.0},
]


@pytest.mark.parametrize("overrides", TRIPLET_CONFIGS)
def test_general_triplet_loss_matches_caffe_loops(overrides: dict) -> None:
    cfg = {**TRIPLET_BASE, **overrides}
    layer = GeneralTripletLoss(
        margin=cfg["margin"],
        add_center_loss=cfg["center"],
        hardest_only=cfg["hardest"],
        positive_first=cfg["first"],
        positive_upper_bound=cfg["ub"],
        positive_weight=cfg["pw"],
        negative_weight=cfg["nw"],
        output_distances=True,
    )
    rng = np.random.default_rng(8)
    d = rng.uniform(0.0, 1.5, size=(8, 5))
    label = np.array([0, 1, 2, 3, 4, 0, 2, 1], dtype=float)
    d[2, 0] = 0.0  # a hardest negative at distance exactly 0 keeps its forward diff
    d[2, 2] = 0.5
    d[6] = [1.4, 1.5, 0.1, 1.3, 1.2]  # no active negative
    dt = t64(d, grad=True)
    loss, stats = layer(dt, t64(label))
    ref_loss, ref_stats, ref_grad = ref_triplet(d, label, cfg, loss_weight=0.5)
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-10)
    np.testing.assert_allclose(stats.numpy(), ref_stats, rtol=1e-10)
    (loss * 0.5).backward()
    np.testing.assert_allclose(dt.grad.numpy(), ref_grad, rtol=1e-10, atol=1e-12)


# -- building from prototxt: examples and errors -------------------------------------------------

FACE_TYPES = [
    "Normalize",
    "LabelSpecificAdd",
    "ChannelScale",
    "Flip",
    "MarginInnerProduct",
    "InnerDistance",
    "GlobalLSEMargin",
    "GeneralContrastiveLoss",
    "GeneralTripletLoss",
]


@pytest.mark.parametrize("type_name", FACE_TYPES)
def test_example_builds_and_runs(type_name: str) -> None:
    cls = registered_types()[type_name]
    assert cls.__module__.startswith("caffe_compat.layers.face.")
    assert cls.family in ("NormFace", "AM-Softmax", "SphereFace", "metric loss")
    net = cc.Net(cls.example, phase="TRAIN")
    inputs = {}
    for name in net.input_names:
        shape = net.blob_shapes[name]
        inputs[name] = torch.randint(0, 3, shape).float() if name == "label" else torch.rand(shape) + 0.1
    outputs = net(**inputs)
    for name, value in outputs.items():
        assert tuple(value.shape) == tuple(net.blob_shapes[name])
        assert torch.isfinite(value).all()


HEAD = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
"""
BAD_LAYERS = [
    ('type: "Normalize" bottom: "x" top: "y" normalize_param { normalize_type: "L3" }', "L3"),
    ('type: "Normalize" bottom: "x" top: "y" top: "n" top: "z"', "top blob"),
    ('type: "LabelSpecificAdd" bottom: "x" top: "y"', "at least 2 bottoms"),
    ('type: "ChannelScale" bottom: "x" bottom: "x" top: "y"', "one value per sample"),
    (
        'type: "ChannelScale" bottom: "x" bottom: "label" top: "y" param { lr_mult: 1 } '
        "channel_scale_param { global_scale: true }",
        "lr_mult must be 0",
    ),
    ('type: "MarginInnerProduct" bottom: "x" bottom: "label" top: "y"', "num_output must be positive"),
    (
        'type: "MarginInnerProduct" bottom: "x" bottom: "x2" top: "y" '
        "margin_inner_product_param { num_output: 2 }",
        "number of labels",
    ),
    (
        'type: "InnerDistance" bottom: "x" top: "y" '
        'inner_distance_param { num_output: 2 distance_type: "L3" }',
        "L3",
    ),
    (
        'type: "InnerDistance" bottom: "x" top: "y" '
        "inner_distance_param { num_output: 2 update_center_only: true }",
        "three bottoms",
    ),
    ('type: "InnerDistance" bottom: "x" bottom: "x2" top: "y"', "rows of 6 values"),
    ('type: "GlobalLSEMargin" bottom: "x" bottom: "label" bottom: "x" top: "y"', "one value per sample"),
    ('type: "GeneralTripletLoss" bottom: "x" bottom: "label" bottom: "label" top: "loss"', "bottom blob"),
    ('type: "GeneralContrastiveLoss" bottom: "x" bottom: "x2" top: "loss"', "same first dimension"),
]


@pytest.mark.parametrize(("body", "message"), BAD_LAYERS)
def test_bad_parameters_are_clear_errors(body: str, message: str) -> None:
    extra = 'layer { name: "x2" type: "Input" top: "x2" input_param { shape { dim: 3 dim: 4 } } }\n'
    text = HEAD + extra + f'layer {{ name: "bad" {body} }}\n'
    with pytest.raises(LayerError, match=message) as info:
        cc.Net(text, phase="TRAIN")
    assert "layer 'bad'" in str(info.value)


def test_normalize_rejects_five_axes() -> None:
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 4 dim: 5 dim: 6 } } }
layer { name: "bad" type: "Normalize" bottom: "x" top: "y" }
"""
    with pytest.raises(LayerError, match="at most 4 axes"):
        cc.Net(text, phase="TRAIN")
