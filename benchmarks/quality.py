"""Quality benchmark: federated vs centralised vs single sites, MAE vs scratch at 100 % and 25 % labels, on a
held-out hospital the training never sees, repeated over seeds (issue: benchmarks).

    python benchmarks/quality.py --quick --out workspace/bench_quality        # this CPU, about 30 minutes
    python benchmarks/quality.py --out workspace/bench_quality_full           # a GPU machine (gpu preset)

Hospitals: `ecefl synth` sites hospital-a/b/c train, hospital-d (another scanner profile: anisotropic,
non-square pixels, slope 2, its own ROI naming) is the held-out test site. Every arm uses the same preset and
the same epoch budget (federated: rounds x 1 local epoch = epochs). Per seed and arm the held-out metrics come
with case-bootstrap 95 % CIs (ecefl.metrics); the MAE effect at 25 % labels is a paired case-bootstrap
interval of AUC(MAE) - AUC(scratch) on the same held-out cases. Results: OUT/quality.json, OUT/quality.md and
OUT/roc_heldout.png; the tables are pasted into docs/BENCHMARKS.md with the command and date.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "custom"), str(REPO)]

# quick: a CPU-sized run of every arm (sliding windows without overlap to halve evaluation time); full: a GPU
QUICK = {"preset": "cpu-small", "cases": 6, "unlabeled": 3, "heldout_cases": 12, "epochs": 2, "mae_epochs": 2,
         "seeds": [0, 1, 2], "overrides": {"sw_overlap": 0.0}}
FULL = {"preset": "gpu", "cases": 40, "unlabeled": 40, "heldout_cases": 40, "epochs": 60, "mae_epochs": 100,
        "seeds": [0, 1, 2, 3, 4], "overrides": {}}
TRAIN_SITES = ("hospital-a", "hospital-b", "hospital-c")
HELDOUT = "hospital-d"


def prepare_data(out: Path, cfg: dict) -> dict[str, Path]:
    """Three training hospitals and the held-out one (its own synthesis, so it can hold more cases), preprocessed
    once (re-runs reuse them)."""
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    from site_preprocess.synth import synthesize
    train_syn, held_syn = out / "syn_train", out / "syn_heldout"
    if not (train_syn / TRAIN_SITES[-1]).is_dir():
        synthesize(train_syn, sites=3, cases_per_site=cfg["cases"], unlabeled_per_site=cfg["unlabeled"], seed=1234,
                   progress=False)
    if not (held_syn / HELDOUT).is_dir():  # site profiles follow the site index: the 4th is hospital-d
        synthesize(held_syn, sites=4, cases_per_site=cfg["heldout_cases"], unlabeled_per_site=0, seed=4321,
                   progress=False)
    datalists = {}
    for site, syn in [*((s, train_syn) for s in TRAIN_SITES), (HELDOUT, held_syn)]:
        dst = out / "pre" / site
        if not (dst / "datalist.json").is_file():
            code = run_preprocess(syn / site / "dicom", syn / site / "labels.csv", dst, SiteConfig(), progress=False)
            if code not in (0, 3):
                raise SystemExit(f"preprocessing {site} failed (exit {code}); see {dst}/qc_report.json")
        datalists[site] = (dst / "datalist.json").resolve()
    return datalists


def _predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return np.array([float(r["probability"]) for r in rows]), np.array([int(r["ece"]) for r in rows])


def evaluate_heldout(model: Path, heldout: Path, out: Path) -> dict:
    from ecefl.stages import evaluate
    evaluate(str(model), [str(heldout)], str(out), progress=False, log=lambda *_: None)
    return {"val": json.loads((out / "metrics.json").read_text()), "predictions": str(out / "predictions.csv")}


def run_seed(seed: int, cfg: dict, data: dict[str, Path], out: Path, log) -> dict:
    from ecefl.fl.simulate import simulate
    from ecefl.stages import pretrain, train
    arms: dict[str, dict] = {}
    train_lists = [str(data[s]) for s in TRAIN_SITES]
    common = dict(preset=cfg["preset"], epochs=cfg["epochs"], seed=seed, progress=False, log=lambda *_: None,
                  **cfg["overrides"])
    root = out / f"seed{seed}"

    def timed(name, fn):
        t0 = time.perf_counter()
        model = fn()
        arms[name] = evaluate_heldout(model, data[HELDOUT], root / name / "heldout")
        arms[name]["train_seconds"] = round(time.perf_counter() - t0, 1)
        log(f"seed {seed} {name}: held-out AUC {arms[name]['val']['auc']:.3f}, Dice {arms[name]['val']['dice']:.3f} "
            f"({arms[name]['train_seconds']:.0f}s)")

    # MAE pretraining on every CT of the training hospitals (labelled and unlabelled)
    mae = root / "mae"
    if not (mae / "checkpoint.pt").is_file():
        pretrain(train_lists, cfg["preset"], cfg["mae_epochs"], mae, seed=seed, progress=False, log=lambda *_: None,
                 **cfg["overrides"])
    init = str(mae / "checkpoint.pt")

    for frac, tag in ((1.0, "100"), (0.25, "25")):
        for start, name in ((None, "scratch"), (init, "mae")):
            arm = f"central_{name}_{tag}"
            timed(arm, lambda start=start, frac=frac, arm=arm: _train(train, train_lists, root / arm, init=start,
                                                                    label_fraction=frac, **common))
    for site in TRAIN_SITES:
        arm = f"single_{site}_scratch_100"
        timed(arm, lambda site=site, arm=arm: _train(train, [str(data[site])], root / arm, **common))

    def federated():
        ws = root / "federated_scratch_100"
        simulate({s: data[s] for s in TRAIN_SITES}, "ece_finetune", rounds=cfg["epochs"], local_epochs=1,
                 preset=cfg["preset"], workspace=ws, seed=seed, quiet=True, progress=False, log=lambda *_: None,
                 cross_site=False, **cfg["overrides"])
        return ws / "ece_finetune" / "global_model.pt"
    timed("federated_scratch_100", federated)
    return arms


def _train(train, datalists, out: Path, **kw) -> Path:
    train(datalists, kw.pop("preset"), kw.pop("epochs"), out, **kw)
    return out / "model.pt"


def paired_auc_difference(a: Path, b: Path, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) on the same cases, with a paired case-bootstrap 95 % interval."""
    from sklearn.metrics import roc_auc_score
    pa, y = _predictions(a)
    pb, yb = _predictions(b)
    assert (y == yb).all()
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if len(set(y[idx])) < 2:
            continue
        diffs.append(roc_auc_score(y[idx], pa[idx]) - roc_auc_score(y[idx], pb[idx]))
    point = roc_auc_score(y, pa) - roc_auc_score(y, pb) if len(set(y)) == 2 else float("nan")
    lo, hi = (np.percentile(diffs, [2.5, 97.5]) if diffs else (float("nan"), float("nan")))
    return {"difference": float(point), "ci": [float(lo), float(hi)], "n_cases": int(len(y))}


def summarise(results: dict) -> dict:
    seeds = sorted(results["seeds"], key=int)
    arms = sorted({a for s in seeds for a in results["seeds"][s]})
    table = {}
    for arm in arms:
        rows = [results["seeds"][s][arm]["val"] for s in seeds if arm in results["seeds"][s]]
        table[arm] = {k: {"mean": _mean([r.get(k) for r in rows]), "per_seed": [r.get(k) for r in rows],
                          "ci_per_seed": [r.get("ci", {}).get(k) for r in rows]}
                      for k in ("auc", "dice", "sensitivity", "specificity", "f1")}
    ratios = {}
    for k in ("auc", "dice"):
        per = []
        for s in seeds:
            fed = results["seeds"][s].get("federated_scratch_100", {}).get("val", {}).get(k)
            cen = results["seeds"][s].get("central_scratch_100", {}).get("val", {}).get(k)
            per.append(fed / cen if fed is not None and cen not in (None, 0) else None)
        ratios[f"federated_over_centralised_{k}"] = {"per_seed": per, "mean": _mean(per)}
    best_single = {}
    for s in seeds:
        singles = {a: results["seeds"][s][a]["val"].get("auc") for a in results["seeds"][s] if a.startswith("single_")}
        fed = results["seeds"][s].get("federated_scratch_100", {}).get("val", {}).get("auc")
        valid = {a: v for a, v in singles.items() if v is not None}
        best = max(valid.items(), key=lambda kv: kv[1]) if valid else (None, None)
        best_single[s] = {"best_single_site": best[0], "best_single_auc": best[1], "federated_auc": fed,
                          "federated_at_least_best_single": (fed >= best[1]) if fed is not None and best[1] is not None
                          else None}
    mae_effect = {}
    for tag in ("25", "100"):
        per = {}
        for s in seeds:
            arms_s = results["seeds"][s]
            if f"central_mae_{tag}" in arms_s and f"central_scratch_{tag}" in arms_s:
                per[s] = paired_auc_difference(Path(arms_s[f"central_mae_{tag}"]["predictions"]),
                                               Path(arms_s[f"central_scratch_{tag}"]["predictions"]), seed=int(s))
        mae_effect[f"labels_{tag}"] = {"per_seed": per, "mean_difference": _mean([v["difference"] for v in per.values()])}
    return {"table": table, "ratios": ratios, "federated_vs_best_single": best_single, "mae_effect": mae_effect}


def _mean(values):
    vals = [v for v in values if isinstance(v, (int, float)) and v == v]
    return float(np.mean(vals)) if vals else None


def _fmt(v, digits=3):
    return "–" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def markdown(results: dict, summary: dict, command: str) -> str:
    lines = [f"Command: `{command}` — {results['date']}, {results['machine']}, preset {results['config']['preset']}, "
             f"{results['config']['epochs']} epochs per arm, seeds {results['config']['seeds']}, wall "
             f"{results['wall_seconds'] / 60:.1f} min. Held-out hospital: {HELDOUT} "
             f"({results['heldout_cases']} labelled cases), never seen in training.", "",
             "| arm (held-out site) | AUC mean | AUC per seed [95 % CI] | Dice mean | sens. mean | spec. mean | F1 mean |",
             "|---|---|---|---|---|---|---|"]
    for arm, m in summary["table"].items():
        per = "; ".join(f"{_fmt(a)} [{_fmt((c or [None, None])[0], 2)}, {_fmt((c or [None, None])[1], 2)}]"
                        for a, c in zip(m["auc"]["per_seed"], m["auc"]["ci_per_seed"]))
        lines.append(f"| {arm} | {_fmt(m['auc']['mean'])} | {per} | {_fmt(m['dice']['mean'])} | "
                     f"{_fmt(m['sensitivity']['mean'])} | {_fmt(m['specificity']['mean'])} | {_fmt(m['f1']['mean'])} |")
    lines += ["", "| ratio | per seed | mean | target |", "|---|---|---|---|"]
    for k, v in summary["ratios"].items():
        lines.append(f"| {k} | {', '.join(_fmt(x) for x in v['per_seed'])} | {_fmt(v['mean'])} | ≥ 0.98 |")
    lines += ["", "| seed | best single site (AUC) | federated AUC | federated ≥ best single |", "|---|---|---|---|"]
    for s, v in summary["federated_vs_best_single"].items():
        lines.append(f"| {s} | {v['best_single_site']} ({_fmt(v['best_single_auc'])}) | {_fmt(v['federated_auc'])} | "
                     f"{v['federated_at_least_best_single']} |")
    lines += ["", "| MAE effect: AUC(MAE) − AUC(scratch), held-out, paired case bootstrap | per seed [95 % CI] | mean |",
              "|---|---|---|"]
    for k, v in summary["mae_effect"].items():
        per = "; ".join(f"{_fmt(x['difference'])} [{_fmt(x['ci'][0], 2)}, {_fmt(x['ci'][1], 2)}]"
                        for x in v["per_seed"].values())
        lines.append(f"| {k.replace('_', ' ')} % | {per} | {_fmt(v['mean_difference'])} |")
    return "\n".join(lines) + "\n"


def roc_plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve
    fig, ax = plt.subplots(figsize=(5, 5))
    grid = np.linspace(0, 1, 101)
    for arm, colour in (("central_scratch_100", "tab:blue"), ("federated_scratch_100", "tab:orange"),
                        ("central_mae_25", "tab:green"), ("central_scratch_25", "tab:red")):
        curves = []
        for s, arms in results["seeds"].items():
            if arm not in arms:
                continue
            p, y = _predictions(Path(arms[arm]["predictions"]))
            if len(set(y)) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, p)
            curves.append(np.interp(grid, fpr, tpr))
        if curves:
            c = np.array(curves)
            ax.plot(grid, c.mean(0), color=colour, label=f"{arm} (mean of {len(c)} seeds)")
            ax.fill_between(grid, c.min(0), c.max(0), color=colour, alpha=0.15)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title("held-out hospital ROC (band: seed range)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the CPU configuration (about 30 minutes on 2 cores)")
    p.add_argument("--out", default="workspace/bench_quality")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None)
    args = p.parse_args(argv)
    cfg = dict(QUICK if args.quick else FULL)
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.epochs:
        cfg["epochs"] = args.epochs
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ECEFL_SITE_SECRET_FILE", str(out / "bench_secret.key"))
    import platform
    import torch
    t0 = time.perf_counter()
    data = prepare_data(out, cfg)
    from ecefl.data import load_datalist
    heldout_cases = len(load_datalist(data[HELDOUT])[0])
    results_path = out / "quality.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {"seeds": {}}
    results.update(config=cfg, heldout_cases=heldout_cases, date=time.strftime("%Y-%m-%d"),
                   machine=f"{platform.machine()} {os.cpu_count()} CPUs"
                   + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))
    for seed in cfg["seeds"]:
        if str(seed) in results["seeds"]:
            print(f"seed {seed}: already done (delete {results_path} to rerun)")
            continue
        results["seeds"][str(seed)] = run_seed(seed, cfg, data, out, log=lambda m: print(m, flush=True))
        results_path.write_text(json.dumps(results, indent=1))
    results["wall_seconds"] = round(time.perf_counter() - t0 + results.get("wall_seconds", 0), 1)
    summary = summarise(results)
    results["summary"] = summary
    results_path.write_text(json.dumps(results, indent=1))
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(results, summary, command)
    (out / "quality.md").write_text(md)
    roc_plot(results, out / "roc_heldout.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
