"""Dice of a model's nodal masks on the plan grid and on each CT's own grid, at every candidate node threshold.

    python benchmarks/ct_grid_dice.py --model M.pt --datalist SITE/datalist.json [--cases val|test|all] --out R.json

Per case and node threshold: "plan" (the plan-grid mask against the plan-grid label: what validation reported before
session 32), "nearest" (that mask upsampled to the CT's grid by nearest neighbour: what `ecefl infer` wrote before),
"linear" (the node probability resampled linearly to the CT's grid and thresholded there, engine.node_probability_on:
what infer writes and validation scores now), each against the site's label as stored. --cases val: the cases of the
site's predictions/final_validation.csv (a demo's validation split); test: datalist_test.json (benchmarks/unseen.py's
site). Several --datalist may be given. Prints the mean of each at each threshold and the paired case-bootstrap CI of
linear at 0.5 minus the others; writes every case's numbers to --out (pseudonymised case ids only).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))


def cases_of(datalist: Path, which: str) -> list[dict]:
    site = datalist.parent
    if which == "test":
        datalist = site / "datalist_test.json"
    items = json.loads(datalist.read_text())["training"]
    if which == "val":
        keep = {r["case_id"] for r in csv.DictReader(open(site / "predictions" / "final_validation.csv"))}
        items = [it for it in items if it["case_id"] in keep]
    return [{**it, "image": str(site / it["image"]), "label": str(site / it["label"])} for it in items]


def measure(model_path: str, items: list[dict]) -> list[dict]:
    import torch
    from monai.transforms import ResampleToMatch

    import ecefl.metrics as M
    from ecefl.checkpoint import load_model
    from ecefl.engine import node_probability_on, on_ct_and_plan_grids, predict_volume

    model, _ = load_model(model_path, kind="dual")
    rows = []
    for item in items:
        stored, planned = on_ct_and_plan_grids(item, model.plan)
        out, _ = predict_volume(model, planned["image"].as_tensor().unsqueeze(0).float(), model.plan)
        linear = node_probability_on(out, planned["image"], stored["image"])
        plan_prob = torch.softmax(out[:, :2].float(), dim=1)[0, 1].numpy()
        label_plan, label = np.asarray(planned["label"][0]) > 0.5, np.asarray(stored["label"][0]) > 0.5
        # nearest neighbour picks plan voxels, so thresholding before or after it gives the same mask: resample once
        blocks = planned["image"].clone()
        blocks.array = plan_prob[None].astype(np.float32)
        nearest = np.asarray(ResampleToMatch(mode="nearest")(blocks, img_dst=stored["image"])[0])
        row = {"case_id": item["case_id"], "ece": int(item["ece"])}
        for t in M.NODE_THRESHOLDS:
            row[f"plan_{t}"] = M.dice_from_counts(*M.voxel_counts(plan_prob > t, label_plan))
            row[f"nearest_{t}"] = M.dice_from_counts(*M.voxel_counts(nearest > t, label))
            row[f"linear_{t}"] = M.dice_from_counts(*M.voxel_counts(linear > t, label))
        rows.append(row)
        print(item["case_id"], {k: round(v, 3) for k, v in row.items() if k.endswith("_0.5")}, flush=True)
    return rows


def paired_ci(d: np.ndarray, draws: int = 2000, seed: int = 0) -> list[float]:
    idx = np.random.default_rng(seed).integers(0, len(d), (draws, len(d)))
    return [round(float(d.mean()), 4), *(round(float(v), 4) for v in np.percentile(d[idx].mean(1), [2.5, 97.5]))]


def summary(rows: list[dict]) -> dict:
    from ecefl.metrics import NODE_THRESHOLDS
    col = {k: np.array([r[k] for r in rows]) for k in rows[0] if k not in ("case_id", "ece")}
    return {"n_cases": len(rows),
            "mean": {kind: {str(t): round(float(col[f"{kind}_{t}"].mean()), 4) for t in NODE_THRESHOLDS}
                     for kind in ("plan", "nearest", "linear")},
            "linear_0.5_minus": {k: paired_ci(col["linear_0.5"] - col[k]) for k in col if not k.startswith("linear")}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--datalist", action="append", required=True, type=Path)
    p.add_argument("--cases", choices=("val", "test", "all"), default="val")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(2)
    rows = measure(args.model, [it for d in args.datalist for it in cases_of(d, args.cases)])
    result = {"model": Path(args.model).name, "summary": summary(rows), "cases": rows}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
