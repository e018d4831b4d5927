"""Writes real CT Image Storage and RT Structure Set Storage files with pydicom, as a scanner/TPS would."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
IMPLEMENTATION_UID = "1.2.826.0.1.3680043.8.498.1"


def det_uid(*parts: object) -> str:
    """A deterministic UID (same seed -> same files) derived from the given parts."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = IMPLEMENTATION_UID
    return meta


def patient_module(ds: Dataset, phi: dict) -> None:
    ds.PatientName = phi["name"]
    ds.PatientID = phi["patient_id"]
    ds.PatientBirthDate = phi["birth_date"]
    ds.PatientSex = phi["sex"]
    ds.StudyInstanceUID = phi["study_uid"]
    ds.StudyDate = phi["study_date"]
    ds.StudyTime = phi["study_time"]
    ds.StudyID = phi["study_id"]
    ds.AccessionNumber = phi["accession"]
    ds.ReferringPhysicianName = phi["physician"]
    ds.InstitutionName = phi["institution"]
    ds.FrameOfReferenceUID = phi["for_uid"]


def write_ct_series(out_dir: Path, hu: np.ndarray, positions: list[np.ndarray], orientation: list[float],
                    pixel_spacing: tuple[float, float], profile, phi: dict, series_uid: str,
                    file_names: list[str], instance_numbers: list[int], sop_uids: list[str]) -> None:
    """hu: (slices, rows, cols) in HU; slice k lies at positions[k]."""
    out_dir.mkdir(parents=True, exist_ok=True)
    slope, intercept = profile.rescale_slope, profile.rescale_intercept
    stored = np.round((hu - intercept) / slope)
    if profile.pixel_representation == 0:
        stored = np.clip(stored, 0, 4095).astype(np.uint16)
        bits_stored = 12
    else:
        stored = np.clip(stored, -32768, 32767).astype(np.int16)
        bits_stored = 16
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uids[k])
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uids[k]
        ds.Modality = "CT"
        ds.Manufacturer = profile.manufacturer
        ds.StationName = "ZZSYNTH-CT01"
        ds.SeriesDescription = "Neck 3mm C+ (synthetic)"
        patient_module(ds, phi)
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 2
        ds.InstanceNumber = instance_numbers[k]
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [f"{v:.4f}" for v in positions[k]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in orientation]
        ds.SliceLocation = f"{positions[k][2]:.4f}"
        ds.PositionReferenceIndicator = ""
        ds.SliceThickness = f"{profile.slice_thickness:.3f}"
        ds.KVP = f"{profile.kvp:.1f}"
        ds.ConvolutionKernel = profile.kernel
        ds.PixelSpacing = [f"{pixel_spacing[0]:.5f}", f"{pixel_spacing[1]:.5f}"]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = bits_stored
        ds.HighBit = bits_stored - 1
        ds.PixelRepresentation = profile.pixel_representation
        ds.RescaleIntercept = f"{intercept:g}"
        ds.RescaleSlope = f"{slope:g}"
        ds.RescaleType = "HU"
        ds.WindowCenter, ds.WindowWidth = "40", "400"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(out_dir / file_names[k], enforce_file_format=True)


def write_rtstruct(path: Path, rois: list[dict], phi: dict, ct_series_uid: str, ct_sop_uids: list[str],
                   slice_z: list[float], uid_seed: tuple) -> None:
    """rois: [{"name", "type", "polygons": [(N,3) array], "empty": bool}] — polygons lie on CT slice planes."""
    sop_uid = det_uid(*uid_seed, "rtstruct")
    ds = Dataset()
    ds.file_meta = _file_meta(RTSTRUCT_STORAGE, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = RTSTRUCT_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTSTRUCT"
    ds.Manufacturer = "ZZSYNTH TPS"
    patient_module(ds, phi)
    del ds.FrameOfReferenceUID  # not part of the RT Structure Set IOD
    ds.SeriesInstanceUID = det_uid(*uid_seed, "rtstruct-series")
    ds.SeriesNumber = 900
    ds.InstanceNumber = 1
    ds.StructureSetLabel = "ZZSYNTH plan RS"
    ds.StructureSetName = "RS " + phi["name"].split("^")[0]  # TPS habit: free text that carries the name
    ds.StructureSetDate = phi["study_date"]
    ds.StructureSetTime = "120000"
    ds.OperatorsName = "ZZSYNTH^Dosimetrist"

    contour_images = Sequence()
    for uid in ct_sop_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = CT_IMAGE_STORAGE
        item.ReferencedSOPInstanceUID = uid
        contour_images.append(item)
    series = Dataset()
    series.SeriesInstanceUID = ct_series_uid
    series.ContourImageSequence = contour_images
    study = Dataset()
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = phi["study_uid"]
    study.RTReferencedSeriesSequence = Sequence([series])
    ref_for = Dataset()
    ref_for.FrameOfReferenceUID = phi["for_uid"]
    ref_for.RTReferencedStudySequence = Sequence([study])
    ds.ReferencedFrameOfReferenceSequence = Sequence([ref_for])

    ss_rois, roi_contours, observations = Sequence(), Sequence(), Sequence()
    z_to_uid = {round(z, 3): uid for z, uid in zip(slice_z, ct_sop_uids)}
    for number, roi in enumerate(rois, start=1):
        ss = Dataset()
        ss.ROINumber = number
        ss.ReferencedFrameOfReferenceUID = phi["for_uid"]
        ss.ROIName = roi["name"]
        ss.ROIGenerationAlgorithm = "MANUAL"
        ss_rois.append(ss)
        rc = Dataset()
        rc.ReferencedROINumber = number
        rc.ROIDisplayColor = roi.get("color", [255, 0, 0])
        if not roi.get("empty"):
            contours = Sequence()
            for poly in roi["polygons"]:
                c = Dataset()
                img = Dataset()
                img.ReferencedSOPClassUID = CT_IMAGE_STORAGE
                img.ReferencedSOPInstanceUID = z_to_uid[round(float(poly[0, 2]), 3)]
                c.ContourImageSequence = Sequence([img])
                c.ContourGeometricType = "CLOSED_PLANAR"
                c.NumberOfContourPoints = len(poly)
                c.ContourData = [f"{v:.3f}" for v in poly.reshape(-1)]
                contours.append(c)
            rc.ContourSequence = contours
        roi_contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = number
        obs.ReferencedROINumber = number
        obs.RTROIInterpretedType = roi["type"]
        obs.ROIInterpreter = "ZZSYNTH^Oncologist"
        observations.append(obs)
    ds.StructureSetROISequence = ss_rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)

