"""Site preprocessing on synthetic hospitals: exact masks, geometry, HU, dilation, QC, pseudonyms."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from oracles import centre_inside_masks, dice, read_ct
from site_preprocess.config import SiteConfig
from site_preprocess.pipeline import run_preprocess


def id_map(out: Path) -> dict[str, dict]:
    with open(out / "private" / "id_map.csv", newline="") as fh:
        return {row["case_id"]: row for row in csv.DictReader(fh)}


def test_every_site_gives_ok_cases_and_a_datalist(preprocessed, synth_root):
    for site, out in preprocessed.items():
        datalist = json.loads((out / "datalist.json").read_text())
        qc = json.loads((out / "qc_report.json").read_text())
        labels = list(csv.DictReader(open(synth_root / site / "labels.csv")))
        assert len(datalist["training"]) == len(labels) == 3
        assert len(datalist["unlabeled"]) == 1
        assert qc["summary"]["ok"] == 3 and qc["summary"]["failed"] == 0
        by_pid = {r["patient_id"]: int(r["ece"]) for r in labels}
        ids = id_map(out)
        for item in datalist["training"]:
            assert item["ece"] == by_pid[ids[item["case_id"]]["patient_id"]]
            for key in ("image", "label", "nodes"):
                assert (out / item[key]).is_file() and not Path(item[key]).is_absolute()


def test_masks_match_independent_centre_inside_rasteriser(preprocessed, synth_root):
    """Every labelled case, every site profile (anisotropic, non-square, flipped order): Dice>=0.98, vol ±3 %."""
    checked = 0
    for site, out in preprocessed.items():
        manifest = json.loads((synth_root / site / "synth_manifest.json").read_text())
        nodal = {p["patient_id"]: p["nodal_rois"] for p in manifest["patients"] if p["labelled"]}
        for cid, row in id_map(out).items():
            if row["patient_id"] not in nodal:
                continue
            folder = synth_root / site / "dicom" / row["patient_folder"]
            truth = centre_inside_masks(folder / "RTSTRUCT.dcm", folder / "CT", nodal[row["patient_id"]])
            ours = np.asarray(nib.load(out / "nodes" / f"{cid}.nii.gz").dataobj)
            assert ours.shape == truth.shape
            assert dice(ours, truth) >= 0.98, (site, cid)
            assert abs(int(ours.sum()) - int(truth.sum())) <= 0.03 * truth.sum()
            checked += 1
    assert checked == 12


def test_affine_places_a_known_dicom_point_and_keeps_hu(preprocessed, synth_root):
    for site, out in preprocessed.items():
        cid, row = next(iter(id_map(out).items()))
        slices, iop, _ = read_ct(synth_root / site / "dicom" / row["patient_folder"] / "CT")
        img = nib.load(out / "images" / f"{cid}.nii.gz")
        data = np.asarray(img.dataobj)
        rng = np.random.default_rng(0)
        for _ in range(5):
            k = int(rng.integers(len(slices)))
            r, c = int(rng.integers(slices[k].Rows)), int(rng.integers(slices[k].Columns))
            dr, dc = (float(v) for v in slices[k].PixelSpacing)
            lps = np.array(slices[k].ImagePositionPatient, float) + c * dc * iop[:3] + r * dr * iop[3:]
            ras = lps * [-1, -1, 1]
            ijk = np.linalg.inv(img.affine) @ np.append(ras, 1)
            assert np.allclose(ijk[:3], [c, r, k], atol=1e-3), (site, ijk, (c, r, k))
            expected = slices[k].pixel_array[r, c] * float(slices[k].RescaleSlope) + float(slices[k].RescaleIntercept)
            assert data[c, r, k] == pytest.approx(expected)
        assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1


def test_plastimatch_agrees_with_our_masks(preprocessed, synth_root, tmp_path):
    """An independent converter (plastimatch from PyPI) as oracle, compared in world coordinates."""
    site = "hospital-d"  # anisotropic pixels, non-square, unsigned storage with slope 2
    out = preprocessed[site]
    manifest = json.loads((synth_root / site / "synth_manifest.json").read_text())
    nodal = {p["patient_id"]: p["nodal_rois"] for p in manifest["patients"] if p["labelled"]}
    cid, row = next((c, r) for c, r in id_map(out).items() if r["patient_id"] in nodal)
    folder = synth_root / site / "dicom" / row["patient_folder"]
    exe = shutil.which("plastimatch") or str(Path(sys.executable).parent / "plastimatch")
    subprocess.run([exe, "convert", "--input", str(folder / "RTSTRUCT.dcm"), "--referenced-ct", str(folder / "CT"),
                    "--output-prefix", str(tmp_path / "pm"), "--prefix-format", "nii.gz", "--xor-contours"],
                   check=True, timeout=120, capture_output=True)
    ours = nib.as_closest_canonical(nib.load(out / "nodes" / f"{cid}.nii.gz"))
    union = None
    for name in nodal[row["patient_id"]]:
        pm = nib.as_closest_canonical(nib.load(tmp_path / "pm" / f"{name}.nii.gz"))
        assert np.allclose(pm.affine, ours.affine, atol=1e-3)
        union = np.asarray(pm.dataobj) > 0 if union is None else union | (np.asarray(pm.dataobj) > 0)
    assert dice(np.asarray(ours.dataobj), union) >= 0.98


def test_dilation_stays_in_soft_tissue_window_and_margin(preprocessed):
    from scipy import ndimage
    for site, out in preprocessed.items():
        for item in json.loads((out / "datalist.json").read_text())["training"]:
            nodes = np.asarray(nib.load(out / item["nodes"]).dataobj).astype(bool)
            label_img = nib.load(out / item["label"])
            label = np.asarray(label_img.dataobj).astype(bool)
            hu = np.asarray(nib.load(out / item["image"]).dataobj)
            spacing = label_img.header.get_zooms()[:3]
            added = label & ~nodes
            assert nodes.sum() > 0 and (label >= nodes).all()
            assert added.sum() > 0, "a 3 mm margin around a node adds voxels"
            assert hu[added].min() >= -150 and hu[added].max() <= 200
            dist = ndimage.distance_transform_edt(~nodes, sampling=spacing)
            assert dist[added].max() <= 3.0 + 1e-6


def test_dilation_is_exactly_the_3mm_soft_tissue_rule_and_stops_at_a_bone_wall():
    """Hand-built: a node in soft tissue, a bone plate 2 mm from it and air on one side. Added are exactly the
    soft-tissue voxels within 3 mm (spacing-aware) on the node's side; none in the plate, in air, or behind the
    plate although within 3 mm of the node."""
    from site_preprocess.dilation import soft_tissue_dilation
    spacing = (1.0, 1.0, 2.0)
    shape = (24, 24, 12)
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    node = (x - 10) ** 2 + (y - 10) ** 2 + ((z - 6) * 2.0) ** 2 <= 4.0  # radius 2 mm
    hu = np.full(shape, 40.0)  # soft tissue
    hu[x == 14] = 700.0  # bone plate at 2 mm beyond the node's edge (x = 12)
    hu[y >= 14] = -800.0  # air
    grown = soft_tissue_dilation(node, hu, spacing, margin_mm=3.0).astype(bool)
    from scipy import ndimage
    within = ndimage.distance_transform_edt(~node, sampling=spacing) <= 3.0
    expected = node | (within & (x < 14) & (y < 14))
    assert np.array_equal(grown, expected)
    assert (within & (x == 15)).any(), "the margin reaches behind the plate; the rule must not add it"
    assert not grown[x >= 14].any() and not grown[y >= 14].any()


def test_pseudonyms_are_stable_and_reruns_skip_done_cases(synth_root, tmp_path, capsys):
    site = synth_root / "hospital-a"
    out1, out2 = tmp_path / "o1", tmp_path / "o2"
    assert run_preprocess(site / "dicom", site / "labels.csv", out1, SiteConfig(), progress=False) == 0
    assert run_preprocess(site / "dicom", site / "labels.csv", out2, SiteConfig(), progress=False) == 0
    assert set(id_map(out1)) == set(id_map(out2))
    image = next((out1 / "images").iterdir())
    mtime = image.stat().st_mtime_ns
    assert run_preprocess(site / "dicom", site / "labels.csv", out1, SiteConfig(), progress=False) == 0
    assert image.stat().st_mtime_ns == mtime, "a done case is not redone without --force"
    assert run_preprocess(site / "dicom", site / "labels.csv", out1, SiteConfig(), force=True, progress=False) == 0
    assert image.stat().st_mtime_ns != mtime
    assert json.loads((out1 / "qc_report.json").read_text())["summary"]["ok"] == 3


def test_leading_zero_patient_ids_are_matched_as_strings(preprocessed):
    """hospital-b uses 8-digit IDs with leading zeros; all its labelled cases must be matched."""
    ids = id_map(preprocessed["hospital-b"])
    assert all(row["patient_id"].startswith("00") for row in ids.values())
    qc = json.loads((preprocessed["hospital-b"] / "qc_report.json").read_text())
    assert qc["summary"]["ok"] == 3


def test_inputs_are_not_modified(synth_root, tmp_path):
    site = synth_root / "hospital-c"
    before = {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    run_preprocess(site / "dicom", site / "labels.csv", tmp_path / "o", SiteConfig(), progress=False)
    after = {p: p.stat().st_mtime_ns for p in site.rglob("*") if p.is_file()}
    assert before == after


def test_nifti_headers_carry_no_free_text(preprocessed):
    for out in preprocessed.values():
        for path in (out / "images").iterdir():
            hdr = nib.load(path).header
            assert bytes(hdr["descrip"]).strip(b"\x00") == b""
            assert bytes(hdr["aux_file"]).strip(b"\x00") == b""
