"""Every benchmark script runs in a quick mode (tiny sizes, one repeat) and prints its table.

Timings are not checked (tests check correctness, not speed): each table must be printed with
its rows, and the numbers in them must be real (finite, positive where they are times or rates).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"

NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"

#: script -> (arguments of its quick mode, row patterns whose numbers must be positive)
CASES: dict[str, tuple[list[str], list[str]]] = {
    "bench_speed.py": (
        ["--quick"],
        [
            rf"conv3x3 128ch 28x24 channels_last \(oneDNN\)\s+{NUMBER}\s+{NUMBER}",
            rf"conv3x3 256ch 14x12 channels_last \(oneDNN\)\s+{NUMBER}\s+{NUMBER}",
            rf"caffe_compat\.Net\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x hand-written",
            rf"hand-written nn\.Module\s+{NUMBER}\s+{NUMBER}",
            rf"Net, channels_last weights\+input \(experiment\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x",
            rf"Solver\.step \(data\+fwd\+bwd\+update\)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x",
            rf"caffe-compat time: whole net\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x plain fwd\+bwd; "
            rf"layers sum to {NUMBER}",
            rf"batch 1: Net inference path\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER} GFLOP",
            rf"batch 1: Net default \(autograd, all blobs\)\s+{NUMBER}\s+{NUMBER}",
        ],
    ),
    "bench_memory.py": (
        ["--quick"],
        [
            rf"training, Solver\.step, batch 1\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
            rf"deploy b1: inference path\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
            rf"deploy b1: default forward\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
        ],
    ),
    "bench_scaling.py": (
        ["--quick"],
        [
            rf"\n\s+1\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\n",
            rf"\n\s+2\s+{NUMBER}\s+{NUMBER}\s+-?{NUMBER}\s+{NUMBER}\s+{NUMBER}\n",
            rf"1000\s+unchunked\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
            rf"4000\s+chunked\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
        ],
    ),
    "bench_margin_heads.py": (
        ["--quick"],
        [
            rf"ours mv-am\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}x",
            rf"ours sphereface\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x\s+{NUMBER}x",
            rf"\nfc\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
            rf"\nam\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
            rf"\nmv-arc\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
        ],
    ),
    "bench_net_overhead.py": (
        ["--batch", "1", "--repeats", "1"],
        [rf"caffe_compat\.Net \(fx graph\)\s+{NUMBER}\s+{NUMBER}", rf"hand-written nn\.Module\s+{NUMBER}"],
    ),
    "bench_solver.py": (
        ["--iters", "1", "--repeats", "1"],
        [rf"caffe_compat\.Solver\.step\s+{NUMBER}", rf"bare PyTorch \(hand SGD\)\s+{NUMBER}"],
    ),
    "bench_caffemodel_read.py": (
        ["--mb", "2", "--repeats", "1"],
        [rf"caffe_compat\.read_caffemodel\s+{NUMBER}\s+{NUMBER}"],
    ),
    "bench_verification.py": (
        ["--pairs", "1200", "--dim", "16", "--repeats", "1"],
        [rf"sphereface\s+{NUMBER}s\s+{NUMBER}s\s+{NUMBER}x", rf"insightface\s+{NUMBER}s\s+{NUMBER}s"],
    ),
    "bench_data_loading.py": (
        ["--batch", "4", "--batches", "1", "--net-batch", "1", "--net-iters", "1"],
        [
            rf"face net forward\+backward, random inputs \(batch 1\)\s+{NUMBER}",
            rf"ImageData 112x96, 0 workers.*?{NUMBER}",
        ],
    ),
    "bench_convert.py": (
        ["--mb", "50", "--repeats", "1"],
        [
            rf"convert --to pt\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}",
            rf"caffe_compat\.Net \(eager\)\s+{NUMBER}\s+{NUMBER}",
        ],
    ),
    "bench_pycaffe.py": (
        ["--batch", "1", "--repeats", "1"],
        [rf"deploy forward \(feature extraction\) \| {NUMBER} \| {NUMBER} \| {NUMBER}x"],
    ),
    "bench_distributed.py": (
        ["--quick", "--repeats", "1"],
        [rf"\n\s+2\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}\s+weight 0\.50x"],
    ),
    "bench_demo.py": (
        ["--quick"],
        [
            rf"\| wall time \(s\) \| {NUMBER} \| <= 180 \|",
            rf"\| held-out accuracy, trained \| {NUMBER} \| >= 0\.90 \|",
            rf"\| held-out accuracy, untrained \| {NUMBER} \|",
            rf"\|\s+stage: train \(s\) \| {NUMBER} \|",
        ],
    ),
    "bench_soak.py": (
        ["--iters", "20", "--at", "10,20", "--snapshot", "10", "--workers", "0"],
        [rf"\n\s+20\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}"],  # RSS at iteration 20: main, workers, total
    ),
}


def test_every_benchmark_script_has_a_quick_case() -> None:
    assert sorted(p.name for p in BENCHMARKS.glob("bench_*.py")) == sorted(CASES)


@pytest.mark.parametrize("script", sorted(CASES))
def test_benchmark_runs_in_quick_mode(script: str) -> None:
    arguments, patterns = CASES[script]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *arguments],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=1800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for pattern in patterns:
        match = re.search(pattern, done.stdout)
        assert match, f"{script}: no row matching {pattern!r} in:\n{done.stdout}"
        values = [float(v) for v in match.groups() if v is not None]
        assert values and all(math.isfinite(v) for v in values), (pattern, values)
        assert all(v > 0 for v in values if not pattern.startswith((r"\n\s+2", r"\n\s+20"))), (
            pattern,
            values,
        )
