"""`ecefl infer` on a synthetic patient: RTSTRUCT that rt-utils reads back, referencing the input series."""
from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from conftest import REALDATA
from ecefl.checkpoint import load_checkpoint, save_checkpoint
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
        # an average training case as a refit keeps it: the evidence is shown against it
        k = model.readout_baseline.numel()
        model.readout_baseline.copy_(torch.cat([torch.linspace(-1.0, 1.0, k - 1), torch.ones(1)]))
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
    # hospital-a's 1.6 mm pixels and 3 mm slices are within the model's assessable acquisition
    assert result["ece_assessable"] is True and result["acquisition"]["spacing_mm"] == [1.6, 1.6, 3.0]
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
    assert rs.Manufacturer == "ECE-FL" and rs.SeriesDescription == "ECE-FL predicted nodes"
    assert rs.RTROIObservationsSequence[0].RTROIInterpretedType == "GTV"
    loaded = RTStructBuilder.create_from(dicom_series_path=str(patient / "CT"), rt_struct_path=str(out / "RTSTRUCT_pred.dcm"))
    assert "ECEFL_nodes_pred" in loaded.get_roi_names()
    back = loaded.get_roi_mask_by_name("ECEFL_nodes_pred").transpose(1, 0, 2)
    assert dice(back, mask) >= 0.95  # rt-utils' own contour round trip
    assert (out / "evidence.png").stat().st_size > 5000
    # the evidence volume against the average training case: on the native CT grid, summing (with the bias, the
    # average case's logit over these nodes) to the case logit
    evidence = nib.load(out / "evidence.nii.gz")
    assert evidence.shape == mask_img.shape and np.allclose(evidence.affine, mask_img.affine)
    logit = np.log(result["ece_probability"] / (1 - result["ece_probability"]))
    assert float(np.asarray(evidence.dataobj).sum()) + result["evidence"]["bias"] == pytest.approx(logit, abs=0.05)
    # the DICOM SEG equals nodes_pred.nii.gz voxel for voxel
    assert _seg_mask(out / "SEG_pred.dcm", patient / "CT").tolist() == mask.tolist()


def _seg_mask(seg_path, ct_dir) -> np.ndarray:
    """The SEG read back with highdicom, checked with pydicom, as (columns, rows, slices) in slice-normal order."""
    import highdicom as hd
    ct = [pydicom.dcmread(p) for p in sorted(ct_dir.iterdir())]
    iop = np.array([float(v) for v in ct[0].ImageOrientationPatient])
    ct.sort(key=lambda ds: float(np.array([float(v) for v in ds.ImagePositionPatient]) @ np.cross(iop[:3], iop[3:])))
    seg = hd.seg.segread(seg_path)
    assert seg.Manufacturer == "ECE-FL"
    assert seg.SegmentSequence[0].SegmentAlgorithmName == "ECE-FL dual-output SwinUNETR"
    assert seg.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
    uids = [str(ds.SOPInstanceUID) for ds in ct]
    frames = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0]
    raw = pydicom.dcmread(seg_path)  # independent reader: frame i's source slice and pixels
    per_frame = {str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID): i
                 for i, f in enumerate(raw.PerFrameFunctionalGroupsSequence)}
    assert set(per_frame) == set(uids)
    pixels = raw.pixel_array.reshape(len(per_frame), raw.Rows, raw.Columns)
    assert all(np.array_equal(pixels[per_frame[u]], frames[k]) for k, u in enumerate(uids))
    return frames.transpose(2, 1, 0).astype(bool)


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
    # contours through the boundary voxels' centres: the read-back lies inside the mask and holds every voxel
    # one in-plane step away from its border (Dice alone would accept a shifted or shrunken contour)
    from scipy import ndimage
    in_plane = np.zeros((3, 3, 3), bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    eroded = ndimage.binary_erosion(mask, structure=in_plane)
    assert not (back & ~mask).any(), "read-back voxels outside the written mask"
    assert not (eroded & ~back).any(), "interior voxels of the mask missing from the read-back"
    # the DICOM SEG of the same mask is exact on any pixel spacing and image shape
    from ecefl.infer import _write_seg
    _write_seg(sorted(ct_dir.iterdir()), mask, tmp_path / "seg.dcm", get_plan("test-tiny"), "model.pt")
    assert np.array_equal(_seg_mask(tmp_path / "seg.dcm", ct_dir), mask)


def test_no_node_predicted_gives_an_explicit_empty_roi(patient, tmp_path):
    """A model that finds no node (its output bias says "background" everywhere): the RTSTRUCT and SEG still
    hold the named ROI, empty, and result.json says so; name and colour are the user's."""
    plan = get_plan("test-tiny")
    torch.manual_seed(0)
    model = DualOutputSwinUNETR(plan)
    with torch.no_grad():
        model.net.out.conv.conv.bias.copy_(torch.tensor([20.0, -20.0]))
    save_checkpoint(tmp_path / "m.pt", "dual", plan, model.state_dict(), threshold=0.5)
    out = tmp_path / "out"
    assert ecefl_main(["infer", "--model", str(tmp_path / "m.pt"), "--dicom", str(patient), "--out", str(out),
                       "--roi-name", "AI_nodes", "--roi-color", "0,255,0"]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["rtstruct_roi"] == "AI_nodes" and result["rtstruct_roi_empty"] is True
    assert not np.asarray(nib.load(out / "nodes_pred.nii.gz").dataobj).any()
    rs = pydicom.dcmread(out / "RTSTRUCT_pred.dcm")
    assert [r.ROIName for r in rs.StructureSetROISequence] == ["AI_nodes"]
    assert list(rs.ROIContourSequence[0].ROIDisplayColor) == [0, 255, 0]
    assert "ContourSequence" not in rs.ROIContourSequence[0]
    assert not _seg_mask(out / "SEG_pred.dcm", patient / "CT").any()
    assert ecefl_main(["infer", "--model", str(tmp_path / "m.pt"), "--dicom", str(patient), "--out", str(out),
                       "--roi-color", "red"]) == 2


def test_batch_inference_over_a_folder_of_patients(model_file, synth_root, patient, tmp_path, capsys):
    """A folder of patients (one without RTSTRUCT, the usual clinical case; one unreadable): one output folder
    per patient, summary.csv with status and reason per patient, the failure reported and the others done; a
    patient whose CT is coarser than the model's assessable acquisition flagged, its nodes still written."""
    import csv
    root = tmp_path / "root"
    root.mkdir()
    others = [p for p in sorted((synth_root / "hospital-b" / "dicom").iterdir()) if (p / "CT").is_dir()]
    shutil.copytree(patient, root / "pat1")
    shutil.copytree(others[0] / "CT", root / "pat2" / "CT")  # CT only
    (root / "pat3").mkdir()
    (root / "pat3" / "slice.dcm").write_bytes(b"not dicom")
    out = tmp_path / "out"
    # a model that calls ECE only on pixels <= 1.5 mm: hospital-a's 1.6 mm (pat1) is too coarse, b's 1.45 mm is not
    ckpt = load_checkpoint(model_file)
    strict = tmp_path / "strict.pt"
    save_checkpoint(strict, "dual", ckpt["plan"].with_overrides(assessable_spacing_mm=(1.5, 3.0)), ckpt["model"],
                    threshold=0.4)
    assert ecefl_main(["infer", "--model", str(strict), "--dicom", str(root), "--out", str(out),
                       "--no-progress"]) == 3
    rows = {r["patient_folder"]: r for r in csv.DictReader(open(out / "summary.csv"))}
    assert [rows[p]["status"] for p in ("pat1", "pat2", "pat3")] == ["ok", "ok", "failed"]
    assert [rows[p]["ece_assessable"] for p in ("pat1", "pat2")] == ["0", "1"]
    flagged = json.loads((out / "pat1" / "result.json").read_text())
    assert flagged["ece_assessable"] is False and "pixel spacing 1.60 mm > 1.5 mm" in flagged["acquisition"]["warning"]
    assert "cannot be read as DICOM" in rows["pat3"]["reason"] and str(root) not in rows["pat3"]["reason"]
    for p in ("pat1", "pat2"):
        res = json.loads((out / p / "result.json").read_text())
        assert f"{res['ece_probability']:.4f}" == rows[p]["ece_probability"]
        assert (out / p / "SEG_pred.dcm").is_file() and (out / p / "RTSTRUCT_pred.dcm").is_file()
    err = capsys.readouterr().err
    assert "2 of 3 patients done, 1 failed" in err and "pat1: ECE not assessable on this CT" in err
    # an MAE checkpoint where a fine-tuned model is needed: a clear error before any patient is read
    from ecefl.checkpoint import save_checkpoint as save
    from ecefl.model import MaskedPretrainer
    save(tmp_path / "mae.pt", "mae", get_plan("test-tiny"), MaskedPretrainer(get_plan("test-tiny")).state_dict())
    assert ecefl_main(["infer", "--model", str(tmp_path / "mae.pt"), "--dicom", str(root), "--out",
                       str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "mae" in capsys.readouterr().err.lower()


def test_infer_with_the_patients_own_contours(patient, preprocessed, tmp_path):
    """--use-rtstruct pools over the patient's own contours: with an evidence head that reads the windowed CT
    value only (e = GELU(x)) and no perinodal shell, the logit is the mean of GELU(x) over the nodes, which the
    test computes itself from the site's preprocessed CT and nodal mask; the predicted region gives another."""
    import csv
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, ScaleIntensityRange, Spacing
    plan = get_plan("test-tiny", shell_weight=0.0)
    model = DualOutputSwinUNETR(plan)
    n_feat = plan.feature_size
    with torch.no_grad():
        model.net.out.conv.conv.bias.zero_()
        for p in model.evidence_head.parameters():
            p.zero_()
        model.evidence_head[0].weight[0, n_feat, 1, 1, 1] = 1.0  # channel n_feat is x, the windowed CT value
        model.evidence_head[2].weight[0, 0] = 1.0
    save_checkpoint(tmp_path / "m.pt", "dual", plan, model.state_dict(), threshold=0.5)
    logits = {}
    for flag in (["--use-rtstruct"], []):
        out = tmp_path / ("rs" if flag else "pred")
        assert ecefl_main(["infer", "--model", str(tmp_path / "m.pt"), "--dicom", str(patient), "--out", str(out),
                           *flag]) == 0
        result = json.loads((out / "result.json").read_text())
        logits[bool(flag)] = float(np.log(result["ece_probability"] / (1 - result["ece_probability"])))
    assert result["region"] == "predicted"
    result = json.loads((tmp_path / "rs" / "result.json").read_text())
    assert result["region"] == "rtstruct" and 0 < result["region_volume_ml"] < 100
    # the same patient's CT and nodes as the site preprocessed them, on the plan grid
    site = preprocessed["hospital-a"]
    case_id = next(r["case_id"] for r in csv.DictReader(open(site / "private" / "id_map.csv"))
                   if r["patient_folder"] == patient.name)
    item = next(e for e in json.loads((site / "datalist.json").read_text())["training"] if e["case_id"] == case_id)
    ras = Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S")))
    load = Compose([LoadImage(image_only=True), EnsureChannelFirst(), ras])
    x = ScaleIntensityRange(*plan.hu_window, 0.0, 1.0, clip=True)(Spacing(pixdim=plan.spacing, mode="bilinear")(
        load(str(site / item["image"]))))
    nodes = Spacing(pixdim=plan.spacing, mode="nearest")(load(str(site / item["nodes"]))) > 0.5
    expected = float(torch.nn.functional.gelu(torch.as_tensor(np.asarray(x))[torch.as_tensor(np.asarray(nodes))]).mean())
    assert logits[True] == pytest.approx(expected, abs=0.01)
    assert abs(logits[False] - expected) > 0.03


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
    """The exported bundle, run by MONAI's bundle runner in a fresh process, segments like `ecefl infer`, both at
    the model file's node threshold (here above 0.5, so the mask is not the argmax), HU gate and mirror averaging."""
    import csv
    import subprocess
    import sys
    plain = model_file
    model_file = tmp_path / "model_t.pt"
    payload = load_checkpoint(plain, kind="dual")
    # with the presets' HU gate and mirror averaging: the bundle's mask must keep to the same soft tissue as
    # `ecefl infer`'s, from the same averaged outputs
    save_checkpoint(model_file, "dual", payload["plan"].with_overrides(node_hu_range=(-150.0, 200.0), tta_flip=True),
                    payload["model"], threshold=payload["threshold"], node_threshold=0.502)
    flipped = tmp_path / "model_flip.pt"  # the same network, mirror-averaged, ungated, at 0.5
    save_checkpoint(flipped, "dual", payload["plan"].with_overrides(tta_flip=True), payload["model"],
                    threshold=payload["threshold"])
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
    # the threshold took effect: fewer nodal voxels than the argmax (0.5) of the same network, and only those
    assert ecefl_main(["infer", "--model", str(flipped), "--dicom", str(patient), "--out", str(tmp_path / "inf5")]) == 0
    argmax_mask = np.asarray(nib.load(tmp_path / "inf5" / "nodes_pred.nii.gz").dataobj).astype(bool)
    assert ecefl_main(["infer", "--model", str(plain), "--dicom", str(patient), "--out", str(tmp_path / "inf1")]) == 0
    single_pass = np.asarray(nib.load(tmp_path / "inf1" / "nodes_pred.nii.gz").dataobj).astype(bool)
    assert dice(single_pass, argmax_mask) < 0.95  # the mirror averaging changes this network's mask
    assert 0 < infer_mask.sum() < argmax_mask.sum() and not (infer_mask & ~argmax_mask).any()
    assert json.loads((tmp_path / "inf" / "result.json").read_text())["node_threshold"] == 0.502
    # the HU gate took effect in both: the ungated network's nodes reach bone, fat and air, the gated ones do not
    hu = np.asarray(nib.load(data / "ct.nii.gz").dataobj)
    outside = (hu < -200) | (hu > 250)  # beyond the gate's -150..200 HU with room for resampling at the edges
    assert outside[argmax_mask].mean() > 0.05
    assert outside[infer_mask].mean() < 0.01 and outside[bundle_mask].mean() < 0.01


def test_validation_scores_the_mask_infer_writes_on_the_cts_own_grid(model_file, patient, preprocessed, tmp_path):
    """predict_cases (validation, evaluate, calibrate) scores the very mask `ecefl infer` writes, against the site's
    label on the CT's own grid; that mask is the node probability resampled linearly and thresholded on that grid,
    so it is finer than the plan grid's 2.5 mm blocks upsampled."""
    import csv
    from monai.transforms import ResampleToMatch
    from ecefl.checkpoint import load_model
    from ecefl.engine import on_ct_and_plan_grids, predict_cases
    gated = tmp_path / "gated.pt"  # the presets' HU gate: air is background in both paths (infer skips air windows)
    payload = load_checkpoint(model_file, kind="dual")
    save_checkpoint(gated, "dual", payload["plan"].with_overrides(node_hu_range=(-150.0, 200.0)), payload["model"],
                    threshold=payload["threshold"])
    assert ecefl_main(["infer", "--model", str(gated), "--dicom", str(patient), "--out", str(tmp_path / "inf")]) == 0
    written = np.asarray(nib.load(tmp_path / "inf" / "nodes_pred.nii.gz").dataobj).astype(bool)
    site = preprocessed["hospital-a"]
    ids = {r["patient_folder"]: r["case_id"] for r in csv.DictReader(open(site / "private" / "id_map.csv"))}
    cid = ids[patient.name]
    item = {"image": str(site / "images" / f"{cid}.nii.gz"), "label": str(site / "labels" / f"{cid}.nii.gz"),
            "ece": 0, "case_id": cid}
    label = np.asarray(nib.load(item["label"]).dataobj) > 0
    model, ckpt = load_model(gated, kind="dual")
    pred = predict_cases(model, [item], ckpt["plan"], progress=False, keep_outputs=True)
    assert written.shape == label.shape and written.any()
    assert pred["dices"][0] == pytest.approx(dice(written, label), abs=1e-6)
    assert pred["dices_at"][0][0] == pytest.approx(pred["dices"][0])  # the first candidate is 0.5, the file's own
    # not the plan-grid mask upsampled: that one is made of whole 2.5 mm blocks, this one follows 1.6 mm voxels
    stored, planned = on_ct_and_plan_grids(item, ckpt["plan"])
    blocks = planned["image"].clone()
    blocks.array = pred["outputs"][0]["pred"][None].astype(np.float32)
    upsampled = np.asarray(ResampleToMatch(mode="nearest")(blocks, img_dst=stored["image"])[0]) > 0.5
    assert 0.5 < dice(written, upsampled) < 1.0


def test_validation_names_a_case_whose_label_lies_on_another_grid(model_file, preprocessed, tmp_path):
    """A label file replaced by one on another grid (here shifted by 5 mm) is not scored voxel by voxel against
    the CT: predict_cases stops, naming the case and what to do."""
    import json as _json
    from ecefl.checkpoint import load_model
    from ecefl.engine import predict_cases
    site = preprocessed["hospital-a"]
    item = _json.loads((site / "datalist.json").read_text())["training"][0]
    label = nib.load(site / item["label"])
    affine = label.affine.copy()
    affine[0, 3] += 5.0
    moved = tmp_path / "label.nii.gz"
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj), affine), moved)
    case = {**item, "image": str(site / item["image"]), "label": str(moved)}
    model, ckpt = load_model(model_file, kind="dual")
    with pytest.raises(ValueError, match=f"case {item['case_id']}: its label and its CT lie on different grids"
                                         r".*re-run `ecefl preprocess`"):
        predict_cases(model, [case], ckpt["plan"], progress=False)


def test_node_probability_resampled_linearly_recovers_a_finer_contour():
    """A sphere's node probability on a 2.5 mm grid (the fraction of each voxel inside it), resampled linearly to
    a 1 mm grid and thresholded at 0.5, matches the sphere drawn on the 1 mm grid better than the 2.5 mm mask
    upsampled by nearest neighbour (its staircase)."""
    from monai.data import MetaTensor
    from monai.transforms import ResampleToMatch
    from ecefl.engine import node_probability_on

    def grid(step, n):
        c = (np.arange(n) + 0.5) * step - n * step / 2
        return np.meshgrid(c, c, c, indexing="ij")

    radius, sub = 9.0, 5  # mm; 5^3 sub-samples per coarse voxel for its inside fraction
    fine_axes = grid(1.0, 50)
    fine = np.sqrt(sum(a ** 2 for a in fine_axes)) <= radius
    xs = grid(2.5 / sub, 20 * sub)
    inside = (np.sqrt(sum(a ** 2 for a in xs)) <= radius).reshape(20, sub, 20, sub, 20, sub).mean(axis=(1, 3, 5))
    p = np.clip(inside, 1e-6, 1 - 1e-6)
    logits = torch.as_tensor(np.stack([np.zeros_like(p), np.log(p / (1 - p))])[None], dtype=torch.float32)
    coarse = MetaTensor(torch.zeros(1, 20, 20, 20), affine=torch.diag(torch.tensor([2.5, 2.5, 2.5, 1.0])))
    coarse.affine[:3, 3] = -25.0 + 1.25
    ct = MetaTensor(torch.zeros(1, 50, 50, 50), affine=torch.eye(4))
    ct.affine[:3, 3] = -25.0 + 0.5
    linear = node_probability_on(logits, coarse, ct) > 0.5
    blocks = coarse.clone()
    blocks.array = (inside > 0.5)[None].astype(np.float32)
    nearest = np.asarray(ResampleToMatch(mode="nearest")(blocks, img_dst=ct)[0]) > 0.5
    assert dice(linear, fine) >= 0.94  # measured 0.951 (a convex partial-volume field thresholded shrinks a little)
    assert dice(linear, fine) > dice(nearest, fine) + 0.03  # measured 0.885


def test_real_planning_cts_are_too_coarse_for_an_ece_call():
    """The real HNSCC CTs (pixels downsampled to 7.5-7.8 mm) fail the presets' assessable acquisition (pixels <= 2
    mm, slices <= 3 mm); the synthetic hospitals' acquisitions pass it."""
    from ecefl.infer import acquisition_check
    from site_preprocess.config import SiteConfig
    from site_preprocess.dicom_series import load_ct, scan_folder, select_series
    plan = get_plan("cpu-small")
    for pid in ("HNSCC-01-0001", "HNSCC-01-0002"):
        _, files, _ = select_series(scan_folder(REALDATA / "radiotherapyai_hnscc" / pid), None)
        check = acquisition_check(load_ct(files, SiteConfig().slice_position_tolerance).spacing_xyz, plan)
        assert check["ece_assessable"] is False and check["spacing_mm"][0] >= 7.5
        assert check["warning"].startswith("ECE not assessable on this CT (pixel spacing 7.")
    for spacing in ((1.6, 1.6, 3.0), (1.45, 1.45, 2.5), (1.75, 1.75, 2.0), (1.5, 1.3, 3.0)):  # hospitals a-d
        assert acquisition_check(spacing, plan) == {"spacing_mm": list(spacing), "assessable_spacing_mm": [2.0, 3.0],
                                                    "ece_assessable": True, "warning": None}
    assert "slice spacing 5.00 mm > 3 mm" in acquisition_check((0.8, 0.8, 5.0), plan)["warning"]
