"""Tissue codes, small geometry helpers and the Canvas: the HU volume with a tissue code per voxel.

Why apart: every other module paints on or reads the Canvas and its tissue codes (layers are confined by
tissue: muscle only into fat, stranding only in fat...), so these shared basics live in one small module
that imports nothing else from the package.
"""
from __future__ import annotations

import numpy as np

AIR, FAT, SUBQ, SKIN, MUSCLE, BONE, VESSEL, GLAND, LUNG, NODE, OTHER, DEVICE = range(12)  # tissue codes


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
