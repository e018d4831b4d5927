"""What a radiotherapy planning CT shows outside the patient: the couch under the neck and, in most head-and-neck
plans, a thermoplastic mask over face, neck and shoulders (a perforated shell a few mm off the skin)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Fixation:
    couch_gap: float  # mm between the back of the neck and the couch (the headrest lifts the neck)
    couch_thickness: float
    couch_core_hu: float  # foam core between carbon-fibre skins
    mask_gap: float | None  # mm off the skin; None = no mask
    mask_hu: float
    mask_pitch: float  # mm between the mesh's holes


def make_fixation(rng: np.random.Generator) -> Fixation:
    return Fixation(couch_gap=float(rng.uniform(0, 30)), couch_thickness=float(rng.uniform(5, 40)),
                    couch_core_hu=float(rng.uniform(-950, -600)),
                    mask_gap=float(rng.uniform(1.5, 8)) if rng.random() < 0.7 else None,
                    mask_hu=float(rng.uniform(-50, 200)), mask_pitch=float(rng.uniform(4, 9)))


def paint_fixation(fix: Fixation, x, y, z, radius, mean_axis, back, hu) -> None:
    """radius: the body outline's normalised radius (1 on the skin); back: the body's posterior edge y per voxel."""
    outside = radius > 1.0
    top = back + fix.couch_gap
    couch = outside & (y >= top) & (y < top + fix.couch_thickness)
    hu[couch] = fix.couch_core_hu
    hu[couch & ((y < top + 1.5) | (y >= top + fix.couch_thickness - 1.5))] = 250.0  # carbon-fibre skins
    if fix.mask_gap is None:
        return
    off_skin = (radius - 1.0) * mean_axis
    holes = (np.cos(2 * np.pi * x / fix.mask_pitch) + np.cos(2 * np.pi * z / fix.mask_pitch)) > 1.2
    shell = outside & (off_skin > fix.mask_gap) & (off_skin < fix.mask_gap + 1.6) & (y < top - 2.0) & ~holes
    hu[shell] = fix.mask_hu
