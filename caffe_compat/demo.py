"""``caffe-compat demo``: the whole mission on a generated dataset, in a few minutes on a CPU.

1. ``make-faces``: a synthetic identity dataset (aligned 112x96 colour faces, train/val lists and
   an LFW-style pairs file over held-out identities);
2. trains the ORIGINAL ``prototxt/amsoftmax/face_train_test.prototxt`` (20-layer residual net,
   Normalize + normalized InnerProduct + LabelSpecificAdd -0.35 + Scale 30 + SoftmaxWithLoss) with
   ``face_solver.prototxt``; only the data paths, the batch size, the iteration count, the lr
   schedule and the test/snapshot intervals are overridden, the architecture stays the original;
   the Caffe-format log goes to the console and to ``DIR/train.log``;
3. evaluates verification on the held-out pairs with the original deploy net
   ``face_deploy_mirror_normalize.prototxt`` (its own mirror trick) and SphereFace's protocol;
4. exports the deploy net to ONNX (verified against onnxruntime) and plots the training curve.
The last line printed is ``verification accuracy: 0.xxxx``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from pathlib import Path

from caffe_compat.errors import CaffeCompatError

PROTOTXT_DIR = Path(__file__).resolve().parent.parent / "prototxt" / "amsoftmax"


@dataclass
class DemoSettings:
    """What the demo overrides in the original configs (sized for 2 CPU cores)."""

    identities: int = 40
    per_identity: int = 16
    batch_size: int = 24
    test_batch_size: int = 20
    max_iter: int = 150
    base_lr: float = 0.01
    stepvalues: tuple[int, ...] = (120, 140)
    display: int = 10
    average_loss: int = 10
    test_interval: int = 50
    test_iter: int = 5
    seed: int = 0


def _prototxt(name: str) -> Path:
    path = PROTOTXT_DIR / name
    if not path.is_file():
        raise CaffeCompatError(
            f"the original configs are not found at {PROTOTXT_DIR}: run the demo from a source checkout "
            "(pip install -e .)"
        )
    return path


def demo_solver(faces: Path, out: Path, settings: DemoSettings):
    """The original solver and net with the demo's data paths and sizes."""
    from caffe_compat.data.overrides import apply_overrides
    from caffe_compat.proto.io import read_net, read_solver

    root = str(faces.resolve()) + os.sep
    net = apply_overrides(
        read_net(_prototxt("face_train_test.prototxt")),
        sets=[
            f"TRAIN:data.image_data_param.source={faces.resolve() / 'train.txt'}",
            f"TRAIN:data.image_data_param.root_folder={root}",
            f"TRAIN:data.image_data_param.batch_size={settings.batch_size}",
            f"TEST:data.image_data_param.source={faces.resolve() / 'val.txt'}",
            f"TEST:data.image_data_param.root_folder={root}",
            f"TEST:data.image_data_param.batch_size={settings.test_batch_size}",
        ],
    )
    solver = read_solver(_prototxt("face_solver.prototxt"))
    solver.ClearField("net")
    solver.net_param.CopyFrom(net)
    solver.base_lr = settings.base_lr
    solver.max_iter = settings.max_iter
    del solver.stepvalue[:]
    solver.stepvalue.extend(settings.stepvalues)
    solver.display = settings.display
    solver.average_loss = settings.average_loss
    solver.test_interval = settings.test_interval
    del solver.test_iter[:]
    solver.test_iter.append(settings.test_iter)
    solver.snapshot = 0
    solver.snapshot_prefix = str(out / "face_train_test")
    solver.random_seed = settings.seed
    solver.solver_mode = solver.CPU
    return solver


def run_demo(out: str | os.PathLike = "caffe_compat_demo", settings: DemoSettings | None = None) -> float:
    """Run the demo into ``out`` and return the verification accuracy."""
    import numpy as np
    import torch

    from caffe_compat.data.synthetic_faces import make_faces
    from caffe_compat.eval import evaluate_pairs, read_pairs
    from caffe_compat.eval.features import extract_features
    from caffe_compat.eval.pairs import pair_images, pair_labels
    from caffe_compat.export.convert import convert
    from caffe_compat.log.glog import GlogWriter
    from caffe_compat.log.plot import plot_logs
    from caffe_compat.net.net import Net
    from caffe_compat.solver.solver import Solver

    settings = settings or DemoSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    faces = out / "faces"
    if not (faces / "pairs.txt").is_file():
        report = make_faces(
            faces, identities=settings.identities, per_identity=settings.per_identity, seed=settings.seed
        )
        print(f"[demo] {report}", flush=True)
    else:
        print(f"[demo] reusing the dataset in {faces}", flush=True)

    print(
        "[demo] training prototxt/amsoftmax/face_train_test.prototxt with face_solver.prototxt "
        f"(batch {settings.batch_size}, {settings.max_iter} iterations; log: {out / 'train.log'})",
        flush=True,
    )
    log_path = out / "train.log"
    log = GlogWriter(path=log_path, console=lambda line: print(line, flush=True))
    try:
        solver = Solver(demo_solver(faces, out, settings), log=log, device="cpu")
        solver.solve()
        log.info("Optimization Done.", "caffe.cpp:260")
    finally:
        log.close()
    weights = Path(f"{solver.param.snapshot_prefix}_iter_{solver.iter}.caffemodel")  # snapshot_after_train

    deploy_prototxt = _prototxt("face_deploy_mirror_normalize.prototxt")
    deploy = Net(deploy_prototxt, weights=weights, phase="TEST")
    pairs = read_pairs(faces / "pairs.txt")
    paths, index_a, index_b = pair_images(pairs, faces, pattern="{name}/{name}_{idx:04d}.png")
    issame, fold = pair_labels(pairs)
    with torch.no_grad():
        features = extract_features(
            deploy, [str(p) for p in paths], blob="norm1", mirror="sum", batch_size=32
        )
    metrics = evaluate_pairs(features[index_a], features[index_b], issame, fold, protocol="sphereface")

    onnx_path = out / "face_deploy.onnx"
    convert(deploy_prototxt, weights, "onnx", onnx_path, batch=2)
    curve = out / "train_curve.png"
    plot_logs([log_path], curve, labels=["caffe-compat"])
    elapsed = time.perf_counter() - started
    print(f"[demo] wrote {weights}, {onnx_path} and {curve} in {elapsed:.0f} s", flush=True)
    print(
        f"[demo] held-out pairs: {len(pairs)} ({int(issame.sum())} same), 10-fold SphereFace protocol, "
        f"AUC {metrics['auc']:.4f}, std {metrics['std']:.4f}",
        flush=True,
    )
    accuracy = float(np.mean(metrics["accuracy"]))
    print(f"verification accuracy: {accuracy:.4f}", flush=True)
    return accuracy


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out", default="caffe_compat_demo", help="folder for the dataset, log, model and plots"
    )
    parser.add_argument("--iterations", type=int, default=DemoSettings.max_iter, help="training iterations")


def _run(args: argparse.Namespace) -> int:
    settings = DemoSettings(max_iter=args.iterations)
    if args.iterations != DemoSettings.max_iter:
        settings.stepvalues = tuple(max(1, int(args.iterations * f)) for f in (0.8, 0.93))
        settings.test_interval = max(1, args.iterations // 3)
    run_demo(args.out, settings)
    return 0


COMMANDS = {
    "demo": (
        "train the original AM-Softmax config on a generated face dataset, evaluate and export it",
        _add_arguments,
        _run,
    )
}
