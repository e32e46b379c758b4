"""The SV-X-Softmax seed's ``FC`` (xiaoboCASIA/SV-X-Softmax ``fc_layers.py``) reproduced by
``caffe_compat.losses.seed.from_seed``: its arguments, its defaults, its checkpoints' weight layout,
and its logits, checked against a float64 transcription of the seed's forward written here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caffe_compat.losses import make_head
from caffe_compat.losses.seed import SEED_FC_TYPES, from_seed

E, C, N = 6, 9, 12


def seed_logits(
    x: np.ndarray,
    w_ec: np.ndarray,
    labels: np.ndarray,
    fc_type: str,
    margin: float,
    t: float,
    scale: float,
    easy: bool,
    iteration: int = 1,
) -> np.ndarray:
    """The seed's forward in float64: weight columns normalized, cosines clamped, the target column
    replaced by the type's margin function, MV types re-weight negatives above the plain margin
    function (adaptive: (t + 1) cos + t), everything times scale. SphereFace's lambda uses the
    iteration count after the increment, base 1000, alpha 1e-4, power 2, lambda_min 5."""
    w = w_ec / np.linalg.norm(w_ec, axis=0, keepdims=True)
    cos = np.clip(x @ w, -1.0, 1.0)
    rows = np.arange(len(labels))
    gt = cos[rows, labels].copy()
    plain_am = gt - margin
    plain_arc = gt * math.cos(margin) - np.sqrt(1.0 - gt * gt) * math.sin(margin)
    if fc_type == "FC":
        target = gt
    elif fc_type == "SphereFace":
        lam = max(5.0, 1000.0 * (1.0 + 1e-4 * iteration) ** -2)
        theta = np.arccos(gt)
        k = np.floor(margin * theta / math.pi)
        psi = (-1.0) ** k * np.cos(int(margin) * theta) - 2.0 * k
        target = (lam * gt + psi) / (1.0 + lam)
    else:
        plain = plain_am if fc_type in ("AM", "MV-AM") else plain_arc
        target = np.where(gt > 0, plain, gt) if easy else plain
        if fc_type.startswith("MV"):
            hard = cos > plain[:, None]
            cos = np.where(hard, (t + 1.0) * cos + t, cos)
    cos[rows, labels] = target
    return cos * scale


def inputs(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, E))
    x /= np.linalg.norm(x, axis=1, keepdims=True)  # the seed's callers normalize the embeddings
    w_ec = rng.uniform(-1, 1, size=(E, C))
    labels = rng.integers(0, C, size=N)
    # make some target cosines negative (not -1, where the seed's sqrt(1 - c^2) has an infinite
    # slope and ours is floored: a documented deviation), where easy_margin matters
    away = -w_ec[:, labels[:4]].T / np.linalg.norm(w_ec[:, labels[:4]], axis=0)[:, None]
    away += 0.4 * rng.normal(size=away.shape)
    x[:4] = away / np.linalg.norm(away, axis=1, keepdims=True)
    return x, w_ec, labels


@pytest.mark.parametrize("fc_type", list(SEED_FC_TYPES))
@pytest.mark.parametrize("easy", [True, False])
def test_from_seed_gives_the_seeds_logits_from_its_checkpoint(fc_type: str, easy: bool) -> None:
    x, w_ec, labels = inputs()
    margin = 4 if fc_type == "SphereFace" else 0.35
    head = from_seed(fc_type, margin=margin, t=0.2, scale=32, embedding_size=E, num_class=C, easy_margin=easy)
    head = head.double()
    # a seed checkpoint stores the weight as (embedding_size, num_class)
    head.load_state_dict({"weight": torch.tensor(w_ec)}, strict=False)
    torch.testing.assert_close(head.weight.detach(), torch.tensor(w_ec.T))
    head.train()
    out = head(torch.tensor(x), torch.tensor(labels))
    expected = seed_logits(x, w_ec, labels, fc_type, margin, 0.2, 32.0, easy)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-9)
    if fc_type in ("AM", "MV-AM"):
        gt = (x @ (w_ec / np.linalg.norm(w_ec, axis=0)))[np.arange(N), labels]
        assert (gt <= 0).sum() >= 4  # the inputs exercise both branches of easy_margin


def test_from_seed_defaults_are_the_seeds() -> None:
    head = from_seed(embedding_size=E, num_class=C)
    assert head.kind == "mv-am" and (head.m, head.t, head.s, head.easy_margin) == (0.35, 0.2, 32.0, True)
    assert head.normalize_embeddings is False and tuple(head.weight.shape) == (C, E)
    assert tuple(from_seed().weight.shape) == (72690, 512)


def test_make_head_defaults_agree_with_the_seed_where_the_target_cosine_is_negative() -> None:
    """With the seed's defaults (easy_margin=True) a target with cos_y <= 0 keeps s * cos_y: the
    margin s * m (11.2 at s = 32, m = 0.35) is not subtracted there."""
    x, w_ec, labels = inputs(1)
    head = make_head("mv-am", E, C).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor(w_ec.T))
    out = head(torch.tensor(x), torch.tensor(labels)).detach().numpy()
    expected = seed_logits(x, w_ec, labels, "MV-AM", 0.35, 0.2, 32.0, True)
    np.testing.assert_allclose(out, expected, rtol=1e-9, atol=1e-9)


def test_from_seed_rejects_what_the_seed_cannot_mean() -> None:
    with pytest.raises(ValueError, match="unknown fc_type 'CosFace'"):
        from_seed("CosFace")
    with pytest.raises(ValueError, match=r"integer margin >= 1 \(the seed's int\(0.35\) would use 0\)"):
        from_seed("SphereFace", margin=0.35)
