"""Plausibility of a model's predicted nodes on real head-and-neck CTs (no ECE labels there).

    python benchmarks/realct.py --model workspace/demo/fl/ece_finetune/best_global_model.pt --out workspace/bench_realct

Runs `ecefl infer` (the code a hospital runs) on the real HNSCC planning CTs in ../shared/realdata, timed (wall and
CPU seconds; also with the full sliding window over air: inside the body its nodes must be the same, and its
evidence differs only through nodes the full window finds in air, which enter the case's pooled logit), and
measures, on each CT's own grid: the predicted nodal volume (ml), the share of it inside the body (HU > -300,
largest connected component, holes filled) and the number of connected components. A neck holds at most tens of
ml of nodes, all inside the body. These CTs are downsampled to 7.5-7.8 mm pixels, coarser than any model here calls
ECE on (`ecefl infer` flags them: ece_assessable false); their ECE probability is recorded, not judged. Prints and
writes realct.json.
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
    inside = hu > -300
    labels, n = ndimage.label(inside)
    if n == 0:
        return inside
    largest = labels == (np.argmax(np.bincount(labels.ravel())[1:]) + 1)
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
        hu = _native_hu(patient, pred.shape)
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
                              "spacing_mm": res["acquisition"]["spacing_mm"]}
        print(patient.name, json.dumps(rows[patient.name]), flush=True)
    return rows


def _native_hu(patient: Path, shape):
    """The CT in HU on the grid infer writes nodes_pred.nii.gz on (site preprocessing's reader)."""
    from ecefl.infer import _read_patient
    from site_preprocess.config import SiteConfig
    ct, _, _ = _read_patient(patient, False, SiteConfig())
    assert tuple(ct.hu.shape) == tuple(shape), (ct.hu.shape, shape)
    return ct.hu


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
