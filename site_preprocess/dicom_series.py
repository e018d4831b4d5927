"""Find the CT series in a patient folder, check its geometry, and load it as HU with an exact RAS affine.

Geometry rules (DICOM PS3.3 C.7.6.2): ImageOrientationPatient[0:3] is the direction of increasing column index,
[3:6] of increasing row index; PixelSpacing[0] is the spacing between rows, [1] between columns. Slices are
ordered by ImagePositionPatient projected on the slice normal, never by InstanceNumber or file name.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from .errors import CaseError

# Files with these suffixes that do not parse as DICOM are notes/exports beside the images, not damaged slices.
NON_DICOM_SUFFIXES = {".txt", ".csv", ".json", ".xml", ".png", ".jpg", ".jpeg", ".pdf", ".md", ".nii", ".gz"}
CT_STORAGE = {"1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1"}
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class FolderScan:
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = field(default_factory=lambda: defaultdict(list))
    rtstructs: list[tuple[Path, pydicom.Dataset]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    other_modalities: dict[str, int] = field(default_factory=lambda: defaultdict(int))


# Values larger than this (pixel data) are read from the file only when used: each file's header is parsed
# once, and the pixels of the selected series are decoded straight from it (no second full read per slice).
DEFER_SIZE = "64 KB"


def scan_folder(folder: Path) -> FolderScan:
    """Read every file's header below `folder` (pixels deferred); group image files by series."""
    scan = FolderScan()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
            continue
        try:
            ds = pydicom.dcmread(path, defer_size=DEFER_SIZE)
        except (InvalidDicomError, OSError, EOFError, ValueError, TypeError, AttributeError, KeyError) as exc:
            if path.suffix.lower() not in NON_DICOM_SUFFIXES:
                scan.unreadable.append((path, f"{type(exc).__name__}: {exc}"))
            continue
        if "SOPClassUID" not in ds or "Modality" not in ds:  # a header cut short parses without error
            scan.unreadable.append((path, "incomplete DICOM header (no SOPClassUID/Modality): truncated?"))
            continue
        modality = str(ds.get("Modality", "")).upper()
        if modality == "RTSTRUCT":
            scan.rtstructs.append((path, ds))
        elif "PixelData" in ds or "ImagePositionPatient" in ds or modality in ("CT", "MR", "PT"):
            scan.series[str(ds.get("SeriesInstanceUID", "?"))].append((path, ds))
        else:
            scan.other_modalities[modality or "unknown"] += 1
    return scan


@dataclass
class CtVolume:
    hu: np.ndarray  # (columns, rows, slices) float32: NIfTI voxel order i=column, j=row, k=slice
    affine_ras: np.ndarray  # 4x4 voxel index -> RAS mm
    slice_positions: np.ndarray  # (slices,) position along the normal of each slice (sorted ascending)
    ipp: np.ndarray  # (slices, 3) ImagePositionPatient of each sorted slice
    row_dir: np.ndarray  # IOP[0:3]: direction of increasing column index
    col_dir: np.ndarray  # IOP[3:6]: direction of increasing row index
    normal: np.ndarray
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    slice_spacing: float
    sop_uids: list[str]
    frame_of_reference: str
    series_uid: str
    patient_id: str
    warnings: list[str] = field(default_factory=list)

    @property
    def spacing_xyz(self) -> tuple[float, float, float]:
        return (self.pixel_spacing[1], self.pixel_spacing[0], self.slice_spacing)


def select_series(scan: FolderScan, referenced_series: str | None) -> tuple[str, list[tuple[Path, pydicom.Dataset]], list[str]]:
    """The RTSTRUCT's referenced series if given, else the only CT series. Returns (uid, files, warnings)."""
    warnings = []
    if not scan.series:
        if scan.other_modalities:
            kinds = ", ".join(sorted(scan.other_modalities))
            raise CaseError(f"no image series found (only {kinds} objects); export the planning CT series")
        raise CaseError("no image series found in the patient folder; export the planning CT series")
    ct_series = {uid: files for uid, files in scan.series.items()
                 if str(files[0][1].get("Modality", "")).upper() == "CT"}
    if referenced_series is not None:
        if referenced_series in scan.series:
            files = scan.series[referenced_series]
            if len(scan.series) > 1:
                warnings.append(f"{len(scan.series)} image series mixed in the folder; used the one the "
                                f"RTSTRUCT references")
            return referenced_series, files, warnings
        if not ct_series:
            _raise_non_ct(scan)
        raise CaseError("the CT series that the RTSTRUCT references is not in the folder "
                        f"({len(ct_series)} other CT series present); export the referenced planning CT")
    if not ct_series:
        _raise_non_ct(scan)
    if len(ct_series) > 1:
        raise CaseError(f"{len(ct_series)} CT series mixed in one folder and no RTSTRUCT to say which is the "
                        "planning CT; keep one series per patient folder")
    uid = next(iter(ct_series))
    return uid, ct_series[uid], warnings


def _raise_non_ct(scan: FolderScan) -> None:
    mods = sorted({str(f[0][1].get("Modality", "?")) for f in scan.series.values()})
    raise CaseError(f"the image series is not CT (Modality {', '.join(mods)}); only CT is supported")


def load_ct(files: list[tuple[Path, pydicom.Dataset]], position_tol: float) -> CtVolume:
    """Validate geometry and load HU; every defect raises a CaseError with an actionable reason."""
    first = files[0][1]
    if str(first.get("Modality", "")).upper() != "CT":
        raise CaseError(f"the selected series is {first.get('Modality', 'of unknown modality')}, not CT; "
                        "export the planning CT series")
    if int(first.get("NumberOfFrames", 1) or 1) > 1 or str(first.get("SOPClassUID", "")) not in CT_STORAGE:
        raise CaseError("the CT is a multi-frame/enhanced CT object; export it as classic single-frame CT "
                        "Image Storage (one file per slice)")
    if len(files) < 2:
        raise CaseError("the CT series has a single slice; a 3D planning CT is needed")
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns"):
        missing = [p for p, ds in files if key not in ds]
        if missing:
            raise CaseError(f"{len(missing)} CT slices lack {key}; the series cannot be placed in space",
                            detail="; ".join(str(p) for p in missing[:5]))
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 \
            or abs(row_dir @ col_dir) > 1e-3:
        raise CaseError("ImageOrientationPatient is not orthonormal; the scanner export is corrupt")
    normal = np.cross(row_dir, col_dir)
    shape0 = (int(first.Rows), int(first.Columns))
    spacing0 = tuple(float(v) for v in first.PixelSpacing)
    for path, ds in files:
        if (int(ds.Rows), int(ds.Columns)) != shape0 or \
                not np.allclose([float(v) for v in ds.PixelSpacing], spacing0, atol=1e-4) or \
                not np.allclose([float(v) for v in ds.ImageOrientationPatient], iop, atol=1e-4):
            raise CaseError("CT slices differ in size, pixel spacing or orientation (two series mixed under one "
                            "SeriesInstanceUID?); re-export the planning CT", detail=str(path))
    ipps = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in files])
    dist = ipps @ normal
    order = np.argsort(dist, kind="stable")
    dist, ipps = dist[order], ipps[order]
    files = [files[i] for i in order]
    gaps = np.diff(dist)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise CaseError(f"duplicate slice positions (two slices at {dist[k]:.2f} mm along the slice normal); "
                        "the folder holds a repeated or second acquisition — keep one copy of each slice",
                        detail="; ".join(str(files[i][0]) for i in (k, k + 1)))
    step = (dist[-1] - dist[0]) / (len(dist) - 1)
    deviation = np.abs(dist - (dist[0] + step * np.arange(len(dist))))
    median_gap = float(np.median(gaps))
    if deviation.max() > position_tol * step:
        k = int(np.argmax(gaps))
        if gaps[k] > 1.5 * median_gap:
            raise CaseError(f"a slice seems missing: gap of {gaps[k]:.2f} mm between slices {k} and {k + 1} "
                            f"where the spacing is {median_gap:.2f} mm; re-export the complete series")
        raise CaseError(f"uneven slice spacing ({gaps.min():.2f}–{gaps.max():.2f} mm; positions deviate up to "
                        f"{deviation.max():.2f} mm from a uniform grid, tolerance {position_tol * step:.2f} mm); "
                        "resample on the scanner/TPS or raise slice_position_tolerance in site.json")
    in_plane = (ipps - ipps[0]) - np.outer(dist - dist[0], normal)
    if np.abs(in_plane).max() > 0.5 * min(spacing0):
        raise CaseError("the slices are sheared (gantry tilt or a non-orthogonal stack): slice origins drift "
                        f"{np.abs(in_plane).max():.1f} mm in-plane; resample to an orthogonal grid before export")
    warnings = []
    if gaps.max() - gaps.min() > 1e-3:
        warnings.append(f"slice spacing jitters {gaps.min():.2f}–{gaps.max():.2f} mm (within tolerance)")
    hu = np.empty((shape0[1], shape0[0], len(files)), dtype=np.float32)
    for k, (path, ds) in enumerate(files):
        hu[:, :, k] = _read_slice_hu(path, ds).T
    dr, dc = spacing0
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * dc
    affine_lps[:3, 1] = col_dir * dr
    affine_lps[:3, 2] = normal * step
    affine_lps[:3, 3] = ipps[0]
    return CtVolume(hu=hu, affine_ras=LPS_TO_RAS @ affine_lps, slice_positions=dist, ipp=ipps, row_dir=row_dir,
                    col_dir=col_dir, normal=normal, pixel_spacing=(dr, dc), slice_spacing=float(step),
                    sop_uids=[str(ds.SOPInstanceUID) for _, ds in files],
                    frame_of_reference=str(first.get("FrameOfReferenceUID", "")),
                    series_uid=str(first.SeriesInstanceUID), patient_id=str(first.get("PatientID", "")),
                    warnings=warnings)


def _read_slice_hu(path: Path, ds: pydicom.Dataset) -> np.ndarray:
    """HU of one slice, decoded from its scanned dataset (deferred pixel data); the raw pixel bytes are
    dropped again so a long series is never held twice."""
    try:
        ts = ds.file_meta.get("TransferSyntaxUID")
        if ts is not None and ts.is_compressed:
            from pydicom.pixels import get_decoder
            if not get_decoder(ts).is_available:
                raise CaseError(f"CT slices use the compressed transfer syntax {ts.name} and no decoder for it "
                                "is installed; install the optional extra (pip install 'ecefl[dicom-compressed]': "
                                "pylibjpeg and python-gdcm) or export the series uncompressed", detail=str(path))
        pixels = ds.pixel_array
        del ds.PixelData  # also drops pydicom's cached array
    except CaseError:
        raise
    except Exception as exc:  # truncated or corrupt pixel data
        raise CaseError("a CT slice's pixel data cannot be decoded (truncated or corrupt file); re-export the "
                        "series", detail=f"{path}: {type(exc).__name__}: {exc}") from exc
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return pixels.astype(np.float32) * slope + intercept
