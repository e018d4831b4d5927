"""Real DICOM that nobody on this project wrote (../shared/realdata): geometry, HU, naming, defects."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest

from conftest import REALDATA
from site_preprocess.config import SiteConfig
from site_preprocess.dicom_series import load_ct, scan_folder, select_series
from site_preprocess.errors import CaseError
from site_preprocess.pipeline import run_preprocess
from site_preprocess.rtstruct import nodal_rois
from site_preprocess.roi_names import classify_roi


def test_hnscc_real_ct_jitter_slope16_and_no_nodal_roi(tmp_path):
    root = tmp_path / "dicom"
    for pid in ("HNSCC-01-0001", "HNSCC-01-0002"):
        shutil.copytree(REALDATA / "radiotherapyai_hnscc" / pid, root / pid)
    (tmp_path / "labels.csv").write_text("patient_id,ece\n")
    code = run_preprocess(root, tmp_path / "labels.csv", tmp_path / "out", SiteConfig(), progress=False)
    qc = json.loads((tmp_path / "out" / "qc_report.json").read_text())
    assert code == 0
    assert [c["status"] for c in qc["cases"]] == ["unlabeled", "unlabeled"]
    assert all("no nodal ROI among 4 ROIs" in c["reason"] for c in qc["cases"])
    jitter = qc["cases"][0]
    assert jitter["n_slices"] == 117 and any("jitters" in w for w in jitter["warnings"])
    # HU = stored * 16 - 1024, checked on one real slice
    scan = scan_folder(root / "HNSCC-01-0002")
    _, files, _ = select_series(scan, None)
    ct = load_ct(files, 0.1)
    top = max(files, key=lambda f: float(f[1].ImagePositionPatient[2]))[0]
    ds = pydicom.dcmread(top)
    assert np.allclose(ct.hu[:, :, -1], ds.pixel_array.T.astype(float) * 16 - 1024)
    img = nib.load(tmp_path / "out" / "images" / f"{qc['cases'][1]['case_id']}.nii.gz")
    assert np.allclose(np.abs(np.diag(img.affine))[:3], [7.8125, 7.8125, 3.0], atol=1e-4)


def test_hnscc_contour_point_count_mismatch_is_tolerated_with_a_warning():
    cfg = SiteConfig(nodal_roi_names=["Cord"])  # pretend the cord were nodal, to parse real contours
    rs = pydicom.dcmread(next((REALDATA / "radiotherapyai_hnscc" / "HNSCC-01-0001").rglob("1-1.dcm")))
    rois = nodal_rois(rs, cfg)
    assert rois.names == ["Cord"] and any("NumberOfContourPoints" in w for w in rois.warnings)


def test_oblique_anisotropic_real_slices_geometry():
    """rt-utils' oriented data: oblique, 50x100, PixelSpacing [3.5, 2.5] (rows, columns)."""
    scan = scan_folder(REALDATA / "rtutils_oriented_data")
    _, files, _ = select_series(scan, None)
    ct = load_ct(files, 0.1)
    assert ct.hu.shape == (100, 50, 3)  # (columns, rows, slices)
    ds = min((f[1] for f in files), key=lambda d: float(np.dot(np.array(d.ImagePositionPatient, float), ct.normal)))
    iop = np.array(ds.ImageOrientationPatient, float)
    r, c = 40, 90
    lps = np.array(ds.ImagePositionPatient, float) + c * 2.5 * iop[:3] + r * 3.5 * iop[3:]
    ras = np.append(lps * [-1, -1, 1], 1)
    assert np.allclose((np.linalg.inv(ct.affine_ras) @ ras)[:3], [c, r, 0], atol=1e-4)


@pytest.mark.parametrize("rt_name,words", [
    ("rt.dcm", "frame of reference does not match"),  # its FoR UID differs from the CT's
    ("invalid_reference_rt.dcm", "drawn on another CT"),  # same FoR, contours on slices not in the series
])
def test_rtutils_mock_reference_defects_are_reported(tmp_path, rt_name, words):
    src = REALDATA / "rtutils_mock_data"
    folder = tmp_path / "dicom" / "p1"
    folder.mkdir(parents=True)
    for name in ("ct_1.dcm", "ct_2.dcm", rt_name):
        shutil.copy(src / name, folder / name)
    pid = str(pydicom.dcmread(src / "ct_1.dcm").PatientID)
    (tmp_path / "labels.csv").write_text(f"patient_id,ece\n{pid},1\n")
    cfg = SiteConfig(nodal_roi_names=["ROI-1", "ROI-2", "ROI-3", "ROI-4"])
    code = run_preprocess(tmp_path / "dicom", tmp_path / "labels.csv", tmp_path / "out", cfg, progress=False)
    case = json.loads((tmp_path / "out" / "qc_report.json").read_text())["cases"][0]
    assert code == 3 and case["status"] == "failed"
    assert words in case["reason"], case["reason"]


def test_dicompyler_structure_set_with_an_empty_roi_parses():
    rs = pydicom.dcmread(REALDATA / "dicompyler_core_example" / "rtss.dcm")
    names = [r.ROIName for r in rs.StructureSetROISequence]
    with pytest.raises(CaseError) as err:
        nodal_rois(rs, SiteConfig())
    assert f"no nodal ROI among {len(names)} ROIs" in err.value.reason


@pytest.mark.parametrize("name,itype,nodal", [
    ("GTVn", "GTV", True), ("GTVn1", None, True), ("GTVn_L", "GTV", True), ("GTV-N3", "GTV", True),
    ("GTV_N2", "", True), ("GTVnode_1", "GTV", True), ("GTVnodes", "GTV", True), ("GTV_LN", "GTV", True),
    ("GTV_LN_R_II", "GTV", True), ("LN_gtv1", "GTV", True), ("gtv ln l iii", "GTV", True),
    ("GTV", "GTV", False), ("GTVp", "GTV", False), ("GTV_primary", "GTV", False), ("CTVn", "CTV", False),
    ("CTV_N_60", "CTV", False), ("PTV_70", "PTV", False), ("GTVn_PRV", "GTV", False), ("GTVn+3mm", "GTV", False),
    ("zGTVn_opt", "CONTROL", False), ("LN_Neck_II_L", "CTV", False), ("GTVn", "PTV", False),
    ("SpinalCord_PRV", "AVOIDANCE", False), ("BODY", "EXTERNAL", False), ("Parotid_L", "ORGAN", False),
])
def test_nodal_roi_synonyms(name, itype, nodal):
    assert classify_roi(name, itype, SiteConfig()).nodal is nodal


def test_site_list_and_bare_gtv_switch():
    assert classify_roi("JD nodes 2024", "GTV", SiteConfig(nodal_roi_names=["JD nodes 2024"])).nodal
    assert classify_roi("GTV", "GTV", SiteConfig(allow_bare_gtv=True)).nodal
