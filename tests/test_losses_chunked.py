"""The chunked softmax loss of every head kind against the unchunked head + cross-entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from caffe_compat.losses import HEAD_KINDS, chunked_cross_entropy, make_head

BATCH, DIM, CLASSES = 6, 5, 37


def _case(kind: str, **params: object) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    head = make_head(kind, DIM, CLASSES, **params).double()
    x = torch.randn(BATCH, DIM, dtype=torch.float64)
    # labels in the first, a middle and the last chunk, one repeated
    labels = torch.tensor([0, 9, 17, 17, 31, 36])
    if kind in ("mv-am", "mv-arc", "sv-am", "sv-arc"):
        with torch.no_grad():  # make some negatives harder than their targets so re-weighting happens
            head.weight[1:4] = F.normalize(x[:3], dim=1) + 0.01
    return head, x, labels


@pytest.mark.parametrize("kind", sorted(HEAD_KINDS))
@pytest.mark.parametrize("chunk", [8, 37, 1000])
def test_chunked_loss_and_gradients_equal_the_full_heads(kind: str, chunk: int) -> None:
    params = {"bias": True} if kind == "fc" else {}
    head, x, labels = _case(kind, **params)
    head.eval()  # SphereFace's schedule: both sides see the same lambda
    x1 = x.clone().requires_grad_()
    full = F.cross_entropy(head(x1, labels), labels)
    full.backward()
    expected = {name: p.grad.clone() for name, p in head.named_parameters()}
    head.zero_grad()
    x2 = x.clone().requires_grad_()
    loss = chunked_cross_entropy(head, x2, labels, chunk_size=chunk)
    loss.backward()
    torch.testing.assert_close(loss, full, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-9, atol=1e-12)
    for name, p in head.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-9, atol=1e-12)
        assert float(p.grad.abs().sum()) > 0


def test_reweighting_was_exercised_by_the_mv_case() -> None:
    head, x, labels = _case("mv-am")
    logits = head(x, labels)
    plain = head.logits(x, labels, head.weight, margin=False)
    # a re-weighted negative differs from s * cos
    off_target = torch.ones_like(logits, dtype=torch.bool)
    off_target[torch.arange(BATCH), labels] = False
    assert bool((logits != plain)[off_target].any())


def test_chunked_loss_float32_difference_is_rounding_only() -> None:
    torch.manual_seed(0)
    for kind in sorted(HEAD_KINDS):
        head = make_head(kind, 64, 5000)
        head.eval()
        x = torch.randn(32, 64)
        labels = torch.randint(0, 5000, (32,))
        full = F.cross_entropy(head(x, labels), labels)
        chunked = chunked_cross_entropy(head, x, labels, chunk_size=1024)
        difference = abs(chunked.item() - full.item())
        assert difference <= 1e-5 * abs(full.item()), kind


def test_chunked_loss_checks_its_inputs() -> None:
    head = make_head("am", 4, 10)
    with pytest.raises(ValueError, match="chunk_size must be positive"):
        chunked_cross_entropy(head, torch.randn(2, 4), torch.tensor([0, 1]), chunk_size=0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        chunked_cross_entropy(head, torch.randn(2, 4), torch.tensor([0, 10]))
    with pytest.raises(ValueError, match="learnable scale"):
        chunked_cross_entropy(
            make_head("normface", 4, 10, learnable_scale=True), torch.randn(2, 4), torch.tensor([0, 1])
        )
