"""`ecefl preprocess`: a site's DICOM folder -> NIfTI images/masks, datalist.json and qc_report.json.

Outputs outside OUT/private/ carry no patient identifier: cases are named by keyed pseudonyms, reasons never echo
paths, IDs, UIDs or ROI free text. OUT/private/ holds the link back to patients and the detailed log.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .config import SiteConfig
from .dicom_series import CtVolume, load_ct, scan_folder, select_series
from .dilation import soft_tissue_dilation
from .errors import CaseError, UsageError
from .labels import Labels, read_labels
from .outputs import write_csv, write_json, write_nifti
from .pseudonym import case_id as make_case_id
from .pseudonym import load_or_create_secret
from .rtstruct import check_frame_of_reference, nodal_rois, rasterise, referenced_series

EXIT_OK, EXIT_STRICT_FAIL, EXIT_USAGE, EXIT_SOME_FAILED = 0, 1, 2, 3


@dataclass
class CaseOutcome:
    record: dict  # goes into qc_report.json (no PHI)
    id_row: list  # private/id_map.csv
    details: list[list] = field(default_factory=list)  # private/qc_details.csv
    roi_rows: list[list] = field(default_factory=list)  # private/roi_mapping.csv


def run_preprocess(dicom_root: Path, labels_csv: Path, out: Path, cfg: SiteConfig, force: bool = False,
                   strict: bool = False, progress: bool = True) -> int:
    dicom_root, out = Path(dicom_root), Path(out)
    if not dicom_root.is_dir():
        raise UsageError(f"DICOM root {dicom_root} is not a folder; pass the folder that holds one sub-folder "
                         "per patient")
    if out.resolve() == dicom_root.resolve() or dicom_root.resolve() in out.resolve().parents:
        raise UsageError("--out must not be inside the DICOM root (inputs are never modified)")
    labels = read_labels(labels_csv)
    patient_dirs = sorted(d for d in dicom_root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not patient_dirs:
        raise UsageError(f"DICOM root {dicom_root} has no patient sub-folders")
    out.mkdir(parents=True, exist_ok=True)
    secret = load_or_create_secret(cfg.secret_path(), out)
    previous = _previous_case_ids(out)

    outcomes: list[CaseOutcome] = []
    seen_patients: dict[str, str] = {}
    bar = tqdm(patient_dirs, desc="preprocess", unit="case", disable=not progress)
    for folder in bar:
        outcome = _process_case(folder, labels, out, cfg, secret, previous, force, seen_patients)
        outcomes.append(outcome)
        bar.set_postfix(status=outcome.record["status"])

    records = [o.record for o in outcomes]
    found_ids = {o.id_row[2] for o in outcomes if o.id_row[2]}
    summary = _summary(records, labels, found_ids)
    write_json(out / "qc_report.json", {"cases": records, "summary": summary, "config": cfg.to_dict()})
    write_json(out / "datalist.json", _datalist(records))
    write_csv(out / "private" / "id_map.csv", ["case_id", "patient_folder", "patient_id"],
              [o.id_row for o in outcomes])
    write_csv(out / "private" / "qc_details.csv", ["case_id", "file", "detail"],
              [d for o in outcomes for d in o.details])
    write_csv(out / "private" / "roi_mapping.csv", ["case_id", "roi_name", "nodal", "why"],
              [r for o in outcomes for r in o.roi_rows])
    _print_summary(records, summary, out)
    if summary["n_written"] == 0:
        return EXIT_USAGE
    if summary["failed"]:
        return EXIT_STRICT_FAIL if strict else EXIT_SOME_FAILED
    return EXIT_OK


def _previous_case_ids(out: Path) -> dict[str, str]:
    path = out / "private" / "id_map.csv"
    if not path.exists():
        return {}
    import csv
    with open(path, newline="") as fh:
        return {row["patient_folder"]: row["case_id"] for row in csv.DictReader(fh)}


def _process_case(folder: Path, labels: Labels, out: Path, cfg: SiteConfig, secret: bytes,
                  previous: dict[str, str], force: bool, seen_patients: dict[str, str]) -> CaseOutcome:
    t0 = time.perf_counter()
    cached_id = previous.get(folder.name)
    if cached_id and not force:
        done = _load_done_record(out, cached_id)
        if done is not None:
            pid = done.pop("_patient_id", "")
            seen_patients[pid] = cached_id
            return CaseOutcome(record=done, id_row=[cached_id, folder.name, pid])
    scan = scan_folder(folder)
    patient_id = _patient_id(scan)
    cid = make_case_id(secret, patient_id if patient_id else f"folder:{folder.name}")
    record = {"case_id": cid, "status": "failed", "reason": "", "roi_names_used": [], "n_slices": 0,
              "spacing": None, "warnings": []}
    outcome = CaseOutcome(record=record, id_row=[cid, folder.name, patient_id])
    try:
        if patient_id and patient_id in seen_patients:
            raise CaseError(f"the same PatientID appears in two patient folders (the other is "
                            f"{seen_patients[patient_id]}); merge or remove the duplicate export")
        if patient_id:
            seen_patients[patient_id] = cid
        if scan.unreadable:
            outcome.details += [[cid, str(p), e] for p, e in scan.unreadable]
            raise CaseError(f"{len(scan.unreadable)} file(s) cannot be read as DICOM (truncated or corrupt); "
                            "re-export them or remove non-DICOM files from the patient folder "
                            "(paths in private/qc_details.csv)")
        rs, rs_problem = _choose_rtstruct(scan, cfg)
        ref = None
        if rs is not None:
            _, ref_series = referenced_series(rs)
            present = [s for s in ref_series if s in scan.series]
            ref = present[0] if present else (next(iter(ref_series)) if ref_series else None)
        _, files, warnings = select_series(scan, ref)
        ct = load_ct(files, cfg.slice_position_tolerance)
        record["warnings"] += warnings + ct.warnings
        record["n_slices"] = int(ct.hu.shape[2])
        record["spacing"] = [round(float(s), 4) for s in ct.spacing_xyz]
        record["shape"] = [int(s) for s in ct.hu.shape]
        write_nifti(out / "images" / f"{cid}.nii.gz", ct.hu, ct.affine_ras)
        record["usable_for_pretraining"] = True
        label = labels.ece.get(patient_id)
        record["ece"] = label
        try:
            if rs_problem:
                raise CaseError(rs_problem)
            if rs is None:
                raise CaseError("no RTSTRUCT in the patient folder", status="unlabeled")
            masks = _nodal_masks(rs, ct, cfg, record, outcome)
        except CaseError as exc:
            if label is None:
                record.update(status="unlabeled", reason=f"CT usable for pretraining; {exc.reason}")
            else:
                record.update(status="failed", reason=f"labelled case without usable nodal contours: "
                                                      f"{exc.reason} (CT kept for pretraining)")
            outcome.details.append([cid, "", exc.detail or exc.reason])
        else:
            nodes, dilated = masks
            write_nifti(out / "nodes" / f"{cid}.nii.gz", nodes, ct.affine_ras)
            write_nifti(out / "labels" / f"{cid}.nii.gz", dilated, ct.affine_ras)
            voxel_ml = float(np.prod(ct.spacing_xyz)) / 1000.0
            record["nodes_volume_ml"] = round(float(nodes.sum()) * voxel_ml, 3)
            record["label_volume_ml"] = round(float(dilated.sum()) * voxel_ml, 3)
            if label is None:
                record.update(status="unlabeled", reason="nodal contours present but the patient is not in "
                                                         "labels.csv; add its ECE label to use it for fine-tuning")
            else:
                record.update(status="ok", reason="")
    except CaseError as exc:
        record.update(status="failed", reason=exc.reason, usable_for_pretraining=False)
        outcome.details.append([cid, "", exc.detail or exc.reason])
    except Exception as exc:  # an unforeseen defect must not stop the other cases
        record.update(status="failed", usable_for_pretraining=False,
                      reason=f"unexpected {type(exc).__name__} while reading this case; see private/qc_details.csv")
        outcome.details.append([cid, "", f"{type(exc).__name__}: {exc}"])
    record["warnings"] = sorted(set(record["warnings"]))
    record["seconds"] = round(time.perf_counter() - t0, 3)
    if record["status"] in ("ok", "unlabeled"):
        write_json(out / "private" / "cases" / f"{cid}.json", dict(record, _patient_id=patient_id))
    return outcome


def _load_done_record(out: Path, cid: str) -> dict | None:
    import json
    path = out / "private" / "cases" / f"{cid}.json"
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    needed = [out / "images" / f"{cid}.nii.gz"]
    if record.get("status") == "ok":
        needed += [out / "nodes" / f"{cid}.nii.gz", out / "labels" / f"{cid}.nii.gz"]
    return record if all(p.exists() for p in needed) else None


def _patient_id(scan) -> str:
    for files in scan.series.values():
        pid = str(files[0][1].get("PatientID", "")).strip()
        if pid:
            return pid
    for _, ds in scan.rtstructs:
        pid = str(ds.get("PatientID", "")).strip()
        if pid:
            return pid
    return ""


def _choose_rtstruct(scan, cfg: SiteConfig):
    """(dataset or None, problem or None). Several structure sets: the one with nodal ROIs, if unique."""
    if not scan.rtstructs:
        return None, None
    if len(scan.rtstructs) == 1:
        return scan.rtstructs[0][1], None
    with_nodes = []
    for _, ds in scan.rtstructs:
        try:
            nodal_rois(ds, cfg)
            with_nodes.append(ds)
        except CaseError:
            pass
    if len(with_nodes) == 1:
        return with_nodes[0], None
    return None, (f"{len(scan.rtstructs)} RTSTRUCTs in the folder, {len(with_nodes)} with nodal ROIs; keep only "
                  "the approved structure set")


def _nodal_masks(rs, ct: CtVolume, cfg: SiteConfig, record: dict, outcome: CaseOutcome):
    check_frame_of_reference(rs, ct)
    rois = nodal_rois(rs, cfg)
    outcome.roi_rows += [[record["case_id"], name, int(nodal), why] for name, nodal, why in rois.decisions]
    record["roi_names_used"] = rois.names
    record["warnings"] += rois.warnings
    nodes, warnings = rasterise(rois, ct, cfg.contour_plane_tolerance)
    record["warnings"] += warnings
    if not nodes.any():
        raise CaseError("the nodal contours cover no voxel centre of the CT (too small or outside the image)")
    dilated = soft_tissue_dilation(nodes, ct.hu, ct.spacing_xyz, cfg.dilation_margin_mm, cfg.soft_tissue_hu)
    return nodes, dilated


def _summary(records: list[dict], labels: Labels, found_ids: set[str]) -> dict:
    status = [r["status"] for r in records]
    ok = [r for r in records if r["status"] == "ok"]
    return {
        "n_cases": len(records),
        "ok": status.count("ok"),
        "unlabeled": status.count("unlabeled"),
        "failed": status.count("failed"),
        "positives": sum(1 for r in ok if r.get("ece") == 1),
        "negatives": sum(1 for r in ok if r.get("ece") == 0),
        "n_written": sum(1 for r in records if r.get("usable_for_pretraining")),
        "labels_without_dicom": len(set(labels.ece) - found_ids),
        "label_rows_rejected": labels.rejected_rows,
        "seconds_per_case_mean": round(float(np.mean([r["seconds"] for r in records])), 3) if records else 0.0,
    }


def _datalist(records: list[dict]) -> dict:
    training, unlabeled = [], []
    for r in records:
        cid = r["case_id"]
        if r["status"] == "ok":
            training.append({"image": f"images/{cid}.nii.gz", "label": f"labels/{cid}.nii.gz",
                             "nodes": f"nodes/{cid}.nii.gz", "ece": int(r["ece"]), "case_id": cid})
        elif r.get("usable_for_pretraining"):
            unlabeled.append({"image": f"images/{cid}.nii.gz", "case_id": cid})
    return {"training": training, "unlabeled": unlabeled}


def _print_summary(records: list[dict], summary: dict, out: Path) -> None:
    print(f"\n{summary['n_cases']} cases: {summary['ok']} ok ({summary['positives']} ECE+, "
          f"{summary['negatives']} ECE-), {summary['unlabeled']} unlabelled, {summary['failed']} failed; "
          f"{summary['seconds_per_case_mean']:.2f} s/case")
    for r in records:
        if r["status"] != "ok":
            print(f"  {r['case_id']} {r['status']}: {r['reason']}")
    if summary["labels_without_dicom"]:
        print(f"  {summary['labels_without_dicom']} patient(s) in labels.csv have no DICOM folder")
    if summary["label_rows_rejected"]:
        print(f"  {len(summary['label_rows_rejected'])} labels.csv row(s) rejected: "
              + ", ".join(f"row {r['row']} ({r['reason']})" for r in summary["label_rows_rejected"]))
    print(f"  outputs: {out}/datalist.json, {out}/qc_report.json; patient links in {out}/private/ (site-only)")
