"""The synthetic generator: deterministic, valid DICOM, sites that differ like real hospitals."""
from __future__ import annotations

import csv
import hashlib
import json

import numpy as np
import pydicom

from site_preprocess.synth import synthesize


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    synthesize(tmp_path / "a", sites=1, cases_per_site=2, unlabeled_per_site=1, seed=3, progress=False)
    # written by 2 worker processes: the same bytes as in one process
    synthesize(tmp_path / "b", sites=1, cases_per_site=2, unlabeled_per_site=1, seed=3, progress=False, workers=2)
    synthesize(tmp_path / "c", sites=1, cases_per_site=2, unlabeled_per_site=1, seed=4, progress=False)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") != _digest(tmp_path / "c")


def test_sites_differ_like_hospitals(synth_root):
    seen = {}
    for site in sorted(p for p in synth_root.iterdir() if p.is_dir()):
        patient = next(p for p in (site / "dicom").iterdir() if (p / "RTSTRUCT.dcm").exists())
        ds = pydicom.dcmread(next((patient / "CT").iterdir()))
        rs = pydicom.dcmread(patient / "RTSTRUCT.dcm")
        seen[site.name] = (tuple(float(v) for v in ds.PixelSpacing), float(ds.SliceThickness), ds.Rows, ds.Columns,
                           int(ds.PixelRepresentation), float(ds.RescaleIntercept), float(ds.RescaleSlope),
                           tuple(sorted(r.ROIName for r in rs.StructureSetROISequence)))
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and rs.Modality == "RTSTRUCT"
        assert str(ds.PatientName).startswith("ZZSYN")
        labels = list(csv.DictReader(open(site / "labels.csv")))
        assert {r["ece"] for r in labels} == {"0", "1"}
    assert len({v[:4] for v in seen.values()}) == 4  # grids
    assert len({v[4:7] for v in seen.values()}) >= 3  # storage conventions
    assert len({v[7] for v in seen.values()}) == 4  # ROI naming


def test_ece_positive_nodes_show_perinodal_stranding(synth_root, preprocessed):
    """Fat around ECE+ nodes is denser (stranding) than around ECE- nodes, on average over the cases."""
    import nibabel as nib
    from scipy import ndimage
    rims = {0: [], 1: []}
    for out in preprocessed.values():
        for item in json.loads((out / "datalist.json").read_text())["training"]:
            nodes = np.asarray(nib.load(out / item["nodes"]).dataobj).astype(bool)
            hu = np.asarray(nib.load(out / item["image"]).dataobj).astype(float)
            shell = ndimage.binary_dilation(nodes, iterations=3) & ~ndimage.binary_dilation(nodes, iterations=1)
            rims[item["ece"]].append(float(np.median(hu[shell])))
    assert rims[0] and rims[1]
    assert np.mean(rims[1]) > np.mean(rims[0]) + 10
