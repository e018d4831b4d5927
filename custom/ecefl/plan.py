"""The training plan: geometry, intensity, architecture and optimisation in one declarative record.

A plan travels inside every checkpoint, so fine-tuning, evaluation, inference and the MONAI bundle read the
exact spacing/window/architecture the weights were trained with (the nnU-Net idea of a plan).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, fields, replace

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    preset: str = "cpu-small"
    spacing: tuple[float, float, float] = (2.0, 2.0, 2.0)  # mm, RAS voxel grid after resampling
    patch_size: tuple[int, int, int] = (64, 64, 64)  # divisible by 32 (SwinUNETR), >= 64 for instance norm
    hu_window: tuple[float, float] = (-250.0, 350.0)  # soft tissue + contrast vessels -> [0, 1]
    feature_size: int = 12  # divisible by 12
    depths: tuple[int, ...] = (1, 1, 1, 1)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    use_v2: bool = False
    # Swin attention window in tokens; 7 is MONAI's default. 4 divides the 32^3 token grid of a 64^3 patch (7 pads
    # it to 35^3) and makes a CPU training step 2.4x cheaper (docs/BENCHMARKS.md)
    window_size: int = 7
    amp: bool = False
    batch_size: int = 2
    crops_per_case: int = 1
    # optimiser steps per epoch; 0 = one pass over the training cases. A fixed count (nnU-Net's 250 iterations)
    # gives every site the same local steps per round whatever its size, and a schedule independent of data size
    iterations_per_epoch: int = 0
    learning_rate: float = 3e-4
    weight_decay: float = 1e-5
    grad_clip_norm: float = 12.0  # global gradient norm clip of every fine-tuning step (0 = off)
    mae_grad_clip_norm: float = 0.0  # the same for MAE pretraining (off: its L1 loss has small gradients)
    mae_weight_decay: float = 0.05  # MAE pretraining's AdamW weight decay (masked-image models use 0.05)
    # learning rate over the global step count (identical in central and federated training):
    # "constant", or "cosine" decay to 0 after a linear warm-up over warmup_fraction of the steps
    lr_schedule: str = "constant"
    warmup_fraction: float = 0.0
    # share of training crops centred anywhere in the volume instead of on a node: sliding-window inference sees
    # background everywhere, and a network that never saw it there predicts nodes in it
    neg_crop_fraction: float = 0.0
    # a node-centred crop is shifted by up to this many voxels per axis: with the node always at the crop centre
    # the network learns "node = centre of the window" and finds nothing in a sliding window (measured: 0 true
    # positive voxels of whole-volume predictions with crop Dice 0.2; docs/BENCHMARKS.md)
    crop_jitter: int = 0
    # Dice over the node class only and over the whole batch (nnU-Net's batch Dice): a crop with few nodal voxels
    # then does not swing the loss, and background Dice (always ~1) does not halve the nodal gradient
    dice_foreground_batch: bool = False
    # instead (supersedes dice_foreground_batch): the node Dice of each crop that holds node on its own, averaged over
    # those crops, plus the voxel CE (engine.PerCropNodeDiceCE). Over the whole batch a small node beside a large one
    # barely moves the loss, and the validation cases a model missed were small nodes (1-3 ml of label: the node and
    # its 3 mm perinodal rim). On in the presets since session 34
    dice_per_crop: bool = False
    # "intensity": random intensity scale x(1 +- 0.1) and shift +-0.05 of the window (up to +-60 HU at fat);
    # "ct": what differs between CT scanners while HU stays calibrated: noise, blur (reconstruction kernel),
    # thicker slices, and HU offsets of +-10 at most, so fat (-100 HU) and stranded fat (-60..-20 HU) stay apart
    augmentation: str = "intensity"
    # with "ct": this share of the training crops sharpened by an unsharp mask (x + a (x - G_s x), a 0.3-1.0, s
    # 0.5-1 voxel), as a sharper reconstruction kernel renders a CT (the "ct" augmentation's blur only softens): a
    # network that never saw edges sharper than one generator's may not recognise a node drawn sharper. 0 = off
    ct_sharpen: float = 0.0
    # bf16 autocast on a CPU with bf16 matrix units (Intel AMX), in training and in every forward pass after it;
    # fp32 on other CPUs whatever this says (engine.uses_bf16). benchmarks/step.py measures it
    cpu_bf16: bool = False
    # the fine-tuning job's federated workflow: "fedavg" (every site trains the round's model at once, the server
    # averages) or "cyclic" (cyclic weight transfer: the model visits the sites one after another; ecefl.fl.server)
    fl_workflow: str = "fedavg"
    # conv weights in channels-last-3d memory while training and predicting: oneDNN's 3D convolutions (above all
    # their backward at full resolution) run 2-3x faster in that layout on this CPU, the whole step ~0.8x; the same
    # outputs up to float rounding. State dicts, checkpoints and messages keep the standard layout.
    channels_last: bool = False
    # classification: positive-class weight from label counts ("weighted_bce") or "focal"
    cls_loss: str = "weighted_bce"
    focal_gamma: float = 2.0
    # total loss = DiceCE + w(epoch) * cls, w ramps linearly from cls_weight_start to 1 over the first
    # cls_ramp_fraction of the epochs (the head needs a sensible nodal region before its loss dominates)
    cls_weight_start: float = 0.5
    cls_ramp_fraction: float = 0.5
    # the case-level loss only for crops whose pooling region holds at least one voxel of node (a negative or
    # jittered crop without the node carries no information on the case's ECE label, only noise)
    cls_in_view_only: bool = False
    teacher_forcing_fraction: float = 0.5  # pool over the reference ROI for this share of epochs
    # classifier re-training (Kang et al., ICLR 2020): the last share of the epochs trains only the evidence head
    # and bias on the now fixed segmentation features, over the predicted nodes, with its own cosine from the head's
    # learning rate. Jointly trained, the head chases features that move every step (measured: a chance-level head
    # on the federated demo's network, AUC 0.88 after 60 steps of the head alone; docs/BENCHMARKS.md). The body
    # is run without gradient there, so these steps cost about a third of a joint step.
    cls_retrain_fraction: float = 0.0
    # after the last epoch/round, the case read-out (evidence head's last layer + bias, linear in pooled features)
    # is refitted with this many Newton iterations of a class-weighted logistic regression over all training
    # cases, the body fixed: exact and, federated, from securely summed site gradients/Hessians (ecefl.readout);
    # 0 = off. readout_ridge pulls towards the jointly trained read-out (per unit of case weight)
    readout_refit_iterations: int = 0
    readout_ridge: float = 0.1
    # the ridge on standardised read-out features (variances from the refit's own summed Hessian): a hidden layer
    # that gives its features a small spread otherwise meets a ridge that squashes every probability towards 0.5
    readout_standardise: bool = False
    # k >= 2: the ridge is not readout_ridge but the one of readout_ridge_grid whose refit, fitted with each of k
    # folds of the training cases left out, has the least class-weighted log-loss on the left-out cases (summed
    # over sites: exact through the secure sum; one round more); 0 = off. The jointly trained read-out is a good
    # prior after some starts and poor after others. Measured on 10 trained bodies at an unseen hospital (120
    # patients): AUC +0.010 [-0.012, +0.031] over the presets' fixed ridge, +0.037 [-0.003, +0.078] on MAE starts
    # with 30 training cases (whose good read-out the fixed ridge overfits away), -0.005 with 90-120 (a whole demo
    # among them: -0.002); off in the presets, every interval holding 0 (docs/BENCHMARKS.md, sessions 27 and 28)
    readout_ridge_cv_folds: int = 0
    readout_ridge_grid: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)
    # a fold's terms are sums over about 1/k of a site's training cases (the server can difference them against
    # the refit over all cases): a site sends the CV's terms only when each of its folds holds at least this many
    # of its training cases or none (and, under the site's --min-count rule, that many of each class); otherwise the
    # federated refit uses readout_ridge. ecefl train (the data in one place) cross-validates whatever the size
    readout_ridge_cv_min_cases: int = 5
    # the read-out also weighs, per voxel and linearly, the CT value and its soft HU bins (fat, stranded fat, soft
    # tissue), so the refit always holds their pooled shares over the nodes and shell, the signs a radiologist
    # reads, whatever the evidence head's hidden layer learned. These weights are set by the refit only (0 before)
    readout_hu_features: bool = False
    # [low, high] HU: with readout_hu_features, the CT inputs' read-out term is averaged over the fat inside the
    # predicted nodal region (the 3 mm of perinodal fat the soft-tissue dilation adds to every contour), not over the
    # whole region, and gets its own bias: the refit then reads the perinodal fat's mean HU and HU-bin shares, i.e.
    # fat stranding, which a whole-region average dilutes with the node's own HU and its size. None: off
    readout_fat_hu: tuple[float, ...] | None = None
    # off: the refit (readout_refit_iterations > 0; without one this changes nothing) keeps the read-out's weights
    # on the evidence head's hidden features at 0 and weighs only the CT inputs (with readout_fat_hu: the perinodal
    # fat's HU and HU-bin shares, i.e. stranding), the region's size and the biases. The hidden features separate
    # the training hospitals' cases and need not transfer: on the contoured nodes of an independent generator's
    # hospital the read-out with them ranked ECE at AUC 0.68 where the perinodal fat's HU alone reached 0.84
    # (docs/BENCHMARKS.md, session 42). Off in the presets (session 43)
    readout_hidden: bool = True
    head_lr_multiplier: float = 10.0  # the small evidence head learns faster than the pretrained backbone
    # the Swin encoder (the part MAE pretrains) at this multiple of the body's learning rate: MAE fine-tuning
    # recipes keep pretrained layers slower (layer-wise decay 0.65-0.75); 1.0 = one rate for the whole body
    encoder_lr_multiplier: float = 1.0
    # share of the classification gradient that reaches the shared SwinUNETR features: with few cases the noisy
    # case-level loss otherwise drowns the voxel-level segmentation signal (measured: no node found after 20
    # steps with 1.0, Dice 0.15 with segmentation alone; docs/BENCHMARKS.md)
    cls_feature_grad: float = 0.1
    evidence_hu_bins: tuple[float, ...] = (-150.0, -100.0, -50.0, 0.0, 50.0, 100.0)  # soft HU steps for the head
    evidence_hu_bin_width: float = 20.0  # HU
    # soft HU bins of the local mean over k^3 voxels (odd k; 1 = the voxel itself): scanner noise (10-22 HU
    # between our sites, more in low-dose CT) otherwise shifts the share of voxels in each bin and so the score
    evidence_hu_smoothing: int = 1
    # the case logit contrasts the evidence over the nodal region with the evidence over the rest of the patch's
    # fat and soft tissue (HU -200..150, outside the region): a within-case reference, as a radiologist compares
    # perinodal fat with the patient's other fat. What a scanner shifts everywhere (noise texture, kernel, HU
    # calibration) then cancels instead of moving all of a hospital's scores (measured offsets: docs/BENCHMARKS.md)
    evidence_reference: bool = False
    # the coarsest acquisition (pixel spacing, slice spacing in mm) on which `ecefl infer` calls the ECE probability
    # assessable. Blur mixes node, fat and soft tissue into the intermediate HU of fat stranding: the unseen
    # hospital's ECE-negative patients re-imaged with 2.5 mm pixels (its own: 1.3-1.5 mm) scored p(ECE) 0.75 on
    # average instead of 0.20, with 5 mm slices 0.56, with the real HNSCC CTs' 7.5 mm pixels 1.00 (docs/BENCHMARKS.md).
    # The presets' training hospitals have 1.45-1.75 mm pixels and 2-3 mm slices
    assessable_spacing_mm: tuple[float, float] = (2.0, 3.0)
    node_prior: float = 0.05  # initial foreground probability of the segmentation output
    # voxels whose CT value lies outside this HU range are never node: a lymph node, necrotic or with extranodal
    # extension, is soft tissue; bone, contrast-filled vessels, air and fat outside it are not (the site
    # preprocessing gates its contour dilation by the same -150..200 HU). Applied to the segmentation logits of the
    # model in eval mode (validation, the read-out refit, evaluate, infer), so the pooling region never holds such a
    # voxel either; training learns from the contours, which the preprocessing confines to it. [] / null: no gate
    node_hu_range: tuple[float, ...] | None = None
    # mm: found nodes kept to the neck at evaluation and inference. Farther than this to the left or right of the
    # body's midline on its axial slice (the shoulders and arms of a planning CT) the node gate closes as the HU
    # gate's does (engine.neck_region): no cervical lymph node lies there, and on the two real CTs half of the nodal
    # volume the models marked did (shoulder muscle and fat, which no training neck showed). 0: off
    node_max_lateral_mm: float = 0.0
    shell_weight: float = 0.5  # perinodal shell added to the pooling region (ECE lives at the border)
    shell_mm: float = 6.0
    balanced_sampling: bool = False
    mae_mask_ratio: float = 0.6
    mae_cube: int = 16  # voxels; divides the patch size and is a multiple of the patch embedding (2)
    # what reconstructs the masked voxels: "deep" = a light head on the two deepest encoder stages (SimMIM; only the
    # Swin encoder is pretrained and transferred); "unet" = the whole SwinUNETR decoder with its skip connections,
    # so encoder and decoder are pretrained and fine-tuning starts both from it (the segmentation output stays new)
    mae_reconstruct: str = "deep"
    score_bins: int = 1000  # fixed [0,1] bins of the additive score histograms
    sw_overlap: float = 0.25  # sliding-window overlap at evaluation/inference
    # how overlapping windows are blended: "constant" (plain mean) or "gaussian" (each window's centre counts more
    # than its border, where the network saw the least context; nnU-Net's default). Same windows, same cost
    sw_blend: str = "constant"
    # windows per forward pass of the sliding window (the same outputs up to float rounding: every layer normalises
    # per sample). On this CPU batching does not pay with the sites' one thread each (4 whole necks: 11-13 s one
    # window at a time, 14-17 s four at a time; docs/BENCHMARKS.md); a GPU site may raise it
    sw_batch_size: int = 1
    # whole-volume outputs averaged with those of the left-right mirrored CT (flip test-time augmentation; the neck
    # is nearly symmetric and training flips left-right): validation, evaluate, infer and the read-out refit's
    # features alike, so the refitted read-out is exact for the averaged outputs. Doubles their cost
    tta_flip: bool = False
    # with tta_flip, whether the read-out refit's features average the mirror too (exact for the averaged outputs).
    # Off, the refit reads the CT alone: half its cost (whole necks of every training case), and the averaged
    # outputs at evaluation go through a read-out fitted on single passes
    readout_tta_flip: bool = True
    # federated: sites validate the received global model every k-th round (and always the final model; 0: the
    # final model only); whole-neck sliding-window validation otherwise costs about as much as a round's training
    # on a CPU
    validate_every: int = 1
    # federated: the server's step on the averaged update (FedOpt with server SGD, Reddi et al. 2021; FedAvgM,
    # Hsu et al. 2019): global += server_lr * m, m = server_momentum * m + (average - global). 1.0 and 0.0 are
    # FedAvg. The centralised CLI has no server and ignores both
    server_lr: float = 1.0
    server_momentum: float = 0.0
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        known = {f.name for f in fields(cls)}
        clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known}
        return cls(**clean)

    def with_overrides(self, **kw) -> "Plan":
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def validate(self) -> "Plan":
        if len(self.spacing) != 3 or not all(isinstance(s, (int, float)) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be three voxel sizes in mm, all > 0, not {self.spacing!r}")
        if any(p % 32 for p in self.patch_size) or min(self.patch_size) < 64:
            raise ValueError(f"patch_size {self.patch_size} must be divisible by 32 and at least 64")
        if self.feature_size % 12:
            raise ValueError(f"feature_size {self.feature_size} must be divisible by 12")
        if any(p % self.mae_cube for p in self.patch_size) or self.mae_cube % 2:
            raise ValueError(f"mae_cube {self.mae_cube} must divide patch_size {self.patch_size} and be even")
        if self.augmentation not in ("intensity", "ct"):
            raise ValueError(f"augmentation must be intensity or ct, not {self.augmentation}")
        if not 0.0 <= self.ct_sharpen <= 1.0 or (self.ct_sharpen and self.augmentation != "ct"):
            raise ValueError(f"ct_sharpen must be a share in [0, 1], and > 0 only with augmentation ct, not "
                             f"{self.ct_sharpen} (augmentation {self.augmentation})")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ValueError(f"lr_schedule must be constant or cosine, not {self.lr_schedule}")
        if not 0 <= self.cls_retrain_fraction < 1:
            raise ValueError(f"cls_retrain_fraction must lie in [0, 1), not {self.cls_retrain_fraction}")
        if not 0 <= self.neg_crop_fraction < 1 or not 0 <= self.warmup_fraction < 1:
            raise ValueError("neg_crop_fraction and warmup_fraction must lie in [0, 1)")
        if self.evidence_hu_smoothing < 1 or self.evidence_hu_smoothing % 2 == 0:
            raise ValueError(f"evidence_hu_smoothing must be an odd number of voxels >= 1, not {self.evidence_hu_smoothing}")
        if self.encoder_lr_multiplier <= 0 or self.head_lr_multiplier <= 0:
            raise ValueError("encoder_lr_multiplier and head_lr_multiplier must be > 0")
        if self.validate_every < 0:
            raise ValueError(f"validate_every must be >= 0 (0: the final model only), not {self.validate_every}")
        if self.fl_workflow not in ("fedavg", "cyclic"):
            raise ValueError(f"fl_workflow must be 'fedavg' or 'cyclic', not {self.fl_workflow!r}")
        if self.mae_reconstruct not in ("deep", "unet"):
            raise ValueError(f"mae_reconstruct must be 'deep' or 'unet', not {self.mae_reconstruct!r}")
        if self.sw_blend not in ("constant", "gaussian"):
            raise ValueError(f"sw_blend must be 'constant' or 'gaussian', not {self.sw_blend!r}")
        if self.sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, not {self.sw_batch_size}")
        if self.readout_refit_iterations < 0 or self.readout_ridge < 0:
            raise ValueError("readout_refit_iterations and readout_ridge must be >= 0")
        if self.readout_ridge_cv_min_cases < 1:
            raise ValueError(f"readout_ridge_cv_min_cases must be >= 1, not {self.readout_ridge_cv_min_cases}")
        if self.readout_ridge_cv_folds == 1 or self.readout_ridge_cv_folds < 0 or (
                self.readout_ridge_cv_folds and (not self.readout_ridge_grid or min(self.readout_ridge_grid) <= 0)):
            raise ValueError("readout_ridge_cv_folds must be 0 (off) or >= 2, with a readout_ridge_grid of ridges > 0, "
                             f"not {self.readout_ridge_cv_folds} and {list(self.readout_ridge_grid)}")
        if len(self.assessable_spacing_mm) != 2 or min(self.assessable_spacing_mm) <= 0:
            raise ValueError("assessable_spacing_mm must be [pixel spacing, slice spacing] in mm, both > 0, not "
                             f"{self.assessable_spacing_mm}")
        if self.node_hu_range and not (len(self.node_hu_range) == 2 and self.node_hu_range[0] < self.node_hu_range[1]):
            raise ValueError(f"node_hu_range must be [low, high] HU with low < high, or [] (no gate), not "
                             f"{self.node_hu_range}")
        if self.node_max_lateral_mm < 0:
            raise ValueError(f"node_max_lateral_mm must be >= 0 (0: off), not {self.node_max_lateral_mm}")
        if not self.readout_hidden and not self.readout_hu_features:
            raise ValueError("readout_hidden=false leaves the refit only the CT inputs: it needs readout_hu_features "
                             "on")
        fat = self.readout_fat_hu
        if fat and not (self.readout_hu_features and len(fat) == 2
                        and all(isinstance(v, (int, float)) for v in fat) and fat[0] < fat[1]):
            raise ValueError(f"readout_fat_hu must be [low, high] HU with low < high, with readout_hu_features on, or "
                             f"[] (off), not {self.readout_fat_hu} (readout_hu_features {self.readout_hu_features})")
        if self.server_lr <= 0 or not 0 <= self.server_momentum < 1:
            raise ValueError(f"server_lr must be > 0 and server_momentum in [0, 1), not {self.server_lr}, "
                             f"{self.server_momentum}")
        if self.cls_loss not in ("weighted_bce", "focal"):
            raise ValueError(f"cls_loss must be weighted_bce or focal, not {self.cls_loss}")
        return self


# What every preset takes from the learning A/B runs (docs/BENCHMARKS.md, "The model learns"): nodes anywhere in
# the crop (crop_jitter = a quarter patch; without it whole-volume Dice was 0.00 at crop Dice 0.2), a third of the
# crops anywhere in the neck, the node Dice per crop, warm-up then cosine decay over the global steps, found nodes
# kept to the neck, and the read-out refit after training.
_LEARNING = dict(neg_crop_fraction=0.33, dice_foreground_batch=True, lr_schedule="cosine", warmup_fraction=0.1,
                 cls_in_view_only=True,
                 # the node Dice per crop (finds the small nodes batch Dice missed): over three paired demos' 90
                 # validation cases Dice +0.008 [-0.006, +0.023], at the unseen hospital +0.028 [+0.019, +0.039] over
                 # three seeds (360 paired patients), AUC -0.012 [-0.039, +0.013]; on the real CTs no systematic
                 # change in nodal volume over three seeds (docs/BENCHMARKS.md, sessions 33, 34)
                 dice_per_crop=True,
                 # found nodes kept within 10 cm of the body's midline: on the two real CTs half of the marked volume
                 # lay in the shoulders (64 -> 32 and 123 -> 64 ml on the seed-1 model); at the unseen hospital no
                 # voxel of soft tissue lies beyond it, so nothing changes there (docs/BENCHMARKS.md, session 34)
                 node_max_lateral_mm=100.0,
                 # what differs between scanners (noise, blur, thicker slices, +-10 HU): with the read-out refit and
                 # the HU gate, unseen-hospital Dice +0.022 [+0.012, +0.032] and +0.013 [+0.003, +0.024] in two
                 # paired demos, AUC -0.015 and +0.002 (both intervals hold 0); before the refit it had cost AUC
                 # (demos F and G). docs/BENCHMARKS.md, sessions (8) and (9)
                 augmentation="ct",
                 # and a quarter of the crops sharpened as by a sharper reconstruction kernel (the blur above only
                 # softens): on the seed-0 demo's body (one seed), Dice +0.033 [+0.009, +0.059] on its own 30
                 # validation patients, +0.021 [+0.012, +0.032] at our generator's unseen hospital and +0.017
                 # [+0.002, +0.031] at the independent generator's (120 each), AUC +0.032 / +0.021 / +0.015 (intervals
                 # hold 0); docs/BENCHMARKS.md, session 46
                 ct_sharpen=0.25,
                 # the case read-out refitted exactly on all training cases after the last round (pooled validation
                 # AUC +0.14 in two demos; ridge from a 5-fold CV on training cases; docs/BENCHMARKS.md)
                 readout_refit_iterations=8, readout_ridge=0.001,
                 # and the refit's features: the CT inputs beside the hidden layer's, the ridge on standardised
                 # features (unseen-hospital AUC +0.03 / +0.09 on two demos' bodies, docs/BENCHMARKS.md)
                 readout_hu_features=True, readout_standardise=True,
                 # and the CT inputs averaged over the fat inside the found nodal region (fat stranding) instead of
                 # over the whole region: unseen-hospital AUC +0.072 [+0.017, +0.136] (0.859 -> 0.931) and +0.028
                 # [-0.012, +0.070] (0.889 -> 0.917) on the seed-0 and seed-1 demos' bodies, the subtle ECE cases
                 # 0.61 -> 0.89 and 0.70 -> 0.81 against the ECE-negative ones (docs/BENCHMARKS.md, session 31).
                 # -190..-30 HU: the usual CT window of adipose tissue
                 readout_fat_hu=(-190.0, -30.0),
                 # and only those: the hidden features' weights kept at 0 (the read-out reads the perinodal fat's HU).
                 # At the independent generator's hospital (120 patients, seed-0 body) AUC +0.089 [-0.001, +0.179]
                 # on its found nodes (0.634 -> 0.723), +0.194 [+0.100, +0.287] on its true nodes (0.676 -> 0.870);
                 # at our own unseen hospital -0.043 [-0.092, -0.001] and +0.020 [-0.018, +0.068] on the seed-0 and
                 # seed-1 bodies (docs/BENCHMARKS.md, session 43)
                 readout_hidden=False,
                 # found nodes kept to soft tissue at evaluation and inference (on demo E0's model: unseen Dice +0.002
                 # [+0.002, +0.003], AUC -0.001; on the real CTs 97 % -> 100 % of the nodal volume inside the body)
                 node_hu_range=(-150.0, 200.0),
                 # overlapping sliding windows blended with a Gaussian centre weight instead of the plain mean (same
                 # windows and cost): unseen Dice +0.011 to +0.017 on 3 demo models at 2 hospitals, every interval
                 # above 0, AUC +0.001 to +0.007 (read-out held fixed); in a whole demo, whose read-out is refitted
                 # on the blended features, Dice +0.015 / +0.012 and AUC -0.010 / -0.017 (intervals hold 0);
                 # real-CT volume up (docs/BENCHMARKS.md, session (14))
                 sw_blend="gaussian",
                 # outputs averaged with those of the left-right mirrored CT: on demo G0's body at the unseen
                 # mimics hospital (120 patients), AUC +0.051 [+0.008, +0.097] with the refit on averaged
                 # features, +0.037 [-0.005, +0.082] with the refit on single passes; Dice +0.004 [+0.001, +0.006].
                 # On a second body (L0, refit on single passes) AUC -0.000 [-0.035, +0.031], Dice +0.003
                 # [-0.001, +0.007] (docs/BENCHMARKS.md, session (15)). Doubles validation and inference
                 tta_flip=True)

PRESETS: dict[str, Plan] = {
    # Runs on a 2-core CPU: a 64^3 patch at 2 mm (12.8 cm: the whole neck cross-section), shallow Swin with a
    # 4-token window (a 2.4x cheaper step than 7), 18 steps an epoch whatever a site's size (in channels-last
    # memory, the time 15 took before); lr 2e-3 for the body and 1e-3 for the evidence head (the head at 2e-3
    # stayed at chance)
    "cpu-small": Plan(window_size=4, crop_jitter=16, iterations_per_epoch=18, learning_rate=2e-3,
                      head_lr_multiplier=0.5, channels_last=True,
                      # bf16 autocast where the CPU has bf16 matrix units (Intel AMX; fp32 elsewhere): a training
                      # step 0.76 instead of 1.14 s on 2 threads, the demo 20.6 -> 17.0 min; unseen-hospital AUC
                      # -0.015 [-0.063, +0.033] (-0.000 with the refit in fp32), Dice -0.001 (docs/BENCHMARKS.md,
                      # session 30)
                      cpu_bf16=True,
                      # the refit on single passes: the demo's 20 minutes hold the mirror at validation (~+1 min)
                      # but not over all 90 training necks of the refit as well (~+3 min)
                      readout_tta_flip=False, **_LEARNING),
    # Real sites with a GPU: finer grid, the published SwinUNETR width, mixed precision.
    "gpu": Plan(preset="gpu", spacing=(1.5, 1.5, 1.5), patch_size=(96, 96, 96), feature_size=48,
                depths=(2, 2, 2, 2), use_v2=True, amp=True, batch_size=2, crops_per_case=2,
                learning_rate=1e-4, crop_jitter=24, **_LEARNING),
    # Tests only: the smallest configuration MONAI's SwinUNETR accepts (window 4 for a cheap step).
    "test-tiny": Plan(preset="test-tiny", spacing=(2.5, 2.5, 2.5), batch_size=1, sw_overlap=0.0, learning_rate=1e-3,
                      head_lr_multiplier=1.0, window_size=4, channels_last=True),
}


# what fine-tuning takes from the MAE plan it starts from: the geometry and architecture the encoder was trained in
INHERITED_FROM_PRETRAINING = ("spacing", "patch_size", "hu_window", "feature_size", "depths", "num_heads", "use_v2",
                              "window_size")


def plan_from_pretraining(plan: Plan, pretrained_plan: Plan, log=_log.info) -> Plan:
    """The fine-tuning plan on the pretraining plan's geometry and architecture (the one place this is decided:
    centralised training, the simulator, POC and production submissions all call it)."""
    inherited = {k: getattr(pretrained_plan, k) for k in INHERITED_FROM_PRETRAINING}
    changed = {k: v for k, v in inherited.items() if getattr(plan, k) != v}
    if changed:
        log(f"using the pretraining plan's {', '.join(sorted(changed))}")
    return plan.with_overrides(**inherited).validate()


def parse_assignments(assignments: list[str] | None) -> dict:
    """`FIELD=VALUE` strings (the CLI's --set) to plan overrides; VALUE is JSON (numbers, lists, true/false) or a
    plain string. Unknown fields are refused by name, and a switch given anything but true/false (`False`, `0`, `no`)
    too, so a typo never silently trains the preset."""
    import json
    known = {f.name for f in fields(Plan)}
    switches = {f.name for f in fields(Plan) if isinstance(f.default, bool)}
    out = {}
    for item in assignments or []:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in known:
            raise ValueError(f"--set {item!r}: expected FIELD=VALUE with FIELD one of the plan's fields "
                             f"({', '.join(sorted(known))})")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if key in switches and not isinstance(value, bool):
            raise ValueError(f"--set {item!r}: {key} is a switch, give {key}=true or {key}=false")
        out[key] = tuple(value) if isinstance(value, list) else value
    return out


def get_plan(name: str, **overrides) -> Plan:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name].with_overrides(**overrides).validate()
