"""The read-out refit's ridge, chosen by cross-validation on the training cases, against every fixed ridge of the grid,
on one trained body scored at an unseen hospital (issues #12 and #13).

    python benchmarks/ridge.py --demo workspace/demo --test workspace/bench_unseen/site/datalist_test.json \
        --out workspace/ridge/demo.json
    python benchmarks/ridge.py --mae-arm workspace/bench_mae/seed0/maeunet_25 --out workspace/ridge/m25s0.json

The refit re-weights fixed features of the body (ecefl.readout), so the features of the training cases (as the
refit computes them) and of the unseen test cases (as `ecefl evaluate` computes them, mirror included) are computed
once and cached in <out>.npz; every ridge is then the product's own refit (`readout.refit_features`), and the CV's
choice is the one `readout_ridge_cv_folds` makes in `ecefl train` and in the federated refit (equal:
tests/test_federated.py). A body: a finished demo (its training split, from the jointly trained read-out its refit
started from), or an arm of benchmarks/mae.py (its training cases at its label fraction and seed; the arm must have
trained without the refit, so its model holds the jointly trained read-out). The test patients' logits are
X . theta, checked against the arm's own predictions.csv where there is one.
Writes <out>: per ridge the CV held-out log-loss, the unseen AUC; the CV's choice; paired ΔAUC of that choice and
of the jointly trained read-out against the preset's fixed ridge, and each case's three scores.

    python benchmarks/ridge.py --pool workspace/ridge/*.json --out workspace/ridge/pooled.json

pools bodies scored on the same patients (e.g. the seeds of one label fraction): mean ΔAUC with a case bootstrap.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "custom"), str(REPO), str(REPO / "benchmarks")]


def body_and_training_cases(args) -> tuple:
    """(model with the jointly trained read-out, its plan, training cases, test predictions.csv or None)."""
    from ecefl.checkpoint import load_model
    if args.demo:
        import readout as readout_benchmark
        model, _, plan = readout_benchmark.joint_body(Path(args.demo), {})
        _, train, _ = readout_benchmark.demo_training_split(Path(args.demo))
        return model, plan, train, None
    from ecefl.stages import training_split
    from mae import training_datalists
    arm = Path(args.mae_arm)
    result = json.loads((arm / "result.json").read_text())
    seed, fraction = int(arm.parent.name.removeprefix("seed")), int(arm.name.rsplit("_", 1)[1])
    if "refit_seconds" in result:
        raise SystemExit(f"{arm} is a refit arm; give the arm it refits, whose model holds the jointly trained read-out")
    train, _ = training_split(training_datalists(arm.parents[1]), fraction / 100, 0.0, seed)
    if len(train) != result["n_train"]:
        raise SystemExit(f"{arm}: {len(train)} training cases now, {result['n_train']} when it trained")
    model, payload = load_model(arm / "model.pt", kind="dual")
    return model, payload["plan"], train, arm / "unseen" / "predictions.csv"


def probabilities(x: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """p(ECE) of cases with read-out features x under read-out theta (the model's sigmoid of X . theta)."""
    from ecefl.readout import design
    return 1 / (1 + np.exp(-np.clip(design(x) @ theta, -40, 40)))


def features(args, cache: Path) -> dict:
    if cache.is_file():
        return dict(np.load(cache, allow_pickle=False))
    from ecefl import readout as R
    from ecefl.data import load_datalists
    model, plan, train, predictions = body_and_training_cases(args)
    data, sites = R.site_features(model, train, plan, progress=True)
    test_items, _ = load_datalists([args.test])
    model.plan = replace(model.plan, readout_tta_flip=True)  # evaluation's features: the mirror averaged too
    x_test = R.case_features(model, test_items, model.plan, progress=True)
    theta0 = model.readout_parameters().double().cpu().numpy()
    out = {"site_x": np.concatenate([d[0] for d in data]), "site_y": np.concatenate([d[1] for d in data]),
           "site_of": np.concatenate([[i] * len(d[1]) for i, d in enumerate(data)]).astype(int),
           "pos_weight": np.array([d[2] for d in data]), "sites": np.array(sites), "theta0": theta0,
           "x_test": x_test, "y_test": np.array([int(i["ece"]) for i in test_items]),
           "case_test": np.array([i["case_id"] for i in test_items]),
           "plan": np.array(json.dumps(plan.to_dict()))}
    if predictions and predictions.is_file():  # the arm's own scores of these patients: the features are its
        from paired import read
        rows = read(str(predictions))
        p = np.array([float(rows[c]["probability"]) for c in out["case_test"]])
        mine = probabilities(x_test, theta0)
        if np.abs(p - mine).max() > 1e-4:
            raise SystemExit(f"{predictions}: the features do not reproduce the arm's scores "
                             f"(max |dp| {np.abs(p - mine).max():.2g})")
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def evaluate(f: dict, folds: int, fixed: float) -> dict:
    from ecefl import readout as R
    from ecefl.plan import Plan
    from mae import paired_differences
    from quality import _auc_rows
    plan = Plan.from_dict(json.loads(str(f["plan"])))
    data = [(f["site_x"][f["site_of"] == i], f["site_y"][f["site_of"] == i], float(f["pos_weight"][i]))
            for i in range(len(f["sites"]))]
    sites = [str(s) for s in f["sites"]]
    iterations = plan.readout_refit_iterations or 8
    cv_plan = plan.with_overrides(readout_refit_iterations=iterations, readout_ridge_cv_folds=folds)
    _, record = R.refit_features(f["theta0"], data, sites, cv_plan)
    y = f["y_test"]

    def scored(theta):
        p = probabilities(f["x_test"], theta)
        return {"cases": {"case_id": list(f["case_test"]), "probability": p, "ece": y, "dice": np.zeros(len(y))},
                "auc": float(_auc_rows(p[None], y[None])[0])}

    def refitted_at(ridge):
        fixed_plan = cv_plan.with_overrides(readout_ridge_cv_folds=0, readout_ridge=ridge)
        return scored(R.refit_features(f["theta0"], data, sites, fixed_plan)[0])

    arms = {r: refitted_at(r) for r in {*record["ridge_cv"]["grid"], fixed}}
    joint = scored(f["theta0"])
    chosen = record["ridge"]
    cv = record["ridge_cv"]
    return {"n_train": int(len(f["site_y"])), "n_train_pos": int(f["site_y"].sum()), "n_test": int(len(y)),
            "folds": folds, "fixed_ridge": fixed, "chosen_ridge": chosen,
            "ridges": [{"ridge": r, "cv_loss_per_weight": loss / cv["held_out_weight"], "unseen_auc": arms[r]["auc"]}
                       for r, loss in zip(cv["grid"], cv["held_out_loss"])],
            "unseen_auc": {"cv": arms[chosen]["auc"], "fixed": arms[fixed]["auc"], "joint": joint["auc"]},
            "cv_minus_fixed": paired_differences(arms[chosen], arms[fixed]),
            "joint_minus_fixed": paired_differences(joint, arms[fixed]),
            "cv_minus_joint": paired_differences(arms[chosen], joint),
            "cases": {"case_id": [str(c) for c in f["case_test"]], "ece": [int(v) for v in y],
                      **{name: [float(v) for v in a["cases"]["probability"]] for name, a in
                         (("cv", arms[chosen]), ("fixed", arms[fixed]), ("joint", joint))}}}


COMPARISONS = (("cv_minus_fixed", "cv", "fixed"), ("joint_minus_fixed", "joint", "fixed"),
               ("cv_minus_joint", "cv", "joint"))


def pool(paths: list[str]) -> dict:
    """The mean over bodies (all scored on the same patients) of each comparison's ΔAUC, with a case-bootstrap
    interval (benchmarks/mae.py's pooled_differences: each draw resamples the patients once for every body)."""
    from mae import pooled_differences
    results = [json.loads(Path(p).read_text()) for p in paths]

    def arm(res, name):
        c = res["cases"]
        return {"cases": {"case_id": c["case_id"], "probability": c[name], "ece": c["ece"],
                          "dice": [0.0] * len(c["ece"])}}
    out = {"bodies": [r["body"] for r in results], "chosen_ridges": [r["chosen_ridge"] for r in results]}
    for key, a, b in COMPARISONS:
        out[key] = pooled_differences([(arm(r, a), arm(r, b)) for r in results])
        out[key]["per_body"] = [r[key]["auc"] for r in results]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    body = ap.add_mutually_exclusive_group(required=True)
    body.add_argument("--pool", nargs="+", metavar="RESULT", help="result JSONs of bodies scored on the same "
                                                                   "patients: their mean differences, pooled")
    body.add_argument("--demo", help="a finished `ecefl demo` output folder")
    body.add_argument("--mae-arm", help="an arm folder of benchmarks/mae.py (OUT/seedS/<init>_<fraction>)")
    ap.add_argument("--test", help="the unseen test datalist (default for --mae-arm: its OUT/unseen split)")
    ap.add_argument("--out", required=True, help="result JSON; the features are cached beside it (.npz)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--fixed-ridge", type=float, default=None, help="the fixed ridge to compare with (default: "
                                                                     "the body's plan's readout_ridge)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    if args.pool:
        res = pool(args.pool)
        Path(args.out).write_text(json.dumps(res, indent=1))
        for key, a, b in COMPARISONS:
            d = res[key]
            print(f"{a} − {b} over {d['n_pairs']} bodies: mean ΔAUC {d['auc']:+.3f} [{d['auc_ci'][0]:+.3f}, "
                  f"{d['auc_ci'][1]:+.3f}] (per body {', '.join(f'{v:+.3f}' for v in d['per_body'])})")
        return 0
    import torch
    torch.set_num_threads(args.threads)
    if args.mae_arm and not args.test:
        args.test = str(Path(args.mae_arm).parents[1] / "unseen" / "site" / "datalist_test.json")
    if not args.test:
        ap.error("--test is required with --demo")
    out = Path(args.out)
    f = features(args, out.with_suffix(".npz"))
    plan_ridge = json.loads(str(f["plan"]))["readout_ridge"]
    res = evaluate(f, args.folds, args.fixed_ridge if args.fixed_ridge is not None else plan_ridge)
    res["body"] = args.demo or args.mae_arm
    out.write_text(json.dumps(res, indent=1))
    print(f"{res['body']}: {res['n_train']} training cases ({res['n_train_pos']} ECE+), {res['n_test']} unseen")
    print("ridge      CV held-out loss/case  unseen AUC")
    for r in res["ridges"]:
        mark = "  <- CV" if r["ridge"] == res["chosen_ridge"] else ""
        print(f"{r['ridge']:<10g} {r['cv_loss_per_weight']:>21.3f}  {r['unseen_auc']:>10.3f}{mark}")
    for key, label in (("cv_minus_fixed", f"CV − ridge {res['fixed_ridge']:g}"),
                       ("joint_minus_fixed", f"jointly trained − ridge {res['fixed_ridge']:g}"),
                       ("cv_minus_joint", "CV − jointly trained")):
        d = res[key]
        print(f"{label}: ΔAUC {d['auc']:+.3f} [{d['auc_ci'][0]:+.3f}, {d['auc_ci'][1]:+.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
