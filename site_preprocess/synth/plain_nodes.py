"""The nodes of the plain generator (`ecefl synth` before session 36; the default): levels II-IV in the lateral neck
fat, ECE-positive nodes lobulated with spicules and stranding all round (subtle ones mildly), ECE-negative ones
smooth ovals with a clean fat plane. Kept as it was, so a seed's hospitals stay the same to the last byte;
`nodes.py` holds the varied renderings (`synthesize(..., varied=True)`)."""
from __future__ import annotations

import numpy as np

from .nodes import HU_FAT, Node, paint_spicules, points_near, random_rotation


def make_plain_node(rng: np.random.Generator, center, semi, ece: bool, subtle: bool, group: int) -> Node:
    lobes = []
    if ece:
        n_lobes, amp = (2, 0.06) if subtle else (int(rng.integers(3, 6)), rng.uniform(0.12, 0.22))
        for _ in range(n_lobes):
            d = rng.normal(size=3)
            lobes.append((d / np.linalg.norm(d), float(rng.integers(3, 7)), float(amp * rng.uniform(0.6, 1.0))))
    necrosis_p = 0.55 if ece else 0.2
    node = Node(center=np.asarray(center, float), semi_axes=np.asarray(semi, float),
                rotation=random_rotation(rng), lobulation=lobes, hu=float(rng.uniform(35, 60)),
                necrosis=float(rng.uniform(0.35, 0.6)) if rng.random() < necrosis_p else 0.0,
                ece=ece, subtle=subtle, group=group)
    if ece and not subtle:
        for _ in range(int(rng.integers(4, 9))):
            d = rng.normal(size=3)
            node.spicules.append((d / np.linalg.norm(d), float(rng.uniform(4, 10)), float(rng.uniform(0.6, 1.2))))
    return node


def paint_plain_node(node: Node, pts: np.ndarray, hu: np.ndarray, rng: np.random.Generator) -> None:
    idx = points_near(node, pts, 12.0)
    if idx.size == 0:
        return
    p = pts[idx]
    f = node.level(p)
    # Surface distance in mm, approximately: scaled radial distance times the mean radius.
    mean_r = float(node.semi_axes.mean())
    dist = f * mean_r
    values = hu[idx]
    fat_like = values < -40
    if node.ece:
        # Perinodal fat stranding and loss of the fat plane.
        halo = (dist > 0) & (dist < (3.0 if node.subtle else 6.0)) & fat_like
        raise_to = -60.0 if node.subtle else float(rng.uniform(-25, 5))
        values[halo] = np.maximum(values[halo], raise_to + 10.0 * (rng.random(int(halo.sum())) - 0.5))
        paint_spicules(node, p, dist, values)
    else:
        # Preserved fat plane: a thin clean fat rim around the smooth node.
        rim = (dist > 0) & (dist < 1.8)
        values[rim] = np.minimum(values[rim], HU_FAT + 10.0)
    body = f <= 0
    values[body] = node.hu
    if node.necrosis > 0:
        q = (p - node.center) @ node.rotation / node.semi_axes
        core = np.linalg.norm(q, axis=1) < node.necrosis
        values[core] = float(rng.uniform(8, 22))
    hu[idx] = values
