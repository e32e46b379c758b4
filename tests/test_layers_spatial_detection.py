"""SPP, Resize, Transformer, SubRegion (spatial) and ROIPooling, PSROIPooling, Proposal, PredictBox,
Hotspot (detection) beyond the goldens.

References are independent transcriptions of the fork's loops written here (numpy, float64 unless
a float32 step decides an integer position): ``spp_layer.cpp`` + ``pooling_layer.cpp``,
``util_img.cpp`` (resize and its backward rules), ``transformer_layer.cpp``,
``subregion_layer.cpp``, ``roi_pooling_layer.cpp`` (forward) and ``roi_pooling_layer.cu``
(``ROIPoolBackward``), ``psroi_pooling_layer.cu`` (forward and backward kernels; the fork has no
CPU code), ``proposal_layer.cpp`` + ``nms.cpp``, ``predict_box_layer.cpp`` and
``hotspot_layer.cpp``. Exact gradients are also checked with ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.export.errors import ExportError
from caffe_compat.export.trace import flatten
from caffe_compat.layers.detection import Proposal
from caffe_compat.layers.pooling import Pooling
from caffe_compat.layers.spatial import SPP

FLT_MAX = 3.4028234663852886e38
f32 = np.float32


# -- helpers ---------------------------------------------------------------------------------------
def make_net(layer: str, shapes: dict[str, tuple[int, ...]], phase: str = "TRAIN") -> cc.Net:
    inputs = "".join(
        f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ '
        + " ".join(f"dim: {d}" for d in shape)
        + " } } }\n"
        for name, shape in shapes.items()
    )
    return cc.Net(inputs + layer, phase=phase)


def run(net: cc.Net, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    return net(**inputs)


def grads_of(top: torch.Tensor, wrt: list[torch.Tensor], top_diff: torch.Tensor) -> list[torch.Tensor]:
    grads = torch.autograd.grad(top, wrt, top_diff, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for g, w in zip(grads, wrt, strict=True)]


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- SPP -------------------------------------------------------------------------------------------
def caffe_pool(x: np.ndarray, dy: np.ndarray | None, method: str, k, s, p) -> tuple[np.ndarray, np.ndarray]:
    """pooling_layer.cpp Forward_cpu/Backward_cpu (MAX, AVE), ceil rounding with the padded clip."""
    n_, c_, height, width = x.shape
    pooled = []
    for size, kk, ss, pp in zip((height, width), k, s, p, strict=True):
        out = int(math.ceil((size + 2 * pp - kk) / ss)) + 1
        if (p[0] or p[1]) and (out - 1) * ss >= size + pp:
            out -= 1
        pooled.append(out)
    top = np.zeros((n_, c_, *pooled))
    diff = np.zeros_like(x)
    for n, c, i, j in itertools.product(range(n_), range(c_), range(pooled[0]), range(pooled[1])):
        hstart, wstart = i * s[0] - p[0], j * s[1] - p[1]
        if method == "MAX":
            hend, wend = min(hstart + k[0], height), min(wstart + k[1], width)
            hstart, wstart = max(hstart, 0), max(wstart, 0)
            best, at = -FLT_MAX, None
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    if x[n, c, h, w] > best:
                        best, at = x[n, c, h, w], (h, w)
            top[n, c, i, j] = best
            if dy is not None and at is not None:
                diff[n, c, at[0], at[1]] += dy[n, c, i, j]
        else:
            hend, wend = min(hstart + k[0], height + p[0]), min(wstart + k[1], width + p[1])
            size = (hend - hstart) * (wend - wstart)
            hstart, wstart, hend, wend = max(hstart, 0), max(wstart, 0), min(hend, height), min(wend, width)
            top[n, c, i, j] = x[n, c, hstart:hend, wstart:wend].sum() / size
            if dy is not None:
                diff[n, c, hstart:hend, wstart:wend] += dy[n, c, i, j] / size
    return top, diff


def caffe_spp(
    x: np.ndarray, dy: np.ndarray | None, levels: int, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """SPPLayer: GetPoolingParam per level, flatten, concat (the 4-D pooled top for one level)."""
    height, width = x.shape[2:]
    tops, diff, offset = [], np.zeros_like(x), 0
    for level in range(levels):
        bins = 2**level
        kernel = (int(math.ceil(height / bins)), int(math.ceil(width / bins)))
        pad = ((kernel[0] * bins - height + 1) // 2, (kernel[1] * bins - width + 1) // 2)
        shape = caffe_pool(x, None, method, kernel, kernel, pad)[0].shape
        part = None
        if dy is not None:
            size = int(np.prod(shape[1:]))
            part = dy.reshape(x.shape[0], -1)[:, offset : offset + size].reshape(shape)
            offset += size
        top, level_diff = caffe_pool(x, part, method, kernel, kernel, pad)
        tops.append(top)
        diff += level_diff
    if levels == 1:
        return tops[0], diff
    return np.concatenate([t.reshape(x.shape[0], -1) for t in tops], axis=1), diff


@pytest.mark.parametrize(
    "method,levels,shape",
    [
        ("MAX", 2, (2, 3, 5, 7)),
        ("AVE", 2, (2, 3, 5, 7)),
        ("MAX", 3, (1, 2, 9, 12)),
        ("AVE", 3, (2, 1, 8, 11)),
    ],
)
def test_spp_matches_caffe_loops(method: str, levels: int, shape: tuple[int, ...]) -> None:
    net = make_net(
        f'layer {{ name: "spp" type: "SPP" bottom: "x" top: "y" spp_param {{ pyramid_height: {levels} '
        f"pool: {method} }} }}",
        {"x": shape},
    )
    gen = rng(1)
    x = torch.tensor(gen.standard_normal(shape).round(1), requires_grad=True)  # ties: first max wins
    y = run(net, x=x)["y"]
    dy = gen.standard_normal(tuple(y.shape))
    ref_y, ref_dx = caffe_spp(x.detach().numpy(), dy, levels, method)
    assert y.shape == ref_y.shape
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-12, atol=1e-12)
    (dx,) = grads_of(y, [x], torch.tensor(dy))
    np.testing.assert_allclose(dx.numpy(), ref_dx, rtol=1e-12, atol=1e-12)


def test_spp_levels_are_caffe_pooling_layers_rebuilt_per_size() -> None:
    net = make_net(
        'layer { name: "spp" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 2 } }',
        {"x": (1, 2, 6, 6)},
    )
    module = net.layers["spp"]
    assert isinstance(module, SPP)
    pools = module.levels(6, 6)
    assert all(isinstance(p, Pooling) for p in pools)
    assert [(p.kernel, p.stride, p.pad) for p in pools] == [
        ((6, 6), (6, 6), (0, 0)),
        ((3, 3), (3, 3), (0, 0)),
    ]
    x = torch.randn(1, 2, 7, 10, dtype=torch.float64)  # another size: Caffe's Reshape rebuilds the levels
    y = run(net, x=x)["y"]
    np.testing.assert_allclose(y.numpy(), caffe_spp(x.numpy(), None, 2, "MAX")[0], rtol=1e-12)
    assert y.shape == (1, 2 * (1 + 4))


def test_spp_single_level_keeps_the_pooled_4d_top() -> None:
    net = make_net(
        'layer { name: "spp" type: "SPP" bottom: "x" top: "y" spp_param { pyramid_height: 1 pool: AVE } }',
        {"x": (2, 3, 4, 5)},
    )
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    y = run(net, x=x)["y"]
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y.numpy(), x.numpy().mean(axis=(2, 3), keepdims=True), rtol=1e-12)


@pytest.mark.parametrize(
    "param,shape,message",
    [
        (
            "pyramid_height: 3",
            (1, 1, 5, 7),
            "pad .* must be smaller than the kernel",
        ),  # level 2 of 5: k 2, pad 2
        ("", (1, 1, 5, 7), "pyramid_height must be at least 1"),
        ("pyramid_height: 2 pool: STOCHASTIC", (1, 1, 6, 6), "STOCHASTIC pooling is not supported in TRAIN"),
        ("pyramid_height: 2", (1, 6, 6), "4 axes"),
    ],
)
def test_spp_refuses_what_caffe_refuses(param: str, shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(LayerError, match=rf"layer 'spp' \(SPP\).*{message}"):
        make_net(
            f'layer {{ name: "spp" type: "SPP" bottom: "x" top: "y" spp_param {{ {param} }} }}', {"x": shape}
        )


# -- Resize ----------------------------------------------------------------------------------------
def caffe_resize(x: np.ndarray, out_h: int, out_w: int, dy: np.ndarray | None):
    """BiLinearResizeMat_cpu and the backward rules (GetBiLinearResizeMatRules_cpu), float64."""
    n_, c_, height, width = x.shape
    scale_h, scale_w = height / out_h, width / out_w
    top = np.zeros((n_, c_, out_h, out_w))
    diff = np.zeros_like(x)
    for n, c, i, j in itertools.product(range(n_), range(c_), range(out_h), range(out_w)):
        fh = i * scale_h
        sh = math.floor(fh)
        fh -= sh
        fw = j * scale_w
        sw = math.floor(fw)
        fw -= sw
        terms = [((sh, sw), abs(1 - fh) * abs(1 - fw))]
        if sw + 1 < width:
            terms.append(((sh, sw + 1), abs(1 - fh) * abs(fw)))
        if sh + 1 < height:
            terms.append(((sh + 1, sw), abs(fh) * abs(1 - fw)))
        if sw + 1 < width and sh + 1 < height:
            terms.append(((sh + 1, sw + 1), abs(fh) * abs(fw)))
        for (a, b), weight in terms:
            top[n, c, i, j] += weight * x[n, c, a, b]
            if dy is not None:
                diff[n, c, a, b] += dy[n, c, i, j] * weight
    return top, diff


@pytest.mark.parametrize(
    "size,out", [((5, 7), (9, 4)), ((8, 3), (3, 8)), ((4, 6), (4, 6)), ((2, 9), (7, 13))]
)
def test_resize_matches_caffe_loops(size: tuple[int, int], out: tuple[int, int]) -> None:
    net = make_net(
        f'layer {{ name: "r" type: "Resize" bottom: "x" top: "y" resize_param {{ height: {out[0]} width: {out[1]} }} }}',
        {"x": (2, 3, *size)},
    )
    gen = rng(2)
    x = torch.tensor(gen.standard_normal((2, 3, *size)), requires_grad=True)
    y = run(net, x=x)["y"]
    dy = gen.standard_normal((2, 3, *out))
    ref_y, ref_dx = caffe_resize(x.detach().numpy(), *out, dy)
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-12, atol=1e-12)
    (dx,) = grads_of(y, [x], torch.tensor(dy))
    np.testing.assert_allclose(dx.numpy(), ref_dx, rtol=1e-12, atol=1e-12)
    # float32 agrees too (the floors of scaled positions are taken in float32, as Caffe does)
    y32 = run(net, x=x.detach().float())["y"]
    np.testing.assert_allclose(y32.numpy(), ref_y, rtol=1e-5, atol=1e-6)


def test_resize_gradient_is_exact() -> None:
    net = make_net(
        'layer { name: "r" type: "Resize" bottom: "x" top: "y" resize_param { height: 7 width: 3 } }',
        {"x": (1, 2, 4, 5)},
    )
    module = net.layers["r"]
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(module, (x,))


def test_resize_pyramid_scales_follow_the_bottom() -> None:
    net = make_net(
        'layer { name: "r" type: "Resize" bottom: "x" top: "y" '
        "resize_param { is_pyramid_test: true out_height_scale: 0.7 out_width_scale: 1.3 } }",
        {"x": (1, 2, 10, 7)},
    )
    assert net.blob_shapes["y"] == (1, 2, 7, 9)  # int(0.7f * 10) = 7, int(1.3f * 7) = 9
    x = torch.randn(1, 2, 13, 5, dtype=torch.float64)
    y = run(net, x=x)["y"]
    out = (int(f32(0.7) * f32(13)), int(f32(1.3) * f32(5)))
    assert tuple(y.shape[2:]) == out == (9, 6)
    np.testing.assert_allclose(y.numpy(), caffe_resize(x.numpy(), *out, None)[0], rtol=1e-12)


@pytest.mark.parametrize(
    "param,message",
    [
        ("height: 4", "height and resize_param.width"),
        ("is_pyramid_test: true out_height_scale: 2", "out_height_scale and out_width_scale are required"),
        ("is_pyramid_test: true out_height_scale: 0.1 out_width_scale: 1", "at least 1"),
    ],
)
def test_resize_refuses_incomplete_sizes(param: str, message: str) -> None:
    with pytest.raises(LayerError, match=rf"layer 'r' \(Resize\).*{message}"):
        make_net(
            f'layer {{ name: "r" type: "Resize" bottom: "x" top: "y" resize_param {{ {param} }} }}',
            {"x": (1, 1, 5, 5)},
        )


# -- Transformer -----------------------------------------------------------------------------------
def caffe_transformer(x: np.ndarray, theta: np.ndarray, dy: np.ndarray):
    """transformer_layer.cpp Forward_cpu / Backward_cpu in float64 (target written at i * H + j)."""
    n_, c_, height, width = x.shape
    target = np.zeros((3, height * width))
    for i in range(height):
        for j in range(width):
            target[0, i * height + j] = i / height * 2 - 1
            target[1, i * height + j] = j / width * 2 - 1
            target[2, i * height + j] = 1
    top, dx, dtheta = np.zeros_like(x), np.zeros_like(x), np.zeros((n_, 6))
    sign = np.sign
    for n in range(n_):
        th = theta.reshape(-1)[n * 6 : n * 6 + 6].reshape(2, 3)
        source = th[:, 0:1] * target[0] + th[:, 1:2] * target[1] + th[:, 2:3] * target[2]
        dsource = np.zeros_like(source)
        for i, j in itertools.product(range(height), range(width)):
            k = i * width + j
            u = source[0, k] * height / 2 + height / 2
            v = source[1, k] * width / 2 + width / 2
            if not (u >= 0 and u <= height - 1 and v >= 0 and v <= width - 1):
                continue
            for c in range(c_):
                for a in range(math.floor(u), math.ceil(u) + 1):
                    for b in range(math.floor(v), math.ceil(v) + 1):
                        wa, wb = 1 - abs(u - a), 1 - abs(v - b)
                        top[n, c, i, j] += x[n, c, a, b] * wa * wb
                        dx[n, c, a, b] += dy[n, c, i, j] * wa * wb
                        dsource[0, k] += dy[n, c, i, j] * x[n, c, a, b] * sign(a - u) * wb * height / 2
                        dsource[1, k] += dy[n, c, i, j] * x[n, c, a, b] * wa * sign(b - v) * width / 2
        dtheta[n] = (dsource @ target.T).reshape(6)
    return top, dx, dtheta


@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (2, 2, 4, 7), (1, 1, 6, 6)])
def test_transformer_matches_caffe_loops(shape: tuple[int, ...]) -> None:
    n_ = shape[0]
    net = make_net(
        'layer { name: "st" type: "Transformer" bottom: "x" bottom: "theta" top: "y" }',
        {"x": shape, "theta": (n_, 6)},
    )
    gen = rng(3)
    x = torch.tensor(gen.standard_normal(shape), requires_grad=True)
    theta_np = np.array([1, 0, 0, 0, 1, 0.0]) + 0.3 * gen.standard_normal((n_, 6))
    theta_np[0] = [0.8, 0.1, 0.05, -0.1, 1.3, -0.2]  # zooms out: some samples leave the image
    theta = torch.tensor(theta_np, requires_grad=True)
    y = run(net, x=x, theta=theta)["y"]
    dy = gen.standard_normal(shape)
    ref_y, ref_dx, ref_dtheta = caffe_transformer(x.detach().numpy(), theta_np, dy)
    np.testing.assert_allclose(y.detach().numpy(), ref_y, rtol=1e-10, atol=1e-12)
    dx, dtheta = grads_of(y, [x, theta], torch.tensor(dy))
    np.testing.assert_allclose(dx.numpy(), ref_dx, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dtheta.numpy(), ref_dtheta, rtol=1e-9, atol=1e-10)
    assert (y.detach().numpy() == 0).any() or shape[2] != shape[3]


def test_transformer_identity_samples_cells_and_theta_gets_no_diff_there() -> None:
    net = make_net(
        'layer { name: "st" type: "Transformer" bottom: "x" bottom: "theta" top: "y" }',
        {"x": (1, 2, 4, 4), "theta": (1, 6)},
    )
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([[1.0, 0, 0, 0, 1, 0]], dtype=torch.float64, requires_grad=True)
    y = run(net, x=x, theta=theta)["y"]
    torch.testing.assert_close(y, x, rtol=0, atol=0)  # 4 x 4: the target positions are exact integers
    dx, dtheta = grads_of(y, [x, theta], torch.ones_like(y))
    assert torch.equal(dtheta, torch.zeros_like(dtheta))  # sign(0) = 0 at integer positions
    assert torch.equal(dx, torch.ones_like(dx))


def test_transformer_refuses_tall_inputs_and_bad_theta() -> None:
    with pytest.raises(LayerError, match=r"layer 'st' \(Transformer\).*H > W"):
        make_net(
            'layer { name: "st" type: "Transformer" bottom: "x" bottom: "theta" top: "y" }',
            {"x": (1, 1, 6, 4), "theta": (1, 6)},
        )
    with pytest.raises(LayerError, match=r"layer 'st' \(Transformer\).*dimension must be 6"):
        make_net(
            'layer { name: "st" type: "Transformer" bottom: "x" bottom: "theta" top: "y" }',
            {"x": (1, 1, 4, 4), "theta": (1, 4)},
        )


# -- SubRegion -------------------------------------------------------------------------------------
def caffe_sub_region(x, points, truth, region, data_size, as_dim):
    """subregion_layer.cpp Forward_cpu (float32 centre as Caffe stores it)."""
    n_, c_, height, width = x.shape
    rh, rw = region
    dh, dw = data_size
    count = points.shape[1] // 2
    top = np.zeros((n_ * count, c_, rh, rw) if as_dim == 0 else (n_, c_ * count, rh, rw), dtype=x.dtype)
    offset, centre = np.zeros_like(points), np.zeros_like(points)
    for n, i in itertools.product(range(n_), range(count)):
        px, py = points[n, 2 * i], points[n, 2 * i + 1]
        cx = f32((float(f32(px) / f32(dw)) + 0.5) * width)
        cy = f32((float(f32(py) / f32(dh)) + 0.5) * height)
        x0 = math.floor(f32(cx - f32(rw // 2)))
        y0 = math.floor(f32(cy - f32(rh // 2)))
        centre[n, 2 * i] = f32(f32(float(f32(x0) + f32(rw) / f32(2)) + 0.5) / f32(width)) * f32(dw)
        centre[n, 2 * i + 1] = f32(f32(float(f32(y0) + f32(rh) / f32(2)) + 0.5) / f32(height)) * f32(dh)
        offset[n, 2 * i] = (f32(truth[n, 2 * i]) + f32(dw // 2)) - centre[n, 2 * i]
        offset[n, 2 * i + 1] = (f32(truth[n, 2 * i + 1]) + f32(dh // 2)) - centre[n, 2 * i + 1]
        for c, h, w in itertools.product(range(c_), range(rh), range(rw)):
            inside = 0 <= y0 + h <= height - 1 and 0 <= x0 + w <= width - 1
            value = x[n, c, y0 + h, x0 + w] if inside else 0
            if as_dim == 0:
                top[n_ * i + n, c, h, w] = value
            else:
                top[n, c_ * i + c, h, w] = value
    return top, offset, centre


@pytest.mark.parametrize("as_dim", [0, 1])
def test_sub_region_matches_caffe_loops(as_dim: int) -> None:
    shape, region, data_size = (2, 3, 6, 7), (3, 4), (30, 35)
    net = make_net(
        'layer { name: "sr" type: "SubRegion" bottom: "x" bottom: "p" bottom: "gt" top: "y" top: "off" top: "ctr" '
        f"sub_region_param {{ region_height: 3 region_width: 4 data_height: 30 data_width: 35 as_dim: {as_dim} }} }}",
        {"x": shape, "p": (2, 6), "gt": (2, 6)},
    )
    gen = rng(4)
    x = torch.tensor(gen.standard_normal(shape), dtype=torch.float32, requires_grad=True)
    points = torch.tensor(gen.uniform(-20, 20, (2, 6)), dtype=torch.float32)  # some crops leave the map
    truth = torch.tensor(gen.uniform(-15, 15, (2, 6)), dtype=torch.float32)
    out = run(net, x=x, p=points, gt=truth)
    ref_y, ref_off, ref_ctr = caffe_sub_region(
        x.detach().numpy(), points.numpy(), truth.numpy(), region, data_size, as_dim
    )
    np.testing.assert_array_equal(out["y"].detach().numpy(), ref_y)
    np.testing.assert_allclose(out["off"].numpy(), ref_off, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(out["ctr"].numpy(), ref_ctr, rtol=1e-6, atol=1e-5)
    assert (ref_y == 0).any() and (ref_y != 0).any()
    (dx,) = grads_of(out["y"], [x], torch.ones_like(out["y"]))
    assert torch.equal(dx, torch.zeros_like(x))  # Caffe's backward writes into the top's diff
    assert not out["off"].requires_grad and not out["ctr"].requires_grad


@pytest.mark.parametrize(
    "tops,shapes,message",
    [
        ('top: "y" top: "z"', {"x": (1, 1, 4, 4), "p": (1, 2), "gt": (1, 2)}, "1 or 3 top"),
        ('top: "y"', {"x": (1, 1, 4, 4), "p": (1, 3), "gt": (1, 3)}, "divisible by 2"),
        ('top: "y"', {"x": (1, 4, 4), "p": (1, 2), "gt": (1, 2)}, "4 axes"),
    ],
)
def test_sub_region_refuses_bad_configs(tops: str, shapes: dict, message: str) -> None:
    with pytest.raises(LayerError, match=rf"layer 'sr' \(SubRegion\).*{message}"):
        make_net(
            f'layer {{ name: "sr" type: "SubRegion" bottom: "x" bottom: "p" bottom: "gt" {tops} '
            "sub_region_param { region_height: 2 region_width: 2 data_height: 8 data_width: 8 } }",
            shapes,
        )


# -- ROIPooling ------------------------------------------------------------------------------------
def caffe_roi_pool(x, rois, pooled, scale, dy):
    """roi_pooling_layer.cpp Forward_cpu and roi_pooling_layer.cu ROIPoolBackward."""
    n_, c_, height, width = x.shape
    ph_, pw_ = pooled
    r_ = rois.shape[0]
    top = np.zeros((r_, c_, ph_, pw_))
    argmax = np.full((r_, c_, ph_, pw_), -1)

    def corners(roi):
        batch = int(roi[0])
        start_w, start_h, end_w, end_h = (math.floor(f32(v * scale + 0.5)) for v in roi[1:])
        return batch, start_w, start_h, end_w, end_h

    for r in range(r_):
        batch, start_w, start_h, end_w, end_h = corners(rois[r])
        roi_h, roi_w = max(end_h - start_h + 1, 1), max(end_w - start_w + 1, 1)
        bin_h, bin_w = roi_h / ph_, roi_w / pw_
        for c, ph, pw in itertools.product(range(c_), range(ph_), range(pw_)):
            hstart = min(max(math.floor(ph * bin_h) + start_h, 0), height)
            hend = min(max(math.ceil((ph + 1) * bin_h) + start_h, 0), height)
            wstart = min(max(math.floor(pw * bin_w) + start_w, 0), width)
            wend = min(max(math.ceil((pw + 1) * bin_w) + start_w, 0), width)
            best = 0.0 if (hend <= hstart or wend <= wstart) else -FLT_MAX
            for h in range(hstart, hend):
                for w in range(wstart, wend):
                    if x[batch, c, h, w] > best:
                        best, argmax[r, c, ph, pw] = x[batch, c, h, w], h * width + w
            top[r, c, ph, pw] = best
    diff = np.zeros_like(x)
    for n, c, h, w in itertools.product(range(n_), range(c_), range(height), range(width)):
        for r in range(r_):
            batch, start_w, start_h, end_w, end_h = corners(rois[r])
            if n != batch or not (start_w <= w <= end_w and start_h <= h <= end_h):
                continue
            roi_h, roi_w = max(end_h - start_h + 1, 1), max(end_w - start_w + 1, 1)
            bin_h, bin_w = roi_h / ph_, roi_w / pw_
            phstart = min(max(math.floor((h - start_h) / bin_h), 0), ph_)
            phend = min(max(math.ceil((h - start_h + 1) / bin_h), 0), ph_)
            pwstart = min(max(math.floor((w - start_w) / bin_w), 0), pw_)
            pwend = min(max(math.ceil((w - start_w + 1) / bin_w), 0), pw_)
            for ph in range(phstart, phend):
                for pw in range(pwstart, pwend):
                    if argmax[r, c, ph, pw] == h * width + w:
                        diff[n, c, h, w] += dy[r, c, ph, pw]
    return top, diff


ROIS = np.array(
    [
        [0, 0, 0, 15, 11],  # the whole map at scale 0.5
        [1, 3.2, 2.9, 9.7, 13.0],
        [0, 10, 4, 30, 25],  # reaches past the map
        [1, 9, 9, 5, 7],  # end < start: forced to one cell, and Caffe's GPU backward skips it
        [1, -6, -5, 2, 1],  # starts left of and above the map
        [0, 4, 4, 4, 4],
    ]
)


@pytest.mark.parametrize("pooled", [(3, 2), (2, 5), (4, 4)])
def test_roi_pooling_matches_caffe_loops(pooled: tuple[int, int]) -> None:
    net = make_net(
        'layer { name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        f"roi_pooling_param {{ pooled_h: {pooled[0]} pooled_w: {pooled[1]} spatial_scale: 0.5 }} }}",
        {"x": (2, 3, 6, 8), "rois": ROIS.shape},
    )
    gen = rng(5)
    x = torch.tensor(gen.integers(-3, 4, (2, 3, 6, 8)).astype(float), requires_grad=True)  # many ties
    y = run(net, x=x, rois=torch.tensor(ROIS))["y"]
    dy = gen.standard_normal(tuple(y.shape))
    ref_y, ref_dx = caffe_roi_pool(x.detach().numpy(), ROIS, pooled, 0.5, dy)
    np.testing.assert_array_equal(y.detach().numpy(), ref_y)
    (dx,) = grads_of(y, [x], torch.tensor(dy))
    np.testing.assert_allclose(dx.numpy(), ref_dx, rtol=1e-12, atol=1e-12)
    y32 = run(net, x=x.detach().float(), rois=torch.tensor(ROIS, dtype=torch.float32))["y"]
    np.testing.assert_array_equal(y32.numpy(), ref_y.astype(np.float32))


def test_roi_pooling_refuses_bad_batch_index_and_config() -> None:
    layer = (
        'layer { name: "roi" type: "ROIPooling" bottom: "x" bottom: "rois" top: "y" '
        "roi_pooling_param { pooled_h: 2 pooled_w: 2 } }"
    )
    net = make_net(layer, {"x": (2, 1, 4, 4), "rois": (1, 5)})
    with pytest.raises(LayerError, match=r"layer 'roi' \(ROIPooling\).*batch index 2 is outside \[0, 2\)"):
        run(net, x=torch.zeros(2, 1, 4, 4), rois=torch.tensor([[2.0, 0, 0, 1, 1]]))
    with pytest.raises(LayerError, match=r"layer 'roi' \(ROIPooling\).*pooled_h and pooled_w must be > 0"):
        make_net(layer.replace("pooled_w: 2 ", ""), {"x": (2, 1, 4, 4), "rois": (1, 5)})


# -- PSROIPooling ----------------------------------------------------------------------------------
def c_round(v: float) -> float:
    return math.copysign(math.floor(abs(v) + 0.5), v)


def caffe_psroi(x, rois, output_dim, group, scale, dy, real):
    """psroi_pooling_layer.cu PSROIPoolingForward / PSROIPoolingBackwardAtomic. ``real`` is Dtype;
    the bin bounds are the kernel's fused multiply-adds (one rounding)."""
    n_, c_, height, width = x.shape
    r_ = rois.shape[0]
    top = np.zeros((r_, output_dim, group, group))
    diff = np.zeros_like(x, dtype=np.float64)

    def fma(a, b, c):
        exact = float(a) * float(b) + float(c)
        return real(exact)

    for r, d, ph, pw in itertools.product(range(r_), range(output_dim), range(group), range(group)):
        roi = rois[r].astype(real)
        batch = int(roi[0])
        start_w = real(c_round(roi[1])) * real(scale)
        start_h = real(c_round(roi[2])) * real(scale)
        end_w = real(c_round(roi[3]) + 1.0) * real(scale)
        end_h = real(c_round(roi[4]) + 1.0) * real(scale)
        roi_w, roi_h = real(max(end_w - start_w, 0.1)), real(max(end_h - start_h, 0.1))
        bin_h, bin_w = roi_h / real(group), roi_w / real(group)
        hstart = min(max(math.floor(fma(ph, bin_h, start_h)), 0), height)
        wstart = min(max(math.floor(fma(pw, bin_w, start_w)), 0), width)
        hend = min(max(math.ceil(fma(ph + 1, bin_h, start_h)), 0), height)
        wend = min(max(math.ceil(fma(pw + 1, bin_w, start_w)), 0), width)
        empty = hend <= hstart or wend <= wstart
        c = (d * group + ph) * group + pw
        area = (hend - hstart) * (wend - wstart)
        total = x[batch, c, hstart:hend, wstart:wend].astype(np.float64).sum()
        top[r, d, ph, pw] = 0.0 if empty else total / area
        if not empty and dy is not None:
            diff[batch, c, hstart:hend, wstart:wend] += dy[r, d, ph, pw] / area
    return top, diff


PS_ROIS = np.array(
    [
        [0, 0, 0, 13, 11],
        [1, 2.5, 3.5, 9.49, 12.5],
        [0, 7, 1, 30, 4],
        [1, -4, -3, 3, 2],
        [0, 6, 6, 5, 5.5],
        [1, 2, 2, 14, 14],  # at scale 1/3 the last bin ends at fma(3, bin, start) = 5.0000005 -> 6, not 5
    ]
)


@pytest.mark.parametrize("scale", [0.5, 0.33333334])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_psroi_pooling_follows_the_cuda_kernels(dtype: torch.dtype, scale: float) -> None:
    output_dim, group = 2, 3
    shape = (2, output_dim * group * group, 6, 7)
    net = make_net(
        'layer { name: "ps" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
        f"psroi_pooling_param {{ spatial_scale: {scale} output_dim: {output_dim} group_size: {group} }} }}",
        {"x": shape, "rois": PS_ROIS.shape},
    )
    gen = rng(6)
    x = torch.tensor(gen.standard_normal(shape), dtype=dtype, requires_grad=True)
    y = run(net, x=x, rois=torch.tensor(PS_ROIS, dtype=dtype))["y"]
    dy = gen.standard_normal(tuple(y.shape))
    real = np.float64 if dtype == torch.float64 else np.float32
    ref_y, ref_dx = caffe_psroi(x.detach().double().numpy(), PS_ROIS, output_dim, group, f32(scale), dy, real)
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    np.testing.assert_allclose(y.detach().double().numpy(), ref_y, **tol)
    (dx,) = grads_of(y, [x], torch.tensor(dy, dtype=dtype))
    np.testing.assert_allclose(dx.double().numpy(), ref_dx, **tol)
    assert (ref_y == 0).any()  # an empty bin


def test_psroi_pooling_gradient_is_exact_and_config_is_checked() -> None:
    layer = (
        'layer { name: "ps" type: "PSROIPooling" bottom: "x" bottom: "rois" top: "y" '
        "psroi_pooling_param { spatial_scale: 1 output_dim: 1 group_size: 2 } }"
    )
    net = make_net(layer, {"x": (1, 4, 5, 5), "rois": (2, 5)})
    module = net.layers["ps"]
    x = torch.randn(1, 4, 5, 5, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0, 0, 4, 4], [0, 1, 2, 3, 3.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: module(t, rois), (x,))
    with pytest.raises(LayerError, match=r"layer 'ps' \(PSROIPooling\).*input channel number does not match"):
        make_net(layer, {"x": (1, 5, 5, 5), "rois": (2, 5)})
    with pytest.raises(LayerError, match=r"layer 'ps' \(PSROIPooling\).*needs group_size"):
        make_net(layer.replace(" group_size: 2", ""), {"x": (1, 4, 5, 5), "rois": (2, 5)})


# -- Proposal --------------------------------------------------------------------------------------
def sort_box_recursive(rows: list[list[float]], start: int, end: int, num_top: int) -> None:
    """proposal_layer.cpp sort_box, recursive as written."""
    pivot = rows[start][4]
    left, right = start + 1, end
    while left <= right:
        while left <= end and rows[left][4] >= pivot:
            left += 1
        while right > start and rows[right][4] <= pivot:
            right -= 1
        if left <= right:
            rows[left], rows[right] = rows[right], rows[left]
            left += 1
            right -= 1
    if right > start:
        rows[start], rows[right] = rows[right], rows[start]
    if start < right - 1:
        sort_box_recursive(rows, start, right - 1, num_top)
    if right + 1 < num_top and right + 1 < end:
        sort_box_recursive(rows, right + 1, end, num_top)


def caffe_proposal(scores, deltas, im_info, p: dict, sort=sort_box_recursive):
    """proposal_layer.cpp Forward_cpu with generate_anchors, transform_box and nms_cpu, float64."""
    n_, _, height, width = scores.shape
    base = p["base_size"]
    center = 0.5 * (base - 1.0)
    anchors = []
    for ratio in p["ratios"]:
        ratio_w = math.sqrt(base * base / ratio)
        ratio_h = ratio_w * ratio
        for scale in p["scales"]:
            half_w = 0.5 * int(ratio_w * scale * 1.0 / base - 1 + 0.5)
            half_h = 0.5 * int(ratio_h * scale * 1.0 / base - 1 + 0.5)
            anchors.append([center - half_w, center - half_h, center + half_w, center + half_h])
    count = len(anchors)
    img_h, img_w, scale_h, scale_w = im_info.reshape(-1)[:4]
    rois, roi_scores = [], []
    for n in range(n_):
        proposals = []
        for h, w, k in itertools.product(range(height), range(width), range(count)):
            x, y = w * p["feat_stride"], h * p["feat_stride"]
            box = [x + anchors[k][0], y + anchors[k][1], x + anchors[k][2], y + anchors[k][3]]
            dx, dy, dw, dh = (deltas[n, k * 4 + i, h, w] for i in range(4))
            bw, bh = box[2] - box[0] + 1, box[3] - box[1] + 1
            cx, cy = box[0] + 0.5 * bw, box[1] + 0.5 * bh
            pcx, pcy, pw, ph = dx * bw + cx, dy * bh + cy, math.exp(dw) * bw, math.exp(dh) * bh
            box = [pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph]
            box[0] = max(0.0, min(box[0], img_w - 1))
            box[1] = max(0.0, min(box[1], img_h - 1))
            box[2] = max(0.0, min(box[2], img_w - 1))
            box[3] = max(0.0, min(box[3], img_h - 1))
            big = (box[2] - box[0] + 1 >= p["min_size"] * scale_w) * (
                box[3] - box[1] + 1 >= p["min_size"] * scale_h
            )
            proposals.append([*box, big * scores[n, count + k, h, w]])
        sort(proposals, 0, len(proposals) - 1, p["pre_nms_topn"])
        top = proposals[: min(len(proposals), p["pre_nms_topn"])]
        dead = [False] * len(top)
        kept = []
        for i in range(len(top)):
            if dead[i]:
                continue
            kept.append(i)
            if len(kept) == p["post_nms_topn"]:
                break
            for j in range(i + 1, len(top)):
                a, b = top[i], top[j]
                if dead[j] or a[0] > b[2] or a[1] > b[3] or a[2] < b[0] or a[3] < b[1]:
                    continue
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
                inter = iw * ih
                union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
                if inter / union > p["nms_thresh"]:
                    dead[j] = True
        for i in kept:
            rois.append([n, *top[i][:4]])
            roi_scores.append(top[i][4])
    return np.array(rois).reshape(-1, 5), np.array(roi_scores)


PROPOSAL = {
    "ratios": [0.5, 1.0, 2.0],
    "scales": [16.0, 24.0],
    "base_size": 16,
    "feat_stride": 16,
    "min_size": 20,
    "pre_nms_topn": 30,
    "post_nms_topn": 7,
    "nms_thresh": 0.6,
}


def proposal_layer(p: dict) -> str:
    return (
        'layer { name: "prop" type: "Proposal" bottom: "score" bottom: "bbox" bottom: "im_info" '
        'top: "rois" top: "scores" proposal_param { '
        + " ".join(f"ratio: {r}" for r in p["ratios"])
        + " "
        + " ".join(f"scale: {s}" for s in p["scales"])
        + f" base_size: {p['base_size']} feat_stride: {p['feat_stride']} min_size: {p['min_size']}"
        f" pre_nms_topn: {p['pre_nms_topn']} post_nms_topn: {p['post_nms_topn']} nms_thresh: {p['nms_thresh']} }} }}"
    )


def stable_sort_box(rows: list[list[float]], start: int, end: int, num_top: int) -> None:
    rows[start : end + 1] = sorted(rows[start : end + 1], key=lambda row: -row[4])


@pytest.mark.parametrize("quantized", [False, True])
def test_proposal_matches_caffe_loops(quantized: bool) -> None:
    p = PROPOSAL
    shapes = {"score": (2, 12, 3, 4), "bbox": (2, 24, 3, 4), "im_info": (1, 4)}
    net = make_net(proposal_layer(p), shapes)
    gen = rng(7)
    scores = gen.uniform(0, 1, shapes["score"])
    if quantized:  # many equal scores and many boxes zeroed by min_size: Caffe's tie order matters
        scores = np.round(scores * 4) / 4
    deltas = gen.normal(0, 0.3, shapes["bbox"])
    im_info = np.array([[60.0, 80.0, 1.0, 1.2]])
    out = run(net, score=torch.tensor(scores), bbox=torch.tensor(deltas), im_info=torch.tensor(im_info))
    ref_rois, ref_scores = caffe_proposal(scores, deltas, im_info, p)
    np.testing.assert_allclose(out["rois"].numpy(), ref_rois, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["scores"].numpy(), ref_scores, rtol=1e-12, atol=1e-12)
    assert len(ref_rois) <= 2 * p["post_nms_topn"] and set(ref_rois[:, 0]) == {0, 1}
    if quantized:
        assert (ref_scores == 0).any()  # the zero-score boxes, kept in Caffe's sort order
        stable_rois, _ = caffe_proposal(scores, deltas, im_info, p, sort=stable_sort_box)
        assert not np.array_equal(stable_rois, ref_rois)  # this case depends on Caffe's order of ties
    out32 = run(
        net,
        score=torch.tensor(scores, dtype=torch.float32),
        bbox=torch.tensor(deltas, dtype=torch.float32),
        im_info=torch.tensor(im_info, dtype=torch.float32),
    )
    if not quantized:
        np.testing.assert_allclose(out32["rois"].numpy(), ref_rois, rtol=1e-5, atol=1e-4)


def test_proposal_sort_is_caffes_partial_quicksort() -> None:
    gen = rng(8)
    keys = list(np.round(gen.uniform(0, 1, 200) * 5) / 5)
    from caffe_compat.layers.detection import caffe_sort_boxes

    for num_top in (1, 10, 200):
        rows = [[0, 0, 0, 0, k, i] for i, k in enumerate(keys)]
        sort_box_recursive(rows, 0, len(rows) - 1, num_top)
        assert caffe_sort_boxes(keys, num_top) == [int(r[5]) for r in rows]
        top = [keys[i] for i in caffe_sort_boxes(keys, num_top)[:num_top]]
        assert top == sorted(keys, reverse=True)[:num_top]


def test_proposal_refuses_export_and_bad_configs() -> None:
    shapes = {"score": (1, 12, 3, 4), "bbox": (1, 24, 3, 4), "im_info": (1, 4)}
    net = make_net(proposal_layer(PROPOSAL), shapes)
    assert net.blob_shapes["rois"] == (7, 5)  # Caffe's setup shape; forward gives the real count
    inputs = {
        "score": torch.rand(shapes["score"]),
        "bbox": torch.zeros(shapes["bbox"]),
        "im_info": torch.tensor([[50.0, 70.0, 1.0, 1.0]]),
    }
    with pytest.raises(
        ExportError, match=r"layer 'prop' \(Proposal\) cannot be exported: .*depends on the data"
    ):
        flatten(net, inputs)
    with pytest.raises(LayerError, match=r"layer 'prop' \(Proposal\).*at least one ratio and one scale"):
        make_net(proposal_layer(dict(PROPOSAL, ratios=[])), shapes)
    with pytest.raises(LayerError, match=r"layer 'prop' \(Proposal\).*scores must be \(N, 2 x 6 anchors"):
        make_net(proposal_layer(PROPOSAL), dict(shapes, score=(1, 10, 3, 4)))
    anchors = Proposal(PROPOSAL["ratios"], PROPOSAL["scales"]).num_anchors
    assert anchors == 6


# -- PredictBox ------------------------------------------------------------------------------------
def caffe_predict_box(score, reg, third, stride, field, thresh, bbreg_exp, vector):
    """predict_box_layer.cpp Forward_cpu in float64 (its NMS comparison is in double anyway)."""
    n_, _, height, width = score.shape
    nms = third is not None and third.shape[1] == 2
    stitch = third is not None and third.shape[1] == 3
    top = np.zeros((n_, 5, height, width))
    count = 0
    for n, x, y in itertools.product(range(n_), range(width), range(height)):
        s = score[n, 1, y, x]
        ok = s > thresh and (not nms or s > third[n, 1, y, x] - 1e-5)
        if ok and not (stitch and third[n, 2, y, x] == 0):
            bx = third[n, 0, y, x] if stitch else 0
            by = third[n, 1, y, x] if stitch else 0
            rf = third[n, 2, y, x] if stitch else field
            box = [(x * stride - bx) / 12 * rf, (y * stride - by) / 12 * rf, rf, rf, s]
            if reg is not None:
                b = reg[n, :, y, x]
                if bbreg_exp:
                    box[0] += b[0] * rf
                    box[1] += b[1] * rf
                    box[2] *= math.exp(b[2])
                    box[3] *= math.exp(b[3])
                else:
                    box[0] += b[1] * rf
                    box[1] += b[0] * rf
                    box[2] += (b[3] - b[1]) * rf
                    box[3] += (b[2] - b[0]) * rf
            top[n, :, y, x] = box
            count += 1
    if not vector:
        return top, None
    if n_ == 1 and count > 0:
        listed = [top[0, :, y, x] for x in range(width) for y in range(height) if top[0, 4, y, x] > thresh]
        return top, np.array(listed).reshape(1, count, 5)
    return top, np.zeros((n_, 1, 5))


@pytest.mark.parametrize(
    "third,param,vector,num",
    [
        (None, "", True, 1),
        (2, "stride: 4 receptive_field: 24 positive_thresh: 0.3", False, 2),
        (3, "bbreg_exp: false positive_thresh: 0.2", True, 1),
        (3, "", True, 2),  # N = 2: the box list is one zero box per item
        (None, "positive_thresh: 0.999", True, 1),  # nothing kept: one zero box
    ],
)
def test_predict_box_matches_caffe_loops(third: int | None, param: str, vector: bool, num: int) -> None:
    shape = (num, 2, 4, 5)
    shapes = {"score": shape, "reg": (num, 4, 4, 5)}
    bottoms = 'bottom: "score" bottom: "reg"'
    if third is not None:
        shapes["extra"] = (num, third, 4, 5)
        bottoms += ' bottom: "extra"'
    tops = 'top: "bb" top: "boxes"' if vector else 'top: "bb"'
    net = make_net(
        f'layer {{ name: "pb" type: "PredictBox" {bottoms} {tops} predict_box_param {{ {param} }} }}', shapes
    )
    gen = rng(9)
    score = gen.uniform(0, 1, shape)
    reg = gen.normal(0, 0.2, shapes["reg"])
    extra = None
    if third == 2:
        extra = score + gen.choice([-0.1, 0.0, 0.1], shape)
    elif third == 3:
        extra = np.stack(
            [
                gen.uniform(-3, 3, (num, 4, 5)),
                gen.uniform(-3, 3, (num, 4, 5)),
                gen.choice([0.0, 12.0, 20.0], (num, 4, 5)),
            ],
            axis=1,
        )
    inputs = {"score": torch.tensor(score), "reg": torch.tensor(reg)}
    if extra is not None:
        inputs["extra"] = torch.tensor(extra)
    params = dict(
        p.split(": ")
        for p in param.replace(" positive", ";positive")
        .replace(" receptive", ";receptive")
        .replace(" bbreg", ";bbreg")
        .split(";")
        if p
    )
    stride = int(params.get("stride", 2))
    field = int(params.get("receptive_field", 12))
    thresh = float(f32(float(params.get("positive_thresh", 0.5))))
    ref_bb, ref_boxes = caffe_predict_box(
        score, reg, extra, stride, field, thresh, params.get("bbreg_exp", "true") == "true", vector
    )
    out = run(net, **inputs)
    np.testing.assert_allclose(out["bb"].numpy(), ref_bb, rtol=1e-12, atol=1e-12)
    if vector:
        assert out["boxes"].shape == ref_boxes.shape
        np.testing.assert_allclose(out["boxes"].numpy(), ref_boxes, rtol=1e-12, atol=1e-12)


def test_predict_box_exports_one_top_and_refuses_the_box_list() -> None:
    shapes = {"score": (1, 2, 3, 4)}
    inputs = {"score": torch.rand(1, 2, 3, 4)}
    one = make_net('layer { name: "pb" type: "PredictBox" bottom: "score" top: "bb" }', shapes)
    flat = flatten(one, inputs)
    with torch.no_grad():
        torch.testing.assert_close(flat.module(inputs["score"])["bb"], one(**inputs)["bb"])
    two = make_net('layer { name: "pb" type: "PredictBox" bottom: "score" top: "bb" top: "boxes" }', shapes)
    with pytest.raises(ExportError, match=r"layer 'pb' \(PredictBox\) cannot be exported: its second top"):
        flatten(two, inputs)
    with pytest.raises(LayerError, match=r"layer 'pb' \(PredictBox\).*must be \(N, 2, H, W\)"):
        make_net('layer { name: "pb" type: "PredictBox" bottom: "score" top: "bb" }', {"score": (1, 3, 3, 4)})


# -- Hotspot ---------------------------------------------------------------------------------------
def caffe_hotspot(points, size, data_size, std, mean_removed):
    """hotspot_layer.cpp Forward_cpu (float32 p1, p2 and squared distance; the exponential in double)."""
    height, width = size
    n_, count = points.shape[0], points.shape[1] // 2
    top = np.zeros((n_, count, height, width), dtype=np.float32)
    std = float(f32(std))
    for n, i in itertools.product(range(n_), range(count)):
        p1 = f32((float(f32(points[n, 2 * i]) / f32(data_size[1])) + (0.5 if mean_removed else 0)) * width)
        p2 = f32(
            (float(f32(points[n, 2 * i + 1]) / f32(data_size[0])) + (0.5 if mean_removed else 0)) * height
        )
        for h, w in itertools.product(range(height), range(width)):
            squared = f32((p1 - f32(w)) * (p1 - f32(w)) + (p2 - f32(h)) * (p2 - f32(h)))
            value = f32(0.5 / std / std / math.pi * math.exp(-0.5 * float(squared) / std / std))
            top[n, i, h, w] = value if value > f32(1e-4) else 0
    return top


@pytest.mark.parametrize("mean_removed", [True, False])
def test_hotspot_matches_caffe_loops(mean_removed: bool) -> None:
    net = make_net(
        'layer { name: "hot" type: "Hotspot" bottom: "points" bottom: "like" top: "maps" hotspot_param '
        f"{{ data_height: 60 data_width: 45 gaussian_std: 1.3 mean_removed: {str(mean_removed).lower()} }} }}",
        {"points": (2, 6), "like": (2, 1, 9, 7)},
    )
    gen = rng(10)
    points = gen.uniform(-25, 25, (2, 6)) if mean_removed else gen.uniform(0, 50, (2, 6))
    maps = run(net, points=torch.tensor(points, dtype=torch.float32), like=torch.zeros(2, 1, 9, 7))["maps"]
    ref = caffe_hotspot(points, (9, 7), (60, 45), 1.3, mean_removed)
    assert maps.shape == (2, 3, 9, 7)
    np.testing.assert_allclose(maps.numpy(), ref, rtol=1e-6, atol=1e-7)
    assert (ref == 0).any() and (ref > 0).any() and not maps.requires_grad


def test_hotspot_needs_a_size() -> None:
    with pytest.raises(LayerError, match=r"layer 'hot' \(Hotspot\).*a second bottom gives the output size"):
        make_net(
            'layer { name: "hot" type: "Hotspot" bottom: "p" top: "m" hotspot_param { data_height: 8 data_width: 8 } }',
            {"p": (1, 2)},
        )
    with pytest.raises(LayerError, match=r"layer 'hot' \(Hotspot\).*data layers' size must be specified"):
        make_net(
            'layer { name: "hot" type: "Hotspot" bottom: "p" top: "m" hotspot_param { output_height: 4 output_width: 4 } }',
            {"p": (1, 2)},
        )


# -- devices and dtypes ----------------------------------------------------------------------------
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
def test_every_type_runs_on_the_device_in_float32_and_float64(device: str) -> None:
    from caffe_compat.layers.registry import builtin_types

    families = {"spatial", "detection"}
    types = sorted(name for name, cls in builtin_types().items() if cls.family in families)
    assert types == sorted(
        [
            "SPP",
            "Resize",
            "Transformer",
            "SubRegion",
            "ROIPooling",
            "PSROIPooling",
            "Proposal",
            "PredictBox",
            "Hotspot",
        ]
    )
    for name in types:
        cls = builtin_types()[name]
        net = cc.Net(cls.example, phase="TRAIN").to(device)
        shapes = {blob: net.blob_shapes[blob] for blob in net.input_names}
        for dtype in (torch.float32, torch.float64):
            gen = torch.Generator().manual_seed(0)
            inputs = {
                blob: torch.rand(shape, generator=gen, dtype=dtype) * 4 for blob, shape in shapes.items()
            }
            if "rois" in inputs:
                inputs["rois"][:, 0] = 0
            if "im_info" in inputs:
                inputs["im_info"] = torch.tensor([[60.0, 80.0, 1.0, 1.0]], dtype=dtype)
            cpu = net.to("cpu")(**inputs)
            here = net.to(device)(**{k: v.to(device) for k, v in inputs.items()})
            for key, value in cpu.items():
                assert here[key].dtype == dtype and here[key].device.type == device, (name, key)
                torch.testing.assert_close(here[key].cpu(), value, rtol=1e-5, atol=1e-5, msg=f"{name}: {key}")
