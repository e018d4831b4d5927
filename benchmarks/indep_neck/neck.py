"""One patient's neck anatomy (Neck) as smooth functions of height z, mm above the sternal notch.

Why apart: the Neck is only geometry and per-patient draws (outline, vertebrae, airway, vessels, glands,
muscles, contrast phase); painting it (anatomy), placing nodes (nodes) and drawing OAR contours (patient)
all read it, so it carries no painting code itself.
"""
from __future__ import annotations

import numpy as np

from .canvas import interp


class Neck:
    """One patient's anatomy as smooth functions of height z (mm above the sternal notch)."""
    KNOTS = [-60, -10, 20, 60, 95, 110, 130, 175]

    def __init__(self, rng):
        u = rng.uniform
        self.a, self.b, self.p, self.asym = u(56, 70), u(48, 60), u(2.1, 2.8), u(-3, 3)
        self.prof_a = np.array([1.25, 1.12, 1.0, 0.96, 1.02, 1.12, 1.18, 1.18]) * u(0.95, 1.05, 8)
        self.prof_bant = np.array([1.15, 1.05, 0.95, 0.92, 1.05, 1.35, 1.45, 1.45]) * u(0.95, 1.05, 8)
        self.prof_bpost = np.array([1.3, 1.15, 1.05, 1.0, 1.0, 1.0, 1.02, 1.05]) * u(0.95, 1.05, 8)
        self.fat_t, self.skin_t, self.fat_hu, self.muscle_hu = u(3, 15), u(1.4, 2.2), float(np.clip(
            rng.normal(-100, 8), -120, -82)), u(42, 58)
        self.shoulder_z, self.shoulder_w, self.apex_z, self.humerus_z = u(35, 55), u(150, 185), u(12, 32), u(-25, 0)
        self.vb_y, self.vb_r, self.disc_phase, self.cancellous, self.cortex = u(4, 12), u(8, 10), u(0, 18), u(
            140, 290), u(700, 1100)
        self.trachea_r, self.pharynx = u(7.5, 10), (u(8, 15), u(3.5, 8))
        self.cca_r, self.ijv_r, self.bifurcation = u(3.3, 4.5), {1: u(4, 7), -1: u(4.5, 7.5)}, u(70, 85)
        self.thyroid = (u(15, 25), u(50, 62), u(6, 9), u(9, 12))
        self.mandible_z, self.teeth = u(100, 110), rng.random() < 0.85
        self.metal = self.teeth and rng.random() < 0.18
        self.phase = rng.choice(["none", "venous", "arterial"], p=[0.3, 0.5, 0.2])
        self.artery_hu, self.vein_hu = {"none": (u(35, 50),) * 2, "venous": (u(140, 200), u(150, 200)),
                                        "arterial": (u(250, 350), u(60, 120))}[self.phase]
        enhanced = self.phase != "none"
        self.thyroid_hu, self.gland_hu = (u(120, 180), u(70, 110)) if enhanced else (u(70, 110), u(35, 55))
        self.trunk_p = u(2.4, 3.2)  # how boxy the shoulders are
        self.bulges = []  # (side, z centre, sigma, mm): the neck swells over bulky nodes

    def half_width(self, z, side):
        w = self.a * interp(z, self.KNOTS, self.prof_a) + side * self.asym
        for s, zc, sig, mm in self.bulges:
            w = w + (s == side) * mm * np.exp(-((z - zc) / sig) ** 2)
        return w

    def b_ant(self, z):
        return self.b * interp(z, self.KNOTS, self.prof_bant)

    def b_post(self, z):
        return self.b * interp(z, self.KNOTS, self.prof_bpost)

    def vertebra(self, z):  # centre y, half-width, half-depth (cervical lordosis, T1 larger)
        low = np.clip((15 - z) / 30, 0, 1)
        return self.vb_y - 5 * np.exp(-((z - 85) / 45) ** 2), self.vb_r + 3 * low, 0.8 * self.vb_r + 2 * low

    def airway(self, z):
        y, _, ry = self.vertebra(z)
        gap = interp(z, [-60, 40, 55, 90, 96, 175], [15, 15, 19, 21, 9, 8])
        knots = [-60, 45, 52, 55, 62, 88, 94, 175]  # trachea, cricoid, glottic slit, supraglottis, oropharynx
        tr, (px, py) = self.trachea_r, self.pharynx
        rx = interp(z, knots, [tr, tr, 7, 3.5, 8, 8, px, 0.8 * px])
        ryy = interp(z, knots, [0.85 * tr, 0.85 * tr, 7, 8, 10, 9, py, 0.8 * py])
        return y - ry - gap, rx, ryy

    def carotid(self, z, side):
        y_air = self.airway(z)[0]
        x = self.trachea_r + 17 + np.zeros_like(z)
        above = z > self.bifurcation  # internal carotid: posterior and a little medial
        return side * (x - 2 * above), y_air + 8 + 5 * above, self.cca_r * (1 - 0.15 * above)

    def jugular(self, z, side):
        cx, cy, r = self.carotid(z, side)
        rx = self.ijv_r[side] + np.zeros_like(z)
        return cx + side * (r + rx + 1), cy - 2, rx, 0.7 * rx

    def taper(self, z, z0, z1):
        return np.sqrt(np.clip(1 - ((2 * z - z0 - z1) / (z1 - z0)) ** 2, 0, 1))

    def parotid(self, z, side):  # behind the mandibular ramus, fatty
        t = self.taper(z, 112, 185)
        return side * (self.half_width(z, side) - self.fat_t - 9), 16, 9 * t, 14 * t, side * 0.3

    def submandibular(self, z, side):
        t = self.taper(z, 90, 120)
        return side * 0.58 * self.half_width(z, side), -0.5 * self.b_ant(z), 11 * t, 9 * t, 0

    def surface_radius(self, z, alpha, side):
        a, b = self.half_width(z, side), np.where(np.sin(alpha) < 0, self.b_ant(z), self.b_post(z))
        return (np.abs(np.cos(alpha) / a) ** self.p + np.abs(np.sin(alpha) / b) ** self.p) ** (-1 / self.p)

    def scm(self, z, side):  # sternocleidomastoid: from the sternal head (anteromedial) to the mastoid
        alpha = np.radians(interp(z, [0, 150], [-65, 15]))
        ry = interp(z, [0, 60, 150], [4, 6, 6])
        depth = self.surface_radius(z, alpha, side) - self.fat_t * (1 + 0.6 * np.maximum(np.sin(alpha), 0)) - ry - 1.5
        return (side * depth * np.cos(alpha), depth * np.sin(alpha), interp(z, [0, 40, 150], [7, 14, 12]), ry,
                side * (alpha + np.pi / 2))
