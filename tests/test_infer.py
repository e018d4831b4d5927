"""`ecefl infer` on a synthetic patient: RTSTRUCT that rt-utils reads back, referencing the input series."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from ecefl.checkpoint import save_checkpoint
from ecefl.cli import main as ecefl_main
from ecefl.model import DualOutputSwinUNETR
from ecefl.plan import get_plan
from oracles import centre_inside_masks, dice


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    torch.manual_seed(3)
    plan = get_plan("test-tiny")
    path = tmp_path_factory.mktemp("model") / "model.pt"
    model = DualOutputSwinUNETR(plan)
    with torch.no_grad():  # no foreground prior: the untrained net then predicts scattered voxels to round-trip
        model.net.out.conv.conv.bias.zero_()
    save_checkpoint(path, "dual", plan, model.state_dict(), threshold=0.4)
    return path


def _labelled(synth_root, site):
    return next(p for p in sorted((synth_root / site / "dicom").iterdir()) if (p / "RTSTRUCT.dcm").exists())


@pytest.fixture(scope="module")
def patient(synth_root):
    return _labelled(synth_root, "hospital-a")  # square images: rt-utils' reader mis-shapes non-square masks


def test_infer_writes_result_mask_rtstruct_and_evidence(model_file, patient, tmp_path):
    from rt_utils import RTStructBuilder
    out = tmp_path / "out"
    assert ecefl_main(["infer", "--model", str(model_file), "--dicom", str(patient), "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert {"ece_probability", "ece_positive", "threshold", "model", "nodes_volume_ml"} <= set(result)
    assert 0 <= result["ece_probability"] <= 1 and result["threshold"] == 0.4
    assert result["ece_positive"] == (result["ece_probability"] >= 0.4)
    mask_img = nib.load(out / "nodes_pred.nii.gz")
    ct = [pydicom.dcmread(p) for p in (patient / "CT").iterdir()]
    assert mask_img.shape == (ct[0].Columns, ct[0].Rows, len(ct))  # native CT grid
    mask = np.asarray(mask_img.dataobj).astype(bool)
    assert mask.any(), "an untrained model still predicts some voxels; the round trip needs a non-empty ROI"
    rs = pydicom.dcmread(out / "RTSTRUCT_pred.dcm")
    series_uid = ct[0].SeriesInstanceUID
    ref = rs.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    assert ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    loaded = RTStructBuilder.create_from(dicom_series_path=str(patient / "CT"), rt_struct_path=str(out / "RTSTRUCT_pred.dcm"))
    assert "ECEFL_nodes_pred" in loaded.get_roi_names()
    back = loaded.get_roi_mask_by_name("ECEFL_nodes_pred").transpose(1, 0, 2)
    assert dice(back, mask) >= 0.95  # rt-utils' own contour round trip
    assert (out / "evidence.png").stat().st_size > 5000


@pytest.mark.parametrize("site", ["hospital-a", "hospital-d"])  # hospital-d: 144x128, pixels 1.3 x 1.5 mm
def test_written_rtstruct_geometry_checked_without_rt_utils(synth_root, preprocessed, site, tmp_path):
    """A compact nodal mask written as RTSTRUCT, rasterised back centre-inside by an independent oracle.
    rt-utils traces boundary-voxel centres, so the planning-system view is about half a voxel smaller."""
    import csv
    from ecefl.infer import _write_rtstruct
    rows = {r["case_id"]: r for r in csv.DictReader(open(preprocessed[site] / "private" / "id_map.csv"))}
    item = json.loads((preprocessed[site] / "datalist.json").read_text())["training"][0]
    mask = np.asarray(nib.load(preprocessed[site] / item["nodes"]).dataobj).astype(bool)
    ct_dir = synth_root / site / "dicom" / rows[item["case_id"]]["patient_folder"] / "CT"
    _write_rtstruct(sorted(ct_dir.iterdir()), mask, tmp_path / "rs.dcm")
    back = centre_inside_masks(tmp_path / "rs.dcm", ct_dir, ["ECEFL_nodes_pred"])
    assert back.shape == mask.shape
    assert dice(back, mask) >= 0.8
    assert back.sum() <= mask.sum()


def test_infer_with_the_patients_own_contours(model_file, patient, tmp_path):
    out = tmp_path / "out"
    assert ecefl_main(["infer", "--model", str(model_file), "--dicom", str(patient), "--out", str(out),
                       "--use-rtstruct"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["region"] == "rtstruct" and 0 < result["region_volume_ml"] < 100


def test_infer_errors_are_clear(model_file, patient, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not dicom")
    assert ecefl_main(["infer", "--model", str(model_file), "--dicom", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no image series" in capsys.readouterr().err
    old = torch.load(model_file, weights_only=True)
    old["version"] = 99
    torch.save(old, tmp_path / "old.pt")
    assert ecefl_main(["infer", "--model", str(tmp_path / "old.pt"), "--dicom", str(patient), "--out",
                       str(tmp_path / "o")]) == 2
    assert "another ecefl version" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(patient / "CT", broken)
    for f in list(broken.iterdir())[:3]:
        f.write_bytes(b"garbage")
    assert ecefl_main(["infer", "--model", str(model_file), "--dicom", str(broken), "--out", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err


def test_monai_bundle_runs_without_ecefl_and_matches_infer(model_file, patient, preprocessed, tmp_path):
    """The exported bundle, run by MONAI's bundle runner in a fresh process, segments like `ecefl infer`."""
    import csv
    import subprocess
    import sys
    bundle = tmp_path / "bundle"
    assert ecefl_main(["export-bundle", "--model", str(model_file), "--out", str(bundle)]) == 0
    for rel in ("configs/metadata.json", "configs/inference.json", "models/model.pt", "docs/README.md"):
        assert (bundle / rel).is_file(), rel
    from monai.bundle import ConfigParser
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    assert parser["network_def"]["_target_"] == "SwinUNETR"  # MONAI's own network, no ecefl import
    ids = {r["patient_folder"]: r["case_id"] for r in csv.DictReader(open(preprocessed["hospital-a"] / "private" / "id_map.csv"))}
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(preprocessed["hospital-a"] / "images" / f"{ids[patient.name]}.nii.gz", data / "ct.nii.gz")
    subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                    str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
                    "--dataset_dir", str(data), "--output_dir", str(tmp_path / "pred")],
                   check=True, timeout=300, capture_output=True)
    bundle_mask = np.asarray(nib.load(tmp_path / "pred" / "ct_nodes.nii.gz").dataobj).squeeze().astype(bool)
    assert ecefl_main(["infer", "--model", str(model_file), "--dicom", str(patient), "--out", str(tmp_path / "inf")]) == 0
    infer_mask = np.asarray(nib.load(tmp_path / "inf" / "nodes_pred.nii.gz").dataobj).astype(bool)
    assert bundle_mask.shape == infer_mask.shape
    assert dice(bundle_mask, infer_mask) >= 0.98
