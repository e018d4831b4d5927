"""How a model's ECE call and nodes hold up when the same patients are imaged on a coarser grid.

    python benchmarks/resolution.py --model M.pt --unseen workspace/bench_unseen --out workspace/bench_resolution

Takes the unseen hospital's test split (run benchmarks/unseen.py first) and re-images its first `--cases` patients
(half with ECE, half without) on each coarser acquisition grid of `--grids` (NAME=PIXELxPIXELxSLICE mm): the CT on
the model's grid is averaged onto the coarse grid (thick voxels: what a coarse acquisition records) and brought back
trilinearly (what preprocessing's resampling does). Each version is predicted with the evaluation code (whole-neck
sliding window). Per grid: AUC, mean p(ECE) of the patients with and without ECE, Dice against the reference
nodes, predicted nodal volume. Blur mixes node, fat and soft tissue into intermediate HU, the sign of fat stranding;
this measures how much of the call that moves (the basis of plan.assessable_spacing_mm). Writes OUT/resolution.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "custom"), str(REPO)]

DEFAULT_GRIDS = "2.5mm=2.5x2.5x3,4mm=4x4x3,thick5=1.5x1.5x5,7.5mm=7.5x7.5x3"


def parse_grids(text: str) -> dict[str, tuple[float, float, float]]:
    grids = {}
    for item in text.split(","):
        name, _, mm = item.partition("=")
        values = tuple(float(v) for v in mm.split("x"))
        if len(values) != 3 or min(values) <= 0:
            raise SystemExit(f"--grids {item!r}: expected NAME=PIXELxPIXELxSLICE in mm, e.g. 4mm=4x4x3")
        grids[name] = values
    return grids


def reimage(image, plan_spacing, grid_mm):
    """(1, 1, X, Y, Z) on the plan grid -> the same extent averaged onto grid_mm and back (trilinear)."""
    import torch.nn.functional as F
    size = [max(1, round(n * plan_spacing[a] / grid_mm[a])) for a, n in enumerate(image.shape[2:])]
    coarse = F.interpolate(image, size=size, mode="area")
    return F.interpolate(coarse, size=image.shape[2:], mode="trilinear", align_corners=False)


def measure(model_path: str, test_datalist: Path, n_cases: int, grids: dict) -> dict:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from ecefl import metrics as M
    from ecefl.checkpoint import load_model, node_threshold_of
    from ecefl.data import eval_transforms, load_datalist, plain_dataset
    from ecefl.engine import predict_volume
    from ecefl.model import DualOutputSwinUNETR
    model, ckpt = load_model(model_path)
    plan, node_threshold = ckpt["plan"], node_threshold_of(ckpt)
    items, _ = load_datalist(test_datalist)
    pos = [i for i in items if int(i["ece"]) == 1][:n_cases // 2]
    neg = [i for i in items if int(i["ece"]) == 0][:n_cases - n_cases // 2]
    dataset = plain_dataset(pos + neg, eval_transforms(plan, with_label=True))
    arms = {"native": None, **grids}
    rows = {name: {"p": [], "dice": [], "ml": []} for name in arms}
    for k in range(len(dataset)):
        sample = dataset[k]
        image, target = sample["image"].unsqueeze(0).float(), sample["label"][0].numpy() > 0
        for name, grid in arms.items():
            out, p = predict_volume(model, image if grid is None else reimage(image, plan.spacing, grid), plan)
            pred = DualOutputSwinUNETR.node_mask(out, node_threshold)[0].numpy()
            rows[name]["p"].append(p)
            rows[name]["dice"].append(M.dice_from_counts(*M.voxel_counts(pred, target)))
            rows[name]["ml"].append(float(pred.sum() * np.prod(plan.spacing) / 1000))
        print(f"case {k + 1}/{len(dataset)}: p(ECE) " + ", ".join(f"{n} {r['p'][-1]:.3f}" for n, r in rows.items()),
              flush=True)
    labels = [1] * len(pos) + [0] * len(neg)
    summary = {name: {"grid_mm": None if arms[name] is None else list(arms[name]),
                      "auc": float(roc_auc_score(labels, r["p"])) if len(set(labels)) == 2 else None,
                      "mean_p_ece": float(np.mean(r["p"][:len(pos)])),
                      "mean_p_no_ece": float(np.mean(r["p"][len(pos):])),
                      "dice": float(np.mean(r["dice"])), "nodes_ml": float(np.mean(r["ml"]))}
               for name, r in rows.items()}
    return {"model": str(model_path), "n_ece": len(pos), "n_no_ece": len(neg), "summary": summary, "cases": rows}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--unseen", required=True, help="the --out folder of benchmarks/unseen.py (its test split)")
    p.add_argument("--out", default="workspace/bench_resolution")
    p.add_argument("--cases", type=int, default=24, help="patients (half with ECE)")
    p.add_argument("--grids", default=DEFAULT_GRIDS, help="NAME=PIXELxPIXELxSLICE mm, comma-separated")
    args = p.parse_args(argv)
    test = Path(args.unseen) / "site" / "datalist_test.json"
    if not test.is_file():
        raise SystemExit(f"{test} not found: run benchmarks/unseen.py --out {args.unseen} first")
    result = measure(args.model, test, args.cases, parse_grids(args.grids))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resolution.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["summary"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
