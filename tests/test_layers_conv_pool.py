"""Convolution, Deconvolution and Pooling beyond the goldens.

References are independent float64 numpy transcriptions of Caffe's loops (``pooling_layer.cpp``
Forward_cpu/Backward_cpu, ``conv_layer.cpp``/``deconv_layer.cpp`` through im2col/col2im written as
shifted slices); gradients are also checked with ``torch.autograd.gradcheck`` in float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import CaffeCompatError, LayerError
from caffe_compat.layers.conv import Convolution, Deconvolution
from caffe_compat.layers.pooling import NEG_FLT_MAX, Pooling

FLT_MAX = 3.4028234663852886e38


# -- helpers ---------------------------------------------------------------------------------------
def single_layer_net(
    layer: str, shapes: dict[str, tuple[int, ...]] | None = None, phase: str = "TRAIN"
) -> cc.Net:
    shapes = shapes or {"x": (2, 3, 5, 7)}
    inputs = "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in shape)
        + " } } }\n"
        for name, shape in shapes.items()
    )
    return cc.Net(inputs + layer, phase=phase)


def pool_layer(param: str, tops: str = 'top: "y"') -> str:
    return f'layer {{ name: "pool" type: "Pooling" bottom: "x" {tops} pooling_param {{ {param} }} }}'


def conv_layer(
    param: str, kind: str = "Convolution", bottoms: str = 'bottom: "x"', tops: str = 'top: "y"'
) -> str:
    return f'layer {{ name: "conv" type: "{kind}" {bottoms} {tops} convolution_param {{ {param} }} }}'


# -- numpy transcription of Caffe's pooling loops ------------------------------------------------------
def caffe_pool_reference(
    x: np.ndarray,
    top_diff_fn,
    method: str,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    pad: tuple[int, int],
    ceil: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caffe's MAX/AVE forward (top, mask) and backward (bottom diff) in float64."""
    n_, c_, height, width = x.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, pad
    rounding = math.ceil if ceil else math.floor
    pooled_h = int(rounding((height + 2 * ph - kh) / sh)) + 1
    pooled_w = int(rounding((width + 2 * pw - kw) / sw)) + 1
    if ph or pw:
        if (pooled_h - 1) * sh >= height + ph:
            pooled_h -= 1
        if (pooled_w - 1) * sw >= width + pw:
            pooled_w -= 1
    top = np.zeros((n_, c_, pooled_h, pooled_w))
    mask = np.full(top.shape, -1.0)
    top_diff = top_diff_fn(top.shape)
    bottom_diff = np.zeros_like(x)
    for n, c, i, j in itertools.product(range(n_), range(c_), range(pooled_h), range(pooled_w)):
        plane, diff_plane = x[n, c], bottom_diff[n, c]
        hstart, wstart = i * sh - ph, j * sw - pw
        if method == "MAX":
            hend, wend = min(hstart + kh, height), min(wstart + kw, width)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            best, index = -FLT_MAX, -1
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    if plane[h, w] > best:
                        best, index = plane[h, w], h * width + w
            top[n, c, i, j], mask[n, c, i, j] = best, index
            if index >= 0:
                diff_plane[index // width, index % width] += top_diff[n, c, i, j]
        else:
            hend, wend = min(hstart + kh, height + ph), min(wstart + kw, width + pw)
            pool_size = (hend - hstart) * (wend - wstart)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            hend, wend = min(hend, height), min(wend, width)
            total = 0.0
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    total += plane[h, w]
            with np.errstate(divide="ignore", invalid="ignore"):
                top[n, c, i, j] = np.float64(total) / pool_size
                share = np.float64(top_diff[n, c, i, j]) / pool_size
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    diff_plane[h, w] += share
    return top, mask, bottom_diff


def pooling_grid() -> list[tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]]:
    kernels = [(1, 1), (2, 2), (3, 3), (4, 4), (3, 2), (2, 4)]
    strides = [(1, 1), (2, 2), (3, 3), (5, 5), (2, 1), (1, 3)]
    pads = [(0, 0), (1, 1), (2, 2), (3, 3), (1, 0), (0, 2)]
    sizes = [(4, 5), (7, 6), (5, 5)]
    grid = []
    for kernel, stride, pad in itertools.product(kernels, strides, pads):
        if pad[0] < kernel[0] and pad[1] < kernel[1]:
            grid.append((kernel, stride, pad, sizes[len(grid) % len(sizes)]))
    return grid


@pytest.mark.parametrize("ceil", [True, False], ids=["ceil", "floor"])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffe_loops(method: str, ceil: bool) -> None:
    """Forward, mask and backward equal Caffe's loops, including pad >= kernel/2, pad 0 with
    stride > kernel (windows wholly outside: -FLT_MAX, or AVE's 0/0), and negative inputs."""
    rng = np.random.default_rng(0)
    checked = fused = 0
    for kernel, stride, pad, (height, width) in pooling_grid():
        x_np = rng.standard_normal((1, 2, height, width)) - 1.5  # mostly negative: padding must never win
        try:
            layer = Pooling(method, kernel, stride, pad, ceil_mode=ceil, mask_top=method == "MAX")
            layer.output_size(height, width)
        except LayerError:
            span_h = height + 2 * pad[0] - kernel[0]
            span_w = width + 2 * pad[1] - kernel[1]
            assert min(span_h, span_w) < 0, (kernel, stride, pad, height, width)
            continue
        diff_values = {}

        def diff_fn(shape, _values=diff_values):
            _values["d"] = rng.standard_normal(shape)
            return _values["d"]

        expected, expected_mask, expected_grad = caffe_pool_reference(
            x_np, diff_fn, method, kernel, stride, pad, ceil
        )
        x = torch.tensor(x_np, requires_grad=True)
        out = layer(x)
        if method == "MAX":
            out, mask = out
            np.testing.assert_array_equal(mask.numpy(), expected_mask)
        what = f"{method} kernel={kernel} stride={stride} pad={pad} size={(height, width)}"
        assert tuple(out.shape) == expected.shape, what
        assert layer.top_shapes([tuple(x.shape)])[0] == expected.shape, what
        np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-12, atol=1e-12, err_msg=what)
        out.backward(torch.tensor(diff_values["d"]))
        np.testing.assert_allclose(x.grad.numpy(), expected_grad, rtol=1e-12, atol=1e-12, err_msg=what)
        checked += 1
        fused += layer._fused_ok(height, width, tuple(out.shape[2:]))
    assert checked > 80 and 0 < fused < checked  # both the fused and the explicit-pad path ran


def test_pooling_out_of_image_windows_follow_caffe() -> None:
    """Pad 0, stride > kernel: Caffe keeps a last window outside the image (PyTorch would drop it)."""
    x = torch.arange(25.0).reshape(1, 1, 5, 5) - 30.0
    top, mask = Pooling("MAX", (1, 1), (3, 3), (0, 0), mask_top=True)(x)
    assert top.shape == (1, 1, 3, 3)
    assert top[0, 0, 2, 2].item() == NEG_FLT_MAX and top[0, 0, 0, 0].item() == -30.0
    assert mask[0, 0].tolist() == [[0.0, 3.0, -1.0], [15.0, 18.0, -1.0], [-1.0, -1.0, -1.0]]
    ave = Pooling("AVE", (1, 1), (2, 2), (0, 0))(torch.ones(1, 1, 4, 4))
    assert ave.shape == (1, 1, 3, 3)
    assert torch.isnan(ave[0, 0, 2]).all() and torch.isnan(ave[0, 0, :, 2]).all()  # pool_size 0: 0/0
    assert torch.equal(ave[0, 0, :2, :2], torch.ones(2, 2))


def test_pooling_ave_divisor_counts_padding_not_overhang() -> None:
    """AVE over ones: 1 inside, (cells in image)/(window within the padded border) at the edges."""
    out = Pooling("AVE", (3, 3), (2, 2), (1, 1))(torch.ones(1, 1, 4, 4))
    # rows: windows [-1,2) -> 2/3, [1,4) -> 3/3, [3,5) clipped to the padded border (4+1) -> 1/2
    row = torch.tensor([2 / 3, 1.0, 1 / 2])
    torch.testing.assert_close(out[0, 0], row[:, None] * row[None, :])


def test_global_pooling_and_rounding_fields() -> None:
    net = single_layer_net(pool_layer("pool: MAX global_pooling: true"))
    x = torch.randn(2, 3, 5, 7)
    torch.testing.assert_close(net(x=x)["y"], x.amax(dim=(2, 3), keepdim=True))
    net = single_layer_net(pool_layer("pool: AVE global_pooling: true"))
    torch.testing.assert_close(net(x=x)["y"], x.mean(dim=(2, 3), keepdim=True))
    shapes = {}
    for extra in ["", "round_mode: FLOOR", "ceil_mode: false", "round_mode: CEIL ceil_mode: true"]:
        net = single_layer_net(pool_layer(f"pool: MAX kernel_size: 2 stride: 2 {extra}"))
        shapes[extra] = tuple(net(x=x)["y"].shape)
    assert shapes[""] == shapes["round_mode: CEIL ceil_mode: true"] == (2, 3, 3, 4)
    assert shapes["round_mode: FLOOR"] == shapes["ceil_mode: false"] == (2, 3, 2, 3)


def test_pooling_kernel_overhanging_input_by_less_than_stride() -> None:
    """Caffe's ceil gives one output when H + 2p - k is in (-s, 0); the window is clipped."""
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    top = Pooling("MAX", (4, 4), (2, 2), (0, 0))(x)
    torch.testing.assert_close(top, x.amax(dim=(2, 3), keepdim=True))
    ave = Pooling("AVE", (4, 4), (2, 2), (0, 0))(x)
    torch.testing.assert_close(ave, x.sum(dim=(2, 3), keepdim=True) / 9.0)  # divisor clipped to H + p


def test_stochastic_pooling_test_phase_is_weighted_average() -> None:
    net = single_layer_net(pool_layer("pool: STOCHASTIC kernel_size: 2 stride: 2"), phase="TEST")
    x = torch.rand(2, 3, 5, 7) - 0.2
    y = net(x=x)["y"]
    assert y.shape == (2, 3, 3, 4)
    xp = torch.nn.functional.pad(x, (0, 1, 0, 1))
    windows = xp.unfold(2, 2, 2).unfold(3, 2, 2)  # (N, C, 3, 4, 2, 2), zeros past the image
    total = windows.sum(dim=(-1, -2))
    expected = torch.where(total > 0, (windows**2).sum(dim=(-1, -2)) / total, torch.zeros_like(total))
    torch.testing.assert_close(y, expected)


@pytest.mark.parametrize(
    "config",
    [
        ("MAX", (3, 3), (2, 2), (1, 1), True, (5, 6)),  # fused
        ("MAX", (3, 3), (1, 1), (2, 2), True, (5, 6)),  # pad > kernel/2: explicit -inf pad
        ("MAX", (2, 2), (3, 3), (0, 0), True, (5, 5)),  # pad 0, stride > kernel: Caffe keeps the overhang
        ("MAX", (3, 2), (2, 1), (0, 1), False, (6, 5)),
        ("AVE", (3, 3), (2, 2), (1, 1), True, (5, 6)),
        ("AVE", (3, 3), (1, 1), (2, 2), True, (5, 6)),
        ("AVE", (2, 2), (3, 3), (0, 0), True, (5, 5)),
        ("AVE", (4, 3), (3, 2), (1, 2), False, (7, 6)),
        ("MAX", None, (1, 1), (0, 0), True, (4, 3)),
        ("AVE", None, (1, 1), (0, 0), True, (4, 3)),
    ],
)
def test_pooling_gradcheck(config: tuple) -> None:
    method, kernel, stride, pad, ceil, size = config
    layer = Pooling(method, kernel, stride, pad, ceil_mode=ceil)
    x = torch.randn(1, 2, *size, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))


# -- convolution references ------------------------------------------------------------------------
def conv_reference(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, stride: tuple, pad: tuple, dilation: tuple, group: int
) -> np.ndarray:
    """Caffe's im2col + GEMM as shifted slices, N-D, float64 (output size with C truncation)."""
    n_, c_ = x.shape[:2]
    kernel = w.shape[2:]
    out = []
    for size, k, s, p, d in zip(x.shape[2:], kernel, stride, pad, dilation, strict=True):
        span = size + 2 * p - (d * (k - 1) + 1)
        out.append(int(span / s) + 1)
    margin = [
        (p, p + d * k + s * o) for p, d, k, s, o in zip(pad, dilation, kernel, stride, out, strict=True)
    ]
    xp = np.pad(x, [(0, 0), (0, 0), *margin])
    o_, cg = w.shape[0], c_ // group
    og = o_ // group
    y = np.zeros((n_, o_, *out))
    for g in range(group):
        for offsets in itertools.product(*(range(k) for k in kernel)):
            index = tuple(
                slice(a * d, a * d + s * (o - 1) + 1, s)
                for a, d, s, o in zip(offsets, dilation, stride, out, strict=True)
            )
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg), *index)]
            weight = w[(slice(g * og, (g + 1) * og), slice(None), *offsets)]
            y[:, g * og : (g + 1) * og] += np.einsum("nc...,oc->no...", patch, weight)
    if b is not None:
        y += b.reshape((1, -1) + (1,) * len(kernel))
    return y


def deconv_reference(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: tuple,
    pad: tuple,
    dilation: tuple,
    group: int,
    offset: tuple | None = None,
) -> np.ndarray:
    """Caffe's GEMM + col2im as scatter-adds of shifted slices, then the pad crop, float64."""
    n_, c_ = x.shape[:2]
    kernel = w.shape[2:]
    offset = offset or (0,) * len(kernel)
    out = [
        s * (i - 1) + d * (k - 1) + 1 - 2 * p + o
        for i, k, s, p, d, o in zip(x.shape[2:], kernel, stride, pad, dilation, offset, strict=True)
    ]
    full = [
        p + o + s * i + d * k
        for p, o, s, i, d, k in zip(pad, out, stride, x.shape[2:], dilation, kernel, strict=True)
    ]
    cg, og = c_ // group, w.shape[1]
    y = np.zeros((n_, og * group, *full))
    for g in range(group):
        for offsets in itertools.product(*(range(k) for k in kernel)):
            index = tuple(
                slice(a * d, a * d + s * (i - 1) + 1, s)
                for a, d, s, i in zip(offsets, dilation, stride, x.shape[2:], strict=True)
            )
            weight = w[(slice(g * cg, (g + 1) * cg), slice(None), *offsets)]
            y[(slice(None), slice(g * og, (g + 1) * og), *index)] += np.einsum(
                "nc...,co->no...", x[:, g * cg : (g + 1) * cg], weight
            )
    crop = tuple(slice(p, p + o) for p, o in zip(pad, out, strict=True))
    y = y[(slice(None), slice(None), *crop)]
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * len(kernel))
    return y


CONV_CONFIGS = [
    # (input shape, num_output, kernel, stride, pad, dilation, group)
    ((2, 4, 6, 7), 6, (3, 3), (1, 1), (1, 1), (1, 1), 1),
    ((2, 4, 6, 7), 6, (3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((1, 6, 7, 5), 3, (2, 3), (3, 2), (2, 1), (2, 1), 3),
    ((1, 2, 3, 4), 2, (5, 5), (3, 3), (1, 1), (1, 1), 1),  # kernel overhangs the padded input: C truncation
    ((2, 3, 9), 4, (3,), (2,), (1,), (2,), 1),  # 1-D
    ((1, 2, 4, 5, 3), 4, (2, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2), 2),  # 3-D
]


@pytest.mark.parametrize("config", CONV_CONFIGS)
def test_convolution_matches_reference(config: tuple) -> None:
    shape, num_output, kernel, stride, pad, dilation, group = config
    layer = Convolution(shape[1], num_output, kernel, stride, pad, dilation, group).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64)
    expected = conv_reference(
        x.numpy(), layer.weight.detach().numpy(), layer.bias.detach().numpy(), stride, pad, dilation, group
    )
    y = layer(x)
    assert tuple(y.shape) == expected.shape == layer.top_shapes([shape])[0]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("config", [*CONV_CONFIGS[:3], CONV_CONFIGS[4], CONV_CONFIGS[5]])
@pytest.mark.parametrize("with_offset", [False, True])
def test_deconvolution_matches_reference(config: tuple, with_offset: bool) -> None:
    shape, num_output, kernel, stride, pad, dilation, group = config
    offset = tuple(s - 1 for s in stride) if with_offset else None
    layer = Deconvolution(
        shape[1], num_output, kernel, stride, pad, dilation, group, shape_offset=offset
    ).double()
    assert tuple(layer.weight.shape) == (shape[1], num_output // group, *kernel)
    with torch.no_grad():
        layer.weight.normal_()
        layer.bias.normal_()
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    weight, bias = layer.weight.detach().numpy(), layer.bias.detach().numpy()
    expected = deconv_reference(x.detach().numpy(), weight, bias, stride, pad, dilation, group, offset)
    y = layer(x)
    assert tuple(y.shape) == expected.shape == layer.top_shapes([shape])[0]
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("cls", [Convolution, Deconvolution])
def test_convolution_gradcheck(cls: type) -> None:
    """Input, weight and bias gradients (Caffe's backward is the exact gradient)."""
    layer = cls(4, 2, (3, 2), (2, 1), (1, 1), (1, 2), 2).double()
    x = torch.randn(1, 4, 4, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(layer.weight.shape, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

    def run(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"weight": weight, "bias": bias}, (x,))

    assert torch.autograd.gradcheck(run, (x, weight, bias))


def test_convolution_from_prototxt_fields_axis_and_bottoms() -> None:
    """_h/_w fields, per-axis repeated values, fillers, bias_term, several bottoms, axis 2."""
    net = single_layer_net(
        conv_layer(
            "num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 bias_term: false "
            'weight_filler { type: "constant" value: 0.5 }'
        )
    )
    conv = net.layers["conv"]
    assert conv.bias is None and conv.kernel_size == (3, 2) and conv.stride == (2, 1) and conv.pad == (1, 0)
    assert tuple(conv.weight.shape) == (4, 3, 3, 2) and bool((conv.weight == 0.5).all())
    x = torch.randn(2, 3, 5, 7)
    expected = torch.nn.functional.conv2d(x, conv.weight, None, (2, 1), (1, 0))
    torch.testing.assert_close(net(x=x)["y"], expected)

    net = single_layer_net(
        conv_layer(
            "num_output: 2 kernel_size: 3 kernel_size: 1 pad: 1 pad: 0 stride: 1 stride: 2 dilation: 2 "
            'bias_filler { type: "constant" value: 0.25 }',
            bottoms='bottom: "x" bottom: "z"',
            tops='top: "y" top: "w"',
        ),
        shapes={"x": (2, 3, 5, 7), "z": (2, 3, 5, 7)},
    )
    conv = net.layers["conv"]
    assert (
        conv.kernel_size == (3, 1)
        and conv.pad == (1, 0)
        and conv.stride == (1, 2)
        and conv.dilation == (2, 2)
    )
    assert bool((conv.bias == 0.25).all()) and bool((conv.weight == 0).all())  # Caffe's default filler
    with torch.no_grad():
        conv.weight.normal_()
    z = torch.randn(2, 3, 5, 7)
    outs = net(x=x, z=z)
    ref = conv_reference(
        z.double().numpy(),
        conv.weight.detach().double().numpy(),
        conv.bias.detach().double().numpy(),
        (1, 2),
        (1, 0),
        (2, 2),
        1,
    )
    np.testing.assert_allclose(outs["w"].detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    assert outs["y"].shape == outs["w"].shape == (2, 2, 3, 4)

    net = single_layer_net(conv_layer("num_output: 4 kernel_size: 2 axis: 2"), shapes={"x": (2, 3, 5, 6, 7)})
    conv = net.layers["conv"]
    with torch.no_grad():
        conv.weight.normal_()
    x5 = torch.randn(2, 3, 5, 6, 7)
    y = net(x=x5)["y"]
    assert y.shape == (2, 3, 4, 5, 6)
    flat = torch.nn.functional.conv2d(x5.reshape(6, 5, 6, 7), conv.weight, conv.bias)
    torch.testing.assert_close(y, flat.reshape(2, 3, 4, 5, 6))


def test_deconvolution_from_prototxt_output_size() -> None:
    net = single_layer_net(
        conv_layer("num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 3", kind="Deconvolution"),
        shapes={"x": (2, 3, 5, 7)},
    )
    deconv = net.layers["conv"]
    assert tuple(deconv.weight.shape) == (3, 2, 4, 4)
    assert net(x=torch.randn(2, 3, 5, 7))["y"].shape == (2, 6, 10, 14)  # s(i-1) + k - 2p
    net = single_layer_net(
        conv_layer(
            "num_output: 2 kernel_size: 3 stride: 2 dilation: 2 shape_offset: 1 shape_offset: 0",
            kind="Deconvolution",
        ),
        shapes={"x": (1, 3, 4, 5)},
    )
    assert net(x=torch.randn(1, 3, 4, 5))["y"].shape == (1, 2, 2 * 3 + 5 + 1, 2 * 4 + 5)


def test_examples_build_in_train_phase() -> None:
    for cls, shape in ((Convolution, (2, 4, 5, 7)), (Deconvolution, (2, 4, 5, 7)), (Pooling, (2, 3, 5, 7))):
        net = cc.Net(cls.example, phase="TRAIN")
        out = net(x=torch.randn(shape))
        assert len(out) == 1 and torch.isfinite(next(iter(out.values()))).all()


# -- errors ----------------------------------------------------------------------------------------
POOL_ERRORS = [
    ("pool: MAX", "needs kernel_size, or both kernel_h and kernel_w"),
    ("pool: MAX kernel_h: 2", "needs kernel_size, or both kernel_h and kernel_w"),
    ("pool: MAX kernel_size: 2 kernel_h: 2 kernel_w: 2", "kernel_size OR kernel_h and kernel_w; not both"),
    (
        "pool: MAX global_pooling: true kernel_size: 2",
        "global_pooling: true the filter size cannot be specified",
    ),
    ("pool: AVE global_pooling: true stride: 2", "only pad = 0 and stride = 1"),
    ("pool: MAX kernel_size: 2 pad: 1 pad_h: 1", "pad is pad OR pad_h and pad_w"),
    ("pool: MAX kernel_size: 2 stride_h: 2", "stride is stride OR stride_h and stride_w"),
    ("pool: MAX kernel_size: 2 pad: 2", r"pad \[2, 2\] must be smaller than the kernel \[2, 2\]"),
    ("pool: MAX kernel_size: 0", "filter dimensions cannot be zero"),
    ("pool: MAX kernel_size: 2 stride: 0", "stride dimensions cannot be zero"),
    ("pool: MAX kernel_size: 9", r"gives an empty output .* kernel is larger than the padded input"),
    ("pool: MAX kernel_size: 2 round_mode: FLOOR ceil_mode: true", "round_mode and ceil_mode contradict"),
    ("pool: STOCHASTIC kernel_size: 2", "STOCHASTIC pooling is not supported in TRAIN phase"),
    ("pool: STOCHASTIC kernel_size: 2 pad: 1", "padding is implemented only for AVE and MAX"),
    ("pool: DEF kernel_size: 2", "DEF .* is not supported"),
]


@pytest.mark.parametrize("param, message", POOL_ERRORS)
def test_pooling_errors(param: str, message: str) -> None:
    with pytest.raises(LayerError, match=rf"layer 'pool' \(Pooling\): .*{message}"):
        single_layer_net(pool_layer(param))


def test_pooling_top_and_shape_errors() -> None:
    with pytest.raises(LayerError, match="produces 1 top blob"):
        single_layer_net(pool_layer("pool: AVE kernel_size: 2", tops='top: "y" top: "m"'))
    with pytest.raises(LayerError, match="input must have 4 axes"):
        single_layer_net(pool_layer("pool: MAX kernel_size: 2"), shapes={"x": (2, 3, 5)})
    net = single_layer_net(pool_layer("pool: MAX kernel_size: 2 stride: 2", tops='top: "y" top: "m"'))
    out = net(x=torch.randn(2, 3, 5, 7))
    assert out["m"].shape == out["y"].shape == (2, 3, 3, 4) and not out["m"].requires_grad


CONV_ERRORS = [
    ("num_output: 4", "kernel_size must be specified once, or once per spatial dimension"),
    ("num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3", r"specified 3 times; 2 spatial dims"),
    ("num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", "either kernel_size or kernel_h/w"),
    ("num_output: 4 kernel_h: 3", "filter dimensions must be nonzero"),
    ("num_output: 4 kernel_size: 3 stride_h: 2", "stride dimensions must be nonzero"),
    ("num_output: 4 kernel_size: 3 pad: 1 pad_h: 1", "either pad or pad_h/w"),
    ("num_output: 4 kernel_size: 3 dilation: 0", "dilation dimensions must be nonzero"),
    ("kernel_size: 3", "num_output must be positive"),
    ("num_output: 4 kernel_size: 3 group: 2", r"input channels \(3\) are not a multiple of group \(2\)"),
    ("num_output: 5 kernel_size: 1 group: 3", r"num_output \(5\) should be a multiple of group \(3\)"),
    ("num_output: 4 kernel_size: 9", "kernel is larger than the padded input"),
    ("num_output: 4 kernel_size: 3 axis: 3", "0 spatial axes"),
    ("num_output: 4 kernel_size: 3 axis: 4", "axis 4 is out of range"),
]


@pytest.mark.parametrize("param, message", CONV_ERRORS)
def test_convolution_errors(param: str, message: str) -> None:
    with pytest.raises(LayerError, match=rf"layer 'conv' \(Convolution\): .*{message}"):
        single_layer_net(conv_layer(param))


def test_deconvolution_and_bottom_errors() -> None:
    with pytest.raises(LayerError, match="shape_offset .* must be smaller than the stride"):
        single_layer_net(
            conv_layer(
                "num_output: 2 kernel_size: 3 stride: 2 shape_offset: 2 shape_offset: 0", kind="Deconvolution"
            )
        )
    with pytest.raises(LayerError, match="shape_offset needs one value per spatial dimension"):
        single_layer_net(conv_layer("num_output: 2 kernel_size: 3 shape_offset: 0", kind="Deconvolution"))
    with pytest.raises(LayerError, match="empty output"):
        single_layer_net(
            conv_layer("num_output: 2 kernel_size: 1 pad: 3", kind="Deconvolution"),
            shapes={"x": (1, 3, 2, 2)},
        )
    with pytest.raises(LayerError, match="one top per bottom"):
        single_layer_net(conv_layer("num_output: 2 kernel_size: 1", tops='top: "y" top: "w"'))
    with pytest.raises(LayerError, match="same shape"):
        single_layer_net(
            conv_layer(
                "num_output: 2 kernel_size: 1", bottoms='bottom: "x" bottom: "z"', tops='top: "y" top: "w"'
            ),
            shapes={"x": (1, 3, 4, 4), "z": (1, 3, 4, 5)},
        )
    net = single_layer_net(conv_layer("num_output: 2 kernel_size: 1"))
    with pytest.raises(CaffeCompatError, match="does not fit 3 channels"):
        net(x=torch.randn(2, 4, 5, 7))
