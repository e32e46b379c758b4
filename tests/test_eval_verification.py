"""evaluate_pairs against a brute-force reference (every threshold tried, literal formulas) and a
hand-computed example; the SphereFace and InsightFace presets; pairs files; errors; no torch."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from caffe_compat.eval import evaluate_pairs, read_pairs
from caffe_compat.eval.pairs import image_path, pair_images, pair_labels
from caffe_compat.eval.plot import plot_roc
from caffe_compat.eval.verification import kfold_assignment

# -- brute-force references -----------------------------------------------------------------------


def brute_sphereface(a: np.ndarray, b: np.ndarray, same: np.ndarray, fold: np.ndarray):
    """evaluation.m literally: mean of the other folds, normalize, cosine, all 20001 thresholds."""
    grid = np.array([k / 10000 for k in range(-10000, 10001)])
    accuracies, thresholds, scores = [], [], np.empty(len(same))
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        mu = np.concatenate([a[train], b[train]]).mean(axis=0)
        fa, fb = a - mu, b - mu
        fa = fa / np.sqrt((fa**2).sum(axis=1, keepdims=True))
        fb = fb / np.sqrt((fb**2).sum(axis=1, keepdims=True))
        s = (fa * fb).sum(axis=1)
        st, lt = s[train], same[train]
        # every threshold at once: (thresholds, pairs) comparisons
        acc = ((st[None, :] > grid[:, None]) & lt).sum(1) + ((st[None, :] < grid[:, None]) & ~lt).sum(1)
        acc = acc / st.size
        threshold = grid[acc == acc.max()].mean()
        se, le = s[test], same[test]
        accuracies.append((np.sum(se[le] > threshold) + np.sum(se[~le] < threshold)) / se.size)
        thresholds.append(threshold)
        scores[test] = se
    return np.array(accuracies), np.array(thresholds), scores


def brute_insightface(a: np.ndarray, b: np.ndarray, same: np.ndarray, fold: np.ndarray):
    """calculate_roc literally: normalize, squared distance, np.arange(0, 4, 0.01), first argmax."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    dist = np.sum(np.square(a - b), 1)
    grid = np.arange(0, 4, 0.01)
    accuracies, thresholds = [], []
    for f in np.unique(fold):
        train, test = fold != f, fold == f
        acc = []
        for t in grid:
            predict = dist[train] < t
            tp = np.sum(predict & same[train])
            tn = np.sum(~predict & ~same[train])
            acc.append((tp + tn) / train.sum())
        t = grid[int(np.argmax(acc))]
        predict = dist[test] < t
        accuracies.append((np.sum(predict & same[test]) + np.sum(~predict & ~same[test])) / test.sum())
        thresholds.append(t)
    return np.array(accuracies), np.array(thresholds), -dist


def brute_roc(scores: np.ndarray, same: np.ndarray):
    """Every distinct score as a threshold (accept score >= t): FAR, TAR; AUC by pair counting."""
    pos, neg = scores[same], scores[~same]
    cuts = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    far = np.array([np.mean(neg >= t) for t in cuts])
    tar = np.array([np.mean(pos >= t) for t in cuts])
    auc = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (
        pos.size * neg.size
    )
    return far, tar, auc


def random_set(rng: np.random.Generator, pairs: int, dim: int, offset: float = 0.0):
    same = np.arange(pairs) % (pairs // 10) < pairs // 20
    a = rng.normal(size=(pairs, dim)) + offset
    noise = np.where(same, 1.2, 3.0)[:, None] * rng.normal(size=(pairs, dim))
    return a, a + noise, same, np.arange(pairs) // (pairs // 10)


@pytest.mark.parametrize("seed", [0, 1])
def test_sphereface_matches_brute_force(seed: int) -> None:
    a, b, same, fold = random_set(np.random.default_rng(seed), 600, 32, offset=0.5)
    result = evaluate_pairs(a, b, same, fold, protocol="sphereface")
    accuracy, thresholds, scores = brute_sphereface(a, b, same, fold)
    np.testing.assert_allclose(result["thresholds"], thresholds, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result["fold_accuracy"], accuracy)
    assert result["accuracy"] == pytest.approx(accuracy.mean(), abs=1e-15)
    assert result["std"] == pytest.approx(accuracy.std(), abs=1e-15)
    np.testing.assert_allclose(result["scores"], scores, rtol=0, atol=1e-13)
    assert 0.6 < result["accuracy"] < 0.99  # a set where thresholds matter


@pytest.mark.parametrize("seed", [0, 1])
def test_insightface_matches_brute_force(seed: int) -> None:
    a, b, same, fold = random_set(np.random.default_rng(seed), 600, 32)
    result = evaluate_pairs(a, b, same, fold, protocol="insightface")
    accuracy, thresholds, scores = brute_insightface(a, b, same, fold)
    np.testing.assert_array_equal(result["thresholds"], thresholds)
    np.testing.assert_array_equal(result["fold_accuracy"], accuracy)
    np.testing.assert_allclose(result["scores"], scores, rtol=0, atol=1e-13)
    assert 0.6 < result["accuracy"] < 0.99
    # fold=None is InsightFace's KFold(10, shuffle=False): the same contiguous blocks here.
    assert evaluate_pairs(a, b, same, None, protocol="insightface")["accuracy"] == result["accuracy"]


@pytest.mark.parametrize("protocol", ["sphereface", "insightface"])
def test_roc_auc_eer_tar_match_brute_force(protocol: str) -> None:
    a, b, same, fold = random_set(np.random.default_rng(3), 6000, 16)
    result = evaluate_pairs(a, b, same, fold, protocol=protocol)
    far, tar, auc = brute_roc(result["scores"], same)
    np.testing.assert_allclose(result["roc"]["far"], far, rtol=0, atol=1e-15)
    np.testing.assert_allclose(result["roc"]["tar"], tar, rtol=0, atol=1e-15)
    assert result["auc"] == pytest.approx(auc, abs=1e-12)
    # TAR at FAR 1e-3 (3000 negatives: up to 3 false accepts); 1e-4 and 1e-5 are below 1/3000.
    assert result["tar_at_far"][1e-3] == tar[far <= 3 / 3000].max()
    assert math.isnan(result["tar_at_far"][1e-4]) and math.isnan(result["tar_at_far"][1e-5])
    # EER lies where FRR crosses FAR: between the two ROC points that bracket the crossing.
    frr = 1 - tar
    k = np.argmax(frr <= far)
    assert min(far[k - 1], frr[k]) - 1e-12 <= result["eer"] <= max(far[k], frr[k - 1]) + 1e-12
    assert 0.01 < result["eer"] < 0.5


def hand_example():
    """Two folds; each pair appears with both sides negated, so each fold's mean is zero and the
    SphereFace scores are the plain cosines below (off the 1e-4 grid by half a step)."""
    cosines = [
        ([0.90005, 0.20005], [0.50005, -0.29995]),  # fold 0: same, different
        ([0.80005, 0.60005], [0.70005, -0.09995]),  # fold 1
    ]
    a, b, same, fold = [], [], [], []
    for f, (positives, negatives) in enumerate(cosines):
        for c, s in [(c, True) for c in positives] + [(c, False) for c in negatives]:
            u, v = np.array([1.0, 0.0]), np.array([c, math.sqrt(1 - c * c)])
            for sign in (1, -1):
                a.append(sign * u)
                b.append(sign * v)
                same.append(s)
                fold.append(f)
    return np.array(a), np.array(b), np.array(same), np.array(fold)


def test_hand_computed_example_and_the_presets_differ() -> None:
    a, b, same, fold = hand_example()
    sphere = evaluate_pairs(a, b, same, fold, protocol="sphereface")
    # Fold 0's threshold comes from fold 1, where 6 of 8 are right for t in (-0.09995, 0.60005)
    # (grid -999..6000) and in (0.70005, 0.80005) (grid 7001..8000): the mean of all 8000 is 0.31255.
    # On fold 0 it accepts 0.90005 only and rejects -0.29995 only: 4/8. Fold 1's threshold: best
    # t in (-0.29995, 0.20005) (-2999..2000) or (0.50005, 0.90005) (5001..9000): mean 0.2833833...;
    # on fold 1 it gets both same pairs and rejects -0.09995: 6/8.
    np.testing.assert_allclose(sphere["thresholds"], [0.31255, 25504500 / 9000 / 10000], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sphere["fold_accuracy"], [0.5, 0.75])
    assert sphere["accuracy"] == 0.625 and sphere["std"] == 0.125
    # InsightFace: distance 2 - 2 cos; fold 1 trains t: first best 0.40 (0.3999 < t <= 0.5999),
    # giving 6/8 on fold 0; fold 0 trains 0.20, giving 4/8 on fold 1.
    insight = evaluate_pairs(a, b, same, fold, protocol="insightface")
    np.testing.assert_allclose(insight["thresholds"], [0.40, 0.20], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(insight["fold_accuracy"], [0.75, 0.5])
    # Pooled ROC (the same ranking under both): AUC = 13/16 pairs ordered right; FRR meets FAR at
    # the point (FAR 0.25, TAR 0.75); 8 negatives cannot measure FAR 1e-3.
    for result in (sphere, insight):
        assert result["auc"] == 13 / 16 and result["eer"] == 0.25
        assert all(math.isnan(v) for v in result["tar_at_far"].values())
    np.testing.assert_allclose(insight["scores"], 2 * sphere["scores"] - 2, atol=1e-12)


def test_eer_interpolates_between_roc_points() -> None:
    # scores (same?): 0.9 T, 0.8 F, 0.7 T, 0.1 F -> ROC (0,0) (0,.5) (.5,.5) (.5,1) (1,1);
    # FRR - FAR: 1, .5, 0 -> EER 0.5 exactly at (.5, .5); shift: three negatives instead.
    scores = np.array([0.9, 0.8, 0.7, 0.1, 0.05])
    same = np.array([True, False, True, False, False])
    from caffe_compat.eval.verification import equal_error_rate, roc_curve

    far, tar, _ = roc_curve(scores, same)
    np.testing.assert_allclose(far, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    # FRR - FAR at (0, .5) is 0.5, at (1/3, .5) is 1/6, at (1/3, 1) is -1/3: crossing between the
    # last two: FAR stays 1/3.
    assert equal_error_rate(far, tar) == pytest.approx(1 / 3)
    far = np.array([0.0, 0.0, 0.5, 1.0])
    tar = np.array([0.0, 0.2, 1.0, 1.0])  # FRR - FAR: 1, .8, -.5 -> t = .8/1.3 along (0,.2)-(.5,1)
    assert equal_error_rate(far, tar) == pytest.approx(0.5 * 0.8 / 1.3)


def test_labels_folds_and_input_errors() -> None:
    a, b, same, fold = hand_example()
    flags = np.where(same, 1, -1)  # SphereFace's flags
    assert evaluate_pairs(a, b, flags, fold)["accuracy"] == evaluate_pairs(a, b, same, fold)["accuracy"]
    assert kfold_assignment(13, 5).tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4]
    assert np.bincount(kfold_assignment(6000)).tolist() == [600] * 10
    with pytest.raises(CaffeCompatError, match="unknown protocol 'lfw'"):
        evaluate_pairs(a, b, same, fold, protocol="lfw")
    with pytest.raises(CaffeCompatError, match="one shape"):
        evaluate_pairs(a, b[:, :1], same, fold)
    with pytest.raises(CaffeCompatError, match="at least two folds"):
        evaluate_pairs(a, b, same, np.zeros(len(same), dtype=int))
    with pytest.raises(CaffeCompatError, match="issame has shape"):
        evaluate_pairs(a, b, same[:-1], fold)
    with pytest.raises(CaffeCompatError, match="0/1 or -1/1"):
        evaluate_pairs(a, b, np.arange(len(same)), fold)
    with pytest.raises(CaffeCompatError, match="NaN"):
        evaluate_pairs(np.full_like(a, np.nan), b, same, fold)


def write_pairs(path: Path, folds: int = 2, per_kind: int = 2) -> None:
    lines = [f"{folds}\t{per_kind}"]
    for f in range(folds):
        lines += [f"Person_{f}_{k}\t1\t{k + 2}" for k in range(per_kind)]
        lines += [f"Person_{f}_{k}\t1\tOther_{f}_{k}\t3" for k in range(per_kind)]
    path.write_text("\n".join(lines) + "\n")


def test_read_pairs(tmp_path: Path) -> None:
    path = tmp_path / "pairs.txt"
    write_pairs(path)
    pairs = read_pairs(path)
    assert len(pairs) == 8
    assert pairs[0] == ("Person_0_0", 1, "Person_0_0", 2, True, 0)
    assert pairs[7] == ("Person_1_1", 1, "Other_1_1", 3, False, 1)
    issame, fold = pair_labels(pairs)
    assert issame.tolist() == [True, True, False, False] * 2 and fold.tolist() == [0] * 4 + [1] * 4
    paths, index_a, index_b = pair_images(pairs, tmp_path)
    assert paths[0] == tmp_path / "Person_0_0" / "Person_0_0_0001.jpg"
    assert paths[index_b[2]] == tmp_path / "Other_0_0" / "Other_0_0_0003.jpg"
    assert len(paths) == 16 - 4 + 0 and index_a[2] == index_a[0]  # Person_0_0_0001 appears twice
    assert image_path("r", "x", 7, "{name}-{idx}.png") == Path("r/x-7.png")
    single = tmp_path / "dev.txt"
    single.write_text("1\nA 1 2\nA 1 B 1\n")
    assert [p.fold for p in read_pairs(single)] == [0, 0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty pairs file"),
        ("ten 300\nA 1 2\n", r"pairs.txt:1: expected a header"),
        (
            "1 1\nA 1 2\nA 1\n",
            r"pairs.txt:3: expected 'name idx1 idx2' or 'name1 idx1 name2 idx2', got 2 fields",
        ),
        ("1 1\nA 1 2\nA 1 B\n", r"pairs.txt:3: image number 'B' is not an integer"),
        ("1 1\nA 1 2\n\nA 1 B 2 extra\n", r"pairs.txt:4: .*got 5 fields"),
        ("1 1\nA one 2\nA 1 B 1\n", r"pairs.txt:2: image number 'one' is not an integer"),
        ("2 1\nA 1 2\nA 1 B 1\n", r"announces 2 x 2 x 1 = 4 pairs, the file has 2"),
        ("0 300\n", "announces no pairs"),
    ],
)
def test_malformed_pairs_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "pairs.txt"
    path.write_text(content)
    with pytest.raises(CaffeCompatError, match=message):
        read_pairs(path)


def test_missing_pairs_file_and_bad_pattern(tmp_path: Path) -> None:
    with pytest.raises(CaffeCompatError, match="cannot read pairs file .*nope.txt: no such file"):
        read_pairs(tmp_path / "nope.txt")
    with pytest.raises(CaffeCompatError, match="bad image pattern '{person}'"):
        image_path(tmp_path, "x", 1, "{person}")


def test_roc_plot(tmp_path: Path) -> None:
    a, b, same, fold = random_set(np.random.default_rng(5), 600, 16)
    results = {p: evaluate_pairs(a, b, same, fold, protocol=p) for p in ("sphereface", "insightface")}
    figure = plot_roc(results, tmp_path / "roc.png")
    data = (tmp_path / "roc.png").read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000
    ax = figure.get_axes()[0]
    assert ax.get_xlabel() == "false accept rate (FAR)" and ax.get_ylabel() == "true accept rate (TAR)"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels[0].startswith("sphereface (AUC ") and labels[1].startswith("insightface (AUC ")


def test_metrics_do_not_import_torch() -> None:
    """The metrics and pairs modules never import torch; extract_features is loaded lazily."""
    root = Path(__file__).resolve().parent.parent / "caffe_compat" / "eval"
    for name in ("__init__.py", "pairs.py", "verification.py", "plot.py"):
        assert "import torch" not in (root / name).read_text()
    code = (
        "import sys, caffe_compat.eval as e; assert 'caffe_compat.eval.features' not in sys.modules; "
        "f = e.extract_features; assert 'caffe_compat.eval.features' in sys.modules; print(f.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "extract_features"
