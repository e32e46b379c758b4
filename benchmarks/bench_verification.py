"""Evaluating LFW-sized verification: 6,000 pairs of 512-d features, 10 folds.

Target (issue 8): ``caffe_compat.eval.evaluate_pairs`` takes under 1 second per protocol (all
metrics: k-fold accuracy, exact ROC, AUC, EER, TAR@FAR). Timed side by side, interleaved, in one
process, against the reference programs' own way of computing the k-fold accuracy: one pass over
the pairs per threshold (SphereFace's evaluation.m loop over 20,001 thresholds, InsightFace's
calculate_roc loop over 400), written here in numpy. The table prints medians and the speed-up.

    python benchmarks/bench_verification.py [--pairs 6000] [--dim 512] [--repeats 5] [--no-reference]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from caffe_compat.eval import evaluate_pairs


def make_pairs(pairs: int, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    same = np.arange(pairs) % 600 < 300
    a = rng.standard_normal((pairs, dim), dtype=np.float32) + 0.3
    noise = np.where(same, 2.5, 6.0)[:, None].astype(np.float32) * rng.standard_normal(
        (pairs, dim), dtype=np.float32
    )
    return a, a + noise, same, np.arange(pairs) // 600


def reference_loop(a: np.ndarray, b: np.ndarray, same: np.ndarray, fold: np.ndarray, protocol: str) -> float:
    """Per-threshold loops, as the reference programs run them (accuracy only)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    accuracies = []
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        if protocol == "sphereface":
            mu = np.concatenate([a[train], b[train]]).mean(axis=0)
            fa, fb = a - mu, b - mu
            fa /= np.linalg.norm(fa, axis=1, keepdims=True)
            fb /= np.linalg.norm(fb, axis=1, keepdims=True)
            s = (fa * fb).sum(axis=1)
            st, lt = s[train], same[train]
            grid = np.arange(-10000, 10001) / 10000
            acc = np.array([np.sum(st[lt] > t) + np.sum(st[~lt] < t) for t in grid])
            t = grid[acc == acc.max()].mean()
            accuracies.append(
                (np.sum(s[test][same[test]] > t) + np.sum(s[test][~same[test]] < t)) / test.sum()
            )
        else:
            na = a / np.linalg.norm(a, axis=1, keepdims=True)
            nb = b / np.linalg.norm(b, axis=1, keepdims=True)
            d = np.sum(np.square(na - nb), 1)
            grid = np.arange(0, 4, 0.01)
            acc = np.array([np.sum((d[train] < t) == same[train]) for t in grid])
            t = grid[int(np.argmax(acc))]
            accuracies.append(np.mean((d[test] < t) == same[test]))
    return float(np.mean(accuracies))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-reference", action="store_true", help="time evaluate_pairs only")
    args = parser.parse_args()
    a, b, same, fold = make_pairs(args.pairs, args.dim)
    print(f"{args.pairs} pairs x {args.dim}-d, {np.unique(fold).size} folds, median of {args.repeats} runs")
    print(f"{'protocol':<12} {'evaluate_pairs':>15} {'reference loop':>15} {'speed-up':>9}  target < 1 s")
    for protocol in ("sphereface", "insightface"):
        ours, reference = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = evaluate_pairs(a, b, same, fold, protocol=protocol)
            ours.append(time.perf_counter() - start)
            if not args.no_reference:
                start = time.perf_counter()
                accuracy = reference_loop(a, b, same, fold, protocol)
                reference.append(time.perf_counter() - start)
                assert abs(accuracy - result["accuracy"]) < 1e-12, (protocol, accuracy, result["accuracy"])
        ours_s = statistics.median(ours)
        ref_s = statistics.median(reference) if reference else float("nan")
        verdict = "PASS" if ours_s < 1.0 else "FAIL"
        print(f"{protocol:<12} {ours_s:>14.3f}s {ref_s:>14.3f}s {ref_s / ours_s:>8.1f}x  {verdict}")
        print(f"{'':<12} accuracy {result['accuracy']:.4f}, AUC {result['auc']:.4f}, EER {result['eer']:.4f}")


if __name__ == "__main__":
    main()
