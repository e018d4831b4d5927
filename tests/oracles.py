"""Independent references for tests: they share no code with the product."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from matplotlib.path import Path as MplPath


def read_ct(folder: Path):
    """Slices sorted along the normal, with pixel HU and geometry, read straight with pydicom."""
    slices = [pydicom.dcmread(p) for p in Path(folder).rglob("*") if p.is_file()]
    slices = [s for s in slices if s.Modality == "CT"]
    iop = np.array(slices[0].ImageOrientationPatient, float)
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda s: float(np.dot(np.array(s.ImagePositionPatient, float), normal)))
    return slices, iop, normal


def centre_inside_masks(rtstruct: Path, ct_folder: Path, roi_names: list[str]) -> np.ndarray:
    """Union of ROIs, voxel centre inside the polygon (even-odd per slice), shape (cols, rows, slices)."""
    slices, iop, normal = read_ct(ct_folder)
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    dr, dc = (float(v) for v in slices[0].PixelSpacing)
    zs = np.array([np.dot(np.array(s.ImagePositionPatient, float), normal) for s in slices])
    jj, ii = np.mgrid[0:rows, 0:cols]
    rs = pydicom.dcmread(rtstruct)
    numbers = {int(r.ROINumber) for r in rs.StructureSetROISequence if r.ROIName in roi_names}
    out = np.zeros((len(slices), rows, cols), bool)
    for rc in rs.ROIContourSequence:
        if int(rc.ReferencedROINumber) not in numbers:
            continue
        per_slice = np.zeros_like(out)
        for c in rc.ContourSequence:
            pts = np.array(c.ContourData, float).reshape(-1, 3)
            k = int(np.argmin(np.abs(zs - pts[0] @ normal)))
            ipp = np.array(slices[k].ImagePositionPatient, float)
            # voxel centres in patient mm
            centres = ipp + ii[..., None] * dc * iop[:3] + jj[..., None] * dr * iop[3:]
            path2d = MplPath(np.column_stack([(pts - ipp) @ iop[:3], (pts - ipp) @ iop[3:]]))
            inside = path2d.contains_points(np.column_stack([((centres - ipp) @ iop[:3]).ravel(),
                                                             ((centres - ipp) @ iop[3:]).ravel()]))
            per_slice[k] ^= inside.reshape(rows, cols)
        out |= per_slice
    return out.transpose(2, 1, 0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else 2.0 * (a & b).sum() / s
