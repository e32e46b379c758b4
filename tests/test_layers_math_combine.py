"""Math (Arccos, Cosine, Truncation, SoftTruncation, Insanity, Noise), combine (Axpy, Pairwise,
Gram, Slope) and reorder (Permute, BatchReindex, Filter) layers against float64 numpy
transcriptions of the fork's C++ loops, torch's gradcheck where the backward is the exact gradient,
and stated properties; TRAIN-phase randomness (Insanity, Noise) by its statistics.

The golden cases (tests/goldens/layers) cover the fixed-parameter paths of the types that have
them; the types without goldens (Permute, BatchReindex, Filter, SoftTruncation) and the TRAIN
paths of Insanity and Noise are checked here only.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.export.convert import convert
from caffe_compat.export.errors import ExportError

SHAPE = (2, 3, 5, 7)
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


def make_net(layers: str, shapes: dict[str, tuple[int, ...]] | None = None, phase: str = "TRAIN") -> cc.Net:
    return cc.Net(inputs_text(shapes or {"x": SHAPE}) + layers, phase=phase)


def rand(seed: int, shape: tuple[int, ...] = SHAPE, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def leaf(value: np.ndarray, grad: bool = True) -> torch.Tensor:
    return torch.tensor(value, requires_grad=grad)


def one_layer(
    type_name: str, param: str = "", phase: str = "TRAIN", shape: tuple[int, ...] = SHAPE
) -> cc.Net:
    return make_net(
        f'layer {{ name: "l" type: "{type_name}" bottom: "x" top: "y" {param} }}', {"x": shape}, phase
    )


def build_error(text: str, shapes: dict[str, tuple[int, ...]], match: str, phase: str = "TRAIN") -> None:
    with pytest.raises(LayerError, match=match):
        make_net(text, shapes, phase)


# -- Arccos, Cosine, Truncation, SoftTruncation -----------------------------------------------------


def test_arccos_forward_and_caffes_clipped_backward() -> None:
    x = np.random.default_rng(0).uniform(-0.999, 0.999, SHAPE).astype(np.float32)
    x.flat[:4] = [0.98, 0.99, 0.995, 1.0]  # at and above the 0.99 clip of the backward
    dy = rand(1)
    xt = leaf(x)
    y = one_layer("Arccos")(x=xt)["y"]
    y.backward(torch.tensor(dy))
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(y.detach().double().numpy(), np.arccos(x64), **FWD)
    fixed = np.minimum(x64, np.float32(0.99))
    np.testing.assert_allclose(xt.grad.double().numpy(), -dy / np.sqrt(1 - fixed * fixed), **BWD)
    # above the clip the diff is that of 0.99: finite at x = 1
    assert np.isfinite(xt.grad.numpy().flat[3])
    np.testing.assert_allclose(xt.grad.numpy().flat[3] / dy.flat[3], xt.grad.numpy().flat[1] / dy.flat[1])


def test_arccos_is_not_clipped_from_below() -> None:
    xt = leaf(np.array([[-1.0, -0.995]], dtype=np.float32))
    make_net('layer { name: "l" type: "Arccos" bottom: "x" top: "y" }', {"x": (1, 2)})(x=xt)[
        "y"
    ].sum().backward()
    assert xt.grad[0, 0] == -math.inf
    np.testing.assert_allclose(xt.grad[0, 1].item(), -1 / math.sqrt(1 - 0.995**2), rtol=1e-4)


def test_cosine_backward_is_minus_sine_whatever_the_top_diff() -> None:
    x = rand(2, scale=3.0)
    for scale in (1.0, 3.0, 0.0):
        xt = leaf(x)
        y = one_layer("Cosine")(x=xt)["y"]
        np.testing.assert_allclose(y.detach().double().numpy(), np.cos(x.astype(np.float64)), **FWD)
        y.backward(torch.full(SHAPE, scale))
        np.testing.assert_allclose(xt.grad.double().numpy(), -np.sin(x.astype(np.float64)), **BWD)


@pytest.mark.parametrize(("lower", "upper"), [(0.0, 5.0), (-0.5, 0.25), (1.0, -1.0)])
def test_truncation_passes_the_diff_strictly_inside_the_bounds(lower: float, upper: float) -> None:
    param = f"truncation_param {{ lower_bound: {lower} upper_bound: {upper} }}"
    if (lower, upper) == (0.0, 5.0):
        param = ""  # the defaults
    x = np.round(rand(3, scale=3.0) * 4) / 4  # many values exactly on the bounds
    x.flat[:2] = [lower, upper]
    dy = rand(4)
    xt = leaf(x)
    y = one_layer("Truncation", param)(x=xt)["y"]
    y.backward(torch.tensor(dy))
    np.testing.assert_array_equal(y.detach().numpy(), np.minimum(np.maximum(x, lower), upper))
    expected = np.where((x > lower) & (x < upper), dy, 0.0)
    np.testing.assert_array_equal(xt.grad.numpy(), expected)
    assert xt.grad.numpy().flat[0] == 0 and xt.grad.numpy().flat[1] == 0


@pytest.mark.parametrize("c", [None, 1.5, -0.7])
def test_soft_truncation_per_its_cpp_source(c: float | None) -> None:
    param = "" if c is None else f"soft_truncation_param {{ c: {c} }}"
    cc_value = 2.0 if c is None else c
    x = rand(5, scale=2.0)
    x.flat[0] = 40.0 * abs(cc_value)  # exp(-x/c) below float precision: Caffe's diff is exactly 0
    dy = rand(6)
    xt = leaf(x)
    y = one_layer("SoftTruncation", param)(x=xt)["y"]
    y.backward(torch.tensor(dy))
    c32 = np.float32(cc_value)
    top = (np.float32(1) - np.exp(x / -c32)).astype(np.float32)  # Caffe's float loop
    np.testing.assert_allclose(y.detach().numpy(), top, **FWD)
    np.testing.assert_allclose(xt.grad.numpy(), dy * (1 - top) / c32, **BWD)
    if cc_value > 0:
        assert y.detach().numpy().flat[0] == 1.0 and xt.grad.numpy().flat[0] == 0.0
    # away from saturation Caffe's backward is the exact gradient
    x64 = torch.tensor(rand(7, (3, 4), 0.5), dtype=torch.float64, requires_grad=True)
    net = one_layer("SoftTruncation", param, shape=(3, 4))
    assert torch.autograd.gradcheck(lambda t: net(x=t)["y"], (x64,))


def test_soft_truncation_rejects_c_zero() -> None:
    build_error(
        'layer { name: "st" type: "SoftTruncation" bottom: "x" top: "y" soft_truncation_param { c: 0 } }',
        {"x": SHAPE},
        r"'st' \(SoftTruncation\): .*c must not be 0",
    )


def test_neuron_layers_take_one_bottom_and_one_top() -> None:
    for type_name in ("Arccos", "Cosine", "Truncation", "SoftTruncation", "Insanity"):
        build_error(
            f'layer {{ name: "n" type: "{type_name}" bottom: "x" bottom: "z" top: "y" }}',
            {"x": SHAPE, "z": SHAPE},
            rf"'n' \({type_name}\): takes 1 bottom blob",
        )


# -- Insanity ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lb", "ub"), [(5.0, 10.0), (2.0, 3.0), (-4.0, -1.5)])
def test_insanity_test_phase_uses_the_mean_slope(lb: float, ub: float) -> None:
    param = "" if (lb, ub) == (5.0, 10.0) else f"insanity_param {{ lb: {lb} ub: {ub} }}"
    x = rand(8)
    x.flat[0] = 0.0
    dy = rand(9)
    xt = leaf(x)
    y = one_layer("Insanity", param, phase="TEST")(x=xt)["y"]
    y.backward(torch.tensor(dy))
    slope = (ub - lb) / (math.log(abs(ub)) - math.log(abs(lb)))
    np.testing.assert_allclose(y.detach().numpy(), np.maximum(x, 0) + np.minimum(x, 0) / slope, **FWD)
    # the gradient of the TEST forward (Caffe's own TEST backward divides by never-drawn slopes)
    np.testing.assert_allclose(xt.grad.numpy(), np.where(x > 0, dy, dy / slope), **BWD)


def test_insanity_symmetric_bounds_give_a_relu_in_test() -> None:
    x = rand(10)
    y = one_layer("Insanity", "insanity_param { lb: -3 ub: 3 }", phase="TEST")(x=torch.tensor(x))["y"]
    np.testing.assert_array_equal(y.numpy(), np.maximum(x, 0))


@pytest.mark.parametrize(("lb", "ub"), [(5.0, 10.0), (0.5, 1.5)])
def test_insanity_train_draws_slopes_in_bounds_and_backward_uses_them(lb: float, ub: float) -> None:
    shape = (4, 8, 16, 16)
    param = "" if (lb, ub) == (5.0, 10.0) else f"insanity_param {{ lb: {lb} ub: {ub} }}"
    net = one_layer("Insanity", param, shape=shape)
    x = rand(11, shape)
    x[np.abs(x) < 1e-3] = 0.5  # keep x/y well conditioned
    x.flat[0] = 0.0
    dy = rand(12, shape)
    xt = leaf(x)
    torch.manual_seed(0)
    y = net(x=xt)["y"]
    y.backward(torch.tensor(dy))
    y_np, grad = y.detach().numpy(), xt.grad.numpy()
    positive, negative = x > 0, x < 0
    np.testing.assert_array_equal(y_np[positive], x[positive])
    np.testing.assert_array_equal(grad[positive], dy[positive])
    slopes = x[negative].astype(np.float64) / y_np[negative]
    assert slopes.min() >= lb * (1 - 1e-6) and slopes.max() <= ub * (1 + 1e-6)
    # a fresh slope per element, uniform over [lb, ub)
    assert len(np.unique(np.round(slopes, 5))) > 0.9 * slopes.size
    np.testing.assert_allclose(slopes.mean(), (lb + ub) / 2, rtol=0.01)
    np.testing.assert_allclose(slopes.var(), (ub - lb) ** 2 / 12, rtol=0.05)
    # backward: dy / slope with the slopes of this forward
    np.testing.assert_allclose(grad[negative], dy[negative] / slopes, rtol=1e-5, atol=1e-7)
    # at x = 0 Caffe applies the slope too: dy / a with a in [lb, ub]
    ratio = dy.flat[0] / grad.flat[0]
    assert lb * (1 - 1e-6) <= ratio <= ub * (1 + 1e-6)
    # a new draw at every forward; torch's seed makes it repeatable
    torch.manual_seed(0)
    again = net(x=torch.tensor(x))["y"]
    np.testing.assert_array_equal(again.numpy(), y_np)
    assert not torch.equal(net(x=torch.tensor(x))["y"], again)


@pytest.mark.parametrize(
    ("param", "match"),
    [
        ("insanity_param { lb: 3 ub: 3 }", "must be greater than lower bound"),
        ("insanity_param { lb: 4 ub: 2 }", "must be greater than lower bound"),
        ("insanity_param { lb: 0 ub: 2 }", "must not be 0"),
        ("insanity_param { lb: -2 ub: 0 }", "must not be 0"),
    ],
)
def test_insanity_bad_bounds(param: str, match: str) -> None:
    build_error(
        f'layer {{ name: "rr" type: "Insanity" bottom: "x" top: "y" {param} }}',
        {"x": SHAPE},
        rf"'rr' \(Insanity\): .*{match}",
    )


def test_insanity_needs_two_axes() -> None:
    build_error(
        'layer { name: "rr" type: "Insanity" bottom: "x" top: "y" }',
        {"x": (6,)},
        r"'rr' \(Insanity\): .*at least 2 axes",
    )


# -- Noise ------------------------------------------------------------------------------------------


def _noise(param: str, x: np.ndarray, phase: str = "TRAIN", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    net = make_net(f'layer {{ name: "n" type: "Noise" bottom: "x" top: "x" {param} }}', {"x": x.shape}, phase)
    xt = leaf(x)
    torch.manual_seed(seed)
    y = net(x=xt)["x"]
    dy = rand(13, x.shape)
    y.backward(torch.tensor(dy))
    np.testing.assert_array_equal(xt.grad.numpy(), dy)  # the backward is the identity
    return y.detach().numpy(), (y.detach().double() - torch.tensor(x).double()).numpy()


def test_noise_train_gaussian_statistics() -> None:
    x = rand(14, (8, 16, 32, 32), scale=2.5)
    _, noise = _noise("noise_param { gaussian_std: 0.3 bias: 0.2 }", x)
    rms = math.sqrt(float(np.mean(x.astype(np.float64) ** 2)))
    sigma = 0.3 * rms
    n = noise.size
    assert abs(noise.mean() - 0.2) < 5 * sigma / math.sqrt(n)
    np.testing.assert_allclose(noise.std(), sigma, rtol=0.01)
    # Gaussian: about 68.3 % within one sigma, and no heavy tails
    within = np.mean(np.abs(noise - 0.2) < sigma)
    assert abs(within - 0.6827) < 0.005
    assert np.abs(noise - 0.2).max() < 6 * sigma


def test_noise_train_uniform_statistics() -> None:
    x = rand(15, (8, 16, 32, 32))
    _, noise = _noise("noise_param { uniform_range: 0.5 bias: -1 }", x)
    tol = 1e-6
    assert noise.min() >= -1.5 - tol and noise.max() <= -0.5 + tol
    assert abs(noise.mean() + 1.0) < 5 * (1 / math.sqrt(12)) / math.sqrt(noise.size)
    np.testing.assert_allclose(noise.var(), 1.0 / 12, rtol=0.01)
    counts, _ = np.histogram(noise, bins=10, range=(-1.5, -0.5))
    np.testing.assert_allclose(counts / noise.size, 0.1, atol=0.003)


def test_noise_gaussian_takes_precedence_and_draws_each_forward() -> None:
    x = rand(16, (4, 3, 8, 8))
    y0, noise = _noise("noise_param { gaussian_std: 0.1 uniform_range: 0.01 }", x, seed=1)
    assert np.abs(noise).max() > 0.05  # gaussian with sigma 0.1 * rms, not the +-0.01 uniform
    y1, _ = _noise("noise_param { gaussian_std: 0.1 uniform_range: 0.01 }", x, seed=1)
    y2, _ = _noise("noise_param { gaussian_std: 0.1 uniform_range: 0.01 }", x, seed=2)
    np.testing.assert_array_equal(y0, y1)
    assert not np.array_equal(y0, y2)


@pytest.mark.parametrize(
    ("param", "phase"),
    [("noise_param { bias: 0.3 }", "TRAIN"), ("noise_param { gaussian_std: 1 }", "TEST"), ("", "TRAIN")],
)
def test_noise_identity_cases(param: str, phase: str) -> None:
    x = rand(17)
    y, _ = _noise(param, x, phase)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('layer { name: "nz" type: "Noise" bottom: "x" top: "y" }', "must run in place"),
        (
            'layer { name: "nz" type: "Noise" bottom: "x" top: "x" noise_param { gaussian_std: 0 } }',
            "gaussian_std must be greater than 0",
        ),
        (
            'layer { name: "nz" type: "Noise" bottom: "x" top: "x" noise_param { gaussian_std: -1 } }',
            "gaussian_std must be greater than 0",
        ),
        (
            'layer { name: "nz" type: "Noise" bottom: "x" top: "x" noise_param { uniform_range: -0.1 } }',
            "uniform_range must not be negative",
        ),
    ],
)
def test_noise_bad_configs(text: str, match: str) -> None:
    build_error(text, {"x": SHAPE}, rf"'nz' \(Noise\): .*{match}")


# -- Axpy -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("a_shape", [(2, 3), (2, 3, 1, 1)])
def test_axpy_matches_its_loops(a_shape: tuple[int, ...]) -> None:
    shapes = {"a": a_shape, "x": SHAPE, "y": SHAPE}
    net = make_net('layer { name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z" }', shapes)
    a, x, y, dz = rand(20, a_shape), rand(21), rand(22), rand(23)
    tensors = {"a": leaf(a), "x": leaf(x), "y": leaf(y)}
    z = net(**tensors)["z"]
    z.backward(torch.tensor(dz))
    a64 = a.astype(np.float64).reshape(2, 3, 1, 1)
    np.testing.assert_allclose(z.detach().numpy(), a64 * x + y, **FWD)
    np.testing.assert_allclose(tensors["a"].grad.numpy(), (dz * x).sum(axis=(2, 3)).reshape(a_shape), **BWD)
    np.testing.assert_allclose(tensors["x"].grad.numpy(), a64 * dz, **BWD)
    np.testing.assert_array_equal(tensors["y"].grad.numpy(), dz)


def test_axpy_gives_x_no_diff_when_the_scale_needs_none() -> None:
    """axpy_layer.cpp computes x's diff under ``if (propagate_down[0])`` (the scale's flag)."""
    shapes = {"a": (2, 3), "x": SHAPE, "y": SHAPE}
    net = make_net('layer { name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z" }', shapes)
    x, y = leaf(rand(24)), leaf(rand(25))
    z = net(a=torch.tensor(rand(26, (2, 3))), x=x, y=y)["z"]
    z.sum().backward()
    assert x.grad is None
    np.testing.assert_array_equal(y.grad.numpy(), np.ones(SHAPE, dtype=np.float32))


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ({"a": (2, 4), "x": SHAPE, "y": SHAPE}, r"must have shape \(N, C\)"),
        ({"a": (2, 3, 1, 2), "x": SHAPE, "y": SHAPE}, r"must be \(N, C, 1, 1\)"),
        ({"a": (2, 3), "x": SHAPE, "y": (2, 3, 5, 6)}, "must have one shape"),
        ({"a": (2, 3, 2), "x": SHAPE, "y": SHAPE}, "must hold N \\* C values"),
    ],
)
def test_axpy_bad_shapes(shapes: dict[str, tuple[int, ...]], match: str) -> None:
    build_error(
        'layer { name: "ax" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "z" }',
        shapes,
        rf"'ax' \(Axpy\): .*{match}",
    )


# -- Pairwise ---------------------------------------------------------------------------------------


def _pairwise_loops(op: str, a: np.ndarray, b: np.ndarray, dy: np.ndarray, coeffs=(1.0, 1.0)):  # noqa: ANN001, ANN202
    """pairwise_layer.cpp's loops in float64."""
    m_rows, k = a.shape
    n_rows = b.shape[0]
    top = np.zeros((m_rows, n_rows, k))
    da, db = np.zeros_like(a, dtype=np.float64), np.zeros_like(b, dtype=np.float64)
    for m in range(m_rows):
        for n in range(n_rows):
            for i in range(k):
                if op == "PROD":
                    top[m, n, i] = a[m, i] * b[n, i]
                    da[m, i] += dy[m, n, i] * b[n, i]
                    db[n, i] += dy[m, n, i] * a[m, i]
                elif op == "SUM":
                    top[m, n, i] = coeffs[0] * a[m, i] + coeffs[1] * b[n, i]
                    da[m, i] += dy[m, n, i] * coeffs[0]
                    db[n, i] += dy[m, n, i] * coeffs[1]
                elif a[m, i] > b[n, i]:
                    top[m, n, i] = a[m, i]
                    da[m, i] += dy[m, n, i]
                else:
                    top[m, n, i] = b[n, i]
                    db[n, i] += dy[m, n, i]
    return top, da, db


@pytest.mark.parametrize(
    ("op", "param", "coeffs"),
    [
        ("SUM", "", (1.0, 1.0)),
        ("SUM", "pairwise_param { coeff: 0.5 coeff: -2 }", (0.5, -2.0)),
        ("PROD", "pairwise_param { operation: PROD }", (1.0, 1.0)),
        ("MAX", "pairwise_param { operation: MAX }", (1.0, 1.0)),
    ],
)
def test_pairwise_matches_its_loops(op: str, param: str, coeffs: tuple[float, float]) -> None:
    net = make_net(
        f'layer {{ name: "p" type: "Pairwise" bottom: "a" bottom: "b" top: "y" {param} }}',
        {"a": (4, 5), "b": (3, 5)},
    )
    a, b = np.round(rand(30, (4, 5)) * 2) / 2, np.round(rand(31, (3, 5)) * 2) / 2  # many ties for MAX
    dy = rand(32, (4, 3, 5))
    ta, tb = leaf(a), leaf(b)
    y = net(a=ta, b=tb)["y"]
    y.backward(torch.tensor(dy))
    top, da, db = _pairwise_loops(
        op, a.astype(np.float64), b.astype(np.float64), dy.astype(np.float64), coeffs
    )
    assert y.shape == (4, 3, 5)
    np.testing.assert_allclose(y.detach().numpy(), top, **FWD)
    np.testing.assert_allclose(ta.grad.numpy(), da, **BWD)
    np.testing.assert_allclose(tb.grad.numpy(), db, **BWD)


@pytest.mark.parametrize(
    ("text", "shapes", "match"),
    [
        (
            "pairwise_param { coeff: 2 }",
            {"a": (4, 5), "b": (3, 5)},
            "one coefficient per bottom blob: 1 coeff",
        ),
        (
            "pairwise_param { operation: PROD coeff: 1 coeff: 2 }",
            {"a": (4, 5), "b": (3, 5)},
            "only takes coefficients",
        ),
        ("", {"a": (4, 5), "b": (3, 6)}, "same number of channels K, got 5 and 6"),
        ("", {"a": (4, 5, 2), "b": (3, 5)}, r"must be a \(rows, K\) matrix"),
    ],
)
def test_pairwise_bad_configs(text: str, shapes: dict[str, tuple[int, ...]], match: str) -> None:
    build_error(
        f'layer {{ name: "pw" type: "Pairwise" bottom: "a" bottom: "b" top: "y" {text} }}',
        shapes,
        rf"'pw' \(Pairwise\): .*{match}",
    )


def test_pairwise_takes_two_bottoms() -> None:
    build_error(
        'layer { name: "pw" type: "Pairwise" bottom: "a" bottom: "b" bottom: "c" top: "y" }',
        {"a": (4, 5), "b": (3, 5), "c": (2, 5)},
        r"'pw' \(Pairwise\): takes 2 bottom blob",
    )


# -- Gram, Slope ------------------------------------------------------------------------------------


def test_gram_forward_and_exact_backward() -> None:
    x = rand(40)
    dy = rand(41, (2, 3, 3, 1))
    xt = leaf(x)
    y = one_layer("Gram")(x=xt)["y"]
    y.backward(torch.tensor(dy))
    feats = x.astype(np.float64).reshape(2, 3, 35)
    t = dy.astype(np.float64).reshape(2, 3, 3)
    assert y.shape == (2, 3, 3, 1)
    np.testing.assert_allclose(
        y.detach().numpy().reshape(2, 3, 3), feats @ feats.transpose(0, 2, 1) / 35 / 3, **FWD
    )
    np.testing.assert_allclose(
        xt.grad.numpy().reshape(2, 3, 35), (t + t.transpose(0, 2, 1)) @ feats / 35 / 3, **BWD
    )
    x64 = torch.tensor(rand(42, (2, 3, 2, 3)), dtype=torch.float64, requires_grad=True)
    net = one_layer("Gram", shape=(2, 3, 2, 3))
    assert torch.autograd.gradcheck(lambda t: net(x=t)["y"], (x64,))


def test_slope_appends_coordinate_maps() -> None:
    x = rand(43)
    dy = rand(44, (2, 5, 5, 7))
    xt = leaf(x)
    y = one_layer("Slope")(x=xt)["y"]
    y.backward(torch.tensor(dy))
    assert y.shape == (2, 5, 5, 7)
    np.testing.assert_array_equal(y.detach().numpy()[:, :3], x)
    rows = (np.arange(5, dtype=np.float32) / np.float32(5))[:, None]
    cols = (np.arange(7, dtype=np.float32) / np.float32(7))[None, :]
    for n in range(2):
        np.testing.assert_array_equal(y.detach().numpy()[n, 3], np.broadcast_to(rows, (5, 7)))
        np.testing.assert_array_equal(y.detach().numpy()[n, 4], np.broadcast_to(cols, (5, 7)))
    np.testing.assert_array_equal(xt.grad.numpy(), dy[:, :3])


def test_slope_refuses_another_spatial_size_than_at_setup() -> None:
    net = one_layer("Slope")
    assert net(x=torch.zeros(4, 3, 5, 7))["y"].shape == (4, 5, 5, 7)  # another batch size is fine
    with pytest.raises(LayerError, match=r"'l' \(Slope\): .*built for 5x7 bottoms.*got 6x7"):
        net(x=torch.zeros(2, 3, 6, 7))


# -- Permute ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("order", "full"),
    [
        ((0, 2, 3, 1), (0, 2, 3, 1)),
        ((3, 1), (3, 1, 0, 2)),
        ((2,), (2, 0, 1, 3)),
        ((), (0, 1, 2, 3)),
        ((0, 1, 2, 3), (0, 1, 2, 3)),
    ],
)
def test_permute_is_numpy_transpose_with_exact_backward(
    order: tuple[int, ...], full: tuple[int, ...]
) -> None:
    param = "permute_param { " + " ".join(f"order: {i}" for i in order) + " }"
    x = rand(50)
    xt = leaf(x)
    y = one_layer("Permute", param)(x=xt)["y"]
    expected = np.transpose(x, full)
    assert y.shape == expected.shape and y.is_contiguous()
    np.testing.assert_array_equal(y.detach().numpy(), expected)
    dy = rand(51, expected.shape)
    y.backward(torch.tensor(dy))
    np.testing.assert_array_equal(xt.grad.numpy(), np.transpose(dy, np.argsort(full)))


@pytest.mark.parametrize(
    ("param", "match"),
    [
        ("order: 0 order: 4", "order 4 should be less than the input dimension"),
        ("order: 1 order: 1", "duplicate orders"),
    ],
)
def test_permute_bad_orders(param: str, match: str) -> None:
    build_error(
        f'layer {{ name: "pm" type: "Permute" bottom: "x" top: "y" permute_param {{ {param} }} }}',
        {"x": SHAPE},
        rf"'pm' \(Permute\): .*{match}",
    )


# -- BatchReindex -----------------------------------------------------------------------------------


def _reindex_net(k: int) -> cc.Net:
    return make_net(
        'layer { name: "br" type: "BatchReindex" bottom: "x" bottom: "index" top: "y" }',
        {"x": (4, 3, 5), "index": (k,)},
    )


def test_batch_reindex_is_index_select_and_backward_sums() -> None:
    index = np.array([2, 0, 2, 3, 2.9, 0.5], dtype=np.float32)  # floats truncate toward zero
    as_int = index.astype(np.int64)
    x = rand(60, (4, 3, 5))
    dy = rand(61, (6, 3, 5))
    xt = leaf(x)
    net = _reindex_net(6)
    y = net(x=xt, index=torch.tensor(index))["y"]
    np.testing.assert_array_equal(y.detach().numpy(), x[as_int])
    y.backward(torch.tensor(dy))
    expected = np.zeros((4, 3, 5))
    np.add.at(expected, as_int, dy.astype(np.float64))  # Caffe's += over repeated indices
    np.testing.assert_allclose(xt.grad.numpy(), expected, **BWD)
    assert not xt.grad.numpy()[1].any()  # item 1 was never picked
    # integer indices and another K work too
    y = _reindex_net(2)(x=torch.tensor(x), index=torch.tensor([3, 1]))["y"]
    np.testing.assert_array_equal(y.numpy(), x[[3, 1]])


@pytest.mark.parametrize("bad", [-0.5, 4.0, 7.0])
def test_batch_reindex_rejects_indices_outside_the_batch(bad: float) -> None:
    with pytest.raises(LayerError, match=r"'br' \(BatchReindex\): index .* is outside the batch \[0, 4\)"):
        _reindex_net(2)(x=torch.zeros(4, 3, 5), index=torch.tensor([1.0, bad]))


def test_batch_reindex_index_must_be_1d() -> None:
    build_error(
        'layer { name: "br" type: "BatchReindex" bottom: "x" bottom: "index" top: "y" }',
        {"x": (4, 3), "index": (2, 1)},
        r"'br' \(BatchReindex\): the index \(bottom 1\) must be 1-D",
    )


# -- Filter -----------------------------------------------------------------------------------------

FILTER = (
    'layer { name: "f" type: "Filter" bottom: "x" bottom: "label" bottom: "keep" top: "y" top: "label_kept" }\n'
    'layer { name: "s" type: "Scale" bottom: "y" top: "z" scale_param { bias_term: true } }\n'
)
FILTER_SHAPES = {"x": (5, 3, 4), "label": (5,), "keep": (5, 1, 1)}


def test_filter_keeps_items_with_non_zero_selector() -> None:
    net = make_net(FILTER, FILTER_SHAPES)
    assert net.blob_shapes["y"] == (5, 3, 4)  # at build, all items (Caffe's first Reshape)
    x, label = rand(70, (5, 3, 4)), np.arange(5, dtype=np.float32)
    keep = np.array([0, 2.5, 0, -1, np.nan], dtype=np.float32).reshape(5, 1, 1)  # NaN is non-zero
    xt = leaf(x)
    outs = net(x=xt, label=torch.tensor(label), keep=torch.tensor(keep))
    kept = [1, 3, 4]
    np.testing.assert_array_equal(outs["label_kept"].numpy(), label[kept])
    np.testing.assert_array_equal(net.blobs["y"].detach().numpy(), x[kept])
    dz = rand(71, (3, 3, 4))
    outs["z"].backward(torch.tensor(dz))
    expected = np.zeros_like(x)
    expected[kept] = dz  # Scale's weight is 1 by default
    np.testing.assert_array_equal(xt.grad.numpy(), expected)
    # nothing kept: empty tops
    outs = net(x=torch.tensor(x), label=torch.tensor(label), keep=torch.zeros(5, 1, 1))
    assert outs["z"].shape == (0, 3, 4) and outs["label_kept"].shape == (0,)


def test_filter_one_top() -> None:
    net = make_net(
        'layer { name: "f" type: "Filter" bottom: "x" bottom: "keep" top: "y" }', {"x": (3, 2), "keep": (3,)}
    )
    y = net(x=torch.tensor([[1.0, 2], [3, 4], [5, 6]]), keep=torch.tensor([1.0, 0, 1]))["y"]
    np.testing.assert_array_equal(y.numpy(), [[1, 2], [5, 6]])


@pytest.mark.parametrize(
    ("text", "shapes", "match"),
    [
        (
            'bottom: "x" bottom: "keep" top: "y" top: "w"',
            {"x": (5, 3), "keep": (5,)},
            "one top per filtered bottom",
        ),
        ('bottom: "keep" top: "y"', {"keep": (5,)}, "at least 2 bottom blobs"),
        ('bottom: "x" bottom: "keep" top: "y"', {"x": (5, 3), "keep": (5, 2)}, "must be singletons"),
        (
            'bottom: "x" bottom: "keep" top: "y"',
            {"x": (4, 3), "keep": (5, 1)},
            "bottom 0 has shape \\[4, 3\\]",
        ),
    ],
)
def test_filter_bad_configs(text: str, shapes: dict[str, tuple[int, ...]], match: str) -> None:
    build_error(f'layer {{ name: "f" type: "Filter" {text} }}', shapes, rf"'f' \(Filter\): .*{match}")


@pytest.mark.parametrize("fmt", ["py", "onnx", "torchscript"])
def test_filter_export_is_refused_with_a_clear_error(fmt: str, tmp_path: Path) -> None:
    prototxt = tmp_path / "filter.prototxt"
    prototxt.write_text(inputs_text(FILTER_SHAPES) + FILTER)
    weights = tmp_path / "filter.caffemodel"
    cc.Net(prototxt, phase="TEST").save_caffemodel(weights)
    with pytest.raises(ExportError, match=r"layer 'f' \(Filter\) cannot be exported: the number of items"):
        convert(prototxt, weights, fmt, tmp_path / f"out.{fmt}")


# -- exports of the traceable types, float64 -------------------------------------------------------


def test_reindex_permute_and_combine_layers_export(tmp_path: Path) -> None:
    text = inputs_text({"x": (4, 3, 5, 6), "index": (3,), "a": (3, 3)}) + (
        'layer { name: "br" type: "BatchReindex" bottom: "x" bottom: "index" top: "r" }\n'
        'layer { name: "pm" type: "Permute" bottom: "r" top: "p" permute_param { order: 0 order: 1 order: 3 order: 2 } }\n'
        'layer { name: "sl" type: "Slope" bottom: "p" top: "s" }\n'
        'layer { name: "g" type: "Gram" bottom: "s" top: "gm" }\n'
        'layer { name: "ax" type: "Axpy" bottom: "a" bottom: "p" bottom: "p" top: "z" }\n'
        'layer { name: "tr" type: "Truncation" bottom: "z" top: "t" }\n'
        'layer { name: "co" type: "Cosine" bottom: "t" top: "c" }\n'
    )
    prototxt = tmp_path / "mix.prototxt"
    prototxt.write_text(text)
    weights = tmp_path / "mix.caffemodel"
    cc.Net(prototxt, phase="TEST").save_caffemodel(weights)
    inputs = {
        "x": torch.tensor(rand(80, (4, 3, 5, 6))),
        "index": torch.tensor([3.0, 0, 3]),
        "a": torch.tensor(rand(81, (3, 3))),
    }
    for fmt in ("py", "onnx"):
        result = convert(prototxt, weights, fmt, tmp_path / f"mix.{fmt}", inputs=inputs)
        assert result.verification is not None and result.verification.ok
        assert max(c.max_rel for c in result.verification.checks) <= 1e-5


def test_layers_run_in_float64() -> None:
    text = inputs_text({"x": (2, 3, 4, 5), "a": (2, 3)}) + (
        'layer { name: "ac" type: "Arccos" bottom: "x" top: "ac" }\n'
        'layer { name: "st" type: "SoftTruncation" bottom: "x" top: "st" }\n'
        'layer { name: "rr" type: "Insanity" bottom: "x" top: "rr" }\n'
        'layer { name: "ax" type: "Axpy" bottom: "a" bottom: "st" bottom: "rr" top: "z" }\n'
        'layer { name: "sl" type: "Slope" bottom: "z" top: "s" }\n'
        'layer { name: "pm" type: "Permute" bottom: "s" top: "p" permute_param { order: 3 } }\n'
        'layer { name: "g" type: "Gram" bottom: "ac" top: "gm" }\n'
    )
    x = torch.tensor(np.random.default_rng(90).uniform(-0.9, 0.9, (2, 3, 4, 5)), requires_grad=True)
    a = torch.tensor(np.random.default_rng(91).standard_normal((2, 3)), requires_grad=True)
    outs = cc.Net(text, phase="TRAIN")(x=x, a=a)
    assert all(t.dtype == torch.float64 for t in outs.values())
    (outs["p"].sum() + outs["gm"].sum()).backward()
    assert x.grad.dtype == torch.float64 and a.grad.dtype == torch.float64
    np.testing.assert_allclose(
        outs["gm"].detach().numpy()[0, 0, 0, 0],
        (np.arccos(x.detach().numpy()[0, 0]) ** 2).sum() / 20 / 3,
        rtol=1e-12,
    )
