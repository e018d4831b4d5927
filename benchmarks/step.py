"""Throughput (voxels/s) and peak memory of one fine-tuning step (forward + backward + AdamW), any preset/device.

    python benchmarks/step.py --preset cpu-small --steps 5 [--set cpu_bf16=false] [--threads 1] [--batch 1] [--set F=V ...]
    python benchmarks/step.py --preset gpu --steps 20 [--compile]       # on a GPU: bf16 autocast from the plan

The step is the engine's: DualOutputSwinUNETR, MONAI DiceCE + BCE on the pooled logit, the plan's batch size (or
`--batch`) and patch size, autocast when the plan asks for AMP on CUDA. Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "custom"))


def measure(preset: str, steps: int, compile_model: bool = False, cpu_bf16: bool = False,
            batch_size: int | None = None, overrides: dict | None = None) -> dict:
    import numpy as np
    import torch
    from monai.losses import DiceCELoss

    from ecefl.engine import cpu_has_bf16_matrix_units, device, model_precision, uses_bf16
    from ecefl.model import DualOutputSwinUNETR, compute_layout
    from ecefl.plan import get_plan

    plan = get_plan(preset, **{"cpu_bf16": cpu_bf16 or None, "batch_size": batch_size, **(overrides or {})})
    dev = device()
    torch.manual_seed(0)
    model = DualOutputSwinUNETR(plan).to(dev)
    step_model = torch.compile(model) if compile_model else model
    opt = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate)
    seg_loss, cls_loss = DiceCELoss(to_onehot_y=True, softmax=True), torch.nn.BCEWithLogitsLoss()
    x = torch.rand(plan.batch_size, 1, *plan.patch_size, device=dev)
    y = (torch.rand(plan.batch_size, 1, *plan.patch_size, device=dev) > 0.99).float()
    target = torch.ones(plan.batch_size, 1, device=dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    # the engine's layout: channels-last weights while training when plan.channels_last
    with compute_layout(model, plan):
        for i in range(steps + 2):  # two warm-up steps (allocator, cuDNN autotune, compilation)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with model_precision(plan, dev):
                seg, logit, _ = step_model(x, region_mask=y > 0)
                loss = seg_loss(seg.float(), y) + cls_loss(logit.float().view(-1, 1), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            if i >= 2:
                times.append(time.perf_counter() - t0)
    voxels = plan.batch_size * int(np.prod(plan.patch_size))
    step_s = float(np.median(times))
    out = {"preset": preset, "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
           "channels_last": plan.channels_last,
           "threads": torch.get_num_threads(), "amp_bf16": uses_bf16(plan, dev),
           "cpu_bf16_matrix_units": cpu_has_bf16_matrix_units(),
           "compile": compile_model, "batch": plan.batch_size, "patch": list(plan.patch_size),
           "feature_size": plan.feature_size, "overrides": {k: str(v) for k, v in (overrides or {}).items()},
           "params": sum(p.numel() for p in model.parameters()),
           "steps": steps, "step_s_median": round(step_s, 4), "voxels_per_s": int(voxels / step_s),
           "peak_host_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if dev.type == "cuda":
        out["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cpu-bf16", action="store_true",
                   help="bf16 autocast on the CPU (the plan's cpu_bf16; cpu-small's default, `--set cpu_bf16=false` for "
                        "fp32). It runs only on a CPU with bf16 matrix units (AMX): see amp_bf16 in the output")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--batch", type=int, default=None, help="batch size (default: the preset's)")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="plan_set",
                   help="any plan field, as `ecefl --set` (e.g. num_heads=[1,2,4,8]); repeatable")
    args = p.parse_args(argv)
    if args.threads:
        import torch
        torch.set_num_threads(args.threads)
    from ecefl.plan import parse_assignments
    print(json.dumps(measure(args.preset, args.steps, args.compile, args.cpu_bf16, args.batch,
                             parse_assignments(args.plan_set))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
