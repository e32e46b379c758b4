"""The class-sharded classifier (PartialFC) over 2 gloo ranks against one process on the global
batch: forward logits, loss and gradients, then weights after 10 optimizer steps, for every head
kind of ``caffe_compat.losses`` (AM, Arc and MV-Arc among them); class sampling; and a prototxt
``MarginHead`` sharded by the ``DistributedSolver`` against the one-process ``Solver`` with the
doubled batch (logs and snapshot). Per-rank memory of the weight and the logits halves."""

from __future__ import annotations

import socket
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from distributed_workers import BATCH, CLASSES, D_IN, KINDS, D, run
from test_solver_goldens import parse_train_log

from caffe_compat.distributed import ClassShard
from caffe_compat.log.glog import GlogWriter
from caffe_compat.proto.io import blob_to_array, read_caffemodel
from caffe_compat.solver.solver import Solver

WORLD = 2
SOLVER_KINDS = {"am": "m: 0.35 s: 8", "arc": "m: 0.5 s: 8", "mv-arc": "m: 0.35 s: 8 t: 0.2"}

NET = """name: "margin_head"
layer {{ name: "data" type: "HDF5Data" top: "data" top: "label"
  hdf5_data_param {{ source: "{source}" batch_size: {batch} }} }}
layer {{ name: "emb" type: "InnerProduct" bottom: "data" top: "emb"
  inner_product_param {{ num_output: {d} weight_filler {{ type: "xavier" }} bias_filler {{ type: "constant" value: 0.1 }} }} }}
layer {{ name: "head" type: "MarginHead" bottom: "emb" bottom: "label" top: "logits"
  margin_head_param {{ kind: "{kind}" num_output: {classes} {params} weight_filler {{ type: "gaussian" std: 0.5 }} }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "logits" bottom: "label" top: "loss" }}
layer {{ name: "acc" type: "Accuracy" bottom: "logits" bottom: "label" top: "acc" include {{ phase: TEST }} }}
"""
SOLVER = """net: "{net}"
test_iter: 2 test_interval: 5 test_initialization: true
base_lr: 0.2 momentum: 0.9 weight_decay: 0.0005 lr_policy: "fixed" clip_gradients: 0.5
max_iter: 10 iter_size: 2 display: 1 random_seed: 5 solver_mode: CPU snapshot: 5
snapshot_prefix: "{prefix}"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_case(folder: Path, kind: str, source: Path) -> None:
    folder.mkdir()
    for name, batch in (("dist", BATCH), ("one", WORLD * BATCH)):
        net = NET.format(
            source=source, batch=batch, d=D, kind=kind, classes=CLASSES, params=SOLVER_KINDS[kind]
        )
        (folder / f"net_{name}.prototxt").write_text(net)
        solver = SOLVER.format(net=folder / f"net_{name}.prototxt", prefix=folder / name)
        (folder / f"solver_{name}.prototxt").write_text(solver)


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("partial_fc")
    rng = np.random.default_rng(0)
    with h5py.File(out / "data.h5", "w") as handle:
        handle["data"] = rng.normal(size=(40, D_IN)).astype(np.float32)
        handle["label"] = rng.integers(0, CLASSES, size=40).astype(np.float32)
    (out / "list.txt").write_text(f"{out / 'data.h5'}\n")
    for kind in SOLVER_KINDS:
        _write_case(out / kind, kind, out / "list.txt")
        log = GlogWriter(stream=None, path=out / kind / "one.log")
        Solver(out / kind / "solver_one.prototxt", log=log).solve()  # the reference, batch 8
        log.close()
    mp.spawn(run, args=(WORLD, _free_port(), str(out), list(SOLVER_KINDS)), nprocs=WORLD, join=True)
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_sharded_head_equals_one_process_head(spawned: Path, kind: str) -> None:
    for rank in range(WORLD):
        rec = torch.load(spawned / f"heads_{rank}.pt")[kind]
        assert rec["logits"] <= 1e-5 * rec["logits_scale"], rec
        assert rec["loss"] <= 1e-6, rec
        assert rec["grad_x"] <= 1e-5 * rec["grad_x_scale"] and rec["grad_x_scale"] > 0, rec
        assert rec["grad_w"] <= 1e-5 * rec["grad_w_scale"] and rec["grad_w_scale"] > 0, rec
        assert rec["steps_loss"] <= 1e-5, rec
        assert rec["steps_weight"] <= 1e-5 and rec["steps_backbone"] <= 1e-5, rec
        if "steps_scale" in rec:
            assert rec["steps_scale"] <= 1e-5, rec
        if kind.startswith(("mv", "sv")):
            assert rec["hard_negatives"] > 0, rec  # the re-weighting acts in the checked batch
        shard = ClassShard(CLASSES, rank, WORLD)
        assert rec["weight_bytes"] == rec["full_weight_bytes"] * shard.size // CLASSES
        assert rec["logits_bytes"] == rec["full_logits_bytes"] * shard.size // CLASSES
    print(kind, {k: f"{v:.1e}" for k, v in torch.load(spawned / "heads_0.pt")[kind].items()})


def test_per_rank_memory_halves(spawned: Path) -> None:
    sizes = ClassShard(CLASSES, 0, WORLD).sizes
    assert sizes == [6, 5]
    for rank in range(WORLD):
        rec = torch.load(spawned / f"heads_{rank}.pt")["arc"]
        assert rec["weight_bytes"] / rec["full_weight_bytes"] == sizes[rank] / CLASSES
        assert rec["logits_bytes"] / rec["full_logits_bytes"] == sizes[rank] / CLASSES
        memory = torch.load(spawned / f"solver_memory_{rank}.pt")
        assert memory == {kind: sizes[rank] * D * 4 for kind in SOLVER_KINDS}
    even = ClassShard(360232, 1, 8)
    assert even.sizes == [45029] * 8 and (even.start, even.stop) == (45029, 90058)


def test_class_sampling_is_the_softmax_over_the_sampled_classes(spawned: Path) -> None:
    for rank in range(WORLD):
        rec = torch.load(spawned / f"sampling_{rank}.pt")
        assert rec["loss"] == pytest.approx(rec["reference"], rel=1e-5)
        assert rec["sampled"] == max(rec["kept"], rec["positives"]) and rec["labels_in_union"]


def _blobs(path: Path) -> dict[str, list[np.ndarray]]:
    return {layer.name: [blob_to_array(b) for b in layer.blobs] for layer in read_caffemodel(path).layer}


def _same_run(ours: Path, reference: Path, iterations: range) -> None:
    mine, theirs = parse_train_log(ours.read_text()), parse_train_log(reference.read_text())
    assert sorted(mine.loss) == list(iterations)
    for it in iterations:
        assert mine.loss[it] == pytest.approx(theirs.loss[it], rel=1e-5), it
    for it, outputs in mine.test.items():
        assert outputs["acc"] == theirs.test[it]["acc"], it
        assert outputs["loss"] == pytest.approx(theirs.test[it]["loss"], rel=1e-5), it


def _same_weights(ours: Path, reference: Path) -> None:
    mine, theirs = _blobs(ours), _blobs(reference)
    assert [b.shape for b in mine["head"]] == [(CLASSES, D)]  # whole, gathered from the ranks
    for name, blobs in theirs.items():
        for a, b in zip(mine[name], blobs, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind", list(SOLVER_KINDS))
def test_margin_head_layer_sharded_by_the_solver(spawned: Path, kind: str) -> None:
    """10 iterations (iter_size 2, clipping, tests at 0, 5, 10) equal the one-process run."""
    folder = spawned / kind
    _same_run(folder / "dist.log", folder / "one.log", range(10))
    assert parse_train_log((folder / "dist.log").read_text()).test.keys() == {0, 5, 10}
    clipped = "Gradient clipping: scaling down gradients"
    assert (
        (folder / "dist.log").read_text().count(clipped)
        == (folder / "one.log").read_text().count(clipped)
        > 0
    )
    _same_weights(folder / "dist_iter_10.caffemodel", folder / "one_iter_10.caffemodel")
    _same_weights(folder / "dist_iter_5.caffemodel", folder / "one_iter_5.caffemodel")


@pytest.mark.parametrize("kind", list(SOLVER_KINDS))
def test_snapshots_move_between_one_process_and_sharded_runs(spawned: Path, kind: str) -> None:
    """The sharded run resumed from the one-process snapshot of iteration 5 ends as the one-process
    run; the one-process solver resumed from the sharded run's snapshot does too."""
    folder = spawned / kind
    _same_run(folder / "resumed.log", folder / "one.log", range(5, 10))
    _same_weights(folder / "resumed_iter_10.caffemodel", folder / "one_iter_10.caffemodel")
    log = GlogWriter(stream=None, path=folder / "back.log")
    solver = Solver(folder / "solver_one.prototxt", log=log)
    solver.param.snapshot_prefix = str(folder / "back")
    solver.solve(folder / "dist_iter_5.solverstate")
    log.close()
    _same_run(folder / "back.log", folder / "one.log", range(5, 10))
    _same_weights(folder / "back_iter_10.caffemodel", folder / "one_iter_10.caffemodel")
