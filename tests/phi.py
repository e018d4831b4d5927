"""Collect the identifying strings in a DICOM tree and scan artifacts for them (PS3.15 Annex E spirit)."""
from __future__ import annotations

import gzip
from pathlib import Path

import pydicom

PHI_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyID",
                "ReferringPhysicianName", "InstitutionName", "StationName", "OperatorsName",
                "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID",
                "StructureSetName")


def phi_strings(dicom_root: Path) -> set[str]:
    found = set()
    for path in Path(dicom_root).rglob("*"):
        if not path.is_file():
            continue
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for kw in PHI_KEYWORDS:
            value = str(ds.get(kw, "") or "")
            if len(value) >= 5:
                found.add(value)
        if "PatientName" in ds:
            found.update(part for part in str(ds.PatientName).split("^") if len(part) >= 6)
        found.add(path.parent.name) if path.parent.name not in ("CT", "dicom") and len(path.parent.name) >= 6 else None
    return found


def _contents(path: Path) -> bytes:
    """A file's bytes as a reader would see them: .gz decompressed, zip archives (torch .pt files) member by
    member (a compressed member would otherwise hide a string)."""
    import zipfile
    data = path.read_bytes()
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            return data + b"".join(z.read(name) for name in z.namelist())
    return data


def leaks(root: Path, secrets: set[str], skip_dir: str = "private", scanned: list | None = None) -> list[tuple[str, str]]:
    """(file, secret) pairs: every file under root, except under `skip_dir`, gz and zip members decompressed.
    scanned: if given, receives every file path that was read."""
    hits = []
    needles = [(s, s.encode()) for s in secrets]
    for path in Path(root).rglob("*"):
        if not path.is_file() or skip_dir in path.relative_to(root).parts:
            continue
        data = _contents(path)
        if scanned is not None:
            scanned.append(path)
        for text, raw in needles:
            if raw in data:
                hits.append((str(path), text))
    return hits
