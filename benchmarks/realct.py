"""Plausibility of a model's predicted nodes on real head-and-neck CTs (no ECE labels there).

    python benchmarks/realct.py --model workspace/demo/fl/ece_finetune/best_global_model.pt --out workspace/bench_realct

Runs `ecefl infer` (the code a hospital runs) on the real HNSCC planning CTs in ../shared/realdata, timed (wall and
CPU seconds; also with the full sliding window over air: inside the body its nodes must be the same, and its
evidence differs only through nodes the full window finds in air, which enter the case's pooled logit), and
measures, on each CT's own grid: the predicted nodal volume (ml), the share of it inside the body (HU > -300,
largest connected component, holes filled), the number of connected components, and where the nodal volume lies
(`where_nodes`): more than 10 cm to either side of the body's midline on its slice (the shoulders and arms: no
cervical node lies there), inside the organs the CT's own RTSTRUCT contours (cord, brainstem, parotids), and inside
bone rings (skull, spinal canal). A neck holds at most tens of ml of nodes, all inside the body. A coronal and a
sagittal projection of the nodes over the CT go to OUT/<patient>_nodes.png. These CTs are downsampled to 7.5-7.8 mm
pixels, coarser than any model here calls ECE on (`ecefl infer` flags them: ece_assessable false); their ECE
probability is recorded, not judged. Prints and writes realct.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REALDATA = REPO.parent / "shared" / "realdata" / "radiotherapyai_hnscc"
sys.path.insert(0, str(REPO / "custom"))
sys.path.insert(0, str(REPO))


def body_mask(hu):
    import numpy as np
    from scipy import ndimage

    from ecefl.engine import largest_component
    largest = largest_component(hu > -300)
    return np.stack([ndimage.binary_fill_holes(s) for s in largest.transpose(2, 0, 1)]).transpose(1, 2, 0)


def measure(model: str, out: Path) -> dict:
    import nibabel as nib
    import numpy as np
    from scipy import ndimage

    from ecefl.infer import infer
    rows = {}
    for patient in sorted(p for p in REALDATA.iterdir() if p.is_dir()):
        timing = {}
        for skip_air, name in ((False, "full_window"), (True, "infer")):  # `ecefl infer` skips air windows
            t0, c0 = time.perf_counter(), time.process_time()
            res = infer(model, patient, out / name / patient.name, log=lambda *_: None, skip_air=skip_air)
            timing[name] = {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)}
        pred = np.asarray(nib.load(out / "infer" / patient.name / "nodes_pred.nii.gz").dataobj) > 0
        full = np.asarray(nib.load(out / "full_window" / patient.name / "nodes_pred.nii.gz").dataobj) > 0
        ev = {k: np.asarray(nib.load(out / k / patient.name / "evidence.nii.gz").dataobj) for k in timing}
        ct = _native_ct(patient, pred.shape)
        hu = ct.hu
        body = body_mask(hu)
        n_comp = int(ndimage.label(pred)[1])
        soft_tissue = hu > -250  # above the HU window's floor: what an air window holds none of
        rows[patient.name] = {**timing,
                              "nodes_differ_from_full_window_voxels": int((pred != full).sum()),
                              "of_them_above_minus_250_hu": int(((pred != full) & soft_tissue).sum()),
                              "evidence_max_abs_diff_inside_body": float(np.abs(ev["infer"] - ev["full_window"])[body].max()),
                              "nodes_volume_ml": res["nodes_volume_ml"], "components": n_comp,
                              "inside_body_fraction": float((pred & body).sum() / pred.sum()) if pred.any() else None,
                              "ece_probability": res["ece_probability"], "ece_assessable": res["ece_assessable"],
                              "spacing_mm": res["acquisition"]["spacing_mm"],
                              **where_nodes(patient, ct, pred, body)}
        projection_png(ct, pred, out / f"{patient.name}_nodes.png")
        print(patient.name, json.dumps(rows[patient.name]), flush=True)
    return rows


def where_nodes(patient: Path, ct, pred, body) -> dict:
    """Predicted nodal volume (ml) by place: beyond 10 cm of the body's midline on each slice (patient left-right:
    the mean position of the CT columns the body occupies there; measured independently of the model's own neck gate,
    engine.neck_region, which takes the centre of the body's extent on the plan grid), inside each organ the CT's RTSTRUCT contours (rasterised
    like the nodal ROIs at site preprocessing), inside bone rings (per slice, what bone above 300 HU encloses)."""
    import numpy as np
    from scipy import ndimage

    from site_preprocess.dicom_series import scan_folder
    from site_preprocess.rtstruct import NodalRois, rasterise
    ml = float(np.prod(ct.pixel_spacing)) * ct.slice_spacing / 1000.0
    column_mm = np.arange(pred.shape[0]) * ct.pixel_spacing[1]
    lateral = np.zeros(pred.shape, dtype=bool)
    for k in range(pred.shape[2]):
        in_body = np.nonzero(body[:, :, k].any(1))[0]
        if in_body.size:
            lateral[:, :, k] = (np.abs(column_mm - column_mm[in_body].mean()) > 100.0)[:, None]
    bone = ct.hu > 300
    ringed = np.stack([ndimage.binary_fill_holes(bone[:, :, k]) & ~bone[:, :, k] for k in range(bone.shape[2])], 2)
    organs = {}
    scan = scan_folder(patient)
    if len(scan.rtstructs) == 1:
        rs = scan.rtstructs[0][1]
        names = {int(r.ROINumber): str(r.ROIName) for r in rs.StructureSetROISequence}
        for rc in rs.ROIContourSequence:
            name = names.get(int(rc.ReferencedROINumber), "?")
            contours = [(str(c.get("ContourGeometricType", "CLOSED_PLANAR")),
                         np.asarray([float(v) for v in c.ContourData]).reshape(-1, 3))
                        for c in rc.get("ContourSequence", [])]
            if contours:
                mask = rasterise(NodalRois([name], [], {name: contours}), ct, 0.5)[0] > 0
                organs[name] = round(float((pred & mask).sum() * ml), 2)
    return {"nodes_beyond_10cm_of_midline_ml": round(float((pred & lateral).sum() * ml), 1),
            "nodes_in_contoured_organs_ml": organs,
            "nodes_in_bone_rings_ml": round(float((pred & ringed).sum() * ml), 1)}


def projection_png(ct, pred, path: Path) -> None:
    """Coronal and sagittal mean-HU projections with the nodes' projection in red: where the model marks."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, axis, name in ((axes[0], 1, "coronal"), (axes[1], 0, "sagittal")):
        aspect = ct.slice_spacing / ct.pixel_spacing[1 - axis]
        ax.imshow(np.clip(ct.hu, -200, 300).mean(axis).T[::-1], cmap="gray", aspect=aspect)
        nodes = pred.any(axis).T[::-1]
        ax.imshow(np.ma.masked_where(~nodes, nodes), cmap="autumn", alpha=0.6, aspect=aspect)
        ax.set_title(f"{name}: predicted nodes (projection)", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _native_ct(patient: Path, shape):
    """The CT (HU, geometry) on the grid infer writes nodes_pred.nii.gz on (site preprocessing's reader)."""
    from ecefl.infer import _read_patient
    from site_preprocess.config import SiteConfig
    ct, _, _ = _read_patient(patient, False, SiteConfig())
    assert tuple(ct.hu.shape) == tuple(shape), (ct.hu.shape, shape)
    return ct


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--out", default="workspace/bench_realct")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = measure(args.model, out)
    (out / "realct.json").write_text(json.dumps({"model": args.model, "patients": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
