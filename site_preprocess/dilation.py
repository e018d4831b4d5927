"""Soft-tissue (HU-gated) mask dilation: absorbs contour variability at the node border, where ECE lives.

The nodal mask grows by `margin_mm` (Euclidean, spacing-aware) but only into voxels whose HU lies in the
soft-tissue window (fat and soft tissue; never air or bone), and only through such voxels: a region of the
window that the margin reaches across bone or air is not added.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def soft_tissue_dilation(mask: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float],
                         margin_mm: float = 3.0, hu_window: tuple[float, float] = (-150.0, 200.0)) -> np.ndarray:
    mask = mask.astype(bool)
    if margin_mm <= 0 or not mask.any():
        return mask.astype(np.uint8)
    pad = [int(np.ceil(margin_mm / s)) + 1 for s in spacing]
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    sub_mask, sub_hu = mask[box], hu[box]
    distance = ndimage.distance_transform_edt(~sub_mask, sampling=spacing)
    soft = (sub_hu >= hu_window[0]) & (sub_hu <= hu_window[1])
    candidate = (distance <= margin_mm) & soft
    grown = candidate | sub_mask
    labels, _ = ndimage.label(grown)
    keep = np.unique(labels[sub_mask])
    connected = np.isin(labels, keep[keep > 0])
    out = mask.copy()
    out[box] = sub_mask | (candidate & connected)
    return out.astype(np.uint8)
