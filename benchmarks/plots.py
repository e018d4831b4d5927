"""The benchmark figures beside docs/BENCHMARKS.md, drawn from measured artifacts only (issue: benchmarks).

    python benchmarks/plots.py --learning workspace/bench/run_h/metrics.json \
        [--pooled RUN/ece_finetune/pooled_metrics.json] --speed workspace/bench_speed/speed.json --out docs

learning_curves.png: per-epoch training losses of a centralised run (`ecefl train` metrics.json) and, if given,
the pooled validation AUC/Dice per round of a federated run (pooled_metrics.json). speed_ratios.png: each
measured ratio of benchmarks/speed.py against its target. (The held-out ROC is drawn by quality.py.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def learning_curves(metrics: Path, pooled: Path | None, out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = json.loads(metrics.read_text())["epochs"]
    panels = 2 if pooled else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    ax = axes[0, 0]
    x = [e["epoch"] for e in epochs]
    for key, label in (("loss", "total"), ("seg_loss", "segmentation (DiceCE)"), ("cls_loss", "classification")):
        ax.plot(x, [e[key] for e in epochs], marker="o", ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.set_title(f"centralised: {metrics.parent.name}")
    ax.legend(fontsize=8)
    if pooled:
        report = json.loads(pooled.read_text())
        rounds = [r for r in report["rounds"] if r.get("pooled")]
        ax = axes[0, 1]
        for key in ("auc", "dice"):
            ax.plot([r["round"] for r in rounds], [r["pooled"].get(key) for r in rounds], marker="o", ms=3,
                    label=f"pooled {key.upper() if key == 'auc' else 'Dice'}")
        ax.set_ylim(0, 1)
        ax.set_xlabel("round (validation of the global model the round started from)")
        ax.set_title(f"federated: {pooled.parent.parent.name}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "learning_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def speed_ratios(speed: Path, out: Path) -> Path:
    """Each measured ratio against its target: green where the target is met, red where it is not."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    s = json.loads(speed.read_text())
    rows = []  # (label, value, target, higher_is_better)
    if "preprocess" in s:
        rows.append(("preprocessing speed-up vs rt-utils", s["preprocess"]["speedup"], 2.0, True))
    if "overhead" in s:
        o = s["overhead"]
        rows.append(("client / central training time", o["client_vs_central_train"], 1.05, False))
        if "framework_fraction_of_train" in o:
            rows.append(("framework share of a round / training", o["framework_fraction_of_train"], 0.05, False))
    if "bytes" in s:
        for preset in ("cpu-small", "gpu"):
            if preset in s["bytes"]:
                rows.append((f"fp16 bytes / fp32 bytes ({preset})", s["bytes"][preset]["fp16_cast_ratio"], 0.5, False))
    if "rss" in s:
        for name, proc in s["rss"]["processes"].items():
            if name != "driver" and proc["peak_first_fifth_mib"] > 100:  # the processes that hold a model
                rows.append((f"RSS growth, 2nd → last fifth of {s['rss']['rounds']} rounds, {name.split(' (')[0]}",
                             proc.get("growth_second_to_last_fifth", proc["growth"]), 0.05, False))
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
    for i, (label, value, target, higher) in enumerate(rows):
        met = value >= target if higher else value <= target
        ax.barh(i, value, color="tab:green" if met else "tab:red", alpha=0.7)
        ax.plot([target, target], [i - 0.4, i + 0.4], "k-", lw=2)
        ax.text(value, i, f" {value:g} (target {'≥' if higher else '≤'} {target:g})", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("measured ratio (black bar: target)")
    ax.set_title(f"benchmarks/speed.py, {s.get('date', '')}, {s.get('machine', {}).get('cpus', '?')} CPUs")
    fig.tight_layout()
    path = out / "speed_ratios.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--learning", type=Path, help="metrics.json of an `ecefl train` run")
    p.add_argument("--pooled", type=Path, help="pooled_metrics.json of a federated ece_finetune run")
    p.add_argument("--speed", type=Path, help="speed.json of benchmarks/speed.py")
    p.add_argument("--out", type=Path, default=Path("docs"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for given, draw in ((args.learning, lambda: learning_curves(args.learning, args.pooled, args.out)),
                        (args.speed, lambda: speed_ratios(args.speed, args.out))):
        if given:
            if not given.is_file():
                print(f"error: {given} does not exist", file=sys.stderr)
                return 2
            print(draw())
    return 0


if __name__ == "__main__":
    sys.exit(main())
