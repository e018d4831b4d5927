"""Federated vs centralised vs each hospital alone, at the same wall-clock budget, on an unseen hospital (#12, 3).

    python benchmarks/fedcentral.py --demo workspace/demo --unseen workspace/bench_unseen --out workspace/bench_fc

Takes a finished `ecefl demo` folder (its preprocessed sites, the federated MAE encoder it fine-tuned from, and its
federated model `best_global_model.pt`) and the unseen hospital of benchmarks/unseen.py (run that first: it writes
the test split, 120 patients of a scanner profile and generator seed no training run used). Then, one arm after
the other with all of this machine's threads (each arm gets the machine the demo had):
- central: `ecefl train`'s code on the demo sites' labelled cases pooled (its own stratified 75/25 split), from
  the same MAE encoder, preset, plan overrides and seed as the demo, for `--epochs` epochs;
- single-<site>: the same on one hospital's cases alone (what a hospital gets without federating);
- federated: the demo's model as it is.
Every model is scored with `ecefl evaluate`'s code on the same unseen patients. Choose `--epochs` (central) and
`--single-epochs` so that each arm's training seconds match the demo's fine-tuning seconds (both are in the
output). On this 2-core CPU a cpu-small epoch (18 steps in channels-last memory since session (13); 15 before)
takes ~22 s with both threads (~28 s for 15 before), and the read-out refit and final validation add ~215 s for
90 + 30 cases and ~70 s for one hospital's 30 + 10: 25 central epochs took 758 s against the cyclic demo's 817 s
(session 13); 22 and 27 epochs of 15 steps matched a demo fine-tuning of ~850 s (the machine's speed varies
between hours by ~25 %: check the seconds in the output, docs/BENCHMARKS.md sessions (10), (13)).

Summary: AUC and Dice with case-bootstrap CIs per arm; federated / central ratios (target: >= 0.95 for both);
federated − each arm with paired case-bootstrap CIs (benchmarks/paired.py); whether the federated model is at least
as good as the best single hospital. Writes OUT/fedcentral.json and OUT/fedcentral.md; finished arms are kept, so
an interrupted run resumes.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "custom"), str(REPO), str(REPO / "benchmarks")]

FEDERATED = "federated"


def demo_inputs(demo: Path) -> dict:
    """What the arms need from a finished demo; a clear message for what is missing."""
    need = {"model": demo / "fl" / "ece_finetune" / "best_global_model.pt",
            "encoder": demo / "fl" / "mae_pretrain" / "global_model.pt",
            "summary": demo / "report" / "summary.json"}
    missing = [str(p) for p in need.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"{demo} is not a finished `ecefl demo` folder: missing {', '.join(missing)}")
    sites = {p.parent.name: p for p in sorted((demo / "sites").glob("*/datalist.json"))}
    if len(sites) < 2:
        raise SystemExit(f"{demo}/sites holds {len(sites)} preprocessed site(s); the comparison needs at least 2")
    return {**need, "sites": sites}


def arm_names(sites: dict) -> list[str]:
    return [FEDERATED, "central", *(f"single-{s}" for s in sites)]


def run_arm(arm: str, inputs: dict, test: Path, out: Path, epochs: dict, scored: Path | None = None) -> dict:
    """Train (unless federated) and score on the unseen test patients; the result is also written to
    OUT/<arm>/result.json. scored: an `ecefl evaluate` folder of this arm's model on the same test patients
    (benchmarks/unseen.py's eval_<model>), read instead of scoring again."""
    from ecefl.checkpoint import load_checkpoint
    from ecefl.stages import evaluate, train
    quiet = dict(progress=False, log=lambda *_: None)
    folder = out / arm
    trained, t0 = None, time.perf_counter()
    if arm == FEDERATED:
        model = inputs["model"]
    else:
        # every plan value of the federated model (preset, the demo's --set overrides, seed) for the same recipe
        plan = load_checkpoint(inputs["model"])["plan"].to_dict()
        preset, seed = plan.pop("preset"), plan.pop("seed")
        lists = list(inputs["sites"].values()) if arm == "central" else [inputs["sites"][arm[len("single-"):]]]
        n_epochs = epochs["central" if arm == "central" else "single"]
        trained = train([str(p) for p in lists], preset, n_epochs, folder, init=str(inputs["encoder"]), seed=seed,
                        **quiet, **plan)
        model = folder / "model.pt"
    if scored:
        held = json.loads((scored / "metrics.json").read_text())
        n_test = len(json.loads(test.read_text())["training"])
        if held.get("n_cases") != n_test:
            raise SystemExit(f"{scored} scored {held.get('n_cases')} cases, the test split holds {n_test}: "
                             "not the same patients")
    else:
        scored = folder / "unseen"
        held = evaluate(model, [test], scored, **quiet)
    result = {"auc": held["auc"], "dice": held["dice"], "ci": held.get("ci"), "n_cases": held.get("n_cases"),
              "predictions": str(scored / "predictions.csv"),
              "train_seconds": trained["seconds"] if trained else None,
              "epochs": n_epochs if trained else None, "n_train": trained["split"]["train"] if trained else None,
              "val": trained["val"] if trained else None, "seconds": round(time.perf_counter() - t0, 1)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "result.json").write_text(json.dumps(result, indent=1))
    return result


def summarise(results: dict, demo_seconds: float | None) -> dict:
    """Ratios and paired differences of the federated model against every other arm."""
    from paired import paired
    fed = results.get(FEDERATED)
    summary = {"demo_finetune_seconds": demo_seconds, "against": {}}
    if not fed:
        return summary
    for arm, res in results.items():
        if arm == FEDERATED:
            continue
        d = paired(res["predictions"], fed["predictions"])
        summary["against"][arm] = {
            "auc_ratio": fed["auc"] / res["auc"] if res["auc"] else None,
            "dice_ratio": fed["dice"] / res["dice"] if res["dice"] else None,
            "delta_auc": d["delta_auc"], "delta_auc_ci": d["delta_auc_ci"],
            "delta_dice": d["delta_dice"], "delta_dice_ci": d["delta_dice_ci"]}
    singles = {a: r for a, r in results.items() if a.startswith("single-")}
    if singles:
        best_auc = max(singles, key=lambda a: singles[a]["auc"])
        best_dice = max(singles, key=lambda a: singles[a]["dice"])
        summary["best_single"] = {"by_auc": best_auc, "by_dice": best_dice,
                                  "federated_at_least_as_good": fed["auc"] >= singles[best_auc]["auc"]
                                  and fed["dice"] >= singles[best_dice]["dice"]}
    if "central" in summary["against"]:
        c = summary["against"]["central"]
        summary["target_met"] = bool(c["auc_ratio"] and c["auc_ratio"] >= 0.95 and c["dice_ratio"]
                                     and c["dice_ratio"] >= 0.95)
    return summary


def markdown(results: dict, summary: dict) -> str:
    f = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    ci = lambda pair: "" if not pair else f" [{pair[0]:.3f}, {pair[1]:.3f}]"  # noqa: E731
    lines = ["| arm | epochs | training s | unseen AUC [95 % CI] | unseen Dice [95 % CI] | fed − arm ΔAUC [paired CI] "
             "| fed − arm ΔDice [paired CI] | fed / arm AUC, Dice |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in results.items():
        c = r.get("ci") or {}
        d = summary["against"].get(arm)
        train_s = r["train_seconds"] if r["train_seconds"] is not None else summary.get("demo_finetune_seconds")
        lines.append(
            f"| {arm} | {r['epochs'] or 'demo'} | {train_s if train_s is not None else '–'} | {f(r['auc'])}{ci(c.get('auc'))} "
            f"| {f(r['dice'])}{ci(c.get('dice'))} | "
            + (f"{d['delta_auc']:+.3f}{ci(d['delta_auc_ci'])} | {d['delta_dice']:+.3f}{ci(d['delta_dice_ci'])} | "
               f"{f(d['auc_ratio'])}, {f(d['dice_ratio'])} |" if d else "– | – | – |"))
    if "target_met" in summary:
        lines.append(f"\nfederated / central >= 0.95 for AUC and Dice: **{'yes' if summary['target_met'] else 'no'}**")
    if "best_single" in summary:
        b = summary["best_single"]
        lines.append(f"federated >= the best single hospital ({b['by_auc']} by AUC, {b['by_dice']} by Dice): "
                     f"**{'yes' if b['federated_at_least_as_good'] else 'no'}**")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="a finished `ecefl demo --out` folder")
    p.add_argument("--unseen", required=True, help="the --out folder of benchmarks/unseen.py (its test split)")
    p.add_argument("--out", default="workspace/bench_fedcentral")
    p.add_argument("--epochs", type=int, default=22, help="epochs of the central arm")
    p.add_argument("--single-epochs", type=int, help="epochs of each single-hospital arm (default: --epochs)")
    p.add_argument("--arms", nargs="+", help="a subset of the arms (default: all)")
    p.add_argument("--federated-scored", help="benchmarks/unseen.py's eval_<model> folder of the demo's model "
                   "(its predictions are read instead of scoring the model again)")
    args = p.parse_args(argv)
    demo, out = Path(args.demo).resolve(), Path(args.out).resolve()
    inputs = demo_inputs(demo)
    test = Path(args.unseen).resolve() / "site" / "datalist_test.json"
    if not test.is_file():
        raise SystemExit(f"{test} not found: run benchmarks/unseen.py --out {args.unseen} first")
    results = {}
    for arm in arm_names(inputs["sites"]):
        done = out / arm / "result.json"
        if done.is_file():
            results[arm] = json.loads(done.read_text())
        elif not args.arms or arm in args.arms:
            print(f"{arm}: training and scoring ...", flush=True)
            scored = Path(args.federated_scored).resolve() if arm == FEDERATED and args.federated_scored else None
            epochs = {"central": args.epochs, "single": args.single_epochs or args.epochs}
            results[arm] = run_arm(arm, inputs, test, out, epochs, scored)
            print(f"{arm}: unseen AUC {results[arm]['auc']:.3f}, Dice {results[arm]['dice']:.3f} "
                  f"({results[arm]['seconds']:.0f} s)", flush=True)
    timings = json.loads(inputs["summary"].read_text()).get("timings", {})
    summary = summarise(results, timings.get("ece_finetune_s"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "fedcentral.json").write_text(json.dumps({"demo": str(demo), "test": str(test), "arms": results,
                                                     "summary": summary}, indent=1))
    (out / "fedcentral.md").write_text(markdown(results, summary))
    print(markdown(results, summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
