"""Checkpoint files: weights + the plan they were trained with + the operating threshold, versioned."""
from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path

import torch

from .plan import Plan

FORMAT = "ecefl-checkpoint"
# 2: a fine-tuned model holds the refit's average training case (readout_baseline), which an ecefl reading only
# version 1 would refuse with a bare "unexpected key"; it gets the version message instead. Version 1 files still
# load (their evidence shown against no baseline, as before).
VERSION = 2
READABLE_VERSIONS = (1, 2)


class CheckpointError(ValueError):
    pass


def save_checkpoint(path: str | Path, kind: str, plan: Plan, state: dict, **extra) -> Path:
    """kind: "mae" (pretraining) or "dual" (segmentation + ECE). Written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, "kind": kind, "plan": plan.to_dict(),
               "model": {k: v.detach().cpu() for k, v in state.items()}, **extra}
    return save_atomically(payload, path)


def save_atomically(payload: dict, path: Path) -> Path:
    """torch.save to a new file in the same folder that then replaces `path`: a stopped run never leaves half a
    file, and a hard-linked copy of the folder keeps the old one."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=path.parent)
    os.close(fd)
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file {path} does not exist")
    try:
        # Model files travel between hospitals: unpickle tensors and plain data only, so a crafted file cannot
        # run code at the site that opens it (torch's restricted unpickler refuses every other object).
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"model file {path} was refused: it holds Python objects other than tensors and "
                              "plain data, which could run code when loaded. Nothing from it was executed. Use a "
                              "model file written by ecefl from a source you trust.") from exc
    except Exception as exc:
        raise CheckpointError(f"model file {path} cannot be read ({type(exc).__name__}); is it a PyTorch file "
                              "written by ecefl?") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"model file {path} is not an ecefl checkpoint (for NVFlare's FL_global_model.pt "
                              "use the copy that `ecefl fl simulate` writes as global_model.pt)")
    if payload.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"model file {path} was written by another ecefl version (checkpoint version "
                              f"{payload.get('version')}, this ecefl reads "
                              f"{' and '.join(map(str, READABLE_VERSIONS))}); re-export it with a matching ecefl "
                              "release")
    if kind is not None and payload.get("kind") != kind:
        what = {"mae": "an MAE-pretrained encoder (mae_pretrain)", "dual": "a fine-tuned ECE model (ece_finetune)"}
        raise CheckpointError(f"model file {path} is {what.get(payload.get('kind'), repr(payload.get('kind')))}, "
                              f"but {what.get(kind, repr(kind))} is needed here"
                              + ("; give ece_finetune's global_model.pt or best_global_model.pt" if kind == "dual"
                                 else ""))
    try:  # checked as a preset is: a bad value is named here, not deep inside the first sliding window
        payload["plan"] = Plan.from_dict(payload["plan"]).validate()
    except (AttributeError, TypeError, ValueError) as exc:
        raise CheckpointError(f"model file {path} holds a plan this ecefl cannot use ({exc}); use a model file "
                              "written by ecefl") from exc
    return payload


def node_threshold_of(payload: dict) -> float:
    """The node-probability threshold of the model file's output mask (0.5, the argmax, for older files)."""
    value = payload.get("node_threshold", 0.5)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) < 1.0:
        raise CheckpointError(f"the model file's node_threshold {value!r} is not a probability strictly between 0 "
                              "and 1; use a model file written by ecefl")
    return float(value)


def load_model(path: str | Path, kind: str = "dual"):
    """(model with the checkpoint's weights, checkpoint): the one way a checkpoint becomes a model."""
    from .model import DualOutputSwinUNETR, MaskedPretrainer
    payload = load_checkpoint(path, kind=kind)
    model = (DualOutputSwinUNETR if payload["kind"] == "dual" else MaskedPretrainer)(payload["plan"])
    state = dict(payload["model"])
    if payload["kind"] == "dual":  # files written before the average case was kept: evidence shown as before
        state.setdefault("readout_baseline", model.readout_baseline)
    model.load_state_dict(state, strict=True)
    return model, payload
