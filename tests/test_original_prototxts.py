"""Every original AM-Softmax net prototxt (prototxt/amsoftmax, not the solver and not the GNAP
fragment) builds in TRAIN and TEST and runs forward+backward on random 112x96 inputs, with the output
blobs and shapes Caffe's Reshape rules give (losses and accuracy 0-D; LabelSpecificAdd's bias top
(1,); GlobalLSEMargin's statistics (5,); Normalize's top 4-D)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import caffe_compat as cc

AMSOFTMAX = Path(__file__).resolve().parent.parent / "prototxt" / "amsoftmax"
BATCH = 4
EXPECTED = {
    ("face_train_test", "TRAIN"): {"softmax_loss": ()},
    ("face_train_test", "TEST"): {"accuracy": (), "softmax_loss": ()},
    ("face_train_test_wo_fn", "TRAIN"): {"margin": (1,), "softmax_loss": ()},
    ("face_train_test_wo_fn", "TEST"): {"accuracy": (), "margin": (1,), "softmax_loss": ()},
    ("auto/face_train_test_auto", "TRAIN"): {"softmax_loss": (), "statistics": (5,)},
    ("auto/face_train_test_auto", "TEST"): {"accuracy": (), "softmax_loss": (), "statistics": (5,)},
    ("face_deploy_mirror_normalize", "TRAIN"): {"norm1": (BATCH, 512, 1, 1)},
    ("face_deploy_mirror_normalize", "TEST"): {"norm1": (BATCH, 512, 1, 1)},
}


def test_every_net_prototxt_is_covered() -> None:
    nets = {
        str(p.relative_to(AMSOFTMAX).with_suffix(""))
        for p in AMSOFTMAX.rglob("*.prototxt")
        if "solver" not in p.name and p.name != "GNAP.prototxt"
    }
    assert nets == {name for name, _ in EXPECTED}


@pytest.mark.parametrize(("name", "phase"), sorted(EXPECTED))
def test_original_net_runs_forward_and_backward(name: str, phase: str) -> None:
    torch.manual_seed(0)
    shapes = {"data": (BATCH, 3, 112, 96), "label": (BATCH,)}
    net = cc.Net(AMSOFTMAX / f"{name}.prototxt", phase=phase, input_shapes=shapes)
    inputs = {
        "data": torch.randn(*shapes["data"], requires_grad=True),
        "label": torch.randint(0, 10, (BATCH,)).float(),
    }
    outs = net(**{k: v for k, v in inputs.items() if k in net.input_names})
    assert {k: tuple(v.shape) for k, v in outs.items()} == EXPECTED[(name, phase)]
    objective = net.loss(outs) if net.loss_weights else sum(v.sum() for v in outs.values())
    assert torch.isfinite(objective)
    objective.backward()
    assert inputs["data"].grad is not None and torch.isfinite(inputs["data"].grad).all()
    assert inputs["data"].grad.abs().sum() > 0
    conv1 = net.params["conv1_1"][0]
    assert conv1.grad is not None and conv1.grad.abs().sum() > 0
