"""Centralised stages (`ecefl pretrain|train|evaluate`): each reads files and writes the artifact of its stage."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .checkpoint import (CheckpointError, load_checkpoint, load_model, node_threshold_of, save_atomically,
                         save_checkpoint)
from .data import DataError, label_subset, load_datalists, stratified_split
from .engine import FineTuner, Pretrainer, evaluate_cases, predict_cases, seed_everything, write_predictions
from .model import DualOutputSwinUNETR, MaskedPretrainer, load_encoder
from .plan import Plan, get_plan, plan_from_pretraining

_log = logging.getLogger(__name__)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(M.nan_safe(obj), indent=1, allow_nan=False))
    tmp.replace(path)


def init_encoder(model: DualOutputSwinUNETR, init_path, log=_log.info) -> Plan:
    payload = load_checkpoint(init_path)
    load_encoder(model, payload["model"], str(init_path), log=log)
    return payload["plan"]


PRETRAIN_STATE = "pretrain_state.pt"  # the optimiser beside checkpoint.pt; site-local, never shared (see below)
STATE_FORMAT = "ecefl-pretrain-state"


def pretrain(datalists, preset: str, epochs: int, out, seed: int = 0, progress: bool = True, log=_log.info,
             budget_seconds: float | None = None, resume: bool = False, **overrides) -> dict:
    """budget_seconds: stop after the first epoch that ends past this much training time (image caching excluded).
    MAE pretraining runs at a constant learning rate, so stopping early equals having asked for fewer epochs.
    Every epoch writes checkpoint.pt (weights + loss history) and pretrain_state.pt (AdamW's moments), so a stopped
    run loses at most the epoch in progress; resume=True continues OUT's pretraining up to `epochs` with the same
    plan, and equals the uninterrupted run (each epoch draws from its own (seed, epoch) stream: engine.Pretrainer).
    The optimiser state stays at the site: gradient moments are derived from its images, so it is kept out of
    checkpoint.pt, the file that is handed on."""
    out = Path(out)
    plan = get_plan(preset, seed=seed, **overrides)
    labelled, unlabelled = load_datalists(datalists)
    items = [{"image": it["image"]} for it in labelled + unlabelled]
    seed_everything(seed)
    model = MaskedPretrainer(plan)
    log(f"MAE pretraining on {len(items)} CT images ({len(unlabelled)} unlabelled), preset {plan.preset}")
    t0 = time.perf_counter()
    pretrainer = Pretrainer(plan, model, items, progress=progress, log=log)
    history = _resumed_history(out, plan, pretrainer, log) if resume else []
    resumed_after = len(history)
    if history and len(history) >= epochs:
        log(f"{out / 'checkpoint.pt'} already holds {len(history)} epochs (asked: {epochs}); nothing to resume")
    t_loop, ran = time.perf_counter(), 0
    while len(history) < epochs and (budget_seconds is None or not ran
                                     or time.perf_counter() - t_loop < budget_seconds):
        history += pretrainer.run_epochs(len(history), 1, epochs)
        ran += 1
        _save_pretraining(out, plan, pretrainer, history)
    if budget_seconds is not None and len(history) < epochs:
        log(f"MAE pretraining stopped by its {budget_seconds:.0f} s budget after {len(history)} of {epochs} epochs")
    if not ran and not resume:  # --epochs 0: the untrained model, as asked
        save_checkpoint(out / "checkpoint.pt", "mae", plan, model.state_dict(), history=history)
    result = {"epochs": history, "n_images": len(items), "plan": plan.to_dict(), "resumed_after": resumed_after,
              "seconds": round(time.perf_counter() - t0, 1)}  # this call's
    write_json(out / "metrics.json", result)
    return result


def _save_pretraining(out: Path, plan: Plan, pretrainer: Pretrainer, history: list[dict]) -> None:
    # the optimiser first: a run stopped between the two writes leaves a state one epoch ahead of the checkpoint,
    # which _resumed_history detects (its epoch count) and does not use
    out.mkdir(parents=True, exist_ok=True)
    save_atomically({"format": STATE_FORMAT, "epochs": len(history), "optimizer": pretrainer.optimizer.state_dict()},
                    out / PRETRAIN_STATE)
    save_checkpoint(out / "checkpoint.pt", "mae", plan, pretrainer.model.state_dict(), history=history)


def _resumed_history(out: Path, plan: Plan, pretrainer: Pretrainer, log) -> list[dict]:
    """Load OUT's checkpoint (and its optimiser state) into the pretrainer; its loss history ([] with no checkpoint).
    A checkpoint pretrained with another plan is refused: the continued curve would mix two recipes."""
    path = out / "checkpoint.pt"
    if not path.is_file():
        log(f"nothing to resume in {out} (no checkpoint.pt): pretraining from the start")
        return []
    payload = load_checkpoint(path, kind="mae")
    theirs, ours = payload["plan"].to_dict(), plan.to_dict()
    differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if differ:
        raise CheckpointError(f"{path} was pretrained with another plan ("
                              + ", ".join(f"{k}: {theirs.get(k)!r} there, {ours.get(k)!r} now" for k in differ)
                              + "); resume with the same --preset, --seed and --set values, or pretrain into a new "
                              "--out")
    history = payload.get("history") or []
    if not isinstance(history, list) or not all(isinstance(r, dict) and "loss" in r for r in history):
        raise CheckpointError(f"{path} holds no usable loss history to resume from; pretrain into a new --out")
    pretrainer.model.load_state_dict(payload["model"], strict=True)
    state_path = out / PRETRAIN_STATE
    try:
        state = torch.load(state_path, map_location="cpu", weights_only=True) if state_path.is_file() else None
    except Exception:  # a truncated or foreign file: the moments restart, as without one
        state = "unreadable"
    if isinstance(state, dict) and state.get("format") == STATE_FORMAT and state.get("epochs") == len(history):
        pretrainer.optimizer.load_state_dict(state["optimizer"])
        log(f"resuming the MAE pretraining in {out} after epoch {len(history)}")
    else:
        log(f"resuming the MAE pretraining in {out} after epoch {len(history)} with fresh AdamW moments: "
            f"{state_path.name} is " + ("missing" if state is None else "unreadable" if state == "unreadable"
                                             else "not this checkpoint's") +
            ", so the weights continue but the optimiser restarts (the curve is no longer the uninterrupted one's)")
    return history


def training_split(datalists, label_fraction: float = 1.0, val_fraction: float = 0.25,
                   seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(training cases, validation cases) of `train`: a stratified split, then the label subset of the training
    part; the same cases for the same arguments."""
    labelled, _ = load_datalists(datalists)
    if len(labelled) < 2:
        raise DataError(f"{len(labelled)} labelled case(s) in the datalists; fine-tuning needs at least 2")
    train_items, val_items = stratified_split(labelled, val_fraction, seed)
    return label_subset(train_items, label_fraction, seed), val_items


def train(datalists, preset: str, epochs: int, out, init=None, label_fraction: float = 1.0,
          val_fraction: float = 0.25, seed: int = 0, progress: bool = True, log=_log.info, **overrides) -> dict:
    out = Path(out)
    plan = get_plan(preset, seed=seed, **overrides)
    train_items, val_items = training_split(datalists, label_fraction, val_fraction, seed)
    seed_everything(seed)
    if init:
        plan = plan_from_pretraining(plan, load_checkpoint(init)["plan"], log)
    model = DualOutputSwinUNETR(plan)
    if init:
        init_encoder(model, init, log)
    log(f"fine-tuning on {len(train_items)} cases ({sum(i['ece'] for i in train_items)} ECE+), validating on "
        f"{len(val_items)}, preset {plan.preset}")
    t0 = time.perf_counter()
    tuner = FineTuner(plan, model, train_items, progress=progress, log=log)
    history = tuner.run_epochs(0, epochs, epochs)
    refit = None
    if plan.readout_refit_iterations:
        from .readout import refit_model
        refit = refit_model(model, train_items, plan, progress=progress, log=log)
    threshold, node_threshold, val = 0.5, 0.5, None
    if val_items:
        pred = predict_cases(model, val_items, plan, progress=progress)
        threshold = M.youden_threshold(pred["probs"], pred["labels"])
        node_threshold = M.node_threshold_from(pred["dices_at"].sum(0))
        val = evaluate_cases(pred, threshold, seed=seed)
        val["node_threshold"] = node_threshold
        val["dice_at_node_threshold"] = M.dice_by_node_threshold(pred["dices_at"].sum(0), len(val_items))
    save_checkpoint(out / "model.pt", "dual", plan, model.state_dict(), threshold=threshold,
                    node_threshold=node_threshold,
                    trained={"epochs": epochs, "n_train": len(train_items), "init": bool(init),
                             "label_fraction": label_fraction})
    result = {"val": val, "epochs": history, "threshold": threshold,
              "split": {"train": len(train_items), "val": len(val_items)}, "label_fraction": label_fraction,
              "pos_weight": tuner.pos_weight, "readout_refit": refit, "init": str(init) if init else None, "plan": plan.to_dict(),
              "seconds": round(time.perf_counter() - t0, 1)}
    write_json(out / "metrics.json", result)
    return result


def evaluate(model_path, datalists, out, progress: bool = True, log=_log.info) -> dict:
    out = Path(out)
    model, payload = load_model(model_path, kind="dual")
    plan = payload["plan"]
    labelled, _ = load_datalists(datalists)
    if not labelled:
        raise DataError("the datalists hold no labelled case to evaluate")
    node_threshold = node_threshold_of(payload)
    pred = predict_cases(model, labelled, plan, progress=progress, node_threshold=node_threshold)
    threshold = float(payload.get("threshold", 0.5))
    result = evaluate_cases(pred, threshold)
    result["node_threshold"] = node_threshold
    # mean Dice at every candidate node threshold: how this site's masks would change with another one
    result["dice_at_node_threshold"] = M.dice_by_node_threshold(pred["dices_at"].sum(0), len(labelled))
    sites = sorted({it["site"] for it in labelled})
    if len(sites) > 1:
        result["per_site"] = {}
        for site in sites:
            idx = [i for i, it in enumerate(labelled) if it["site"] == site]
            sub = {k: pred[k][idx] for k in ("probs", "labels", "dices", "voxels")}
            result["per_site"][site] = evaluate_cases(sub, threshold, n_boot=200)
    write_json(out / "metrics.json", result)
    write_predictions(out / "predictions.csv", pred)
    log(f"evaluated {len(labelled)} cases: AUC {result['auc']}, Dice {result['dice']}")
    return result


# A site's own operating threshold needs enough cases of each class: with fewer than this many, Youden's
# threshold moves by more than the gap between neighbouring scores from one case more or less.
CALIBRATION_MIN_PER_CLASS = 10


def calibrate(model_path, datalists, out, sensitivity: float | None = None, node_threshold: bool = False,
              progress: bool = True, log=_log.info) -> dict:
    """A hospital sets its own operating threshold from its own labelled cases and stores it in a copy of the
    model file (`infer` and `evaluate` read it). Youden's J by default, bagged over bootstrap resamples of the site's
    cases (metrics.bagged_youden_threshold: steadier on few cases); with `sensitivity`, the highest threshold
    that keeps at least that sensitivity. With node_threshold, also the output mask's node threshold: the
    candidate with the best mean Dice against the site's own contours (opt-in: at the unseen hospital it moved
    the test Dice by -0.004 ... +0.004, docs/BENCHMARKS.md). Only counts and rates are stored, never a case id or
    score."""
    model, payload = load_model(model_path, kind="dual")
    plan = payload["plan"]
    labelled, _ = load_datalists(datalists)
    n_pos = sum(it["ece"] for it in labelled)
    n_neg = len(labelled) - n_pos
    if min(n_pos, n_neg) < CALIBRATION_MIN_PER_CLASS:
        raise DataError(f"calibration needs at least {CALIBRATION_MIN_PER_CLASS} labelled cases of each class "
                        f"(got {n_pos} ECE+ and {n_neg} ECE-); keep the model's threshold or add cases")
    if sensitivity is not None and not 0 < sensitivity <= 1:
        raise ValueError(f"--sensitivity {sensitivity} must lie in (0, 1]")
    pred = predict_cases(model, labelled, plan, progress=progress)
    before = float(payload.get("threshold", 0.5))
    if sensitivity is None:
        threshold, method = M.bagged_youden_threshold(pred["probs"], pred["labels"], seed=plan.seed), "youden-bagged"
    else:
        pos_scores = np.sort(pred["probs"][pred["labels"] == 1])
        # the k-th lowest positive score keeps (n_pos - k) / n_pos of the positives at or above it
        k = int(np.floor((1 - sensitivity) * len(pos_scores) + 1e-9))
        threshold, method = float(pos_scores[min(k, len(pos_scores) - 1)]), f"sensitivity>={sensitivity:g}"

    def operating_point(t):
        return M.rates(**M.confusion(pred["probs"], pred["labels"], t))

    record = {"method": method, "n_pos": n_pos, "n_neg": n_neg, "threshold_before": before,
              "threshold": threshold, "before": operating_point(before), "after": operating_point(threshold)}
    extra = {k: v for k, v in payload.items() if k not in ("format", "version", "kind", "plan", "model", "threshold")}
    if node_threshold:
        node_before, dice_sum_at = node_threshold_of(payload), pred["dices_at"].sum(0)
        dice_at = M.dice_by_node_threshold(dice_sum_at, len(labelled))
        extra["node_threshold"] = M.node_threshold_from(dice_sum_at)
        record.update(node_threshold_before=node_before, node_threshold=extra["node_threshold"],
                      dice_before=dice_at.get(f"{node_before:g}"),  # None if the model's is no candidate
                      dice_after=dice_at[f"{extra['node_threshold']:g}"])
    extra["calibration"] = record
    save_checkpoint(out, "dual", plan, payload["model"], threshold=threshold, **extra)
    log(f"threshold {before:.3f} -> {threshold:.3f} ({method}, {n_pos} ECE+ / {n_neg} ECE-): sensitivity "
        f"{record['before']['sensitivity']:.2f} -> {record['after']['sensitivity']:.2f}, specificity "
        f"{record['before']['specificity']:.2f} -> {record['after']['specificity']:.2f}")
    if node_threshold:
        was = "n/a" if record["dice_before"] is None else f"{record['dice_before']:.3f}"
        log(f"node threshold {node_before:g} -> {record['node_threshold']:g}: mean Dice on these cases "
            f"{was} -> {record['dice_after']:.3f}")
    return record
