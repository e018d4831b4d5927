"""Which nodes a model finds, node by node, and what the found and the missed ones look like.

    python benchmarks/node_recall.py --model M.pt --site UIH9/site --cases 24 --out NR_M [--against NR_F0]

The site is a preprocessed site folder (datalist with image / nodes paths; `--datalist` defaults to
datalist_test.json, which `benchmarks/unseen.py` writes). For every contoured node (a connected region of the
per-node mask on the model's plan grid, >= 20 voxels) of the first --cases patients, with the model's whole-volume
prediction (sliding window, neck gate and mirroring as `ecefl infer`):
- `probability`: the mean node probability over the node; `recall`: the share of its voxels at or above the model
  file's node threshold (what its output mask keeps);
- its shape: `ml`, `z_over_axial` (craniocaudal extent over the larger axial one), `long_axis_cos_z` (|cos| of the
  angle between its longest principal axis and z);
- what surrounds it within 8 mm: the shares of fat (-190..-30 HU), soft tissue (-30..100) and >= 150 HU
  (enhancing vessel, bone), and the body's left-right width on its slice;
- per patient `false_positive_ml`: marked volume off the contoured nodes.
Prints and writes OUT/node_recall.json (pseudonymised case ids only). --against OTHER: the paired difference of
the node probabilities (this model minus the other run's, the same nodes), with a 95 % interval from 2,000
patient-level bootstrap draws (nodes of one patient are not independent).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from node_context import from_window, labelled_with_nodes, on_plan_grid, probability_map  # noqa: E402

MIN_VOXELS = 20
RING_MM = 8.0


def node_rows(prob: np.ndarray, img: np.ndarray, nodes: np.ndarray, window, spacing, node_threshold: float,
              case_id: str) -> tuple[list[dict], float]:
    """(one row per contoured node, false-positive ml) for one patient on the plan grid (img in window units)."""
    from scipy import ndimage

    from ecefl.engine import largest_component
    hu = from_window(img, window)
    spacing = np.asarray(spacing, float)
    body = largest_component(img > 0)
    labels, count = ndimage.label(nodes)
    distance = ndimage.distance_transform_edt(~nodes, sampling=spacing)
    rows = []
    for k in range(1, count + 1):
        node = labels == k
        if node.sum() < MIN_VOXELS:
            continue
        voxels = np.argwhere(node)
        xyz = voxels * spacing
        extent = np.ptp(xyz, 0) + spacing
        _, vectors = np.linalg.eigh(np.cov(xyz.T))
        own = ndimage.distance_transform_edt(~node, sampling=spacing)
        ring = (own > 0) & (own <= RING_MM) & (distance > 0) & body  # off every node, inside the body
        ring_hu = hu[ring]
        z = int(round(voxels[:, 2].mean()))
        across = np.nonzero(body[:, :, z].any(1))[0]
        rows.append({
            "case_id": case_id, "node": len(rows), "probability": float(prob[node].mean()),
            "recall": float((prob[node] >= node_threshold).mean()), "ml": float(node.sum() * spacing.prod() / 1e3),
            "z_over_axial": float(extent[2] / extent[:2].max()), "long_axis_cos_z": float(abs(vectors[2, -1])),
            "ring_fat": float(np.mean((ring_hu > -190) & (ring_hu < -30))) if ring_hu.size else None,
            "ring_soft_tissue": float(np.mean((ring_hu >= -30) & (ring_hu < 100))) if ring_hu.size else None,
            "ring_over_150_hu": float(np.mean(ring_hu >= 150)) if ring_hu.size else None,
            "body_width_mm": float((across[-1] - across[0] + 1) * spacing[0]) if across.size else None})
    false_positive_ml = float(((prob >= node_threshold) & ~nodes).sum() * spacing.prod() / 1e3)
    return rows, false_positive_ml


def summarise(rows: list[dict], false_positive_ml: list[float]) -> dict:
    p = np.array([r["probability"] for r in rows])
    return {"n_nodes": len(rows), "n_patients": len(false_positive_ml),
            "median_probability": float(np.median(p)), "mean_probability": float(p.mean()),
            "found_share": float(np.mean(p > 0.5)), "median_recall": float(np.median([r["recall"] for r in rows])),
            "median_false_positive_ml": float(np.median(false_positive_ml))}


def paired_against(rows: list[dict], other: list[dict], draws: int = 2000, seed: int = 0) -> dict:
    """Mean of (this - other) node probability over the same nodes, 95 % interval resampling patients."""
    key = lambda r: (r["case_id"], r["node"])  # noqa: E731
    theirs = {key(r): r["probability"] for r in other}
    if set(theirs) != {key(r) for r in rows}:
        raise SystemExit("--against: the other run scored other nodes (another site, --cases or datalist); run both "
                         "with the same --site, --datalist and --cases")
    by_case: dict[str, list[float]] = {}
    for r in rows:
        by_case.setdefault(r["case_id"], []).append(r["probability"] - theirs[key(r)])
    cases = list(by_case)
    rng = np.random.default_rng(seed)
    means = []
    for _ in range(draws):
        drawn = [d for i in rng.integers(0, len(cases), len(cases)) for d in by_case[cases[i]]]
        means.append(np.mean(drawn))
    diffs = [d for c in cases for d in by_case[c]]
    return {"mean_difference": float(np.mean(diffs)), "ci95": [float(v) for v in np.percentile(means, [2.5, 97.5])],
            "nodes_up": int(sum(d > 0.05 for d in diffs)), "nodes_down": int(sum(d < -0.05 for d in diffs))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--site", required=True, type=Path)
    p.add_argument("--datalist", default="datalist_test.json")
    p.add_argument("--cases", type=int, default=24)
    p.add_argument("--against", type=Path, help="another run's OUT folder (or its node_recall.json), same nodes")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    other = None
    if args.against:  # read before the predictions: a wrong path fails at once
        path = args.against / "node_recall.json" if args.against.is_dir() else args.against
        other = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(other.get("nodes"), list):
            raise SystemExit(f"--against: {path} is not a node_recall.json this benchmark wrote; give the OUT folder "
                             "of an earlier run")
        other["run"] = str(path)
    from ecefl.checkpoint import load_model, node_threshold_of
    model, payload = load_model(args.model)
    model.eval()
    plan, threshold = payload["plan"], node_threshold_of(payload)
    rows, false_positive_ml = [], []
    for entry in labelled_with_nodes(args.site / args.datalist, args.cases):
        img, nodes = on_plan_grid(args.site, entry, plan)
        prob = probability_map(model, img, plan)
        found, fp = node_rows(prob, img, nodes, plan.hu_window, plan.spacing, threshold, entry["case_id"])
        rows += found
        false_positive_ml.append(fp)
        print(entry["case_id"], " ".join(f"{r['probability']:.2f}" for r in found), f"fp {fp:.1f} ml", flush=True)
    if not rows:
        raise SystemExit(f"no contoured node of >= {MIN_VOXELS} voxels in the first {args.cases} patients")
    result = {"model": Path(args.model).name, "node_threshold": threshold, "summary": summarise(rows, false_positive_ml),
              "nodes": rows, "false_positive_ml": false_positive_ml}
    if other is not None:
        result["against"] = {"run": other["run"], **paired_against(rows, other["nodes"])}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "node_recall.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("summary", "against") if k in result}, indent=1))


if __name__ == "__main__":
    main()
