"""Every user-caused defect becomes a per-case entry with an actionable reason; the good cases still go through."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pydicom
import pytest

from site_preprocess.config import SiteConfig
from site_preprocess.pipeline import run_preprocess
from site_preprocess.cli import main as preprocess_main


def _patients(site: Path) -> list[Path]:
    return sorted(p for p in (site / "dicom").iterdir() if (p / "RTSTRUCT.dcm").exists())


def _edit_rtstruct(folder: Path, fn) -> None:
    ds = pydicom.dcmread(folder / "RTSTRUCT.dcm")
    fn(ds)
    ds.save_as(folder / "RTSTRUCT.dcm")


def _nodal_numbers(ds) -> set[int]:
    from site_preprocess.roi_names import classify_roi
    return {int(r.ROINumber) for r in ds.StructureSetROISequence
            if classify_roi(r.ROIName, "GTV", SiteConfig()).nodal}


@pytest.fixture(scope="module")
def defect_site(synth_root, tmp_path_factory):
    """Copies of synthetic patients from every site profile, each but two carrying one real-world defect."""
    root = tmp_path_factory.mktemp("defects")
    dicom = root / "dicom"
    sites = ("hospital-a", "hospital-b", "hospital-c", "hospital-d")
    src = [p for site in sites for p in _patients(synth_root / site)]
    labels = {}
    for site in sites:
        for row in csv.DictReader(open(synth_root / site / "labels.csv")):
            labels[row["patient_id"]] = row["ece"]
    names = ["good1", "good2", "for_mismatch", "missing_slice", "non_ct", "no_nodal", "truncated",
             "not_in_labels"]
    extra = ["mixed_series", "open_planar", "empty_contours"]
    folders = {}
    for name, patient in zip(names, src):
        shutil.copytree(patient, dicom / name)
        folders[name] = dicom / name
    # the remaining defects reuse copies of hospital-a patients under fresh PatientIDs
    for name, patient in zip(extra, src[:3]):
        shutil.copytree(patient, dicom / name)
        folders[name] = dicom / name
        new_id = f"X-{name}"
        for f in (dicom / name).rglob("*"):
            if f.is_file():
                ds = pydicom.dcmread(f)
                ds.PatientID = new_id
                ds.save_as(f)
        labels[new_id] = "1"

    def pid(folder):
        return str(pydicom.dcmread(folder / "RTSTRUCT.dcm").PatientID)

    _edit_rtstruct(folders["for_mismatch"], lambda ds: [
        setattr(ds.ReferencedFrameOfReferenceSequence[0], "FrameOfReferenceUID", "1.2.3.4.5"),
        [setattr(r, "ReferencedFrameOfReferenceUID", "1.2.3.4.5") for r in ds.StructureSetROISequence]])
    ct_files = sorted((folders["missing_slice"] / "CT").iterdir(),
                      key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    ct_files[len(ct_files) // 2].unlink()
    for f in (folders["non_ct"] / "CT").iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        ds.save_as(f)
    _edit_rtstruct(folders["no_nodal"], lambda ds: [
        setattr(r, "ROIName", f"Organ{i}") for i, r in enumerate(ds.StructureSetROISequence)])
    victim = sorted((folders["truncated"] / "CT").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:200])
    del labels[pid(folders["not_in_labels"])]
    # a second CT series (another patient's) dropped into the folder: the RTSTRUCT's series must be picked
    other = _patients(synth_root / "hospital-a")[-1] / "CT"
    for f in other.iterdir():
        ds = pydicom.dcmread(f)
        ds.PatientID = "X-mixed_series"
        ds.save_as(folders["mixed_series"] / "CT" / ("other_" + f.name))

    def open_planar(ds):
        for rc in ds.ROIContourSequence:
            if int(rc.ReferencedROINumber) in _nodal_numbers(ds):
                for c in rc.ContourSequence:
                    c.ContourGeometricType = "OPEN_PLANAR"
    _edit_rtstruct(folders["open_planar"], open_planar)

    def empty(ds):
        for rc in ds.ROIContourSequence:
            if int(rc.ReferencedROINumber) in _nodal_numbers(ds):
                del rc.ContourSequence
    _edit_rtstruct(folders["empty_contours"], empty)

    with open(root / "labels.csv", "w", newline="") as fh:
        fh.write("patient_id,ece\n")
        for p, e in labels.items():
            fh.write(f"{p},{e}\n")
        fh.write("SOMEONE,maybe\n")  # unreadable row
        fh.write(",1\n")  # empty patient id
    out = root / "out"
    code = run_preprocess(dicom, root / "labels.csv", out, SiteConfig(), progress=False)
    qc = json.loads((out / "qc_report.json").read_text())
    ids = {row["patient_folder"]: row["case_id"] for row in csv.DictReader(open(out / "private" / "id_map.csv"))}
    by_folder = {folder: next(c for c in qc["cases"] if c["case_id"] == cid) for folder, cid in ids.items()}
    return {"code": code, "qc": qc, "cases": by_folder, "out": out, "root": root}


def test_exit_code_3_when_some_cases_failed(defect_site):
    assert defect_site["code"] == 3


@pytest.mark.parametrize("folder,status,words", [
    ("good1", "ok", ""),
    ("good2", "ok", ""),
    ("for_mismatch", "failed", "frame of reference"),
    ("missing_slice", "failed", "slice seems missing"),
    ("non_ct", "failed", "not CT"),
    ("no_nodal", "failed", "no nodal ROI"),
    ("truncated", "failed", "cannot be"),
    ("not_in_labels", "unlabeled", "not in labels.csv"),
    ("mixed_series", "ok", ""),
    ("open_planar", "failed", "OPEN_PLANAR"),
    ("empty_contours", "failed", "no contours"),
])
def test_each_defect_gets_its_entry(defect_site, folder, status, words):
    case = defect_site["cases"][folder]
    assert case["status"] == status, case
    assert words in case["reason"], case["reason"]


def test_mixed_series_is_resolved_by_the_rtstruct_reference(defect_site):
    case = defect_site["cases"]["mixed_series"]
    assert any("mixed" in w for w in case["warnings"])
    good = defect_site["cases"]["good1"]
    assert case["n_slices"] == good["n_slices"]
    # the series written is the patient's own (the RTSTRUCT's), not the other patient's dropped beside it: the
    # written image holds exactly the HU values of the patient's own slices (orientation-free comparison)
    import nibabel as nib
    import numpy as np
    folder = defect_site["root"] / "dicom" / "mixed_series" / "CT"
    own = [pydicom.dcmread(f) for f in sorted(folder.iterdir()) if not f.name.startswith("other_")]
    other = [pydicom.dcmread(f) for f in sorted(folder.iterdir()) if f.name.startswith("other_")]
    hu = lambda series: np.sort(np.concatenate(  # noqa: E731
        [(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).ravel() for ds in series]))
    datalist = json.loads((defect_site["out"] / "datalist.json").read_text())
    item = next(e for e in datalist["training"] + datalist["unlabeled"] if e["case_id"] == case["case_id"])
    written = np.sort(np.asarray(nib.load(defect_site["out"] / item["image"]).dataobj, dtype=np.float64).ravel())
    assert np.allclose(written, hu(own), atol=0.51) and not np.allclose(written, hu(other), atol=0.51)


def test_labelled_cases_with_bad_contours_keep_their_ct_for_pretraining(defect_site):
    datalist = json.loads((defect_site["out"] / "datalist.json").read_text())
    unlabeled = {e["case_id"] for e in datalist["unlabeled"]}
    for folder in ("for_mismatch", "no_nodal", "open_planar", "empty_contours", "not_in_labels"):
        assert defect_site["cases"][folder]["case_id"] in unlabeled
    for folder in ("missing_slice", "non_ct", "truncated"):
        assert defect_site["cases"][folder]["case_id"] not in unlabeled
    assert len(datalist["training"]) == 3


def test_unreadable_label_rows_are_reported_by_row_number(defect_site):
    rejected = defect_site["qc"]["summary"]["label_rows_rejected"]
    assert [r["reason"] for r in rejected] == ["ece is not 0/1 (or yes/no)", "empty patient_id"]
    lines = (defect_site["root"] / "labels.csv").read_text().splitlines()  # a spreadsheet's row numbers
    assert [r["row"] for r in rejected] == [lines.index("SOMEONE,maybe") + 1, lines.index(",1") + 1]
    assert "SOMEONE" not in (defect_site["out"] / "qc_report.json").read_text()


def test_strict_turns_partial_failure_into_exit_1(defect_site, tmp_path):
    root = defect_site["root"]
    code = preprocess_main(["--dicom", str(root / "dicom"), "--labels", str(root / "labels.csv"),
                            "--out", str(defect_site["out"]), "--strict", "--no-progress"])
    assert code == 1


def test_usage_errors_exit_2(tmp_path, capsys):
    assert preprocess_main(["--dicom", str(tmp_path / "nope"), "--labels", "x.csv", "--out", str(tmp_path / "o")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "d" / "p1").mkdir(parents=True)
    (tmp_path / "bad.csv").write_text("id;label\n1;1\n")
    assert preprocess_main(["--dicom", str(tmp_path / "d"), "--labels", str(tmp_path / "bad.csv"),
                            "--out", str(tmp_path / "o")]) == 2
    assert "patient_id and ece" in capsys.readouterr().err
    (tmp_path / "site.json").write_text('{"dilation_mm": 3}')
    assert preprocess_main(["--dicom", str(tmp_path / "d"), "--labels", str(tmp_path / "bad.csv"),
                            "--out", str(tmp_path / "o"), "--config", str(tmp_path / "site.json")]) == 2
    assert "unknown keys ['dilation_mm']" in capsys.readouterr().err
