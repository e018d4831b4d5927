"""`ecefl infer`: one patient's CT (RTSTRUCT optional) -> ECE probability, nodal mask, RTSTRUCT, DICOM SEG and
evidence (a PNG of two slices and the per-voxel evidence volume on the native CT grid).

Runs at the hospital. The CT is read with the same DICOM code as preprocessing (series chosen by the
RTSTRUCT's reference, geometry checked), resampled to the model's plan grid with MONAI, segmented with sliding
windows over the whole neck, classified by the mask-guided head; the node probability is resampled back to the
native CT grid and thresholded there. The RTSTRUCT is written with rt-utils and references the input series; it
goes back to the same hospital, so rt-utils copying the patient module into it is intended here.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Compose, ResampleToMatch

from .data import build_transforms, preprocessing_spec
from .engine import node_probability_on, on_ct_and_plan_grids, predict_volume
from .checkpoint import load_model, node_threshold_of
from .model import DualOutputSwinUNETR

_log = logging.getLogger(__name__)

ROI_NAME = "ECEFL_nodes_pred"
ROI_COLOR = (255, 0, 0)
# RTROIInterpretedType of the predicted region: nodal gross disease is what the model was trained on (the
# hospitals' GTVn-style nodal contours); the ROI description says it is an AI prediction to review
ROI_TYPE = "GTV"


class InferenceError(RuntimeError):
    pass


def _read_patient(dicom_dir: Path, use_rtstruct: bool, site_config):
    from site_preprocess.dicom_series import load_ct, scan_folder, select_series
    from site_preprocess.errors import CaseError
    from site_preprocess.rtstruct import check_frame_of_reference, nodal_rois, rasterise, referenced_series
    if not dicom_dir.is_dir():
        raise InferenceError(f"{dicom_dir} is not a folder; pass one patient's DICOM folder")
    scan = scan_folder(dicom_dir)
    try:
        if scan.unreadable and not scan.series:
            raise CaseError(f"{len(scan.unreadable)} file(s) cannot be read as DICOM and no CT series was found")
        rs = scan.rtstructs[0][1] if len(scan.rtstructs) == 1 else None
        if use_rtstruct and rs is None:
            raise CaseError(f"--use-rtstruct needs exactly one RTSTRUCT in the folder, found {len(scan.rtstructs)}")
        ref = None
        if rs is not None:
            present = [s for s in referenced_series(rs)[1] if s in scan.series]
            ref = present[0] if present else None
        _, files, _ = select_series(scan, ref)
        ct = load_ct(files, site_config.slice_position_tolerance)
        region = None
        if use_rtstruct:
            check_frame_of_reference(rs, ct)
            region, _ = rasterise(nodal_rois(rs, site_config), ct, site_config.contour_plane_tolerance)
    except CaseError as exc:
        raise InferenceError(f"{dicom_dir}: {exc.reason}") from exc
    return ct, [p for p, _ in files], region


def acquisition_check(spacing_xyz, plan) -> dict:
    """Whether the CT's acquisition is fine enough for the ECE call (plan.assessable_spacing_mm); the nodal mask
    is returned either way."""
    pixel, slices = max(spacing_xyz[:2]), spacing_xyz[2]
    max_pixel, max_slice = plan.assessable_spacing_mm
    coarse = [f"pixel spacing {pixel:.2f} mm > {max_pixel:g} mm"] if pixel > max_pixel else []
    coarse += [f"slice spacing {slices:.2f} mm > {max_slice:g} mm"] if slices > max_slice else []
    warning = None
    if coarse:
        warning = (f"ECE not assessable on this CT ({'; '.join(coarse)}): at this resolution node, fat and soft "
                   "tissue blur into the intermediate HU of fat stranding and p(ECE) rises for patients without "
                   f"ECE. Use a reconstruction with pixels <= {max_pixel:g} mm and slices <= {max_slice:g} mm; the "
                   "nodal contours are still written.")
    return {"spacing_mm": [round(float(v), 3) for v in spacing_xyz],
            "assessable_spacing_mm": list(plan.assessable_spacing_mm), "ece_assessable": not coarse, "warning": warning}


def infer(model_path, dicom_dir, out, use_rtstruct: bool = False, site_config=None, log=_log.info,
          roi_name: str = ROI_NAME, roi_color=ROI_COLOR, loaded=None, progress: bool = False,
          skip_air: bool = True) -> dict:
    """loaded: (model, checkpoint) already read (batch inference reads the model file once); progress: a bar
    over the sliding windows; skip_air: windows of pure air are not run (engine.predict_volume; the outputs
    inside the body are unchanged)."""
    from site_preprocess.config import SiteConfig
    from site_preprocess.outputs import write_nifti
    site_config = site_config or SiteConfig()
    model, ckpt = loaded or load_model(model_path, kind="dual")
    plan = ckpt["plan"]
    ct, series_files, region_native = _read_patient(Path(dicom_dir), use_rtstruct, site_config)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        native_path = Path(tmp) / "ct.nii.gz"
        write_nifti(native_path, ct.hu, ct.affine_ras)
        # the CT as read and through the training preprocessing itself (ecefl.data.preprocessing_spec), as validation
        stored, planned = on_ct_and_plan_grids({"image": str(native_path)}, plan, keys=["image"])
        native, image = stored["image"], planned["image"]
        region = None
        if region_native is not None:
            write_nifti(Path(tmp) / "region.nii.gz", region_native.astype(np.uint8), ct.affine_ras)
            reg = Compose(build_transforms(preprocessing_spec(plan, ["label"])))(
                {"label": str(Path(tmp) / "region.nii.gz")})["label"]
            region = torch.as_tensor(np.asarray(reg)).unsqueeze(0) > 0.5
        voxel_out, prob = predict_volume(model, torch.as_tensor(np.asarray(image)).unsqueeze(0).float(), plan,
                                         region=region, progress=progress, skip_air=skip_air)
        # thresholded on the CT's own grid (the node probability resampled linearly), as validation scores it
        nodes_native = node_probability_on(voxel_out, image, native) > node_threshold_of(ckpt)
        # each voxel's contribution to the ECE logit against the average training case, on the CT grid a
        # radiologist scrolls (trilinear: a field)
        evidence_plan = model.attribution(voxel_out)[0, 0]
        reference = float(model.reference_logit(voxel_out)[0])
        ev_meta = image.clone()
        ev_meta.array = evidence_plan[None].numpy()
        # the plan grid is ~2x coarser: per native voxel the contribution scales with the voxel volume ratio
        ratio = float(np.prod(ct.spacing_xyz)) / float(np.prod(plan.spacing))
        evidence_native = conserved(np.asarray(ResampleToMatch(mode="bilinear")(ev_meta, img_dst=native)[0]) * ratio,
                                    evidence_plan.numpy())
    write_nifti(out / "nodes_pred.nii.gz", nodes_native.astype(np.uint8), ct.affine_ras)
    write_nifti(out / "evidence.nii.gz", evidence_native.astype(np.float32), ct.affine_ras)
    threshold = float(ckpt.get("threshold", 0.5))
    region_mask = region_native.astype(bool) if region_native is not None else nodes_native
    voxel_ml = float(np.prod(ct.spacing_xyz)) / 1000.0
    acquisition = acquisition_check(ct.spacing_xyz, plan)
    result = {
        "ece_probability": float(prob), "ece_positive": bool(prob >= threshold), "threshold": threshold,
        "ece_assessable": acquisition["ece_assessable"], "acquisition": acquisition,
        "node_threshold": node_threshold_of(ckpt),
        "model": {"file": Path(model_path).name, "preset": plan.preset, "feature_size": plan.feature_size,
                  "spacing": list(plan.spacing), "trained": ckpt.get("trained") or ckpt.get("federated")},
        "nodes_volume_ml": round(float(nodes_native.sum()) * voxel_ml, 3),
        "region": "rtstruct" if use_rtstruct else "predicted",
        "region_volume_ml": round(float(region_mask.sum()) * voxel_ml, 3),
        "rtstruct_roi": roi_name,
        "rtstruct_roi_empty": not bool(nodes_native.any()),
        "evidence": {"file": "evidence.nii.gz",
                     "unit": "contribution to the ECE logit per CT voxel, against the average training case",
                     "sum": round(float(evidence_native.sum()), 4), "bias": round(reference, 4),
                     "note": "sum + bias is the ECE logit up to resampling; bias: the logit of the average training "
                             "case's CT signs over this case's nodes (red: more ECE-like than that case, blue: less)"},
        "seg": "SEG_pred.dcm",
    }
    _write_rtstruct(series_files, nodes_native, out / "RTSTRUCT_pred.dcm", roi_name, roi_color)
    try:
        _write_seg(series_files, nodes_native, out / "SEG_pred.dcm", plan, Path(model_path).name, roi_name)
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        # highdicom checks the series strictly (one study, frame of reference, size); the other outputs stand
        result["seg"] = None
        result["seg_not_written"] = f"{type(exc).__name__}: {exc}"
        log(f"warning: no DICOM SEG for this series ({result['seg_not_written']}); RTSTRUCT and NIfTI are written")
    evidence = evidence_plan.numpy()
    nodes_plan = DualOutputSwinUNETR.node_mask(voxel_out, node_threshold_of(ckpt))[0].float().numpy()  # figure grid
    _evidence_png(np.asarray(image[0]), nodes_plan, evidence, None if region is None else
                  region[0, 0].numpy(), result, out / "evidence.png")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    log(f"p(ECE) = {prob:.3f} (threshold {threshold:.3f}: {'ECE+' if result['ece_positive'] else 'ECE-'}); "
        f"predicted nodal volume {result['nodes_volume_ml']:.1f} ml; outputs in {out}")
    if acquisition["warning"]:
        log(f"warning: {acquisition['warning']}")
    if result["rtstruct_roi_empty"]:
        log(f"no nodal voxel predicted: the RTSTRUCT and SEG hold the ROI {roi_name} empty")
    return result


def patient_folders(root: Path) -> list[Path] | None:
    """The patient sub-folders of a root in the layout `preprocess` reads (one sub-folder per patient), or None
    when `root` is one patient's folder: its CT series lie under a single sub-folder or belong to one patient."""
    from site_preprocess.dicom_series import scan_folder
    root = Path(root)
    if not root.is_dir():
        raise InferenceError(f"{root} is not a folder; pass one patient's DICOM folder or a folder of patients")
    subs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if len(subs) < 2 or any(f.is_file() and not f.name.startswith(".") for f in root.iterdir()):
        return None
    patients, holding = set(), []
    for d in subs:
        scan = scan_folder(d)  # headers only; the patient ids stay in this process
        ids = {str(getattr(ds, "PatientID", "")) for files in scan.series.values() for _, ds in files[:1]}
        if ids:
            holding.append(d)
            patients |= ids
    return subs if len(holding) >= 2 and len(patients) >= 2 else None


def infer_batch(model_path, root, out, use_rtstruct: bool = False, site_config=None, progress: bool = True,
                log=_log.info, roi_name: str = ROI_NAME, roi_color=ROI_COLOR, folders: list[Path] | None = None) -> list[dict]:
    """Every patient folder under root -> OUT/<folder>/ (as a single-patient run) and OUT/summary.csv with a
    status and reason per patient; a failing patient is reported and the others go on."""
    import csv
    from tqdm import tqdm
    from site_preprocess.errors import UsageError
    folders = folders or patient_folders(root) or []
    if not folders:
        raise InferenceError(f"{root} holds no patient sub-folders with a CT series")
    loaded = load_model(model_path, kind="dual")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for folder in tqdm(folders, desc="infer", unit="patient", disable=not progress):
        row = {"patient_folder": folder.name, "status": "ok", "reason": "", "ece_probability": "",
               "ece_positive": "", "nodes_volume_ml": "", "ece_assessable": ""}  # new columns go last
        try:
            res = infer(model_path, folder, out / folder.name, use_rtstruct, site_config, log=lambda *_: None,
                        roi_name=roi_name, roi_color=roi_color, loaded=loaded)
            row.update(ece_probability=f"{res['ece_probability']:.4f}", ece_positive=int(res["ece_positive"]),
                       ece_assessable=int(res["ece_assessable"]), nodes_volume_ml=res["nodes_volume_ml"])
            if not res["ece_assessable"]:
                log(f"{folder.name}: {res['acquisition']['warning']}")
        except (InferenceError, UsageError) as exc:
            row.update(status="failed", reason=str(exc).replace(str(folder), folder.name))
            log(f"{folder.name}: failed: {row['reason']}")
        except Exception as exc:  # one patient's unexpected failure must not cost the others their results
            row.update(status="failed", reason=f"{type(exc).__name__}: {exc}")
            log(f"{folder.name}: failed: {row['reason']}")
        rows.append(row)
        with open(out / "summary.csv", "w", newline="") as fh:  # rewritten after each patient: nothing lost
            writer = csv.DictWriter(fh, fieldnames=list(row))
            writer.writeheader()
            writer.writerows(rows)
    ok = sum(r["status"] == "ok" for r in rows)
    log(f"{ok} of {len(rows)} patients done, {len(rows) - ok} failed; summary: {out / 'summary.csv'}")
    return rows


def _write_rtstruct(series_files: list[Path], nodes_native: np.ndarray, path: Path, roi_name: str = ROI_NAME,
                    roi_color=ROI_COLOR) -> None:
    """rt-utils RTSTRUCT on exactly the series used (linked into a clean folder: rt-utils reads every file), made
    into our own series: manufacturer, description, ROI interpreted type; the ROI is written even when empty, so a
    planning system shows that the model found no node instead of a structure set without the ROI."""
    import contextlib
    import io
    from rt_utils import RTStructBuilder
    from . import __version__
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(series_files):
            os.symlink(Path(f).resolve(), Path(tmp) / f"{i:05d}.dcm")
        try:
            rtstruct = RTStructBuilder.create_new(dicom_series_path=tmp)
        except Exception as exc:
            raise InferenceError(f"rt-utils cannot build an RTSTRUCT on this series ({exc})") from exc
        # ours: (columns, rows, slices); rt-utils: (rows, columns, slices), same slice order (normal)
        with contextlib.redirect_stdout(io.StringIO()):  # rt-utils prints an [INFO] line for an empty mask
            rtstruct.add_roi(mask=nodes_native.transpose(1, 0, 2).astype(bool), name=roi_name,
                             color=[int(c) for c in roi_color],
                             description="ECE-FL predicted nodal region (AI prediction: review before use)")
        _fix_rt_utils_geometry(rtstruct)
        ds = rtstruct.ds
        if not len(ds.ROIContourSequence[-1].get("ContourSequence", [])):
            del ds.ROIContourSequence[-1].ContourSequence  # an empty ROI: no contour at all (type 3)
        ds.RTROIObservationsSequence[-1].RTROIInterpretedType = ROI_TYPE
        ds.RTROIObservationsSequence[-1].ROIInterpreter = ""
        ds.Manufacturer, ds.ManufacturerModelName = "ECE-FL", "ECE-FL dual-output SwinUNETR"
        ds.SoftwareVersions = __version__
        ds.SeriesDescription = "ECE-FL predicted nodes"
        ds.StructureSetLabel = "ECEFL"
        rtstruct.save(str(path))


def _write_seg(series_files: list[Path], nodes_native: np.ndarray, path: Path, plan, model_name: str,
               roi_name: str = ROI_NAME) -> None:
    """DICOM Segmentation (binary, one segment) of the predicted nodes on the input CT's frames, with the
    algorithm identified (name, version, model file): opens natively in 3D Slicer, OHIF and PACS viewers."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from . import __version__
    datasets = [pydicom.dcmread(f) for f in series_files]
    iop = np.array([float(v) for v in datasets[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    # the mask's slice axis runs along the slice normal (as load_ct sorted it); frames pair with those slices
    datasets.sort(key=lambda ds: float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal))
    algorithm = hd.AlgorithmIdentificationSequence(name="ECE-FL dual-output SwinUNETR", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence,
                                                   parameters={"model": model_name, "preset": plan.preset})
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label=roi_name, segmented_property_category=codes.SCT.AnatomicalStructure,
        segmented_property_type=codes.SCT.LymphNode, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, tracking_uid=hd.UID(), tracking_id="ECE-FL predicted nodal region")
    # ours: (columns, rows, slices) -> highdicom: (frames, rows, columns)
    pixels = np.ascontiguousarray(nodes_native.transpose(2, 1, 0).astype(np.uint8))
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment], series_instance_uid=hd.UID(), series_number=9901,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="ECE-FL",
        manufacturer_model_name="ECE-FL dual-output SwinUNETR", software_versions=__version__,
        device_serial_number="ECE-FL", series_description="ECE-FL predicted nodes", omit_empty_frames=False)
    seg.save_as(str(path))


def _fix_rt_utils_geometry(rtstruct) -> None:
    """rt-utils 1.2.7 scales column indices by PixelSpacing[0] (the row spacing) and places slices at
    first-slice + i * mean spacing. Map its points back to pixel indices with its own transform and forward with
    the DICOM one (column index * PixelSpacing[1], row index * PixelSpacing[0], the referenced slice's
    ImagePositionPatient), so anisotropic pixels and jittered slices land where a planning system expects."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in rtstruct.series_data}
    first = rtstruct.series_data[0]
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    row_dir, col_dir = iop[:3], iop[3:]
    normal = np.cross(row_dir, col_dir)
    dr, dc = (float(v) for v in first.PixelSpacing)
    origin = np.array([float(v) for v in first.ImagePositionPatient])
    for contour in rtstruct.ds.ROIContourSequence[-1].get("ContourSequence", []):
        pts = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
        rel = pts - origin
        col = rel @ row_dir / dr  # rt-utils' (swapped) scaling, inverted
        row = rel @ col_dir / dc
        ds = by_uid.get(str(contour.ContourImageSequence[0].ReferencedSOPInstanceUID))
        ipp = np.array([float(v) for v in ds.ImagePositionPatient]) if ds is not None else origin + (rel @ normal)[:, None] * normal
        fixed = ipp + np.outer(col * dc, row_dir) + np.outer(row * dr, col_dir)
        contour.ContourData = [f"{v:.3f}" for v in fixed.reshape(-1)]


def conserved(resampled: np.ndarray, source: np.ndarray) -> np.ndarray:
    """The resampled evidence with its positive and its negative part each scaled back to the source's total:
    interpolation samples a field of scattered voxels (the perinodal fat's) unevenly, so the evidence for and
    against ECE would otherwise not add up to what decided the case."""
    out = np.array(resampled, dtype=np.float64)
    source = np.asarray(source, np.float64)
    for sign in (1.0, -1.0):
        part = sign * out > 0
        have, want = float(out[part].sum()), float(source[sign * source > 0].sum())
        if have != 0.0:
            out[part] *= want / have
    return out


def _evidence_png(image, pred, evidence, region, result, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .report import evidence_heat, evidence_limit, evidence_slice, radiological
    focus = region if region is not None and region.any() else pred
    # the axial and the coronal slice that carry the most evidence (else through the nodes' centre)
    z = evidence_slice(evidence, focus)
    y = evidence_slice(np.moveaxis(evidence, 1, 2), np.moveaxis(focus, 1, 2))
    lim = evidence_limit(evidence)
    views = [(name, radiological(image[cut]), radiological(pred[cut]), radiological(evidence[cut]))
             for name, cut in (("axial", np.s_[:, :, z]), ("coronal", np.s_[:, y, :]))]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, (name, img, msk, ev) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(evidence_heat(ev, lim))
        if msk.any():
            ax.contour(msk.astype(float), levels=[0.5], colors="yellow", linewidths=1.0)
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle(f"p(ECE) = {result['ece_probability']:.2f} ({'ECE+' if result['ece_positive'] else 'ECE−'} at "
                 f"threshold {result['threshold']:.2f}); yellow contour: predicted nodes;\nheat: evidence against the "
                 "average training case (red: more ECE-like)"
                 + ("" if result["ece_assessable"] else "\nNOT ASSESSABLE: acquisition too coarse for ECE ("
                    + ", ".join(f"{v:g}" for v in result["acquisition"]["spacing_mm"]) + " mm)"),
                 color="black" if result["ece_assessable"] else "darkred")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
