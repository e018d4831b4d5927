"""Painting a Neck onto a Canvas: body, fat, muscles, bones, glands, airway, vessels, devices, dental metal.

Why apart: this is the bulk of the normal-anatomy rendering, back to front (later layers win); the nodes and
the scanner model act on its result. metal_streaks adds the streak artefacts of the fillings placed here.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from .canvas import AIR, BONE, DEVICE, FAT, GLAND, LUNG, MUSCLE, OTHER, SKIN, SUBQ, VESSEL, interp, superellipse_depth


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
