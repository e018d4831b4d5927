"""How a site's own threshold, chosen on a few of its labelled cases, does on its other patients (issue #12, target 5).

    python benchmarks/calibration.py --predictions workspace/bench_unseen/eval_M/predictions.csv --threshold 0.739

Takes one unseen hospital's scored patients (`ecefl evaluate`'s site-local predictions.csv, e.g. from
benchmarks/unseen.py) and draws `--draws` calibration sets of `--per-class` ECE+ and ECE- patients from them. For each
draw, every threshold rule below is chosen on the calibration set and scored on the hospital's other patients:
- keep: the threshold the model file arrived with (chosen on the training sites' validation);
- youden: Youden's J on the calibration set (the cut sits on one case's score);
- youden-midpoint: the same cut moved midway to the next lower score (ecefl.metrics.youden_midpoint_threshold);
- youden-bagged: the median of midpoint cuts over class-stratified bootstrap resamples (`ecefl calibrate`'s rule,
  ecefl.metrics.bagged_youden_threshold);
- intercept: a class-weighted logistic recalibration of the logits' offset only, cut at p = 0.5.
`--shift S` adds S to every logit first: a scanner that moves all of a hospital's scores, as hospital-d's did before
the read-out refit (every case called positive). Prints and writes <out>: per rule the mean sensitivity,
specificity and balanced accuracy on the held-out patients, the balanced accuracy's sd and 5th percentile, and the
thresholds' median and 5th-95th percentiles.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))

from ecefl import metrics as M  # noqa: E402


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def intercept(p: np.ndarray, y: np.ndarray) -> float:
    w = np.where(y > 0, (y == 0).sum() / max(1, (y == 1).sum()), 1.0)
    z = _logit(p)

    def loss(c):
        return float((w * (y * np.logaddexp(0, -(z + c)) + (1 - y) * np.logaddexp(0, z + c))).sum())
    c = minimize_scalar(loss, bounds=(-20, 20), method="bounded").x
    return float(1 / (1 + np.exp(c)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--predictions", required=True, help="a site-local predictions.csv (probability, ece)")
    ap.add_argument("--threshold", type=float, required=True, help="the model file's own threshold")
    ap.add_argument("--per-class", type=int, default=20, help="calibration cases of each class per draw")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--shift", type=float, default=0.0, help="added to every logit (a scanner's offset)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="JSON to write (default: beside the predictions)")
    args = ap.parse_args(argv)
    with open(args.predictions, newline="") as fh:
        rows = list(csv.DictReader(fh))
    y = np.array([int(r["ece"]) for r in rows])
    p = 1 / (1 + np.exp(-(_logit(np.array([float(r["probability"]) for r in rows])) + args.shift)))
    rng = np.random.default_rng(args.seed)
    rules = {"keep": lambda pp, yy: args.threshold, "youden": M.youden_threshold,
             "youden-midpoint": M.youden_midpoint_threshold,
             "youden-bagged": M.bagged_youden_threshold,  # seed 0, as `ecefl calibrate` with the plan seed 0
             "intercept": intercept}
    per_rule: dict = {name: [] for name in rules}
    for _ in range(args.draws):
        cal = np.concatenate([rng.choice(np.flatnonzero(y == c), args.per_class, replace=False) for c in (0, 1)])
        rest = np.setdiff1d(np.arange(len(y)), cal)
        for name, rule in rules.items():
            t = rule(p[cal], y[cal])
            r = M.rates(**M.confusion(p[rest], y[rest], t))
            per_rule[name].append((r["sensitivity"], r["specificity"], (r["sensitivity"] + r["specificity"]) / 2, t))
    result = {"predictions": str(args.predictions), "patients": len(y), "positives": int(y.sum()),
              "threshold": args.threshold, "shift": args.shift, "per_class": args.per_class, "draws": args.draws,
              "rules": {}}
    for name, v in per_rule.items():
        v = np.array(v)
        result["rules"][name] = {"sensitivity": v[:, 0].mean(), "specificity": v[:, 1].mean(),
                                 "balanced_accuracy": v[:, 2].mean(), "balanced_accuracy_sd": v[:, 2].std(),
                                 "balanced_accuracy_p5": float(np.percentile(v[:, 2], 5)),
                                 "threshold_median": float(np.median(v[:, 3])),
                                 "threshold_p5_p95": [float(np.percentile(v[:, 3], q)) for q in (5, 95)]}
        r = result["rules"][name]
        print(f"{name:16s} sens {r['sensitivity']:.3f} spec {r['specificity']:.3f} balanced acc "
              f"{r['balanced_accuracy']:.3f} (sd {r['balanced_accuracy_sd']:.3f}, 5th pct {r['balanced_accuracy_p5']:.3f}) "
              f"threshold {r['threshold_median']:.3f} [{r['threshold_p5_p95'][0]:.3f}, {r['threshold_p5_p95'][1]:.3f}]")
    out = Path(args.out) if args.out else Path(args.predictions).with_name(f"calibration_shift{args.shift:g}.json")
    out.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
