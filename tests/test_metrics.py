"""The metrics module against scikit-learn; additive site statistics merge to the pooled truth."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_auc_score

from ecefl import metrics as M


def _site(rng, n, shift):
    labels = rng.integers(0, 2, n)
    probs = np.clip(rng.normal(0.45 + shift * labels, 0.2), 0, 1)
    dices = rng.uniform(0.3, 0.95, n)
    voxels = rng.integers(0, 500, (n, 3))
    return probs, labels, dices, voxels


@pytest.mark.parametrize("seed", range(5))
def test_merged_site_stats_match_sklearn_on_concatenated_cases(seed):
    rng = np.random.default_rng(seed)
    sites = [_site(rng, int(rng.integers(15, 60)), rng.uniform(0.05, 0.3)) for _ in range(4)]
    threshold = 0.5
    merged = M.merge_stats([M.site_stats(p, y, d, v, threshold) for p, y, d, v in sites])
    pooled = M.pooled_metrics(merged, n_boot=200)
    probs = np.concatenate([s[0] for s in sites])
    labels = np.concatenate([s[1] for s in sites])
    dices = np.concatenate([s[2] for s in sites])
    voxels = np.concatenate([s[3] for s in sites])
    assert abs(pooled["auc"] - roc_auc_score(labels, probs)) <= 0.005
    tn, fp, fn, tp = confusion_matrix(labels, probs >= threshold).ravel()
    assert pooled["accuracy"] == (tp + tn) / len(labels)
    assert pooled["sensitivity"] == tp / (tp + fn)
    assert pooled["specificity"] == tn / (tn + fp)
    assert pooled["f1"] == pytest.approx(f1_score(labels, probs >= threshold))
    assert pooled["dice"] == pytest.approx(dices.mean())
    tp_v, fp_v, fn_v = voxels.sum(0)
    assert pooled["dice_global"] == pytest.approx(2 * tp_v / (2 * tp_v + fp_v + fn_v))
    assert pooled["n_cases"] == len(labels)
    lo, hi = pooled["ci"]["auc"]
    assert lo <= pooled["auc"] <= hi and hi - lo < 0.5
    lo, hi = pooled["ci"]["dice"]
    assert lo <= pooled["dice"] <= hi


def test_case_metrics_and_bootstrap_ci():
    rng = np.random.default_rng(1)
    probs, labels, dices, voxels = _site(rng, 80, 0.3)
    out = M.case_metrics(probs, labels, dices, voxels, threshold=0.6, n_boot=300)
    assert out["auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert out["f1"] == pytest.approx(f1_score(labels, probs >= 0.6))
    for key in ("auc", "dice", "accuracy", "sensitivity", "specificity", "f1"):
        lo, hi = out["ci"][key]
        assert lo <= out[key] <= hi
    assert out["n_cases"] == 80 and out["threshold"] == 0.6


def test_youden_threshold_separates_separable_scores():
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    t = M.youden_threshold(probs, labels)
    assert 0.3 < t <= 0.7
    assert M.youden_threshold(probs, np.ones(6, int)) == 0.5


def test_bagged_youden_threshold_is_steadier_than_youdens_cut_on_few_cases():
    """A site's calibration on 20 + 20 cases: the bagged threshold (median of midpoint cuts over bootstrap
    resamples) separates separable scores midway, is the same for the same cases, and varies less than Youden's
    single cut between calibration sets drawn from one hospital, with a higher balanced accuracy on its other cases
    (on average and in the worst tenth of the sets)."""
    probs = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert M.bagged_youden_threshold(probs, labels) == pytest.approx(0.5)
    assert M.bagged_youden_threshold(probs, np.ones(6, int)) == 0.5
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 100)
    scores = 1 / (1 + np.exp(-(rng.normal(0, 1.3, 200) + 1.6 * y)))  # AUC ~0.8
    cuts, accuracy = {"plain": [], "bagged": []}, {"plain": [], "bagged": []}
    for _ in range(30):
        cal = np.concatenate([rng.choice(100, 20, replace=False), 100 + rng.choice(100, 20, replace=False)])
        rest = np.setdiff1d(np.arange(200), cal)
        for name, f in (("plain", M.youden_threshold), ("bagged", M.bagged_youden_threshold)):
            t = f(scores[cal], y[cal])
            cuts[name].append(t)
            r = M.rates(**M.confusion(scores[rest], y[rest], t))
            accuracy[name].append((r["sensitivity"] + r["specificity"]) / 2)
    few = np.r_[0:20, 100:120]  # 20 + 20 cases: the same ones give the same threshold
    assert M.bagged_youden_threshold(scores[few], y[few], seed=3) == M.bagged_youden_threshold(scores[few], y[few], seed=3)
    assert np.std(cuts["bagged"]) < 0.9 * np.std(cuts["plain"]), (np.std(cuts["bagged"]), np.std(cuts["plain"]))
    assert np.mean(accuracy["bagged"]) > np.mean(accuracy["plain"])
    assert np.percentile(accuracy["bagged"], 10) > np.percentile(accuracy["plain"], 10)


def test_merge_refuses_mixed_thresholds_and_single_class_auc_is_none():
    rng = np.random.default_rng(2)
    p, y, d, v = _site(rng, 20, 0.2)
    with pytest.raises(ValueError, match="threshold"):
        M.merge_stats([M.site_stats(p, y, d, v, 0.5), M.site_stats(p, y, d, v, 0.4)])
    one_class = M.site_stats(p[y == 1], y[y == 1], d[y == 1], v[y == 1], 0.5)
    assert M.pooled_metrics(one_class)["auc"] is None


def test_nan_metrics_serialise_as_null():
    obj = M.nan_safe({"auc": float("nan"), "x": [1.0, float("inf")], "n": np.int64(3)})
    assert json.loads(json.dumps(obj, allow_nan=False)) == {"auc": None, "x": [1.0, None], "n": 3}


def test_roc_from_histograms_ends_at_corners():
    fpr, tpr = M.roc_from_histograms([0, 1, 3], [2, 1, 0])
    assert (fpr[0], tpr[0]) == (0, 0) and math.isclose(fpr[-1], 1) and math.isclose(tpr[-1], 1)


def test_node_threshold_is_the_candidate_with_the_best_summed_dice_and_the_sums_stay_additive():
    dices_at = np.array([[0.5, 0.6, 0.7, 0.65, 0.1], [0.4, 0.5, 0.55, 0.6, 0.2]])
    stats = M.site_stats([0.2, 0.8], [0, 1], dices_at[:, 0], [(1, 1, 1), (2, 0, 0)], 0.5, bins=10,
                         dices_at=dices_at)
    assert stats["dice_sum_at"] == pytest.approx(dices_at.sum(0).tolist())
    assert M.node_threshold_from(stats["dice_sum_at"]) == 0.7
    assert M.node_threshold_from([1.0, 1.0, 0.5, 0.5, 0.5]) == 0.5  # a tie keeps the lower threshold
    merged = M.merge_stats([stats, stats])
    assert merged["dice_sum_at"] == pytest.approx((2 * dices_at.sum(0)).tolist())
    summary = M.summary(merged)
    assert summary["dice_at_node_threshold"]["0.7"] == pytest.approx(dices_at[:, 2].mean())
    assert summary["dice_at_node_threshold"]["0.5"] == pytest.approx(summary["dice"])
