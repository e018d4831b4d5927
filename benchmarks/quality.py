"""Quality benchmark: federated vs centralised vs single sites, MAE vs scratch at 100 % and 25 % labels, on a
held-out hospital the training never sees, repeated over seeds (issue: benchmarks).

    python benchmarks/quality.py --mode quick --out workspace/bench_quality   # 2-core CPU, ~25 min: machinery
    python benchmarks/quality.py --mode short --out workspace/bench_short     # one GPU, about 6 minutes
    python benchmarks/quality.py --out workspace/bench_quality_full           # a GPU machine (gpu preset), hours

Hospitals: `ecefl synth` sites hospital-a/b/c train, hospital-d (another scanner profile: anisotropic,
non-square pixels, slope 2, its own ROI naming) is the held-out test site. Every arm uses the same preset and
the same epoch budget (federated: rounds x 1 local epoch = epochs). Per seed and arm the held-out metrics come
with case-bootstrap 95 % CIs (ecefl.metrics); the MAE effect at 25 % labels is a paired case-bootstrap
interval of AUC(MAE) - AUC(scratch) on the same held-out cases; the cost of a site privacy scope
(poc/privacy.json ecefl_strict, PercentilePrivacy on every update) is the paired AUC difference between
federated arms with and without it. Results: OUT/quality.json, OUT/quality.md and
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

# quick: every arm, seed and summary on this 2-core CPU in about 25 minutes, at the smallest preset and one
# epoch: it checks the machinery, it cannot show learning (run_h needed ~200 cpu-small steps to learn)
QUICK = {"preset": "test-tiny", "cases": 4, "unlabeled": 2, "heldout_cases": 8, "epochs": 1, "mae_epochs": 1,
         "seeds": [0, 1, 2], "overrides": {"sw_overlap": 0.0}}
# short: the run_h budget that learns on cpu-small (docs/BENCHMARKS.md), sized for one GPU in about 6 minutes with
# several arms at a time; every number it gives is still small-sample
SHORT = {"preset": "cpu-small", "cases": 12, "unlabeled": 6, "heldout_cases": 24, "epochs": 12, "mae_epochs": 10,
         "seeds": [0, 1, 2], "overrides": {}}
FULL = {"preset": "gpu", "cases": 40, "unlabeled": 40, "heldout_cases": 40, "epochs": 60, "mae_epochs": 100,
        "seeds": [0, 1, 2, 3, 4], "overrides": {}}
TRAIN_SITES = ("hospital-a", "hospital-b", "hospital-c")
HELDOUT = "hospital-d"


def _prepare_site(out: str, index: int, cfg: dict) -> str:
    """Synthesise and preprocess one hospital (re-runs reuse what exists). Index 0-2 train; index 3 is the held-out
    hospital-d with its own case count and seed."""
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    from site_preprocess.synth import synthesize
    out = Path(out)
    site = (*TRAIN_SITES, HELDOUT)[index]
    held = site == HELDOUT
    syn = out / ("syn_heldout" if held else "syn_train")
    if not (syn / site / "labels.csv").is_file():
        synthesize(syn, sites=index + 1, cases_per_site=cfg["heldout_cases"] if held else cfg["cases"],
                   unlabeled_per_site=0 if held else cfg["unlabeled"], seed=4321 if held else 1234,
                   progress=False, only=[index])
    dst = out / "pre" / site
    if not (dst / "datalist.json").is_file():
        code = run_preprocess(syn / site / "dicom", syn / site / "labels.csv", dst, SiteConfig(), progress=False)
        if code not in (0, 3):
            raise SystemExit(f"preprocessing {site} failed (exit {code}); see {dst}/qc_report.json")
    return str((dst / "datalist.json").resolve())


def prepare_data(out: Path, cfg: dict, workers: int = 1) -> dict[str, Path]:
    """The three training hospitals and the held-out one, one process per hospital where the CPU allows."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    sites = (*TRAIN_SITES, HELDOUT)
    if workers > 1:
        with ProcessPoolExecutor(min(workers, 4), mp_context=multiprocessing.get_context("spawn")) as pool:
            paths = list(pool.map(_prepare_site, [str(out)] * 4, range(4), [cfg] * 4))
    else:
        paths = [_prepare_site(str(out), i, cfg) for i in range(4)]
    return {site: Path(path) for site, path in zip(sites, paths)}


def _predictions(arm: dict) -> tuple[np.ndarray, np.ndarray]:
    pred = arm["predictions"]
    return np.array(pred["probability"], float), np.array(pred["ece"], int)


def evaluate_heldout(model: Path, heldout: Path, out: Path) -> dict:
    """Held-out metrics with CIs, and the per-case predictions (pseudonymous case ids) kept in the result so the
    summary needs no other file."""
    from ecefl.stages import evaluate
    evaluate(str(model), [str(heldout)], str(out), progress=False, log=lambda *_: None)
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {"val": json.loads((out / "metrics.json").read_text()),
            "predictions": {"case_id": [r["case_id"] for r in rows],
                            "probability": [float(r["probability"]) for r in rows],
                            "ece": [int(r["ece"]) for r in rows]}}


def arm_names() -> list[str]:
    """Longest first (the simulator's start-up), so a deadline cuts the fewest complete comparisons."""
    return ["federated_scratch_100", "federated_privacy_scratch_100", "central_scratch_100", "central_scratch_25",
            *(f"single_{s}_scratch_100" for s in TRAIN_SITES), "central_mae_100", "central_mae_25"]


def run_task(seed: int, arm: str, cfg: dict, data: dict, out: str, threads: int) -> dict:
    """One arm of one seed (or the seed's MAE pretraining, arm "mae"), in its own process; the result is also
    written to OUT/seed<k>/<arm>/result.json so an interrupted benchmark resumes where it stopped."""
    import torch
    torch.set_num_threads(threads)
    os.environ["ECEFL_TORCH_THREADS"] = str(max(1, threads // len(TRAIN_SITES)))
    from ecefl.fl.simulate import simulate
    from ecefl.stages import pretrain, train
    quiet = dict(progress=False, log=lambda *_: None)
    root = Path(out) / f"seed{seed}"
    train_lists = [str(data[s]) for s in TRAIN_SITES]
    t0 = time.perf_counter()
    if arm == "mae":  # on every CT of the training hospitals, labelled and unlabelled
        pretrain(train_lists, cfg["preset"], cfg["mae_epochs"], root / "mae", seed=seed, **quiet, **cfg["overrides"])
        return {"train_seconds": round(time.perf_counter() - t0, 1)}
    common = dict(seed=seed, **quiet, **cfg["overrides"])
    if arm.startswith("central_"):
        _, start, tag = arm.split("_")
        init = str(root / "mae" / "checkpoint.pt") if start == "mae" else None
        train(train_lists, cfg["preset"], cfg["epochs"], root / arm, init=init, label_fraction=int(tag) / 100,
              **common)
        model = root / arm / "model.pt"
    elif arm.startswith("single_"):
        site = arm[len("single_"):-len("_scratch_100")]
        train([str(data[site])], cfg["preset"], cfg["epochs"], root / arm, **common)
        model = root / arm / "model.pt"
    else:  # federated: rounds x 1 local epoch = the same epoch budget
        privacy = dict(privacy=str(REPO / "poc" / "privacy.json"), privacy_scope="ecefl_strict") \
            if arm == "federated_privacy_scratch_100" else {}
        simulate({s: data[s] for s in TRAIN_SITES}, "ece_finetune", rounds=cfg["epochs"], local_epochs=1,
                 preset=cfg["preset"], workspace=root / arm, quiet=True, cross_site=False, **privacy, **common)
        model = root / arm / "ece_finetune" / "global_model.pt"
    result = evaluate_heldout(model, data[HELDOUT], root / arm / "heldout")
    result["train_seconds"] = round(time.perf_counter() - t0, 1)
    (root / arm / "result.json").write_text(json.dumps(result, indent=1))
    return result


def run_all(cfg: dict, data: dict, out: Path, workers: int, deadline: float | None, log) -> dict:
    """Every (seed, arm), `workers` at a time in separate processes (one GPU is shared by several small
    models); each seed's MAE arms start when its pretraining is done. Past the deadline nothing new starts."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing
    results: dict[str, dict] = {str(s): {} for s in cfg["seeds"]}
    todo = []
    for seed in cfg["seeds"]:
        for arm in arm_names():
            done = out / f"seed{seed}" / arm / "result.json"
            failed = out / f"seed{seed}" / arm / "failed.txt"
            if done.is_file():
                results[str(seed)][arm] = json.loads(done.read_text())
            else:
                todo.append((seed, arm))
                if failed.is_file():  # kept for the summary; a new run tries the arm again
                    results[str(seed)].setdefault("_failed", {})[arm] = failed.read_text()
    needs_mae = {s for s, a in todo if "_mae_" in a and not (out / f"seed{s}" / "mae" / "checkpoint.pt").is_file()}
    waiting = [(s, a) for s, a in todo if "_mae_" in a and s in needs_mae]
    ready = [(s, "mae") for s in sorted(needs_mae)] + [t for t in todo if t not in waiting]
    threads = max(1, (os.cpu_count() or 2) // workers)
    data_s = {k: str(v) for k, v in data.items()}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}

        def submit_ready():
            while ready and len(running) < workers and (deadline is None or time.time() < deadline):
                seed, arm = ready.pop(0)
                running[pool.submit(run_task, seed, arm, cfg, data_s, str(out), threads)] = (seed, arm)

        submit_ready()
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                seed, arm = running.pop(fut)
                try:
                    res = fut.result()
                except Exception as exc:  # one failed arm must not lose the others
                    log(f"seed {seed} {arm}: FAILED {type(exc).__name__}: {str(exc)[-800:]}")
                    why = f"{type(exc).__name__}: {exc}"[-2000:]
                    # the seed's MAE arms cannot run without their pretraining
                    for failed_arm in [arm] + ([a for s, a in waiting if s == seed] if arm == "mae" else []):
                        results[str(seed)].setdefault("_failed", {})[failed_arm] = why
                        (out / f"seed{seed}" / failed_arm).mkdir(parents=True, exist_ok=True)
                        (out / f"seed{seed}" / failed_arm / "failed.txt").write_text(why)
                    continue
                if arm == "mae":
                    log(f"seed {seed} MAE pretraining done ({res['train_seconds']:.0f}s)")
                    ready[:0] = [t for t in waiting if t[0] == seed]
                    continue
                results[str(seed)][arm] = res
                results[str(seed)].get("_failed", {}).pop(arm, None)
                log(f"seed {seed} {arm}: held-out AUC {_fmt(res['val'].get('auc'))}, Dice "
                    f"{_fmt(res['val'].get('dice'))} ({res['train_seconds']:.0f}s)")
            submit_ready()
    skipped = [f"seed {s} {a}" for s, a in ready]
    if skipped:
        log(f"deadline reached; not run: {', '.join(skipped)}")
    return results


def paired_auc_difference(a: dict, b: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC(a) - AUC(b) on the same cases, with a paired case-bootstrap 95 % interval (all resamples at once)."""
    from sklearn.metrics import roc_auc_score
    pa, y = _predictions(a)
    pb, yb = _predictions(b)
    assert (y == yb).all()
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    diffs = _auc_rows(pa[idx], y[idx]) - _auc_rows(pb[idx], y[idx])
    diffs = diffs[np.isfinite(diffs)]  # resamples holding one class only have no AUC
    point = roc_auc_score(y, pa) - roc_auc_score(y, pb) if len(set(y)) == 2 else float("nan")
    lo, hi = (np.percentile(diffs, [2.5, 97.5]) if len(diffs) else (float("nan"), float("nan")))
    return {"difference": float(point), "ci": [float(lo), float(hi)], "n_cases": int(len(y))}


def _auc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Row-wise ROC AUC (Mann-Whitney U with tied scores at mid-rank, as roc_auc_score); NaN for one-class rows."""
    from scipy.stats import rankdata
    ranks = rankdata(scores, axis=1)
    n_pos = labels.sum(axis=1).astype(float)
    n_neg = labels.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * labels).sum(axis=1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def summarise(results: dict) -> dict:
    seeds = sorted(results["seeds"], key=int)
    arms = sorted({a for s in seeds for a in results["seeds"][s] if not a.startswith("_")})
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
                per[s] = paired_auc_difference(arms_s[f"central_mae_{tag}"], arms_s[f"central_scratch_{tag}"],
                                               seed=int(s))
        mae_effect[f"labels_{tag}"] = {"per_seed": per, "mean_difference": _mean([v["difference"] for v in per.values()])}
    privacy = {}
    for s in seeds:
        arms_s = results["seeds"][s]
        if "federated_privacy_scratch_100" in arms_s and "federated_scratch_100" in arms_s:
            d = paired_auc_difference(arms_s["federated_privacy_scratch_100"], arms_s["federated_scratch_100"],
                                      seed=int(s))
            d["dice_difference"] = _diff(arms_s["federated_privacy_scratch_100"]["val"].get("dice"),
                                         arms_s["federated_scratch_100"]["val"].get("dice"))
            privacy[s] = d
    privacy_cost = {"per_seed": privacy, "mean_auc_difference": _mean([v["difference"] for v in privacy.values()]),
                    "mean_dice_difference": _mean([v["dice_difference"] for v in privacy.values()])}
    failed = {s: results["seeds"][s]["_failed"] for s in seeds if results["seeds"][s].get("_failed")}
    return {"table": table, "ratios": ratios, "federated_vs_best_single": best_single, "mae_effect": mae_effect,
            "privacy_cost": privacy_cost, "failed": failed}


def _diff(a, b):
    return a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


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
    pc = summary["privacy_cost"]
    lines += ["", "| privacy scope ecefl_strict (PercentilePrivacy 90/0.01) − plain FedAvg, held-out, paired | "
              "ΔAUC per seed [95 % CI] | ΔDice per seed | mean ΔAUC | mean ΔDice |", "|---|---|---|---|---|"]
    lines.append("| federated_privacy − federated | "
                 + "; ".join(f"{_fmt(x['difference'])} [{_fmt(x['ci'][0], 2)}, {_fmt(x['ci'][1], 2)}]"
                             for x in pc["per_seed"].values())
                 + f" | {', '.join(_fmt(x['dice_difference']) for x in pc['per_seed'].values())} | "
                 f"{_fmt(pc['mean_auc_difference'])} | {_fmt(pc['mean_dice_difference'])} |")
    for s, arms in summary["failed"].items():
        for arm, why in arms.items():
            lines.append(f"\nFAILED seed {s} {arm}: {why.splitlines()[0][:300]}")
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
            p, y = _predictions(arms[arm])
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
    p.add_argument("--mode", choices=["quick", "short", "full"], default="full",
                   help="quick: this CPU (machinery only); short: one GPU, about 6 minutes; full: a GPU, hours")
    p.add_argument("--quick", action="store_true", help="same as --mode quick")
    p.add_argument("--out", default="workspace/bench_quality")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--preset", default=None, help="override the mode's preset (test-tiny: a smoke run)")
    p.add_argument("--workers", type=int, default=None,
                   help="arms run at a time, each in its own process (default: 8 with a GPU, else one per core)")
    p.add_argument("--deadline-min", type=float, default=None,
                   help="start no new arm after this many minutes; the summary covers what finished")
    p.add_argument("--summarise", default=None, metavar="QUALITY_JSON",
                   help="only recompute the summary, tables and plot of an earlier run's quality.json into --out")
    args = p.parse_args(argv)
    if args.summarise:
        return write_outputs(json.loads(Path(args.summarise).read_text()), Path(args.out).resolve(), argv)
    mode = "quick" if args.quick else args.mode
    cfg = dict({"quick": QUICK, "short": SHORT, "full": FULL}[mode], mode=mode)
    if args.seeds:
        cfg["seeds"] = args.seeds
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.preset:
        cfg["preset"] = args.preset
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("ECEFL_SITE_SECRET_FILE", str(out / "bench_secret.key"))
    import platform
    import torch
    gpu = torch.cuda.is_available()
    workers = args.workers or (8 if gpu else min(8, os.cpu_count() or 1))
    t0 = time.perf_counter()
    started = out / "started_at"  # the wall time counts from the first run over this folder (resumes included)
    if not started.is_file():
        started.write_text(str(time.time()))
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min is not None else None
    data = prepare_data(out, cfg, workers=min(4, os.cpu_count() or 1))
    from ecefl.data import load_datalist
    heldout_cases = len(load_datalist(data[HELDOUT])[0])
    print(f"data ready in {time.perf_counter() - t0:.0f}s; {workers} arm(s) at a time", flush=True)
    results = {"seeds": run_all(cfg, data, out, workers, deadline, log=lambda m: print(m, flush=True))}
    results.update(config=cfg, heldout_cases=heldout_cases, date=time.strftime("%Y-%m-%d"), workers=workers,
                   machine=f"{platform.machine()} {os.cpu_count()} CPUs"
                   + (f", {torch.cuda.get_device_name(0)}" if gpu else ", no GPU"),
                   wall_seconds=round(time.time() - float(started.read_text()), 1))
    return write_outputs(results, out, argv)


def write_outputs(results: dict, out: Path, argv) -> int:
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(results)
    # a re-summarised run keeps the command that produced its arms
    command = results.get("command") or "python benchmarks/quality.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    results.update(summary=summary, command=command)
    (out / "quality.json").write_text(json.dumps(results, indent=1))
    md = markdown(results, summary, command)
    (out / "quality.md").write_text(md)
    roc_plot(results, out / "roc_heldout.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
