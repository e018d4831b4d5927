"""An independent test hospital: neck CT series + RTSTRUCT (gross nodal targets, OARs) + ECE labels.

Why: the model is trained and tuned on the project's own synthetic hospitals (site_preprocess/synth/). This generator
was written separately, without reading that code: its own anatomy, scanner model (kernel-shaped noise, slice
profile, artefacts) and its own rendering of extranodal extension (ECE). It is an honest out-of-distribution
hospital: use it ONLY to evaluate, never to train or tune.

    python benchmarks/independent_hospital.py --out DIR --patients 160 --seed 7 [--workers 2]

writes DIR/dicom/<patient>/ (CT slices in random file order + one RTSTRUCT), DIR/labels.csv (patient_id,ece) and
DIR/truth.json (generator truth per patient: ece, subtle/overt, node volumes in ml; keep it local).
Coordinates: DICOM patient LPS in mm (+x patient left, +y posterior, +z cranial); anatomy z = 0 at the sternal
notch, each patient then shifted by a scanner-table offset.

This file writes the DICOM files, labels.csv and truth.json; the patient model (anatomy, nodes and ECE, scanner,
contours) lives in the package benchmarks/indep_neck/.
"""
from __future__ import annotations

import argparse
import csv
import json
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from indep_neck.patient import make_patient  # benchmarks/ is on sys.path: the script's folder, or the tests'

CT_STORAGE, RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.481.3"


def ds_of(**tags):
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    return ds


def file_dataset(sop_class, sop_uid, common):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, sop_uid
    meta.TransferSyntaxUID, meta.ImplementationClassUID = ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID
    ds = ds_of(SOPClassUID=sop_class, SOPInstanceUID=sop_uid, **common)
    ds.file_meta = meta
    return ds


def fmt(values):
    return [f"{float(v):.3f}".rstrip("0").rstrip(".") for v in values]


def write_patient(root, seed, index, ece, subtle):
    """Write one patient's CT series + RTSTRUCT below root/dicom/; return its truth record."""
    t0 = time.perf_counter()
    scan, x, y, z, hu, rois, truth, rng = make_patient(seed, index, ece, subtle)
    uid = lambda *what: generate_uid(entropy_srcs=[f"indep/{seed}/{index}", *map(str, what)])  # noqa: E731
    patient_id, name = f"{seed % 100:02d}{index + 1:05d}", f"IND^{index + 1:04d}"
    study_date = f"{rng.integers(2014, 2024)}{rng.integers(1, 13):02d}{rng.integers(1, 29):02d}"
    study_time = f"{rng.integers(7, 18):02d}{rng.integers(0, 60):02d}{rng.integers(0, 60):02d}"
    common = dict(PatientName=name, PatientID=patient_id, PatientBirthDate=f"{rng.integers(1935, 1985)}0101",
                  PatientSex=str(rng.choice(["M", "F"], p=[0.75, 0.25])), StudyInstanceUID=uid("study"),
                  StudyDate=study_date, StudyTime=study_time, StudyID=f"{rng.integers(1000, 9999)}",
                  AccessionNumber=f"A{rng.integers(10 ** 7, 10 ** 8)}", ReferringPhysicianName="ONCOLOGY^RADIATION",
                  StudyDescription="RT PLANNING NECK", InstitutionName="Independent Test Hospital",
                  Manufacturer=scan.vendor, ManufacturerModelName=scan.model, FrameOfReferenceUID=uid("frame"),
                  SpecificCharacterSet="ISO_IR 100")
    folder = root / "dicom" / f"IND_{index + 1:04d}"
    layout = rng.integers(3)  # Eclipse-style flat, CT/ + RTSTRUCT/ sub-folders, PACS-like random names
    ct_dir = folder / ("CT" if layout == 1 else f"{study_date}/{rng.integers(2, 9)}_CT" if layout == 2 else "")
    ct_dir.mkdir(parents=True, exist_ok=True)
    offset = scan.offset
    ipp_z = z + offset[2]
    order = np.argsort(-ipp_z) if scan.descending else np.argsort(ipp_z)  # instance numbering along the scan
    instance = np.empty(len(z), int)
    instance[order] = np.arange(1, len(z) + 1)
    ct_uids = [uid("ct", k) for k in range(len(z))]
    series_uid, names = uid("ct-series"), rng.permutation(len(z)) + 1
    win = dict(WindowCenter="40", WindowWidth="400")
    for k in rng.permutation(len(z)):  # written in random order; file names do not follow z
        ds = file_dataset(CT_STORAGE, ct_uids[k], common)
        ds.update(ds_of(Modality="CT", SeriesInstanceUID=series_uid, SeriesNumber=2, InstanceNumber=int(instance[k]),
                        SeriesDescription=f"Neck {scan.thickness}mm {scan.kernel}",
                        ImageType=["ORIGINAL", "PRIMARY", "AXIAL"],
                        PatientPosition="HFS", BodyPartExamined="NECK", KVP=scan.kvp, ConvolutionKernel=scan.kernel,
                        SliceThickness=fmt([scan.thickness])[0], PositionReferenceIndicator="",
                        ImagePositionPatient=fmt([x[0] + offset[0], y[0] + offset[1], ipp_z[k]]),
                        ImageOrientationPatient=["1", "0", "0", "0", "1", "0"], SliceLocation=fmt([ipp_z[k]])[0],
                        PixelSpacing=fmt([scan.pixel, scan.pixel]), Rows=scan.matrix, Columns=scan.matrix,
                        SamplesPerPixel=1, PhotometricInterpretation="MONOCHROME2", BitsAllocated=16, BitsStored=16,
                        HighBit=15, PixelRepresentation=1, RescaleIntercept=str(scan.intercept), RescaleSlope="1",
                        RescaleType="HU", **win))
        if truth["contrast"] != "none":
            ds.ContrastBolusAgent = "IOHEXOL 350"
        ds.PixelData = (hu[k].astype(np.int32) - scan.intercept).astype("<i2").tobytes()
        fname = {0: f"CT.{ct_uids[k]}.dcm", 1: f"IM{names[k]:04d}.dcm", 2: f"{rng.integers(16 ** 8):08X}"}[layout]
        ds.save_as(ct_dir / fname, enforce_file_format=True)
    # RTSTRUCT: contours in patient coordinates, each referencing the CT slice it lies on
    by_z = {round(float(v), 2): k for k, v in enumerate(z)}
    image_ref = lambda k: ds_of(ReferencedSOPClassUID=CT_STORAGE, ReferencedSOPInstanceUID=ct_uids[k])  # noqa: E731
    rs = file_dataset(RTSTRUCT_STORAGE, uid("rs"), common)
    rs.update(ds_of(Modality="RTSTRUCT", SeriesInstanceUID=uid("rs-series"), SeriesNumber=99, InstanceNumber=1,
                    StructureSetLabel="RTPLAN_NECK", StructureSetDate=study_date, StructureSetTime=study_time,
                    SeriesDescription="Structure set"))
    rs.ReferencedFrameOfReferenceSequence = [ds_of(
        FrameOfReferenceUID=common["FrameOfReferenceUID"], RTReferencedStudySequence=[ds_of(
            ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=common["StudyInstanceUID"],
            RTReferencedSeriesSequence=[ds_of(SeriesInstanceUID=series_uid,
                                              ContourImageSequence=[image_ref(k) for k in range(len(z))])])])]
    rs.StructureSetROISequence, rs.ROIContourSequence, rs.RTROIObservationsSequence = [], [], []
    for number, (roi_name, kind, contours) in enumerate(rois, 1):
        rs.StructureSetROISequence.append(ds_of(ROINumber=number, ROIName=roi_name, ROIGenerationAlgorithm="MANUAL",
                                                ReferencedFrameOfReferenceUID=common["FrameOfReferenceUID"]))
        items = [ds_of(ContourImageSequence=[image_ref(by_z[round(float(c[0, 2]), 2)])],
                       ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(c),
                       ContourData=fmt((c + offset).ravel())) for c in contours]
        rs.ROIContourSequence.append(ds_of(ReferencedROINumber=number, ContourSequence=items,
                                           ROIDisplayColor=[int(v) for v in rng.integers(0, 256, 3)]))
        rs.RTROIObservationsSequence.append(ds_of(ObservationNumber=number, ReferencedROINumber=number,
                                                  RTROIInterpretedType=kind, ROIInterpreter=""))
    rs_dir = folder / ("RTSTRUCT" if layout == 1 else "")
    rs_dir.mkdir(parents=True, exist_ok=True)
    rs.save_as(rs_dir / (f"RS.{rs.SOPInstanceUID}.dcm" if layout != 2 else f"{rng.integers(16 ** 8):08X}"),
               enforce_file_format=True)
    return dict(patient_id=patient_id, folder=folder.name, **truth, seconds=round(time.perf_counter() - t0, 2))


def generate(out, patients, seed, workers=1):
    """Write the hospital; ECE labels balanced (a random half), 28 % of the positives subtle."""
    out = Path(out)
    (out / "dicom").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 10 ** 6])
    ece = rng.permutation(np.arange(patients) % 2 == 1)
    positives = np.flatnonzero(ece)
    subtle = np.isin(np.arange(patients), rng.choice(positives, int(0.28 * len(positives) + 0.5), replace=False))
    jobs = [(out, seed, i, bool(ece[i]), bool(ece[i] and subtle[i])) for i in range(patients)]
    if workers > 1:
        with Pool(workers) as pool:
            records = pool.starmap(write_patient, jobs)
    else:
        records = [write_patient(*j) for j in jobs]
    with open(out / "labels.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient_id", "ece"])
        w.writerows([r["patient_id"], r["ece"]] for r in records)
    (out / "truth.json").write_text(json.dumps({"generator": "benchmarks/independent_hospital.py", "seed": seed,
                                                "patients": records}, indent=1))
    return records


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--patients", type=int, default=160)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    records = generate(args.out, args.patients, args.seed, args.workers)
    print(f"{len(records)} patients ({sum(r['ece'] for r in records)} ECE+) in {time.perf_counter() - t0:.0f} s "
          f"-> {args.out}")


if __name__ == "__main__":
    main()
