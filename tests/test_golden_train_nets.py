"""The training goldens' nets (HDF5Data + the 20-layer residual face net, and the solver MLPs) build in
both phases, name their outputs as Caffe's log does, and compute Caffe's first-iteration numbers."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

import caffe_compat as cc

TRAIN_GOLDENS = Path(__file__).parent / "goldens" / "train"
CASES = sorted(p.name for p in TRAIN_GOLDENS.iterdir() if p.is_dir())
OUTPUT_LINE = re.compile(r"(Train|Test) net output #(\d+): (\S+) =")


def _logged_output_names(log: Path) -> dict[str, list[str]]:
    names: dict[str, dict[int, str]] = {"Train": {}, "Test": {}}
    for match in OUTPUT_LINE.finditer(log.read_text()):
        names[match.group(1)][int(match.group(2))] = match.group(3)
    return {kind: [found[i] for i in sorted(found)] for kind, found in names.items()}


@pytest.mark.parametrize("case", CASES)
def test_net_builds_in_both_phases_with_caffes_outputs(case: str, tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / case
    shutil.copytree(TRAIN_GOLDENS / case, folder)
    monkeypatch.chdir(folder)
    logged = _logged_output_names(folder / "caffe_train.log")
    train = cc.Net("net.prototxt", weights="init.caffemodel", phase="TRAIN")
    test = cc.Net("net.prototxt", phase="TEST", share_from=train)
    assert train.output_names == logged["Train"]
    assert test.output_names == logged["Test"]
    # Iteration 0 of Caffe's run: iter_size forward passes from the initial weights; the smoothed loss
    # is their mean and "Train net output" shows the last one (tests/goldens/README.md).
    solver = cc.read_solver("solver.prototxt")
    expected = json.loads((folder / "iters.json").read_text())["train"]["0"]
    rtol = 5e-4 if case.startswith("face20") else 1e-4
    losses = []
    for _ in range(solver.iter_size):
        outs = train()
        loss = train.loss(outs)
        loss.backward()
        losses.append(loss.item())
    for name, value in expected["outputs"].items():
        assert outs[name].item() == pytest.approx(value, rel=rtol), name
    assert sum(losses) / len(losses) == pytest.approx(expected["loss"], rel=rtol)
