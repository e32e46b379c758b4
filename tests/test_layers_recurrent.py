"""LSTM, RNN, LSTMUnit, BN, Im2col and Local against float64 transcriptions of Caffe's C++ (the
unrolled nets of BVLC's recurrent layers, the fork's BN and Local), autograd gradchecks where Caffe's
backward is the exact gradient, Caffe's own backward where it is not, carried state, and errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers.im2col import im2col

FWD = {"rtol": 1e-5, "atol": 1e-6}
F64 = {"rtol": 1e-10, "atol": 1e-12}


def inputs_text(shapes: dict[str, tuple[int, ...]]) -> str:
    lines = []
    for name, shape in shapes.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        lines.append(
            f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}'
        )
    return "\n".join(lines) + "\n"


def make_net(layer: str, shapes: dict[str, tuple[int, ...]], phase: str = "TRAIN") -> cc.Net:
    return cc.Net(inputs_text(shapes) + layer, phase=phase)


def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def f64(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: p.detach().double().numpy() for name, p in module.named_parameters()}


def gradcheck_module(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], reset: bool = False) -> None:
    """Autograd's numerical gradient check of a float64 copy of ``module`` with respect to every
    floating input that requires grad and every parameter."""
    module = module.double()
    names = [name for name, _ in module.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in module.named_parameters())
    grad_inputs = tuple(i for i in inputs if i.requires_grad)

    def run(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        given = iter(args[: len(grad_inputs)])
        call = tuple(next(given) if i.requires_grad else i for i in inputs)
        state = dict(zip(names, args[len(grad_inputs) :], strict=True))
        if reset:
            module.reset_state()
        out = torch.func.functional_call(module, state, call)
        return out if isinstance(out, tuple) else (out,)

    assert torch.autograd.gradcheck(run, grad_inputs + params, eps=1e-6, atol=1e-7, rtol=1e-5)


# -- RNN: float64 transcription of rnn_layer.cpp's unrolled net ----------------------------------------
def rnn_reference(
    p: dict[str, np.ndarray],
    x: np.ndarray,
    cont: np.ndarray,
    h0: np.ndarray,
    x_static: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """h_t = tanh(W_hh (cont_t h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]),
    o_t = tanh(W_ho h_t + b_o); returns (o, h_T)."""
    steps, streams = x.shape[:2]
    x = x.reshape(steps, streams, -1)
    h = h0.reshape(streams, -1)
    outputs = []
    for t in range(steps):
        pre = (cont[t][:, None] * h) @ p["W_hh"].T + x[t] @ p["W_xh"].T + p["b_h"]
        if x_static is not None:
            pre = pre + x_static.reshape(streams, -1) @ p["W_xh_static"].T
        h = np.tanh(pre)
        outputs.append(np.tanh(h @ p["W_ho"].T + p["b_o"]))
    return np.stack(outputs), h[None]


RNN_LAYER = """layer {{ name: "rnn" type: "RNN" {bottoms} {tops}
  recurrent_param {{ num_output: 4 {extra} weight_filler {{ type: "uniform" min: -0.6 max: 0.6 }}
                    bias_filler {{ type: "gaussian" std: 0.4 }} }} }}
"""


def rnn_net(static: bool = False, expose: bool = False, steps: int = 5, streams: int = 3) -> cc.Net:
    shapes = {"x": (steps, streams, 2, 3), "cont": (steps, streams)}
    bottoms = ['bottom: "x"', 'bottom: "cont"']
    if static:
        shapes["x_static"] = (streams, 5)
        bottoms.append('bottom: "x_static"')
    if expose:
        shapes["h0"] = (1, streams, 4)
        bottoms.append('bottom: "h0"')
    tops = 'top: "o" top: "hT"' if expose else 'top: "o"'
    layer = RNN_LAYER.format(
        bottoms=" ".join(bottoms), tops=tops, extra="expose_hidden: true" if expose else ""
    )
    return make_net(layer, shapes)


def rnn_inputs(
    seed: int, static: bool, expose: bool, steps: int = 5, streams: int = 3
) -> dict[str, np.ndarray]:
    r = rng(seed)
    cont = np.ones((steps, streams))
    cont[0, :] = 0
    cont[2, 1] = 0  # stream 1 starts a new sequence at t = 2
    data = {"x": r.standard_normal((steps, streams, 2, 3)), "cont": cont}
    if static:
        data["x_static"] = r.standard_normal((streams, 5))
    if expose:
        data["h0"] = r.standard_normal((1, streams, 4)) * 0.5
    return data


@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("expose", [False, True])
def test_rnn_matches_the_unrolled_net_equations(static: bool, expose: bool) -> None:
    net = rnn_net(static, expose)
    module = net.layers["rnn"]
    names = [spec.name for spec in module.present_blob_specs()]
    expected_names = ["W_xh", "b_h"] + (["W_xh_static"] if static else []) + ["W_hh", "W_ho", "b_o"]
    assert names == expected_names
    assert [tuple(b.shape) for b in net.params["rnn"]] == [
        (4, 6),
        (4,),
        *([(4, 5)] if static else []),
        (4, 4),
        (4, 4),
        (4,),
    ]
    data = rnn_inputs(1, static, expose)
    outputs = net(**{k: torch.tensor(v, dtype=torch.float32) for k, v in data.items()})
    h0 = data.get("h0", np.zeros((1, 3, 4)))
    o, h_last = rnn_reference(f64(module), data["x"], data["cont"], h0, data.get("x_static"))
    np.testing.assert_allclose(outputs["o"].detach().numpy(), o, **FWD)
    if expose:
        np.testing.assert_allclose(outputs["hT"].detach().numpy(), h_last, **FWD)


@pytest.mark.parametrize("static", [False, True])
def test_rnn_backward_is_the_exact_gradient(static: bool) -> None:
    net = rnn_net(static, expose=True, steps=3, streams=2)
    data = rnn_inputs(2, static, True, steps=3, streams=2)
    inputs = [torch.tensor(data["x"], requires_grad=True), torch.tensor(data["cont"])]
    if static:
        inputs.append(torch.tensor(data["x_static"], requires_grad=True))
    inputs.append(torch.tensor(data["h0"]))
    gradcheck_module(net.layers["rnn"], tuple(inputs))


def test_rnn_without_expose_hidden_gradchecks_from_its_carried_state() -> None:
    net = rnn_net(static=True, steps=3, streams=2)
    data = rnn_inputs(3, True, False, steps=3, streams=2)
    inputs = (
        torch.tensor(data["x"], requires_grad=True),
        torch.tensor(data["cont"]),
        torch.tensor(data["x_static"], requires_grad=True),
    )
    gradcheck_module(net.layers["rnn"], inputs, reset=True)


def test_rnn_carries_its_final_state_into_the_next_forward() -> None:
    net = rnn_net()
    module = net.layers["rnn"]
    first, second = rnn_inputs(4, False, False), rnn_inputs(5, False, False)
    second["cont"][:] = 1.0  # continue every stream
    params = f64(module)
    o1, h1 = rnn_reference(params, first["x"], first["cont"], np.zeros((1, 3, 4)))
    o2, h2 = rnn_reference(params, second["x"], second["cont"], h1)
    tensors = [{k: torch.tensor(v, dtype=torch.float32) for k, v in d.items()} for d in (first, second)]
    out1 = net(**tensors[0])["o"].detach().numpy()
    out2 = net(**tensors[1])["o"].detach().numpy()
    np.testing.assert_allclose(out1, o1, **FWD)
    np.testing.assert_allclose(out2, o2, **FWD)
    np.testing.assert_allclose(module.h_state.numpy(), h2, **FWD)
    assert "h_state" not in [spec.name for spec in module.caffe_blobs]
    # cont = 0 at a step forgets the carried state for that stream; reset_state zeroes it
    module.reset_state()
    np.testing.assert_allclose(net(**tensors[0])["o"].detach().numpy(), o1, **FWD)


def test_rnn_expose_hidden_gives_h0_no_diff_and_ignores_the_diff_of_hT() -> None:
    net = rnn_net(expose=True)
    data = rnn_inputs(6, False, True)
    x = torch.tensor(data["x"], dtype=torch.float32, requires_grad=True)
    h0 = torch.tensor(data["h0"], dtype=torch.float32, requires_grad=True)
    out = net(x=x, cont=torch.tensor(data["cont"], dtype=torch.float32), h0=h0)
    assert not out["hT"].requires_grad
    out["o"].sum().backward()
    assert h0.grad is None
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_rnn_state_follows_a_change_of_the_number_of_streams() -> None:
    """Fewer streams keep the first streams' states (Caffe reuses the blob's memory); more start at 0."""
    net = rnn_net(streams=3)
    module = net.layers["rnn"]
    params = f64(module)
    data = rnn_inputs(7, False, False)
    data["cont"][:] = 1.0
    net(**{k: torch.tensor(v, dtype=torch.float32) for k, v in data.items()})
    carried = module.h_state.double().numpy().copy()
    fewer = {"x": data["x"][:, :2], "cont": data["cont"][:, :2]}
    out = net(**{k: torch.tensor(v, dtype=torch.float32) for k, v in fewer.items()})["o"]
    expected, _ = rnn_reference(params, fewer["x"], fewer["cont"], carried[:, :2])
    np.testing.assert_allclose(out.detach().numpy(), expected, **FWD)
    assert tuple(module.h_state.shape) == (1, 2, 4)
    more = {"x": np.concatenate([data["x"], data["x"][:, :1]], 1), "cont": np.ones((5, 4))}
    out = net(**{k: torch.tensor(v, dtype=torch.float32) for k, v in more.items()})["o"]
    expected, _ = rnn_reference(params, more["x"], more["cont"], np.zeros((1, 4, 4)))
    np.testing.assert_allclose(out.detach().numpy(), expected, **FWD)


# -- LSTM ------------------------------------------------------------------------------------------
def lstm_reference(
    p: dict[str, np.ndarray],
    x: np.ndarray,
    cont: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray,
    x_static: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """lstm_layer.cpp's unrolled net with lstm_unit_layer.cpp's step; returns (h, h_T, c_T)."""
    steps, streams = x.shape[:2]
    x = x.reshape(steps, streams, -1)
    h, c = h0.reshape(streams, -1), c0.reshape(streams, -1)
    size = h.shape[1]
    outputs = []
    for t in range(steps):
        gates = (cont[t][:, None] * h) @ p["W_hc"].T + x[t] @ p["W_xc"].T + p["b_c"]
        if x_static is not None:
            gates = gates + x_static.reshape(streams, -1) @ p["W_xc_static"].T
        i, f, o = (sigmoid(gates[:, k * size : (k + 1) * size]) for k in range(3))
        g = np.tanh(gates[:, 3 * size :])
        f = np.where(cont[t][:, None] == 0, 0.0, cont[t][:, None] * f)
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs), h[None], c[None]


def lstm_net(steps: int, streams: int = 2, static: bool = False, expose: bool = False) -> cc.Net:
    shapes = {"x": (steps, streams, 3), "cont": (steps, streams)}
    bottoms = ['bottom: "x"', 'bottom: "cont"']
    if static:
        shapes["x_static"] = (streams, 2, 2)
        bottoms.append('bottom: "x_static"')
    if expose:
        shapes["h0"] = shapes["c0"] = (1, streams, 3)
        bottoms += ['bottom: "h0"', 'bottom: "c0"']
    tops = 'top: "h" top: "hT" top: "cT"' if expose else 'top: "h"'
    layer = f"""layer {{ name: "lstm" type: "LSTM" {" ".join(bottoms)} {tops}
  recurrent_param {{ num_output: 3 {"expose_hidden: true" if expose else ""}
    weight_filler {{ type: "uniform" min: -0.7 max: 0.7 }} bias_filler {{ type: "gaussian" std: 0.5 }} }} }}
"""
    return make_net(layer, shapes)


@pytest.mark.parametrize("static", [False, True])
def test_lstm_matches_the_unrolled_net_equations(static: bool) -> None:
    net = lstm_net(4, static=static, expose=True)
    module = net.layers["lstm"]
    assert [tuple(b.shape) for b in net.params["lstm"]] == [
        (12, 3),
        (12,),
        *([(12, 4)] if static else []),
        (12, 3),
    ]
    r = rng(8)
    cont = np.array([[0, 1], [1, 1], [1, 0], [1, 1]], dtype=float)
    data = {"x": r.standard_normal((4, 2, 3)), "cont": cont, "h0": r.standard_normal((1, 2, 3))}
    data["c0"] = r.standard_normal((1, 2, 3))
    if static:
        data["x_static"] = r.standard_normal((2, 2, 2))
    out = net(**{k: torch.tensor(v, dtype=torch.float32) for k, v in data.items()})
    h, h_last, c_last = lstm_reference(
        f64(module), data["x"], cont, data["h0"], data["c0"], data.get("x_static")
    )
    np.testing.assert_allclose(out["h"].detach().numpy(), h, **FWD)
    np.testing.assert_allclose(out["hT"].detach().numpy(), h_last, **FWD)
    np.testing.assert_allclose(out["cT"].detach().numpy(), c_last, **FWD)


@pytest.mark.parametrize("static", [False, True])
def test_lstm_backward_is_the_exact_gradient_for_binary_cont(static: bool) -> None:
    net = lstm_net(3, static=static, expose=True)
    r = rng(9)
    inputs = [
        torch.tensor(r.standard_normal((3, 2, 3)), requires_grad=True),
        torch.tensor([[0.0, 1.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64),
    ]
    if static:
        inputs.append(torch.tensor(r.standard_normal((2, 2, 2)), requires_grad=True))
    inputs += [torch.tensor(r.standard_normal((1, 2, 3))), torch.tensor(r.standard_normal((1, 2, 3)))]
    module = net.layers["lstm"].double()

    def only_h(*args: torch.Tensor) -> torch.Tensor:
        return module(*args)[0]

    wrapper = torch.nn.Module()
    wrapper.lstm = module
    wrapper.forward = only_h  # type: ignore[method-assign]
    gradcheck_module(wrapper, tuple(inputs))


def test_lstm_carried_state_equals_one_longer_sequence() -> None:
    """Two forwards of T steps (cont all ones) give the two halves of one forward of 2T steps."""
    short, long = lstm_net(3), lstm_net(6)
    with torch.no_grad():
        for a, b in zip(short.params["lstm"], long.params["lstm"], strict=True):
            b.copy_(a)
    x = torch.tensor(rng(10).standard_normal((6, 2, 3)), dtype=torch.float32)
    ones = torch.ones(3, 2)
    first = short(x=x[:3], cont=ones)["h"]
    second = short(x=x[3:], cont=ones)["h"]
    whole = long(x=x, cont=torch.ones(6, 2))["h"]
    torch.testing.assert_close(torch.cat([first, second]), whole, **FWD)
    h, h_last, c_last = lstm_reference(
        f64(short.layers["lstm"]),
        x.double().numpy(),
        np.ones((6, 2)),
        np.zeros((1, 2, 3)),
        np.zeros((1, 2, 3)),
    )
    np.testing.assert_allclose(short.layers["lstm"].h_state.numpy(), h_last, **FWD)
    np.testing.assert_allclose(short.layers["lstm"].c_state.numpy(), c_last, **FWD)
    # the second forward's gradient stops at the carried state
    x2 = x[3:].clone().requires_grad_(True)
    short(x=x2, cont=ones)["h"].sum().backward()
    assert x2.grad is not None


def test_lstm_without_expose_hidden_gradchecks_from_its_carried_state() -> None:
    net = lstm_net(3, static=True)
    module = net.layers["lstm"]
    x = torch.tensor(rng(11).standard_normal((3, 2, 3)), dtype=torch.float32)
    net(x=x, cont=torch.ones(3, 2), x_static=torch.zeros(2, 2, 2))  # leave a non-zero state
    module.double()
    state = (module.h_state.clone(), module.c_state.clone())

    def restore() -> None:
        module.h_state.copy_(state[0])
        module.c_state.copy_(state[1])

    module.reset_state = restore  # type: ignore[method-assign]
    inputs = (
        torch.tensor(rng(12).standard_normal((3, 2, 3)), requires_grad=True),
        torch.ones(3, 2, dtype=torch.float64),
        torch.tensor(rng(13).standard_normal((2, 2, 2)), requires_grad=True),
    )
    gradcheck_module(module, inputs, reset=True)


def test_lstm_runs_in_float64() -> None:
    net = lstm_net(2).double()
    x = torch.tensor(rng(14).standard_normal((2, 2, 3)))
    h = net(x=x, cont=torch.ones(2, 2, dtype=torch.float64))["h"]
    assert h.dtype == torch.float64
    expected, _, _ = lstm_reference(
        f64(net.layers["lstm"]), x.numpy(), np.ones((2, 2)), np.zeros((1, 2, 3)), np.zeros((1, 2, 3))
    )
    np.testing.assert_allclose(h.detach().numpy(), expected, **F64)


# -- LSTMUnit --------------------------------------------------------------------------------------
UNIT = 'layer { name: "u" type: "LSTMUnit" bottom: "c_prev" bottom: "x" bottom: "cont" top: "c" top: "h" }\n'
UNIT_SHAPES = {"c_prev": (1, 4, 3), "x": (1, 4, 12), "cont": (1, 4)}


def lstm_unit_caffe_backward(
    c_prev: np.ndarray, x: np.ndarray, cont: np.ndarray, dc: np.ndarray, dh: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """lstm_unit_layer.cpp's Backward_cpu, element by element."""
    size = c_prev.shape[-1]
    d_c_prev, d_x = np.zeros_like(c_prev), np.zeros_like(x)
    for n in range(c_prev.shape[1]):
        for d in range(size):
            i = sigmoid(x[0, n, d])
            f = 0.0 if cont[0, n] == 0 else cont[0, n] * sigmoid(x[0, n, size + d])
            o = sigmoid(x[0, n, 2 * size + d])
            g = np.tanh(x[0, n, 3 * size + d])
            c = f * c_prev[0, n, d] + i * g
            tanh_c = np.tanh(c)
            c_term = dc[0, n, d] + dh[0, n, d] * o * (1 - tanh_c * tanh_c)
            d_c_prev[0, n, d] = c_term * f
            d_x[0, n, d] = c_term * g * i * (1 - i)
            d_x[0, n, size + d] = c_term * c_prev[0, n, d] * f * (1 - f)
            d_x[0, n, 2 * size + d] = dh[0, n, d] * tanh_c * o * (1 - o)
            d_x[0, n, 3 * size + d] = c_term * i * (1 - g * g)
    return d_c_prev, d_x


def test_lstm_unit_reproduces_caffes_backward_for_fractional_cont() -> None:
    """With cont = 0.5 Caffe's forget-gate diff uses f (1 - f) with f = cont sigmoid: not the exact
    gradient; cont = 0 zeroes f whatever the input."""
    net = make_net(UNIT, UNIT_SHAPES)
    r = rng(15)
    c_prev, x = r.standard_normal((1, 4, 3)), r.standard_normal((1, 4, 12)) * 2
    cont = np.array([[1.0, 0.0, 0.5, 2.0]])
    dc, dh = r.standard_normal((1, 4, 3)), r.standard_normal((1, 4, 3))
    tc, tx = torch.tensor(c_prev, requires_grad=True), torch.tensor(x, requires_grad=True)
    out = net.double()(c_prev=tc, x=tx, cont=torch.tensor(cont))
    torch.autograd.backward([out["c"], out["h"]], [torch.tensor(dc), torch.tensor(dh)])
    f = np.where(cont[..., None] == 0, 0.0, cont[..., None] * sigmoid(x[..., 3:6]))
    c = f * c_prev + sigmoid(x[..., :3]) * np.tanh(x[..., 9:])
    np.testing.assert_allclose(out["c"].detach().numpy(), c, **F64)
    np.testing.assert_allclose(out["h"].detach().numpy(), sigmoid(x[..., 6:9]) * np.tanh(c), **F64)
    want_c_prev, want_x = lstm_unit_caffe_backward(c_prev, x, cont, dc, dh)
    np.testing.assert_allclose(tc.grad.numpy(), want_c_prev, **F64)
    np.testing.assert_allclose(tx.grad.numpy(), want_x, **F64)
    exact = torch.autograd.functional.jacobian(
        lambda xx: cont[0, 2] * torch.sigmoid(xx), torch.tensor(x[0, 2, 3:6])
    ).diagonal()
    caffe_factor = torch.tensor(f[0, 2] * (1 - f[0, 2]))
    assert not torch.allclose(exact, caffe_factor)  # the quirk is real


def test_lstm_unit_gradchecks_with_binary_cont() -> None:
    net = make_net(UNIT, UNIT_SHAPES)
    r = rng(16)
    inputs = (
        torch.tensor(r.standard_normal((1, 4, 3)), requires_grad=True),
        torch.tensor(r.standard_normal((1, 4, 12)), requires_grad=True),
        torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64),
    )
    gradcheck_module(net.layers["u"], inputs)


# -- BN --------------------------------------------------------------------------------------------
def bn_net(phase: str = "TRAIN", frozen: bool = False, shape: tuple[int, ...] = (4, 3, 2, 5)) -> cc.Net:
    layer = f"""layer {{ name: "bn" type: "BN" bottom: "x" top: "y"
  bn_param {{ momentum: 0.7 eps: 0.01 frozen: {str(frozen).lower()}
             slope_filler {{ type: "uniform" min: 0.5 max: 1.5 }} bias_filler {{ type: "gaussian" std: 1 }} }} }}
"""
    return make_net(layer, {"x": shape}, phase)


def _bn_setup(net: cc.Net) -> tuple[np.ndarray, ...]:
    module = net.layers["bn"]
    r = rng(17)
    with torch.no_grad():
        module.moving_mean.copy_(torch.tensor(r.standard_normal((1, 3))))
        module.moving_inv_std.copy_(torch.tensor(r.uniform(0.5, 2.0, (1, 3))))
    return tuple(t.detach().double().numpy().reshape(-1) for t in net.params["bn"])


@pytest.mark.parametrize("shape", [(4, 3, 2, 5), (6, 3), (5, 3, 4)])
def test_bn_train_normalizes_with_the_batch_and_updates_the_moving_statistics(shape: tuple[int, ...]) -> None:
    net = bn_net(shape=shape)
    slope, bias, mean0, inv0 = _bn_setup(net)
    x = rng(18).standard_normal(shape) * 3 + 1
    dims = (0, *range(2, len(shape)))
    view = (1, 3) + (1,) * (len(shape) - 2)
    mean, var = x.mean(axis=dims), x.var(axis=dims)
    inv = 1.0 / np.sqrt(var + float(np.float32(0.01)))  # eps and momentum are float in caffe.proto
    tx = torch.tensor(x, requires_grad=True)
    y = net.double()(x=tx)["y"]
    expected = slope.reshape(view) * (x - mean.reshape(view)) * inv.reshape(view) + bias.reshape(view)
    np.testing.assert_allclose(y.detach().numpy(), expected, **F64)
    after = [t.detach().numpy().reshape(-1) for t in net.params["bn"]]
    momentum = float(np.float32(0.7))
    np.testing.assert_allclose(after[2], (1 - momentum) * mean + momentum * mean0, **F64)
    np.testing.assert_allclose(after[3], (1 - momentum) * inv + momentum * inv0, **F64)


def test_bn_train_backward_is_the_exact_gradient() -> None:
    net = bn_net(shape=(3, 3, 2, 2))
    _bn_setup(net)
    module = net.layers["bn"]
    x = torch.tensor(rng(19).standard_normal((3, 3, 2, 2)), requires_grad=True)
    gradcheck_module(module, (x,))


def test_bn_test_phase_uses_caffes_batch_formula_on_the_stored_statistics() -> None:
    net = bn_net("TEST")
    slope, bias, mean, inv = _bn_setup(net)
    x = rng(20).standard_normal((4, 3, 2, 5))
    dy = rng(21).standard_normal((4, 3, 2, 5))
    view = (1, 3, 1, 1)
    tx = torch.tensor(x, requires_grad=True)
    y = net.double()(x=tx)["y"]
    x_hat = (x - mean.reshape(view)) * inv.reshape(view)
    np.testing.assert_allclose(y.detach().numpy(), slope.reshape(view) * x_hat + bias.reshape(view), **F64)
    y.backward(torch.tensor(dy))
    g = dy * slope.reshape(view)
    dims = (0, 2, 3)
    dx = inv.reshape(view) * (
        g - g.mean(axis=dims, keepdims=True) - x_hat * (g * x_hat).mean(axis=dims, keepdims=True)
    )
    np.testing.assert_allclose(tx.grad.numpy(), dx, **F64)
    module = net.layers["bn"]
    np.testing.assert_allclose(module.slope.grad.numpy().reshape(-1), (dy * x_hat).sum(axis=dims), **F64)
    np.testing.assert_allclose(module.bias.grad.numpy().reshape(-1), dy.sum(axis=dims), **F64)
    after = [t.detach().numpy().reshape(-1) for t in net.params["bn"]]
    np.testing.assert_allclose(after[2], mean, **F64)  # no update in TEST
    np.testing.assert_allclose(after[3], inv, **F64)


def test_bn_frozen_uses_stored_statistics_in_train_and_gives_no_parameter_diffs() -> None:
    net = bn_net(frozen=True)
    slope, bias, mean, inv = _bn_setup(net)
    x = rng(22).standard_normal((4, 3, 2, 5))
    dy = rng(23).standard_normal((4, 3, 2, 5))
    view = (1, 3, 1, 1)
    tx = torch.tensor(x, requires_grad=True)
    y = net.double()(x=tx)["y"]
    expected = slope.reshape(view) * (x - mean.reshape(view)) * inv.reshape(view) + bias.reshape(view)
    np.testing.assert_allclose(y.detach().numpy(), expected, **F64)
    y.backward(torch.tensor(dy))
    np.testing.assert_allclose(tx.grad.numpy(), dy * (slope * inv).reshape(view), **F64)
    module = net.layers["bn"]
    assert module.slope.grad is None and module.bias.grad is None
    np.testing.assert_allclose(net.params["bn"][2].numpy().reshape(-1), mean, **F64)


def test_bn_defaults_and_blob_kinds() -> None:
    net = make_net('layer { name: "bn" type: "BN" bottom: "x" top: "y" }', {"x": (2, 4, 3, 3)})
    module = net.layers["bn"]
    assert (module.momentum, module.eps, module.frozen) == (pytest.approx(0.9), pytest.approx(1e-5), False)
    slope, bias, mean, inv = net.params["bn"]
    assert all(tuple(b.shape) == (1, 4) for b in (slope, bias, mean, inv))
    assert (
        float(slope.detach().abs().sum()) == 0 and float(bias.detach().abs().sum()) == 0
    )  # constant-0 fillers
    assert float(mean.abs().sum()) == 0 and torch.equal(inv, torch.ones(1, 4))
    assert isinstance(slope, torch.nn.Parameter) and not isinstance(mean, torch.nn.Parameter)


# -- Im2col ----------------------------------------------------------------------------------------
def im2col_reference(
    x: np.ndarray,
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pad: tuple[int, ...],
    dilation: tuple[int, ...],
) -> np.ndarray:
    """im2col_nd_cpu for one batch of images (N, C, *spatial), by loops."""
    spatial = x.shape[2:]
    out = [
        (size + 2 * p - (d * (k - 1) + 1)) // s + 1
        for size, k, s, p, d in zip(spatial, kernel, stride, pad, dilation, strict=True)
    ]
    taps = list(itertools.product(*(range(k) for k in kernel)))
    cols = np.zeros((x.shape[0], x.shape[1] * len(taps), *out))
    for n, c in itertools.product(range(x.shape[0]), range(x.shape[1])):
        for j, offsets in enumerate(taps):
            for position in itertools.product(*(range(o) for o in out)):
                source = [
                    q * s - p + o * d
                    for q, s, p, o, d in zip(position, stride, pad, offsets, dilation, strict=True)
                ]
                inside = all(0 <= v < size for v, size in zip(source, spatial, strict=True))
                cols[(n, c * len(taps) + j, *position)] = x[(n, c, *source)] if inside else 0.0
    return cols


@pytest.mark.parametrize(
    ("shape", "kernel", "stride", "pad", "dilation"),
    [
        ((2, 3, 5, 7), (3, 2), (2, 1), (1, 0), (1, 2)),
        ((1, 2, 9), (4,), (3,), (2,), (1,)),
        ((1, 2, 4, 5, 3), (2, 3, 2), (1, 2, 1), (1, 0, 1), (1, 1, 2)),
        ((2, 1, 4, 4), (3, 3), (3, 3), (0, 0), (1, 1)),
    ],
)
def test_im2col_matches_caffes_loops(
    shape: tuple[int, ...],
    kernel: tuple[int, ...],
    stride: tuple[int, ...],
    pad: tuple[int, ...],
    dilation: tuple[int, ...],
) -> None:
    x = rng(24).standard_normal(shape)
    got = im2col(torch.tensor(x), kernel, stride, pad, dilation).numpy()
    np.testing.assert_array_equal(got, im2col_reference(x, kernel, stride, pad, dilation))


def test_im2col_layer_agrees_with_unfold_and_gradchecks() -> None:
    layer = """layer { name: "i" type: "Im2col" bottom: "x" top: "y"
  convolution_param { kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 1 dilation: 1 } }"""
    net = make_net(layer, {"x": (2, 3, 6, 5)})
    x = torch.tensor(rng(25).standard_normal((2, 3, 6, 5)), dtype=torch.float32)
    y = net(x=x)["y"]
    unfolded = F.unfold(x, (3, 2), padding=(1, 1), stride=(2, 1))
    assert tuple(y.shape) == (2, 18, 3, 6)
    torch.testing.assert_close(y.reshape(2, 18, -1), unfolded, rtol=0, atol=0)
    gradcheck_module(net.layers["i"], (torch.tensor(x.double().numpy(), requires_grad=True),))


def test_im2col_with_a_later_channel_axis_treats_leading_axes_as_images() -> None:
    layer = """layer { name: "i" type: "Im2col" bottom: "x" top: "y"
  convolution_param { axis: 2 kernel_size: 2 } }"""
    net = make_net(layer, {"x": (2, 3, 4, 5, 6)})
    x = rng(26).standard_normal((2, 3, 4, 5, 6))
    y = net.double()(x=torch.tensor(x))["y"].numpy()
    expected = im2col_reference(x.reshape(6, 4, 5, 6), (2, 2), (1, 1), (0, 0), (1, 1)).reshape(2, 3, 16, 4, 5)
    np.testing.assert_array_equal(y, expected)


def test_im2col_keeps_a_window_that_overhangs_the_padded_input() -> None:
    """(5 + 0 - 6) / 4 + 1 = 1 with C's truncation: one window, reading zeros past the input."""
    layer = """layer { name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 6 stride: 4 } }"""
    net = make_net(layer, {"x": (1, 1, 5, 5)})
    x = torch.arange(25, dtype=torch.float32).reshape(1, 1, 5, 5) + 1
    y = net(x=x)["y"]
    assert tuple(y.shape) == (1, 36, 1, 1)
    expected = F.pad(x, (0, 1, 0, 1)).reshape(36)
    torch.testing.assert_close(y.reshape(36), expected, rtol=0, atol=0)


# -- Local -----------------------------------------------------------------------------------------
def local_reference(
    x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, k: int, s: int, p: int
) -> np.ndarray:
    n, c, h, w = x.shape
    out_h, out_w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    m = weight.shape[0]
    y = np.zeros((n, m, out_h, out_w))
    for b, o, i, j in itertools.product(range(n), range(m), range(out_h), range(out_w)):
        position = i * out_w + j
        total = 0.0
        for ch, u, v in itertools.product(range(c), range(k), range(k)):
            total += weight[o, 0, (ch * k + u) * k + v, position] * padded[b, ch, i * s + u, j * s + v]
        y[b, o, i, j] = total + (bias[0, 0, o, position] if bias is not None else 0.0)
    return y


LOCAL = """layer {{ name: "lc" type: "Local" bottom: "x" top: "y"
  local_param {{ num_output: 3 kernel_size: {k} stride: {s} pad: {p} bias_term: {bias}
                weight_filler {{ type: "gaussian" std: 0.5 }} bias_filler {{ type: "gaussian" std: 0.5 }} }} }}"""


@pytest.mark.parametrize(("k", "s", "p", "bias"), [(3, 1, 0, True), (2, 2, 1, False), (3, 2, 2, True)])
def test_local_matches_the_per_position_sum_and_gradchecks(k: int, s: int, p: int, bias: bool) -> None:
    net = make_net(LOCAL.format(k=k, s=s, p=p, bias=str(bias).lower()), {"x": (2, 2, 5, 6)})
    module = net.layers["lc"]
    out_h, out_w = (5 + 2 * p - k) // s + 1, (6 + 2 * p - k) // s + 1
    assert tuple(module.weight.shape) == (3, 1, 2 * k * k, out_h * out_w)
    assert (module.bias is not None) == bias
    if bias:
        assert tuple(module.bias.shape) == (1, 1, 3, out_h * out_w)
    x = rng(27).standard_normal((2, 2, 5, 6))
    y = net.double()(x=torch.tensor(x))["y"]
    params = [t.detach().numpy() for t in net.params["lc"]]
    expected = local_reference(x, params[0], params[1] if bias else None, k, s, p)
    np.testing.assert_allclose(y.detach().numpy(), expected, **F64)
    gradcheck_module(module, (torch.tensor(x, requires_grad=True),))


def test_local_overwrites_its_parameter_diffs_like_caffe() -> None:
    """Caffe's Local memsets its blobs' diffs in backward: a second backward without clearing
    leaves the last pass's gradient, while the input's and other layers' diffs accumulate."""
    net = make_net(LOCAL.format(k=2, s=1, p=0, bias="true"), {"x": (2, 2, 4, 4)})
    module = net.layers["lc"]
    first = torch.tensor(rng(28).standard_normal((2, 2, 4, 4)), dtype=torch.float32)
    second = torch.tensor(rng(29).standard_normal((2, 2, 4, 4)), dtype=torch.float32)
    net(x=first)["y"].sum().backward()
    net(x=second)["y"].sum().backward()
    weight_grad, bias_grad = module.weight.grad.clone(), module.bias.grad.clone()
    module.weight.grad = None
    module.bias.grad = None
    net(x=second)["y"].sum().backward()
    torch.testing.assert_close(weight_grad, module.weight.grad, rtol=0, atol=0)
    torch.testing.assert_close(bias_grad, module.bias.grad, rtol=0, atol=0)


def test_local_rejects_an_input_shape_other_than_the_set_up_one() -> None:
    net = make_net(LOCAL.format(k=2, s=1, p=0, bias="true"), {"x": (2, 2, 4, 4)})
    with pytest.raises(LayerError, match="set-up shape"):
        net(x=torch.zeros(2, 2, 5, 4))
    y = net(x=torch.zeros(3, 2, 4, 4))["y"]  # another batch size is fine
    assert tuple(y.shape) == (3, 3, 3, 3)


# -- configuration errors ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layer", "shapes", "message"),
    [
        (
            'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" top: "h" }',
            {"x": (3, 2, 4), "cont": (3, 2)},
            "num_output must be positive",
        ),
        (
            'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" top: "h" recurrent_param { num_output: 2 } }',
            {"x": (3, 2, 4), "cont": (3, 3)},
            r"bottom\[1\] \(the sequence indicators\)",
        ),
        (
            'layer { name: "r" type: "RNN" bottom: "x" bottom: "cont" top: "h" recurrent_param { num_output: 2 } }',
            {"x": (3, 2), "cont": (3, 2)},
            "at least 3 axes",
        ),
        (
            'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" top: "h" top: "hT" recurrent_param { num_output: 2 } }',
            {"x": (3, 2, 4), "cont": (3, 2)},
            "produces 1 top",
        ),
        (
            'layer { name: "r" type: "LSTM" bottom: "x" bottom: "cont" bottom: "h0" top: "h" top: "hT" top: "cT"'
            " recurrent_param { num_output: 2 expose_hidden: true } }",
            {"x": (3, 2, 4), "cont": (3, 2), "h0": (1, 2, 2)},
            "takes 4 or 5 bottom",
        ),
        (
            'layer { name: "r" type: "RNN" bottom: "x" bottom: "cont" bottom: "h0" top: "o" top: "hT"'
            " recurrent_param { num_output: 2 expose_hidden: true } }",
            {"x": (3, 2, 4), "cont": (3, 2), "h0": (1, 2, 3)},
            "hidden state input shape",
        ),
        (
            'layer { name: "r" type: "RNN" bottom: "x" bottom: "cont" bottom: "s" top: "o" recurrent_param { num_output: 2 } }',
            {"x": (3, 2, 4), "cont": (3, 2), "s": (3, 5)},
            "static input",
        ),
        (UNIT, {"c_prev": (1, 4, 3), "x": (1, 4, 10), "cont": (1, 4)}, "4 \\* 3 = 12 channels"),
        (UNIT, {"c_prev": (2, 4, 3), "x": (2, 4, 12), "cont": (2, 4)}, "single timestep"),
        ('layer { name: "b" type: "BN" bottom: "x" top: "y" }', {"x": (2, 3, 4, 5, 6)}, "2 to 4 axes"),
        ('layer { name: "i" type: "Im2col" bottom: "x" top: "y" }', {"x": (2, 3, 4, 5)}, "kernel_size"),
        (
            'layer { name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 3 stride: 0 } }',
            {"x": (2, 3, 4, 5)},
            "stride dimensions must be nonzero",
        ),
        (
            'layer { name: "i" type: "Im2col" bottom: "x" top: "y" convolution_param { kernel_size: 9 } }',
            {"x": (2, 3, 4, 5)},
            "empty output",
        ),
        (
            'layer { name: "l" type: "Local" bottom: "x" top: "y" local_param { num_output: 2 kernel_size: 5 } }',
            {"x": (2, 3, 4, 6)},
            "smaller than the kernel",
        ),
        (
            'layer { name: "l" type: "Local" bottom: "x" top: "y" local_param { num_output: 2 } }',
            {"x": (2, 3, 4, 6)},
            "kernel_size must be positive",
        ),
        (
            'layer { name: "l" type: "Local" bottom: "x" top: "y" local_param { num_output: 2 kernel_size: 2 } }',
            {"x": (2, 3, 4)},
            "4-D",
        ),
    ],
)
def test_bad_configurations_raise_layer_errors(
    layer: str, shapes: dict[str, tuple[int, ...]], message: str
) -> None:
    with pytest.raises(LayerError, match=message):
        make_net(layer, shapes)


def test_recurrent_layers_reject_a_changed_number_of_timesteps() -> None:
    net = lstm_net(3)
    with pytest.raises(LayerError, match="number of timesteps changed"):
        net(x=torch.zeros(4, 2, 3), cont=torch.ones(4, 2))
