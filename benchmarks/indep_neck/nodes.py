"""Jugular-chain lymph nodes (levels II-IV) with extranodal extension (ECE), as implicit surfaces.

Why apart: the nodes are what the benchmark measures. Here they are drawn (make_nodes: size, level, side,
matting, necrosis, ECE grade and breach), their signed field is evaluated (surface, node_field,
shape_bounds), they are rendered into the Canvas with the ECE signs (render_node: breach facing the fat,
stranding, haze, muscle bridge) and their true volume is integrated (node_volume_ml).
"""
from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
from scipy import ndimage

from .canvas import FAT, GLAND, MUSCLE, NODE, SKIN, SUBQ, scalars

LEVELS = {"II": (95.0, 145.0), "III": (52.0, 95.0), "IV": (14.0, 52.0)}  # jugular chain, z above sternal notch


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


def node_slices(node, z_values, step):
    """(z, gx, gy, field) on a local axial grid of `step` mm around the node, for each z of z_values that the
    node can reach (None: every `step` mm): the sub-voxel contours and the true volume both read it."""
    lo, hi = node.lobes[0][0] - node.reach - 1, node.lobes[0][0] + node.reach + 1
    gx, gy = np.arange(lo[0], hi[0], step), np.arange(lo[1], hi[1], step)
    zs = np.arange(lo[2], hi[2], step) if z_values is None else z_values[(z_values > lo[2]) & (z_values < hi[2])]
    for z in zs:
        pts = np.stack(np.broadcast_arrays(gx[None, :], gy[:, None], z), -1).reshape(-1, 3)
        yield z, gx, gy, node_field(node, pts).reshape(len(gy), len(gx))


def node_volume_ml(node, step=0.5):
    count = sum(int((f < 0).sum()) for _, _, _, f in node_slices(node, None, step))
    return count * step ** 3 / 1000.0
