"""InnerProduct and the shape/element-wise layers against float64 numpy transcriptions of Caffe's
loops (``<name>_layer.cpp`` of happynear/caffe-windows), plus their bad-parameter errors.

The golden cases (real Caffe) are in test_layer_goldens.py; ``ip_normalize`` is run here too, since
the standard golden test leaves it to the face layers' file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from layer_cases import run_case

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers.inner_product import InnerProduct
from caffe_compat.layers.shape import ArgMax, Eltwise, Reduction

RNG = np.random.default_rng(0)


def make_net(layers: str, phase: str = "TRAIN", **inputs: tuple[int, ...]) -> cc.Net:
    """A net of Input layers (one per keyword, in order) followed by ``layers``."""
    text = 'name: "t"\nforce_backward: true\n'
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "in_{name}" type: "Input" top: "{name}" '
        text += f"input_param {{ shape {{ {dims} }} }} }}\n"
    return cc.Net(text + layers, phase=phase)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def run(net: cc.Net, **arrays: np.ndarray) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    inputs = {k: torch.tensor(v, requires_grad=True) for k, v in arrays.items()}
    return net(**inputs), inputs


def backward(outputs: dict[str, torch.Tensor], diffs: dict[str, np.ndarray]) -> None:
    names = list(diffs)
    torch.autograd.backward([outputs[n] for n in names], [torch.tensor(diffs[n]) for n in names])


def close(actual: torch.Tensor | None, expected: np.ndarray, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    value = np.zeros_like(expected) if actual is None else actual.detach().double().numpy()
    assert value.shape == expected.shape, (value.shape, expected.shape)
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol)


def build_error(layers: str, match: str, **inputs: tuple[int, ...]) -> None:
    with pytest.raises(LayerError, match=match):
        make_net(layers, **inputs)


# -- InnerProduct ----------------------------------------------------------------------------------


def ip_reference(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, axis: int, transpose: bool
) -> np.ndarray:
    axis %= x.ndim
    m, k = math.prod(x.shape[:axis]), math.prod(x.shape[axis:])
    mat = w.astype(np.float64).reshape(k, -1) if transpose else w.astype(np.float64).reshape(-1, k).T
    out = x.astype(np.float64).reshape(m, k) @ mat
    if b is not None:
        out = out + b
    return out.reshape(*x.shape[:axis], -1)


@pytest.mark.parametrize(("axis", "transpose"), [(1, False), (-2, False), (0, True), (-1, True), (3, False)])
def test_inner_product_matches_reference(axis: int, transpose: bool) -> None:
    shape = (2, 3, 5, 7)
    net = make_net(
        f'layer {{ name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param {{ num_output: 4 '
        f'axis: {axis} transpose: {str(transpose).lower()} weight_filler {{ type: "gaussian" std: 1 }} '
        'bias_filler { type: "uniform" min: -1 max: 1 } } }',
        x=shape,
    )
    w, b = (t.detach().numpy().copy() for t in net.params["ip"])
    k = math.prod(shape[axis % 4 :])
    assert w.shape == ((k, 4) if transpose else (4, k))
    x = rand(*shape)
    out, inputs = run(net, x=x)
    expected = ip_reference(x, w, b, axis, transpose)
    close(out["y"], expected, rtol=1e-4, atol=1e-4)
    g = rand(*expected.shape)
    backward(out, {"y": g})
    m = math.prod(shape[: axis % 4])
    g2, x2 = g.reshape(m, 4).astype(np.float64), x.reshape(m, k).astype(np.float64)
    w_mat = w.reshape(k, 4) if transpose else w.reshape(4, k).T
    close(inputs["x"].grad, (g2 @ w_mat.T).reshape(shape), rtol=1e-4, atol=1e-4)
    wgrad = x2.T @ g2 if transpose else g2.T @ x2
    close(net.params["ip"][0].grad, wgrad, rtol=1e-4, atol=1e-4)
    close(net.params["ip"][1].grad, g2.sum(0), rtol=1e-4, atol=1e-4)


def test_inner_product_batch_may_change_at_run_time() -> None:
    net = make_net(
        'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" '
        "inner_product_param { num_output: 3 } }",
        x=(2, 5, 7),
    )
    assert net(x=torch.zeros(6, 5, 7))["y"].shape == (6, 3)
    with pytest.raises(LayerError, match="'ip' .*incompatible.*35"):
        net(x=torch.zeros(6, 5, 6))


def normalize_reference(w: np.ndarray, rows: int) -> np.ndarray:
    flat = w.astype(np.float64).reshape(rows, -1)
    return (flat / np.sqrt((flat * flat).sum(1, keepdims=True) + 1e-6)).reshape(w.shape)


@pytest.mark.parametrize("transpose", [False, True])
def test_inner_product_normalize_in_place(transpose: bool) -> None:
    net = make_net(
        'layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 '
        f"normalize: true bias_term: false transpose: {str(transpose).lower()} "
        'weight_filler { type: "gaussian" std: 2 } } }',
        x=(3, 2, 7),
    )
    weight = net.params["fc"][0]
    raw = weight.detach().numpy().copy()
    # Caffe's loop normalizes num_output flat chunks of K values, whatever the storage layout.
    normalized = normalize_reference(raw, 5)
    x = rand(3, 2, 7)
    out, _ = run(net, x=x)
    close(weight, normalized, rtol=1e-5, atol=1e-6)
    close(out["y"], ip_reference(x, normalized, None, 1, transpose), rtol=1e-4, atol=1e-4)
    g = rand(3, 5)
    backward(out, {"y": g})
    x2 = x.reshape(3, 14).astype(np.float64)
    wgrad = x2.T @ g if transpose else g.T @ x2  # w.r.t. the normalized weight: no chain rule
    close(weight.grad, wgrad, rtol=1e-4, atol=1e-4)


def test_inner_product_normalize_exact_grad() -> None:
    torch.manual_seed(0)
    module = InnerProduct(4, 6, bias_term=False, normalize=True, exact_grad=True).double()
    with torch.no_grad():
        module.weight.normal_()
    raw = module.weight.detach().clone()
    x = torch.randn(3, 6, dtype=torch.float64)
    out = module(x)
    assert torch.equal(module.weight.detach(), raw)  # the stored weight is left untouched
    np.testing.assert_allclose(
        out.detach().numpy(), x.numpy() @ normalize_reference(raw.numpy(), 4).T, rtol=1e-12
    )

    # The gradient is the true one, through the normalization (float64 finite differences).
    def as_function(weight: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {"weight": weight}, (x,))

    assert torch.autograd.gradcheck(as_function, (raw.clone().requires_grad_(),))
    # ... which differs from Caffe's gradient with respect to the normalized weight.
    out.backward(torch.ones_like(out))
    caffe_grad = torch.ones(4, 3, dtype=torch.float64) @ x
    assert not torch.allclose(module.weight.grad, caffe_grad, atol=1e-3)


def test_inner_product_normalize_golden() -> None:
    run_case("ip_normalize")


def test_inner_product_weight_and_bias_bottoms() -> None:
    net = make_net(
        'layer { name: "ip" type: "InnerProduct" bottom: "x" bottom: "w" bottom: "b" top: "y" '
        "inner_product_param { normalize: true } }",
        x=(2, 3, 5),
        w=(4, 15),
        b=(4,),
    )
    assert net.params["ip"] == []
    x, w, b = rand(2, 3, 5), rand(4, 15), rand(4)
    out, inputs = run(net, x=x, w=w, b=b)
    close(out["y"], ip_reference(x, w, b, 1, False), rtol=1e-4, atol=1e-4)  # bottoms are never normalized
    g = rand(2, 4)
    backward(out, {"y": g})
    close(inputs["w"].grad, g.astype(np.float64).T @ x.reshape(2, 15), rtol=1e-4, atol=1e-4)
    close(inputs["b"].grad, g.sum(0).astype(np.float64), rtol=1e-4, atol=1e-4)
    net2 = make_net(
        'layer { name: "ip" type: "InnerProduct" bottom: "x" bottom: "w" top: "y" '
        "inner_product_param { bias_term: false } }",
        x=(2, 15),
        w=(4, 15),
    )
    out2, _ = run(net2, x=x.reshape(2, 15), w=w)
    close(out2["y"], ip_reference(x.reshape(2, 15), w, None, 1, False), rtol=1e-4, atol=1e-4)


def test_inner_product_errors() -> None:
    ip = 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { %s } }'
    build_error(ip % "", "'ip' .*num_output must be positive", x=(2, 3))
    build_error(ip % "num_output: 2 axis: 2", "axis 2 is out of range for a 2-D", x=(2, 3))
    build_error(
        'layer { name: "ip" type: "InnerProduct" bottom: "x" bottom: "w" top: "y" }',
        "bias_term: true",
        x=(2, 3),
        w=(4, 3),
    )
    build_error(
        'layer { name: "ip" type: "InnerProduct" bottom: "x" bottom: "w" top: "y" '
        "inner_product_param { bias_term: false } }",
        r"weight bottom has shape \[4, 5\]",
        x=(2, 3),
        w=(4, 5),
    )


# -- Concat / Slice / Split ------------------------------------------------------------------------


@pytest.mark.parametrize(("param", "axis"), [("axis: 1", 1), ("axis: -1", 3), ("concat_dim: 0", 0), ("", 1)])
def test_concat_matches_reference(param: str, axis: int) -> None:
    shapes = [[2, 3, 5, 7], [2, 3, 5, 7], [2, 3, 5, 7]]
    for i, shape in enumerate(shapes):
        shape[axis] += i
    net = make_net(
        'layer { name: "c" type: "Concat" bottom: "a" bottom: "b" bottom: "c" top: "y" '
        f"concat_param {{ {param} }} }}",
        a=tuple(shapes[0]),
        b=tuple(shapes[1]),
        c=tuple(shapes[2]),
    )
    arrays = {n: rand(*s) for n, s in zip("abc", shapes, strict=True)}
    out, inputs = run(net, **arrays)
    expected = np.concatenate(list(arrays.values()), axis=axis)
    close(out["y"], expected)
    g = rand(*expected.shape)
    backward(out, {"y": g})
    splits = np.split(g, np.cumsum([s[axis] for s in shapes])[:-1], axis=axis)
    for name, part in zip("abc", splits, strict=True):
        close(inputs[name].grad, part)


def test_concat_errors() -> None:
    layer = 'layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "y" concat_param { %s } }'
    build_error(
        layer % "axis: 1", r"'cat' \(Concat\).*\[2, 3, 5, 7\].*\[2, 3, 4, 7\]", a=(2, 3, 5, 7), b=(2, 3, 4, 7)
    )
    build_error(layer % "axis: 1", "same number of axes", a=(2, 3, 5, 7), b=(2, 3, 5))
    build_error(layer % "axis: 1 concat_dim: 1", "either axis or concat_dim", a=(2, 3), b=(2, 3))
    build_error(layer % "concat_dim: 4", "concat_dim 4 is out of range", a=(2, 3), b=(2, 3))


def slice_reference(x: np.ndarray, axis: int, sizes: list[int]) -> list[np.ndarray]:
    """Caffe's Forward_cpu loop: copy ``top_slice_axis * slice_size`` values per outer index."""
    num_slices, slice_size = math.prod(x.shape[:axis]), math.prod(x.shape[axis + 1 :])
    flat, bottom_axis, offset, tops = x.reshape(-1), x.shape[axis], 0, []
    for size in sizes:
        top = np.empty(num_slices * size * slice_size, dtype=x.dtype)
        for n in range(num_slices):
            start = (n * bottom_axis + offset) * slice_size
            top[n * size * slice_size : (n + 1) * size * slice_size] = flat[start : start + size * slice_size]
        tops.append(top.reshape(*x.shape[:axis], size, *x.shape[axis + 1 :]))
        offset += size
    return tops


@pytest.mark.parametrize(
    ("param", "tops", "axis", "sizes"),
    [
        ("slice_point: 2 slice_point: 3", 3, 1, [2, 1, 2]),
        ("axis: -1 slice_point: 4", 2, 3, [4, 3]),
        ("axis: 0", 2, 0, [3, 3]),
        ("slice_dim: 2 slice_point: 1", 2, 2, [1, 6]),
        ("axis: 2 slice_point: 3 slice_point: 7", 3, 2, [3, 4, 0]),
    ],
)
def test_slice_matches_reference(param: str, tops: int, axis: int, sizes: list[int]) -> None:
    shape = [2, 5, 7, 7]
    if axis == 0:
        shape[0] = 6
    names = [f"y{i}" for i in range(tops)]
    top_text = " ".join(f'top: "{n}"' for n in names)
    net = make_net(
        f'layer {{ name: "s" type: "Slice" bottom: "x" {top_text} slice_param {{ {param} }} }}',
        x=tuple(shape),
    )
    x = rand(*shape)
    out, inputs = run(net, x=x)
    expected = slice_reference(x, axis, sizes)
    for name, part in zip(names, expected, strict=True):
        close(out[name], part)
    diffs = {n: rand(*p.shape) for n, p in zip(names, expected, strict=True)}
    backward(out, diffs)
    close(inputs["x"].grad, np.concatenate([diffs[n] for n in names], axis=axis))


def test_slice_errors() -> None:
    def layer(param: str, tops: int = 3) -> str:
        top_text = " ".join(f'top: "y{i}"' for i in range(tops))
        return f'layer {{ name: "sl" type: "Slice" bottom: "x" {top_text} slice_param {{ {param} }} }}'

    build_error(
        layer("slice_point: 2 slice_point: 8"),
        r"'sl' \(Slice\): slice_point 8 is out of range.*size 7",
        x=(2, 7),
    )
    build_error(layer("slice_point: 3 slice_point: 3"), "strictly increasing", x=(2, 7))
    build_error(layer("slice_point: 0 slice_point: 3"), "strictly increasing", x=(2, 7))
    build_error(layer("slice_point: 3"), "1 slice_point.* for 3 tops", x=(2, 7))
    build_error(layer(""), r"number of top blobs \(3\) should evenly divide.*size 7", x=(2, 7))
    build_error(
        layer("slice_point: 1 slice_point: 2", tops=3), "3 tops cannot slice axis 1 of size 2", x=(2, 2)
    )
    build_error(layer("axis: 1 slice_dim: 1"), "either axis or slice_dim", x=(2, 9))


def test_split_copies_and_sums_diffs() -> None:
    net = make_net(
        'layer { name: "sp" type: "Split" bottom: "x" top: "a" top: "b" top: "c" }', x=(2, 3, 5, 7)
    )
    x = rand(2, 3, 5, 7)
    out, inputs = run(net, x=x)
    for name in "abc":
        close(out[name], x)
    diffs = {n: rand(2, 3, 5, 7) for n in "abc"}
    backward(out, diffs)
    close(inputs["x"].grad, sum(d.astype(np.float64) for d in diffs.values()))
    build_error('layer { name: "sp" type: "Split" bottom: "x" top: "x" top: "b" }', "in-place", x=(2, 3))


# -- Flatten / Reshape / Crop / Tile -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("", (2, 105)),
        ("axis: 2", (2, 3, 35)),
        ("axis: -3 end_axis: -2", (2, 15, 7)),
        ("axis: 0 end_axis: 1", (6, 5, 7)),
        ("axis: 2 end_axis: 1", (2, 3, 1, 5, 7)),
    ],
)
def test_flatten_shapes(param: str, expected: tuple[int, ...]) -> None:
    net = make_net(
        f'layer {{ name: "f" type: "Flatten" bottom: "x" top: "y" flatten_param {{ {param} }} }}',
        x=(2, 3, 5, 7),
    )
    x = rand(2, 3, 5, 7)
    out, inputs = run(net, x=x)
    close(out["y"], x.reshape(expected))
    g = rand(*expected)
    backward(out, {"y": g})
    close(inputs["x"].grad, g.reshape(2, 3, 5, 7))


def test_flatten_errors() -> None:
    layer = 'layer { name: "f" type: "Flatten" bottom: "x" top: "%s" flatten_param { %s } }'
    build_error(layer % ("y", "axis: 3 end_axis: 1"), "axis 3 comes after end_axis 1", x=(2, 3, 5, 7))
    build_error(layer % ("y", "end_axis: 4"), "end_axis 4 is out of range", x=(2, 3, 5, 7))
    build_error(layer % ("x", ""), "in-place", x=(2, 3, 5, 7))


@pytest.mark.parametrize(
    ("param", "expected"),
    [
        ("shape { dim: 0 dim: -1 dim: 7 }", (2, 15, 7)),
        ("shape { dim: -1 }", (210,)),
        ("shape { dim: 0 dim: 0 dim: 35 }", (2, 3, 35)),
        ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 15, 7)),
        ("axis: 1 num_axes: 0 shape { dim: 1 }", (2, 1, 3, 5, 7)),
        ("axis: -1 num_axes: 0 shape { dim: 1 dim: 1 }", (2, 3, 5, 7, 1, 1)),
        ("axis: -2 shape { dim: 0 dim: 1 }", (2, 3, 5, 7, 1)),
        ("axis: 2 num_axes: 1 shape { dim: 0 dim: 1 }", (2, 3, 5, 1, 7)),
        ("axis: 0 num_axes: 1 shape { dim: -1 dim: 1 }", (2, 1, 3, 5, 7)),
    ],
)
def test_reshape_shapes(param: str, expected: tuple[int, ...]) -> None:
    shape = (2, 3, 5, 7)
    net = make_net(
        f'layer {{ name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param {{ {param} }} }}', x=shape
    )
    x = rand(*shape)
    out, inputs = run(net, x=x)
    close(out["y"], x.reshape(expected))
    g = rand(*expected)
    backward(out, {"y": g})
    close(inputs["x"].grad, g.reshape(shape))


def test_reshape_errors() -> None:
    layer = 'layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { %s } }'
    build_error(
        layer % "shape { dim: 4 dim: 4 }",
        r"'r' \(Reshape\): output count must match.*\[4, 4\].*30 values",
        x=(2, 3, 5),
    )
    build_error(layer % "shape { dim: -1 dim: -1 }", "multiple -1", x=(2, 3, 5))
    build_error(layer % "shape { dim: -1 dim: 4 }", r"bottom count \(30.*divisible.*\(4\)", x=(2, 3, 5))
    build_error(layer % "axis: 2 shape { dim: 0 dim: 0 }", "no axis 3 to copy", x=(2, 3, 5))
    build_error(layer % "axis: 4 shape { dim: 1 }", "axis 4 is out of range for a 3-D", x=(2, 3, 5))
    build_error(layer % "axis: 2 num_axes: 2 shape { dim: 1 }", "out of range for a 3-D", x=(2, 3, 5))
    build_error(layer % "shape { dim: -2 dim: 15 }", "below -1", x=(2, 3, 5))
    # num_axes -1 replaces every axis from 1 (15 values) by (5, 1): the count does not match.
    build_error(layer % "axis: 1 shape { dim: 5 dim: 1 }", r"gives \[2, 5, 1\]", x=(2, 3, 5))


def test_reshape_copies_batch_at_run_time() -> None:
    net = make_net(
        'layer { name: "r" type: "Reshape" bottom: "x" top: "y" reshape_param { shape { dim: 0 dim: -1 } } }',
        x=(2, 3, 5),
    )
    assert net(x=torch.zeros(4, 3, 5))["y"].shape == (4, 15)


def crop_reference(a: np.ndarray, ref_shape: tuple[int, ...], axis: int, offsets: list[int]) -> np.ndarray:
    index = []
    for i in range(a.ndim):
        if i < axis:
            index.append(slice(None))
        else:
            off = offsets[0] if len(offsets) == 1 else (offsets[i - axis] if offsets else 0)
            index.append(slice(off, off + ref_shape[i]))
    return a[tuple(index)]


@pytest.mark.parametrize(
    ("param", "axis", "offsets"),
    [
        ("", 2, []),
        ("axis: 1 offset: 1", 1, [1]),
        ("axis: -3 offset: 0 offset: 2 offset: 3", 1, [0, 2, 3]),
        ("axis: 0 offset: 0", 0, [0]),
    ],
)
def test_crop_matches_reference(param: str, axis: int, offsets: list[int]) -> None:
    a_shape, b_shape = (2, 5, 6, 7), (2, 3, 4, 3)
    net = make_net(
        f'layer {{ name: "c" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param {{ {param} }} }}',
        a=a_shape,
        b=b_shape,
    )
    a = rand(*a_shape)
    out, inputs = run(net, a=a, b=rand(*b_shape))
    expected = crop_reference(a, b_shape, axis, offsets)
    close(out["y"], expected)
    g = rand(*expected.shape)
    backward(out, {"y": g})
    grad = np.zeros(a_shape, dtype=np.float64)
    crop_reference(grad, expected.shape, axis, offsets)[...] = g
    close(inputs["a"].grad, grad)
    close(inputs["b"].grad, np.zeros(b_shape))


def test_crop_errors() -> None:
    layer = 'layer { name: "cr" type: "Crop" bottom: "a" bottom: "b" top: "y" crop_param { %s } }'
    build_error(
        layer % "offset: 3",
        r"'cr' \(Crop\): the crop for axis 2 is out of bounds: size 4 at offset 3",
        a=(2, 3, 6, 7),
        b=(2, 3, 4, 4),
    )
    build_error(layer % "offset: 1 offset: 1 offset: 1", "3 offsets given", a=(2, 3, 6, 7), b=(2, 3, 4, 4))
    build_error(layer % "axis: 1", "fewer axes", a=(2, 3, 6, 7), b=(2, 3, 4))
    build_error('layer { name: "cr" type: "Crop" bottom: "a" top: "y" }', "takes 2 bottom", a=(2, 3))


@pytest.mark.parametrize(("axis", "tiles"), [(1, 3), (-1, 2), (0, 2)])
def test_tile_matches_reference(axis: int, tiles: int) -> None:
    shape = (2, 3, 5, 7)
    net = make_net(
        'layer { name: "t" type: "Tile" bottom: "x" top: "y" '
        f"tile_param {{ axis: {axis} tiles: {tiles} }} }}",
        x=shape,
    )
    x = rand(*shape)
    out, inputs = run(net, x=x)
    ax = axis % 4
    outer, inner = math.prod(shape[:ax]), math.prod(shape[ax:])
    flat = x.reshape(outer, inner)
    expected = np.concatenate([flat] * tiles, axis=1).reshape(
        *shape[:ax], shape[ax] * tiles, *shape[ax + 1 :]
    )
    close(out["y"], expected)
    g = rand(*expected.shape)
    backward(out, {"y": g})
    close(inputs["x"].grad, g.astype(np.float64).reshape(outer, tiles, inner).sum(1).reshape(shape))


def test_tile_errors() -> None:
    build_error('layer { name: "t" type: "Tile" bottom: "x" top: "y" }', "tiles.*must be specified", x=(2, 3))
    build_error(
        'layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { tiles: 0 } }',
        "must be positive",
        x=(2, 3),
    )
    build_error(
        'layer { name: "t" type: "Tile" bottom: "x" top: "y" tile_param { tiles: 2 axis: 2 } }',
        "axis 2 is out of range",
        x=(2, 3),
    )


# -- Eltwise -----------------------------------------------------------------------------------------


def eltwise_net(op: str, n: int = 3, extra: str = "") -> cc.Net:
    bottoms = " ".join(f'bottom: "x{i}"' for i in range(n))
    return make_net(
        f'layer {{ name: "e" type: "Eltwise" {bottoms} top: "y" '
        f"eltwise_param {{ operation: {op} {extra} }} }}",
        **{f"x{i}": (2, 3, 5, 7) for i in range(n)},
    )


def test_eltwise_sum_with_coeffs() -> None:
    net = eltwise_net("SUM", extra="coeff: 0.5 coeff: -2 coeff: 3")
    xs = {f"x{i}": rand(2, 3, 5, 7) for i in range(3)}
    out, inputs = run(net, **xs)
    close(out["y"], 0.5 * xs["x0"].astype(np.float64) - 2 * xs["x1"] + 3 * xs["x2"], rtol=1e-5, atol=1e-5)
    g = rand(2, 3, 5, 7)
    backward(out, {"y": g})
    for i, coeff in enumerate([0.5, -2, 3]):
        close(inputs[f"x{i}"].grad, coeff * g.astype(np.float64))


def test_eltwise_prod_and_sort() -> None:
    xs = {f"x{i}": rand(2, 3, 5, 7) for i in range(3)}
    d = {k: v.astype(np.float64) for k, v in xs.items()}
    g = rand(2, 3, 5, 7)
    for op, shift in [("PROD", 0.0), ("SORT", 1.0)]:
        out, inputs = run(eltwise_net(op), **xs)
        f = [d[f"x{i}"] + shift for i in range(3)]
        close(out["y"], f[0] * f[1] * f[2], rtol=1e-5, atol=1e-5)
        backward(out, {"y": g})
        close(inputs["x0"].grad, f[1] * f[2] * g, rtol=1e-5, atol=1e-5)
        close(inputs["x1"].grad, f[0] * f[2] * g, rtol=1e-5, atol=1e-5)
        close(inputs["x2"].grad, f[0] * f[1] * g, rtol=1e-5, atol=1e-5)


def test_eltwise_prod_unstable_grad_is_caffes_quotient() -> None:
    xs = {f"x{i}": rand(2, 3) for i in range(2)}
    xs["x0"][0, 0] = 0.0
    net = make_net(
        'layer { name: "e" type: "Eltwise" bottom: "x0" bottom: "x1" top: "y" '
        "eltwise_param { operation: PROD stable_prod_grad: false } }",
        x0=(2, 3),
        x1=(2, 3),
    )
    out, inputs = run(net, **xs)
    g = np.ones((2, 3), dtype=np.float32)
    backward(out, {"y": g})
    top = xs["x0"] * xs["x1"]
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = top / xs["x0"] * g
    grad = inputs["x0"].grad.numpy()
    assert np.isnan(grad[0, 0]) and np.isnan(expected[0, 0])  # 0 / 0, as Caffe computes it
    np.testing.assert_allclose(grad.reshape(-1)[1:], expected.reshape(-1)[1:], rtol=1e-6)
    close(inputs["x1"].grad, xs["x0"].astype(np.float64), rtol=1e-6)


def eltwise_max_reference(xs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's MAX loop: bottom 0 vs 1 (``a > b`` else b), then later bottoms only when strictly greater."""
    a, b = xs[0].reshape(-1), xs[1].reshape(-1)
    top, mask = np.empty_like(a), np.empty(a.shape, dtype=int)
    for i in range(a.size):
        top[i], mask[i] = (a[i], 0) if a[i] > b[i] else (b[i], 1)
    for blob, x in enumerate(xs[2:], start=2):
        flat = x.reshape(-1)
        for i in range(flat.size):
            if flat[i] > top[i]:
                top[i], mask[i] = flat[i], blob
    return top.reshape(xs[0].shape), mask.reshape(xs[0].shape)


def test_eltwise_max_routes_diff_like_caffe_on_ties() -> None:
    values = np.array([-1.0, 0.0, 1.0], dtype=np.float32)  # few values: many ties
    xs = [RNG.choice(values, size=(2, 3, 5, 7)).astype(np.float32) for _ in range(4)]
    net = eltwise_net("MAX", n=4)
    out, inputs = run(net, **{f"x{i}": x for i, x in enumerate(xs)})
    top, mask = eltwise_max_reference(xs)
    close(out["y"], top)
    g = rand(2, 3, 5, 7)
    backward(out, {"y": g})
    for i in range(4):
        close(inputs[f"x{i}"].grad, np.where(mask == i, g, 0.0))
    # A tie between bottoms 0 and 1 goes to bottom 1; a later equal bottom does not take it.
    small = make_net(
        'layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
        "eltwise_param { operation: MAX } }",
        a=(1,),
        b=(1,),
        c=(1,),
    )
    one = np.ones(1, dtype=np.float32)
    out, inputs = run(small, a=one, b=one, c=one)
    backward(out, {"y": one})
    assert [float(inputs[n].grad[0]) for n in "abc"] == [0.0, 1.0, 0.0]


def test_eltwise_errors() -> None:
    layer = 'layer { name: "el" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { %s } }'
    build_error(
        layer % "coeff: 1", r"'el' \(Eltwise\): takes one coefficient per bottom blob", a=(2, 3), b=(2, 3)
    )
    build_error(
        layer % "operation: PROD coeff: 1 coeff: 2",
        "only takes coefficients for summation",
        a=(2, 3),
        b=(2, 3),
    )
    build_error(layer % "", r"bottom 0 has \[2, 3\], bottom 1 has \[3, 2\]", a=(2, 3), b=(3, 2))
    build_error('layer { name: "el" type: "Eltwise" bottom: "a" top: "y" }', "at least 2 bottom", a=(2, 3))
    with pytest.raises(ValueError, match="unknown Eltwise operation"):
        Eltwise("MIN")


# -- Reduction / ArgMax --------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["SUM", "ASUM", "SUMSQ", "MEAN"])
@pytest.mark.parametrize(("axis", "coeff"), [(0, 1.0), (1, -0.5), (-1, 2.0), (-2, 1.0)])
def test_reduction_matches_reference(op: str, axis: int, coeff: float) -> None:
    shape = (2, 3, 5, 7)
    net = make_net(
        'layer { name: "r" type: "Reduction" bottom: "x" top: "y" '
        f"reduction_param {{ operation: {op} axis: {axis} coeff: {coeff} }} }}",
        x=shape,
    )
    x = rand(*shape)
    x.reshape(-1)[:3] = 0.0  # ASUM's sign is 0 at 0
    out, inputs = run(net, x=x)
    ax = axis % 4
    num, dim = math.prod(shape[:ax]), math.prod(shape[ax:])
    flat = x.reshape(num, dim).astype(np.float64)
    value = {
        "SUM": flat.sum(1),
        "ASUM": np.abs(flat).sum(1),
        "SUMSQ": (flat**2).sum(1),
        "MEAN": flat.mean(1),
    }[op]
    close(out["y"], (coeff * value).reshape(shape[:ax]), rtol=1e-5, atol=1e-4)
    g = rand(*shape[:ax]) if ax else np.array(rand(1)[0])
    backward(out, {"y": g})
    gc = g.reshape(num, 1).astype(np.float64) * coeff
    grad = {
        "SUM": gc + 0 * flat,
        "ASUM": np.sign(flat) * gc,
        "SUMSQ": 2 * flat * gc,
        "MEAN": gc / dim + 0 * flat,
    }[op]
    close(inputs["x"].grad, grad.reshape(shape), rtol=1e-5, atol=1e-5)


def test_reduction_errors() -> None:
    build_error(
        'layer { name: "r" type: "Reduction" bottom: "x" top: "y" reduction_param { axis: 3 } }',
        "'r' .*axis 3 is out of range",
        x=(2, 3, 5),
    )
    with pytest.raises(ValueError, match="unknown Reduction operation"):
        Reduction("MAX")


def argmax_reference(x: np.ndarray, top_k: int, out_max_val: bool, axis: int | None) -> np.ndarray:
    """Caffe's loop: rank (value, index) pairs with std::greater, so ties put the larger index first."""
    if axis is not None:
        axis %= x.ndim
        dim, axis_dist = x.shape[axis], math.prod(x.shape[axis + 1 :])
        top_shape = list(x.shape)
        top_shape[axis] = top_k
    else:
        dim, axis_dist = math.prod(x.shape[1:]), 1
        top_shape = [1] * max(x.ndim, 3)
        top_shape[0], top_shape[2] = x.shape[0], top_k
        if out_max_val:
            top_shape[1] = 2
    flat, top = x.reshape(-1), np.zeros(math.prod(top_shape))
    for i in range(x.size // dim):
        pairs = [(flat[(i // axis_dist * dim + j) * axis_dist + i % axis_dist], j) for j in range(dim)]
        pairs.sort(reverse=True)
        for j in range(top_k):
            if out_max_val and axis is None:
                top[2 * i * top_k + j] = pairs[j][1]
                top[2 * i * top_k + top_k + j] = pairs[j][0]
            else:
                top[(i // axis_dist * top_k + j) * axis_dist + i % axis_dist] = (
                    pairs[j][0] if out_max_val else pairs[j][1]
                )
    return top.reshape(top_shape)


@pytest.mark.parametrize(
    ("top_k", "out_max_val", "axis", "shape"),
    [
        (1, False, None, (2, 3, 5, 7)),
        (3, True, None, (2, 3, 5, 7)),
        (2, True, None, (3, 7)),
        (2, False, 1, (2, 3, 5, 7)),
        (3, True, -2, (2, 3, 5, 7)),
        (1, False, 0, (2, 3, 5)),
    ],
)
def test_argmax_matches_reference(
    top_k: int, out_max_val: bool, axis: int | None, shape: tuple[int, ...]
) -> None:
    x = RNG.integers(-2, 3, size=shape).astype(np.float32)  # many ties
    module = ArgMax(top_k, out_max_val, axis)
    top = module(torch.tensor(x))
    assert top.dtype == torch.float32 and not top.requires_grad
    close(top, argmax_reference(x, top_k, out_max_val, axis))
    assert module.top_shapes([shape]) == [tuple(top.shape)]


def test_argmax_errors() -> None:
    build_error(
        'layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 4 axis: 1 } }',
        "top_k 4 must be between 1 and the 3",
        x=(2, 3),
    )
    build_error(
        'layer { name: "am" type: "ArgMax" bottom: "x" top: "y" argmax_param { top_k: 0 } }',
        "top_k 0",
        x=(2, 3),
    )


# -- Silence / Parameter / Embed -------------------------------------------------------------------------


def test_silence_gives_no_diff() -> None:
    net = make_net(
        'layer { name: "s" type: "Silence" bottom: "a" bottom: "b" }\n'
        'layer { name: "t" type: "TanH" bottom: "b" top: "y" }',
        a=(2, 3),
        b=(2, 3),
    )
    a, b = rand(2, 3), rand(2, 3)
    out, inputs = run(net, a=a, b=b)
    assert sorted(out) == ["y"]
    backward(out, {"y": np.ones((2, 3), dtype=np.float32)})
    close(inputs["a"].grad, np.zeros((2, 3)))
    close(inputs["b"].grad, 1 - np.tanh(b.astype(np.float64)) ** 2, rtol=1e-5)
    build_error('layer { name: "s" type: "Silence" bottom: "a" top: "z" }', "produces 0 top", a=(2, 3))


def test_parameter_outputs_its_blob() -> None:
    net = make_net(
        'layer { name: "p" type: "Parameter" top: "p" parameter_param { shape { dim: 3 dim: 5 } '
        'blob_filler { type: "constant" value: 2.5 } } }\n'
        'layer { name: "e" type: "Eltwise" bottom: "x" bottom: "p" top: "y" '
        "eltwise_param { operation: PROD } }",
        x=(3, 5),
    )
    (blob,) = net.params["p"]
    assert blob.shape == (3, 5) and torch.all(blob == 2.5)
    x = rand(3, 5)
    out, _ = run(net, x=x)
    close(out["y"], 2.5 * x.astype(np.float64))
    g = rand(3, 5)
    backward(out, {"y": g})
    close(blob.grad, g.astype(np.float64) * x)
    build_error('layer { name: "p" type: "Parameter" bottom: "x" top: "p" }', "takes 0 bottom", x=(3,))


def test_embed_matches_reference() -> None:
    net = make_net(
        'layer { name: "em" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 5 input_dim: 7 '
        'weight_filler { type: "gaussian" std: 1 } bias_filler { type: "gaussian" std: 1 } } }',
        x=(2, 3),
    )
    w, b = (t.detach().numpy().astype(np.float64) for t in net.params["em"])
    assert w.shape == (7, 5) and b.shape == (5,)
    x = np.array([[0, 3, 3], [6, 2.9, 3]], dtype=np.float32)  # 2.9 truncates to 2, as static_cast<int>
    index = x.astype(int)
    out, inputs = run(net, x=x)
    close(out["y"], w[index] + b, rtol=1e-6)
    g = rand(2, 3, 5)
    backward(out, {"y": g})
    wgrad = np.zeros((7, 5))
    for n, i in enumerate(index.reshape(-1)):
        wgrad[i] += g.reshape(-1, 5)[n]
    close(net.params["em"][0].grad, wgrad)
    close(net.params["em"][1].grad, g.reshape(-1, 5).sum(0).astype(np.float64))
    assert inputs["x"].grad is None
    with pytest.raises(LayerError, match=r"'em' \(Embed\): index 7 is out of range for input_dim 7"):
        net(x=torch.tensor([[0.0, 7.0, 1.0], [0, 0, 0]]))


def test_embed_errors() -> None:
    build_error(
        'layer { name: "em" type: "Embed" bottom: "x" top: "y" embed_param { input_dim: 3 } }',
        "num_output must be positive",
        x=(2,),
    )
    build_error(
        'layer { name: "em" type: "Embed" bottom: "x" top: "y" embed_param { num_output: 3 } }',
        "input_dim must be positive",
        x=(2,),
    )
