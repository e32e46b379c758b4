"""Face verification metrics on pairs: k-fold accuracy under two published protocols, ROC, AUC, EER
and TAR at fixed FAR. Pure numpy (no torch), vectorized over thresholds.

Protocols (the accuracy and the per-fold thresholds follow each reference exactly):

``"sphereface"``: SphereFace's ``test/code/evaluation.m``. For each test fold, the mean feature of
the other (training) folds, both sides of their pairs, is subtracted from every feature, features
are L2-normalized and scored by cosine. On the training folds every threshold of the grid
``(-10000:10000)/10000`` is tried; a pair is called "same" when ``score > t`` and "different" when
``score < t`` (strict both ways: a score equal to ``t`` counts as wrong), and the threshold is the
mean of *all* thresholds reaching the best training accuracy. The fold's accuracy uses it on the
test fold.

``"insightface"``: InsightFace's ``eval/verification.py`` (``calculate_roc``). Features are
L2-normalized (InsightFace normalizes the flip-sum of the two views; see
:func:`caffe_compat.eval.extract_features`), scored by squared Euclidean distance, "same" when
``dist < t``, thresholds ``np.arange(0, 4, 0.01)``, the *first* threshold reaching the best
training accuracy. Its folds are ``KFold(10, shuffle=False)`` over the pair order, contiguous
blocks, which is what ``fold=None`` gives (and what LFW's ``line // 600`` folds are).

``std`` is the population standard deviation of the fold accuracies (``np.std``, as InsightFace
reports it; SphereFace prints none).

ROC, AUC, EER and TAR@FAR are computed on all pairs pooled, each pair scored as its protocol scores
it at test time (SphereFace: the cosine after subtracting its own test fold's training mean;
InsightFace: minus the squared distance), at every distinct score (exact, not a grid; InsightFace
averages per-fold rates on its grid instead and interpolates its TAR threshold on the training
folds: a deliberate deviation so that both presets report the same, exact ROC quantities). Ties
count as one step (AUC = the Mann-Whitney statistic with ties counted one half). EER is read where
FRR = 1 - TAR meets FAR, linearly interpolated between ROC points. TAR at FAR f is the best TAR of
an operating point whose FAR is at most f, NaN when ``f < 1 / negatives`` (no such point but zero).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from caffe_compat.errors import CaffeCompatError

PROTOCOLS = ("sphereface", "insightface")
DEFAULT_FARS = (1e-3, 1e-4, 1e-5)
SPHEREFACE_GRID = np.arange(-10000, 10001) / 10000.0
INSIGHTFACE_GRID = np.arange(0, 4, 0.01)


def kfold_assignment(n_pairs: int, n_folds: int = 10) -> np.ndarray:
    """Fold index of each pair under scikit-learn's ``KFold(n_folds, shuffle=False)``: contiguous
    blocks, the first ``n_pairs % n_folds`` of them one pair longer."""
    if n_folds < 2 or n_folds > n_pairs:
        raise CaffeCompatError(f"cannot split {n_pairs} pairs into {n_folds} folds")
    sizes = np.full(n_folds, n_pairs // n_folds, dtype=np.int64)
    sizes[: n_pairs % n_folds] += 1
    return np.repeat(np.arange(n_folds), sizes)


def _as_labels(issame: object, n_pairs: int) -> np.ndarray:
    labels = np.asarray(issame)
    if labels.shape != (n_pairs,):
        raise CaffeCompatError(f"issame has shape {labels.shape}, expected ({n_pairs},) (one flag per pair)")
    if labels.dtype == bool:
        return labels
    values = set(np.unique(labels).tolist())
    if not values <= {0, 1} and not values <= {-1, 1}:
        raise CaffeCompatError(f"issame must be booleans, 0/1 or -1/1; got values {sorted(values)[:5]}")
    return labels == 1


def _check_inputs(
    emb_a: object, emb_b: object, issame: object, fold: object, n_folds: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    a = np.asarray(emb_a, dtype=np.float64)
    b = np.asarray(emb_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape or a.shape[0] == 0:
        raise CaffeCompatError(
            f"emb_a and emb_b must be two (pairs, dim) arrays of one shape; got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise CaffeCompatError("the embeddings contain NaN or infinite values")
    same = _as_labels(issame, a.shape[0])
    if fold is None:
        folds = kfold_assignment(a.shape[0], n_folds)
    else:
        folds = np.asarray(fold)
        if folds.shape != (a.shape[0],) or not np.issubdtype(folds.dtype, np.integer):
            raise CaffeCompatError(
                f"fold must hold one integer per pair ({a.shape[0]}), got {folds.dtype} {folds.shape}"
            )
        if np.unique(folds).size < 2:
            raise CaffeCompatError(
                "fold must name at least two folds (the threshold is chosen on the others)"
            )
    return a, b, same, folds


def _count_above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many values are strictly greater than each threshold."""
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="right")


def _count_below(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """How many values are strictly less than each threshold."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    norms = np.sqrt(np.einsum("pd,pd->p", x, x))
    return x / np.where(norms > 0, norms, 1.0)[:, None]


def _centered_cosines(a: np.ndarray, b: np.ndarray, folds: np.ndarray, fold_ids: np.ndarray) -> np.ndarray:
    """(F, P) cosines of every pair after subtracting each fold's training mean, ``cos(a - m, b - m)``.

    Expanded into dot products about the global mean ``c`` (``a' = a - c``, ``m' = m - c``, small):
    ``(a' - m').(b' - m') = a'.b' - a'.m' - b'.m' + m'.m'``, in float64, so one pass over the
    features serves all folds; equal to normalizing the centered features first to about 1e-15.
    """
    center = (a.sum(axis=0) + b.sum(axis=0)) / (2 * a.shape[0])
    a, b = a - center, b - center
    onehot = folds[None, :] == fold_ids[:, None]
    fold_sums = onehot.astype(np.float64) @ (a + b)
    train_counts = 2 * (folds.size - onehot.sum(axis=1))
    means = (fold_sums.sum(axis=0)[None, :] - fold_sums) / train_counts[:, None]
    ab = np.einsum("pd,pd->p", a, b)
    aa = np.einsum("pd,pd->p", a, a)
    bb = np.einsum("pd,pd->p", b, b)
    am = means @ a.T
    bm = means @ b.T
    mm = np.einsum("fd,fd->f", means, means)[:, None]
    norm_a = np.sqrt(np.maximum(aa - 2 * am + mm, 0.0))
    norm_b = np.sqrt(np.maximum(bb - 2 * bm + mm, 0.0))
    return (ab - am - bm + mm) / np.where(norm_a * norm_b > 0, norm_a * norm_b, np.inf)


def _sphereface(
    a: np.ndarray, b: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """evaluation.m: per-fold mean subtraction, cosine, mean of all best grid thresholds."""
    fold_ids = np.unique(folds)
    all_scores = _centered_cosines(a, b, folds, fold_ids)
    scores = np.empty(a.shape[0])
    accuracy = np.empty(fold_ids.size)
    thresholds = np.empty(fold_ids.size)
    for k, fold_id in enumerate(fold_ids):
        test = folds == fold_id
        train = ~test
        fold_scores = all_scores[k]
        positive = np.sort(fold_scores[train & same])
        negative = np.sort(fold_scores[train & ~same])
        correct = _count_above(positive, SPHEREFACE_GRID) + _count_below(negative, SPHEREFACE_GRID)
        threshold = float(np.mean(SPHEREFACE_GRID[correct == correct.max()]))
        test_scores, test_same = fold_scores[test], same[test]
        hits = np.count_nonzero(test_scores[test_same] > threshold) + np.count_nonzero(
            test_scores[~test_same] < threshold
        )
        accuracy[k] = hits / test_scores.size
        thresholds[k] = threshold
        scores[test] = test_scores
    return accuracy, thresholds, scores


def _insightface(
    a: np.ndarray, b: np.ndarray, same: np.ndarray, folds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """verification.py's calculate_roc: L2-normalized, squared distance, first best grid threshold."""
    diff = _l2_normalize(a) - _l2_normalize(b)
    dist = np.einsum("pd,pd->p", diff, diff)
    fold_ids = np.unique(folds)
    accuracy = np.empty(fold_ids.size)
    thresholds = np.empty(fold_ids.size)
    for k, fold_id in enumerate(fold_ids):
        test = folds == fold_id
        train = ~test
        positive = np.sort(dist[train & same])
        negative = np.sort(dist[train & ~same])
        correct = _count_below(positive, INSIGHTFACE_GRID) + (
            negative.size - _count_below(negative, INSIGHTFACE_GRID)
        )
        threshold = float(INSIGHTFACE_GRID[int(np.argmax(correct))])
        test_dist, test_same = dist[test], same[test]
        hits = np.count_nonzero(test_dist[test_same] < threshold) + np.count_nonzero(
            test_dist[~test_same] >= threshold
        )
        accuracy[k] = hits / test_dist.size
        thresholds[k] = threshold
    return accuracy, thresholds, -dist


def roc_curve(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact ROC of similarity ``scores`` (higher = more alike): ``(far, tar, thresholds)`` with
    one point per distinct score (accepting ``score >= threshold``), from (0, 0) at +inf."""
    order = np.argsort(-scores, kind="stable")
    ranked, labels = scores[order], same[order]
    group_ends = np.flatnonzero(np.diff(ranked) != 0)
    ends = np.concatenate([group_ends, [ranked.size - 1]])
    true_accepts = np.cumsum(labels)[ends]
    false_accepts = (ends + 1) - true_accepts
    n_pos, n_neg = int(same.sum()), int((~same).sum())
    tar = np.concatenate([[0.0], true_accepts / n_pos]) if n_pos else np.full(ends.size + 1, np.nan)
    far = np.concatenate([[0.0], false_accepts / n_neg]) if n_neg else np.full(ends.size + 1, np.nan)
    return far, tar, np.concatenate([[np.inf], ranked[ends]])


def equal_error_rate(far: np.ndarray, tar: np.ndarray) -> float:
    """Where FRR = 1 - TAR equals FAR along the ROC, linearly interpolated between its points."""
    if np.isnan(far).any() or np.isnan(tar).any():
        return math.nan
    gap = (1.0 - tar) - far  # 1 at the origin, -1 at (1, 1): decreasing along the curve
    k = int(np.argmax(gap <= 0))
    if gap[k] == 0 or k == 0:
        return float(far[k])
    t = gap[k - 1] / (gap[k - 1] - gap[k])
    return float(far[k - 1] + t * (far[k] - far[k - 1]))


def tar_at_far(
    far: np.ndarray, tar: np.ndarray, n_negative: int, targets: Sequence[float]
) -> dict[float, float]:
    """Best TAR among ROC points with FAR <= target; NaN when target < 1 / n_negative."""
    result = {}
    false_accepts = np.rint(far * n_negative) if n_negative else far
    for target in targets:
        if n_negative == 0 or target * n_negative < 1 - 1e-9:
            result[float(target)] = math.nan
            continue
        allowed = false_accepts <= math.floor(target * n_negative + 1e-9)
        result[float(target)] = float(tar[allowed].max())
    return result


def evaluate_pairs(
    emb_a: object,
    emb_b: object,
    issame: object,
    fold: object = None,
    protocol: str = "sphereface",
    n_folds: int = 10,
    fars: Sequence[float] = DEFAULT_FARS,
) -> dict:
    """Verification metrics of pairs ``(emb_a[i], emb_b[i])`` under a published protocol.

    Args:
        emb_a, emb_b: (P, D) features of the two sides of P pairs.
        issame: P booleans (0/1 and SphereFace's -1/1 flags are accepted).
        fold: the fold index of each pair (LFW: pair line // 600); ``None`` splits the pairs into
            ``n_folds`` contiguous blocks (InsightFace's unshuffled KFold).
        protocol: ``"sphereface"`` or ``"insightface"`` (see the module docstring).
        fars: the FARs at which TAR is reported.

    Returns:
        dict with ``accuracy`` (mean over folds), ``std``, ``fold_accuracy`` and ``thresholds``
        (one per fold, in sorted fold order; cosine for sphereface, squared distance for
        insightface), ``auc``, ``eer``, ``tar_at_far`` (FAR -> TAR), ``roc`` (``far``, ``tar``,
        ``thresholds`` arrays on ``scores``), ``scores`` (per pair, higher = more alike),
        ``protocol``, ``pairs``, ``positives``, ``negatives``.

    Raises:
        CaffeCompatError: an unknown protocol or inconsistent inputs.
    """
    if protocol not in PROTOCOLS:
        raise CaffeCompatError(f"unknown protocol '{protocol}'; choose one of {', '.join(PROTOCOLS)}")
    a, b, same, folds = _check_inputs(emb_a, emb_b, issame, fold, n_folds)
    run = _sphereface if protocol == "sphereface" else _insightface
    accuracy, thresholds, scores = run(a, b, same, folds)
    far, tar, roc_thresholds = roc_curve(scores, same)
    n_neg = int((~same).sum())
    valid = not (np.isnan(far).any() or np.isnan(tar).any())
    return {
        "protocol": protocol,
        "accuracy": float(accuracy.mean()),
        "std": float(accuracy.std()),
        "fold_accuracy": accuracy,
        "thresholds": thresholds,
        "auc": float(np.trapezoid(tar, far)) if valid else math.nan,
        "eer": equal_error_rate(far, tar),
        "tar_at_far": tar_at_far(far, tar, n_neg if valid else 0, fars),
        "roc": {"far": far, "tar": tar, "thresholds": roc_thresholds},
        "scores": scores,
        "pairs": int(same.size),
        "positives": int(same.sum()),
        "negatives": n_neg,
    }


def format_metrics(result: dict) -> str:
    """The metrics as printed by ``caffe-compat verify``; the last line is
    ``verification accuracy: 0.xxxx``."""
    unit = "cosine" if result["protocol"] == "sphereface" else "squared distance"
    lines = [
        f"protocol: {result['protocol']} ({result['pairs']} pairs: {result['positives']} same, "
        f"{result['negatives']} different; {len(result['fold_accuracy'])} folds)",
        f"{'fold':>4}  {'accuracy':>8}  threshold ({unit})",
    ]
    for k, (acc, thr) in enumerate(zip(result["fold_accuracy"], result["thresholds"], strict=True), start=1):
        lines.append(f"{k:>4}  {acc * 100:>7.2f}%  {thr:.4f}")
    lines.append(f"mean accuracy: {result['accuracy'] * 100:.2f}% +- {result['std'] * 100:.2f}%")
    lines.append(f"AUC: {result['auc']:.4f}")
    lines.append(f"EER: {result['eer'] * 100:.2f}%")
    for far, tar in result["tar_at_far"].items():
        shown = "n/a (fewer than 1/FAR different pairs)" if math.isnan(tar) else f"{tar * 100:.2f}%"
        lines.append(f"TAR @ FAR={far:g}: {shown}")
    lines.append(f"verification accuracy: {result['accuracy']:.4f}")
    return "\n".join(lines)
