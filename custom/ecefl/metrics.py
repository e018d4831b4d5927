"""Metrics, one module for every path: Dice, AUC, accuracy, sensitivity, specificity, F1, 95 % CIs.

Two forms of the same numbers:
- `case_metrics`: from per-case predictions that stay at one site (exact AUC, case-resampling bootstrap);
- `site_stats` -> `merge_stats` -> `pooled_metrics`: from additive statistics that a site may share (voxel
  TP/FP/FN sums, per-case Dice sums/sum of squares/histogram, per-class score histograms on fixed [0,1] bins,
  confusion counts at the operating threshold). Summing them over sites and converting gives the pooled
  metrics without any per-patient score, case id or path leaving a site. Pooled AUC is exact up to ties within
  one histogram bin; the confusion-based metrics are exact. CIs resample cases as multinomial draws over the
  cells a case falls in (confusion cell, score bin, Dice bin).
"""
from __future__ import annotations

import math

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

DICE_BINS = 100
METRIC_KEYS = ("dice", "dice_global", "auc", "accuracy", "sensitivity", "specificity", "f1")
STAT_SUM_KEYS = ("n_cases", "n_pos", "n_neg", "voxel_tp", "voxel_fp", "voxel_fn", "dice_sum", "dice_sq_sum",
                 "dice_n", "tp", "fp", "tn", "fn")
STAT_HIST_KEYS = ("dice_hist", "score_hist_pos", "score_hist_neg", "dice_sum_at")
# Candidate thresholds on a voxel's node probability for the output mask (Dice, nodes_pred, RTSTRUCT, SEG). The
# network over-segments the contour-dilated nodal region (measured: 1.35x its volume at 0.5), so the threshold with
# the best pooled validation Dice is stored with the model (as nnU-Net chooses its postprocessing on validation
# cases). The ECE decision never depends on it: mask-guided pooling weighs voxels by the soft node probability.
NODE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)


def voxel_counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int]:
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    return int((pred & target).sum()), int((pred & ~target).sum()), int((~pred & target).sum())


def dice_from_counts(tp: float, fp: float, fn: float) -> float:
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else 2.0 * tp / denom


def youden_threshold(probs, labels) -> float:
    """Operating point maximising sensitivity + specificity - 1 on validation; 0.5 if one class only."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(labels, probs)
    j = tpr - fpr
    best = int(np.argmax(j))
    return float(np.clip(thr[best], 0.0, 1.0))


def youden_midpoint_threshold(probs, labels) -> float:
    """Youden's cut moved midway to the next lower score, so that it does not sit on one case's score."""
    probs = np.asarray(probs, float)
    cut = youden_threshold(probs, labels)
    below = probs[probs < cut]
    return float((cut + below.max()) / 2) if len(below) else cut


def bagged_youden_threshold(probs, labels, draws: int = 200, seed: int = 0) -> float:
    """A site's own operating threshold from few labelled cases: the median, over class-stratified bootstrap
    resamples of its cases, of Youden's threshold placed midway between the cut's score and the next lower one.
    Youden's cut on 40 cases sits on one case's score and jumps with one case more or less (benchmarks/
    calibration.py at an unseen hospital, 20 + 20 calibration cases drawn 200 times: thresholds 0.11-0.92 (5th-95th
    percentile) against 0.31-0.87 bagged; balanced accuracy on the other 80 patients 0.778 against 0.782, its 5th
    percentile 0.712 against 0.725; docs/BENCHMARKS.md). Drawn from `seed`: the same cases give the same threshold."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    if len(np.unique(labels)) < 2:
        return 0.5
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in (0, 1)]
    cuts = []
    for _ in range(draws):
        pick = np.concatenate([rng.choice(idx, len(idx)) for idx in by_class])
        cuts.append(youden_midpoint_threshold(probs[pick], labels[pick]))
    return float(np.median(cuts))


def confusion(probs, labels, threshold: float) -> dict:
    pred = np.asarray(probs, float) >= threshold
    labels = np.asarray(labels, int).astype(bool)
    return {"tp": int((pred & labels).sum()), "fp": int((pred & ~labels).sum()),
            "tn": int((~pred & ~labels).sum()), "fn": int((~pred & labels).sum())}


def rates(tp, fp, tn, fn) -> dict:
    def ratio(a, b):
        return float(a / b) if b > 0 else None
    return {"accuracy": ratio(tp + tn, tp + fp + tn + fn), "sensitivity": ratio(tp, tp + fn),
            "specificity": ratio(tn, tn + fp), "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def _percentile_ci(values) -> list | None:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if len(values) < 10:
        return None
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))]


def case_metrics(probs, labels, dices=None, voxels=None, threshold: float = 0.5, n_boot: int = 1000,
                 seed: int = 0) -> dict:
    """Per-case inputs (site-local). voxels: (n, 3) TP/FP/FN per case. Bootstrap resamples cases."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    dices = None if dices is None else np.asarray(dices, float)
    voxels = None if voxels is None else np.asarray(voxels, float).reshape(-1, 3)

    def compute(idx) -> dict:
        p, y = probs[idx], labels[idx]
        out = {"auc": float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None}
        out.update(rates(**confusion(p, y, threshold)))
        out["dice"] = float(dices[idx].mean()) if dices is not None and len(idx) else None
        out["dice_global"] = dice_from_counts(*voxels[idx].sum(0)) if voxels is not None and len(idx) else None
        return out

    n = len(probs)
    result = compute(np.arange(n))
    result.update(threshold=float(threshold), n_cases=int(n), n_pos=int(labels.sum()),
                  n_neg=int(n - labels.sum()))
    rng = np.random.default_rng(seed)
    boots = [compute(rng.integers(0, n, n)) for _ in range(n_boot)] if n > 1 else []
    result["ci"] = {k: _percentile_ci([b[k] for b in boots]) for k in METRIC_KEYS}
    return result


def site_stats(probs, labels, dices, voxels, threshold: float, bins: int = 1000, dices_at=None) -> dict:
    """Additive, shareable statistics of one site's evaluation (no per-case values).
    dices_at: (cases, len(NODE_THRESHOLDS)) per-case Dice at each candidate node threshold; only their sums leave."""
    probs, labels = np.asarray(probs, float), np.asarray(labels, int)
    dices = np.asarray(dices, float)
    dices_at = np.zeros((len(dices), len(NODE_THRESHOLDS))) if dices_at is None else np.asarray(dices_at, float)
    voxels = np.asarray(voxels, float).reshape(-1, 3)
    edges = np.linspace(0, 1, bins + 1)
    stats = {
        "n_cases": int(len(probs)), "n_pos": int(labels.sum()), "n_neg": int(len(labels) - labels.sum()),
        "voxel_tp": int(voxels[:, 0].sum()), "voxel_fp": int(voxels[:, 1].sum()), "voxel_fn": int(voxels[:, 2].sum()),
        "dice_sum": float(dices.sum()), "dice_sq_sum": float((dices ** 2).sum()), "dice_n": int(len(dices)),
        "dice_hist": np.histogram(np.clip(dices, 0, 1), bins=DICE_BINS, range=(0, 1))[0].tolist(),
        "score_hist_pos": np.histogram(np.clip(probs[labels == 1], 0, 1), bins=edges)[0].tolist(),
        "score_hist_neg": np.histogram(np.clip(probs[labels == 0], 0, 1), bins=edges)[0].tolist(),
        "dice_sum_at": dices_at.reshape(-1, len(NODE_THRESHOLDS)).sum(0).tolist(),
        "bins": int(bins), "threshold": float(threshold),
    }
    stats.update(confusion(probs, labels, threshold))
    return stats


def merge_stats(stats_list: list[dict]) -> dict:
    if not stats_list:
        raise ValueError("no site statistics to merge")
    bins = {s["bins"] for s in stats_list}
    thresholds = {round(float(s["threshold"]), 9) for s in stats_list}
    if len(bins) != 1 or len(thresholds) != 1:
        raise ValueError(f"site statistics disagree on bins {bins} or threshold {thresholds}; all sites must "
                         "evaluate the same global model with the same plan")
    merged = {k: sum(s[k] for s in stats_list) for k in STAT_SUM_KEYS}
    for k in STAT_HIST_KEYS:
        merged[k] = np.sum([np.asarray(s[k]) for s in stats_list], axis=0).tolist()
    merged["bins"], merged["threshold"] = bins.pop(), float(stats_list[0]["threshold"])
    return merged


def auc_from_histograms(pos, neg) -> float | None:
    """P(score+ > score-) + 1/2 P(same bin): the Mann-Whitney AUC with within-bin ties split evenly."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * below).sum() + 0.5 * (pos * neg).sum()) / float(n_pos * n_neg)


def roc_from_histograms(pos, neg) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr) with thresholds at the bin edges, from high to low."""
    pos, neg = np.asarray(pos, float)[::-1], np.asarray(neg, float)[::-1]
    tpr = np.concatenate([[0], np.cumsum(pos) / max(pos.sum(), 1)])
    fpr = np.concatenate([[0], np.cumsum(neg) / max(neg.sum(), 1)])
    return fpr, tpr


def youden_threshold_from_histograms(pos, neg) -> float:
    """Youden's J on a histogram ROC; the threshold is the lower edge of a bin (0.5 if one class only)."""
    pos, neg = np.asarray(pos, float), np.asarray(neg, float)
    if pos.sum() == 0 or neg.sum() == 0:
        return 0.5
    tpr = np.cumsum(pos[::-1])[::-1] / pos.sum()  # predicted positive: bins >= i
    fpr = np.cumsum(neg[::-1])[::-1] / neg.sum()
    return float(int(np.argmax(tpr - fpr)) / len(pos))


def node_threshold_from(dice_sum_at) -> float:
    """The candidate node threshold with the highest summed (= mean) case Dice; ties go to the lower threshold."""
    return float(NODE_THRESHOLDS[int(np.argmax(np.round(np.asarray(dice_sum_at, float), 9)))])


def dice_by_node_threshold(dice_sum_at, n_cases: int) -> dict:
    """Mean case Dice at each candidate node threshold, keyed "0.5" ... "0.9" (as pooled_metrics.json holds it)."""
    return {f"{t:g}": float(s) / n_cases for t, s in zip(NODE_THRESHOLDS, dice_sum_at)}


def summary(stats: dict, n_boot: int = 0) -> dict:
    """The metric keys and case counts of (merged) statistics; with n_boot > 0 also their CIs."""
    pooled = pooled_metrics(stats, n_boot=n_boot)
    out = {k: pooled.get(k) for k in METRIC_KEYS}
    out.update(n_cases=pooled["n_cases"], n_pos=pooled["n_pos"], n_neg=pooled["n_neg"])
    if stats.get("dice_n") and stats.get("dice_sum_at") is not None:
        # Dice at each candidate node threshold (chosen on these cases: optimistic for the chosen one)
        out["dice_at_node_threshold"] = dice_by_node_threshold(stats["dice_sum_at"], stats["dice_n"])
    if n_boot:
        out["ci"] = pooled["ci"]
    return out


def pooled_metrics(stats: dict, n_boot: int = 1000, seed: int = 0) -> dict:
    """Metrics from (merged) additive statistics, with multinomial case-resampling CIs."""
    out = {"dice": stats["dice_sum"] / stats["dice_n"] if stats["dice_n"] else None,
           "dice_global": dice_from_counts(stats["voxel_tp"], stats["voxel_fp"], stats["voxel_fn"])
           if stats["dice_n"] else None,
           "auc": auc_from_histograms(stats["score_hist_pos"], stats["score_hist_neg"])}
    out.update(rates(stats["tp"], stats["fp"], stats["tn"], stats["fn"]))
    out.update(n_cases=int(stats["n_cases"]), n_pos=int(stats["n_pos"]), n_neg=int(stats["n_neg"]),
               threshold=float(stats["threshold"]))
    out["ci"] = _pooled_ci(stats, out, n_boot, seed)
    return out


def _pooled_ci(stats: dict, point: dict, n_boot: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ci = {k: None for k in METRIC_KEYS}
    n = stats["n_cases"]
    if n < 2 or n_boot <= 0:
        return ci
    cells = np.array([stats["tp"], stats["fp"], stats["tn"], stats["fn"]], float)
    if cells.sum() > 0:
        draws = rng.multinomial(int(cells.sum()), cells / cells.sum(), size=n_boot)
        boot = [rates(*d) for d in draws]
        for k in ("accuracy", "sensitivity", "specificity", "f1"):
            ci[k] = _percentile_ci([b[k] for b in boot])
    pos, neg = np.asarray(stats["score_hist_pos"], float), np.asarray(stats["score_hist_neg"], float)
    joint = np.concatenate([pos, neg])
    if pos.sum() > 0 and neg.sum() > 0:
        draws = rng.multinomial(int(joint.sum()), joint / joint.sum(), size=n_boot)
        ci["auc"] = _percentile_ci([auc_from_histograms(d[:len(pos)], d[len(pos):]) for d in draws])
    hist = np.asarray(stats["dice_hist"], float)
    if hist.sum() > 1:
        centres = (np.arange(DICE_BINS) + 0.5) / DICE_BINS
        binned_mean = float((hist * centres).sum() / hist.sum())
        draws = rng.multinomial(int(hist.sum()), hist / hist.sum(), size=n_boot)
        shift = point["dice"] - binned_mean  # centre the binned bootstrap on the exact mean
        ci["dice"] = _percentile_ci([float((d * centres).sum() / d.sum()) + shift for d in draws])
    return ci


def nan_safe(obj):
    """Replace NaN/Inf by None recursively, so JSON writing never breaks on a broken metric."""
    if isinstance(obj, dict):
        return {k: nan_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [nan_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return None if not math.isfinite(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
