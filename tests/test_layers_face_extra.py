"""Tests of the fork's CenterLoss, distance-matrix losses, L-Softmax and MovingNormalize
(caffe_compat/layers/face/{center_loss,distance_losses,lsoftmax,moving_normalize}.py).

References are float64 numpy transcriptions of the fork's loops (happynear/caffe-windows
``src/caffe/layers/*.cpp``; ``moving_normalize_layer.cu`` for MovingNormalize, which has no CPU
code), written element by element as the C++ does. LargeMarginInnerProduct and MovingNormalize
have no golden case: these are their checks.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers.base import CaffeLayer
from caffe_compat.layers.face import (
    BatchContrastiveLoss,
    CenterLoss,
    LargeMarginInnerProduct,
    MovingNormalize,
    NCALoss,
    SoftContrastiveLoss,
    lsoftmax_logits,
)
from caffe_compat.layers.registry import registered_types
from caffe_compat.net.dataflow import analyse

FLT_MAX = float(np.finfo(np.float32).max)


def t64(array: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(np.asarray(array, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def sign(v: float) -> float:
    return float(int(v > 0) - int(v < 0))


# -- CenterLoss ----------------------------------------------------------------------------------


def ref_center_loss(x, centers, label, distance_type, top_diff, centers_learn=True):
    """``center_loss_layer.cpp`` Forward_cpu / Backward_cpu on rows of x (M x K)."""
    m, k = x.shape
    n = centers.shape[0]
    distance = np.zeros((m, k))
    for i in range(m):
        y = int(label[i])
        for c in range(k):
            distance[i, c] = x[i, c] - centers[y, c]
    if distance_type == "L1":
        loss = np.abs(distance).sum() / m
    else:
        loss = (distance * distance).sum() / m / 2.0
    center_diff = np.zeros((n, k))
    if centers_learn:
        if distance_type == "L1":
            distance = np.vectorize(sign)(distance)
        variation = np.zeros((n, k))
        count = np.zeros(n, dtype=int)
        for i in range(m):
            y = int(label[i])
            variation[y] -= distance[i]
            count[y] += 1
        for i in range(m):
            y = int(label[i])
            center_diff[y] += variation[y] / (count[y] + 1.0)
    x_diff = distance * (top_diff / m)
    return loss, x_diff, center_diff


@pytest.mark.parametrize("distance_type", ["L2", "L1"])
def test_center_loss_matches_caffe_loops(distance_type: str) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(7, 5))
    centers = rng.normal(size=(4, 5))
    label = np.array([0, 2, 2, 0, 2, 3, 0], dtype=np.float64)  # class 1 absent
    layer = CenterLoss(4, 5, 7, distance_type, centers=t64(centers))
    xt = t64(x, grad=True)
    loss = layer(xt, t64(label))
    ref_loss, ref_dx, ref_dc = ref_center_loss(x, centers, label, distance_type, 0.3)
    assert loss.shape == ()
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    (loss * 0.3).backward()
    np.testing.assert_allclose(xt.grad.numpy(), ref_dx, rtol=1e-12, atol=1e-15)
    # the centers' diff does not depend on the top diff (0.3 here)
    np.testing.assert_allclose(layer.centers.grad.numpy(), ref_dc, rtol=1e-12, atol=1e-15)
    assert np.all(layer.centers.grad.numpy()[1] == 0.0)


def test_center_loss_frozen_centers_l1_gives_x_the_difference() -> None:
    """With lr_mult 0 Caffe skips the centers' branch, which is where L1 takes the sign."""
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 6 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 } } }
layer { name: "loss" type: "CenterLoss" bottom: "x" bottom: "label" top: "loss" loss_weight: 0.5
  param { lr_mult: 0 }
  center_loss_param { num_output: 3 distance_type: "L1" center_filler { type: "gaussian" std: 0.5 } } }
"""
    net = cc.Net(text, phase="TRAIN")
    layer = net.layers["loss"]
    assert isinstance(layer, CenterLoss) and not layer.centers_learn
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4)).astype(np.float32)
    label = np.array([0, 1, 2, 1, 0, 2], dtype=np.float32)
    xt = torch.tensor(x, requires_grad=True)
    out = net(x=xt, label=torch.tensor(label))
    net.loss(out).backward()
    centers = layer.centers.detach().numpy().astype(np.float64)
    ref_loss, ref_dx, _ = ref_center_loss(
        x.astype(np.float64), centers, label, "L1", 0.5, centers_learn=False
    )
    np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), ref_dx, rtol=1e-5, atol=1e-7)
    grad = layer.centers.grad
    assert grad is None or torch.count_nonzero(grad) == 0


def test_center_loss_axis_reads_the_first_rows_of_the_buffer() -> None:
    """``M = num`` rows of ``K = count(axis)`` values: with axis 2 Caffe reads only the first
    ``N * H * W`` values of x."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, 2, 2))
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 dim: 2 dim: 2 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 2 } } }
layer { name: "loss" type: "CenterLoss" bottom: "x" bottom: "label" top: "loss" loss_weight: 1
  center_loss_param { num_output: 2 axis: 2 center_filler { type: "uniform" min: -1 max: 1 } } }
"""
    net = cc.Net(text, phase="TRAIN")
    layer = net.layers["loss"]
    assert tuple(layer.centers.shape) == (2, 4)
    layer.double()
    label = np.array([1.0, 0.0])
    xt = t64(x, grad=True)
    loss = layer(xt, t64(label))
    loss.backward()
    rows = x.reshape(-1)[:8].reshape(2, 4)
    ref_loss, ref_dx, ref_dc = ref_center_loss(rows, layer.centers.detach().numpy(), label, "L2", 1.0)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    dx = xt.grad.numpy().reshape(-1)
    np.testing.assert_allclose(dx[:8].reshape(2, 4), ref_dx, rtol=1e-12)
    assert np.all(dx[8:] == 0.0)
    np.testing.assert_allclose(layer.centers.grad.numpy(), ref_dc, rtol=1e-12)


def test_default_loss_weight_is_a_class_attribute() -> None:
    assert CenterLoss.default_loss_weight == 0.0 and CenterLoss.is_loss
    assert CaffeLayer.default_loss_weight == 1.0
    for cls in (BatchContrastiveLoss, NCALoss, SoftContrastiveLoss):
        assert cls.default_loss_weight == 1.0 and cls.is_loss
    center = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 6 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 6 } } }
layer { name: "loss" type: "CenterLoss" bottom: "x" bottom: "label" top: "loss" %s
  center_loss_param { num_output: 3 } }
"""
    assert cc.Net(center % "", phase="TRAIN").loss_weights == {}
    assert cc.Net(center % "loss_weight: 0.25", phase="TRAIN").loss_weights == {"loss": 0.25}
    nca = NCALoss.example
    assert cc.Net(nca, phase="TRAIN").loss_weights == {"loss": 1.0}


def test_dataflow_takes_default_loss_weights_per_layer() -> None:
    net = cc.read_net(
        """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 2 } } }
layer { name: "a" type: "TanH" bottom: "x" top: "a" }
layer { name: "b" type: "TanH" bottom: "x" top: "b" top: "c" }
"""
    )
    flow = analyse(net, [0.0, 0.0, 0.5])
    assert flow.loss_weights == {"b": 0.5}
    flow = analyse(net, [0.0, 2.0, 0.0])
    assert flow.loss_weights == {"a": 2.0}


# -- BatchContrastiveLoss ------------------------------------------------------------------------


def ref_batch_contrastive(d, label, pm, nm, pw, nw, max_only, top_diff):
    """``batch_contrastive_loss_layer.cpp`` on a fresh (zero) loss top."""
    num = d.shape[0]
    loss = 0.0
    pos_dist = neg_dist = 0.0
    pos_count = neg_count = 0
    mp = (-1, -1)
    mn = (-1, -1)
    max_pv, min_nv = -FLT_MAX, FLT_MAX
    for i in range(num):
        for j in range(i + 1, num):
            v = d[i, j]
            if label[i] == label[j]:
                pos_dist += v
                pos_count += 1
                if v > pm:
                    if max_only and v > max_pv:
                        max_pv, mp = v, (i, j)
                    loss += pw * (v - pm)
            else:
                neg_dist += v
                neg_count += 1
                if v < nm:
                    if max_only and v < min_nv:
                        min_nv, mn = v, (i, j)
                    loss += nw * (nm - v)
    if max_only:
        loss = 0.0
        if mp[0] >= 0:
            loss += pw * (d[mp] - pm)
        if mn[0] >= 0:
            loss += nw * (nm - d[mn])
    else:
        loss /= num * (num - 1) // 2
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = np.array([np.float64(pos_dist) / pos_count, np.float64(neg_dist) / neg_count])
    diff = np.zeros_like(d)
    if max_only:
        if mp[0] >= 0:
            diff[mp] = pw
        if mn[0] >= 0:
            diff[mn] = -nw
        diff *= top_diff / 2
    else:
        for i in range(num):
            for j in range(i + 1, num):
                if label[i] == label[j]:
                    if d[i, j] > pm:
                        diff[i, j] = pw
                elif d[i, j] < nm:
                    diff[i, j] = -nw
        diff *= top_diff / num
    return loss, stats, diff


@pytest.mark.parametrize("max_only", [False, True])
@pytest.mark.parametrize("params", [(1.0, 1.0, 1.0, 1.0), (0.4, 1.3, 2.0, 0.5)])
def test_batch_contrastive_matches_caffe_loops(max_only: bool, params: tuple) -> None:
    rng = np.random.default_rng(4)
    d = rng.uniform(0.0, 2.0, size=(7, 7))
    label = np.array([0, 1, 0, 2, 1, 0, 3], dtype=np.float64)
    pm, nm, pw, nw = params
    layer = BatchContrastiveLoss(7, pm, nm, pw, nw, max_only, output_distances=True)
    dt = t64(d, grad=True)
    loss, stats = layer(dt, t64(label))
    ref_loss, ref_stats, ref_diff = ref_batch_contrastive(d, label, pm, nm, pw, nw, max_only, 0.7)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(stats.numpy(), ref_stats, rtol=1e-12)
    assert not stats.requires_grad
    (loss * 0.7).backward()
    np.testing.assert_allclose(dt.grad.numpy(), ref_diff, rtol=1e-12, atol=1e-15)
    # the lower triangle and diagonal are never read
    assert np.all(np.tril(dt.grad.numpy()) == 0.0)


def test_batch_contrastive_without_positive_pairs() -> None:
    d = np.full((3, 3), 0.5)
    label = np.array([0.0, 1.0, 2.0])
    layer = BatchContrastiveLoss(3, output_distances=True)
    loss, stats = layer(t64(d), t64(label))
    ref_loss, ref_stats, _ = ref_batch_contrastive(d, label, 1.0, 1.0, 1.0, 1.0, False, 1.0)
    np.testing.assert_allclose(loss.item(), ref_loss)
    assert math.isnan(stats[0].item()) and math.isnan(ref_stats[0])
    np.testing.assert_allclose(stats[1].item(), 0.5)
    # max_only, one label, equal distances: the first of the equal maxima counts, d - 0
    layer = BatchContrastiveLoss(3, 0.0, 0.1, max_only=True)
    dt = t64(d, grad=True)
    loss = layer(dt, t64(np.zeros(3)))
    assert loss.item() == 0.5
    loss.backward()
    expected = np.zeros((3, 3))
    expected[0, 1] = 0.5  # positive_weight times 1/2
    np.testing.assert_array_equal(dt.grad.numpy(), expected)


# -- NCALoss -------------------------------------------------------------------------------------


def ref_nca(d, label, weights, min_negative_only, top_diff):
    """``nca_loss_layer.cpp`` on a fresh loss top and a fresh (zero) bottom diff."""
    num, dim = d.shape
    loss = pos = neg = 0.0
    min_index = np.zeros(num, dtype=int)
    for i in range(num):
        y = int(label[i])
        for j in range(dim):
            if j == y:
                pos += d[i, j]
                loss += d[i, j]
            else:
                neg += d[i, j]
                if not min_negative_only:
                    loss += math.exp(-d[i, j])
                if min_negative_only and d[i, j] < d[i, min_index[i]]:
                    min_index[i] = j
        if min_negative_only:
            loss += math.exp(-d[i, min_index[i]])
    loss /= num
    stats = np.array([pos / num, neg / num / (dim - 1)])
    diff = np.zeros_like(d)
    for i in range(num):
        y = int(label[i])
        if min_negative_only:
            diff[i, y] = 1.0
            diff[i, min_index[i]] = -math.exp(-d[i, min_index[i]])
        else:
            for j in range(dim):
                diff[i, j] = 1.0 if j == y else -math.exp(-d[i, j])
    if weights is not None:
        mean = weights[:num].sum() / num
        for i in range(num):
            diff[i] *= weights[i] / mean
    return loss, stats, diff * (top_diff / num)


@pytest.mark.parametrize("min_negative_only", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_nca_matches_caffe_loops(min_negative_only: bool, weighted: bool) -> None:
    rng = np.random.default_rng(5)
    d = rng.uniform(0.1, 3.0, size=(6, 5))
    label = np.array([0, 3, 0, 4, 1, 2], dtype=np.float64)
    d[0, 0] = 0.01  # label 0 holds the row's smallest distance: the search keeps index 0
    d[2, 0] = 2.9
    weights = rng.uniform(0.2, 2.0, size=6) if weighted else None
    layer = NCALoss(min_negative_only, output_distances=True)
    dt = t64(d, grad=True)
    loss, stats = layer(dt, t64(label), None if weights is None else t64(weights))
    ref_loss, ref_stats, ref_diff = ref_nca(d, label, weights, min_negative_only, 1.5)
    np.testing.assert_allclose(loss.item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(stats.numpy(), ref_stats, rtol=1e-12)
    (loss * 1.5).backward()
    np.testing.assert_allclose(dt.grad.numpy(), ref_diff, rtol=1e-12, atol=1e-15)
    if min_negative_only:
        # row 0: the label is also the "smallest negative": one entry, -exp(-d) wins
        assert np.count_nonzero(dt.grad.numpy()[0]) == 1
        assert dt.grad[0, 0].item() < 0


def test_loss_is_that_of_one_forward_every_time() -> None:
    """Caffe adds to the loss top's previous value; a port returns the first forward's value."""
    rng = np.random.default_rng(6)
    d, label = t64(rng.uniform(0, 2, size=(4, 5))), t64(np.array([0.0, 1.0, 2.0, 1.0]))
    for layer in (NCALoss(), SoftContrastiveLoss()):
        first, second = layer(d, label), layer(d, label)
        assert first.item() == second.item()
    square = t64(rng.uniform(0, 2, size=(4, 4)))
    layer = BatchContrastiveLoss(4)
    assert layer(square, label).item() == layer(square, label).item()


# -- SoftContrastiveLoss -------------------------------------------------------------------------


def ref_soft_contrastive(d, label, weights, pm, nm, pw, nw, thresh, square, top_diff):
    """``soft_contrastive_loss_layer.cpp`` on a fresh loss top (exponent scale = negative_weight)."""
    num, dim = d.shape
    scale = nw
    loss = pos = neg = 0.0
    sum_exp = np.zeros(num)
    for i in range(num):
        y = int(label[i])
        for j in range(dim):
            if j != y:
                if d[i, j] < nm:
                    gap = nm - d[i, j]
                    sum_exp[i] += math.exp((gap * gap if square else gap) * scale)
                    neg += gap
            else:
                t = min(thresh, max(0.0, d[i, j] - pm))
                pos += t
                loss += (t * t if square else t) * pw
        if sum_exp[i] > 0:
            loss += math.log(sum_exp[i])
    loss /= num
    stats = np.array([pos / num, neg / num / (dim - 1)])
    diff = np.zeros_like(d)
    for i in range(num):
        y = int(label[i])
        for j in range(dim):
            v = d[i, j]
            if j == y:
                if pm < v < thresh:
                    diff[i, j] = v * pw if square else pw
            elif v < nm:
                gap = nm - v
                if square:
                    diff[i, j] = (v - nm) * nw * math.exp(gap * gap * scale) / sum_exp[i]
                else:
                    diff[i, j] = -nw * math.exp(gap * scale) / sum_exp[i]
    if weights is not None:
        mean = weights[:num].sum() / num
        for i in range(num):
            diff[i] *= weights[i] / mean
    return loss, stats, diff * (top_diff / num)


@pytest.mark.parametrize("square", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("params", [(1.0, 1.0, 1.0, 1.0, 4.0), (0.2, 1.2, 2.0, 0.5, 0.9)])
def test_soft_contrastive_matches_caffe_loops(square: bool, weighted: bool, params: tuple) -> None:
    rng = np.random.default_rng(7)
    d = rng.uniform(0.0, 2.5, size=(6, 5))
    d[3] = [2.0, 0.5, 2.2, 1.9, 2.4]  # label 1, no qualifying negative for either margin
    label = np.array([0, 3, 4, 1, 2, 0], dtype=np.float64)
    weights = rng.uniform(0.2, 2.0, size=6) if weighted else None
    pm, nm, pw, nw, thresh = params
    layer = SoftContrastiveLoss(pm, nm, pw, nw, thresh, square, output_distances=True)
    dt = t64(d, grad=True)
    loss, stats = layer(dt, t64(label), None if weights is None else t64(weights))
    ref = ref_soft_contrastive(d, label, weights, pm, nm, pw, nw, thresh, square, 0.8)
    np.testing.assert_allclose(loss.item(), ref[0], rtol=1e-12)
    np.testing.assert_allclose(stats.numpy(), ref[1], rtol=1e-12)
    (loss * 0.8).backward()
    np.testing.assert_allclose(dt.grad.numpy(), ref[2], rtol=1e-12, atol=1e-15)


def test_soft_contrastive_reads_thresh_from_general_contrastive_param() -> None:
    text = """
layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "loss" type: "SoftContrastiveLoss" bottom: "d" bottom: "label" top: "loss"
  soft_contrastive_loss_param { negative_weight: 0.5 exponent_scale: 7 }
  general_contrastive_loss_param { positive_outlier_thresh: 0.75 } }
"""
    layer = cc.Net(text, phase="TRAIN").layers["loss"]
    assert layer.positive_outlier_thresh == 0.75 and layer.negative_weight == 0.5
    assert layer.positive_margin == 1.0 and layer.negative_margin == 1.0


# -- LargeMarginInnerProduct ---------------------------------------------------------------------


def ref_lambda(base, gamma, power, lambda_min, iteration):
    return max(base * (1.0 + gamma * iteration) ** (-power), lambda_min)


def ref_lsoftmax(x, w, label, lam, margin, dy):
    """``largemargin_inner_product_layer.cpp`` Forward_cpu and Backward_cpu, element by element."""
    m, k = x.shape
    n = w.shape[0]
    x_norm = np.array([math.sqrt(float(x[i] @ x[i])) for i in range(m)])
    w_norm = np.array([math.sqrt(float(w[j] @ w[j])) for j in range(n)])
    xw = np.array([[float(x[i] @ w[j]) for j in range(n)] for i in range(m)])
    prod = np.array([[x_norm[i] * w_norm[j] + 1e-9 for j in range(n)] for i in range(m)])
    cos = xw / prod
    s0 = np.vectorize(sign)(cos)
    c2, c3, c4 = cos**2, cos**3, cos**4
    s1 = np.vectorize(sign)(np.abs(cos) - 0.5)
    s2 = s0 * (1.0 + s1) - 2.0
    s3 = s0 * np.vectorize(sign)(2.0 * c2 - 1.0)
    s4 = 2.0 * s0 + s3 - 3.0
    top = xw.copy()
    if margin > 1:
        for i in range(m):
            y = int(label[i])
            if margin == 2:
                psi = 2.0 * s0[i, y] * c2[i, y] - 1.0
            elif margin == 3:
                psi = s1[i, y] * (4.0 * c3[i, y] - 3.0 * cos[i, y]) + s2[i, y]
            else:
                psi = s3[i, y] * (8.0 * c4[i, y] - 8.0 * c2[i, y] + 1.0) + s4[i, y]
            top[i, y] = prod[i, y] * psi
        top = (top + lam * xw) * (1.0 / (1.0 + lam))
    # backward
    ratio = np.array([[x_norm[i] / (w_norm[j] + 1e-9) for j in range(n)] for i in range(m)])
    inv = 1.0 / (1.0 + lam)
    dw = np.zeros_like(w)
    dx = np.zeros_like(x)
    if margin == 1:
        return top, dy.T @ x, dy @ w
    for i in range(n):
        for j in range(m):
            if int(label[j]) != i:
                dw[i] += inv * dy[j, i] * x[j]
            else:
                if margin == 2:
                    a = 4.0 * s0[j, i] * cos[j, i]
                    b = 2.0 * s0[j, i] * c2[j, i] + 1.0
                elif margin == 3:
                    a = s1[j, i] * (12.0 * c2[j, i] - 3.0)
                    b = 8.0 * s1[j, i] * c3[j, i] - s2[j, i]
                else:
                    a = s3[j, i] * (32.0 * c3[j, i] - 16.0 * cos[j, i])
                    b = s3[j, i] * (24.0 * c4[j, i] - 8.0 * c2[j, i] - 1.0) - s4[j, i]
                dw[i] += inv * dy[j, i] * a * x[j]
                dw[i] += inv * dy[j, i] * (-ratio[j, i]) * b * w[i]
    dw += lam * inv * dy.T @ x
    for i in range(m):
        y = int(label[i])
        for j in range(n):
            if y != j:
                dx[i] += inv * dy[i, j] * w[j]
            else:
                if margin == 2:
                    a = 4.0 * s0[i, j] * cos[i, j]
                    b = 2.0 * s0[i, j] * c2[i, j] + 1.0
                elif margin == 3:
                    a = s1[i, j] * (12.0 * c2[i, j] - 3.0)
                    b = 8.0 * s1[i, j] * c3[i, j] - s2[i, j]
                else:
                    a = s3[i, j] * (32.0 * c3[i, j] - 16.0 * cos[i, j])
                    b = s3[i, j] * (24.0 * c4[i, j] - 8.0 * c2[i, j] - 1.0) - s4[i, j]
                dx[i] += inv * dy[i, j] * a * w[j]
                dx[i] += inv * dy[i, j] / (-ratio[i, j]) * b * x[i]
    dx += lam * inv * dy @ w
    return top, dw, dx


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
def test_lsoftmax_matches_caffe_loops(margin: int) -> None:
    rng = np.random.default_rng(10 + margin)
    m, k, n = 9, 4, 5
    x = rng.normal(size=(m, 2, 2))
    w = rng.normal(size=(n, k)) * rng.uniform(0.2, 3.0, size=(n, 1))
    label = rng.integers(0, n, size=m).astype(np.float64)
    base, gamma, power, lambda_min, iteration = 1000.0, 0.12, 1.0, 5.0, 10
    layer = LargeMarginInnerProduct(n, k, margin, 1, base, gamma, power, iteration, lambda_min, weight=t64(w))
    xt = t64(x, grad=True)
    for step in (1, 2):
        y, lam = layer(xt, t64(label))
        assert layer.iteration == iteration + step
        expected_lam = ref_lambda(base, gamma, power, lambda_min, iteration + step)
        assert lam.shape == (1,) and lam.item() == pytest.approx(expected_lam, rel=1e-12)
    dy = rng.normal(size=(m, n))
    ref_top, ref_dw, ref_dx = ref_lsoftmax(x.reshape(m, k), w, label, expected_lam, margin, dy)
    assert y.shape == (m, n)
    np.testing.assert_allclose(y.detach().numpy(), ref_top, rtol=1e-10, atol=1e-12)
    y.backward(t64(dy))
    np.testing.assert_allclose(xt.grad.numpy().reshape(m, k), ref_dx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(layer.weight.grad.numpy(), ref_dw, rtol=1e-9, atol=1e-12)


def test_lsoftmax_functional_logits_match_the_layer() -> None:
    rng = np.random.default_rng(20)
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    label = np.array([0.0, 1.0, 2.0, 2.0, 1.0, 0.0])
    layer = LargeMarginInnerProduct(3, 4, 3, lambda_min=2.5, base=0.0, weight=t64(w))
    y, lam = layer(t64(x), t64(label))
    assert lam.item() == 2.5
    logits = lsoftmax_logits(t64(x), t64(w), torch.tensor(label).long(), 2.5, 3)
    torch.testing.assert_close(logits, y.detach(), rtol=1e-12, atol=1e-12)
    ref_top = ref_lsoftmax(x, w, label, 2.5, 3, np.zeros((6, 3)))[0]
    np.testing.assert_allclose(logits.numpy(), ref_top, rtol=1e-10)


def test_lsoftmax_lambda_schedule_and_counter_in_a_net() -> None:
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "lm" type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" top: "y" top: "lambda"
  largemargin_inner_product_param { num_output: 3 type: DOUBLE base: 100 gamma: 0.5 power: 2
  lambda_min: 4.5 iteration: 3 weight_filler { type: "gaussian" std: 0.3 } } }
"""
    for phase in ("TRAIN", "TEST"):  # the counter advances in both phases
        net = cc.Net(text, phase=phase)
        layer = net.layers["lm"]
        inputs = {"x": torch.randn(4, 6), "label": torch.tensor([0.0, 2.0, 1.0, 1.0])}
        seen = []
        for _ in range(6):
            seen.append(net(**inputs)["lambda"].item())
        expected = [ref_lambda(100.0, 0.5, 2.0, 4.5, 3 + s) for s in range(1, 7)]
        np.testing.assert_allclose(seen, expected, rtol=1e-6)
        assert expected[0] > 11 and expected[-2:] == [4.5, 4.5] and layer.iteration == 9
        assert "iter_count" in layer.state_dict()
        assert len(net.params["lm"]) == 1  # the counter is no Caffe blob


def test_lsoftmax_with_huge_lambda_is_a_plain_inner_product() -> None:
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 5 dim: 2 dim: 3 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 5 } } }
layer { name: "lm" type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" top: "y" top: "lambda"
  largemargin_inner_product_param { num_output: 4 type: %s base: 0 lambda_min: 1e12
  weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "z"
  inner_product_param { num_output: 4 bias_term: false } }
"""
    for kind in ("SINGLE", "DOUBLE", "TRIPLE", "QUADRUPLE"):
        net = cc.Net(text % kind, phase="TRAIN")
        with torch.no_grad():
            net.layers["ip"].weight.copy_(net.layers["lm"].weight)
        x = torch.randn(5, 2, 3, requires_grad=True)
        out = net(x=x, label=torch.tensor([0.0, 3.0, 1.0, 1.0, 2.0]))
        assert out["lambda"].item() == pytest.approx(1e12, rel=1e-6)
        torch.testing.assert_close(out["y"], out["z"], rtol=1e-5, atol=1e-6)
        dy = torch.randn(5, 4)
        grads = torch.autograd.grad(out["y"], [x, net.layers["lm"].weight], dy)
        plain = torch.autograd.grad(out["z"], [x, net.layers["ip"].weight], dy)
        for got, want in zip(grads, plain, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_lsoftmax_weight_bottom_gets_the_blob_gradient() -> None:
    rng = np.random.default_rng(21)
    x, w = rng.normal(size=(6, 4)), rng.normal(size=(3, 4))
    label = t64(np.array([0.0, 1.0, 2.0, 2.0, 1.0, 0.0]))
    with_blob = LargeMarginInnerProduct(3, 4, 4, base=2.0, weight=t64(w))
    with_bottom = LargeMarginInnerProduct(3, 4, 4, base=2.0, weight_bottom=True)
    assert with_bottom.weight is None and with_bottom.caffe_blob_tensors() == []
    wt = t64(w, grad=True)
    y1, lam1 = with_blob(t64(x), label)
    y2, lam2 = with_bottom(t64(x), label, wt)
    torch.testing.assert_close(y1, y2)
    assert lam1.item() == lam2.item() == 2.0
    dy = t64(rng.normal(size=(6, 3)))
    y1.backward(dy)
    y2.backward(dy)
    torch.testing.assert_close(wt.grad, with_blob.weight.grad)


def test_lsoftmax_net_with_weight_bottom_has_no_blob() -> None:
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "w" type: "Input" top: "w" input_param { shape { dim: 3 dim: 6 } } }
layer { name: "lm" type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" bottom: "w"
  top: "y" top: "lambda" largemargin_inner_product_param { type: DOUBLE } }
"""
    net = cc.Net(text, phase="TRAIN")
    assert net.params["lm"] == [] and net.blob_shapes["y"] == (4, 3)
    out = net(x=torch.randn(4, 6), label=torch.tensor([0.0, 1.0, 2.0, 0.0]), w=torch.randn(3, 6))
    assert out["y"].shape == (4, 3)


# -- MovingNormalize -----------------------------------------------------------------------------


def ref_moving_normalize(x, blob):
    """``moving_normalize_layer.cu`` Forward_gpu: returns (top, new blob)."""
    shape = tuple(x.shape) + (1,) * (4 - x.ndim)
    num, channels, h, w = shape
    spatial = h * w
    flat = x.reshape(-1)
    norm = np.zeros(num * spatial)
    for index in range(num * spatial):
        n, s = divmod(index, spatial)
        total = 0.0
        for c in range(channels):
            v = flat[(n * channels + c) * spatial + s]
            total += v * v
        norm[index] = math.sqrt(total + 1e-12)
    mean = sum(norm[i] for i in range(num)) / (num * spatial)  # caffe_gpu_dot(num, ...)
    blob = mean if blob < 0 else blob * 0.99 + mean * 0.01
    return x * (1.0 / blob), blob


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 6)])
def test_moving_normalize_matches_cuda_loops(shape: tuple) -> None:
    rng = np.random.default_rng(30)
    layer = MovingNormalize(output_norm=True).double()
    assert layer.moving_average_norm.item() == -1.0
    blob = -1.0
    for step in range(3):
        x = rng.normal(size=shape) * (step + 1)
        xt = t64(x, grad=True)
        y, norm = layer(xt)
        ref_y, blob = ref_moving_normalize(x, blob)
        np.testing.assert_allclose(layer.moving_average_norm.item(), blob, rtol=1e-12)
        np.testing.assert_allclose(norm.item(), blob, rtol=1e-12)
        np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-12)
        dy = rng.normal(size=shape)
        y.backward(t64(dy))
        np.testing.assert_allclose(xt.grad.numpy(), dy * (1.0 / blob), rtol=1e-12)
        assert not norm.requires_grad


def test_moving_normalize_blob_is_a_fixed_statistic() -> None:
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 4 } } }
layer { name: "mn" type: "MovingNormalize" bottom: "x" top: "y" %s }
"""
    net = cc.Net(text % "", phase="TEST")
    layer = net.layers["mn"]
    specs = layer.param_specs(net.layer_params["mn"], 1)
    assert (specs[0].lr_mult, specs[0].decay_mult) == (0.0, 0.0)
    assert [t.tolist() for t in net.params["mn"]] == [[-1.0]]
    x = torch.randn(3, 4)
    net(x=x)  # the TEST phase updates the blob too
    expected = ref_moving_normalize(x.double().numpy(), -1.0)[1]
    assert layer.moving_average_norm.item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(LayerError, match="lr_mult must be 0"):
        cc.Net(text % "param { lr_mult: 1 }", phase="TRAIN")
    assert cc.Net(text % "param { lr_mult: 0 }", phase="TRAIN").layers["mn"].output_norm is False


# -- registry and configuration errors -----------------------------------------------------------

NEW_TYPES = {
    "CenterLoss": "metric loss",
    "BatchContrastiveLoss": "metric loss",
    "NCALoss": "metric loss",
    "SoftContrastiveLoss": "metric loss",
    "LargeMarginInnerProduct": "L-Softmax",
    "MovingNormalize": "NormFace",
}


@pytest.mark.parametrize("type_name", sorted(NEW_TYPES))
def test_example_builds_and_runs(type_name: str) -> None:
    cls = registered_types()[type_name]
    assert cls.__module__.startswith("caffe_compat.layers.face.")
    assert cls.__dict__["family"] == NEW_TYPES[type_name]
    net = cc.Net(cls.example, phase="TRAIN")
    inputs = {}
    for name in net.input_names:
        shape = net.blob_shapes[name]
        if name == "label":
            inputs[name] = torch.randint(0, 3, shape).float()
        else:
            inputs[name] = (torch.rand(shape) + 0.1).requires_grad_()
    outputs = net(**inputs)
    for name, value in outputs.items():
        assert tuple(value.shape) == tuple(net.blob_shapes[name])
        assert torch.isfinite(value).all()
    objective = net.loss(outputs) if cls.is_loss else sum(v.sum() for v in outputs.values())
    objective.backward()
    grads = [t.grad for t in inputs.values() if t.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layers_keep_the_input_dtype(dtype: torch.dtype) -> None:
    d = torch.rand(4, 4, dtype=dtype)
    label = torch.tensor([0.0, 1.0, 0.0, 2.0], dtype=dtype)
    assert BatchContrastiveLoss(4)(d, label).dtype == dtype
    assert NCALoss()(d, label).dtype == dtype
    assert SoftContrastiveLoss()(d, label).dtype == dtype
    assert CenterLoss(3, 4, 4).to(dtype)(d, label).dtype == dtype
    y, lam = LargeMarginInnerProduct(3, 4, 2, weight=torch.randn(3, 4)).to(dtype)(d, label)
    assert y.dtype == lam.dtype == dtype
    assert MovingNormalize().to(dtype)(d).dtype == dtype


HEAD = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 6 } } }
layer { name: "sq" type: "Input" top: "sq" input_param { shape { dim: 4 dim: 4 } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 4 } } }
layer { name: "label2" type: "Input" top: "label2" input_param { shape { dim: 4 dim: 2 } } }
layer { name: "w2" type: "Input" top: "w2" input_param { shape { dim: 2 } } }
"""
BAD_LAYERS = [
    ('type: "BatchContrastiveLoss" bottom: "x" bottom: "label" top: "loss"', "N x N"),
    ('type: "BatchContrastiveLoss" bottom: "sq" bottom: "label" top: "l" top: "d" top: "e"', "top blob"),
    ('type: "NCALoss" bottom: "x" bottom: "label" bottom: "w2" top: "loss"', "one weight per sample"),
    ('type: "SoftContrastiveLoss" bottom: "x" top: "loss"', "bottom blob"),
    ('type: "NCALoss" bottom: "x" bottom: "w2" top: "loss"', "same first dimension"),
    (
        'type: "CenterLoss" bottom: "x" bottom: "label" top: "loss" '
        'center_loss_param { num_output: 3 distance_type: "L3" }',
        "L1 or L2",
    ),
    (
        'type: "CenterLoss" bottom: "x" bottom: "label2" top: "loss" center_loss_param { num_output: 3 }',
        "one label",
    ),
    ('type: "CenterLoss" bottom: "x" bottom: "label" top: "loss"', "num_output must be positive"),
    (
        'type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" top: "y" '
        "largemargin_inner_product_param { num_output: 3 }",
        "2 top blobs",
    ),
    (
        'type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" top: "y" top: "l" '
        "largemargin_inner_product_param { num_output: 3 axis: 2 }",
        "out of range",
    ),
    (
        'type: "LargeMarginInnerProduct" bottom: "x" bottom: "label" bottom: "sq" top: "y" top: "l"',
        "weight bottom",
    ),
    ('type: "MovingNormalize" bottom: "x" bottom: "sq" top: "y"', "bottom blob"),
]


@pytest.mark.parametrize(("body", "message"), BAD_LAYERS)
def test_bad_parameters_are_clear_errors(body: str, message: str) -> None:
    text = HEAD + f'layer {{ name: "bad" {body} }}\n'
    with pytest.raises(LayerError, match=message) as info:
        cc.Net(text, phase="TRAIN")
    assert "layer 'bad'" in str(info.value)


@pytest.mark.parametrize("margin", [2, 3, 4])
def test_lsoftmax_caffe_backward_is_the_analytic_gradient_up_to_its_epsilons(margin: int) -> None:
    """Caffe's hand-written L-Softmax backward is the derivative of its forward away from the
    sign switches (the 1e-9 epsilons aside): autograd through ``lsoftmax_logits`` agrees."""
    rng = np.random.default_rng(40 + margin)
    x, w = rng.normal(size=(8, 5)), rng.normal(size=(4, 5))
    label = np.array([0.0, 1.0, 2.0, 3.0, 3.0, 2.0, 1.0, 0.0])
    layer = LargeMarginInnerProduct(4, 5, margin, base=3.0, weight=t64(w))
    xt = t64(x, grad=True)
    y, _ = layer(xt, t64(label))
    dy = t64(rng.normal(size=(8, 4)))
    y.backward(dy)
    x2, w2 = t64(x, grad=True), t64(w, grad=True)
    lsoftmax_logits(x2, w2, torch.tensor(label).long(), 3.0, margin).backward(dy)
    torch.testing.assert_close(xt.grad, x2.grad, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(layer.weight.grad, w2.grad, rtol=1e-6, atol=1e-8)
