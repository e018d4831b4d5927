"""The oral cavity and oropharynx above the hyoid: what a planning CT of the neck shows above the nodes.

Tongue, floor of mouth (sublingual fat and glands), palatine tonsils in their parapharyngeal fat, the oropharyngeal
airway behind the tongue, teeth on the mandible, and the streaks of dental fillings. The tonsils and the
sublingual glands are soft-tissue ovals in fat, node-like on CT and never contoured as nodes: a network that never
saw them marks them. Heights are relative to the neck centre (dz) and start at the mandible's lower border.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .nodes import HU_FAT


@dataclass
class UpperNeck:
    floor_dz: float  # the floor of mouth (and the mandible's lower border)
    tongue: tuple[np.ndarray, np.ndarray, float]  # centre (x, y, dz), semi-axes (mm), HU
    tonsils: list[tuple[np.ndarray, np.ndarray, float]]  # per side: centre (x, y, dz), semi-axes, HU
    sublingual: list[tuple[np.ndarray, np.ndarray, float]]  # sublingual glands
    teeth_dz: float  # teeth above this height
    metal: tuple[float, float, float, float] | None  # dental filling: x, y, dz, streak HU amplitude


def make_upper_neck(rng: np.random.Generator, floor_dz: float) -> UpperNeck:
    tongue = (np.array([rng.uniform(-3, 3), rng.uniform(-30, -22), floor_dz + rng.uniform(14, 24)]),
              np.array([rng.uniform(17, 24), rng.uniform(18, 25), rng.uniform(14, 20)]), float(rng.uniform(55, 95)))
    tonsils, sublingual = [], []
    for side in (-1.0, 1.0):
        tonsils.append((np.array([side * rng.uniform(12, 18), rng.uniform(-10, -3), floor_dz + rng.uniform(20, 34)]),
                        np.array([rng.uniform(5, 9), rng.uniform(7, 11), rng.uniform(9, 14)]),
                        float(rng.uniform(45, 85))))
        sublingual.append((np.array([side * rng.uniform(10, 16), rng.uniform(-42, -34), floor_dz + rng.uniform(4, 9)]),
                           np.array([rng.uniform(4, 7), rng.uniform(8, 12), rng.uniform(4, 6)]),
                           float(rng.uniform(35, 60))))
    teeth_dz = floor_dz + rng.uniform(22, 32)
    metal = None
    if rng.random() < 0.45:  # amalgam or crowns: streaks over the slices that hold them
        metal = (float(rng.uniform(-25, 25)), float(rng.uniform(-45, -30)), float(teeth_dz + rng.uniform(2, 10)),
                 float(rng.uniform(150, 600)))
    return UpperNeck(floor_dz=float(floor_dz), tongue=tongue, tonsils=tonsils, sublingual=sublingual,
                     teeth_dz=float(teeth_dz), metal=metal)


def ellipsoid(x, y, z, centre, semi, pad=0.0):
    """Inside an axis-aligned ellipsoid (semi-axes grown by pad mm), in whatever frame x, y, z and centre share."""
    return (((x - centre[0]) / (semi[0] + pad)) ** 2 + ((y - centre[1]) / (semi[1] + pad)) ** 2
            + ((z - centre[2]) / (semi[2] + pad)) ** 2) <= 1.0


def paint_upper_neck(up: UpperNeck, x, y, dz, inside, hu, disc, texture: np.ndarray) -> None:
    """x, y in the neck's frame, dz from the neck centre; inside: under the subcutaneous fat."""
    above = (dz > up.floor_dz) & inside
    # floor of mouth: sublingual fat between the mandible's arc and the tongue, with the sublingual glands in it
    floor = above & disc(0, -30, 30, 16) & (dz < up.floor_dz + 14)
    hu[floor] = HU_FAT
    for centre, semi, value in up.sublingual:
        hu[ellipsoid(x, y, dz, centre, semi) & above] = value
    centre, semi, value = up.tongue
    tongue = ellipsoid(x, y, dz, centre, semi) & above
    hu[tongue] = value + 10.0 * texture[tongue]
    hu[tongue & (np.abs(x - centre[0]) < 1.0)] = -40.0  # the lingual septum (fat and fibres)
    for centre, semi, value in up.tonsils:  # in the parapharyngeal fat
        hu[ellipsoid(x, y, dz, centre, semi, pad=4.0) & above & ~tongue] = HU_FAT
        tonsil = ellipsoid(x, y, dz, centre, semi) & above
        hu[tonsil] = value + 6.0 * texture[tonsil]
    # the oropharyngeal airway: a slit behind the tongue between the tonsils
    hu[above & disc(0, -5, 9, 3.5) & (dz < up.teeth_dz + 20)] = -950.0
    # teeth on the alveolar ridge, just inside the mandible's arc
    teeth = above & (dz > up.teeth_dz) & (dz < up.teeth_dz + 12) & disc(0, -8, 36, 38) & ~disc(0, -8, 32, 34) & (
        y < -10)
    hu[teeth] = 1800.0


def add_metal_streaks(up: UpperNeck, x, y, dz, hu) -> None:
    """Beam-hardening streaks from a dental filling: alternating bright and dark rays fading with distance, on the
    slices within 4 mm of it."""
    if up.metal is None:
        return
    mx, my, mz, amp = up.metal
    near = np.abs(dz - mz) < 4.0
    if not near.any():
        return
    rx, ry = x[near] - mx, y[near] - my
    r = np.hypot(rx, ry)
    angle = np.arctan2(ry, rx)
    rays = np.cos(7.0 * angle) * np.cos(3.0 * angle + 1.0)
    streak = amp * np.sign(rays) * np.abs(rays) ** 8 * np.exp(-r / 60.0)
    core = r < 2.5
    streak[core] = 3000.0
    hu[near] = hu[near] + streak
