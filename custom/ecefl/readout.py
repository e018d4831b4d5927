"""Refit of the case read-out as an exact (federated) logistic regression on fixed features.

Trained jointly with the segmentation, the evidence head chases features that move every step, and sites whose
scanners differ end up on different score scales (docs/BENCHMARKS.md, issue #12). With the body fixed, the case
logit is linear in pooled features (model.DualOutputSwinUNETR.readout_features), so its last layer can be refitted
as a class-weighted, ridge-penalised logistic regression. The loss is a sum over cases, so Newton's method needs
only the sums of each site's gradient and Hessian: the federated refit (sites send sums, the server solves) gives
exactly the centralised solution over the pooled training cases (Kang et al. 2020: classifier re-training on fixed
features; here solved rather than stepped).
"""
from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from .data import plain_dataset, eval_transforms
from .engine import device, flip_averaged, positive_weight, sliding_window
from .model import DualOutputSwinUNETR, compute_layout
from .plan import Plan

_log = logging.getLogger(__name__)

# the read-out's tensors in a state dict: theta = (last layer weights, last layer bias b0, case bias)
# (a model with plan.readout_hu_features also has the weights u of its CT inputs after w)
READOUT_KEYS = ("evidence_head.2.weight", "readout_hu.weight", "evidence_head.2.bias", "cls_bias")


def _numpy(v) -> np.ndarray:
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def theta_from_state(state: dict) -> np.ndarray:
    return np.concatenate([_numpy(state[k]).astype(np.float64).reshape(-1) for k in READOUT_KEYS if k in state])


def state_with_theta(state: dict, theta: np.ndarray) -> dict:
    """A copy of the state dict with the read-out set to theta, each tensor in its own type and shape."""
    out, i = dict(state), 0
    for key in (k for k in READOUT_KEYS if k in state):
        old = state[key]
        n = int(np.prod(old.shape))
        chunk = np.asarray(theta[i:i + n]).reshape(old.shape)
        i += n
        out[key] = torch.as_tensor(chunk, dtype=old.dtype) if hasattr(old, "detach") else chunk.astype(old.dtype)
    return out


def pack_terms(terms: dict) -> np.ndarray:
    """loss, weight sum, gradient, upper triangle of the Hessian: one vector for the secure sum."""
    iu = np.triu_indices(len(terms["grad"]))
    return np.concatenate([[terms["loss"], terms["n"]], terms["grad"], terms["hess"][iu]])


def unpack_terms(vector: np.ndarray, k: int) -> dict:
    grad = vector[2:2 + k]
    hess = np.zeros((k, k))
    hess[np.triu_indices(k)] = vector[2 + k:]
    hess = hess + np.triu(hess, 1).T
    return {"loss": float(vector[0]), "n": float(vector[1]), "grad": grad, "hess": hess}


@torch.no_grad()
def case_features(model: DualOutputSwinUNETR, items: list[dict], plan: Plan, progress: bool = False) -> np.ndarray:
    """(n, fs + 1) pooled read-out features of each case over its whole volume (sliding window, as inference;
    averaged with the mirrored CT's when the plan's tta_flip and readout_tta_flip both say so)."""
    dev = device()
    model.eval().to(dev)
    ds = plain_dataset(items, eval_transforms(plan, with_label=False))
    rows = []
    flip = replace(model.plan, tta_flip=model.plan.tta_flip and model.plan.readout_tta_flip)
    with compute_layout(model, model.plan):
        for i in tqdm(range(len(ds)), desc="read-out features", unit="case", leave=False, disable=not progress):
            image = ds[i]["image"].unsqueeze(0).to(dev)
            channels = flip_averaged(flip, image, lambda v: sliding_window(
                plan, v, lambda x: model.readout_channels(x).float()))
            rows.append(DualOutputSwinUNETR.readout_features(channels, model.plan.evidence_reference)[0]
                        .double().cpu().numpy())
    return np.stack(rows) if rows else np.zeros((0, len(model.readout_parameters()) - 1))


def design(features: np.ndarray) -> np.ndarray:
    """Columns [z (fs), s, 1] so that logit = X . theta with theta = (w, b0, bias)."""
    return np.concatenate([features, np.ones((len(features), 1))], axis=1)


def local_terms(theta: np.ndarray, features: np.ndarray, labels: np.ndarray, pos_weight: float) -> dict:
    """Sums over this site's cases of the class-weighted logistic loss, its gradient and Hessian at theta."""
    X = design(features)
    y = np.asarray(labels, float)
    p = 1.0 / (1.0 + np.exp(-np.clip(X @ theta, -40, 40)))
    w = np.where(y > 0, pos_weight, 1.0)
    eps = 1e-12
    loss = float(-(w * (y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))).sum())
    grad = X.T @ (w * (p - y))
    hess = (X * (w * p * (1 - p))[:, None]).T @ X
    return {"loss": loss, "grad": grad, "hess": hess, "n": float(w.sum())}


def feature_variances(hess: np.ndarray) -> np.ndarray:
    """Per read-out feature, its variance over the cases weighted as in the Hessian (class weight x p(1 - p)),
    read off the summed Hessian itself (its bias column holds the weighted sums and means): no statistic beyond
    the refit's own secure sums. Entries for b0 and the bias are 1 (they are not standardised)."""
    total = max(float(hess[-1, -1]), 1e-12)
    mean = hess[:-1, -1] / total
    var = np.diag(hess)[:-1] / total - mean ** 2
    var = np.maximum(var, 1e-6 * max(float(var[:-1].max(initial=0.0)), 1e-12))
    var[-1] = 1.0
    return np.append(var, 1.0)


def newton_step(theta: np.ndarray, grad: np.ndarray, hess: np.ndarray, weight_sum: float, ridge: float,
                anchor: np.ndarray, variances: np.ndarray | None = None) -> np.ndarray:
    """One Newton step of sum-loss + ridge/2 * weight_sum * |theta_w - anchor_w|^2 (the bias unpenalised).
    The ridge pulls towards the jointly trained read-out, scaled per case so it means the same at any size.
    variances (plan.readout_standardise): the ridge acts on standardised features, weight w_j costing
    ridge * var_j * w_j^2, so its strength does not depend on the scale the hidden layer happens to give a feature
    (measured: runs whose features vary little got probabilities squashed to 0.5 +- 0.05, docs/BENCHMARKS.md)."""
    penal = np.ones_like(theta) if variances is None else np.asarray(variances, float).copy()
    penal[-2] = 1e3  # b0 stays: s ~ 1 for every case, collinear with the bias, which is free
    penal[-1] = 0.0
    lam = ridge * weight_sum * penal
    g = grad + lam * (theta - anchor)
    h = hess + np.diag(lam) + 1e-6 * np.eye(len(theta))
    step = np.linalg.solve(h, g)
    return theta - step


def refit_centralised(theta0: np.ndarray, site_data: list[tuple[np.ndarray, np.ndarray, float]], ridge: float,
                      iterations: int = 8, standardise: bool = False) -> tuple[np.ndarray, list[float]]:
    """The same Newton iterations as the federated refit, on features held in one place (the centralised CLI and
    the tests' reference). site_data: (features, labels, pos_weight) per site. standardise: the ridge on
    standardised features, their variances from the first iteration's Hessian (feature_variances)."""
    theta, losses, variances = theta0.copy(), [], None
    for _ in range(iterations):
        terms = [local_terms(theta, f, y, pw) for f, y, pw in site_data]
        losses.append(sum(t["loss"] for t in terms))
        hess = sum(t["hess"] for t in terms)
        if standardise and variances is None:
            variances = feature_variances(hess)
        theta = newton_step(theta, sum(t["grad"] for t in terms), hess, sum(t["n"] for t in terms), ridge, theta0,
                            variances)
    return theta, losses


def refit_model(model: DualOutputSwinUNETR, items: list[dict], plan: Plan, progress: bool = False,
                log=_log.info) -> dict:
    """Centralised refit (ecefl train): the same class weights per site and Newton iterations as the federated
    one, on all training cases at once. Sets the model's read-out and returns the refit's record."""
    by_site: dict = {}
    for it in items:
        by_site.setdefault(it.get("site"), []).append(it)
    data = [(case_features(model, group, plan, progress), np.array([int(i["ece"]) for i in group]),
             positive_weight(group)) for _, group in sorted(by_site.items(), key=lambda kv: str(kv[0]))]
    theta0 = model.readout_parameters().double().cpu().numpy()
    theta, losses = refit_centralised(theta0, data, plan.readout_ridge, plan.readout_refit_iterations,
                                      plan.readout_standardise)
    model.set_readout_parameters(torch.as_tensor(theta))
    log(f"read-out refitted on {len(items)} training cases: weighted loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    return {"iterations": plan.readout_refit_iterations, "ridge": plan.readout_ridge,
            "standardised": plan.readout_standardise, "loss": losses,
            "theta_joint": theta0.tolist(), "theta": theta.tolist()}
