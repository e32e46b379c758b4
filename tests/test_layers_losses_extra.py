"""The loss layers without golden cases (MultinomialLogisticLoss, SmoothL1Loss, ContrastiveLoss,
TripletLoss) against float64 transcriptions of the fork's loops (the CUDA kernels for SmoothL1Loss,
whose CPU code is NOT_IMPLEMENTED), forward and backward; autograd's gradcheck where Caffe's
backward is the exact gradient. Also what the goldens of the other types in these modules leave
out: InfogainLoss's ``source`` file, FCNAccuracy's incomplete groups, CorrelationLoss's zero diffs,
and the configurations Caffe refuses.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import caffe_compat as cc
from caffe_compat.errors import LayerError
from caffe_compat.proto import caffe_pb2
from caffe_compat.proto.io import array_to_blob

LOG_THRESHOLD = 1e-20


def make_net(inputs: dict[str, tuple[int, ...]], layer: str, phase: str = "TRAIN") -> cc.Net:
    text = "force_backward: true\n"
    for name, shape in inputs.items():
        dims = " ".join(f"dim: {d}" for d in shape)
        text += f'layer {{ name: "in_{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'
    return cc.Net(text + layer, phase=phase)


# -- MultinomialLogisticLoss -----------------------------------------------------------------------
def ref_multinomial(prob: np.ndarray, label: np.ndarray, top_diff: float) -> tuple[float, np.ndarray]:
    """multinomial_logistic_loss_layer.cpp Forward_cpu / Backward_cpu."""
    num = prob.shape[0]
    dim = prob.size // num
    data = prob.reshape(-1)
    loss = 0.0
    for i in range(num):
        value = int(label.reshape(-1)[i])
        loss -= math.log(max(data[i * dim + value], LOG_THRESHOLD))
    diff = np.zeros(prob.size)
    scale = -top_diff / num
    for i in range(num):
        value = int(label.reshape(-1)[i])
        diff[i * dim + value] = scale / max(data[i * dim + value], LOG_THRESHOLD)
    return loss / num, diff.reshape(prob.shape)


@pytest.mark.parametrize("label_shape", [(4,), (4, 1, 1, 1)])
def test_multinomial_logistic_loss_matches_caffe(label_shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(0)
    prob = rng.uniform(0.05, 1.0, size=(4, 3, 2))
    label = np.array([0, 5, 3, 2], dtype=np.float64).reshape(label_shape)
    prob[1, 2, 1] = 0.0  # the label's probability below the floor: log(1e-20), diff -1/1e-20
    net = make_net(
        {"p": prob.shape, "label": label_shape},
        'layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss" }',
    )
    p = torch.tensor(prob, requires_grad=True)
    out = net(p=p, label=torch.tensor(label))
    out["loss"].backward(torch.tensor(0.7, dtype=torch.float64))
    ref_loss, ref_grad = ref_multinomial(prob, label, 0.7)
    np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), ref_grad, rtol=1e-12)
    assert p.grad[1, 2, 1].item() == pytest.approx(-0.7 / 4 / 1e-20)


def test_multinomial_logistic_loss_gradcheck_and_float32() -> None:
    net = make_net(
        {"p": (3, 4), "label": (3,)},
        'layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss" }',
    )
    layer, label = net.layers["loss"], torch.tensor([1.0, 3.0, 0.0])
    prob = torch.rand(3, 4, dtype=torch.float64) * 0.9 + 0.1
    assert torch.autograd.gradcheck(lambda p: layer(p, label), (prob.requires_grad_(),))
    out32 = layer(prob.detach().float(), label)
    assert out32.dtype == torch.float32
    np.testing.assert_allclose(
        out32.item(), ref_multinomial(prob.detach().numpy(), label.numpy(), 1)[0], rtol=1e-6
    )


def test_multinomial_logistic_loss_refuses_a_label_blob_with_channels() -> None:
    with pytest.raises(LayerError, match=r"layer 'loss' \(MultinomialLogisticLoss\): the label bottom"):
        make_net(
            {"p": (3, 4), "label": (3, 2)},
            'layer { name: "loss" type: "MultinomialLogisticLoss" bottom: "p" bottom: "label" top: "loss" }',
        )


# -- SmoothL1Loss ----------------------------------------------------------------------------------
def ref_smooth_l1(a, b, w, turn_point, top_diff):
    """smooth_L1_loss_layer.cu: Forward_gpu (SmoothL1Forward, asum) and Backward_gpu
    (SmoothL1Backward, axpby into each bottom), element by element."""
    count = a.size
    av, bv = a.reshape(-1), b.reshape(-1)
    diff = np.empty(count)
    for i in range(count):
        diff[i] = av[i] - bv[i]
        if w is not None:
            diff[i] = w.reshape(-1)[i] * diff[i]
    errors = np.empty(count)
    for i in range(count):
        value = diff[i]
        if abs(value) < turn_point:
            errors[i] = 0.5 * value * value
        else:
            errors[i] = abs(value) - turn_point + 0.5 * turn_point * turn_point
    loss = np.abs(errors).sum() / a.shape[0]
    for i in range(count):
        value = diff[i]
        if abs(value) < turn_point:
            diff[i] = value
        else:
            diff[i] = float(value > 0) - float(value < 0)
    grads = []
    for bottom, sign in ((a, 1.0), (b, -1.0)):
        alpha = sign * top_diff / bottom.shape[0]
        grads.append((alpha * diff).reshape(bottom.shape))
    return loss, grads[0], grads[1]


@pytest.mark.parametrize("turn_point", [1.0, 0.5, 2.0])
@pytest.mark.parametrize("weighted", [False, True])
def test_smooth_l1_loss_matches_the_cuda_kernels(turn_point: float, weighted: bool) -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 4, 5)) * 2
    b = rng.normal(size=(2, 3, 4, 5))
    w = rng.uniform(-1.5, 2.0, size=a.shape) if weighted else None
    shapes = {"a": a.shape, "b": b.shape} | ({"w": w.shape} if weighted else {})
    bottoms = 'bottom: "a" bottom: "b"' + (' bottom: "w"' if weighted else "")
    net = make_net(
        shapes,
        f'layer {{ name: "loss" type: "SmoothL1Loss" {bottoms} top: "loss" '
        f"smoothl1_param {{ turn_point: {turn_point} }} }}",
    )
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    feeds = {"a": at, "b": bt} | ({"w": torch.tensor(w, requires_grad=True)} if weighted else {})
    out = net(**feeds)
    out["loss"].backward(torch.tensor(1.3, dtype=torch.float64))
    ref_loss, ref_a, ref_b = ref_smooth_l1(a, b, w, turn_point, 1.3)
    np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(at.grad.numpy(), ref_a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bt.grad.numpy(), ref_b, rtol=1e-12, atol=1e-15)
    if weighted:
        assert feeds["w"].grad is None  # Caffe's backward writes only the first two bottoms
        # ... and it leaves out the factor w of the exact gradient w f'(w (a - b))
        assert not np.allclose(at.grad.numpy(), ref_a * w)


def test_smooth_l1_loss_without_weights_is_the_exact_gradient() -> None:
    net = make_net(
        {"a": (3, 4), "b": (3, 4)},
        'layer { name: "loss" type: "SmoothL1Loss" bottom: "a" bottom: "b" top: "loss" '
        "smoothl1_param { turn_point: 0.7 } }",
    )
    layer = net.layers["loss"]
    # differences away from the kinks at 0 and +-0.7
    d = torch.tensor([0.2, -0.3, 0.5, -0.6, 1.1, -1.4, 2.0, -0.9, 0.1, -0.15, 3.0, -2.5], dtype=torch.float64)
    b = torch.randn(3, 4, dtype=torch.float64)
    a = (b + d.reshape(3, 4)).requires_grad_()
    assert torch.autograd.gradcheck(layer, (a, b.requires_grad_()))


def test_smooth_l1_loss_checks_shapes() -> None:
    with pytest.raises(LayerError, match=r"\(SmoothL1Loss\): bottom 1 \[2, 4\] must have the channels"):
        make_net(
            {"a": (2, 3), "b": (2, 4)},
            'layer { name: "l" type: "SmoothL1Loss" bottom: "a" bottom: "b" top: "l" }',
        )


# -- ContrastiveLoss -------------------------------------------------------------------------------
def ref_contrastive(a, b, similar, margin, legacy, top_diff):
    """contrastive_loss_layer.cpp Forward_cpu / Backward_cpu (``similar`` per pair)."""
    num, channels = a.shape[0], a.size // a.shape[0]
    diff = (a - b).reshape(num, channels)
    dist_sq = np.zeros(num)
    loss = 0.0
    for i in range(num):
        dist_sq[i] = sum(diff[i, c] * diff[i, c] for c in range(channels))
        if similar[i]:
            loss += dist_sq[i]
        elif legacy:
            loss += max(margin - dist_sq[i], 0.0)
        else:
            dist = max(margin - math.sqrt(dist_sq[i]), 0.0)
            loss += dist * dist
    loss = loss / num / 2
    grads = []
    for sign in (1.0, -1.0):
        alpha = sign * top_diff / num
        out = np.zeros((num, channels))
        for j in range(num):
            if similar[j]:
                out[j] = alpha * diff[j]
            else:
                if legacy:
                    mdist = margin - dist_sq[j]
                    beta = -alpha
                else:
                    dist = math.sqrt(dist_sq[j])
                    mdist = margin - dist
                    beta = -alpha * mdist / (dist + 1e-4)
                out[j] = beta * diff[j] if mdist > 0 else 0.0
        grads.append(out.reshape(a.shape))
    return loss, grads[0], grads[1]


def contrastive_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 3)) * 0.6
    b = rng.normal(size=(6, 3)) * 0.6
    b[4] = a[4] + 2.0  # a dissimilar pair beyond the margin: no gradient
    label_a = np.array([0, 1, 2.7, 3, 1, 5])
    label_b = np.array([0, 2, 2.2, 1, 4, 5.9])  # 2.7 and 2.2 truncate to the same label
    return a, b, label_a, label_b


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_four_bottoms_matches_caffe(legacy: bool) -> None:
    a, b, label_a, label_b = contrastive_inputs()
    net = make_net(
        {"a": a.shape, "b": b.shape, "la": label_a.shape, "lb": label_b.shape},
        'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "la" bottom: "lb" '
        f'top: "loss" contrastive_loss_param {{ margin: 1.5 legacy_version: {str(legacy).lower()} }} }}',
    )
    at, bt = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    out = net(a=at, b=bt, la=torch.tensor(label_a), lb=torch.tensor(label_b))
    out["loss"].backward(torch.tensor(0.8, dtype=torch.float64))
    similar = [int(x) == int(y) for x, y in zip(label_a, label_b, strict=True)]
    assert similar == [True, False, True, False, False, True]
    ref_loss, ref_a, ref_b = ref_contrastive(a, b, similar, 1.5, legacy, 0.8)
    np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(at.grad.numpy(), ref_a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bt.grad.numpy(), ref_b, rtol=1e-12, atol=1e-15)
    assert np.all(at.grad.numpy()[4] == 0)


def test_contrastive_loss_bvlc_three_bottoms_and_4d_features() -> None:
    a, b, _, _ = contrastive_inputs()
    sim = np.array([1, 0, 1, 0, 0, 1], dtype=np.float64).reshape(6, 1, 1, 1)
    net = make_net(
        {"a": (6, 3, 1, 1), "b": (6, 3, 1, 1), "sim": sim.shape},
        'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "sim" top: "loss" }',
    )
    at = torch.tensor(a.reshape(6, 3, 1, 1), requires_grad=True)
    bt = torch.tensor(b.reshape(6, 3, 1, 1), requires_grad=True)
    out = net(a=at, b=bt, sim=torch.tensor(sim))
    out["loss"].backward()
    ref_loss, ref_a, ref_b = ref_contrastive(a, b, sim.reshape(-1) != 0, 1.0, False, 1.0)
    np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-12)
    np.testing.assert_allclose(at.grad.numpy().reshape(6, 3), ref_a, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(bt.grad.numpy().reshape(6, 3), ref_b, rtol=1e-12, atol=1e-15)


def test_contrastive_loss_legacy_is_the_exact_gradient() -> None:
    a, b, label_a, label_b = contrastive_inputs()
    net = make_net(
        {"a": a.shape, "b": b.shape, "la": label_a.shape, "lb": label_b.shape},
        'layer { name: "loss" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "la" bottom: "lb" '
        'top: "loss" contrastive_loss_param { legacy_version: true margin: 1.5 } }',
    )
    layer, la, lb = net.layers["loss"], torch.tensor(label_a), torch.tensor(label_b)
    inputs = (torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True))
    assert torch.autograd.gradcheck(lambda x, y: layer(x, y, la, lb), inputs)


def test_contrastive_loss_refuses_spatial_features() -> None:
    with pytest.raises(LayerError, match=r"\(ContrastiveLoss\): bottom 0 must have height and width 1"):
        make_net(
            {"a": (2, 3, 2, 2), "b": (2, 3, 2, 2), "s": (2,)},
            'layer { name: "l" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "s" top: "l" }',
        )


# -- TripletLoss -----------------------------------------------------------------------------------
def ref_triplet(a, p, n, margin, top_diff):
    """triplet_loss_layer.cpp Forward_cpu / Backward_cpu."""
    num, channels = a.shape[0], a.size // a.shape[0]
    a, p, n = (v.reshape(num, channels) for v in (a, p, n))
    diff_ap, diff_an, diff_pn = a - p, a - n, p - n
    loss = 0.0
    for i in range(num):
        dist_ap = sum(diff_ap[i, c] ** 2 for c in range(channels))
        dist_an = sum(diff_an[i, c] ** 2 for c in range(channels))
        mdist = max(margin + dist_ap - dist_an, 0.0)
        loss += mdist
        if mdist < 1e-9:
            diff_ap[i] = 0
            diff_an[i] = 0
            diff_pn[i] = 0
    loss = loss / num / 2
    grads = []
    for i, source in enumerate((diff_pn, diff_ap, diff_an)):
        alpha = (-1.0 if i < 2 else 1.0) * top_diff / num
        grads.append(alpha * source)
    return loss, grads


def test_triplet_loss_matches_caffe() -> None:
    rng = np.random.default_rng(3)
    a, p, n = (rng.normal(size=(5, 4)) for _ in range(3))
    n[1] = a[1] + 3.0  # far negative: hinge 0
    a[3], p[3] = 0.0, 0.0
    n[3] = 0.0
    n[3, 0] = math.sqrt(0.5 - 5e-10)  # hinge 5e-10 > 0: in the loss, below Caffe's 1e-9 gradient cut
    net = make_net(
        {"a": a.shape, "p": p.shape, "n": n.shape},
        'layer { name: "loss" type: "TripletLoss" bottom: "a" bottom: "p" bottom: "n" top: "loss" '
        "triplet_loss_param { margin: 0.5 } }",
    )
    tensors = {k: torch.tensor(v, requires_grad=True) for k, v in (("a", a), ("p", p), ("n", n))}
    out = net(**tensors)
    out["loss"].backward(torch.tensor(1.7, dtype=torch.float64))
    ref_loss, ref_grads = ref_triplet(a, p, n, 0.5, 1.7)
    np.testing.assert_allclose(out["loss"].item(), ref_loss, rtol=1e-12)
    for name, ref in zip("apn", ref_grads, strict=True):
        np.testing.assert_allclose(tensors[name].grad.numpy(), ref, rtol=1e-12, atol=1e-15)
    assert torch.count_nonzero(tensors["a"].grad[1]) == 0 and torch.count_nonzero(tensors["n"].grad[3]) == 0
    assert torch.count_nonzero(tensors["a"].grad[0]) > 0


def test_triplet_loss_gradcheck_and_refusals() -> None:
    net = make_net(
        {"a": (4, 3, 1, 1), "p": (4, 3, 1, 1), "n": (4, 3, 1, 1)},
        'layer { name: "loss" type: "TripletLoss" bottom: "a" bottom: "p" bottom: "n" top: "loss" }',
    )
    rng = np.random.default_rng(4)
    a = torch.tensor(rng.normal(size=(4, 3, 1, 1)), requires_grad=True)
    p = torch.tensor(rng.normal(size=(4, 3, 1, 1)), requires_grad=True)
    n = (
        a.detach() + torch.tensor([3.0, 0.1, -4.0, 0.2], dtype=torch.float64).view(4, 1, 1, 1)
    ).requires_grad_()
    assert torch.autograd.gradcheck(net.layers["loss"], (a, p, n))
    with pytest.raises(
        LayerError, match=r"\(TripletLoss\): bottom 2 \[4, 2\] must have the num and channels"
    ):
        make_net(
            {"a": (4, 3), "p": (4, 3), "n": (4, 2)},
            'layer { name: "l" type: "TripletLoss" bottom: "a" bottom: "p" bottom: "n" top: "l" }',
        )


# -- the types with goldens: what the goldens leave out --------------------------------------------
def test_infogain_loss_reads_h_from_a_binaryproto_source(tmp_path) -> None:
    rng = np.random.default_rng(5)
    h = rng.uniform(0, 2, size=(3, 3)).astype(np.float32)
    path = tmp_path / "H.binaryproto"
    path.write_bytes(array_to_blob(h.reshape(1, 1, 3, 3)).SerializeToString())
    x = rng.normal(size=(4, 3, 2))
    label = rng.integers(0, 3, size=(4, 2)).astype(np.float64)
    from_file = make_net(
        {"x": x.shape, "label": label.shape},
        'layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" top: "loss" '
        f'infogain_loss_param {{ source: "{path}" }} loss_param {{ ignore_label: 1 }} }}',
    )
    from_bottom = make_net(
        {"x": x.shape, "label": label.shape, "H": (3, 3)},
        'layer { name: "loss" type: "InfogainLoss" bottom: "x" bottom: "label" bottom: "H" top: "loss" '
        "loss_param { ignore_label: 1 } }",
    )
    x1, x2 = torch.tensor(x, requires_grad=True), torch.tensor(x, requires_grad=True)
    loss1 = from_file(x=x1, label=torch.tensor(label))["loss"]
    loss2 = from_bottom(x=x2, label=torch.tensor(label), H=torch.tensor(h, dtype=torch.float64))["loss"]
    loss1.backward()
    loss2.backward()
    torch.testing.assert_close(loss1, loss2, rtol=1e-12, atol=0)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-12, atol=0)
    # the layer's own float64 transcription: -sum H[y, l] log p_l / valid count
    prob = np.exp(x - x.max(axis=1, keepdims=True))
    prob /= prob.sum(axis=1, keepdims=True)
    total, count = 0.0, 0
    for i in range(4):
        for j in range(2):
            y = int(label[i, j])
            if y == 1:
                continue
            total -= sum(float(h[y, k]) * math.log(max(prob[i, k, j], LOG_THRESHOLD)) for k in range(3))
            count += 1
    np.testing.assert_allclose(loss1.item(), total / max(count, 1), rtol=1e-12)
    assert "infogain" not in from_file.layers["loss"].state_dict()  # not a Caffe blob


def test_infogain_loss_needs_h_and_refuses_legacy_normalize(tmp_path) -> None:
    with pytest.raises(LayerError, match=r"\(InfogainLoss\): infogain matrix source must be specified"):
        make_net(
            {"x": (2, 3), "l": (2,)},
            'layer { name: "s" type: "InfogainLoss" bottom: "x" bottom: "l" top: "s" }',
        )
    with pytest.raises(LayerError, match="cannot read the infogain matrix"):
        make_net(
            {"x": (2, 3), "l": (2,)},
            'layer { name: "s" type: "InfogainLoss" bottom: "x" bottom: "l" top: "s" '
            f'infogain_loss_param {{ source: "{tmp_path / "missing.binaryproto"}" }} }}',
        )
    with pytest.raises(LayerError, match="normalize is deprecated"):
        make_net(
            {"x": (2, 3), "l": (2,), "H": (3, 3)},
            'layer { name: "s" type: "InfogainLoss" bottom: "x" bottom: "l" bottom: "H" top: "s" '
            "loss_param { normalize: true } }",
        )
    with pytest.raises(LayerError, match="H must be 3x3"):
        make_net(
            {"x": (2, 3), "l": (2,), "H": (2, 2)},
            'layer { name: "s" type: "InfogainLoss" bottom: "x" bottom: "l" bottom: "H" top: "s" }',
        )


def test_focal_loss_refuses_a_probability_top() -> None:
    with pytest.raises(LayerError, match=r"\(FocalLoss\): a second \(probability\) top"):
        make_net(
            {"x": (2, 3), "l": (2,)},
            'layer { name: "f" type: "FocalLoss" bottom: "x" bottom: "l" top: "f" top: "p" '
            "loss_weight: 1 loss_weight: 0 }",
        )


def test_focal_loss_origin_with_alpha_one_is_the_exact_gradient() -> None:
    net = make_net(
        {"x": (3, 4, 2), "l": (3, 2)},
        'layer { name: "f" type: "FocalLoss" bottom: "x" bottom: "l" top: "f" focal_loss_param { gamma: 1.5 } }',
    )
    label = torch.tensor([[0.0, 3.0], [2.0, 1.0], [3.0, 3.0]])
    x = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: net.layers["f"](v, label), (x,))


def test_hinge_loss_gradcheck_both_norms() -> None:
    label = torch.tensor([1.0, 0.0, 4.0])
    for norm in ("L1", "L2"):
        net = make_net(
            {"x": (3, 5), "l": (3,)},
            f'layer {{ name: "h" type: "HingeLoss" bottom: "x" bottom: "l" top: "h" hinge_loss_param {{ norm: {norm} }} }}',
        )
        x = (torch.rand(3, 5, dtype=torch.float64) * 3 - 1.5).requires_grad_()
        assert torch.autograd.gradcheck(lambda v, layer=net.layers["h"]: layer(v, label), (x,))


def test_confidence_penalty_loss_floor_gradient() -> None:
    net = make_net(
        {"p": (3, 2), "l": (3,)},
        'layer { name: "c" type: "ConfidencePenaltyLoss" bottom: "p" bottom: "l" top: "c" }',
    )
    p = torch.tensor([[0.0, 1.0], [0.5, 0.5], [0.25, 0.75]], dtype=torch.float64, requires_grad=True)
    out = net(p=p, l=torch.tensor([0.0, 1.0, 1.0]))["c"]
    out.backward()
    beta = np.float32(0.1).item()
    weights = np.array([[1 - beta, beta / 2], [beta / 2, 1 - beta], [beta / 2, 1 - beta]])
    floored = np.maximum(p.detach().numpy(), LOG_THRESHOLD)
    np.testing.assert_allclose(out.item(), -(weights * np.log(floored)).sum() / 3, rtol=1e-12)
    np.testing.assert_allclose(p.grad.numpy(), -weights / floored / 3, rtol=1e-12)


def test_fcn_accuracy_incomplete_groups_and_the_unreset_channel() -> None:
    # 5 images, groups of 2: the fifth image forms no group
    x = torch.full((5, 2, 1, 3), -1.0, dtype=torch.float64)
    label = torch.zeros(5, 2, 1, 3, dtype=torch.float64)
    x[0, 1, 0, 2] = 4.0  # group 0: maximum in image 0, channel 1
    x[2:4] = float("-inf")  # group 1: nothing above -FLT_MAX -> n, h, w reset to 0, channel kept (1)
    x[4, 0, 0, 0] = 9.0  # ignored (incomplete group)
    label[0, 1, 0, 2] = 1.0
    label[0, 1, 0, 0] = 1.0  # where group 1 looks: image 0, channel 1 (kept from group 0), h 0, w 0
    net = make_net(
        {"x": x.shape, "label": label.shape},
        'layer { name: "acc" type: "FCNAccuracy" bottom: "x" bottom: "label" top: "acc" accuracy_param { top_k: 2 } }',
        phase="TEST",
    )
    # group size 2: the maximum must lie in image (2 - 1) / 2 = 0 of its group
    assert net(x=x, label=label)["acc"].item() == 1.0
    label[0, 1, 0, 0] = 0.0
    assert net(x=x, label=label)["acc"].item() == 0.5
    small = make_net(
        {"x": (2, 3), "label": (2, 3)},
        'layer { name: "acc" type: "FCNAccuracy" bottom: "x" bottom: "label" top: "acc" accuracy_param { top_k: 3 } }',
        phase="TEST",
    )
    assert math.isnan(small(x=torch.randn(2, 3), label=torch.ones(2, 3))["acc"].item())  # 0 / 0, as Caffe


def test_correlation_loss_gives_zero_diffs_like_caffe() -> None:
    net = make_net(
        {"x": (4, 1, 2), "t": (4, 1, 2)},
        'layer { name: "ip" type: "Scale" bottom: "x" top: "y" scale_param { filler { value: 2 } } }\n'
        'layer { name: "c" type: "CorrelationLoss" bottom: "y" bottom: "t" top: "c" }',
    )
    x = torch.randn(4, 1, 2, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 1, 2, dtype=torch.float64, requires_grad=True)
    out = net(x=x, t=t)
    np.testing.assert_allclose(out["c"].item(), float((2 * x * t).detach().sum() / 8), rtol=1e-12)
    net.loss(out).backward()
    assert torch.count_nonzero(x.grad) == 0 and torch.count_nonzero(t.grad) == 0
    assert torch.count_nonzero(net.params["ip"][0].grad) == 0


def test_caffe_pb2_has_the_parameters_read() -> None:
    layer = caffe_pb2.LayerParameter()
    assert layer.smoothl1_param.turn_point == 1.0
    assert layer.triplet_loss_param.margin == 1.0
    assert layer.contrastive_loss_param.margin == 1.0 and not layer.contrastive_loss_param.legacy_version
    assert layer.focal_loss_param.gamma == 2.0 and layer.focal_loss_param.alpha == 1.0
    assert layer.confidence_penalty_loss_param.beta == pytest.approx(0.1)
