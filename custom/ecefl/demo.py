"""`ecefl demo`: the whole pipeline on built-in synthetic hospitals, ending in a report a person can read.

synth -> preprocess at each site -> federated MAE pretraining -> federated fine-tuning (NVFlare simulator) ->
site-local evidence rendering -> report (report/index.html, summary.json, PNGs).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path


from .checkpoint import load_model, node_threshold_of
from .data import load_datalist, stratified_split
from .engine import FINAL_PREDICTIONS, predict_cases, read_predictions
from .job_kinds import FINETUNE, MAE
from .plan import get_plan
from .report import format_metrics_table, write_report

VAL_FRACTION = 0.25
# Measured wall time of the default demo on a 2-core CPU (docs/BENCHMARKS.md), said up front.
EXPECTED_MINUTES = {"cpu-small": 20, "test-tiny": 5, "gpu": 10}
# The demo's simulated hospitals share one machine: with cyclic weight transfer one site trains at a time with
# every core, so a round makes the sum of the sites' steps of progress instead of FedAvg's average (unseen
# hospital Dice +0.09...+0.11 in 16.1 instead of 15.2 min, docs/BENCHMARKS.md session 13). `--set
# fl_workflow=fedavg` for FedAvg.
DEMO_DEFAULTS = {"fl_workflow": "cyclic"}


def stage(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


# 40 labelled patients per hospital: 25 % validation gives 30 pooled validation cases (12 gave AUC intervals of
# about +-0.3). Sites validate the final model only: sliding-window validation of 30 whole necks costs ~45 s a time
# on this CPU, and the mid-training validations never chose another model (docs/BENCHMARKS.md); the demo's 20
# minutes go to training.


def run_demo(out, preset: str = "cpu-small", sites: int = 3, cases_per_site: int = 40, unlabeled_per_site: int = 10,
             mae_rounds: int = 2, rounds: int = 8, local_epochs: int = 1, seed: int = 0, progress: bool = True,
             varied_synth: bool = False, plain_ece_signs: bool = False, node_axes: str = "random",
             **overrides) -> dict:
    """overrides: plan fields on top of the preset and DEMO_DEFAULTS (`ecefl demo --set FIELD=VALUE`), for both
    jobs. varied_synth: the hospitals of `ecefl synth --varied` (plain_ece_signs: `... --plain-ece-signs`);
    node_axes: `ecefl synth --node-axes` ("longitudinal": the nodes along the neck, session 41)."""
    overrides = {**DEMO_DEFAULTS, **overrides}
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    from site_preprocess.synth import synthesize
    from .fl.simulate import simulate

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    plan = get_plan(preset, seed=seed, **overrides)
    print(f"ECE-FL demo: {sites} synthetic hospitals, preset {preset}; expected about "
          f"{EXPECTED_MINUTES.get(preset, 20)} minutes on a 2-core CPU. Output: {out}")
    timings, t0 = {}, time.time()

    stage("1/5 synthesise hospitals (DICOM CT + RTSTRUCT + labels.csv)")
    t = time.time()
    site_dirs = synthesize(out / "hospitals", sites, cases_per_site, unlabeled_per_site, seed, progress=progress,
                           workers=os.cpu_count() or 1, varied=varied_synth, plain_signs=plain_ece_signs,
                           node_axes=node_axes)
    timings["synth_s"] = round(time.time() - t, 1)

    stage("2/5 preprocess at each site (exact masks, soft-tissue dilation, pseudonyms)")
    t = time.time()
    datalists, data_summary = {}, {}
    for site_dir in site_dirs:
        site_out = out / "sites" / site_dir.name
        cfg = SiteConfig(secret_file=str(out / "site_keys" / f"{site_dir.name}.key"))
        code = run_preprocess(site_dir / "dicom", site_dir / "labels.csv", site_out, cfg, progress=progress)
        if code not in (0, 3):
            raise RuntimeError(f"preprocessing failed at {site_dir.name} (exit {code})")
        qc = json.loads((site_out / "qc_report.json").read_text())["summary"]
        data_summary[site_dir.name] = {"cases": qc["n_cases"], "ok": qc["ok"], "positives": qc["positives"],
                                       "unlabeled": qc["unlabeled"], "failed": qc["failed"]}
        datalists[site_dir.name] = (site_out / "datalist.json").resolve()
    timings["preprocess_s"] = round(time.time() - t, 1)

    stage("3/5 + 4/5 federated MAE pretraining, then federated fine-tuning (NVIDIA FLARE simulator)")
    t = time.time()
    fl_ws = out / "fl"
    simulate(datalists, MAE, mae_rounds, local_epochs, preset, fl_ws, seed=seed, val_fraction=VAL_FRACTION,
             quiet=True, progress=progress, **overrides)
    timings["mae_pretrain_s"] = round(time.time() - t, 1)
    t = time.time()
    for datalist in datalists.values():  # a previous demo's per-case results in the same folder are not this one's
        (datalist.parent / FINAL_PREDICTIONS).unlink(missing_ok=True)
    simulate(datalists, FINETUNE, rounds, local_epochs, preset, fl_ws, seed=seed, val_fraction=VAL_FRACTION,
             init=str(fl_ws / MAE / "global_model.pt"), quiet=True, progress=progress,
             cross_site=False, **{"validate_every": 0, **overrides})  # the report reads the pooled metrics only
    timings["ece_finetune_s"] = round(time.time() - t, 1)

    stage("5/5 site-local evidence rendering and report")
    t = time.time()
    finetune = json.loads((fl_ws / FINETUNE / "pooled_metrics.json").read_text())
    mae = json.loads((fl_ws / MAE / "pooled_metrics.json").read_text())
    threshold = (finetune.get("final") or {}).get("threshold", 0.5)
    cases = evidence_cases(fl_ws / FINETUNE / "global_model.pt", datalists, threshold, seed)
    timings["report_s"] = round(time.time() - t, 1)
    timings["total_s"] = round(time.time() - t0, 1)
    config = {"preset": preset, "plan": plan.to_dict(), "sites": sites, "cases_per_site": cases_per_site,
              "varied_synth": varied_synth, "plain_ece_signs": plain_ece_signs,
              "node_axes": node_axes,
              "unlabeled_per_site": unlabeled_per_site, "mae_rounds": mae_rounds, "finetune_rounds": rounds,
              "local_epochs": local_epochs, "val_fraction": VAL_FRACTION, "seed": seed}
    summary = write_report(out / "report", finetune, mae, data_summary, config, cases, timings)
    final = finetune.get("final") or {}
    print()
    print(format_metrics_table(final.get("pooled"), final.get("sites") or {}))
    by_threshold = (final.get("pooled") or {}).get("dice_at_node_threshold") or {}
    if final.get("node_threshold") is not None and by_threshold:
        t = final["node_threshold"]
        print(f"nodal mask at node probability > {t:g}: pooled Dice {by_threshold[f'{t:g}']:.3f} (at 0.5: "
              f"{by_threshold['0.5']:.3f}; threshold chosen on these validation cases)")
    print(f"\nbest model (pooled AUC + Dice, second half of training): {finetune.get('best_round')}; total {timings['total_s'] / 60:.1f} min")
    print(f"model for `ecefl infer` / `ecefl calibrate`: {fl_ws / 'ece_finetune' / 'best_global_model.pt'}")
    print(f"report: {out / 'report' / 'index.html'}")
    return summary


def site_splits(datalists: dict, seed: int, val_fraction: float = VAL_FRACTION) -> dict[str, tuple[list, list]]:
    """site -> (training, validation) labelled cases, split as the demo's federated sites split them."""
    splits = {}
    for site, datalist in datalists.items():
        labelled, _ = load_datalist(datalist, site=site)
        splits[site] = stratified_split(labelled, val_fraction, seed)
    return splits


def evidence_cases(model_path: Path, datalists: dict, threshold: float, seed: int) -> list[dict]:
    """At each site: the global model on its validation cases; one TP, FP, FN and TN (most confident). The scores
    come from the sites' own per-case results of the final validation (engine.FINAL_PREDICTIONS) where they cover
    the validation split; only the chosen cases are predicted again, for their figures."""
    model, ckpt = load_model(model_path, kind="dual")
    plan, node_threshold = ckpt["plan"], node_threshold_of(ckpt)
    best: dict[str, dict] = {}
    for site, (_, val) in site_splits(datalists, seed).items():
        if not val:
            continue
        kept = Path(datalists[site]).parent / FINAL_PREDICTIONS
        scores = read_predictions(kept) if kept.is_file() else {}
        if not all(it["case_id"] in scores for it in val):
            pred = predict_cases(model, val, plan, progress=False, node_threshold=node_threshold)
            scores = {cid: {"probability": float(p)} for cid, p in zip(pred["case_ids"], pred["probs"])}
        for item in val:
            p, y = scores[item["case_id"]]["probability"], int(item["ece"])
            category = {(True, 1): "tp", (True, 0): "fp", (False, 1): "fn", (False, 0): "tn"}[(p >= threshold, y)]
            confidence = abs(p - threshold)
            if category not in best or confidence > best[category]["confidence"]:
                best[category] = {"category": category, "site": site, "item": item, "confidence": confidence}
    cases = []
    for category in ("tp", "fp", "fn", "tn"):
        if category in best:
            chosen = best[category]
            pred = predict_cases(model, [chosen.pop("item")], plan, progress=False, keep_outputs=True,
                                 node_threshold=node_threshold)
            cases.append({**chosen, "probability": float(pred["probs"][0]), "ece": int(pred["labels"][0]),
                          **pred["outputs"][0]})
    return cases
