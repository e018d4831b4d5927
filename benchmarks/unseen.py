"""A model at a hospital it has never seen: held-out quality and the effect of local threshold calibration.

    python benchmarks/unseen.py --model workspace/demo/fl/ece_finetune/best_global_model.pt --out workspace/bench_unseen

Writes an unseen hospital with `ecefl synth` (default: the hospital-d scanner profile, which no demo or training
run uses, and a seed no training run uses), preprocesses it as a site would, then splits its labelled patients
into a calibration set (the site's own labelled cases) and a test set (default 40 / 120 patients):
1. `ecefl evaluate` of the model on the test set: AUC with its case-bootstrap 95 % CI, Dice, and sensitivity /
   specificity at the threshold the model arrived with (chosen on the training sites' validation);
2. `ecefl calibrate` on the calibration set, then sensitivity / specificity on the same test set at the site's own
   threshold (from the site-local predictions.csv of step 1; the scores do not depend on the threshold), and the
   test set's mean Dice at the node threshold the site chose (`--node-threshold`; step 1 records the Dice at
   every candidate).
3. The AUC of the subtle and of the overt ECE-positive test patients, each against the ECE-negative ones: the
   generator's truth (its synth_manifest.json) joined to the site's pseudonyms through the site's key, which this
   benchmark holds as the hospital it made. A model that reads only gross extension scores the subtle ones near 0.5.
4. What the found nodes are (from predictions.csv's volumes): precision and recall of the marked volume, the marked /
   contoured volume, the share of patients marked under half or over twice their nodes' volume.
Prints and writes unseen_<model>.json.

--hospital DIR scores a hospital someone else made instead: DIR/dicom (one folder of CT + RTSTRUCT per patient) and
DIR/labels.csv (patient_id,ece), e.g. from benchmarks/independent_hospital.py, a generator written apart from
`ecefl synth`, or a hospital's own labelled export. Step 3 then reads DIR/truth.json where it exists.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))
sys.path.insert(0, str(REPO))


def prepare_site(out: Path, patients: int, seed: int, profile_index: int, hospital: Path | None = None) -> Path:
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    from site_preprocess.synth import synthesize
    datalist = out / "site" / "datalist.json"
    if datalist.is_file():
        return datalist
    if hospital is not None:
        site_dir = hospital
        if not (hospital / "dicom").is_dir() or not (hospital / "labels.csv").is_file():
            raise SystemExit(f"--hospital {hospital} must hold dicom/ (a folder per patient) and labels.csv")
    else:
        site_dir = synthesize(out / "dicom", sites=profile_index + 1, cases_per_site=patients, unlabeled_per_site=0,
                              seed=seed, progress=False, only=[profile_index],
                              workers=os.cpu_count() or 2)[0]
    cfg = SiteConfig(secret_file=str(out / "site.key"))
    code = run_preprocess(site_dir / "dicom", site_dir / "labels.csv", out / "site", cfg, progress=False)
    if code not in (0, 3):
        raise SystemExit(f"preprocessing the unseen hospital failed (exit {code})")
    return datalist


def split_datalist(datalist: Path, n_calibration: int) -> tuple[Path, Path]:
    """Two datalists beside the site's (paths stay relative to its folder): calibration first, test the rest."""
    raw = json.loads(datalist.read_text())
    cases = raw["training"]
    calib, test = [], []
    for ece in (0, 1):  # stratified: calibration takes its share of each class
        group = [c for c in cases if int(c["ece"]) == ece]
        k = round(n_calibration * len(group) / len(cases))
        calib += group[:k]
        test += group[k:]
    paths = []
    for name, part in (("calibration", calib), ("test", test)):
        path = datalist.parent / f"datalist_{name}.json"
        tmp = path.with_suffix(".tmp")  # atomic: another benchmark process may be reading it
        tmp.write_text(json.dumps({"training": part, "unlabeled": []}, indent=1))
        tmp.replace(path)
        paths.append(path)
    return paths[0], paths[1]


def rates_at(predictions: Path, threshold: float) -> dict:
    from ecefl import metrics as M
    rows = list(csv.DictReader(open(predictions)))
    probs, labels = [float(r["probability"]) for r in rows], [int(r["ece"]) for r in rows]
    return {"threshold": threshold, **M.rates(**M.confusion(probs, labels, threshold))}


def found_nodes(predictions: Path) -> dict:
    """What the found nodes are, from each case's Dice and volumes (predictions.csv): the share of the marked volume
    that is node (precision) and of the nodes' volume that is marked (recall), pooled over the cases and as medians
    of the cases', and the marked / contoured volume. Low Dice from marking too little (nodes not recognised) and
    from marking elsewhere (other structures taken for nodes) call for different levers. A case with nothing marked
    counts precision 0. The volumes are those rounded in predictions.csv (1 µl), so these are exact to about that."""
    import numpy as np
    rows = list(csv.DictReader(open(predictions)))
    dice = np.array([float(r["dice"]) for r in rows])
    marked = np.array([float(r["predicted_ml"]) for r in rows])
    contoured = np.array([float(r["reference_ml"]) for r in rows])
    overlap = dice * (marked + contoured) / 2  # Dice = 2 |P & R| / (|P| + |R|)
    ratio = marked / np.maximum(contoured, 1e-9)
    return {"pooled_precision": float(overlap.sum() / max(marked.sum(), 1e-9)),
            "pooled_recall": float(overlap.sum() / max(contoured.sum(), 1e-9)),
            "median_precision": float(np.median(overlap / np.maximum(marked, 1e-9))),
            "median_recall": float(np.median(overlap / np.maximum(contoured, 1e-9))),
            "median_marked_ml": float(np.median(marked)), "median_contoured_ml": float(np.median(contoured)),
            "median_volume_ratio": float(np.median(ratio)),
            "share_under_half": float((ratio < 0.5).mean()), "share_over_twice": float((ratio > 2).mean())}


def auc_by_rendering(key_file: Path, manifest: Path, predictions: Path) -> dict:
    """AUC of the subtle and of the overt ECE-positive patients against the ECE-negative ones (step 3), for the
    patients of `predictions` that the manifest holds."""
    from sklearn.metrics import roc_auc_score
    from site_preprocess.pseudonym import case_id
    key = Path(key_file).read_bytes().strip()
    # ecefl synth writes "subtle": true/false; benchmarks/independent_hospital.py "grade": "subtle"/"overt"
    subtle = {case_id(key, p["patient_id"]): bool(p.get("subtle") or p.get("grade") == "subtle")
              for p in json.loads(Path(manifest).read_text())["patients"]}
    rows = [r for r in csv.DictReader(open(predictions)) if r["case_id"] in subtle]
    result = {}
    for name, keep in (("subtle", True), ("overt", False)):
        part = [r for r in rows if int(r["ece"]) == 0 or subtle[r["case_id"]] == keep]
        labels = [int(r["ece"]) for r in part]
        n_pos = sum(labels)
        result[f"{name}_vs_negative"] = (float(roc_auc_score(labels, [float(r["probability"]) for r in part]))
                                         if 0 < n_pos < len(part) else None)
        result[f"n_{name}"] = n_pos
    return result


def generator_manifest(out: Path, hospital: Path | None) -> Path | None:
    if hospital is not None:
        return hospital / "truth.json" if (hospital / "truth.json").is_file() else None
    return next((out / "dicom").glob("*/synth_manifest.json"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="workspace/bench_unseen")
    p.add_argument("--test-patients", type=int, default=120)
    p.add_argument("--calibration-patients", type=int, default=40)
    p.add_argument("--seed", type=int, default=101, help="generator seed of the unseen hospital (not a training one)")
    p.add_argument("--profile", type=int, default=3, help="site profile index (3 = hospital-d, in no training run)")
    p.add_argument("--hospital", help="score this hospital instead of writing one: a folder with dicom/ and labels.csv "
                   "(all its labelled patients but the calibration ones are tested; --seed, --profile and "
                   "--test-patients do not apply)")
    args = p.parse_args(argv)
    hospital = Path(args.hospital).resolve() if args.hospital else None
    from ecefl.checkpoint import load_checkpoint
    from ecefl.stages import calibrate, evaluate
    out = Path(args.out).resolve()
    datalist = prepare_site(out, args.test_patients + args.calibration_patients, args.seed, args.profile, hospital)
    calib, test = split_datalist(datalist, args.calibration_patients)
    model_name = Path(args.model).stem
    held = evaluate(args.model, [test], out / f"eval_{model_name}", progress=False)
    calibrated = out / f"{model_name}_calibrated.pt"
    record = calibrate(args.model, [calib], calibrated, node_threshold=True, progress=False)
    before = rates_at(out / f"eval_{model_name}" / "predictions.csv", float(load_checkpoint(args.model)["threshold"]))
    after = rates_at(out / f"eval_{model_name}" / "predictions.csv", record["threshold"])
    # the test cases' mean Dice at the node threshold the site chose on its calibration cases
    before["dice"] = held["dice"]
    after["dice"] = held["dice_at_node_threshold"][f"{record['node_threshold']:g}"]
    manifest = generator_manifest(out, hospital)
    origin = {"hospital": str(hospital)} if hospital else {"seed": args.seed, "profile": args.profile}
    result = {"model": str(args.model), **origin,
              "test": {k: held.get(k) for k in ("auc", "dice", "dice_at_node_threshold", "n_cases", "n_pos", "n_neg",
                                                "ci")},
              "auc_by_rendering": auc_by_rendering(out / "site.key", manifest,
                                                   out / f"eval_{model_name}" / "predictions.csv") if manifest else None,
              "found_nodes": found_nodes(out / f"eval_{model_name}" / "predictions.csv"),
              "before_calibration": before, "after_calibration": after,
              "calibration": {k: record[k] for k in ("method", "n_pos", "n_neg", "threshold_before", "threshold",
                                                     "node_threshold_before", "node_threshold", "dice_before",
                                                     "dice_after")}}
    (out / f"unseen_{model_name}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
