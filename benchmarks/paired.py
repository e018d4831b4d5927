"""Two models on the same patients: paired case-bootstrap CI of the AUC and Dice differences (B - A).

    python benchmarks/paired.py A/predictions.csv B/predictions.csv [--draws 2000]

Reads the site-local predictions.csv that `ecefl evaluate` writes (case_id, probability, ece, dice, ...); cases are
matched by id, and each bootstrap draw resamples cases (both models' scores of a case together).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys

import numpy as np
from sklearn.metrics import roc_auc_score


def read(path: str) -> dict:
    return {r["case_id"]: r for r in csv.DictReader(open(path))}


def paired(a_path: str, b_path: str, draws: int = 2000, seed: int = 0) -> dict:
    a, b = read(a_path), read(b_path)
    ids = sorted(set(a) & set(b))
    if len(ids) < len(a) or len(ids) < len(b):
        raise SystemExit(f"the two files share {len(ids)} cases of {len(a)} / {len(b)}: not the same patients")
    y = np.array([int(a[i]["ece"]) for i in ids])
    pa, pb = (np.array([float(m[i]["probability"]) for i in ids]) for m in (a, b))
    da, db = (np.array([float(m[i].get("dice") or "nan") for i in ids]) for m in (a, b))
    rng = np.random.default_rng(seed)
    d_auc, d_dice = [], []
    for _ in range(draws):
        idx = rng.integers(0, len(ids), len(ids))
        if y[idx].min() == y[idx].max():
            continue
        d_auc.append(roc_auc_score(y[idx], pb[idx]) - roc_auc_score(y[idx], pa[idx]))
        d_dice.append(np.nanmean(db[idx]) - np.nanmean(da[idx]))
    ci = lambda v: [float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]  # noqa: E731
    return {"n_cases": len(ids), "auc_a": roc_auc_score(y, pa), "auc_b": roc_auc_score(y, pb),
            "delta_auc": roc_auc_score(y, pb) - roc_auc_score(y, pa), "delta_auc_ci": ci(d_auc),
            "dice_a": float(np.nanmean(da)), "dice_b": float(np.nanmean(db)),
            "delta_dice": float(np.nanmean(db) - np.nanmean(da)), "delta_dice_ci": ci(d_dice), "draws": len(d_auc)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--draws", type=int, default=2000)
    args = p.parse_args(argv)
    print(json.dumps(paired(args.a, args.b, args.draws), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
