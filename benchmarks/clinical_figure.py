"""What a radiologist opens after `ecefl infer`: the DICOM SEG (read back with highdicom) and the evidence volume
(evidence.nii.gz) over the patient's own CT slices, as one PNG for the README.

    python benchmarks/clinical_figure.py --infer OUT/HNSCC-01-0001 --ct-dir ../shared/realdata/.../CT --out docs/clinical_outputs.png

The CT is read with pydicom and ordered along the slice normal; the SEG's frames are matched to those slices by
their source SOP Instance UIDs (as a viewer does), so the figure shows the DICOM objects, not our NIfTI.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def read_ct(ct_dir: Path):
    import pydicom
    slices = []
    for path in sorted(p for p in Path(ct_dir).rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except Exception:
            continue
        if getattr(ds, "Modality", "") == "CT":
            slices.append(ds)
    iop = np.array([float(v) for v in slices[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    slices.sort(key=lambda ds: float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal))
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices])
    return hu, [str(ds.SOPInstanceUID) for ds in slices]


def read_seg(seg_path: Path, uids: list[str]) -> np.ndarray:
    import highdicom as hd
    seg = hd.seg.segread(seg_path)
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0] > 0


def render(infer_dir: Path, ct_dir: Path, out: Path, n_panels: int = 3) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "custom"))
    from ecefl.report import around, evidence_heat, evidence_limit
    hu, uids = read_ct(ct_dir)                                     # (slices, rows, columns)
    seg = read_seg(infer_dir / "SEG_pred.dcm", uids)              # the same
    evidence = np.asarray(nib.load(infer_dir / "evidence.nii.gz").dataobj).transpose(2, 1, 0)
    # the slices that carry the most evidence (what decided the case), else the SEG's largest
    per_slice = np.abs(evidence).sum(axis=(1, 2)) if evidence.any() else seg.sum(axis=(1, 2))
    chosen = np.argsort(per_slice)[::-1][:n_panels] if per_slice.any() else \
        np.linspace(0, len(hu) - 1, n_panels + 2)[1:-1].astype(int)
    chosen = sorted(int(k) for k in chosen)
    limit = evidence_limit(evidence)
    # zoomed to the nodes and their evidence on those slices (2.4 cm around them, 6.4 cm at least, at ~1 mm pixels)
    rows, cols = around(*(seg[k] for k in chosen), *(np.abs(evidence[k]) >= 0.05 * limit for k in chosen),
                        margin=24, least=64)
    fig, axes = plt.subplots(2, len(chosen), figsize=(4.2 * len(chosen), 8.4))
    axes = np.asarray(axes).reshape(2, -1)
    for col, k in enumerate(chosen):
        for row in range(2):
            ax = axes[row, col]
            ax.imshow(np.clip(hu[k][rows, cols], -160, 240), cmap="gray")  # soft-tissue window W400 / L40
            if row == 0:
                if seg[k][rows, cols].any():
                    ax.contour(seg[k][rows, cols], levels=[0.5], colors="red", linewidths=1.2)
                ax.set_title(f"SEG (read back), slice {k + 1}/{len(hu)}", fontsize=9)
            else:
                ax.imshow(evidence_heat(evidence[k][rows, cols], limit))
                if seg[k][rows, cols].any():
                    ax.contour(seg[k][rows, cols], levels=[0.5], colors="yellow", linewidths=0.8)
                ax.set_title(f"evidence.nii.gz, slice {k + 1}", fontsize=9)
            ax.axis("off")
    fig.suptitle(f"`ecefl infer` outputs over the patient's CT ({infer_dir.name}); evidence against the average "
                 "training case: red raises, blue lowers the ECE logit", fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--infer", required=True, type=Path, help="one patient's `ecefl infer` output folder")
    p.add_argument("--ct-dir", required=True, type=Path, help="that patient's CT series (DICOM files)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    args = p.parse_args()
    print(render(args.infer, args.ct_dir, args.out))


if __name__ == "__main__":
    main()
