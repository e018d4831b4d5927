"""The independent test hospital (benchmarks/independent_hospital.py) through the real site preprocessing.

Four generated patients (2 ECE+, 2 ECE-) must all preprocess, give node masks of the generator's node volume,
show denser perinodal fat around ECE+ nodes, be stacked by position whatever the file order, and leave no
patient identifier in the shared outputs.
"""
from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from scipy import ndimage

from conftest import REPO
from site_preprocess.config import SiteConfig
from site_preprocess.pipeline import run_preprocess

sys.path.insert(0, str(REPO / "benchmarks"))
import independent_hospital  # noqa: E402

SEED = 7


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    root = tmp_path_factory.mktemp("independent")
    independent_hospital.generate(root / "hospital", patients=4, seed=SEED)
    out = root / "site"
    code = run_preprocess(root / "hospital" / "dicom", root / "hospital" / "labels.csv", out, SiteConfig(),
                          progress=False)
    truth = {p["patient_id"]: p for p in json.loads((root / "hospital" / "truth.json").read_text())["patients"]}
    with open(out / "private" / "id_map.csv", newline="") as fh:
        ids = {row["case_id"]: row for row in csv.DictReader(fh)}
    return root / "hospital", out, code, truth, ids


def test_every_patient_is_preprocessed_with_its_label(hospital):
    src, out, code, truth, ids = hospital
    assert code == 0
    datalist = json.loads((out / "datalist.json").read_text())
    assert len(datalist["training"]) == 4 and not datalist["unlabeled"]
    assert sorted(int(t["ece"]) for t in truth.values()) == [0, 0, 1, 1]
    for item in datalist["training"]:
        assert item["ece"] == truth[ids[item["case_id"]]["patient_id"]]["ece"]


def test_node_masks_match_the_generator_volume(hospital):
    src, out, code, truth, ids = hospital
    for item in json.loads((out / "datalist.json").read_text())["training"]:
        nodes = nib.load(out / item["nodes"])
        ml = float(np.asarray(nodes.dataobj).sum()) * float(np.prod(nodes.header.get_zooms())) / 1000
        expected = sum(truth[ids[item["case_id"]]["patient_id"]]["node_volumes_ml"])
        assert ml == pytest.approx(expected, rel=0.10)


def perinodal_fat_hu(image, nodes) -> float:
    """Mean HU of the fat-window voxels (-200..20 HU) 2-6 mm outside the node mask: perinodal fat density."""
    hu = np.asarray(image.dataobj, np.float32)
    dist = ndimage.distance_transform_edt(~np.asarray(nodes.dataobj).astype(bool), sampling=image.header.get_zooms())
    shell = (dist > 2) & (dist <= 6) & (hu > -200) & (hu < 20)
    return float(hu[shell].mean())


def test_ece_positive_nodes_have_denser_perinodal_fat(hospital):
    src, out, code, truth, ids = hospital
    shell = {None: [], "subtle": [], "overt": []}
    for item in json.loads((out / "datalist.json").read_text())["training"]:
        grade = truth[ids[item["case_id"]]["patient_id"]]["grade"]
        shell[grade].append(perinodal_fat_hu(nib.load(out / item["image"]), nib.load(out / item["nodes"])))
    print("perinodal fat HU", shell)
    assert max(shell[None]) < -70  # intact fat planes around ECE- nodes
    assert min(shell["overt"]) > max(shell[None]) + 15  # stranding, haze, ill-defined margin
    assert np.mean(shell["overt"] + shell["subtle"]) > np.mean(shell[None]) + 10


def test_slices_are_stacked_by_position_whatever_the_file_order(hospital):
    src, out, code, truth, ids = hospital
    shuffled = 0
    for item in json.loads((out / "datalist.json").read_text())["training"]:
        folder = src / "dicom" / ids[item["case_id"]]["patient_folder"]
        slices = [pydicom.dcmread(p) for p in sorted(folder.rglob("*")) if p.is_file()]
        slices = [s for s in slices if s.Modality == "CT"]
        z_in_file_order = [float(s.ImagePositionPatient[2]) for s in slices]
        shuffled += z_in_file_order != sorted(z_in_file_order) and z_in_file_order != sorted(z_in_file_order)[::-1]
        image = nib.load(out / item["image"])
        data = np.asarray(image.dataobj)
        assert data.shape[2] == len(slices)
        for k, s in enumerate(sorted(slices, key=lambda s: float(s.ImagePositionPatient[2]))):
            hu = s.pixel_array.astype(np.float32) * float(s.RescaleSlope) + float(s.RescaleIntercept)
            assert np.array_equal(data[:, :, k], hu.T)
            assert image.affine[2, 3] + k * image.affine[2, 2] == pytest.approx(float(s.ImagePositionPatient[2]))
    assert shuffled == 4  # the generator never writes files in position order


def test_no_generator_identifier_reaches_the_shared_outputs(hospital):
    src, out, code, truth, ids = hospital
    shared = [(out / name).read_text() for name in ("datalist.json", "qc_report.json")]
    for row in ids.values():
        ds = next(pydicom.dcmread(p, stop_before_pixels=True) for p in (src / "dicom" / row["patient_folder"]).rglob("*")
                  if p.is_file())
        for value in (str(ds.PatientName), str(ds.PatientID), row["patient_folder"], str(ds.StudyInstanceUID)):
            assert all(value not in text for text in shared), value
