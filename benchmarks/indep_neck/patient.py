"""One whole patient from (seed, index): scanner, anatomy, nodes, optional primary, image, ROIs and truth.

Why apart: make_patient fixes the order of every random draw for a patient (so the output depends only on
the seed), and names the ROIs the way clinics vary them (nodal names, OAR spellings); writing DICOM stays
in benchmarks/independent_hospital.py.
"""
from __future__ import annotations

import numpy as np

from .anatomy import metal_streaks, paint_anatomy
from .canvas import OTHER, Canvas
from .contours import body_contours, ellipse_contours, node_contours
from .neck import Neck
from .nodes import make_nodes, node_volume_ml, render_node
from .scanner import draw_scanner, reconstruct

NODAL_SINGLE = ["GTVn", "GTV_LN", "GTVnode", "GTVnodes", "GTV-N", "GTV N", "gtvn"]
NODAL_EACH = ["GTVn{i}", "GTV-N{i}", "GTV_LN{i}", "GTVn_{s}{i}", "LN_gtv{i}", "GTVnode{i}", "GTV_N{i}"]
OAR_NAMES = {"cord": ["SpinalCord", "Spinal_Cord", "Cord", "SPINAL CORD"], "larynx": ["Larynx", "LARYNX"],
             "parotid": [("Parotid_L", "Parotid_R"), ("L Parotid", "R Parotid"), ("Parotid_Lt", "Parotid_Rt")],
             "submand": [("Glnd_Submand_L", "Glnd_Submand_R"), ("Submandibular_L", "Submandibular_R")],
             "body": ["BODY", "External", "Skin", "Outer Contour"],
             "elective": ["CTVn_L", "CTV_Neck_L", "LN_Neck_II-IV_L", "CTV_LN_L"]}


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
