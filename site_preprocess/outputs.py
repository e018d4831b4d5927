"""Atomic writers: a crash never leaves a half-written file under a final name."""
from __future__ import annotations

import csv
import json
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np


def _tmp_beside(path: Path, suffix: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path, ".json")
    tmp.write_text(json.dumps(obj, indent=1, allow_nan=False))
    os.replace(tmp, path)


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_beside(path, ".csv")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(tmp, path)


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    """qform and sform both set (code 1, scanner); descrip/aux_file left empty so no free text leaks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if data.dtype == np.float32 and np.all(np.mod(data, 1) == 0) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)  # integral HU: exact and half the size
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b""
    img.header["aux_file"] = b""
    img.header.set_xyzt_units("mm", "sec")
    tmp = _tmp_beside(path, ".nii.gz")
    nib.save(img, tmp)
    os.replace(tmp, path)
