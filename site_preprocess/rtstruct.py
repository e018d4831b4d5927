"""Nodal masks from an RT Structure Set, rasterised exactly on the CT grid.

A voxel belongs to an ROI when its centre lies inside the contour polygon of its slice (even-odd rule across the
contours of one slice, so holes stay holes). rt-utils 1.2.7 is not used for masks: it rounds vertices to pixels
and fills boundary pixels (+11–17 % volume), swaps row/column spacing on anisotropic pixels, and ignores the
frame of reference and contour z (see ../shared/RTSTRUCT-NOTES.md).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pydicom

from .config import SiteConfig
from .dicom_series import CtVolume
from .errors import CaseError
from .roi_names import classify_roi, normalise


@dataclass
class NodalRois:
    names: list[str]
    decisions: list[tuple[str, bool, str]]  # every ROI: (name, nodal?, why) — private log only
    contours: dict[str, list[tuple[str, np.ndarray]]]  # nodal name -> [(geometric type, (N,3) points)]
    warnings: list[str] = field(default_factory=list)


def referenced_series(rs: pydicom.Dataset) -> tuple[set[str], set[str]]:
    """(frame-of-reference UIDs, referenced CT series UIDs) declared by the structure set."""
    fors, series = set(), set()
    for ref_for in rs.get("ReferencedFrameOfReferenceSequence", []):
        fors.add(str(ref_for.get("FrameOfReferenceUID", "")))
        for study in ref_for.get("RTReferencedStudySequence", []):
            for ser in study.get("RTReferencedSeriesSequence", []):
                series.add(str(ser.get("SeriesInstanceUID", "")))
    for roi in rs.get("StructureSetROISequence", []):
        if "ReferencedFrameOfReferenceUID" in roi:
            fors.add(str(roi.ReferencedFrameOfReferenceUID))
    fors.discard("")
    series.discard("")
    return fors, series


def check_frame_of_reference(rs: pydicom.Dataset, ct: CtVolume) -> None:
    if ct.frame_of_reference not in referenced_series(rs)[0]:
        raise CaseError("the RTSTRUCT's frame of reference does not match the CT's (contours drawn on another "
                        "scan or registration); export the structure set of this planning CT")


def nodal_rois(rs: pydicom.Dataset, cfg: SiteConfig) -> NodalRois:
    names = {int(r.ROINumber): str(r.get("ROIName", "")) for r in rs.get("StructureSetROISequence", [])}
    types = {int(o.ReferencedROINumber): o.get("RTROIInterpretedType")
             for o in rs.get("RTROIObservationsSequence", []) if "ReferencedROINumber" in o}
    contours_by_number = {int(rc.ReferencedROINumber): rc for rc in rs.get("ROIContourSequence", [])
                          if "ReferencedROINumber" in rc}
    decisions, used, contours, warnings = [], [], defaultdict(list), []
    seen_norm = {}
    for number, name in names.items():
        decision = classify_roi(name, types.get(number), cfg)
        decisions.append((name, decision.nodal, decision.why))
        if not decision.nodal:
            continue
        if normalise(name) in seen_norm:
            warnings.append("two nodal ROIs share a name (case-insensitive); both were used")
        seen_norm[normalise(name)] = number
        rc = contours_by_number.get(number)
        items = list(rc.get("ContourSequence", [])) if rc is not None else []
        if not items:
            warnings.append("a nodal ROI has no contours (empty ContourSequence) and was skipped")
            continue
        for item in items:
            gtype = str(item.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            data = item.get("ContourData")
            if data is None or len(data) < 3 or len(data) % 3:
                raise CaseError("a nodal contour has malformed ContourData (not x,y,z triplets); re-export "
                                "the RTSTRUCT")
            pts = np.asarray([float(v) for v in data]).reshape(-1, 3)
            declared = item.get("NumberOfContourPoints")
            if declared is not None and int(declared) != len(pts):
                warnings.append("NumberOfContourPoints disagrees with the coordinates; the coordinates were used")
            contours[name].append((gtype, pts))
        used.append(name)
    if not used:
        bare = [n for n in names.values() if normalise(n) == "gtv"]
        hint = (" A bare 'GTV' is present but ambiguous (primary and nodes); if it holds the nodes only at this "
                "site, set allow_bare_gtv or list it in nodal_roi_names in site.json.") if bare else \
            " Add the site's nodal name to nodal_roi_names in site.json (see private/roi_mapping.csv)."
        empty = any(n for n, nodal, _ in decisions if nodal)
        what = "nodal ROIs have no contours" if empty else f"no nodal ROI among {len(names)} ROIs"
        raise CaseError(what + "." + hint, status="unlabeled")
    return NodalRois(names=used, decisions=decisions, contours=dict(contours), warnings=sorted(set(warnings)))


def rasterise(rois: NodalRois, ct: CtVolume, plane_tol: float) -> tuple[np.ndarray, list[str]]:
    """Union over nodal ROIs of centre-inside masks, (columns, rows, slices) uint8 like ct.hu."""
    n_cols, n_rows, n_slices = ct.hu.shape
    dr, dc = ct.pixel_spacing
    tol = plane_tol * ct.slice_spacing
    union = np.zeros(ct.hu.shape, dtype=bool)
    warnings = []
    for name, items in rois.contours.items():
        toggles = np.zeros((n_slices, n_rows, n_cols + 1), dtype=np.int32)
        for gtype, pts in items:
            if gtype != "CLOSED_PLANAR":
                raise CaseError(f"a nodal ROI has {gtype} contours; only closed planar contours describe a "
                                "volume — re-contour or re-export as CLOSED_PLANAR")
            if len(pts) < 3:
                warnings.append("a nodal contour with fewer than 3 points was skipped")
                continue
            d = pts @ ct.normal
            if np.ptp(d) > tol:
                raise CaseError("a nodal contour is not planar on one CT slice (its points span "
                                f"{np.ptp(d):.2f} mm across slices); the RTSTRUCT does not match this CT")
            k = int(np.argmin(np.abs(ct.slice_positions - d.mean())))
            if abs(ct.slice_positions[k] - d.mean()) > tol:
                outside = d.mean() < ct.slice_positions[0] - tol or d.mean() > ct.slice_positions[-1] + tol
                where = "outside the CT's extent" if outside else "between CT slices"
                raise CaseError(f"a nodal contour lies {where} ({abs(ct.slice_positions[k] - d.mean()):.2f} mm "
                                "from the nearest slice); the RTSTRUCT was drawn on another CT or the series "
                                "is incomplete")
            rel = pts - ct.ipp[k]
            u = rel @ ct.row_dir / dc  # continuous column index
            v = rel @ ct.col_dir / dr  # continuous row index
            _add_crossings(toggles[k], u, v, n_rows, n_cols)
        inside = (np.cumsum(toggles, axis=2)[:, :, :n_cols] % 2).astype(bool)  # (slices, rows, cols)
        union |= inside.transpose(2, 1, 0)
    return union.astype(np.uint8), warnings


def _add_crossings(toggle: np.ndarray, u: np.ndarray, v: np.ndarray, n_rows: int, n_cols: int) -> None:
    """Scanline even-odd fill: for each row centre j, toggle at the first column centre right of a crossing."""
    u2, v2 = np.roll(u, -1), np.roll(v, -1)
    vmin, vmax = np.minimum(v, v2), np.maximum(v, v2)
    # Half-open rule: an edge covers row centres j with vmin <= j < vmax (horizontal edges cover none).
    lo = np.clip(np.ceil(vmin), 0, n_rows).astype(int)
    hi = np.clip(np.ceil(vmax), 0, n_rows).astype(int)
    counts = np.maximum(hi - lo, 0)
    if counts.sum() == 0:
        return
    edge = np.repeat(np.arange(len(u)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = lo[edge] + offsets
    t = (rows - v[edge]) / (v2[edge] - v[edge])
    x = u[edge] + t * (u2[edge] - u[edge])
    cols = np.clip(np.ceil(x), 0, n_cols).astype(int)
    np.add.at(toggle, (rows, cols), 1)
