"""Is it the node or the neck? Nodes moved between two hospitals' CTs, scored by one model.

    python benchmarks/node_context.py --model M.pt --site-a UIH9/site --site-b F0/sites/hospital-a --out NC

Both sites are preprocessed site folders (datalist JSON with image / nodes paths, as `ecefl preprocess` writes;
site A's `--datalist-a` defaults to datalist_test.json, which `benchmarks/unseen.py` writes). For the first --cases
patients of each site, the largest contoured node of A's patient k and of B's patient k (on the model's plan grid):
- `a_home`, `b_home`: the model's mean node probability over the node where it lies;
- `a_in_b`, `b_in_a`: the node, with 4 mm of its surroundings blended in (Gaussian edge), moved into the other
  site's patient, to a random place whose covered voxels are mostly fat, inside the body and off its nodes;
- `a_in_a`, `b_in_b`: the same move within its own patient (the control: a new place, the same neck);
- `a_fat_beyond_<d>`: A's node in its own CT with everything farther than d mm from it that is not air made fat
  (-95 HU): the neck taken away.
If A's nodes score low at home but high in B's necks, and B's fall in A's, the model reads the neck around a node,
not the node. Prints the medians and writes OUT/node_context.json (per patient, pseudonymised case ids only).
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

FAT_HU = -95.0


def cut_out(img: np.ndarray, node: np.ndarray, context: int = 2):
    """The node's box with `context` voxels around it and a blend weight: 1 on the node, a Gaussian edge outside."""
    from scipy import ndimage
    lo = np.maximum(np.argwhere(node).min(0) - context - 2, 0)
    hi = np.minimum(np.argwhere(node).max(0) + context + 3, node.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    region = ndimage.binary_dilation(node[box], iterations=context)
    weight = np.maximum(ndimage.gaussian_filter(region.astype(np.float32), 1.0), node[box].astype(np.float32))
    weight[~ndimage.binary_dilation(region, iterations=2)] = 0.0
    return img[box].copy(), node[box], weight


def in_window(hu: float, window) -> float:
    """A CT value in the plan's window units (its HU window mapped to [0, 1])."""
    return (hu - window[0]) / (window[1] - window[0])


def from_window(img, window):
    """in_window's inverse: window units back to HU (values clipped by the window stay at its bounds)."""
    return img * (window[1] - window[0]) + window[0]


def paste_into_fat(img, nodes, piece, window, rng, tries: int = 400):
    """(image with the piece blended in, its node mask) at a random place of img whose covered voxels are inside the
    body, under 2 % bone, off the nodes and at least half fat; None where no such place is found."""
    from scipy import ndimage
    src, node, weight = piece
    unit = lambda hu: in_window(hu, window)  # noqa: E731
    near = ndimage.binary_dilation(nodes, iterations=3)
    candidates = np.argwhere((img > unit(-190)) & (img < unit(200)) & ~near)
    size, covered = np.array(src.shape), weight > 0
    for _ in range(tries if len(candidates) and np.all(size < img.shape) else 0):
        start = np.clip(candidates[rng.integers(len(candidates))] - size // 2, 0, np.array(img.shape) - size)
        dst = tuple(slice(a, a + k) for a, k in zip(start, size))
        under = img[dst][covered]
        if near[dst][covered].any() or np.mean(under <= unit(-190)) > 0.02 or np.mean(under >= unit(200)) > 0.02:
            continue
        if np.mean((under > unit(-190)) & (under < unit(-40))) < 0.5:
            continue
        out, mask = img.copy(), np.zeros(img.shape, bool)
        out[dst] = weight * src + (1.0 - weight) * img[dst]
        mask[dst] = node
        return out, mask
    return None


def on_plan_grid(site: Path, entry: dict, plan, masks=("nodes",)) -> tuple[np.ndarray, ...]:
    """(CT in window units, then each of the entry's masks named in `masks` as bool; by default the per-node mask) of
    a preprocessed datalist entry on the plan's grid, the CT loaded once."""
    from ecefl.engine import on_ct_and_plan_grids
    keys = ("image", *masks)
    _, planned = on_ct_and_plan_grids({k: str(site / entry[k]) for k in keys}, plan, keys=keys)
    return (planned["image"][0].numpy(), *(planned[k][0].numpy() > 0.5 for k in masks))


def probability_map(model, img: np.ndarray, plan) -> np.ndarray:
    """The model's node probability over a whole plan-grid CT, as `ecefl infer` predicts it (sliding window, neck
    gate, mirroring)."""
    import torch

    from ecefl.engine import predict_volume
    with torch.no_grad():
        out, _ = predict_volume(model, torch.as_tensor(np.ascontiguousarray(img))[None, None].float(), plan)
    return torch.softmax(out[:, :2].float(), 1)[0, 1].numpy()


def labelled_with_nodes(datalist: Path, cases: int | None) -> list[dict]:
    """The first `cases` (None: all) entries of a preprocessed datalist that name their per-node mask; exits with what
    to do."""
    if not datalist.is_file():
        raise SystemExit(f"{datalist} does not exist: give a site folder that `ecefl preprocess` wrote (for site A "
                         "usually the site/ folder `benchmarks/unseen.py` made, whose datalist_test.json it reads)")
    entries = [e for e in json.loads(datalist.read_text()).get("training", []) if e.get("nodes")][:cases]
    if not entries:
        raise SystemExit(f"{datalist} lists no labelled case with a nodes mask; re-run `ecefl preprocess` for that "
                         "site (it writes nodes/ beside labels/)")
    return entries


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--site-a", required=True, type=Path, help="the hospital whose nodes go unfound")
    p.add_argument("--site-b", required=True, type=Path, help="a hospital where the model finds them")
    p.add_argument("--datalist-a", default="datalist_test.json")
    p.add_argument("--datalist-b", default="datalist.json")
    p.add_argument("--cases", type=int, default=10)
    p.add_argument("--fat-beyond-mm", type=float, nargs="*", default=[16.0, 32.0, 48.0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args()
    from scipy import ndimage

    from ecefl.checkpoint import load_model
    from ecefl.engine import largest_component
    model, payload = load_model(args.model)
    model.eval()
    plan = payload["plan"]
    window = plan.hu_window

    def node_probability(img: np.ndarray, mask: np.ndarray) -> float:
        return float(probability_map(model, img, plan)[mask].mean())

    entries = [labelled_with_nodes(site / name, args.cases)
               for site, name in ((args.site_a, args.datalist_a), (args.site_b, args.datalist_b))]
    rng = np.random.default_rng(args.seed)
    fat = in_window(FAT_HU, window)
    rows = []
    for entry_a, entry_b in zip(*entries):
        img_a, nodes_a = on_plan_grid(args.site_a, entry_a, plan)
        img_b, nodes_b = on_plan_grid(args.site_b, entry_b, plan)
        node_a, node_b = largest_component(nodes_a), largest_component(nodes_b)
        row = {"case_a": entry_a["case_id"], "case_b": entry_b["case_id"],
               "a_home": node_probability(img_a, node_a), "b_home": node_probability(img_b, node_b)}
        piece_a, piece_b = cut_out(img_a, node_a), cut_out(img_b, node_b)  # read-only below: each cut once
        for name, piece, (img, nodes) in (("a_in_b", piece_a, (img_b, nodes_b)), ("b_in_a", piece_b, (img_a, nodes_a)),
                                          ("a_in_a", piece_a, (img_a, nodes_a)), ("b_in_b", piece_b, (img_b, nodes_b))):
            moved = paste_into_fat(img, nodes, piece, window, rng)
            row[name] = node_probability(*moved) if moved else None
        distance = ndimage.distance_transform_edt(~node_a, sampling=plan.spacing)
        for d in args.fat_beyond_mm:
            far = (distance > d) & (img_a > in_window(-190, window))  # inside the body: air stays air
            row[f"a_fat_beyond_{d:g}"] = node_probability(np.where(far, fat, img_a), node_a)
        rows.append(row)
        print(" ".join(f"{k} {v:.2f}" for k, v in row.items() if isinstance(v, float)), flush=True)
    keys = [k for k in rows[0] if not k.startswith("case")]
    medians = {k: float(np.median([r[k] for r in rows if r[k] is not None])) for k in keys}
    counts = {k: sum(r[k] is not None for r in rows) for k in keys}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "node_context.json").write_text(json.dumps({"median": medians, "n": counts, "patients": rows},
                                                           indent=1))
    print("median node probability:", ", ".join(f"{k} {v:.2f} (n={counts[k]})" for k, v in medians.items()))


if __name__ == "__main__":
    main()
