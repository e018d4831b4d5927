"""`ecefl infer`: one patient's CT (RTSTRUCT optional) -> ECE probability, nodal mask, RTSTRUCT and evidence.

Runs at the hospital. The CT is read with the same DICOM code as preprocessing (series chosen by the
RTSTRUCT's reference, geometry checked), resampled to the model's plan grid with MONAI, segmented with sliding
windows over the whole neck, classified by the mask-guided head, and the mask is resampled back to the native CT
grid. The RTSTRUCT is written with rt-utils and references the input series; it goes back to the same hospital,
so rt-utils copying the patient module into it is intended here.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from monai.transforms import (Compose, EnsureChannelFirst, LoadImage, Orientation, ResampleToMatch,
                              ScaleIntensityRange, Spacing)

from .checkpoint import load_checkpoint
from .engine import predict_volume
from .model import DualOutputSwinUNETR

ROI_NAME = "ECEFL_nodes_pred"


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


def infer(model_path, dicom_dir, out, use_rtstruct: bool = False, site_config=None, log=print) -> dict:
    from site_preprocess.config import SiteConfig
    from site_preprocess.outputs import write_nifti
    site_config = site_config or SiteConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(model_path, kind="dual")
    plan = ckpt["plan"]
    model = DualOutputSwinUNETR(plan)
    model.load_state_dict(ckpt["model"], strict=True)
    ct, series_files, region_native = _read_patient(Path(dicom_dir), use_rtstruct, site_config)

    with tempfile.TemporaryDirectory() as tmp:
        native_path = Path(tmp) / "ct.nii.gz"
        write_nifti(native_path, ct.hu, ct.affine_ras)
        native = Compose([LoadImage(image_only=True), EnsureChannelFirst()])(str(native_path))
        to_plan = Compose([Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                           Spacing(pixdim=plan.spacing, mode="bilinear")])
        image = ScaleIntensityRange(plan.hu_window[0], plan.hu_window[1], 0.0, 1.0, clip=True)(to_plan(native))
        region = None
        if region_native is not None:
            write_nifti(Path(tmp) / "region.nii.gz", region_native.astype(np.uint8), ct.affine_ras)
            reg = Compose([LoadImage(image_only=True), EnsureChannelFirst(),
                           Orientation(axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                           Spacing(pixdim=plan.spacing, mode="nearest")])(str(Path(tmp) / "region.nii.gz"))
            region = torch.as_tensor(np.asarray(reg)).unsqueeze(0) > 0.5
        voxel_out, prob = predict_volume(model, torch.as_tensor(np.asarray(image)).unsqueeze(0).float(), plan,
                                         region=region)
        pred_plan = (voxel_out[0, 1] > voxel_out[0, 0]).float()[None]
        pred_meta = image.clone()
        pred_meta.array = pred_plan.numpy()
        back = ResampleToMatch(mode="nearest")(pred_meta, img_dst=native)
        nodes_native = np.asarray(back[0]) > 0.5
    write_nifti(out / "nodes_pred.nii.gz", nodes_native.astype(np.uint8), ct.affine_ras)
    threshold = float(ckpt.get("threshold", 0.5))
    region_mask = region_native.astype(bool) if region_native is not None else nodes_native
    voxel_ml = float(np.prod(ct.spacing_xyz)) / 1000.0
    result = {
        "ece_probability": float(prob), "ece_positive": bool(prob >= threshold), "threshold": threshold,
        "model": {"file": Path(model_path).name, "preset": plan.preset, "feature_size": plan.feature_size,
                  "spacing": list(plan.spacing), "trained": ckpt.get("trained") or ckpt.get("federated")},
        "nodes_volume_ml": round(float(nodes_native.sum()) * voxel_ml, 3),
        "region": "rtstruct" if use_rtstruct else "predicted",
        "region_volume_ml": round(float(region_mask.sum()) * voxel_ml, 3),
        "rtstruct_roi": ROI_NAME if nodes_native.any() else None,
    }
    _write_rtstruct(series_files, nodes_native, out / "RTSTRUCT_pred.dcm")
    evidence = DualOutputSwinUNETR.evidence_map(voxel_out)[0, 0].numpy()
    _evidence_png(np.asarray(image[0]), pred_plan[0].numpy(), evidence, None if region is None else
                  region[0, 0].numpy(), result, out / "evidence.png")
    (out / "result.json").write_text(json.dumps(result, indent=1))
    log(f"p(ECE) = {prob:.3f} (threshold {threshold:.3f}: {'ECE+' if result['ece_positive'] else 'ECE-'}); "
        f"predicted nodal volume {result['nodes_volume_ml']:.1f} ml; outputs in {out}")
    return result


def _write_rtstruct(series_files: list[Path], nodes_native: np.ndarray, path: Path) -> None:
    """rt-utils RTSTRUCT on exactly the series used (linked into a clean folder: rt-utils reads every file)."""
    from rt_utils import RTStructBuilder
    with tempfile.TemporaryDirectory() as tmp:
        for i, f in enumerate(series_files):
            os.symlink(Path(f).resolve(), Path(tmp) / f"{i:05d}.dcm")
        try:
            rtstruct = RTStructBuilder.create_new(dicom_series_path=tmp)
        except Exception as exc:
            raise InferenceError(f"rt-utils cannot build an RTSTRUCT on this series ({exc})") from exc
        if nodes_native.any():
            # ours: (columns, rows, slices); rt-utils: (rows, columns, slices), same slice order (normal)
            rtstruct.add_roi(mask=nodes_native.transpose(1, 0, 2).astype(bool), name=ROI_NAME,
                             color=[255, 0, 0], description="ECE-FL predicted nodal region")
            _fix_rt_utils_geometry(rtstruct)
        rtstruct.ds.StructureSetLabel = "ECEFL"
        rtstruct.save(str(path))


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


def _evidence_png(image, pred, evidence, region, result, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    focus = region if region is not None and region.any() else pred
    if focus.any():
        x, y, z = (int(v) for v in np.round(np.argwhere(focus > 0).mean(0)))
    else:
        x, y, z = (s // 2 for s in image.shape)
    lim = float(np.abs(evidence).max()) or 1.0
    from .report import radiological
    views = [(name, radiological(image[cut]), radiological(pred[cut]), radiological(evidence[cut]))
             for name, cut in (("axial", np.s_[:, :, z]), ("coronal", np.s_[:, y, :]))]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.5))
    for ax, (name, img, msk, ev) in zip(axes, views):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
        ax.imshow(np.ma.masked_where(np.abs(ev) < 0.02 * lim, ev), cmap="RdBu_r", vmin=-lim, vmax=lim, alpha=0.7)
        if msk.any():
            ax.contour(msk.astype(float), levels=[0.5], colors="red", linewidths=1.0)
        ax.set_title(name)
        ax.set_axis_off()
    fig.suptitle(f"p(ECE) = {result['ece_probability']:.2f} ({'ECE+' if result['ece_positive'] else 'ECE−'} at "
                 f"threshold {result['threshold']:.2f}); red contour: predicted nodes; heat: evidence")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
