"""An independent test hospital: neck CT series + RTSTRUCT (gross nodal targets, OARs) + ECE labels.

Why: the model is trained and tuned on the project's own synthetic hospitals (site_preprocess/synth/). This generator
was written separately, without reading that code: its own anatomy, scanner model (kernel-shaped noise, slice
profile, artefacts) and its own rendering of extranodal extension (ECE). It is an honest out-of-distribution
hospital: use it ONLY to evaluate, never to train or tune.

    python benchmarks/independent_hospital.py --out DIR --patients 160 --seed 7 [--workers 2]

writes DIR/dicom/<patient>/ (CT slices in random file order + one RTSTRUCT), DIR/labels.csv (patient_id,ece) and
DIR/truth.json (generator truth per patient: ece, subtle/overt, node volumes in ml; keep it local).
Coordinates: DICOM patient LPS in mm (+x patient left, +y posterior, +z cranial); anatomy z = 0 at the sternal
notch, each patient then shifted by a scanner-table offset.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from multiprocessing import Pool
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
from contourpy import contour_generator
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from scipy import fft, ndimage

CT_STORAGE, RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.481.3"
AIR, FAT, SUBQ, SKIN, MUSCLE, BONE, VESSEL, GLAND, LUNG, NODE, OTHER, DEVICE = range(12)  # tissue codes
LEVELS = {"II": (95.0, 145.0), "III": (52.0, 95.0), "IV": (14.0, 52.0)}  # jugular chain, z above sternal notch
VENDORS = [("SIEMENS", "SOMATOM Definition AS", ("B30f", "B40f", "B60f")),
           ("GE MEDICAL SYSTEMS", "Optima CT580", ("SOFT", "STANDARD", "BONE")),
           ("Philips", "Brilliance Big Bore", ("A", "B", "D")), ("TOSHIBA", "Aquilion LB", ("FC08", "FC13", "FC30"))]
NODAL_SINGLE = ["GTVn", "GTV_LN", "GTVnode", "GTVnodes", "GTV-N", "GTV N", "gtvn"]
NODAL_EACH = ["GTVn{i}", "GTV-N{i}", "GTV_LN{i}", "GTVn_{s}{i}", "LN_gtv{i}", "GTVnode{i}", "GTV_N{i}"]
OAR_NAMES = {"cord": ["SpinalCord", "Spinal_Cord", "Cord", "SPINAL CORD"], "larynx": ["Larynx", "LARYNX"],
             "parotid": [("Parotid_L", "Parotid_R"), ("L Parotid", "R Parotid"), ("Parotid_Lt", "Parotid_Rt")],
             "submand": [("Glnd_Submand_L", "Glnd_Submand_R"), ("Submandibular_L", "Submandibular_R")],
             "body": ["BODY", "External", "Skin", "Outer Contour"],
             "elective": ["CTVn_L", "CTV_Neck_L", "LN_Neck_II-IV_L", "CTV_LN_L"]}


def interp(z, knots, values):
    return np.interp(z, knots, values).astype(np.float32)


def scalars(values):
    return [float(np.ravel(v)[0]) for v in values]


def ellipse_q(X, Y, cx, cy, rx, ry, angle):
    """Squared normalised radius of a rotated ellipse (< 1 inside)."""
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = X - cx, Y - cy
    return ((dx * c + dy * s) / rx) ** 2 + ((dy * c - dx * s) / ry) ** 2


def superellipse_depth(X, Y, a_left, a_right, b_ant, b_post, p):
    """Radial depth below the surface (mm; negative outside) of a superellipse with per-side half-axes."""
    a, b = np.where(X > 0, a_left, a_right), np.where(Y < 0, b_ant, b_post)
    h = (np.abs(X / a) ** p + np.abs(Y / b) ** p) ** (1.0 / p)
    return np.hypot(X, Y) * (1.0 / np.maximum(h, 1e-4) - 1.0)


class Canvas:
    """HU volume (slices, rows=y, cols=x) on the CT grid, with a tissue code per voxel so that later layers can
    be confined (muscle only into fat, stranding only in fat...)."""

    def __init__(self, x, y, z):
        self.x, self.y, self.z = x, y, z
        self.hu = np.full((len(z), len(y), len(x)), -1000.0, np.float32)
        self.tissue = np.zeros(self.hu.shape, np.uint8)

    def region(self, z0, z1, x0, x1, y0, y1):
        ks, rs, cs = (np.flatnonzero((v >= lo) & (v <= hi)) for v, lo, hi in
                      ((self.z, z0, z1), (self.y, y0, y1), (self.x, x0, x1)))
        if not (len(ks) and len(rs) and len(cs)):
            return None
        box = tuple(slice(i[0], i[-1] + 1) for i in (ks, rs, cs))
        return box, self.z[box[0]][:, None, None], self.y[box[1]][None, :, None], self.x[box[2]][None, None, :]

    def paint(self, box, mask, hu, code, only=None):
        view_hu, view_t = self.hu[box], self.tissue[box]
        if only is not None:
            mask = mask & np.isin(view_t, only)
        view_hu[mask] = hu if np.isscalar(hu) else np.broadcast_to(hu, mask.shape)[mask]
        view_t[mask] = code

    def tube(self, z0, z1, shape_at, hu, code, only=None, keep=None):
        """Elliptic section whose (cx, cy, rx, ry, angle) = shape_at(z) varies with height: vessels, muscles..."""
        zs = self.z[(self.z >= z0) & (self.z <= z1)]
        if not len(zs):
            return
        cx, cy, rx, ry, ang = (np.broadcast_to(np.asarray(v, np.float32), zs.shape) for v in shape_at(zs))
        rx, ry, reach = np.maximum(rx, 1e-3), np.maximum(ry, 1e-3), np.maximum(rx, ry)
        reg = self.region(z0, z1, (cx - reach).min(), (cx + reach).max(), (cy - reach).min(), (cy + reach).max())
        if reg is None:
            return
        box, Z, Y, X = reg
        col = lambda v: v[:, None, None]  # noqa: E731
        mask = ellipse_q(X, Y, col(cx), col(cy), col(rx), col(ry), col(ang)) < 1
        self.paint(box, mask if keep is None else mask & keep(X, Y, Z), hu, code, only)

    def sphere(self, c, r, hu, code, only=None):
        self.tube(c[2] - r, c[2] + r, lambda z: (c[0], c[1], *[np.sqrt(np.maximum(r * r - (z - c[2]) ** 2, 0))] * 2, 0),
                  hu, code, only)


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


def paint_anatomy(cv, nk, rng):
    """Air, body, fat, muscles, bones, glands, airway and vessels, back to front (later layers win)."""
    K = len(cv.z)
    Z, Y, X = cv.z[:, None, None], cv.y[None, :, None], cv.x[None, None, :]
    col = lambda v: np.asarray(v, np.float32)[:, None, None]  # noqa: E731
    depth = superellipse_depth(X, Y, col(nk.half_width(cv.z, 1)), col(nk.half_width(cv.z, -1)), col(nk.b_ant(cv.z)),
                               col(nk.b_post(cv.z)), nk.p)
    low = cv.z < nk.shoulder_z  # shoulders: a boxy trunk widening over 35 mm below the shoulder top
    beyond_neck = depth[low] < nk.fat_t  # where the shoulder girdle muscles go
    if low.any():
        zl = cv.z[low]
        widen = np.sqrt(np.clip((nk.shoulder_z - zl) / 35, 0, 1))
        aw = nk.half_width(zl, 1) + (nk.shoulder_w - nk.half_width(zl, 1)) * widen
        trunk = superellipse_depth(X, Y - 5, col(aw), col(aw), col(nk.b_ant(zl) * 1.1), col(nk.b_post(zl) * 1.15),
                                   nk.trunk_p)
        depth[low] = np.maximum(depth[low], trunk)
    fat_t = nk.fat_t * (1 + 0.6 * np.clip(Y / nk.b, 0, 1))
    body = depth > 0
    cv.hu[body], cv.tissue[body] = nk.fat_hu, SUBQ
    cv.tissue[depth > fat_t] = FAT
    skin = body & (depth < nk.skin_t)
    cv.hu[skin], cv.tissue[skin] = rng.uniform(20, 50), SKIN
    if nk.fat_t > 5:  # platysma: a thin sheet inside the anterolateral subcutaneous fat
        sheet = (np.abs(depth - 0.55 * fat_t) < 0.6) & (Y < 0.3 * nk.b) & (Z > 10) & (Z < 110)
        cv.hu[sheet], cv.tissue[sheet] = nk.muscle_hu, MUSCLE
    if rng.random() < 0.5:  # thermoplastic immobilisation mask, perforated, a few mm off the skin
        gap = rng.uniform(1, 6)
        holes = (np.sin(X / 1.6) * np.sin(Z / 1.6 + np.sin(Y / 3)) > 0.55)
        shell = (depth < -gap) & (depth > -gap - 1.8) & (Y < 0.2 * nk.b) & (Z > nk.shoulder_z - 10) & ~holes
        cv.hu[shell], cv.tissue[shell] = rng.uniform(80, 220), DEVICE
    back = nk.b_post(cv.z) * np.where(low, 1.15, 1.0) + 5 * low  # carbon couch under the back: foam between skins
    y_couch = float(back.max()) + (rng.uniform(0, 4) if low.any() else rng.uniform(5, 25))
    for y0, thick, hu in ((y_couch, 2.5, 250), (y_couch + 2.5, 35, -900), (y_couch + 37.5, 2.5, 250)):
        plate = (Y - y0 + X * X / 6000 >= 0) & (Y - y0 + X * X / 6000 < thick) & ~body
        cv.hu[plate], cv.tissue[plate] = hu, DEVICE
    area = (body.sum(axis=(1, 2)) * float(cv.x[1] - cv.x[0]) ** 2).astype(np.float32)
    del depth, body
    mus = lambda: nk.muscle_hu + rng.uniform(-4, 4)  # noqa: E731
    vb = nk.vertebra
    # posterior muscle mass (paraspinal, trapezius, levator), split by fat septa
    narrow = lambda z: np.minimum(nk.half_width(z, 1), nk.half_width(z, -1))  # noqa: E731
    cv.tube(-99, 999, lambda z: (0, vb(z)[0] + vb(z)[2] + 30, 0.75 * narrow(z), 0.8 * nk.b_post(z), 0), mus(), MUSCLE,
            only=(FAT,))
    n4 = (K, len(cv.y) // 4, len(cv.x) // 4)
    def smooth():  # a smooth random field of unit std, cheaply made at 1/4 resolution
        coarse = ndimage.gaussian_filter(rng.standard_normal(n4).astype(np.float32), (0.7, 1.5, 1.5))
        return ndimage.zoom(coarse / coarse.std(), (1, 4, 4), order=1)
    septa = np.abs(smooth()) < 0.05  # thin curved intermuscular fat planes where the field crosses zero
    posterior = Y > col(vb(cv.z)[0] + vb(cv.z)[2] + 6)
    cv.paint((slice(None),) * 3, septa & posterior, nk.fat_hu, FAT, only=(MUSCLE,))
    texture = smooth() * 6  # tissue heterogeneity, a few HU
    if low.any():  # shoulder girdle muscles (trapezius, deltoid, pectoral) outside the neck's outline
        cv.paint((slice(0, int(low.sum())),), beyond_neck, mus(), MUSCLE, only=(FAT,))  # z ascending: a prefix
    for s in (1, -1):
        cv.tube(-2, 155, lambda z: nk.scm(z, s), mus(), MUSCLE, only=(FAT, MUSCLE))
        cv.tube(-10, 95, lambda z: (s * (vb(z)[1] + 14), vb(z)[0] + 4, 9, 6, s * 0.6), mus(), MUSCLE, only=(FAT,))
        cv.tube(-60, 175, lambda z: (s * 8, vb(z)[0] - vb(z)[2] + 1.5, 6, 3.5, 0), mus(), MUSCLE)  # longus colli
        cv.tube(5, 92, lambda z: (s * 9, nk.airway(z)[0] - 17, 9, 2.5, -s * 0.25), mus(), MUSCLE, only=(FAT,))
    # lung apices, first ribs, clavicles, humeral heads, scapulae, manubrium
    lung_r = lambda z: np.minimum(46, 7 * np.sqrt(np.maximum(nk.apex_z - z, 0)))  # noqa: E731
    for s in (1, -1):
        lx = lambda z: s * (vb(z)[1] + 14 + 0.7 * lung_r(z))  # noqa: E731
        lung = lambda z, grow=0: (lx(z), vb(z)[0] + 4, 0.7 * lung_r(z) + grow, 0.9 * lung_r(z) + grow, 0)  # noqa: E731
        for j in range(4):  # ribs: lateral arcs around the lung every ~24 mm
            zr = nk.apex_z - 14 - 24 * j
            cv.tube(zr - 5, min(zr + 5, nk.apex_z), lambda z: lung(z, 6), rng.uniform(300, 500), BONE,
                    keep=lambda X, Y, Z: X * s > s * lx(Z[:, 0, 0])[:, None, None] - 5)
        cv.tube(-99, nk.apex_z, lung, rng.uniform(-880, -830), LUNG)
        medial = np.array([s * 22, -nk.b_ant(3) + nk.fat_t + 8, 3.0])
        lateral = np.array([s * (nk.shoulder_w - 30), nk.vb_y + 18, nk.shoulder_z - 25])
        r_clav = rng.uniform(6, 8)
        for t in np.linspace(0, 1, 40):
            c = medial + t * (lateral - medial) + [0, -10 * np.sin(np.pi * t), 0]
            cv.sphere(c, r_clav, nk.cortex, BONE)
            cv.sphere(c, r_clav - 2, nk.cancellous, BONE)
        head = (s * (nk.shoulder_w - 30), nk.vb_y + 10, nk.humerus_z)
        cv.sphere(head, 23, nk.cortex, BONE)
        cv.sphere(head, 21, nk.cancellous, BONE)
        scapula = lambda z: (s * 0.55 * nk.shoulder_w, nk.vb_y + 45, 35, 3.5, -s * 0.45)  # noqa: E731
        cv.tube(nk.humerus_z - 30, nk.shoulder_z - 20, scapula, rng.uniform(400, 600), BONE, only=(MUSCLE, FAT))
    cv.tube(-99, -2, lambda z: (0, -nk.b_ant(z) + nk.fat_t + 8, 20, 6, 0), nk.cortex, BONE)
    cv.tube(-99, -2, lambda z: (0, -nk.b_ant(z) + nk.fat_t + 8, 18, 4, 0), nk.cancellous, BONE)
    # cervical spine: cortex, cancellous body or disc, canal (CSF, cord), arch, spinous and transverse processes
    disc = lambda z: ((z + nk.disc_phase) % 18) < 4.5  # noqa: E731
    cv.tube(-99, 175, lambda z: (0, vb(z)[0], vb(z)[1], vb(z)[2], 0), nk.cortex, BONE)
    cv.tube(-99, 175, lambda z: (0, vb(z)[0], vb(z)[1] - 1.6, vb(z)[2] - 1.6, 0), nk.cancellous, BONE)
    cv.tube(-99, 175, lambda z: (0, vb(z)[0], (vb(z)[1] + 0.5) * disc(z), (vb(z)[2] + 0.5) * disc(z), 0), 85, OTHER)
    canal = lambda z: vb(z)[0] + vb(z)[2] + 8  # noqa: E731
    for s in (1, -1):
        cv.tube(-99, 175, lambda z: (s * (vb(z)[1] + 6), vb(z)[0] + 2, 6, 4, 0), nk.cortex * 0.6, BONE)
    cv.tube(-99, 175, lambda z: (0, canal(z), 12, 12, 0), nk.cortex * 0.7, BONE,  # lamina and pedicles
            keep=lambda X, Y, Z: Y > canal(Z[:, 0, 0])[:, None, None] - 3)
    spine_len = lambda z: interp(z, [-60, 15, 30, 175], [12, 22, 12, 10])  # noqa: E731
    cv.tube(-99, 175, lambda z: (0, canal(z) + 10 + spine_len(z) / 2, 3, spine_len(z) / 2, 0), nk.cortex * 0.7,
            BONE)
    cv.tube(-99, 175, lambda z: (0, canal(z), 7.5, 7, 0), rng.uniform(5, 15), OTHER)
    cv.tube(-99, 175, lambda z: (0, canal(z) - 0.5, 5, 3.8, 0), rng.uniform(30, 40), OTHER)
    for s in (1, -1):
        cv.tube(-99, 150, lambda z: (s * (vb(z)[1] + 6.5), vb(z)[0] + 2, 2, 2, 0), nk.artery_hu, VESSEL)
    # glands and oral cavity
    lo, hi, trx, try_ = nk.thyroid
    taper = nk.taper
    for s in (1, -1):
        cv.tube(lo, hi, lambda z: (s * (nk.trachea_r + 6), nk.airway(z)[0] + 1, trx * taper(z, lo, hi),
                                   try_ * taper(z, lo, hi), s * 0.35), nk.thyroid_hu, GLAND)
        cv.tube(92, 118, lambda z: nk.submandibular(z, s), nk.gland_hu, GLAND)
    cv.tube(lo + 5, lo + 14, lambda z: (0, nk.airway(z)[0] - nk.trachea_r - 3.5, 10, 3, 0), nk.thyroid_hu, GLAND)
    cv.tube(96, 175, lambda z: (0, nk.airway(z)[0] - 24, 0.42 * nk.half_width(z, 1), 0.35 * nk.b_ant(z), 0),
            nk.muscle_hu + 15, MUSCLE)  # tongue and floor of mouth
    # larynx and airway: soft-tissue framework, cartilages, hyoid, lumen; oesophagus
    cv.tube(48, 92, lambda z: (0, nk.airway(z)[0] - 2, 17, 15, 0), nk.muscle_hu - 5, OTHER)
    cart = rng.uniform(150, 450)
    for s in (1, -1):
        cv.tube(55, 90, lambda z: (s * 9, nk.airway(z)[0] - 11, 1.2, 14, s * 0.6), cart, BONE)
    cv.tube(45, 54, lambda z: (0, nk.airway(z)[0], nk.airway(z)[1] + 3, nk.airway(z)[2] + 3, 0), cart, BONE)
    cv.tube(90, 97, lambda z: (0, nk.airway(z)[0] + 4, 21, 15, 0), nk.cortex * 0.6, BONE,  # hyoid
            keep=lambda X, Y, Z: Y < -5 + 0 * X)
    cv.tube(90, 97, lambda z: (0, nk.airway(z)[0] + 4, 18, 12, 0), nk.muscle_hu, MUSCLE, only=(BONE,))
    cv.tube(-99, 45, lambda z: (0, nk.airway(z)[0], nk.trachea_r + 1.5, 0.85 * nk.trachea_r + 1.5, 0), cart * 0.6,
            OTHER)  # tracheal wall
    cv.tube(-99, 175, lambda z: (0, *nk.airway(z), 0), -1000, AIR)
    oes_x = rng.uniform(2, 6)
    cv.tube(-99, 55, lambda z: (oes_x, vb(z)[0] - vb(z)[2] - 5, 8, 4.5, 0), nk.muscle_hu - 5, MUSCLE)
    if rng.random() < 0.4:
        cv.tube(-99, 50, lambda z: (oes_x, vb(z)[0] - vb(z)[2] - 5, 2.5, 1.2, 0), -1000, AIR)
    # vessels
    for s in (1, -1):
        cv.tube(-99, 175, lambda z: (*nk.carotid(z, s), nk.carotid(z, s)[2], 0), nk.artery_hu, VESSEL)
        cv.tube(nk.bifurcation, 120, lambda z: (nk.carotid(z, s)[0] - s * 4, nk.carotid(z, s)[1] - 11, 2.8, 2.8, 0),
                nk.artery_hu, VESSEL)
        cv.tube(-99, 175, lambda z: (*nk.jugular(z, s), 0), nk.vein_hu, VESSEL)
    # mandible with teeth at the top of the scan
    mz = nk.mandible_z
    arch = lambda z, inset: (0, 0, 0.68 * nk.half_width(z, 1) - inset, nk.b_ant(z) - nk.fat_t - 5 - inset,  # noqa: E731
                             0)
    front = lambda X, Y, Z: Y < 12 + 0 * X  # noqa: E731
    cv.tube(mz, mz + 24, lambda z: arch(z, 0), nk.cortex + 300, BONE, keep=front)
    cv.tube(mz, mz + 24, lambda z: arch(z, 2.5), rng.uniform(300, 500), BONE, keep=front, only=(BONE,))
    cv.tube(mz, mz + 24, lambda z: arch(z, 8), nk.muscle_hu + 15, MUSCLE, keep=front, only=(BONE,))
    for s in (1, -1):  # masseter and medial pterygoid around the ramus, parotid behind it
        inner = lambda z: nk.half_width(z, s) - nk.fat_t  # noqa: E731
        cv.tube(mz + 5, 175, lambda z: (s * (inner(z) - 7), -4, 6, 14, s * 0.3), mus(), MUSCLE, only=(FAT, MUSCLE))
        cv.tube(mz + 10, 175, lambda z: (s * (inner(z) - 21), 4, 5, 12, -s * 0.4), mus(), MUSCLE, only=(FAT, MUSCLE))
        cv.tube(mz + 10, 175, lambda z: (s * (inner(z) - 14), 2, 3.5, 11, s * 0.2), nk.cortex, BONE)
        cv.tube(112, 185, lambda z: nk.parotid(z, s), nk.gland_hu - 40, GLAND, only=(FAT, MUSCLE))
    metal = []
    if nk.teeth:
        gaps = lambda X, Y, Z: (np.cos(16 * np.arctan2(Y, X)) > -0.6) & (Y < -5)  # noqa: E731
        cv.tube(mz + 22, mz + 36, lambda z: arch(z, 1.5), rng.uniform(1800, 2800), BONE, keep=gaps)
        cv.tube(mz + 22, mz + 36, lambda z: arch(z, 9.5), nk.muscle_hu + 15, MUSCLE, only=(BONE,))
        for _ in range(rng.integers(1, 4) if nk.metal else 0):
            phi, zc = rng.uniform(-2.6, -0.5), rng.uniform(mz + 25, mz + 33)
            ax, ay = arch(zc, 5)[2:4]
            metal.append((float(ax * np.cos(phi)), float(ay * np.sin(phi)), zc))
            cv.sphere(metal[-1], rng.uniform(1.5, 3), 3071, BONE)
    soft = np.isin(cv.tissue, (FAT, SUBQ, MUSCLE, GLAND))
    cv.hu[soft] += texture[soft]
    return area, metal


def metal_streaks(cv, metal, rng):
    """Beam-hardening/photon-starvation streaks radiating from dental metal, dark between fillings."""
    Y, X = cv.y[:, None], cv.x[None, :]
    for k in np.flatnonzero(np.min([np.abs(cv.z - m[2]) for m in metal], axis=0) < 5):
        streaks = np.zeros(cv.hu.shape[1:], np.float32)
        for i, (mx, my, _) in enumerate(metal):
            lines = [(rng.uniform(0, np.pi), rng.choice([-1, 1]) * rng.uniform(150, 600))
                     for _ in range(rng.integers(6, 16))]
            for j in range(i + 1, len(metal)):
                lines.append((np.arctan2(metal[j][1] - my, metal[j][0] - mx), -rng.uniform(300, 700)))
            dist = np.hypot(X - mx, Y - my)
            for ang, amp in lines:
                across = np.abs((X - mx) * np.sin(ang) - (Y - my) * np.cos(ang))
                streaks += amp * np.exp(-0.5 * (across / rng.uniform(0.6, 1.8)) ** 2 - dist / 90)
        cv.hu[k] += streaks


def make_nodes(rng, nk, ece, subtle, z_lo, z_hi):
    """Jugular-chain nodes (levels II-IV) between the internal jugular vein and the SCM; ECE in >= 1 if ece."""
    nodes, side = [], rng.choice([1, -1])
    levels = dict(LEVELS, II=(95.0, min(145.0, nk.mandible_z + 5)))  # upper level II sits behind the mandible
    for i in range(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1])):
        s = side if rng.random() < 0.8 else -side
        node_ece = ece and (not any(n.grade for n in nodes) or rng.random() < 0.35)
        grade = (("subtle" if subtle else "overt") if node_ece else "")
        infiltrates = grade == "overt" and rng.random() < 0.5  # breach toward the SCM: fat plane lost
        short = 11 + 24 * rng.beta(2, 2) if node_ece else 8 + 22 * rng.beta(1.5, 2.5)
        ratio = rng.uniform(1.0, 1.3) if rng.random() < 0.5 else rng.uniform(1.4, 2.2)
        radii = np.array([short / 2, short / 2 * rng.uniform(0.8, 1.0), short / 2 * ratio])
        ok = [lv for lv, (a, b) in levels.items() if min(b, z_hi - radii[2] - 6) > max(a, z_lo + radii[2] + 6)]
        if not ok:
            continue
        lv = ok[rng.integers(len(ok))]
        zc = rng.uniform(max(levels[lv][0], z_lo + radii[2] + 6), min(levels[lv][1], z_hi - radii[2] - 6))
        jx, jy, jrx, _ = scalars(nk.jugular(np.array([zc]), s))
        sx, sy = scalars(nk.scm(np.array([zc]), s)[:2])
        lateral = np.radians({"II": rng.uniform(10, 70), "III": rng.uniform(-30, 40), "IV": rng.uniform(-45, 25)}[lv])
        toward = lateral if s > 0 else np.pi - lateral  # from the IJV: lateral, posterolateral at level II
        psi = rng.uniform(0, np.pi)
        r_dir = 1 / np.hypot(np.cos(toward - psi) / radii[0], np.sin(toward - psi) / radii[1])
        offset = jrx + rng.uniform(1.5, 4) + r_dir
        centre = np.array([jx + offset * np.cos(toward), jy + offset * np.sin(toward), zc])
        to_scm = np.array([sx - centre[0], sy - centre[1], 0])
        gap = np.linalg.norm(to_scm) - 5 - 1 / np.hypot(*(to_scm[:2] / np.linalg.norm(to_scm) / radii[:2]))
        if infiltrates and gap > 0:  # the node abuts the muscle it invades
            centre += to_scm / np.linalg.norm(to_scm) * (gap + rng.uniform(0, 2))
        if any(np.linalg.norm(centre - n.lobes[0][0]) < n.reach + 2.5 * max(radii) + 3 for n in nodes):  # disjoint
            continue
        tilt = rng.normal(0, 0.2)  # long axes follow the jugular chain, a little tilted
        cz, sz, cx_, sx_ = np.cos(psi), np.sin(psi), np.cos(tilt), np.sin(tilt)
        axes = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx_, -sx_], [0, sx_, cx_]])
        rand_dir = lambda: (lambda v: v / np.linalg.norm(v))(rng.normal(size=3))  # noqa: E731
        bumps = [(rand_dir(), rng.uniform(0.02, 0.08), rng.uniform(3, 8)) for _ in range(rng.integers(0, 4))]
        lobes = [(centre, axes, radii, bumps)]
        matted = short > 12 and rng.random() < (0.25 if node_ece else 0.12)
        if matted:  # a second node fused to the first: one conglomerate
            d = rand_dir() * [0.4, 0.4, 1.0]
            d /= np.linalg.norm(d)
            r2 = radii * rng.uniform(0.6, 0.9)
            lobes.append((centre + d * 0.8 * (radii.max() + r2.max()), axes, r2, []))
        ece_dir = (to_scm if infiltrates else
                   np.array([np.cos(toward), np.sin(toward), 0]) + 0.6 * rand_dir())
        ece_dir = ece_dir / np.linalg.norm(ece_dir) + [0, 0, rng.uniform(-0.3, 0.3)]
        ece_dir /= np.linalg.norm(ece_dir)
        half_angle = np.radians(rng.uniform(80, 140) if grade == "overt" else rng.uniform(45, 75))
        n = NS(lobes=lobes, level=lv, infiltrates=infiltrates, side=int(s), short_mm=float(short), matted=matted,
               grade=grade, ece_dir=ece_dir, kappa=np.log(2) / (1 - np.cos(half_angle)),
               hu=rng.uniform(25, 50) + 5 * (nk.phase != "none"), halo_mm=rng.uniform(1.0, 2.5), necrosis_mm=0.0,
               rim_mm=0.0, capsule=rng.uniform(8, 18) if nk.phase != "none" else 4.0)
        if short >= 12 and rng.random() < (0.45 if node_ece else 0.2):
            n.necrosis_mm, n.necrosis_hu = rng.uniform(0.35, 0.6) * short / 2, rng.uniform(5, 25)
        waves, tongues = [], []
        if grade == "overt":  # irregular, lobulated breach with tumour tongues; stranding up to ~1 cm
            waves = [(rand_dir(), rng.uniform(6, 14), rng.uniform(0.04, 0.08), rng.uniform(0, 6.3)) for _ in range(6)]
            tongues = [((ece_dir + 0.5 * rand_dir()) / 1.2, rng.uniform(0.15, 0.45), rng.uniform(40, 120))
                       for _ in range(rng.integers(2, 6))]
            n.strand_mm, n.strand_hu, n.haze = rng.uniform(6, 12), rng.uniform(-35, 25), rng.uniform(20, 45)
            n.blur_mm, n.strand_width = rng.uniform(1.5, 3), 0.45
            if nk.phase != "none" and rng.random() < 0.4:
                n.rim_mm, n.rim_hu = rng.uniform(2, 4), rng.uniform(80, 120)
        elif grade == "subtle":  # occult-looking: minimal irregularity, faint stranding
            waves = [(rand_dir(), rng.uniform(6, 12), rng.uniform(0.015, 0.03), rng.uniform(0, 6.3)) for _ in range(4)]
            tongues = [(ece_dir, rng.uniform(0.06, 0.12), rng.uniform(30, 60))] if rng.random() < 0.6 else []
            n.strand_mm, n.strand_hu, n.haze = rng.uniform(3, 7), rng.uniform(-60, -30), rng.uniform(12, 25)
            n.blur_mm, n.strand_width = rng.uniform(0.8, 1.5), 0.3
        n.waves = waves
        lobes[0][3].extend([(d / np.linalg.norm(d), a, k) for d, a, k in tongues])
        shape_bounds(n, rng)
        nodes.append(n)
        outer = centre[:2] + r_dir * np.array([np.cos(toward), np.sin(toward)])  # keep the node under the fat
        alpha = np.arctan2(outer[1], outer[0])
        depth_needed = nk.fat_t + 4 - (nk.surface_radius(np.array([zc]), np.array([alpha]), s)[0] - np.hypot(*outer))
        if depth_needed > 0:
            nk.bulges.append((int(s), zc, radii[2] + 12, float(depth_needed) / max(abs(np.cos(toward)), 0.4) + 2))
    return nodes


def surface(node, bumps, n):
    """Radius scale of a lobe's surface in unit directions n (M, 3): lobules/tongues as von Mises bumps, plus
    for ECE a rough margin (random spherical waves) confined to the breach sector."""
    surf = np.ones(len(n), np.float32)
    if bumps:
        dirs, amps, kappas = (np.array(v, np.float32) for v in zip(*bumps))
        surf += np.exp(kappas * (n @ dirs.T - 1)) @ amps
    if node.grade:
        w, freq, amp, phase = (np.array(v, np.float32) for v in zip(*node.waves))
        surf += np.exp(node.kappa * (n @ node.ece_dir - 1)) * (np.cos(freq * (n @ w.T) + phase) @ amp)
    return surf


def node_field(node, pts):
    """< 0 inside (normalised radius minus surface): the union of the node's lobes (two for a matted node). The
    surface is evaluated only in the shell where it can lie; elsewhere the sign is already known."""
    f = np.full(len(pts), np.inf, np.float32)
    for (centre, axes, radii, bumps), (lo, hi) in zip(node.lobes, node.shell):
        rel = (pts - centre).astype(np.float32)
        r = np.linalg.norm((rel @ axes) / radii, axis=1)
        lobe_f = np.where(r < lo, r - lo, r - hi)
        near = np.flatnonzero((r >= lo) & (r <= hi))
        n = rel[near] / (np.linalg.norm(rel[near], axis=1, keepdims=True) + 1e-6)
        lobe_f[near] = r[near] - surface(node, bumps, n)
        f = np.minimum(f, lobe_f)
    return f


def shape_bounds(node, rng):
    """Per lobe, the range of its surface scale over sampled directions (with a margin), and the node's reach:
    the largest distance of its surface from the first centre."""
    n = rng.normal(size=(4000, 3))
    n = n / np.linalg.norm(n, axis=1, keepdims=True)
    node.shell, reach = [], 0.0
    for c, _, r, bumps in node.lobes:
        surf = surface(node, bumps, np.vstack([n] + [b[0][None] for b in bumps]))
        node.shell.append((0.95 * float(surf.min()) - 0.05, 1.05 * float(surf.max()) + 0.05))
        reach = max(reach, np.linalg.norm(c - node.lobes[0][0]) + r.max() * node.shell[-1][1])
    node.reach = reach


def face_the_fat(node, rel, d_out, fatty):
    """Rotate the ECE pattern (breach direction, rough margin, tongues) about z towards the fattiest sector."""
    dirs = rel / (np.linalg.norm(rel, axis=1, keepdims=True) + 1e-6)
    near = (d_out > 1) & (d_out < 8)
    turns = [np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
             for a in np.radians(np.arange(0, 360, 30))]
    weights = [np.exp(node.kappa * (dirs[near] @ (t @ node.ece_dir) - 1)) for t in turns]
    turn = turns[int(np.argmax([(w * fatty[near]).sum() / (w.sum() + 1e-6) for w in weights]))]
    node.ece_dir = turn @ node.ece_dir
    node.waves = [(turn @ w, freq, amp, phase) for w, freq, amp, phase in node.waves]
    node.lobes[0][3][:] = [(turn @ d, amp, kappa) for d, amp, kappa in node.lobes[0][3]]


def render_node(cv, node, nk, rng):
    """Perinodal fat plane, node body (necrosis, rim, capsule) and, for ECE, the breach: ill-defined margin,
    stranding/reticulation of the fat, haze, and a soft-tissue bridge that obliterates the plane with muscle."""
    c, m = node.lobes[0][0], node.reach + 14
    reg = cv.region(c[2] - m, c[2] + m, c[0] - m, c[0] + m, c[1] - m, c[1] + m)
    if reg is None:
        return
    box, Z, Y, X = reg
    shape = (Z.shape[0], Y.shape[1], X.shape[2])
    pts = np.stack([np.broadcast_to(v, shape) for v in (X, Y, Z)], -1).reshape(-1, 3)
    inside = (node_field(node, pts) < 0).reshape(shape)
    sampling = (float(abs(cv.z[1] - cv.z[0])), float(cv.y[1] - cv.y[0]), float(cv.x[1] - cv.x[0]))
    d_out = ndimage.distance_transform_edt(~inside, sampling=sampling)
    rel = pts - c
    if node.grade and not node.infiltrates:  # turn the breach to face perinodal fat, where stranding shows
        face_the_fat(node, rel, d_out.ravel(), np.isin(cv.tissue[box], (FAT, SUBQ)).ravel())
        inside = (node_field(node, pts) < 0).reshape(shape)
        d_out = ndimage.distance_transform_edt(~inside, sampling=sampling)
    d_in = ndimage.distance_transform_edt(inside, sampling=sampling)
    sector = (np.exp(node.kappa * (rel @ node.ece_dir / (np.linalg.norm(rel, axis=1) + 1e-6) - 1)).reshape(shape)
              if node.grade else np.zeros(shape))
    field = ndimage.gaussian_filter(rng.standard_normal(shape), [w / s for w, s in zip((2.0, 1.5, 1.5), sampling)])
    field /= field.std() + 1e-6
    hu, tissue = cv.hu[box], cv.tissue[box]
    soft = np.isin(tissue, (FAT, SUBQ, MUSCLE, GLAND, SKIN))
    halo = ~inside & (d_out <= node.halo_mm * (1 + 0.4 * field)) & (sector < 0.35) & soft & (tissue != SUBQ)
    hu[halo], tissue[halo] = nk.fat_hu, FAT
    body = node.hu + 3 * field
    if node.necrosis_mm:
        body += (node.necrosis_hu - body) * np.clip((d_in - node.necrosis_mm) / 2, 0, 1)
    if node.rim_mm:
        body = np.where(d_in < node.rim_mm * (0.6 + 0.3 * field), node.rim_hu, body)
    body += node.capsule * ((d_in <= 1.0) & (sector < 0.5))  # thin capsule, interrupted at the breach
    hu[inside], tissue[inside] = body[inside], NODE
    if not node.grade:
        return
    fatty = ~inside & np.isin(tissue, (FAT, SUBQ))
    reach = np.clip(1 - d_out / node.strand_mm, 0, 1) ** 0.7 * sector  # stranding extends strand_mm into the fat
    strands = np.exp(-(field / node.strand_width) ** 2)  # thin reticular strands where the random field crosses zero
    hu[fatty] += ((node.strand_hu - hu) * strands * reach + node.haze * reach)[fatty]
    bleed = ~inside & (d_out < node.blur_mm) & (fatty | (tissue == MUSCLE))
    hu[bleed] += ((node.hu - hu) * (1 - d_out / node.blur_mm) * sector)[bleed]
    if node.infiltrates:
        bridge = fatty & (sector > 0.5) & (d_out < rng.uniform(3, 7) * (0.7 + 0.6 * (field > 0)))
        hu[bridge], tissue[bridge] = nk.muscle_hu - 5 + 3 * field[bridge], MUSCLE


def reconstruct(hu, scan, area, rng):
    """Slice sensitivity (z blur ~ thickness), kernel MTF, and noise with the kernel's power spectrum."""
    K, N, _ = hu.shape
    hu = ndimage.gaussian_filter1d(hu, 0.42 * scan.thickness / scan.spacing, axis=0)
    f = np.hypot(fft.fftfreq(N, scan.pixel)[:, None], fft.rfftfreq(N, scan.pixel)[None, :]).astype(np.float32)
    mtf = np.exp(-(f / scan.fc) ** 2) * (1 + scan.boost * (f / scan.fc) ** 2)
    image = fft.irfft2(fft.rfft2(hu) * mtf, s=(N, N))
    nps = (f ** 0.3 * np.exp(-(f / (0.5 * scan.fc)) ** 2) if scan.iterative else f) * mtf ** 2
    half_spectrum = (K, N, N // 2 + 1)
    white = rng.standard_normal(half_spectrum, np.float32) + 1j * rng.standard_normal(half_spectrum, np.float32)
    noise = fft.irfft2(white * np.sqrt(nps), s=(N, N))
    noise /= noise.std()
    sigma = scan.sigma * np.clip(np.sqrt(area / np.median(area)), 0.8, 2.0)  # broader shoulders: noisier slices
    image += noise * sigma[:, None, None].astype(np.float32) + scan.hu_offset
    return np.clip(np.rint(image), -1024, 3071).astype(np.int16)


def draw_scanner(rng):
    """Per-patient acquisition: matrix, pixel, slice profile, kernel, noise, rescale, file conventions."""
    vendor, model, kernels = VENDORS[rng.integers(len(VENDORS))]
    kind = rng.choice([0, 1, 2], p=[0.55, 0.25, 0.2])  # soft, standard, sharp reconstruction kernel
    matrix = 256 if rng.random() < 0.75 else 320
    thickness = float(rng.choice([3.0, 3.75]) if matrix == 320 else rng.choice([1.5, 2.0, 2.5, 3.0, 3.75]))
    spacing = thickness if rng.random() < 0.8 or thickness < 2 else round(thickness * 0.8, 2)
    max_slices = min(100, int(10.3e6 / (2 * matrix ** 2)), int(215 / spacing) + 1)  # files < ~10 MB per patient
    n = int(np.clip(round(rng.uniform(150, 215) / spacing) + 1, 50, max_slices))
    cov = (n - 1) * spacing
    z_bot = rng.uniform(max(-52, 95 - cov), max(-50, min(35, 165 - cov)))  # some start above the clavicles
    z_top = round(z_bot + cov, 2)
    return NS(vendor=vendor, model=model, kernel=kernels[kind], kind=["soft", "standard", "sharp"][kind],
              fc=[rng.uniform(0.3, 0.42), rng.uniform(0.5, 0.65), rng.uniform(0.8, 1.0)][kind],
              boost=[0.0, 0.2, rng.uniform(0.5, 1.0)][kind], iterative=rng.random() < 0.4,
              sigma=[rng.uniform(8, 16), rng.uniform(10, 20), rng.uniform(16, 30)][kind],
              hu_offset=rng.uniform(-10, 10),
              matrix=matrix, pixel=round(rng.uniform(0.8, 1.4), 3), thickness=thickness, spacing=spacing, n=n,
              z_top=z_top, intercept=-1000 if rng.random() < 0.08 else -1024, descending=rng.random() < 0.5,
              offset=np.round([rng.uniform(-15, 15), rng.uniform(-210, -120), rng.uniform(-700, 200)], 2),
              fov_centre=(rng.uniform(-8, 8), rng.uniform(0, 15)), kvp=float(rng.choice([100, 120, 120, 140])))


def polygons(field_2d, gx, gy):
    """Closed polygons of field < 0 on a grid (contourpy), as (M, 2) arrays without the repeated last point."""
    lines = contour_generator(x=gx, y=gy, z=field_2d).lines(0.0)
    return [ln[:-1:2] if len(ln) > 16 else ln[:-1] for ln in lines if len(ln) >= 5]


def node_contours(nodes, z_slices, step=0.4):
    """Per-slice sub-voxel contours of disjoint nodes: the field is smooth, so a 0.4 mm local grid with
    linear interpolation places each vertex well inside a CT pixel."""
    out = []
    for node in nodes:
        lo, hi = node.lobes[0][0] - node.reach - 1, node.lobes[0][0] + node.reach + 1
        gx, gy = np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step)
        for z in z_slices[(z_slices > lo[2]) & (z_slices < hi[2])]:
            pts = np.stack(np.broadcast_arrays(gx[None, :], gy[:, None], z), -1).reshape(-1, 3)
            f = node_field(node, pts).reshape(len(gy), len(gx))
            out += [np.column_stack([p, np.full(len(p), z)]) for p in polygons(f, gx, gy)] if (f < 0).any() else []
    return out


def node_volume_ml(node, step=0.5):
    lo, hi = node.lobes[0][0] - node.reach - 1, node.lobes[0][0] + node.reach + 1
    gx, gy = np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step)
    count = 0
    for z in np.arange(lo[2], hi[2], step):
        pts = np.stack(np.broadcast_arrays(gx[None, :], gy[:, None], z), -1).reshape(-1, 3)
        count += int((node_field(node, pts) < 0).sum())
    return count * step ** 3 / 1000.0


def ellipse_contours(z_slices, shape_at, z0, z1, n=48):
    out = []
    for z in z_slices[(z_slices >= z0) & (z_slices <= z1)]:
        cx, cy, rx, ry, ang = scalars(shape_at(np.array([z])))
        if min(rx, ry) > 1.0:
            t = np.linspace(0, 2 * np.pi, n, endpoint=False)
            ex, ey = rx * np.cos(t), ry * np.sin(t)
            out.append(np.column_stack([cx + ex * np.cos(ang) - ey * np.sin(ang),
                                        cy + ex * np.sin(ang) + ey * np.cos(ang), np.full(n, z)]))
    return out


def make_patient(seed, index, ece, subtle):
    """Everything about one patient: CT HU volume (int16), ROIs (name, type, contours), truth."""
    rng = np.random.default_rng([seed, index])
    scan, nk = draw_scanner(rng), Neck(rng)
    z = np.round(scan.z_top - scan.spacing * np.arange(scan.n)[::-1], 2).astype(np.float32)  # ascending
    # pixel centres exactly as written (3 decimals) so that contours and pixels agree to float precision
    x, y = ((round(c - (scan.matrix - 1) / 2 * scan.pixel, 3) + np.arange(scan.matrix) * scan.pixel).astype(np.float32)
            for c in scan.fov_centre)
    nodes = make_nodes(rng, nk, ece, subtle, float(z[0]), float(z[-1]))
    while not nodes:
        nodes = make_nodes(rng, nk, ece, subtle, float(z[0]), float(z[-1]))
    cv = Canvas(x, y, z)
    area, metal = paint_anatomy(cv, nk, rng)
    primary = None
    if rng.random() < 0.4:  # an oropharyngeal primary (tonsil / tongue base) on the nodal side: GTVp, never nodal
        zc, h, r, s = rng.uniform(100, 125), rng.uniform(10, 18), rng.uniform(7, 13), nodes[0].side
        tumour = lambda q: (s * (nk.pharynx[0] + 4), nk.airway(q)[0] + 2, r * nk.taper(q, zc - h, zc + h),  # noqa: E731
                            0.8 * r * nk.taper(q, zc - h, zc + h), 0)
        primary = (zc - h, zc + h, tumour)
        cv.tube(primary[0], primary[1], primary[2], nk.muscle_hu + rng.uniform(5, 25), OTHER)
    for n in nodes:
        render_node(cv, n, nk, rng)
    if metal:
        metal_streaks(cv, metal, rng)
    hu = reconstruct(cv.hu, scan, area, rng)
    # ROIs: nodal names vary per patient; one ROI for all nodes or one per node
    rois = []
    if len(nodes) == 1 or rng.random() < 0.5:
        name = NODAL_SINGLE[rng.integers(len(NODAL_SINGLE))]
        rois.append((name, "GTV", node_contours(nodes, z)))
    else:
        pattern = NODAL_EACH[rng.integers(len(NODAL_EACH))]
        for i, n in enumerate(nodes, 1):
            alone = "{s}" in pattern and sum(m.side == n.side for m in nodes) == 1  # GTVn_L, GTVn_R
            name = pattern.format(i="" if alone else i, s="L" if n.side > 0 else "R")
            rois.append((name, "GTV", node_contours([n], z)))
    if primary is not None:
        rois.append((["GTVp", "GTV_Primary", "GTVp_70", "GTV-T"][rng.integers(4)], "GTV",
                     ellipse_contours(z, primary[2], *primary[:2])))
    vb = nk.vertebra
    rois.append((OAR_NAMES["cord"][rng.integers(4)], "ORGAN",
                 ellipse_contours(z, lambda q: (0, vb(q)[0] + vb(q)[2] + 7.5, 5, 3.8, 0), -99, 175)))
    rois.append((OAR_NAMES["larynx"][rng.integers(2)], "ORGAN",
                 ellipse_contours(z, lambda q: (0, nk.airway(q)[0] - 2, 18, 16, 0), 48, 92)))
    pair = OAR_NAMES["parotid"][rng.integers(3)]
    for s, nm in ((1, pair[0]), (-1, pair[1])):
        rois.append((nm, "ORGAN", ellipse_contours(z, lambda q: nk.parotid(q, s), 112, 185)))
    if rng.random() < 0.5:
        pair = OAR_NAMES["submand"][rng.integers(2)]
        for s, nm in ((1, pair[0]), (-1, pair[1])):
            rois.append((nm, "ORGAN", ellipse_contours(z, lambda q: nk.submandibular(q, s), 90, 120)))
    if rng.random() < 0.5:  # elective nodal CTV: must never be taken for gross disease
        levels = lambda q: (nk.jugular(q, 1)[0] + 8, nk.jugular(q, 1)[1] + 4, 22, 24, 0.3)  # noqa: E731
        rois.append((OAR_NAMES["elective"][rng.integers(4)], "CTV", ellipse_contours(z, levels, 14, 145)))
    rois.append((OAR_NAMES["body"][rng.integers(4)], "EXTERNAL", body_contours(cv.tissue, x, y, z)))
    rois = [r for r in rois if r[2]]
    truth_nodes = [dict(volume_ml=round(node_volume_ml(n), 3), short_axis_mm=round(n.short_mm, 1), level=n.level,
                        side="L" if n.side > 0 else "R", ece=n.grade or None, matted=bool(n.matted),
                        necrosis=bool(n.necrosis_mm), thick_rim=bool(n.rim_mm),
                        infiltrates_muscle=bool(n.infiltrates)) for n in nodes]
    truth = dict(ece=int(ece), grade=("subtle" if subtle else "overt") if ece else None, n_nodes=len(nodes),
                 node_volumes_ml=[t["volume_ml"] for t in truth_nodes], nodes=truth_nodes,
                 roi_names=[r[0] for r in rois], contrast=str(nk.phase), metal=bool(metal),
                 scanner=dict(vendor=scan.vendor, kernel=scan.kernel, kernel_kind=scan.kind, iterative=scan.iterative,
                              noise_sigma=round(scan.sigma, 1), matrix=scan.matrix, pixel_mm=scan.pixel,
                              thickness_mm=scan.thickness, spacing_mm=scan.spacing, slices=scan.n))
    return scan, x, y, z, hu, rois, truth, rng


def body_contours(tissue, x, y, z):
    """The outer skin outline per slice (largest polygon; the airway is not a hole of the external ROI)."""
    out = []
    for k in range(len(z)):
        inside = ndimage.uniform_filter(np.isin(tissue[k], (AIR, DEVICE), invert=True).astype(np.float32), 3)
        inside[[0, -1], :], inside[:, [0, -1]] = 0, 0  # close outlines cut by the field of view
        polys = polygons(0.5 - inside, x, y)
        if polys:
            area = lambda q: abs((q[:, 0] * np.roll(q[:, 1], -1) - q[:, 1] * np.roll(q[:, 0], -1)).sum())  # noqa: E731
            p = max(polys, key=area)
            out.append(np.column_stack([p, np.full(len(p), z[k])]))
    return out


def ds_of(**tags):
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def file_dataset(sop_class, sop_uid, common):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds = ds_of(SOPClassUID=sop_class, SOPInstanceUID=sop_uid, **common)
    ds.file_meta = meta
    return ds


def fmt(values):
    return [f"{float(v):.3f}".rstrip("0").rstrip(".") for v in values]


def write_patient(root, seed, index, ece, subtle):
    """Write one patient's CT series + RTSTRUCT below root/dicom/; return its truth record."""
    t0 = time.perf_counter()
    scan, x, y, z, hu, rois, truth, rng = make_patient(seed, index, ece, subtle)
    uid = lambda *what: generate_uid(entropy_srcs=[f"indep/{seed}/{index}", *map(str, what)])  # noqa: E731
    patient_id, name = f"{seed % 100:02d}{index + 1:05d}", f"IND^{index + 1:04d}"
    study_date = f"{rng.integers(2014, 2024)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    study_time = f"{rng.integers(7, 18):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"
    common = dict(PatientName=name, PatientID=patient_id, PatientBirthDate=f"{rng.integers(1935, 1985)}0101",
                  PatientSex=str(rng.choice(["M", "F"], p=[0.75, 0.25])), StudyInstanceUID=uid("study"),
                  StudyDate=study_date, StudyTime=study_time, StudyID=f"{rng.integers(1000, 9999)}",
                  AccessionNumber=f"A{rng.integers(10 ** 7, 10 ** 8)}", ReferringPhysicianName="ONCOLOGY^RADIATION",
                  StudyDescription="RT PLANNING NECK", InstitutionName="Independent Test Hospital",
                  Manufacturer=scan.vendor, ManufacturerModelName=scan.model, FrameOfReferenceUID=uid("frame"),
                  SpecificCharacterSet="ISO_IR 100")
    folder = root / "dicom" / f"IND_{index + 1:04d}"
    layout = rng.integers(3)  # Eclipse-style flat, CT/ + RTSTRUCT/ sub-folders, PACS-like random names
    ct_dir = folder / ("CT" if layout == 1 else f"{study_date}/{rng.integers(2, 9)}_CT" if layout == 2 else "")
    ct_dir.mkdir(parents=True, exist_ok=True)
    offset = scan.offset
    ipp_z = z + offset[2]
    order = np.argsort(-ipp_z) if scan.descending else np.argsort(ipp_z)  # instance numbering along the scan
    instance = np.empty(len(z), int)
    instance[order] = np.arange(1, len(z) + 1)
    ct_uids = [uid("ct", k) for k in range(len(z))]
    series_uid, names = uid("ct-series"), rng.permutation(len(z)) + 1
    win = dict(WindowCenter="40", WindowWidth="400")
    for k in rng.permutation(len(z)):  # written in random order; file names do not follow z
        ds = file_dataset(CT_STORAGE, ct_uids[k], common)
        ds.update(ds_of(Modality="CT", SeriesInstanceUID=series_uid, SeriesNumber=2, InstanceNumber=int(instance[k]),
                        SeriesDescription=f"Neck {scan.thickness}mm {scan.kernel}",
                        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                        PatientPosition="HFS", BodyPartExamined="NECK", KVP=scan.kvp, ConvolutionKernel=scan.kernel,
                        SliceThickness=fmt([scan.thickness])[0], PositionReferenceIndicator="",
                        ImagePositionPatient=fmt([x[0] + offset[0], y[0] + offset[1], ipp_z[k]]),
                        ImageOrientationPatient=["1", "0", "0", "0", "1", "0"], SliceLocation=fmt([ipp_z[k]])[0],
                        PixelSpacing=fmt([scan.pixel, scan.pixel]), Rows=scan.matrix, Columns=scan.matrix,
                        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16,
                        HighBit=15, PixelRepresentation=1, RescaleIntercept=str(scan.intercept), RescaleSlope="1",
                        RescaleType="HU", **win))
        if truth["contrast"] != "none":
            ds.ContrastBolusAgent = "IOHEXOL 350"
        ds.PixelData = (hu[k].astype(np.int32) - scan.intercept).astype("<i2").tobytes()
        fname = {0: f"CT.{ct_uids[k]}.dcm", 1: f"IM{names[k]:04d}.dcm", 2: f"{rng.integers(16 ** 8):08X}"}[layout]
        ds.save_as(ct_dir / fname, enforce_file_format=True)
    # RTSTRUCT: contours in patient coordinates, each referencing the CT slice it lies on
    by_z = {round(float(v), 2): k for k, v in enumerate(z)}
    image_ref = lambda k: ds_of(ReferencedSOPClassUID=CT_STORAGE, ReferencedSOPInstanceUID=ct_uids[k])  # noqa: E731
    rs = file_dataset(RTSTRUCT_STORAGE, uid("rs"), common)
    rs.update(ds_of(Modality="RTSTRUCT", SeriesInstanceUID=uid("rs-series"), SeriesNumber=99, InstanceNumber=1,
                    StructureSetLabel="RTPLAN_NECK", StructureSetDate=study_date, StructureSetTime=study_time,
                    SeriesDescription="Structure set"))
    rs.ReferencedFrameOfReferenceSequence = [ds_of(
        FrameOfReferenceUID=common["FrameOfReferenceUID"], RTReferencedStudySequence=[ds_of(
            ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=common["StudyInstanceUID"],
            RTReferencedSeriesSequence=[ds_of(SeriesInstanceUID=series_uid,
                                              ContourImageSequence=[image_ref(k) for k in range(len(z))])])])]
    rs.StructureSetROISequence, rs.ROIContourSequence, rs.RTROIObservationsSequence = [], [], []
    for number, (roi_name, kind, contours) in enumerate(rois, 1):
        rs.StructureSetROISequence.append(ds_of(ROINumber=number, ROIName=roi_name, ROIGenerationAlgorithm="MANUAL",
                                                ReferencedFrameOfReferenceUID=common["FrameOfReferenceUID"]))
        items = [ds_of(ContourImageSequence=[image_ref(by_z[round(float(c[0, 2]), 2)])],
                       ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(c),
                       ContourData=fmt((c + offset).ravel())) for c in contours]
        rs.ROIContourSequence.append(ds_of(ReferencedROINumber=number, ContourSequence=items,
                                           ROIDisplayColor=[int(v) for v in rng.integers(0, 256, 3)]))
        rs.RTROIObservationsSequence.append(ds_of(ObservationNumber=number, ReferencedROINumber=number,
                                                  RTROIInterpretedType=kind, ROIInterpreter=""))
    rs_dir = folder / ("RTSTRUCT" if layout == 1 else "")
    rs_dir.mkdir(parents=True, exist_ok=True)
    rs.save_as(rs_dir / (f"RS.{rs.SOPInstanceUID}.dcm" if layout != 2 else f"{rng.integers(16 ** 8):08X}"),
               enforce_file_format=True)
    return dict(patient_id=patient_id, folder=folder.name, **truth, seconds=round(time.perf_counter() - t0, 2))


def _write_one(job):
    return write_patient(*job)


def generate(out, patients, seed, workers=1):
    """Write the hospital; ECE labels balanced (a random half), 28 % of the positives subtle."""
    out = Path(out)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10 ** 6])
    ece = rng.permutation(np.arange(patients) % 2 == 1)
    positives = np.flatnonzero(ece)
    subtle = np.isin(np.arange(patients), rng.choice(positives, int(0.28 * len(positives) + 0.5), replace=False))
    jobs = [(out, seed, i, bool(ece[i]), bool(ece[i] and subtle[i])) for i in range(patients)]
    if workers > 1:
        with Pool(workers) as pool:
            records = list(pool.imap(_write_one, jobs))
    else:
        records = [_write_one(j) for j in jobs]
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "ece"])
        w.writerows([r["patient_id"], r["ece"]] for r in records)
    (out / "truth.json").write_text(json.dumps({"generator": "benchmarks/independent_hospital.py", "seed": seed,
                                                "patients": records}, indent=1))
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--patients", type=int, default=160)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    records = generate(args.out, args.patients, args.seed, args.workers)
    print(f"{len(records)} patients ({sum(r['ece'] for r in records)} ECE+) in {time.perf_counter() - t0:.0f} s "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
