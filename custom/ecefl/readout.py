"""Refit of the case read-out as an exact (federated) logistic regression on fixed features.

Trained jointly with the segmentation, the evidence head chases features that move every step, and sites whose
scanners differ end up on different score scales (docs/BENCHMARKS.md, issue #12). With the body fixed, the case
logit is linear in pooled features (model.DualOutputSwinUNETR.readout_features), so its last layer can be refitted
as a class-weighted, ridge-penalised logistic regression. The loss is a sum over cases, so Newton's method needs
only the sums of each site's gradient and Hessian: the federated refit (sites send sums, the server solves) gives
exactly the centralised solution over the pooled training cases (Kang et al. 2020: classifier re-training on fixed
features; here solved rather than stepped). The ridge towards the jointly trained read-out is the plan's, or chosen
by k-fold cross-validation over the sites' training cases, whose held-out loss is a secure sum too (solve).
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import replace

import numpy as np
import torch
from tqdm import tqdm

from .data import plain_dataset, eval_transforms
from .engine import device, flip_averaged, model_precision, neck_region, positive_weight, sliding_window
from .model import DualOutputSwinUNETR, compute_layout
from .plan import Plan

_log = logging.getLogger(__name__)

# the read-out's tensors in a state dict: theta = (last layer weights, last layer bias b0, case bias)
# (a model with plan.readout_hu_features also has the weights u of its CT inputs after w, and with readout_fat_hu
# the perinodal fat's bias after u)
READOUT_KEYS = ("evidence_head.2.weight", "readout_hu.weight", "readout_hu.bias", "evidence_head.2.bias", "cls_bias")
BASELINE_KEY = "readout_baseline"  # the average training case's design row (average_case), set by the refit


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


def state_with_average_case(state: dict, average: np.ndarray | list | None) -> dict:
    """A copy of the state dict whose model.readout_baseline is the refit's average case (average_case)."""
    if average is None or BASELINE_KEY not in state:
        return state
    old = state[BASELINE_KEY]
    value = np.asarray(average, float).reshape(old.shape)
    return {**state, BASELINE_KEY: torch.as_tensor(value, dtype=old.dtype) if hasattr(old, "detach")
            else value.astype(old.dtype)}


def pack_terms(terms: dict) -> np.ndarray:
    """loss, weight sum, gradient, upper triangle of the Hessian, weighted column sums: one vector for the secure
    sum."""
    iu = np.triu_indices(len(terms["grad"]))
    return np.concatenate([[terms["loss"], terms["n"]], terms["grad"], terms["hess"][iu], terms["wx"]])


def packed_size(k: int) -> int:
    return 2 + k + k * (k + 1) // 2 + k


def unpack_terms(vector: np.ndarray, k: int) -> dict:
    grad = vector[2:2 + k]
    end = packed_size(k) - k  # the weighted column sums come last
    hess = np.zeros((k, k))
    hess[np.triu_indices(k)] = vector[2 + k:end]
    hess = hess + np.triu(hess, 1).T
    return {"loss": float(vector[0]), "n": float(vector[1]), "grad": grad, "hess": hess, "wx": vector[end:end + k]}


def average_case(terms: dict) -> np.ndarray:
    """The class-weighted mean of the training cases' design rows [features, 1] (each class weighing as much as
    the other, as in the refit's loss): the average case that model.attribution shows each voxel's evidence
    against. Its last entry is 1."""
    return np.asarray(terms["wx"], float) / max(float(terms["n"]), 1e-12)


@torch.no_grad()
def case_features(model: DualOutputSwinUNETR, items: list[dict], plan: Plan, progress: bool = False) -> np.ndarray:
    """(n, fs + 1) pooled read-out features of each case over its whole volume (sliding window, as inference;
    averaged with the mirrored CT's when the plan's tta_flip and readout_tta_flip both say so)."""
    dev = device()
    model.eval().to(dev)
    ds = plain_dataset(items, eval_transforms(plan, with_label=False))
    rows = []
    flip = replace(model.plan, tta_flip=model.plan.tta_flip and model.plan.readout_tta_flip)
    # in the precision inference runs in (bf16 where the plan and the CPU say so), so the refitted read-out is exact
    # for the outputs it is applied to
    with model_precision(model.plan, dev), compute_layout(model, model.plan):
        for i in tqdm(range(len(ds)), desc="read-out features", unit="case", leave=False, disable=not progress):
            image = ds[i]["image"].unsqueeze(0)
            within = neck_region(image, model.plan)  # the neck gate's mask as a second channel (engine)
            inputs = image if within is None else torch.cat([image, within.float()], dim=1)
            channels = flip_averaged(flip, inputs.to(dev), lambda v: sliding_window(
                plan, v, lambda x: model.readout_channels(
                    x[:, :1], allowed=x[:, 1:2] > 0.5 if within is not None else None).float()))
            rows.append(model.readout_features(channels)[0]
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
    # the class-weighted sums of the design's columns: their mean is the average case the evidence is shown against
    return {"loss": loss, "grad": grad, "hess": hess, "n": float(w.sum()), "wx": X.T @ w}


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
                anchor: np.ndarray, variances: np.ndarray | None = None,
                frozen: np.ndarray | None = None) -> np.ndarray:
    """One Newton step of sum-loss + ridge/2 * weight_sum * |theta_w - anchor_w|^2 (the bias unpenalised).
    The ridge pulls towards the jointly trained read-out, scaled per case so it means the same at any size.
    variances (plan.readout_standardise): the ridge acts on standardised features, weight w_j costing
    ridge * var_j * w_j^2, so its strength does not depend on the scale the hidden layer happens to give a feature
    (measured: runs whose features vary little got probabilities squashed to 0.5 +- 0.05, docs/BENCHMARKS.md).
    frozen (a mask over theta): weights the step leaves where they are (hidden_frozen)."""
    if frozen is not None and frozen.any():  # their rows and columns out of the system: a zero step for them
        grad, hess = np.where(frozen, 0.0, grad), np.where(frozen[:, None] | frozen[None, :], 0.0, hess)
        hess[frozen, frozen] = 1.0
    penal = np.ones_like(theta) if variances is None else np.asarray(variances, float).copy()
    penal[-2] = 1e3  # b0 stays: s ~ 1 for every case, collinear with the bias, which is free
    penal[-1] = 0.0
    lam = ridge * weight_sum * penal
    g = grad + lam * (theta - anchor)
    h = hess + np.diag(lam) + 1e-6 * np.eye(len(theta))
    step = np.linalg.solve(h, g)
    return theta - step


def hidden_frozen(plan: Plan, k: int) -> np.ndarray | None:
    """The read-out weights a refit keeps at 0 (plan.readout_hidden off): those of the evidence head's hidden
    features, theta's first feature_size entries. None: the refit moves every weight."""
    if plan.readout_hidden:
        return None
    frozen = np.zeros(k, dtype=bool)
    frozen[:plan.feature_size] = True
    return frozen


ALL = -1  # a path over all training cases (the refit itself); 0..k-1: the path that leaves that fold out


def fold_ids(labels, folds: int, seed: int, site: str) -> np.ndarray:
    """Each of a site's training cases' fold for the ridge's cross-validation (plan.readout_ridge_cv_folds):
    stratified by label, from a random start of the site's own, so that sites with few positives do not all
    fill fold 0; drawn from the plan's seed and the site's name, so the centralised refit draws the same ones."""
    labels = np.asarray(labels)
    out = np.zeros(len(labels), dtype=int)
    if folds < 2:
        return out
    rng = np.random.default_rng([seed, zlib.crc32(str(site).encode())])
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        rng.shuffle(idx)
        out[idx] = (np.arange(len(idx)) + rng.integers(folds)) % folds
    return out


def small_fold(labels, folds: np.ndarray, k: int, min_cases: int, min_count: int = 0) -> str | None:
    """Why a site's CV folds are too small for their terms to leave it (None: they are not): a fold with some but
    fewer than min_cases of its training cases, or, with the site's min-count rule, fewer than min_count of a
    class (an empty fold adds nothing to any sum). The text names counts and stays in the site's log."""
    labels = np.asarray(labels)
    for j in range(k):
        held = labels[folds == j]
        n_pos = int((held > 0).sum())
        n_neg = len(held) - n_pos
        if len(held) and (len(held) < min_cases or (min_count and min(n_pos, n_neg) < min_count)):
            rule = f"readout_ridge_cv_min_cases={min_cases}" + (f", min-count {min_count} a class" if min_count else "")
            return (f"CV fold {j} holds {len(held)} of this site's training cases ({n_pos} ECE+, {n_neg} ECE-): "
                    f"under {rule}")
    return None


def path_terms(paths: list[tuple[int, np.ndarray]], features: np.ndarray, labels, pos_weight: float,
               folds: np.ndarray) -> np.ndarray:
    """One site's packed terms for every path (fold, theta): the logistic terms over its training cases outside
    the fold (all of them for ALL) and the weighted loss and weight of the fold's own cases (held out), one
    vector for the secure sum."""
    labels = np.asarray(labels)
    out = []
    for fold, theta in paths:
        held = folds == fold
        fit = local_terms(theta, features[~held], labels[~held], pos_weight)
        test = local_terms(theta, features[held], labels[held], pos_weight) if held.any() else {"loss": 0.0, "n": 0.0}
        out.append(np.concatenate([pack_terms(fit), [test["loss"], test["n"]]]))
    return np.concatenate(out)


def unpack_paths(vector: np.ndarray, n_paths: int, k: int) -> list[dict]:
    size = packed_size(k) + 2  # pack_terms, then the held-out loss and weight
    if len(vector) != n_paths * size:
        raise ValueError(f"the summed read-out terms hold {len(vector)} values, not the {n_paths * size} of {n_paths} "
                         f"path(s) of {k} weights: a site runs another version of ecefl; update every site")
    rows = []
    for i in range(n_paths):
        chunk = vector[i * size:(i + 1) * size]
        rows.append({**unpack_terms(chunk[:-2], k), "held_loss": float(chunk[-2]), "held_n": float(chunk[-1])})
    return rows


def solve(theta0: np.ndarray, summed, ridges, folds: int, iterations: int, standardise: bool,
          frozen: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """The refit's Newton iterations, centralised or federated alike: summed(paths) returns, per path (fold,
    theta), the terms summed over every site's training cases (path_terms, unpacked). One ridge and no folds: the
    refit at that ridge. folds = k >= 2: every ridge of `ridges` on all cases and with each fold left out, then
    one more call for the held-out losses at the final thetas; the ridge with the least held-out class-weighted
    loss (summed over folds and sites: additive, so the secure sum gives it exactly) is the one kept. The
    variances that standardise the ridge come from the first call's Hessian over all cases. frozen (hidden_frozen):
    weights set to 0 and left there, the rest refitted around them. Returns the read-out and the refit's record
    (what the checkpoint's metrics and the report carry)."""
    ridges = [float(r) for r in ridges]
    paths = [(ALL, r) for r in ridges] + [(j, r) for r in ridges for j in range(folds if folds >= 2 else 0)]
    start = theta0.copy() if frozen is None else np.where(frozen, 0.0, theta0)
    thetas = [start.copy() for _ in paths]
    losses: dict = {r: [] for r in ridges}
    variances = average = None
    for _ in range(iterations):
        terms = summed([(fold, th) for (fold, _), th in zip(paths, thetas)])
        if average is None:  # the same at every theta
            average = average_case(terms[0])
        if standardise and variances is None:
            variances = feature_variances(terms[0]["hess"])
        for i, ((fold, ridge), t) in enumerate(zip(paths, terms)):
            if fold == ALL:
                losses[ridge].append(t["loss"])
            thetas[i] = newton_step(thetas[i], t["grad"], t["hess"], t["n"], ridge, start, variances, frozen)
    record: dict = {"iterations": iterations, "standardised": standardise, "ridge_cv": None,
                    "frozen": 0 if frozen is None else int(frozen.sum())}
    chosen = ridges[0]
    if len(paths) > len(ridges):
        held = summed([(fold, th) for (fold, _), th in zip(paths, thetas) if fold != ALL])
        per_ridge = {r: 0.0 for r in ridges}
        for (fold, ridge), t in zip([p for p in paths if p[0] != ALL], held):
            per_ridge[ridge] += t["held_loss"]
        weight = sum(t["held_n"] for t in held) / len(ridges)
        chosen = min(ridges, key=lambda r: per_ridge[r])
        record["ridge_cv"] = {"folds": folds, "grid": ridges, "held_out_loss": [per_ridge[r] for r in ridges],
                              "held_out_weight": weight}
    theta = thetas[paths.index((ALL, chosen))]
    record.update({"ridge": chosen, "loss": losses[chosen], "theta_joint": theta0.tolist(), "theta": theta.tolist(),
                   "average_case": None if average is None else average.tolist()})
    return theta, record


def ridge_note(record: dict) -> str:
    """How the refit's ridge was set, for a log line: empty for the plan's own ridge."""
    cv = record.get("ridge_cv")
    return f" (ridge {record['ridge']:g}, chosen by {cv['folds']}-fold CV)" if cv else ""


def centralised_sum(site_data: list[tuple[np.ndarray, np.ndarray, float]], folds: int, seed: int,
                    sites: list[str] | None = None):
    """summed(paths) over features held in one place, each site with its own folds as a site draws them."""
    names = sites or [str(i) for i in range(len(site_data))]
    site_folds = [fold_ids(labels, folds, seed, name) for (_, labels, _), name in zip(site_data, names)]

    def summed(paths):
        vectors = [path_terms(paths, f, y, pw, fo) for (f, y, pw), fo in zip(site_data, site_folds)]
        return unpack_paths(np.sum(vectors, axis=0), len(paths), len(paths[0][1]))
    return summed


def refit_centralised(theta0: np.ndarray, site_data: list[tuple[np.ndarray, np.ndarray, float]], ridge: float,
                      iterations: int = 8, standardise: bool = False) -> tuple[np.ndarray, list[float]]:
    """The same Newton iterations as the federated refit at one ridge, on features held in one place (the tests'
    reference). site_data: (features, labels, pos_weight) per site. standardise: the ridge on standardised
    features, their variances from the first iteration's Hessian (feature_variances)."""
    theta, record = solve(theta0, centralised_sum(site_data, 0, 0), [ridge], 0, iterations, standardise)
    return theta, record["loss"]


def ridge_settings(plan: Plan) -> tuple[list[float], int]:
    """(the ridges to try, the CV folds): the plan's one ridge, or its grid when it cross-validates."""
    folds = plan.readout_ridge_cv_folds
    return (list(plan.readout_ridge_grid), folds) if folds >= 2 else ([plan.readout_ridge], 0)


def site_features(model: DualOutputSwinUNETR, items: list[dict], plan: Plan, progress: bool = False
                  ) -> tuple[list[tuple[np.ndarray, np.ndarray, float]], list[str]]:
    """The refit's data held in one place: per site (sorted by name), its training cases' features, labels and
    class weight, as each site computes them; and the sites' names (their CV folds depend on them)."""
    by_site: dict = {}
    for it in items:
        by_site.setdefault(str(it.get("site")), []).append(it)
    groups = sorted(by_site.items())
    return ([(case_features(model, group, plan, progress), np.array([int(i["ece"]) for i in group]),
              positive_weight(group)) for _, group in groups], [name for name, _ in groups])


def refit_features(theta0: np.ndarray, data: list, sites: list[str], plan: Plan) -> tuple[np.ndarray, dict]:
    """The refit the plan asks for (its ridge, or the one its CV chooses) on site_features' data."""
    ridges, folds = ridge_settings(plan)
    return solve(theta0, centralised_sum(data, folds, plan.seed, sites), ridges, folds,
                 plan.readout_refit_iterations, plan.readout_standardise, hidden_frozen(plan, len(theta0)))


def refit_model(model: DualOutputSwinUNETR, items: list[dict], plan: Plan, progress: bool = False,
                log=_log.info) -> dict:
    """Centralised refit (ecefl train): the same class weights per site, CV folds and Newton iterations as the
    federated one, on all training cases at once. Sets the model's read-out and returns the refit's record."""
    data, sites = site_features(model, items, plan, progress)
    theta0 = model.readout_parameters().double().cpu().numpy()
    theta, record = refit_features(theta0, data, sites, plan)
    model.set_readout_parameters(torch.as_tensor(theta))
    if record["average_case"] is not None:
        model.readout_baseline.copy_(torch.as_tensor(record["average_case"]))
    losses = record["loss"]
    log(f"read-out refitted on {len(items)} training cases{ridge_note(record)}: weighted loss {losses[0]:.3f} -> "
        f"{losses[-1]:.3f}")
    return record
