"""How well the ECE decision ranks when the nodes are given: the model's read-out pooled over the reference nodal
region, against simple HU signs of the contoured nodes.

    python benchmarks/ece_signs.py --model M.pt --site UIH9/site --cases 120 --out SIGNS_M
    python benchmarks/paired.py UIH9/eval_M/predictions.csv SIGNS_M/predictions.csv   # own nodes vs given ones

The site is a preprocessed site folder (`--datalist` defaults to datalist_test.json, which `benchmarks/unseen.py`
writes); --cases takes the first half of that many ECE-negative and ECE-positive patients (all of them, for `paired.py`,
which pairs only the same patients). Per patient, on the model's plan grid:
- `probability`: the model's case probability with its pooling region forced to the reference label (the contours
  with their soft-tissue dilation, the region it was teacher-forced with in training), sliding window and mirroring
  as `ecefl evaluate`; everything else as the model file says. Its gap to `ecefl evaluate`'s probability (the model's
  own nodes) is what segmentation costs the decision; its gap to the signs is what the read-out fails to read.
- the signs a radiologist reads, on the per-node mask (all contoured nodes together; no learning): `node_hu` (mean,
  one voxel eroded), `shell_hu` (mean of the 2-voxel shell outside the nodes, clipped to -200..150 HU),
  `shell_fat_hu` (mean of that shell's fat, -190..-30 HU after a 3-voxel mean: fat stranding), `shell_soft_share`
  (its share above -30 HU: loss of the fat plane), `ml` and `surface_per_volume` (irregular margins).
Writes OUT/predictions.csv (pseudonymised case ids; `paired.py` reads it) and OUT/ece_signs.json with each column's
AUC and its 95 % interval from 2,000 case bootstrap draws.
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from node_context import from_window, labelled_with_nodes, on_plan_grid  # noqa: E402

SIGNS = ("node_hu", "shell_hu", "shell_fat_hu", "shell_soft_share", "ml", "surface_per_volume")
FAT_HU = (-190.0, -30.0)


def signs(hu: np.ndarray, nodes: np.ndarray, voxel_ml: float) -> dict:
    """The HU signs of the contoured nodes (bool mask) in a CT (HU, the same grid)."""
    from scipy import ndimage
    cross = ndimage.generate_binary_structure(3, 1)
    shell = ndimage.binary_dilation(nodes, cross, iterations=2) & ~nodes
    local = ndimage.uniform_filter(hu, 3)  # a radiologist's ROI mean, not one noisy voxel
    fat = shell & (local >= FAT_HU[0]) & (local <= FAT_HU[1])
    inner = ndimage.binary_erosion(nodes, cross)
    inner = inner if inner.sum() >= 5 else nodes
    border = nodes & ~ndimage.binary_erosion(nodes, cross)
    n = int(nodes.sum())
    return {"node_hu": float(hu[inner].mean()), "shell_hu": float(np.clip(hu[shell], -200, 150).mean()),
            "shell_fat_hu": float(local[fat].mean()) if fat.any() else FAT_HU[0],
            "shell_soft_share": float((shell & (local > FAT_HU[1])).sum() / max(int(shell.sum()), 1)),
            "ml": n * voxel_ml, "surface_per_volume": float(border.sum() / n ** (2 / 3))}


def balanced(datalist: Path, cases: int) -> list[dict]:
    """The first cases // 2 ECE-negative and ECE-positive entries that name their per-node mask."""
    entries = labelled_with_nodes(datalist, None)
    picked = [e for e in entries if not e["ece"]][:cases // 2] + [e for e in entries if e["ece"]][:cases // 2]
    if len({e["ece"] for e in picked}) < 2:
        raise SystemExit(f"{datalist} has no labelled case of one class (with a nodes mask): no AUC to measure")
    return picked


def auc_with_ci(y: np.ndarray, score: np.ndarray, draws: int = 2000) -> dict:
    """The AUC of a score and its 95 % interval from the project's case bootstrap (metrics.case_metrics)."""
    from ecefl.metrics import case_metrics
    result = case_metrics(score, y, n_boot=draws)
    return {"auc": result["auc"], "ci": result["ci"]["auc"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--site", required=True, type=Path)
    p.add_argument("--datalist", default="datalist_test.json")
    p.add_argument("--cases", type=int, default=120)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    import torch

    from ecefl.checkpoint import load_model
    from ecefl.engine import predict_volume
    model, payload = load_model(args.model)
    model.eval()
    plan = payload["plan"]
    voxel_ml = float(np.prod(plan.spacing)) / 1e3
    rows = []
    for entry in balanced(args.site / args.datalist, args.cases):
        img, nodes, region = on_plan_grid(args.site, entry, plan, masks=("nodes", "label"))
        if not nodes.any():  # a node smaller than a plan voxel: no signs to read
            print(f"{entry['case_id']}: no contoured node voxel on the plan grid, left out", flush=True)
            continue
        with torch.no_grad():
            _, prob = predict_volume(model, torch.as_tensor(np.ascontiguousarray(img))[None, None].float(), plan,
                                     region=torch.as_tensor(region)[None, None])
        rows.append({"case_id": entry["case_id"], "ece": int(entry["ece"]), "probability": prob,
                     **signs(from_window(img, plan.hu_window), nodes, voxel_ml)})
        print(f"{entry['case_id']} ECE {entry['ece']}: read-out on the reference region {prob:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "predictions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    y = np.array([r["ece"] for r in rows])
    result = {"model": str(args.model), "site": str(args.site), "n_cases": len(rows), "n_positive": int(y.sum()),
              "auc": {k: auc_with_ci(y, np.array([r[k] for r in rows])) for k in ("probability", *SIGNS)}}
    (args.out / "ece_signs.json").write_text(json.dumps(result, indent=1))
    for name, auc in result["auc"].items():
        print(f"{name:20s} AUC {auc['auc']:.3f} [{auc['ci'][0]:.3f}, {auc['ci'][1]:.3f}]")


if __name__ == "__main__":
    main()
