"""Does MAE pretraining pay off? Fine-tuning from the MAE encoder vs from scratch at 10 / 25 / 100 % of the labels,
scored on a hospital that no pretraining, training or tuning saw (issue #13).

    python benchmarks/mae.py --mode cpu --out workspace/bench_mae     # this 2-core CPU: about 3 hours
    python benchmarks/mae.py --mode tiny --out /tmp/bench_mae_tiny    # the machinery in a few minutes (smoke run)
    python benchmarks/mae.py --mode gpu --out $OUT/mae --deadline-min 6   # one GPU (benchmarks/gpu.sh)

1. Data: `ecefl synth` training hospitals a, b, c (labelled + CT-only patients), preprocessed as a site does; the
   unseen hospital of benchmarks/unseen.py (hospital-d scanner profile, generator seed 101; its test patients).
2. One MAE pretraining (`stages.pretrain`, the engine's Pretrainer) on every CT of the training hospitals, labels
   unused. Its loss per epoch is the curve; "flattened" = the last quarter of the epochs lowered the loss by less
   than FLAT_DROP of its value.
3. Per seed and label fraction, two fine-tunings (`stages.train`) that differ only in where the encoder starts
   (the MAE checkpoint or random): same cases, label subset, crops, steps and plan; then `stages.evaluate` (the
   code a hospital runs) on the unseen hospital.
4. Summary per fraction: AUC and Dice of both arms per seed; ΔAUC and ΔDice (MAE − scratch) with paired
   case-bootstrap 95 % intervals over the same unseen patients; the convergence speed-up = steps scratch took to
   reach its final training segmentation loss (DiceCE, mean over an epoch) / steps the MAE arm took to reach it.
5. `--inits fedmae` (a second call over the same OUT): the same pretraining federated in NVFlare's simulator
   (FedAvg over the three training hospitals, the same total optimiser steps: each site takes a third; see
   federated_schedule), then its fine-tuning arms; the summary adds federated MAE − centralised MAE, paired as above.
6. `--inits maeslow`: the centralised MAE encoder fine-tuned with the encoder at a quarter of the body's learning
   rate (plan encoder_lr_multiplier; MAE fine-tuning recipes keep pretrained layers slower); paired against the
   MAE arm (the same start at one rate) and scratch.
7. `--inits maeunet`: a second centralised pretraining, the same recipe with the whole SwinUNETR decoder
   reconstructing the masked voxels (plan mae_reconstruct "unet"), so fine-tuning starts encoder and decoder from
   it; paired against the MAE arm (encoder only, reconstructed from the deep stages) and scratch.
8. `--inits fedmaeunet`: that whole-U-Net pretraining federated as in 5 (--maeunet-epochs sets both); paired
   against the centralised one and scratch.
9. `--inits <start>refit` (scratchrefit, maeunetrefit, ...): the <start> arm's trained model with its case read-out
   refitted on the same training cases, as `ecefl train` and the demo do after fine-tuning (the other arms leave
   the refit off); it waits for that arm, or reads it back. Paired against the arm itself and across starts.

10. `--resume-pretraining`: a centralised pretraining that stopped short of its epochs (its budget, or a stop)
   continues (`ecefl pretrain --resume`: the saved weights and optimiser state, each epoch's own random stream)
   for another --pretrain-seconds; refused while finished arms in OUT were fine-tuned from the shorter one.

11. `--against OTHER_OUT`: each pretrained start's arms here − the same arms of another run over the same data (the
   same fine-tuning from another pretraining, e.g. a shorter one), pooled over the seeds as in 4: does more
   pretraining change what fine-tuning gets?

Results: OUT/mae.json, OUT/mae.md, OUT/mae_curves.png (pasted into docs/BENCHMARKS.md with the command). Arms run
`--workers` at a time in their own processes; finished arms are kept, so an interrupted run resumes (a
centralised pretraining stopped mid-way, from its last finished epoch).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "custom"), str(REPO), str(REPO / "benchmarks")]

FLAT_DROP = 0.05  # the pretraining loss counts as flattened when its last quarter lowered it by less than 5 %
# The read-out refit is off in every arm: it re-scores every training case by sliding window (minutes per arm on
# a CPU) and refits the last linear layer only, the same way after either start, so it cannot carry an MAE effect.
COMMON = {"readout_refit_iterations": 0}
MODES = {
    # the largest run that fits a working session on 2 cores: 2 arms at a time, one thread each
    "cpu": {"preset": "cpu-small", "cases": 40, "unlabeled": 40, "train_seed": 0, "mae_epochs": 100,
            "mae_iterations": 60, "epochs": 8, "fractions": [10, 25, 100], "seeds": [0, 1, 2], "unseen_patients": 160,
            "unseen_calibration": 40, "workers": 2, "overrides": {}},
    # every stage, arm and summary at the smallest preset; learns nothing
    "tiny": {"preset": "test-tiny", "cases": 4, "unlabeled": 2, "train_seed": 0, "mae_epochs": 2,
             "mae_iterations": 2, "pretrain_seconds": 120, "epochs": 1,
             "fractions": [50, 100], "seeds": [0], "unseen_patients": 6, "unseen_calibration": 0, "workers": 1,
             "overrides": {"sw_overlap": 0.0, "iterations_per_epoch": 2}},
    # one GPU in benchmarks/gpu.sh's ~8 minutes (gpu preset): the pretraining runs as many short epochs as fit
    # its budget (pretrain_seconds of training); 4 processes share the GPU (an arm holds up to ~27 GiB; 8 ran out
    # of an H200's 140 GiB); 100 unseen test patients (the issue's minimum)
    "gpu": {"preset": "gpu", "cases": 40, "unlabeled": 32, "train_seed": 0, "mae_epochs": 400,
            "mae_iterations": 25, "pretrain_seconds": 130, "epochs": 10,
            "fractions": [10, 25, 100], "seeds": [0, 1, 2], "unseen_patients": 140, "unseen_calibration": 40,
            "workers": 4, "overrides": {"iterations_per_epoch": 20, "sw_batch_size": 4}},
}


def training_datalists(out: Path) -> list[Path]:
    """The preprocessed training hospitals' datalists in OUT."""
    return [out / "sites" / n / "datalist.json" for n in ("hospital-a", "hospital-b", "hospital-c")]


def prepare_training_sites(out: Path, cfg: dict, pool=None) -> list[Path]:
    """Synthesise and preprocess hospitals a, b, c (a re-run reuses what exists); pool: preprocess the three
    hospitals side by side."""
    from site_preprocess.synth.generate import synthesize
    lists = training_datalists(out)
    if all(p.is_file() for p in lists):
        return lists
    site_dirs = synthesize(out / "hospitals", 3, cfg["cases"], cfg["unlabeled"], cfg["train_seed"], progress=False,
                           workers=os.cpu_count() or 1)
    jobs = [(site_dir, out / "sites" / site_dir.name, out / "site_keys" / f"{site_dir.name}.key")
            for site_dir in site_dirs]
    list(pool.map(_preprocess_site, *zip(*jobs)) if pool else map(_preprocess_site, *zip(*jobs)))
    return lists


def _preprocess_site(site_dir: Path, dst: Path, key: Path) -> None:
    from site_preprocess.config import SiteConfig
    from site_preprocess.pipeline import run_preprocess
    code = run_preprocess(site_dir / "dicom", site_dir / "labels.csv", dst, SiteConfig(secret_file=str(key)),
                          progress=False)
    if code not in (0, 3):
        raise SystemExit(f"preprocessing {site_dir.name} failed (exit {code}); see {dst}/qc_report.json")


def prepare_unseen(out: Path, cfg: dict) -> Path:
    """benchmarks/unseen.py's hospital and split: the calibration patients stay out, so the test patients are the
    same ones #12's unseen-hospital numbers use."""
    from unseen import prepare_site, split_datalist
    datalist = prepare_site(out / "unseen", cfg["unseen_patients"], 101, 3)
    return split_datalist(datalist, cfg["unseen_calibration"])[1]


@dataclass(frozen=True)
class Pretraining:
    summary_key: str  # its flattening in the summary
    label: str  # in mae.md
    curve: str  # in the curves' legend
    twin: str | None = None  # a federated pretraining: its centralised twin, whose recipe and length it takes
    plan: dict = field(default_factory=dict)  # what it changes in the shipped recipe
    epochs_key: str = "mae_epochs"  # which --*-epochs sets its length

    def encoder(self, name: str) -> str:  # its encoder file in OUT
        return f"{name}/mae_pretrain/global_model.pt" if self.twin else f"{name}/checkpoint.pt"


_UNET = dict(plan={"mae_reconstruct": "unet"}, epochs_key="maeunet_epochs")
PRETRAININGS = {
    "mae": Pretraining("pretraining", "MAE pretraining (centralised)", "centralised"),
    "fedmae": Pretraining("federated_pretraining", "MAE pretraining (federated, NVFlare simulator)",
                          "federated (per site)", twin="mae"),
    "maeunet": Pretraining("unet_pretraining", "MAE pretraining (centralised, whole U-Net decoder)", "whole U-Net",
                           **_UNET),
    "fedmaeunet": Pretraining("federated_unet_pretraining", "MAE pretraining (federated, whole U-Net decoder)",
                              "whole U-Net, federated (per site)", twin="maeunet", **_UNET),
}
INITS = ("scratch", "mae", "fedmae", "maeslow", "maeunet", "fedmaeunet")
REFIT = "refit"  # <start>refit: the <start> arm's model with its read-out refitted (step 9 above)
ARM_INITS = INITS + tuple(init + REFIT for init in INITS)
# where each start's encoder comes from (scratch: nowhere), and what its fine-tuning changes in the plan:
# maeslow = the MAE encoder fine-tuned at a quarter of the body's learning rate (MAE recipes' layer-wise decay)
PRETRAINING = {**{name: name for name in PRETRAININGS}, "maeslow": "mae"}
START_PLAN = {"maeslow": {"encoder_lr_multiplier": 0.25}}


def refitted_start(init: str) -> str | None:
    """The start whose trained arm a refit arm re-fits (None for an arm that trains)."""
    return init[:-len(REFIT)] if init.endswith(REFIT) else None


def pretraining_epochs(name: str, cfg: dict) -> int:
    return cfg.get(PRETRAININGS[name].epochs_key) or cfg["mae_epochs"]


def arm_name(init: str, fraction: int) -> str:
    return f"{init}_{fraction}"


def arm_dir(out: Path, seed: int, init: str, fraction: int) -> Path:
    return out / f"seed{seed}" / arm_name(init, fraction)


def federated_schedule(epochs: int, steps_per_epoch: int, n_sites: int) -> tuple[int, int]:
    """(rounds, steps per site per round) of a federated pretraining whose sites together take about the centralised
    one's epochs x steps_per_epoch optimiser steps: a whole epoch per site per round (epochs / n_sites rounds, the
    fewest messages) unless rounding that misses the total by more than 5 %; then one round per epoch, each site
    taking its share of the epoch's steps."""
    rounds = max(1, round(epochs / n_sites))
    if abs(rounds * n_sites - epochs) <= 0.05 * epochs or steps_per_epoch < n_sites:
        return rounds, steps_per_epoch
    return epochs, round(steps_per_epoch / n_sites)


def _pretrain_federated(name: str, cfg: dict, lists: list[str], out: Path, plan: dict) -> dict:
    """FedAvg MAE over the training hospitals in NVFlare's simulator (the product's mae_pretrain job), with the same
    total optimiser steps as its centralised twin (federated_schedule)."""
    from ecefl.fl.simulate import simulate
    from ecefl.job_kinds import MAE
    sites = {Path(p).parent.name: Path(p) for p in lists}
    rounds, steps = federated_schedule(pretraining_epochs(name, cfg), cfg["mae_iterations"], len(sites))
    t0 = time.perf_counter()
    simulate(sites, MAE, rounds, 1, cfg["preset"], out / name, seed=0, quiet=True, progress=False,
             log=lambda *_: None, **{**plan, **PRETRAININGS[name].plan, "iterations_per_epoch": steps})
    pooled = json.loads((out / name / MAE / "pooled_metrics.json").read_text())
    return {"losses": [r["train_loss"] for r in pooled["rounds"]], "steps_per_epoch": steps,
            "sites": len(sites), "seconds": round(time.perf_counter() - t0, 1)}


def run_task(task: tuple, cfg: dict, lists: list[str], test: str, out: str, threads: int) -> dict:
    """The pretraining (task ("mae",)) or one arm (task (seed, init, fraction)), in its own process."""
    import torch
    torch.set_num_threads(threads)
    from ecefl.stages import pretrain, train
    quiet = dict(progress=False, log=lambda *_: None)
    out = Path(out)
    plan = {**COMMON, **cfg["overrides"], **START_PLAN.get(task[1] if len(task) == 3 else "", {})}
    t0 = time.perf_counter()
    if len(task) == 1 and PRETRAININGS[task[0]].twin:
        return _pretrain_federated(task[0], cfg, lists, out, plan)
    if len(task) == 1:  # a centralised pretraining
        epochs = pretraining_epochs(task[0], cfg)
        finished = out / task[0] / "result.json"  # an earlier call's, when this one runs it on
        before = json.loads(finished.read_text()) if finished.is_file() else {}
        # its loss per epoch in the log as it goes: a run stopped from outside still leaves the curve
        res = pretrain(lists, cfg["preset"], epochs, out / task[0], seed=0, progress=False,
                       log=lambda m: print(f"{task[0]}: {m}", flush=True),
                       budget_seconds=cfg.get("pretrain_seconds"), resume=True,
                       **{**plan, **PRETRAININGS[task[0]].plan, "iterations_per_epoch": cfg["mae_iterations"]})
        resumed = before.get("resumed_after", []) + ([res["resumed_after"]] if res["resumed_after"] else [])
        return {"losses": [e["loss"] for e in res["epochs"]], "steps_per_epoch": res["epochs"][0]["steps"],
                "n_images": res["n_images"], "resumed_after": resumed,
                "seconds": round(res["seconds"] + (before.get("seconds", 0) if res["resumed_after"] else 0), 1)}
    seed, init, fraction = task
    arm = arm_dir(out, seed, init, fraction)
    if refitted_start(init):
        return _refit_arm(task, cfg, lists, test, out, arm)
    pre = PRETRAINING.get(init)
    trained = train(lists, cfg["preset"], cfg["epochs"], arm,
                    init=str(out / PRETRAININGS[pre].encoder(pre)) if pre else None,
                    label_fraction=fraction / 100, val_fraction=0.0, seed=seed, **quiet, **plan)
    return _scored(arm, test, {"n_train": trained["split"]["train"],
                               "seg_loss": [e["seg_loss"] for e in trained["epochs"]],
                               "steps_per_epoch": trained["epochs"][0]["steps"], "train_seconds": trained["seconds"]},
                   t0)


def _scored(arm: Path, test: str, record: dict, t0: float) -> dict:
    """Score the arm's model.pt on the unseen hospital with `ecefl evaluate`'s code; write and return its result."""
    from ecefl.stages import evaluate, write_json
    held = evaluate(arm / "model.pt", [test], arm / "unseen", progress=False, log=lambda *_: None)
    from paired import read
    rows = list(read(str(arm / "unseen" / "predictions.csv")).values())
    result = {"auc": held["auc"], "dice": held["dice"], "ci": held.get("ci"), **record,
              "seconds": round(time.perf_counter() - t0, 1),
              "cases": {"case_id": [r["case_id"] for r in rows], "probability": [float(r["probability"]) for r in rows],
                        "ece": [int(r["ece"]) for r in rows], "dice": [float(r["dice"]) for r in rows]}}
    write_json(arm / "result.json", result)  # replaced, not rewritten: an OUT copied with cp -al stays separate
    return result


def _refit_arm(task: tuple, cfg: dict, lists: list[str], test: str, out: Path, arm: Path) -> dict:
    """A trained arm's model with the product's read-out refit (`readout.refit_model`: the Newton iterations of
    `ecefl train`, the preset's iterations and ridge) on the arm's own training cases. The fine-tuning does not
    depend on the refit that follows it, so this is the arm as it would have trained with the refit on."""
    from ecefl.checkpoint import load_model, node_threshold_of, save_checkpoint
    from ecefl.plan import get_plan
    from ecefl.readout import refit_model
    from ecefl.stages import training_split
    seed, init, fraction = task
    t0 = time.perf_counter()
    base_dir = arm_dir(out, seed, refitted_start(init), fraction)
    if not (base_dir / "result.json").is_file():
        raise FileNotFoundError(f"{base_dir}: that arm has not finished; run it first "
                                f"(--inits {refitted_start(init)} {init})")
    base = json.loads((base_dir / "result.json").read_text())
    model, payload = load_model(base_dir / "model.pt", kind="dual")
    # the preset's refit; test-tiny has none, so the learning presets' count
    iterations = get_plan(cfg["preset"]).readout_refit_iterations or get_plan("cpu-small").readout_refit_iterations
    plan = payload["plan"].with_overrides(readout_refit_iterations=iterations)
    train_items, _ = training_split(lists, fraction / 100, 0.0, seed)
    if len(train_items) != base["n_train"]:
        raise RuntimeError(f"{base_dir}: {len(train_items)} training cases now, {base['n_train']} when it trained")
    record = refit_model(model, train_items, plan, log=lambda *_: None)
    save_checkpoint(arm / "model.pt", "dual", plan, model.state_dict(), threshold=payload.get("threshold", 0.5),
                    node_threshold=node_threshold_of(payload),
                    trained={**payload.get("trained", {}), "readout_refit": True})
    return _scored(arm, test, {**{k: base[k] for k in ("n_train", "seg_loss", "steps_per_epoch", "train_seconds")},
                               "refit_loss": [record["loss"][0], record["loss"][-1]],
                               "refit_seconds": round(time.perf_counter() - t0, 1)}, t0)


def run_all(cfg: dict, lists: list[Path], test: Path, out: Path, workers: int, deadline: float | None,
            inits=("scratch", "mae"), log=print, on_result=None, resume_pretraining: bool = False) -> dict:
    """Each pretraining first with the scratch arms beside it; a pretrained start's arms once its encoder is there.
    Every finished arm and pretraining in OUT is read back, whichever call ran it. on_result(results): after each
    finished task. resume_pretraining: a centralised pretraining short of its epochs runs on (step 10)."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    import multiprocessing
    from ecefl.stages import write_json
    results = {"arms": {}, "failed": {}}
    for pre in PRETRAININGS:
        if (out / pre / "result.json").is_file():
            results[pre] = json.loads((out / pre / "result.json").read_text())
    if resume_pretraining:
        for pre in _resumable(results, cfg, inits):
            fine_tuned = sorted(str(d.relative_to(out)) for init in ARM_INITS
                                if PRETRAINING.get(refitted_start(init) or init) == pre
                                for d in out.glob(f"seed*/{init}_*") if (d / "result.json").is_file())
            if fine_tuned:
                raise SystemExit(f"{out / pre} cannot run on: {', '.join(fine_tuned)} were fine-tuned from it as it "
                                 "is; copy the data and the pretraining into a new --out (cp -al {hospitals,sites,"
                                 f"site_keys,unseen,{pre}}} NEW/: a resumed pretraining replaces its files, never "
                                 "rewrites them, so hard links are safe) and resume there")
            log(f"{pre} pretraining: resuming after epoch {len(results[pre]['losses'])}")
            del results[pre]
    todo = []
    for seed in cfg["seeds"]:
        for fraction in cfg["fractions"]:
            for init in ARM_INITS:
                done = arm_dir(out, seed, init, fraction) / "result.json"
                if done.is_file():
                    results["arms"][f"{seed}/{arm_name(init, fraction)}"] = json.loads(done.read_text())
                elif init in inits:
                    todo.append((seed, init, fraction))
    pretrainings = [(pre,) for pre in PRETRAININGS if pre not in results
                    and any(PRETRAINING.get(i) == pre for i in inits)]
    # a pretrained start waits for its pretraining, a refit arm for the arm it refits
    waiting = [t for t in todo if (PRETRAINING.get(t[1]),) in pretrainings or _refitted_task(t) in todo]
    ready = pretrainings + [t for t in todo if t not in waiting]
    threads = max(1, (os.cpu_count() or 2) // workers)
    args = (cfg, [str(p) for p in lists], str(test), str(out), threads)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {}

        def submit_ready():
            while ready and len(running) < workers and (deadline is None or time.time() < deadline):
                task = ready.pop(0)
                running[pool.submit(run_task, task, *args)] = task

        def release(tasks):
            for t in tasks:
                waiting.remove(t)
            # pairs in (seed, fraction) order, so a deadline leaves the fewest unpaired arms
            ready[:] = sorted(ready + tasks, key=lambda t: (0,) if len(t) == 1  # pretrainings still queued first
                              else (1, t[0], t[2], ARM_INITS.index(t[1])))

        submit_ready()
        while running:
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                task = running.pop(fut)
                name = f"{task[0]} pretraining" if len(task) == 1 else f"{task[0]}/{arm_name(task[1], task[2])}"
                try:
                    res = fut.result()
                except Exception as exc:  # one failed arm must not lose the others
                    results["failed"][name] = f"{type(exc).__name__}: {exc}"[-2000:]
                    log(f"{name}: FAILED {results['failed'][name][:800]}")
                    continue
                if len(task) == 1:
                    write_json(out / task[0] / "result.json", res)
                    results[task[0]] = res
                    log(f"{name} done: L1 {res['losses'][0]:.4f} -> {res['losses'][-1]:.4f} "
                        f"({res['seconds'] / 60:.1f} min)")
                    # pairs in (seed, fraction) order, so a deadline leaves the fewest unpaired arms
                    release([t for t in waiting if PRETRAINING.get(t[1]) == task[0]])
                    continue
                results["arms"][name] = res
                release([t for t in waiting if _refitted_task(t) == task])
                log(f"{name}: unseen AUC {res['auc']:.3f}, Dice {res['dice']:.3f} ({res['seconds']:.0f}s)")
            if on_result:
                on_result(results)
            submit_ready()
    if ready:
        log(f"deadline reached; not run: {', '.join(str(t) for t in ready)}")
    if waiting:
        log(f"not run, what they wait for did not finish: {', '.join(str(t) for t in waiting)}")
    return results


def _resumable(results: dict, cfg: dict, inits) -> list[str]:
    """The finished centralised pretraining(s) that --inits use and that stopped short of their epochs."""
    return [pre for pre, spec in PRETRAININGS.items() if pre in results and not spec.twin
            and any(PRETRAINING.get(refitted_start(i) or i) == pre for i in inits)
            and len(results[pre]["losses"]) < pretraining_epochs(pre, cfg)]


def _refitted_task(task: tuple) -> tuple | None:
    start = len(task) == 3 and refitted_start(task[1])
    return (task[0], start, task[2]) if start else None


def paired_differences(a: dict, b: dict, n_boot: int = 2000, seed: int = 0) -> dict:
    """AUC(a) − AUC(b) and mean Dice(a) − mean Dice(b) on the same patients, each with a paired case-bootstrap 95 %
    interval (the same resamples for both)."""
    return pooled_differences([(a, b)], n_boot, seed)


def pooled_differences(pairs: list[tuple[dict, dict]], n_boot: int = 2000, seed: int = 0) -> dict:
    """The mean over pairs (one per seed, all scored on the same patients) of ΔAUC and ΔDice, with a case-bootstrap
    95 % interval: each draw resamples the patients once and recomputes every pair's difference on them. It holds
    the uncertainty of which patients were drawn; the spread over seeds is reported beside it."""
    from quality import _auc_rows
    ids = pairs[0][0]["cases"]["case_id"]
    assert all(a["cases"]["case_id"] == ids == b["cases"]["case_id"] for a, b in pairs), \
        "arms scored on different patients"
    y = np.array(pairs[0][0]["cases"]["ece"])
    idx = np.random.default_rng(seed).integers(0, len(y), (n_boot, len(y)))
    d_auc, d_dice, point_auc, point_dice = 0.0, 0.0, 0.0, 0.0
    for a, b in pairs:
        pa, pb = np.array(a["cases"]["probability"]), np.array(b["cases"]["probability"])
        da, db = np.array(a["cases"]["dice"]), np.array(b["cases"]["dice"])
        d_auc = d_auc + (_auc_rows(pa[idx], y[idx]) - _auc_rows(pb[idx], y[idx])) / len(pairs)
        d_dice = d_dice + (da[idx] - db[idx]).mean(1) / len(pairs)
        point_auc += float(_auc_rows(pa[None], y[None])[0] - _auc_rows(pb[None], y[None])[0]) / len(pairs)
        point_dice += float((da - db).mean()) / len(pairs)
    d_auc = d_auc[np.isfinite(d_auc)]
    return {"auc": point_auc, "auc_ci": [float(v) for v in np.percentile(d_auc, [2.5, 97.5])],
            "dice": point_dice, "dice_ci": [float(v) for v in np.percentile(d_dice, [2.5, 97.5])],
            "n_cases": int(len(y)), "n_pairs": len(pairs)}


def steps_to_reach(seg_loss: list[float], target: float, steps_per_epoch: int) -> int | None:
    """Optimiser steps until the epoch-mean training segmentation loss first reaches target (None: never)."""
    for epoch, value in enumerate(seg_loss, start=1):
        if value <= target + 1e-12:
            return epoch * steps_per_epoch
    return None


def flattening(losses: list[float]) -> dict:
    """How much the last quarter of the pretraining lowered the loss (smoothed over 5 % of the epochs); fewer than
    8 epochs or rounds cannot tell (flattened None)."""
    x = np.asarray(losses, float)
    if len(x) < 8:
        return {"first": float(x[0]), "last": float(x[-1]), "last_quarter_drop": None, "flattened": None}
    k = max(1, len(x) // 20)
    smooth = np.convolve(x, np.ones(k) / k, mode="valid")
    at_three_quarters, at_end = smooth[int(0.75 * (len(smooth) - 1))], smooth[-1]
    drop = float((at_three_quarters - at_end) / at_three_quarters) if at_three_quarters > 0 else 0.0
    return {"first": float(x[0]), "last": float(smooth[-1]), "last_quarter_drop": drop, "flattened": drop < FLAT_DROP}


COMPARISONS = {"mae_vs_scratch": ("mae", "scratch"), "fedmae_vs_mae": ("fedmae", "mae"),
               "fedmae_vs_scratch": ("fedmae", "scratch"), "maeslow_vs_mae": ("maeslow", "mae"),
               "maeslow_vs_scratch": ("maeslow", "scratch"), "maeunet_vs_mae": ("maeunet", "mae"),
               "maeunet_vs_scratch": ("maeunet", "scratch"), "fedmaeunet_vs_maeunet": ("fedmaeunet", "maeunet"),
               "fedmaeunet_vs_scratch": ("fedmaeunet", "scratch"),
               "scratchrefit_vs_scratch": ("scratchrefit", "scratch"),
               "maeunetrefit_vs_maeunet": ("maeunetrefit", "maeunet"),
               "maeunetrefit_vs_scratchrefit": ("maeunetrefit", "scratchrefit")}


def summarise(results: dict, cfg: dict) -> dict:
    return {**{pre.summary_key: flattening(results[name]["losses"]) if results.get(name) else None
               for name, pre in PRETRAININGS.items()},
            **{name: compare(results, cfg, *pair) for name, pair in COMPARISONS.items()}}


def compare(results: dict, cfg: dict, start: str, baseline: str) -> dict:
    """Per fraction and seed: both starts' unseen AUC/Dice, the paired differences (start − baseline), and the
    steps the start took to reach the baseline's final training segmentation loss."""
    per_fraction = {}
    mean = (lambda vals: float(np.mean(vals)) if vals else None)
    # a refit arm against the arm it refits: one fine-tuning, so no speed-up to speak of
    same_training = refitted_start(start) == baseline
    for fraction in cfg["fractions"]:
        rows, pairs = [], []
        for seed in cfg["seeds"]:
            a = results["arms"].get(f"{seed}/{arm_name(start, fraction)}")
            b = results["arms"].get(f"{seed}/{arm_name(baseline, fraction)}")
            if not (a and b):
                continue
            a_steps = steps_to_reach(a["seg_loss"], b["seg_loss"][-1], a["steps_per_epoch"])
            b_steps = len(b["seg_loss"]) * b["steps_per_epoch"]
            pairs.append((a, b))
            rows.append({"seed": seed, "n_train": a["n_train"], "auc": [a["auc"], b["auc"]],
                         "dice": [a["dice"], b["dice"]], "difference": paired_differences(a, b, seed=seed),
                         "steps_to_baseline_final_seg_loss": [a_steps, b_steps],
                         "speedup": b_steps / a_steps if a_steps and not same_training else None})
        if rows:
            per_fraction[str(fraction)] = {
                "per_seed": rows, "mean_auc_difference": mean([r["difference"]["auc"] for r in rows]),
                "mean_dice_difference": mean([r["difference"]["dice"] for r in rows]),
                # over the seeds whose start reached the baseline's loss; the others are counted, not averaged
                "mean_speedup": mean([r["speedup"] for r in rows if r["speedup"]]),
                "speedup_seeds": sum(1 for r in rows if r["speedup"]),
                # the per-fraction claim: the mean over seeds with one interval, and how far the seeds spread
                "pooled": {**pooled_differences(pairs),
                           "auc_sd_over_seeds": float(np.std([r["difference"]["auc"] for r in rows], ddof=1))
                           if len(rows) > 1 else None}}
    return per_fraction


def against(results: dict, other: dict) -> dict:
    """--against: each pretrained start's arms here − the same-named arms of another OUT (the same fine-tuning, seeds,
    label fractions and unseen patients, from another pretraining, e.g. a shorter one), pooled over the seeds as in
    compare; with both pretrainings' optimiser steps and final loss. Starts without a pretraining (scratch) are the
    same run on both sides and are left out."""
    block = {"other": other.get("command"), "per_start": {}}
    for init in ARM_INITS:
        pre = PRETRAINING.get(refitted_start(init) or init)
        if not pre or not (results.get(pre) and other.get(pre)):
            continue
        for fraction in results["config"]["fractions"]:
            pairs = [(results["arms"][key], other["arms"][key]) for seed in results["config"]["seeds"]
                     if (key := f"{seed}/{arm_name(init, fraction)}") in results["arms"] and key in other["arms"]]
            if any(a["cases"]["case_id"] != b["cases"]["case_id"] for a, b in pairs):
                raise SystemExit(f"--against: {arm_name(init, fraction)} was scored on other patients there; pair "
                                 "runs over the same data (copy the other OUT's hospitals/ and unseen/ first)")
            if pairs:
                block["per_start"][arm_name(init, fraction)] = {
                    "seeds": len(pairs), "auc": [float(np.mean([a["auc"] for a, _ in pairs])),
                                                 float(np.mean([b["auc"] for _, b in pairs]))],
                    "dice": [float(np.mean([a["dice"] for a, _ in pairs])),
                             float(np.mean([b["dice"] for _, b in pairs]))],
                    "pretraining_steps": [len(results[pre]["losses"]) * results[pre]["steps_per_epoch"],
                                          len(other[pre]["losses"]) * other[pre]["steps_per_epoch"]],
                    "pretraining_final_loss": [results[pre]["losses"][-1], other[pre]["losses"][-1]],
                    "pooled": pooled_differences(pairs)}
    return block


def _against_lines(block: dict) -> list[str]:
    lines = ["", f"**This run − the same arms of another run** (`{block['other']}`)", "",
             "| arm | seeds | pretraining steps (this / other) | final L1 | mean AUC | mean ΔAUC [95 % CI] | mean Dice | "
             "mean ΔDice [95 % CI] |", "|---|---|---|---|---|---|---|---|"]
    for arm, r in block["per_start"].items():
        p = r["pooled"]
        lines.append(f"| {arm} | {r['seeds']} | {r['pretraining_steps'][0]} / {r['pretraining_steps'][1]} | "
                     f"{r['pretraining_final_loss'][0]:.4f} / {r['pretraining_final_loss'][1]:.4f} | "
                     f"{r['auc'][0]:.3f} / {r['auc'][1]:.3f} | {p['auc']:+.3f} [{p['auc_ci'][0]:+.3f}, "
                     f"{p['auc_ci'][1]:+.3f}] | {r['dice'][0]:.3f} / {r['dice'][1]:.3f} | {p['dice']:+.3f} "
                     f"[{p['dice_ci'][0]:+.3f}, {p['dice_ci'][1]:+.3f}] |")
    return lines


def _pretraining_line(label: str, pre: dict, flat: dict, cfg: dict) -> str:
    where = f"{pre['sites']} sites, FedAvg" if "sites" in pre else f"{pre['n_images']} CTs of the training hospitals"
    unit = "rounds" if "sites" in pre else "epochs"
    return (f"{label}: {where}, preset {cfg['preset']}, {len(pre['losses'])} {unit} × {pre['steps_per_epoch']} "
            f"steps, {pre['seconds'] / 60:.1f} min; masked-voxel L1 {flat['first']:.4f} → {flat['last']:.4f}; "
            + ("too few epochs to tell whether it flattened." if flat["flattened"] is None else
               f"the last quarter lowered it by {100 * flat['last_quarter_drop']:.1f} % "
               f"({'flattened' if flat['flattened'] else 'not flattened'}: < {100 * FLAT_DROP:.0f} % counts as flat)."))


def markdown(results: dict, summary: dict) -> str:
    cfg = results["config"]
    call = results.get("call_seconds")
    lines = [f"Command: `{results['command']}` — {results['date']}, {results['machine']}, wall "
             f"{results['wall_seconds'] / 60:.1f} min over this folder"
             + (f" ({call / 60:.1f} min this call)." if call is not None else "."), ""]
    for key, pre in PRETRAININGS.items():
        if results.get(key):
            lines += [_pretraining_line(pre.label, results[key], summary[pre.summary_key], cfg), ""]
    lines.append(f"Fine-tuning: {cfg['epochs']} epochs per arm; unseen hospital: {results['unseen_cases']} patients.")
    sign = (lambda v: "–" if v is None else f"{v:+.3f}")
    for name, (start, baseline) in COMPARISONS.items():
        blocks = summary[name]
        if not blocks:
            continue
        lines += ["", f"**{start} − {baseline}**", "",
                  f"| labels | seed | n train | AUC {start} / {baseline} | ΔAUC [95 % CI] | Dice {start} / {baseline} | "
                  f"ΔDice [95 % CI] | steps to {baseline}'s final seg loss ({start} / {baseline}) |",
                  "|---|---|---|---|---|---|---|---|"]
        for fraction, block in blocks.items():
            for r in block["per_seed"]:
                d, st = r["difference"], r["steps_to_baseline_final_seg_loss"]
                lines.append(f"| {fraction} % | {r['seed']} | {r['n_train']} | {r['auc'][0]:.3f} / {r['auc'][1]:.3f} | "
                             f"{d['auc']:+.3f} [{d['auc_ci'][0]:+.3f}, {d['auc_ci'][1]:+.3f}] | {r['dice'][0]:.3f} / "
                             f"{r['dice'][1]:.3f} | {d['dice']:+.3f} [{d['dice_ci'][0]:+.3f}, {d['dice_ci'][1]:+.3f}] | "
                             f"{st[0] or 'not reached'} / {st[1]} |")
        lines += ["", "| labels | seeds | mean ΔAUC [95 % CI] | sd of ΔAUC over seeds | mean ΔDice [95 % CI] | "
                  "mean speed-up |", "|---|---|---|---|---|---|"]
        for fraction, block in blocks.items():
            speed, pooled = block["mean_speedup"], block["pooled"]
            sd, n_seeds = pooled["auc_sd_over_seeds"], len(block["per_seed"])
            reached = block["speedup_seeds"]
            speed_text = "–" if speed is None else f"{speed:.2f}×" + (
                f" ({n_seeds - reached} of {n_seeds} seeds did not reach it)" if reached < n_seeds else "")
            lines.append(f"| {fraction} % | {n_seeds} | {sign(pooled['auc'])} "
                         f"[{pooled['auc_ci'][0]:+.3f}, {pooled['auc_ci'][1]:+.3f}] | {'–' if sd is None else f'{sd:.3f}'} "
                         f"| {sign(pooled['dice'])} [{pooled['dice_ci'][0]:+.3f}, {pooled['dice_ci'][1]:+.3f}] | "
                         f"{speed_text} |")
    if results.get("against", {}).get("per_start"):
        lines += _against_lines(results["against"])
    for name, why in results.get("failed", {}).items():
        lines.append(f"\nFAILED {name}: {why.splitlines()[0][:300]}")
    return "\n".join(lines) + "\n"


def curves_plot(results: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for key, meta in PRETRAININGS.items():
        if results.get(key):
            pre = results[key]
            axes[0].plot(np.arange(1, len(pre["losses"]) + 1) * pre["steps_per_epoch"], pre["losses"],
                         label=meta.curve)
    axes[0].set(title="MAE pretraining: masked-voxel L1", xlabel="optimiser steps", ylabel="L1 (HU window units)")
    axes[0].legend(fontsize=7)
    colours = {"mae": "tab:green", "scratch": "tab:red", "fedmae": "tab:blue", "maeslow": "tab:olive",
               "maeunet": "tab:purple", "fedmaeunet": "tab:pink"}
    for name, arm in sorted(results["arms"].items()):
        init, fraction = name.split("/")[1].split("_")
        if refitted_start(init):  # the same fine-tuning as the arm it refits
            continue
        steps = np.arange(1, len(arm["seg_loss"]) + 1) * arm["steps_per_epoch"]
        style = {"10": ":", "25": "--"}.get(fraction, "-")
        axes[1].plot(steps, arm["seg_loss"], style, color=colours[init], alpha=0.7,
                     label=f"{init} {fraction} %" if name.startswith(f"{sorted(results['arms'])[0].split('/')[0]}/")
                     else None)
    axes[1].set(title="fine-tuning: training segmentation loss (DiceCE)", xlabel="optimiser steps")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(results: dict, out: Path, show: bool = True) -> dict:
    summary = summarise(results, results["config"])
    results["summary"] = summary
    (out / "mae.json").write_text(json.dumps(results, indent=1))
    md = markdown(results, summary)
    (out / "mae.md").write_text(md)
    curves_plot(results, out / "mae_curves.png")
    if show:
        print(md)
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=sorted(MODES), default="cpu")
    p.add_argument("--out", default="workspace/bench_mae")
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--fractions", type=int, nargs="+", default=None, help="label percentages (default: the mode's)")
    p.add_argument("--inits", nargs="+", choices=ARM_INITS, default=["scratch", "mae"],
                   help="which starts to run (fedmae: the pretraining federated in NVFlare's simulator; maeslow: "
                        "the MAE encoder fine-tuned at a quarter of the body's learning rate; maeunet: the whole "
                        "SwinUNETR decoder reconstructs and is transferred; fedmaeunet: that one federated; "
                        "<start>refit: that start's arm with the read-out refitted)")
    p.add_argument("--mae-epochs", type=int, default=None)
    p.add_argument("--maeunet-epochs", type=int, default=None,
                   help="epochs of the whole-U-Net pretraining (default: --mae-epochs); a step costs ~5x the "
                        "encoder-only one, so the same wall time is about a fifth of the epochs")
    p.add_argument("--pretrain-seconds", type=float, default=None,
                   help="stop each centralised pretraining after the epoch that ends past this much training time")
    p.add_argument("--resume-pretraining", action="store_true",
                   help="a centralised pretraining that stopped short of its epochs runs on for --pretrain-seconds "
                        "more (refused while arms in OUT were fine-tuned from it)")
    p.add_argument("--against", metavar="OTHER_OUT", default=None,
                   help="also pair each pretrained start's arms with the same arms of another OUT over the same data "
                        "(e.g. a shorter pretraining): OTHER_OUT/mae.json")
    p.add_argument("--workers", type=int, default=None, help="arms at a time, each in its own process")
    p.add_argument("--deadline-min", type=float, default=None,
                   help="start nothing new after this many minutes; the summary covers what finished")
    args = p.parse_args(argv)
    cfg = dict(MODES[args.mode], mode=args.mode)
    cfg.update({k: v for k, v in (("seeds", args.seeds), ("fractions", args.fractions),
                                  ("mae_epochs", args.mae_epochs), ("maeunet_epochs", args.maeunet_epochs),
                                  ("pretrain_seconds", args.pretrain_seconds)) if v})
    workers = args.workers or cfg["workers"]
    other = None  # read before any data is made: a wrong path fails at once
    if args.against:
        other_json = Path(args.against) / "mae.json"
        if not other_json.is_file():
            raise SystemExit(f"--against {args.against}: no mae.json there (a finished mae.py run's OUT)")
        other = json.loads(other_json.read_text())

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = out / "started_at"  # wall time from the first run over this folder (resumes included); t0: this call
    if not started.is_file():
        started.write_text(str(time.time()))
    deadline = time.time() + 60 * args.deadline_min if args.deadline_min is not None else None
    t0 = time.perf_counter()
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:  # the data side by side
        unseen = pool.submit(prepare_unseen, out, cfg)
        lists = prepare_training_sites(out, cfg, pool)
        test = unseen.result()
    from ecefl.data import load_datalist
    unseen_cases = len(load_datalist(test)[0])
    print(f"data ready in {time.perf_counter() - t0:.0f}s: {unseen_cases} unseen test patients; {workers} "
          f"process(es) at a time", flush=True)
    import platform
    import torch
    meta = dict(config=cfg, unseen_cases=unseen_cases, date=time.strftime("%Y-%m-%d"),
                command="python benchmarks/mae.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                machine=f"{platform.machine()} {os.cpu_count()} CPUs"
                + (f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"))

    def outputs(res: dict, show: bool = False) -> None:  # rewritten after every finished task
        res.update(meta, wall_seconds=round(time.time() - float(started.read_text()), 1),
                   call_seconds=round(time.perf_counter() - t0, 1))
        if other is not None:
            res["against"] = against(res, other)
        write_outputs(res, out, show)

    results = run_all(cfg, lists, test, out, workers, deadline, inits=args.inits, log=lambda m: print(m, flush=True),
                      on_result=outputs, resume_pretraining=args.resume_pretraining)
    outputs(results, show=True)
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
