"""Re-run the case read-out refit of a finished demo on its trained body, under plan overrides.

    python benchmarks/readout.py --demo workspace/demo --out workspace/readout/std_hu.pt \
        --set readout_standardise=true --set readout_hu_features=true
    python benchmarks/unseen.py --model workspace/readout/std_hu.pt --out workspace/bench_unseen

The refit only re-weights fixed features of the final body (ecefl.readout), so read-out variants can be compared on
one trained body without training again. This runs the product's centralised refit (`readout.refit_model`, whose
solution equals the federated one on the same cases: tests/test_federated.py) on the demo's training split, from
the jointly trained read-out the demo's own refit started from, then chooses the operating threshold on the demo's
pooled validation cases (Youden's J, as the server does) and writes a model file that `ecefl evaluate` / `infer`
read. A body trained without the CT read-out path (`readout_hu_features` off) gets it with zero weights first.
Prints and writes <out>.json: the refit record and the pooled validation AUC / Dice.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))
sys.path.insert(0, str(REPO))


def demo_splits(demo: Path, seed: int, val_fraction: float) -> tuple[list, list]:
    """The training and validation cases of every site of the demo, split as its sites split them."""
    from ecefl.demo import site_splits
    datalists = {d.parent.name: d for d in sorted((demo / "sites").glob("*/datalist.json"))}
    splits = site_splits(datalists, seed, val_fraction).values()
    train, val = [c for t, _ in splits for c in t], [c for _, v in splits for c in v]
    if not train:
        raise SystemExit(f"{demo}/sites/*/datalist.json: no labelled case; is {demo} an `ecefl demo` output?")
    return train, val


def demo_training_split(demo: Path, seed: int | None = None) -> tuple[int, list, list]:
    """(seed, training cases, validation cases) of a demo, with the seed and validation fraction it recorded."""
    config = json.loads((demo / "report" / "summary.json").read_text()).get("config", {})
    seed = seed if seed is not None else int(config.get("seed", 0))
    return (seed, *demo_splits(demo, seed, float(config.get("val_fraction", 0.25))))


def joint_body(demo: Path, overrides: dict):
    """(model, checkpoint) of the demo's final model with its jointly trained read-out restored."""
    import numpy as np
    import torch
    from ecefl import readout as R
    from ecefl.checkpoint import load_checkpoint
    from ecefl.model import DualOutputSwinUNETR
    ckpt = load_checkpoint(demo / "fl" / "ece_finetune" / "global_model.pt", "dual")
    plan = ckpt["plan"].with_overrides(**overrides)
    model = DualOutputSwinUNETR(plan)
    state = dict(ckpt["model"])
    refit = json.loads((demo / "fl" / "ece_finetune" / "pooled_metrics.json").read_text()).get("readout_refit")
    theta = np.asarray(refit["theta_joint"]) if refit else R.theta_from_state(state)
    if plan.readout_hu_features and "readout_hu.weight" not in state:
        fs = plan.feature_size  # theta = (w, [u], b0, case bias): the CT path's weights u start at 0
        state["readout_hu.weight"] = torch.zeros_like(model.readout_hu.weight)
        theta = np.concatenate([theta[:fs], np.zeros(model.readout_hu.weight.numel()), theta[fs:]])
    if plan.readout_fat_hu and "readout_hu.bias" not in state:  # the fat term's bias, after u, starts at 0 too
        state["readout_hu.bias"] = torch.zeros_like(model.readout_hu.bias)
        k = plan.feature_size + model.readout_hu.weight.numel()
        theta = np.concatenate([theta[:k], [0.0], theta[k:]])
    if not plan.readout_fat_hu and "readout_hu.bias" in state:  # the CT path over the whole region: no fat bias
        k = plan.feature_size + state["readout_hu.weight"].numel()
        if abs(float(theta[k])) > 0:
            raise SystemExit("the jointly trained read-out has a fat bias; it cannot be dropped here")
        state.pop("readout_hu.bias")
        theta = np.concatenate([theta[:k], theta[k + 1:]])
    if not plan.readout_hu_features and "readout_hu.weight" in state:
        raise SystemExit("the body was trained with readout_hu_features on; it cannot be turned off here")
    model.load_state_dict(R.state_with_theta(state, theta), strict=True)
    return model, ckpt, plan


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="an `ecefl demo --out` folder")
    p.add_argument("--out", required=True, help="model file to write")
    p.add_argument("--seed", type=int, help="the demo's seed (default: read from its report/summary.json)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="plan override of the refit")
    args = p.parse_args(argv)
    import torch
    from ecefl import metrics as M
    from ecefl.checkpoint import save_checkpoint
    from ecefl.engine import predict_cases
    from ecefl.plan import parse_assignments
    from ecefl.readout import refit_model
    torch.set_num_threads(2)
    demo = Path(args.demo).resolve()
    seed, train, val = demo_training_split(demo, args.seed)
    model, ckpt, plan = joint_body(demo, parse_assignments(args.set))
    record = refit_model(model, train, plan, log=print)
    node_threshold = ckpt.get("node_threshold", 0.5)
    pred = predict_cases(model, val, plan, progress=False, node_threshold=node_threshold)
    threshold = M.youden_threshold(pred["probs"], pred["labels"])
    pooled = M.case_metrics(pred["probs"], pred["labels"], pred["dices"], threshold=threshold)
    extra = {k: v for k, v in ckpt.items() if k not in ("format", "version", "kind", "plan", "model")}
    save_checkpoint(args.out, "dual", plan, model.state_dict(), **{**extra, "threshold": threshold})
    result = {"demo": str(demo), "seed": seed, "overrides": args.set, "refit": record, "threshold": threshold,
              "node_threshold": node_threshold,
              "pooled_validation": {k: pooled.get(k) for k in ("auc", "dice", "n_cases")}}
    Path(args.out + ".json").write_text(json.dumps(M.nan_safe(result), indent=1))
    print(json.dumps(result["pooled_validation"]), f"threshold {threshold:.3f}; model: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
