"""caffe_compat.losses: the margin heads against float64 references of their formulas, exact
gradients (gradcheck), the losses of the seed's loss.py, the factories' errors, and the Caffe
``MarginHead`` layer (against the native head, real Caffe's AM-Softmax golden and the Caffe-layer
composition Normalize -> normalized InnerProduct -> LabelSpecificAdd -> Scale -> SoftmaxWithLoss)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.layers import layer_class
from caffe_compat.losses import HEAD_KINDS, make_head, make_loss
from caffe_compat.proto.io import blob_to_array

GOLDEN = Path(__file__).parent / "goldens" / "layers" / "amsoftmax_head"
N, D, C = 6, 5, 7


def data(
    dtype: torch.dtype = torch.float64, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g, dtype=dtype)
    w = torch.randn(C, D, generator=g, dtype=dtype)
    y = torch.randint(0, C, (N,), generator=g)
    return x, w, y


def reference(kind: str, x: torch.Tensor, w: torch.Tensor, y: torch.Tensor, **p) -> torch.Tensor:
    """The formulas, written independently with plain differentiable ops (float64).

    cos = clamp(x/|x| . w_j/|w_j|, -1, 1); c = cos_y; target f(c):
      normface c; am c - m (easy: if c > 0; conditional: if c > m); arc cos(acos(c) + m) (easy: if c > 0);
      sphereface (lam c + (-1)^k cos(m acos c) - 2k) / (1 + lam), k = floor(m acos(c) / pi);
    mv/sv: negatives with cos_k > g(c) (g = am/arc target without easy) become
      (t+1) cos_k + t (adaptive), cos_k + t (fixed), t cos_k + t - 1 (sv); logits = s * result.
    """
    if kind == "fc":
        return x @ w.t()
    s, m, t = p.get("s", 32.0), p.get("m"), p.get("t")
    cos = ((x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).t()).clamp(-1, 1)
    rows = torch.arange(len(y))
    c = cos[rows, y]
    arc = kind.endswith("arc")
    if m is None:
        m = 4 if kind == "sphereface" else 0.35  # the seed's default margin for every type
    if kind == "normface":
        return s * cos
    if kind == "sphereface":
        lam = p["lam"]
        theta = torch.acos(c)
        k = torch.floor(m * theta.detach() / math.pi)
        psi = (-1.0) ** k * torch.cos(m * theta) - 2 * k
        f = (lam * c + psi) / (1 + lam)
    else:
        g = torch.cos(torch.acos(c) + m) if arc else c - m
        f = g
        if p.get("easy_margin", not p.get("conditional")):  # the seed's default: easy_margin=True
            f = torch.where(c > 0, g, c)
        if p.get("conditional"):
            f = torch.where(c > m, g, c)
        if kind.startswith(("mv", "sv")):
            if kind.startswith("sv"):
                t = 1.2 if t is None else t
                a, b = t, t - 1
            else:
                t = 0.2 if t is None else t
                a, b = (1.0, t) if p.get("mode") == "fixed" else (t + 1, t)
            hard = cos > g.detach()[:, None]
            cos = torch.where(hard, a * cos + b, cos)
    onehot = F.one_hot(y, cos.shape[1]).bool()
    return s * torch.where(onehot, f[:, None], cos)


CASES = [
    ("fc", {}),
    ("normface", {"s": 10.0}),
    ("sphereface", {"m": 4}),
    ("sphereface", {"m": 2, "s": 5.0}),
    ("am", {"m": 0.35}),
    ("am", {"m": 0.35, "easy_margin": False}),
    ("am", {"m": 0.35, "conditional": True}),
    ("arc", {"m": 0.5, "easy_margin": False}),
    ("arc", {}),
    ("mv-am", {"m": 0.35, "t": 0.2}),
    ("mv-am", {"m": 0.2, "t": 0.3, "mode": "fixed", "easy_margin": True}),
    ("mv-arc", {"m": 0.5, "t": 0.2, "easy_margin": False}),
    ("mv-am", {}),
    ("mv-arc", {"m": 0.3, "t": 0.2, "easy_margin": True}),
    ("sv-am", {"m": 0.35, "t": 1.2}),
    ("sv-arc", {"m": 0.5, "t": 1.5}),
]


def head_for(kind: str, params: dict, w: torch.Tensor):
    head = make_head(kind, D, C, **params).to(w.dtype)
    with torch.no_grad():
        head.weight.copy_(w)
    return head


@pytest.mark.parametrize(("kind", "params"), CASES, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CASES)])
def test_head_matches_float64_formula_and_its_gradient(kind: str, params: dict) -> None:
    x, w, y = data()
    head = head_for(kind, params, w)
    ref_params = dict(params, lam=max(5.0, 1000.0 * (1 + 1e-4 * 1) ** -2))  # first training forward
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    expected = reference(kind, xr, wr, y, **ref_params)
    xo = x.clone().requires_grad_()
    out = head(xo, y)
    torch.testing.assert_close(out, expected.detach(), rtol=1e-12, atol=1e-12)
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(5))
    (expected * upstream).sum().backward()
    (out * upstream).sum().backward()
    torch.testing.assert_close(xo.grad, xr.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(head.weight.grad, wr.grad, rtol=1e-10, atol=1e-12)
    # float32 agrees with the float64 formula within float32 rounding
    head32 = head_for(kind, params, w.float())
    torch.testing.assert_close(head32(x.float(), y).double(), expected.detach(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", list(HEAD_KINDS))
def test_gradcheck_float64(kind: str) -> None:
    x, w, y = data(seed=3)
    head = make_head(kind, D, C).double().eval()  # eval: SphereFace's lambda stays fixed
    x.requires_grad_()
    w.requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: head.logits(a, y, b), (x, w))


def test_gradcheck_learnable_scale() -> None:
    x, w, y = data(seed=4)
    head = make_head("mv-arc", D, C, learnable_scale=True, s=7.0).double()
    assert isinstance(head.s, torch.nn.Parameter) and head.s.item() == 7.0
    x.requires_grad_()
    w.requires_grad_()
    s = head.s.detach().clone().requires_grad_()

    def run(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(head, {"s": scale, "weight": b}, (a, y))

    assert torch.autograd.gradcheck(run, (x, w, s))


def test_clamped_cosines_get_zero_gradient() -> None:
    """A cosine computed above 1 is clamped and passes no gradient (as torch.clamp's backward)."""
    head = make_head("am", 16, 3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        w = torch.randn(3, 16, generator=gen)
        with torch.no_grad():
            head.weight.copy_(w)
            raw = F.normalize(w[:1]) @ w.t() / w.norm(dim=1)
        if raw[0, 0] > 1:
            break
    else:
        raise AssertionError("the seeded search found no float32 cosine above 1")
    x = w[:1].clone().requires_grad_()
    out = head(x, torch.tensor([1]))
    assert out[0, 0].item() == pytest.approx(32.0) and out.abs().max().item() <= 32.0
    out[0, 0].backward()
    assert torch.count_nonzero(x.grad) == 0 and torch.count_nonzero(head.weight.grad) == 0


def test_zero_and_tiny_weight_rows_follow_f_normalize() -> None:
    """Rows with norm below F.normalize's eps are divided by eps, with no gradient through the norm."""
    head = make_head("normface", 4, 3, s=2.0).double()
    with torch.no_grad():
        head.weight[1] = 0.0
        head.weight[2] *= 1e-13
    x = torch.randn(2, 4, dtype=torch.float64, requires_grad=True)
    xr, wr = x.detach().clone().requires_grad_(), head.weight.detach().clone().requires_grad_()
    out = head(x)
    ref = 2.0 * F.normalize(xr) @ F.normalize(wr).t()
    torch.testing.assert_close(out, ref)
    upstream = torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(1))
    (out * upstream).sum().backward()
    (ref * upstream).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    torch.testing.assert_close(head.weight.grad, wr.grad)


def test_mv_threshold_ignores_easy_margin_as_the_seed() -> None:
    """The seed compares negatives with cos_y - m even when easy_margin changes the target."""
    head = make_head("mv-am", 2, 3, m=0.35, t=0.2, easy_margin=True, s=1.0).double()
    angle = torch.tensor([1.7, 1.5, 0.0], dtype=torch.float64)  # cos_y = cos(1.7) < 0
    with torch.no_grad():
        head.weight.copy_(torch.stack([angle.cos(), angle.sin()], 1))
    out = head(torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([0]))[0]
    c = math.cos(1.7)
    assert out[0].item() == pytest.approx(c)  # easy margin: target unchanged (c <= 0)
    assert out[1].item() == pytest.approx(1.2 * math.cos(1.5) + 0.2)  # cos(1.5) > c - 0.35
    assert out[2].item() == pytest.approx(1.2 + 0.2)


def test_sphereface_psi_lambda_schedule_and_counter() -> None:
    head = make_head("sphereface", 2, 2, m=4, s=1.0, base=1000, gamma=0.12, power=1, lambda_min=5).double()
    assert head.lambda_ == pytest.approx(1000.0)
    angles = torch.linspace(0.05, 3.1, 9, dtype=torch.float64)
    x = torch.stack([angles.cos(), angles.sin()], 1)
    y = torch.zeros(9, dtype=torch.long)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    head.train()
    out = head(x, y)
    lam = 1000.0 / (1 + 0.12)
    assert head.lambda_ == pytest.approx(lam) and int(head.iteration) == 1
    k = torch.floor(4 * angles / math.pi)
    psi = (-1.0) ** k * torch.cos(4 * angles) - 2 * k
    torch.testing.assert_close(out[:, 0], (lam * angles.cos() + psi) / (1 + lam))
    head.eval()
    head(x, y)
    assert int(head.iteration) == 1  # eval mode does not advance the schedule
    head.iteration.fill_(2000)
    assert head.lambda_ == 5.0  # lambda_min


def test_saved_state_is_one_bool_mask_not_a_logit_copy() -> None:
    """Backward of an MV head keeps no float tensor of the logits' size (the memory contract)."""
    head = make_head("mv-am", 32, 500)
    logits = head(torch.randn(40, 32, requires_grad=True), torch.randint(0, 500, (40,)))
    saved = [t for t in logits.grad_fn.saved_tensors if t is not None]
    full = [t for t in saved if t.numel() >= logits.numel()]
    assert [t.dtype for t in full] == [torch.bool]
    assert sum(t.numel() * t.element_size() for t in saved) < 0.5 * logits.numel() * 4 + 500 * 32 * 4 + 8192


# -- losses ------------------------------------------------------------------------------------
def test_losses_match_the_seed() -> None:
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(10, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 6, (10,), generator=gen)
    ce = F.cross_entropy(logits, y, reduction="none")
    torch.testing.assert_close(make_loss("softmax")(logits, y), ce.mean())
    pt = torch.exp(-ce)
    torch.testing.assert_close(make_loss("focal", gamma=2.0)(logits, y), ((1 - pt) ** 2 * ce).mean())
    torch.testing.assert_close(make_loss("focal", gamma=0.0)(logits, y), ce.mean())
    # the seed: sum(F.cross_entropy(pred[kept], label[kept])) over the int(0.7 * 10) largest losses
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    kept = torch.argsort(-ce)[: int(0.7 * 10)]
    seed = torch.sum(F.cross_entropy(a[kept], y[kept]))
    ours = make_loss("hardmining", save_rate=0.7)(b, y)
    torch.testing.assert_close(ours, seed)
    torch.testing.assert_close(ours, ce.sort(descending=True).values[:7].mean())
    seed.backward()
    ours.backward()
    torch.testing.assert_close(b.grad, a.grad)


def test_loss_errors() -> None:
    with pytest.raises(
        ValueError, match="unknown loss kind 'hinge'; known kinds: softmax, focal, hardmining"
    ):
        make_loss("hinge")
    with pytest.raises(
        TypeError, match="loss kind 'softmax' takes no parameter gamma; it takes no parameters"
    ):
        make_loss("softmax", gamma=2)
    with pytest.raises(ValueError, match="gamma >= 0, got -1"):
        make_loss("focal", gamma=-1)
    with pytest.raises(ValueError, match=r"save_rate must be in \(0, 1\], got 1.5"):
        make_loss("hardmining", save_rate=1.5)
    with pytest.raises(ValueError, match=r"keeps int\(0.5 \* 1\) = 0 samples"):
        make_loss("hardmining", save_rate=0.5)(torch.randn(1, 3), torch.tensor([0]))


# -- factory -----------------------------------------------------------------------------------
def test_make_head_names_shapes_and_aliases() -> None:
    for kind in HEAD_KINDS:
        head = make_head(kind, 12, 34)
        assert head.kind == kind and tuple(head.weight.shape) == (34, 12)
    head = make_head("arc", 4, 3, margin=0.4, scale=16, easy_margin=True)
    assert (head.m, head.s, head.easy_margin) == (0.4, 16.0, True)
    assert make_head("sphereface", 4, 3, alpha=0.12).gamma == 0.12
    assert (make_head("mv-arc", 4, 3).m, make_head("sv-am", 4, 3).t, make_head("sphereface", 4, 3).m) == (
        0.35,
        1.2,
        4,
    )
    # the seed's FC defaults (margin 0.35, t 0.2, scale 32, easy_margin True) for every kind it has
    for kind in ("am", "arc", "mv-am", "mv-arc"):
        head = make_head(kind, 4, 3)
        assert (head.m, head.s, head.easy_margin) == (0.35, 32.0, True), kind
    assert make_head("mv-am", 4, 3).t == 0.2
    assert make_head("am", 4, 3, conditional=True).easy_margin is False
    cos = make_head("normface", 4, 3).weight.norm(dim=1)
    torch.testing.assert_close(cos, torch.ones(3))  # the seed's init: unit class vectors


@pytest.mark.parametrize(
    ("kind", "params", "error", "message"),
    [
        (
            "cosface",
            {},
            ValueError,
            "unknown head kind 'cosface'; known kinds: fc, normface, sphereface, am, arc",
        ),
        ("am", {"m": 0.3, "margin": 0.3}, TypeError, "parameter 'm' given twice"),
        ("am", {"t": 0.2}, TypeError, "head kind 'am' takes no parameter t; it takes m, s, easy_margin"),
        ("arc", {"conditional": True}, TypeError, "head kind 'arc' takes no parameter conditional"),
        ("fc", {"s": 3}, TypeError, "head kind 'fc' takes no parameter s"),
        ("sv-am", {"t": 0.2}, ValueError, "SV-Softmax needs t >= 1, got 0.2"),
        ("mv-am", {"t": -0.1}, ValueError, "t must be >= 0, got -0.1"),
        ("mv-am", {"mode": "soft"}, ValueError, "mode must be 'adaptive' or 'fixed', got 'soft'"),
        ("sphereface", {"m": 0.35}, ValueError, "integer angle multiplier m >= 1, got 0.35"),
        (
            "am",
            {"easy_margin": True, "conditional": True},
            ValueError,
            "easy_margin and conditional are exclusive",
        ),
        ("normface", {"s": 0}, ValueError, "the scale s must be positive, got 0"),
        ("am", {"m": -0.1}, ValueError, "the margin m must be >= 0, got -0.1"),
    ],
)
def test_make_head_errors(kind: str, params: dict, error: type, message: str) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_head(kind, 4, 3, **params)


def test_head_call_errors() -> None:
    head = make_head("am", 4, 3)
    with pytest.raises(ValueError, match="needs the labels"):
        head(torch.randn(2, 4))
    with pytest.raises(ValueError, match="got 3 labels for a batch of 2 embeddings"):
        head(torch.randn(2, 4), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"embeddings must be \(N, D\) and weight \(C, D\); got \[2, 5\]"):
        head(torch.randn(2, 5), torch.tensor([0, 1]))
    assert make_head("normface", 4, 3)(torch.randn(2, 4)).shape == (2, 3)  # no labels needed


# -- the Caffe layer ---------------------------------------------------------------------------
def head_net(kind_params: str, num_output: int = 5, d: int = 6) -> str:
    return f"""
layer {{ name: "in_x" type: "Input" top: "x" input_param {{ shape {{ dim: 8 dim: {d} }} }} }}
layer {{ name: "in_label" type: "Input" top: "label" input_param {{ shape {{ dim: 8 }} }} }}
layer {{ name: "head" type: "MarginHead" bottom: "x" bottom: "label" top: "logit"
  margin_head_param {{ num_output: {num_output} {kind_params}
                      weight_filler {{ type: "gaussian" std: 0.3 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "logit" bottom: "label" top: "loss" }}
"""


def golden() -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    with np.load(GOLDEN / "inputs.npz") as f:
        inputs = dict(f)
    stored = cc.read_caffemodel(GOLDEN / "weights.caffemodel")
    weight = blob_to_array(next(layer for layer in stored.layer if layer.name == "fc6").blobs[0]).copy()
    with np.load(GOLDEN / "forward.npz") as f:
        forward = dict(f)
    with np.load(GOLDEN / "backward.npz") as f:
        backward = dict(f)
    return inputs, weight, forward, backward


def test_am_conditional_head_matches_real_caffe_amsoftmax_golden() -> None:
    """Native ``am`` (conditional, m 0.35, s 30) against real Caffe's Normalize -> normalized
    InnerProduct -> LabelSpecificAdd(-0.35) -> Scale(30) -> SoftmaxWithLoss (tests/goldens)."""
    inputs, weight, forward, backward = golden()
    head = make_head("am", 6, 5, m=0.35, s=30, conditional=True)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
    x = torch.from_numpy(inputs["x"]).requires_grad_()
    y = torch.from_numpy(inputs["label"]).long()
    logits = head(x, y)
    np.testing.assert_allclose(logits.detach().numpy(), forward["logit"], rtol=1e-4, atol=1e-5)
    loss = make_loss("softmax")(logits, y)
    np.testing.assert_allclose(loss.item(), forward["loss"].item(), rtol=1e-5)
    loss.backward()
    np.testing.assert_allclose(x.grad.numpy(), backward["blob/x"], rtol=1e-3, atol=1e-4)


def test_caffe_layer_equals_native_head_train_and_plain_cos_in_test() -> None:
    text = head_net('kind: "mv-arc" m: 0.4 s: 20 t: 0.3 easy_margin: true')
    train = cc.Net(text, phase="TRAIN")
    test = cc.Net(text, phase="TEST", share_from=train)
    layer = train.layers["head"]
    assert isinstance(layer, layer_class("MarginHead")) and tuple(layer.weight.shape) == (5, 6)
    assert [b.name for b in layer.present_blob_specs()] == ["weight"]
    inputs, _, _, _ = golden()
    x = torch.from_numpy(inputs["x"])
    y = torch.from_numpy(inputs["label"])
    head = make_head(
        "mv-arc", 6, 5, m=np.float32(0.4).item(), s=20, t=np.float32(0.3).item(), easy_margin=True
    )
    with torch.no_grad():
        head.weight.copy_(layer.weight)
    torch.testing.assert_close(train(x=x, label=y)["loss"], F.cross_entropy(head(x, y.long()), y.long()))
    test(x=x, label=y)
    cos = F.normalize(x) @ F.normalize(layer.weight.detach()).t()
    torch.testing.assert_close(test.blobs["logit"], 20 * cos)


def test_caffe_layer_sphereface_counter_and_learnable_scale_blob(tmp_path: Path) -> None:
    text = head_net(
        'kind: "sphereface" m: 4 base: 1000 gamma: 0.12 power: 1 lambda_min: 5 learnable_scale: true'
    )
    net = cc.Net(text, phase="TRAIN")
    layer = net.layers["head"]
    assert [b.name for b in layer.present_blob_specs()] == ["weight", "scale"]
    assert layer.scale.item() == 32.0 and isinstance(layer.scale, torch.nn.Parameter)
    x, y = torch.randn(8, 6), torch.arange(8.0) % 5
    net(x=x, label=y)
    net(x=x, label=y)
    assert int(layer.head.iteration) == 2 and layer.head.lambda_ == pytest.approx(1000 / (1 + 0.24))
    net.loss().backward()
    assert layer.scale.grad is not None and layer.scale.grad.abs().item() > 0
    net.save_caffemodel(tmp_path / "w.caffemodel")
    stored = next(lay for lay in cc.read_caffemodel(tmp_path / "w.caffemodel").layer if lay.name == "head")
    assert [list(b.shape.dim) for b in stored.blobs] == [[5, 6], [1]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("", "margin_head_param needs a kind, one of fc, normface"),
        ('kind: "cosface"', "unknown margin_head_param kind 'cosface'"),
        ('kind: "am" t: 0.3', "kind 'am' takes no margin_head_param field 't'"),
        ('kind: "sv-arc" t: 0.5', "SV-Softmax needs t >= 1, got 0.5"),
        ('kind: "sphereface" m: 2.5', "sphereface needs an integer angle multiplier m >= 1, got 2.5"),
        ('kind: "fc" learnable_scale: true', "kind 'fc' has no scale to learn"),
    ],
)
def test_caffe_layer_errors(params: str, message: str) -> None:
    with pytest.raises(LayerError, match=rf"layer 'head' \(MarginHead\): {message}"):
        cc.Net(head_net(params), phase="TRAIN")


def test_caffe_layer_shape_errors() -> None:
    with pytest.raises(LayerError, match="needs num_output > 0"):
        cc.Net(head_net('kind: "am"', num_output=0), phase="TRAIN")
    text = head_net('kind: "am"').replace(
        "input_param { shape { dim: 8 } }", "input_param { shape { dim: 7 } }"
    )
    with pytest.raises(LayerError, match=r"got 7 labels for a batch of 8 \(label shape \[7\]\)"):
        cc.Net(text, phase="TRAIN")
    text = head_net('kind: "am"').replace(
        'bottom: "x" bottom: "label" top: "logit"', 'bottom: "x" top: "logit"'
    )
    with pytest.raises(LayerError, match="takes 2 bottom blob"):
        cc.Net(text, phase="TRAIN")


def test_am_head_equals_caffe_layer_composition() -> None:
    """MarginHead am (conditional) == Normalize, normalized InnerProduct, LabelSpecificAdd, Scale,
    SoftmaxWithLoss on the same weights: loss and the embedding gradient."""
    inputs, weight, _, _ = golden()
    composed = cc.Net(GOLDEN / "net.prototxt", weights=GOLDEN / "weights.caffemodel", phase="TRAIN")
    head = cc.Net(head_net('kind: "am" m: 0.35 s: 30 conditional: true'), phase="TRAIN")
    with torch.no_grad():
        head.layers["head"].weight.copy_(torch.from_numpy(weight))
    gen = torch.Generator().manual_seed(7)
    for x in (torch.from_numpy(inputs["x"]), 2.0 * torch.randn(8, 6, generator=gen)):
        y = torch.from_numpy(inputs["label"])
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        loss_a = composed(x=xa, label=y)["loss"]
        loss_b = head(x=xb, label=y)["loss"]
        torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(head.blobs["logit"], composed.blobs["logit"], rtol=1e-4, atol=1e-5)
        loss_a.backward()
        loss_b.backward()
        torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-4, atol=1e-6)
