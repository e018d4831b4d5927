"""Planning-system-like contours: closed polygons traced on each CT slice from the continuous shapes.

A treatment-planning system stores a contour as a polygon in patient millimetres on the slice plane, with
vertices at sub-voxel positions. We trace the zero level of a shape function on a fine in-plane grid
(0.25 mm, far finer than any CT pixel) with contourpy, then thin the vertices to about 0.7 mm apart.
"""
from __future__ import annotations

from typing import Callable

import contourpy
import numpy as np

FINE_MM = 0.25
VERTEX_SPACING_MM = 0.7


def trace_slice(level_fn: Callable[[np.ndarray], np.ndarray], z: float,
                bbox: tuple[float, float, float, float]) -> list[np.ndarray]:
    """Closed polygons (each (N, 3) LPS mm, not repeating the first vertex) where level_fn < 0 on plane z."""
    x0, x1, y0, y1 = bbox
    xs = np.arange(x0, x1 + FINE_MM, FINE_MM)
    ys = np.arange(y0, y1 + FINE_MM, FINE_MM)
    gx, gy = np.meshgrid(xs, ys)
    pts = np.stack([gx, gy, np.full_like(gx, z)], axis=-1)
    values = level_fn(pts)
    if not np.any(values < 0):
        return []
    # Pad with "outside" so every line closes inside the box.
    pad = np.pad(values, 1, constant_values=1.0)
    pxs = np.concatenate([[xs[0] - FINE_MM], xs, [xs[-1] + FINE_MM]])
    pys = np.concatenate([[ys[0] - FINE_MM], ys, [ys[-1] + FINE_MM]])
    gen = contourpy.contour_generator(pxs, pys, pad, line_type=contourpy.LineType.Separate)
    polygons = []
    for line in gen.lines(0.0):
        if len(line) < 4:
            continue
        if np.allclose(line[0], line[-1]):
            line = line[:-1]
        step = max(1, int(round(VERTEX_SPACING_MM / FINE_MM)))
        line = line[::step]
        if len(line) < 3:
            continue
        polygons.append(np.column_stack([line, np.full(len(line), z)]))
    return polygons


def ellipse_polygon(cx: float, cy: float, rx: float, ry: float, z: float, n: int = 72) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.column_stack([cx + rx * np.cos(t), cy + ry * np.sin(t), np.full(n, z)])
