"""Datalists (the preprocessing stage's output) and MONAI transforms driven by the plan."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader, Dataset, list_data_collate
from monai.transforms import (Compose, EnsureTyped, RandAffined, RandCropByPosNegLabeld, RandFlipd,
                              RandGaussianNoised, RandGaussianSharpend, RandGaussianSmoothd, RandScaleIntensityd,
                              RandShiftIntensityd, RandSimulateLowResolutiond, RandSpatialCropd, SpatialPadd)

from .plan import Plan

_log = logging.getLogger(__name__)


class DataError(ValueError):
    """A datalist that is missing, empty, or points at missing files."""


def load_datalist(path: str | Path, site: str | None = None) -> tuple[list[dict], list[dict]]:
    """(labelled, unlabelled) items with absolute paths; `site` tags each item (default: folder name)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"datalist {path} does not exist; run `ecefl preprocess` for that site first")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"datalist {path} is not valid JSON ({exc})") from exc
    site = site or path.parent.name
    base = path.parent
    labelled, unlabelled, missing = [], [], []
    for entry in raw.get("training", []):
        item = {"image": str(base / entry["image"]), "label": str(base / entry["label"]),
                "ece": int(entry["ece"]), "case_id": entry["case_id"], "site": site}
        missing += [item[k] for k in ("image", "label") if not Path(item[k]).is_file()]
        labelled.append(item)
    for entry in raw.get("unlabeled", []):
        item = {"image": str(base / entry["image"]), "case_id": entry["case_id"], "site": site}
        missing += [item["image"]] if not Path(item["image"]).is_file() else []
        unlabelled.append(item)
    if missing:
        raise DataError(f"datalist {path} points at {len(missing)} missing file(s), e.g. {missing[0]}; re-run "
                        "`ecefl preprocess` or fix the paths (they are relative to the datalist's folder)")
    if not labelled and not unlabelled:
        raise DataError(f"datalist {path} is empty (no 'training' or 'unlabeled' cases); check its qc_report.json")
    return labelled, unlabelled


def screen_cases(items: list[dict], log=_log.info) -> list[dict]:
    """The items whose CT (and label) hold only finite voxels; each other case is named and left out, so one
    damaged file does not end a site's training (NaN voxels make the loss NaN at the first step that sees them)."""
    import nibabel as nib
    kept = []
    for it in items:
        bad = []
        for key in ("image", "label"):
            if key in it:
                data = np.asarray(nib.load(it[key]).dataobj)
                n = int(data.size - np.isfinite(data).sum()) if np.issubdtype(data.dtype, np.floating) else 0
                if n:
                    bad.append(f"{key} has {n} non-finite voxel(s) (NaN/Inf)")
        if bad:
            log(f"case {it['case_id']} left out: its {'; '.join(bad)}. Re-run `ecefl preprocess` for this case "
                "(the preprocessed file is damaged) or remove it from the datalist; the other cases are used")
        else:
            kept.append(it)
    return kept


def load_datalists(paths) -> tuple[list[dict], list[dict]]:
    labelled, unlabelled = [], []
    for p in paths:
        lab, unl = load_datalist(p)
        labelled += lab
        unlabelled += unl
    return labelled, unlabelled


def stratified_split(items: list[dict], val_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Split per (site, class) so every site and class appears on both sides where it can."""
    if val_fraction <= 0:
        return list(items), []
    rng = np.random.default_rng(seed)
    train, val = [], []
    groups: dict = {}
    for it in items:
        groups.setdefault((it.get("site"), it["ece"]), []).append(it)
    for key in sorted(groups, key=str):
        group = groups[key]
        order = rng.permutation(len(group))
        n_val = int(round(val_fraction * len(group)))
        if len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        else:
            n_val = 0
        val += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, val


def label_subset(items: list[dict], fraction: float, seed: int) -> list[dict]:
    """Keep `fraction` of the labelled cases per class (at least one of each class)."""
    if fraction >= 1.0:
        return list(items)
    rng = np.random.default_rng(seed + 1)
    keep = []
    for cls in (0, 1):
        group = [it for it in items if it["ece"] == cls]
        if group:
            n = max(1, int(round(fraction * len(group))))
            keep += [group[i] for i in sorted(rng.permutation(len(group))[:n])]
    return keep


def preprocessing_spec(plan: Plan, keys: list[str], load: bool = True) -> list[dict]:
    """The plan-driven preprocessing (RAS, the plan's spacing, the HU window to [0, 1]) as MONAI-bundle records
    {"_target_": dictionary transform, **arguments}: the one definition that training and evaluation (here),
    inference (infer.py) and the MONAI bundle's inference.json (bundle.py) are all built from. Images are
    resampled linearly, every other key (masks) by nearest neighbour."""
    keys = list(keys)
    spec = [{"_target_": "LoadImaged", "keys": keys, "image_only": True},
            {"_target_": "EnsureChannelFirstd", "keys": keys}] if load else []
    spec += [{"_target_": "Orientationd", "keys": keys, "axcodes": "RAS",
              "labels": [["L", "R"], ["P", "A"], ["I", "S"]]},
             {"_target_": "Spacingd", "keys": keys, "pixdim": list(plan.spacing),
              "mode": ["bilinear" if k == "image" else "nearest" for k in keys]}]
    if "image" in keys:
        spec.append({"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": plan.hu_window[0],
                     "a_max": plan.hu_window[1], "b_min": 0.0, "b_max": 1.0, "clip": True})
    return spec


def build_transforms(spec: list[dict]) -> list:
    import monai.transforms as T
    return [getattr(T, record["_target_"])(**{k: v for k, v in record.items() if k != "_target_"})
            for record in spec]


def _geometry(plan: Plan, keys: list[str]) -> list:
    return build_transforms(preprocessing_spec(plan, keys)) + [EnsureTyped(keys=keys, track_meta=False)]


def eval_transforms(plan: Plan, with_label: bool = True) -> Compose:
    return Compose(_geometry(plan, ["image", "label"] if with_label else ["image"]))


def train_transforms(plan: Plan) -> Compose:
    keys = ["image", "label"]
    return Compose(_geometry(plan, keys) + [
        SpatialPadd(keys=keys, spatial_size=plan.patch_size),
        # mostly node-centred crops (the case's nodes and ECE evidence in view), a share anywhere in the neck;
        # with crop_jitter, a larger node-centred crop and then a random patch inside it, so the node sits anywhere
        RandCropByPosNegLabeld(keys=keys, label_key="label",
                               spatial_size=[p + 2 * plan.crop_jitter for p in plan.patch_size],
                               pos=1.0 - plan.neg_crop_fraction, neg=plan.neg_crop_fraction,
                               num_samples=plan.crops_per_case, allow_smaller=plan.crop_jitter > 0),
        *([RandSpatialCropd(keys=keys, roi_size=plan.patch_size, random_size=False)] if plan.crop_jitter else []),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0),  # left-right: the neck is nearly symmetric
        RandAffined(keys=keys, prob=0.3, rotate_range=(0.17, 0.17, 0.17), scale_range=(0.1, 0.1, 0.1),
                    mode=("bilinear", "nearest"), padding_mode="border"),
    ] + _intensity_augmentation(plan))


def _intensity_augmentation(plan: Plan) -> list:
    if plan.augmentation == "intensity":
        return [RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
                RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5)]
    hu_unit = 1.0 / (plan.hu_window[1] - plan.hu_window[0])  # one HU in window units
    return [
        RandSimulateLowResolutiond(keys="image", prob=0.15, zoom_range=(0.5, 1.0)),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.25, 0.8), sigma_y=(0.25, 0.8), sigma_z=(0.25, 0.8)),
        # the first Gaussian a no-op (sigma 0.01 voxel: a one-tap kernel), so this is x + a (x - G_s x)
        *([RandGaussianSharpend(keys="image", prob=plan.ct_sharpen, sigma1_x=(0.01, 0.01), sigma1_y=(0.01, 0.01),
                                sigma1_z=(0.01, 0.01), sigma2_x=(0.5, 1.0), sigma2_y=(0.5, 1.0), sigma2_z=(0.5, 1.0),
                                alpha=(0.3, 1.0))] if plan.ct_sharpen else []),
        RandGaussianNoised(keys="image", prob=0.3, mean=0.0, std=15 * hu_unit, sample_std=True),
        RandShiftIntensityd(keys="image", offsets=10 * hu_unit, prob=0.5),
    ]


def mae_transforms(plan: Plan) -> Compose:
    return Compose(_geometry(plan, ["image"]) + [
        SpatialPadd(keys="image", spatial_size=plan.patch_size),
        RandSpatialCropd(keys="image", roi_size=plan.patch_size, random_size=False),
        RandFlipd(keys="image", prob=0.5, spatial_axis=0),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
    ])


def cached_loader(items: list[dict], transform: Compose, batch_size: int, shuffle: bool, seed: int,
                  balanced: bool = False, progress: bool = False, iterations: int = 0) -> DataLoader:
    """CacheDataset keeps everything up to the first random transform in memory (no NIfTI re-reads).
    iterations > 0: each pass yields exactly that many batches, cases drawn at random with replacement."""
    ds = CacheDataset(items, transform=transform, cache_rate=1.0, num_workers=0, progress=progress)
    sampler = None
    if balanced or iterations > 0:
        from torch.utils.data import WeightedRandomSampler
        weights = np.ones(len(items))
        if balanced:
            labels = np.array([it["ece"] for it in items])
            weights = 1.0 / np.bincount(labels, minlength=2).astype(float)[labels]
        n = iterations * batch_size if iterations > 0 else len(items)
        sampler = WeightedRandomSampler(torch.as_tensor(weights), num_samples=n, replacement=True,
                                        generator=torch.Generator().manual_seed(seed))
        shuffle = False
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, sampler=sampler, num_workers=0,
                      collate_fn=list_data_collate, generator=torch.Generator().manual_seed(seed))


def plain_dataset(items: list[dict], transform: Compose) -> Dataset:
    return Dataset(items, transform=transform)
