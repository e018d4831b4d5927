"""The one training/evaluation engine: the centralised CLI and the federated client both call these functions.

Schedules are expressed over a global epoch index (epoch, total_epochs), so a federated run with R rounds of
E local epochs follows the same teacher-forcing and loss-weight schedule as a centralised run of R*E epochs.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from tqdm import tqdm

from . import metrics as M
from .data import build_transforms, cached_loader, mae_transforms, preprocessing_spec, train_transforms
from .model import ENCODER_PREFIX, DualOutputSwinUNETR, MaskedPretrainer, compute_layout
from .plan import Plan

_log = logging.getLogger(__name__)


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32 - 1))
    from monai.utils import set_determinism
    set_determinism(seed=seed)


def cpu_has_bf16_matrix_units() -> bool:
    """Intel AMX (Sapphire Rapids and later): oneDNN runs bf16 convolutions and matmuls on its tile units. A CPU
    with AVX512-BF16 alone (AMD EPYC) was measured > 25x slower in bf16 than in fp32 (docs/BENCHMARKS.md)."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except AttributeError:  # a torch without the probe: stay in fp32
        return False


def uses_bf16(plan: Plan, dev: torch.device) -> bool:
    """Whether this machine runs the plan's model in bf16 autocast: the gpu preset's AMP on CUDA, cpu_bf16 on a CPU
    with bf16 matrix units. Elsewhere fp32: a model trained in bf16 is used in fp32 on a CPU without them."""
    if dev.type == "cuda":
        return plan.amp
    return plan.cpu_bf16 and dev.type == "cpu" and cpu_has_bf16_matrix_units()


def model_precision(plan: Plan, dev: torch.device):
    """The context every forward pass of the model runs in (training, validation, the read-out refit, inference)."""
    return torch.autocast(dev.type, dtype=torch.bfloat16) if uses_bf16(plan, dev) else contextlib.nullcontext()


def lr_factor(plan: Plan, step: int, total_steps: int) -> float:
    """Multiplier of the base learning rate at a global step: linear warm-up, then constant or cosine to 0."""
    warmup = int(plan.warmup_fraction * total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if plan.lr_schedule == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


class _ScheduledSteps:
    """Sets every parameter group's lr from its base lr and the global step (epoch * steps per epoch + i)."""

    def __init__(self, optimizer: torch.optim.Optimizer, plan: Plan):
        self.optimizer, self.plan = optimizer, plan
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])

    def set(self, step: int, total_steps: int, warmup: bool = True) -> float:
        factor = lr_factor(self.plan if warmup else self.plan.with_overrides(warmup_fraction=0.0), step, total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return factor


def cls_weight(plan: Plan, epoch: int, total: int) -> float:
    """Classification loss weight: linear ramp from cls_weight_start to 1 over cls_ramp_fraction of training."""
    ramp = max(1.0, plan.cls_ramp_fraction * total)
    return float(min(1.0, plan.cls_weight_start + (1 - plan.cls_weight_start) * epoch / ramp))


def teacher_forcing(plan: Plan, epoch: int, total: int) -> bool:
    return epoch < math.floor(plan.teacher_forcing_fraction * total)


def retraining_epochs(plan: Plan, total: int) -> int:
    """How many final epochs re-train the classifier alone (at least one when the fraction is set)."""
    if plan.cls_retrain_fraction <= 0:
        return 0
    return min(total - 1, max(1, round(plan.cls_retrain_fraction * total)))


def positive_weight(items: list[dict]) -> float:
    labels = np.array([it["ece"] for it in items])
    n_pos, n_neg = int(labels.sum()), int(len(labels) - labels.sum())
    if n_pos == 0 or n_neg == 0:
        return 1.0
    return float(np.clip(n_neg / n_pos, 0.2, 5.0))


class _EpochLoop:
    """The epoch loop both trainers share (nnU-Net's trainer shape, in a few lines): for each batch the subclass's
    train_step(batch, epoch, total_epochs, step) returns the loss tensor and the numbers to log; the loop does the
    finiteness check, backward, gradient clipping (from the plan), the optimiser step and the epoch record."""
    label = "epoch"

    def clip_norm(self) -> float:
        return self.plan.grad_clip_norm

    def epoch_start(self, epoch: int, total_epochs: int) -> dict:
        return {}

    def train_step(self, batch, epoch: int, total_epochs: int, step: int, state: dict) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def describe(self, record: dict, total_epochs: int) -> str:
        raise NotImplementedError

    def run_epochs(self, first_epoch: int, n_epochs: int, total_epochs: int) -> list[dict]:
        self.model.train()
        with compute_layout(self.model, self.plan):
            return self._run_epochs(first_epoch, n_epochs, total_epochs)

    def _run_epochs(self, first_epoch: int, n_epochs: int, total_epochs: int) -> list[dict]:
        history = []
        for epoch in range(first_epoch, first_epoch + n_epochs):
            t0 = time.perf_counter()
            state = self.epoch_start(epoch, total_epochs)
            sums: dict[str, float] = {}
            steps = 0
            bar = tqdm(self.loader, desc=f"{self.label} {epoch + 1}/{total_epochs}", unit="batch", leave=False,
                       disable=not self.progress)
            for batch in bar:
                loss, logged = self.train_step(batch, epoch, total_epochs, steps, state)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite training loss at epoch {epoch + 1}; lower the "
                                             "learning rate or check the input data")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip_norm() > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm())
                self.optimizer.step()
                for key, value in {"loss": loss, **logged}.items():
                    sums[key] = sums.get(key, 0.0) + float(value.detach() if hasattr(value, "detach") else value)
                steps += 1
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
            record = {k: v / max(steps, 1) for k, v in sums.items()}
            record.update(epoch=epoch + 1, steps=steps, **{k: v for k, v in state.items() if not k.startswith("_")},
                          seconds=round(time.perf_counter() - t0, 2))
            self.log(self.describe(record, total_epochs))
            history.append(record)
        return history


@dataclass
class FineTuner(_EpochLoop):
    """Local optimisation state for fine-tuning (kept across federated rounds at a site)."""
    plan: Plan
    model: DualOutputSwinUNETR
    train_items: list[dict]
    progress: bool = True
    log: callable = _log.info
    optimizer: torch.optim.Optimizer = field(init=False)

    def __post_init__(self):
        self.dev = device()
        self.model.to(self.dev)
        lr, groups = self.plan.learning_rate, {"encoder": [], "body": [], "head": []}
        for name, p in self.model.named_parameters():
            part = ("head" if name.startswith(("evidence_head.", "cls_bias")) else
                    "encoder" if name.startswith(ENCODER_PREFIX) else "body")
            groups[part].append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": groups["body"]}, {"params": groups["head"], "lr": lr * self.plan.head_lr_multiplier},
             {"params": groups["encoder"], "lr": lr * self.plan.encoder_lr_multiplier}],
            lr=lr, weight_decay=self.plan.weight_decay)
        self.loader = cached_loader(self.train_items, train_transforms(self.plan), self.plan.batch_size,
                                    shuffle=True, seed=self.plan.seed, balanced=self.plan.balanced_sampling,
                                    iterations=self.plan.iterations_per_epoch)
        self.schedule = _ScheduledSteps(self.optimizer, self.plan)
        fg_batch = self.plan.dice_foreground_batch
        if self.plan.dice_per_crop:
            self.seg_loss = PerCropNodeDiceCE()
        else:
            self.seg_loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=not fg_batch, batch=fg_batch)
        pos_weight = positive_weight(self.train_items)
        if self.plan.cls_loss == "focal":
            # alpha = weight of the positive class, from the label counts
            self.cls_loss = FocalLoss(gamma=self.plan.focal_gamma, alpha=pos_weight / (1 + pos_weight),
                                      use_softmax=False, include_background=True, reduction="none")
        else:
            self.cls_loss = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], device=self.dev),
                                                       reduction="none")
        self.pos_weight = pos_weight

    def epoch_start(self, epoch: int, total_epochs: int) -> dict:
        n_retrain = retraining_epochs(self.plan, total_epochs)
        retrain = epoch >= total_epochs - n_retrain
        w = 1.0 if retrain else cls_weight(self.plan, epoch, total_epochs)
        forced = False if retrain else teacher_forcing(self.plan, epoch, total_epochs)
        return {"cls_weight": w, "teacher_forcing": forced, "cls_retrain": retrain, "lr_factor": 1.0,
                "_n_retrain": n_retrain}

    def train_step(self, batch, epoch: int, total_epochs: int, step: int, state: dict):
        per_epoch, n_retrain, retrain = len(self.loader), state["_n_retrain"], state["cls_retrain"]
        if retrain:  # the head's own cosine over the re-training epochs
            first = (total_epochs - n_retrain) * per_epoch
            state["lr_factor"] = self.schedule.set(epoch * per_epoch + step - first, n_retrain * per_epoch,
                                                   warmup=False)
        else:
            state["lr_factor"] = self.schedule.set(epoch * per_epoch + step, (total_epochs - n_retrain) * per_epoch)
        x = batch["image"].to(self.dev)
        y = batch["label"].to(self.dev)
        target = torch.as_tensor(batch["ece"], dtype=torch.float32, device=self.dev).view(-1, 1)
        with model_precision(self.plan, self.dev):
            out = self.model.voxel_outputs(x, region_mask=(y > 0) if state["teacher_forcing"] else None,
                                           body_grad=not retrain)
            seg, logit = out[:, :2], self.model.pool(out)
            seg_l = self.seg_loss(seg.float(), y)  # no gradient when re-training: logged only
            per_case = self.cls_loss(logit.float().view(-1, 1), target).view(-1)
            if self.plan.cls_in_view_only:  # crops whose pooling region holds a node
                in_view = (out[:, 2].flatten(1).sum(1) >= 1.0).float()
                cls_l = (per_case * in_view).sum() / in_view.sum().clamp_min(1.0)
            else:
                cls_l = per_case.mean()
            loss = cls_l if retrain else seg_l + state["cls_weight"] * cls_l
        return loss, {"seg_loss": seg_l, "cls_loss": cls_l}

    def describe(self, r: dict, total_epochs: int) -> str:
        return (f"epoch {r['epoch']}/{total_epochs}: loss {r['loss']:.4f} (seg {r['seg_loss']:.4f}, "
                f"cls {r['cls_loss']:.4f} x{r['cls_weight']:.2f}{', teacher forcing' if r['teacher_forcing'] else ''}"
                f"{', classifier re-training' if r['cls_retrain'] else ''}) {r['seconds']:.1f}s")


class PerCropNodeDiceCE(torch.nn.Module):
    """Voxel cross-entropy + the node class's soft Dice loss of each crop holding at least one voxel of node,
    averaged over those crops (plan.dice_per_crop): a crop without node adds its false positives through the CE
    only (its own Dice would be 1 for any false positive voxel), and a small node weighs as much as a large one.
    logits B2..., target B1... class indices."""

    def __init__(self):
        super().__init__()
        self.dice = DiceLoss(include_background=False, to_onehot_y=True, softmax=True, batch=False, reduction="none")

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long())
        per_crop = self.dice(logits, target).flatten(1).mean(1)
        holds_node = (target[:, 0].flatten(1).sum(1) >= 1.0).float()
        return ce + (per_crop * holds_node).sum() / holds_node.sum().clamp_min(1.0)


@dataclass
class Pretrainer(_EpochLoop):
    plan: Plan
    model: MaskedPretrainer
    items: list[dict]
    progress: bool = True
    log: callable = _log.info
    label = "MAE epoch"

    def __post_init__(self):
        self.dev = device()
        self.model.to(self.dev)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.plan.learning_rate,
                                           weight_decay=self.plan.mae_weight_decay)
        images = [{"image": it["image"]} for it in self.items]
        self.loader = cached_loader(images, mae_transforms(self.plan), self.plan.batch_size, shuffle=True,
                                    seed=self.plan.seed, iterations=self.plan.iterations_per_epoch)

    def clip_norm(self) -> float:
        return self.plan.mae_grad_clip_norm

    def epoch_start(self, epoch: int, total_epochs: int) -> dict:
        # each epoch draws its cases, crops and masks from a stream of its own (seed, epoch), so a pretraining
        # resumed at epoch k (stages.pretrain) continues exactly as the uninterrupted run would have
        s = int(np.random.SeedSequence([self.plan.seed, epoch]).generate_state(1)[0])
        torch.manual_seed(s)
        self.loader.dataset.transform.set_random_state(seed=s)
        for generator in (self.loader.generator, getattr(self.loader.sampler, "generator", None)):
            if generator is not None:
                generator.manual_seed(s)
        return {}

    def train_step(self, batch, epoch: int, total_epochs: int, step: int, state: dict):
        x = batch["image"].to(self.dev)
        with model_precision(self.plan, self.dev):
            loss, _, _ = self.model(x)
        return loss, {}

    def describe(self, r: dict, total_epochs: int) -> str:
        return f"MAE epoch {r['epoch']}/{total_epochs}: masked-voxel L1 {r['loss']:.4f} {r['seconds']:.1f}s"


AIR_BACKGROUND_LOGIT = 20.0  # segmentation logit of "background" in the windows skip_air leaves out


@torch.no_grad()
def predict_volume(model: DualOutputSwinUNETR, image: torch.Tensor, plan: Plan, region: torch.Tensor | None = None,
                   progress: bool = False, skip_air: bool = False):
    """Whole-volume sliding-window outputs (1, C, ...) and the case probability; image is (1,1,D,H,W) in [0,1].
    progress: a bar over the windows (inference of one patient on a CPU takes minutes).
    skip_air (clinical inference, `ecefl infer`): a window whose every voxel lies at or below the HU window's lower
    bound (-250 HU: air, lung) is not run through the network; it reads "background, no pooling weight". A body
    voxel lies only in windows that hold it, so every output inside the body is the full sliding window's (bit for
    bit at sw_batch_size 1, the presets; batched, up to float rounding); a planning CT's wide field of view (air,
    arms, table) then costs only the windows over the patient. Training-side
    validation and `ecefl evaluate` keep the full sliding window."""
    dev = device()
    model.eval().to(dev)  # a model loaded from a checkpoint is on the CPU; no-op when already on the device
    n_channels = model.n_output_channels

    def predictor(x, r=None, allowed=None):
        if not skip_air:
            return model.voxel_outputs(x, r, allowed=allowed).float()
        out = torch.zeros((x.shape[0], n_channels, *x.shape[2:]), device=x.device)
        out[:, 0] = AIR_BACKGROUND_LOGIT
        body = x.flatten(1).amax(1) > 0
        if body.any():
            out[body] = model.voxel_outputs(x[body], None if r is None else r[body],
                                            allowed=None if allowed is None else allowed[body]).float()
        return out

    # extra input channels (mirrored and cut into windows with the CT): the teacher-forced region, the neck
    within = neck_region(image, model.plan)
    extra = [m.float() for m in (region, within) if m is not None]
    inputs = torch.cat([image, *extra], dim=1) if extra else image

    def split(x):
        masks = iter(x[:, 1:].unbind(1))
        r = next(masks).unsqueeze(1) > 0.5 if region is not None else None
        allowed = next(masks).unsqueeze(1) > 0.5 if within is not None else None
        return predictor(x[:, :1], r, allowed)

    # the model's own precision, layout and mirroring (its plan: what the read-out refit ran in); `plan` sets the
    # sliding window
    with model_precision(model.plan, dev), compute_layout(model, model.plan):
        out = flip_averaged(model.plan, inputs.to(dev), lambda v: sliding_window(plan, v, split, progress))
    prob = torch.sigmoid(model.pool(out)).item()
    return out.cpu(), float(prob)


def sliding_window(plan: Plan, volume: torch.Tensor, predictor, progress: bool = False) -> torch.Tensor:
    """predictor's outputs over the whole volume, window by window as the plan says (patch size, windows per pass,
    overlap, blending): the one sliding window of validation, evaluation, inference and the read-out refit."""
    return sliding_window_inference(volume, roi_size=plan.patch_size, sw_batch_size=plan.sw_batch_size,
                                    predictor=predictor, overlap=plan.sw_overlap, mode=plan.sw_blend,
                                    progress=progress)


LEFT_RIGHT = 2  # the first spatial axis of (B, C, x, y, z) on the plan's RAS grid


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected region of a boolean volume (the body, a node); the mask itself when it holds none."""
    from scipy import ndimage
    labels, n = ndimage.label(mask)
    return labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1) if n else mask


def neck_region(image: torch.Tensor, plan: Plan) -> torch.Tensor | None:
    """(1, 1, x, y, z) bool: the voxels within plan.node_max_lateral_mm to the left or right of the body's midline
    on their axial slice (image: the plan's RAS grid in window units); the model's node gate closes beyond them
    (DualOutputSwinUNETR.voxel_outputs). The body is the largest connected region above the window floor (a table
    apart from it does not count); its midline on a slice is the centre of its left-right extent there. None when
    the plan's limit is 0 (off)."""
    limit = float(plan.node_max_lateral_mm or 0.0)
    if limit <= 0:
        return None
    body = largest_component(image[0, 0].cpu().numpy() > 0)
    within = np.ones(body.shape, dtype=bool)
    if body.any():
        x_mm = np.arange(body.shape[0]) * float(plan.spacing[0])
        for k in np.nonzero(body.any((0, 1)))[0]:
            occupied = np.nonzero(body[:, :, k].any(1))[0]
            within[:, :, k] = (np.abs(x_mm - (x_mm[occupied[0]] + x_mm[occupied[-1]]) / 2) <= limit)[:, None]
    return torch.from_numpy(within)[None, None]


def flip_averaged(plan: Plan, volume: torch.Tensor, outputs) -> torch.Tensor:
    """outputs(volume), averaged with the left-right mirror of outputs(mirrored volume) when plan.tta_flip. Every
    channel may be averaged: the segmentation logits, and the pooling channels, which add over windows."""
    out = outputs(volume)
    if not plan.tta_flip:
        return out
    mirrored = outputs(torch.flip(volume, dims=[LEFT_RIGHT]))
    return (out + torch.flip(mirrored, dims=[LEFT_RIGHT])) / 2


def on_ct_and_plan_grids(item: dict, plan: Plan, keys=("image", "label")) -> tuple[dict, dict]:
    """A case's NIfTI files (item[key] paths: the CT, its label) as stored (the CT's own grid, where its contours
    were drawn) and on the plan grid the model runs on (MetaTensors: their affines map one onto the other)."""
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
    keys = list(keys)
    stored = Compose([LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)])(
        {k: item[k] for k in keys})
    planned = Compose(build_transforms(preprocessing_spec(plan, keys, load=False)))(
        {k: stored[k].clone() for k in keys})
    return stored, planned


def node_probability_on(voxel_out: torch.Tensor, plan_image, grid) -> np.ndarray:
    """The node probability (softmax of the two segmentation logits; ~0 where the HU gate acts) resampled linearly
    from the plan grid (plan_image: the model's input, a MetaTensor) onto grid (the CT as stored), as nnU-Net
    exports probabilities at the original spacing before it thresholds them: the nodal mask then follows the CT's
    own voxels instead of the plan's 2 mm steps (Dice on the CT's grid +0.007 to +0.010 over the plan-grid mask
    upsampled by nearest neighbour on three demos' 30 validation cases, +0.008 [+0.003, +0.013] on 120 unseen
    patients; docs/BENCHMARKS.md, session 32)."""
    from monai.transforms import ResampleToMatch
    meta = plan_image.clone()
    meta.array = torch.softmax(voxel_out[:, :2].float(), dim=1)[0, 1:2].numpy()
    return np.asarray(ResampleToMatch(mode="bilinear")(meta, img_dst=grid)[0])


def predict_cases(model: DualOutputSwinUNETR, items: list[dict], plan: Plan, progress: bool = True,
                  keep_outputs: bool = False, node_threshold: float = 0.5) -> dict:
    """Per-case probability, Dice and voxel counts for labelled items; stays site-local. Dice is the mask `ecefl
    infer` writes, on the CT's own grid, against the site's label there: node probability (node_probability_on)
    > node_threshold (the model file's); "dices_at" holds each case's Dice at every candidate of
    metrics.NODE_THRESHOLDS (the choice of the threshold). keep_outputs: the plan-grid volumes (report figures)."""
    probs, labels, dices, voxels, outputs, dices_at, voxel_ml = [], [], [], [], [], [], []
    for item in tqdm(items, desc="evaluate", unit="case", leave=False, disable=not progress):
        stored, planned = on_ct_and_plan_grids(item, plan)
        # the label is scored voxel by voxel on the CT's grid: both must be that grid (preprocessing writes them so)
        if stored["label"].shape != stored["image"].shape or not np.allclose(
                np.asarray(stored["label"].affine), np.asarray(stored["image"].affine), atol=1e-3):
            raise ValueError(f"case {item['case_id']}: its label and its CT lie on different grids (size "
                             f"{tuple(stored['label'].shape[1:])} vs {tuple(stored['image'].shape[1:])}, or position "
                             "and spacing): a damaged or replaced preprocessed file; re-run `ecefl preprocess` for "
                             "this case or remove it from the datalist")
        out, prob = predict_volume(model, planned["image"].as_tensor().unsqueeze(0).float(), plan)
        node_prob = node_probability_on(out, planned["image"], stored["image"])
        target = np.asarray(stored["label"][0]) > 0.5
        pred = node_prob > node_threshold
        tp, fp, fn = M.voxel_counts(pred, target)
        probs.append(prob)
        labels.append(int(item["ece"]))
        dices.append(M.dice_from_counts(tp, fp, fn))
        voxels.append((tp, fp, fn))
        voxel_ml.append(float(np.prod(np.asarray(stored["image"].pixdim[:3], float))) / 1000.0)
        dices_at.append([M.dice_from_counts(*M.voxel_counts(node_prob > t, target)) for t in M.NODE_THRESHOLDS])
        if keep_outputs:
            outputs.append({"image": np.asarray(planned["image"][0]), "label": np.asarray(planned["label"][0]) > 0.5,
                            "pred": DualOutputSwinUNETR.node_mask(out, node_threshold)[0].numpy(),
                            "evidence": model.attribution(out)[0, 0].numpy()})
    result = {"probs": np.array(probs), "labels": np.array(labels, int), "dices": np.array(dices),
              "voxels": np.array(voxels, float).reshape(-1, 3), "case_ids": [it["case_id"] for it in items],
              "dices_at": np.array(dices_at, float).reshape(-1, len(M.NODE_THRESHOLDS)),
              "voxel_ml": np.array(voxel_ml, float)}
    if keep_outputs:
        result["outputs"] = outputs
    return result


def evaluate_cases(pred: dict, threshold: float, n_boot: int = 1000, seed: int = 0) -> dict:
    return M.nan_safe(M.case_metrics(pred["probs"], pred["labels"], pred["dices"], pred["voxels"], threshold,
                                     n_boot=n_boot, seed=seed))


# predicted_ml / reference_ml: the found nodes' and the contours' volumes on the CT's grid (over- or under-marking)
PREDICTION_COLUMNS = ["case_id", "probability", "ece", "dice", "predicted_ml", "reference_ml"]
# where a federated site keeps the final global model's per-case results on its validation split (relative to its
# datalist's folder; written by the site's client, read by the demo's evidence figures, never sent)
FINAL_PREDICTIONS = "predictions/final_validation.csv"


def write_predictions(path, pred: dict) -> None:
    """Per-case results of predict_cases as a site-local CSV (pseudonymised case ids; never sent anywhere)."""
    import csv
    from pathlib import Path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(PREDICTION_COLUMNS)
        for cid, p, y, d, (tp, fp, fn), ml in zip(pred["case_ids"], pred["probs"], pred["labels"], pred["dices"],
                                                  pred["voxels"], pred["voxel_ml"]):
            writer.writerow([cid, f"{p:.6f}", int(y), f"{d:.6f}", f"{(tp + fp) * ml:.3f}", f"{(tp + fn) * ml:.3f}"])
    tmp.replace(path)


def read_predictions(path) -> dict[str, dict]:
    """case_id -> {"probability", "ece", "dice"} of a CSV that write_predictions wrote."""
    import csv
    with open(path, newline="") as fh:
        return {r["case_id"]: {"probability": float(r["probability"]), "ece": int(r["ece"]), "dice": float(r["dice"])}
                for r in csv.DictReader(fh)}


def stats_of(pred: dict, threshold: float, plan: Plan) -> dict:
    return M.site_stats(pred["probs"], pred["labels"], pred["dices"], pred["voxels"], threshold, plan.score_bins,
                        dices_at=pred.get("dices_at"))
