"""RTSTRUCT contours in patient mm: nodes (sub-voxel, from their field), elliptic ROIs and the body outline.

Why apart: turning fields and masks into closed planar polygons per CT slice is one job (contourpy on a
grid), shared by the nodal, OAR and external ROIs that patient.make_patient assembles.
"""
from __future__ import annotations

import numpy as np
from contourpy import contour_generator
from scipy import ndimage

from .canvas import AIR, DEVICE, scalars
from .nodes import node_slices


def polygons(field_2d, gx, gy):
    """Closed polygons of field < 0 on a grid (contourpy), as (M, 2) arrays without the repeated last point."""
    lines = contour_generator(x=gx, y=gy, z=field_2d).lines(0.0)
    return [ln[:-1:2] if len(ln) > 16 else ln[:-1] for ln in lines if len(ln) >= 5]


def node_contours(nodes, z_slices, step=0.4):
    """Per-slice sub-voxel contours of disjoint nodes: the field is smooth, so a 0.4 mm local grid with
    linear interpolation places each vertex well inside a CT pixel."""
    out = []
    for node in nodes:
        for z, gx, gy, f in node_slices(node, z_slices, step):
            out += [np.column_stack([p, np.full(len(p), z)]) for p in polygons(f, gx, gy)] if (f < 0).any() else []
    return out


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
