"""How the synthetic hospitals differ: scanner grid, storage conventions, naming, class balance.

Each profile mimics one kind of real-world variation a site's DICOM export shows. More sites than profiles
cycle through them with a jittered pixel spacing, so `--sites 5` still gives five distinct hospitals.
"""
from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class SiteProfile:
    name: str
    rows: int
    cols: int
    pixel_spacing: tuple[float, float]  # (between rows, between columns) in mm, DICOM PixelSpacing order
    slice_thickness: float  # mm; also the slice spacing
    z_extent_mm: float
    noise_hu: float
    pixel_representation: int  # 0 unsigned (needs a negative intercept), 1 signed
    rescale_intercept: float
    rescale_slope: float
    instance_number_head_first: bool  # InstanceNumber 1 at the top of the neck, or at the bottom
    file_naming: str  # "sop_uid" | "im_number" | "slice_shuffled"
    nodal_roi_names: tuple[str, ...]  # names for node 1, 2, 3 (a planning system's local convention)
    distractor_rois: tuple[str, ...]  # body, cord, parotid, primary GTV, PTV, nodal CTV, empty ROI
    positive_fraction: float
    patient_id_format: str
    institution: str
    manufacturer: str
    kvp: float
    kernel: str


PROFILES: tuple[SiteProfile, ...] = (
    SiteProfile(
        name="hospital-a", rows=128, cols=128, pixel_spacing=(1.6, 1.6), slice_thickness=3.0,
        z_extent_mm=111.0, noise_hu=12.0, pixel_representation=1, rescale_intercept=0.0, rescale_slope=1.0,
        instance_number_head_first=True, file_naming="sop_uid",
        nodal_roi_names=("GTVn1", "GTVn2", "GTVn3"),
        distractor_rois=("BODY", "SpinalCord", "Parotid_L", "GTVp", "PTV_70", "CTVn_L", ""),
        positive_fraction=0.45, patient_id_format="HA{n:06d}", institution="ZZSYNTH Alpha University Hospital",
        manufacturer="SynthScan", kvp=120.0, kernel="B30f",
    ),
    SiteProfile(
        name="hospital-b", rows=120, cols=136, pixel_spacing=(1.45, 1.45), slice_thickness=2.5,
        z_extent_mm=110.0, noise_hu=16.0, pixel_representation=0, rescale_intercept=-1024.0, rescale_slope=1.0,
        instance_number_head_first=False, file_naming="im_number",
        nodal_roi_names=("GTV_LN_R_II", "GTV_LN_L_III", "GTV_LN_R_IV"),
        distractor_rois=("External", "Cord", "Parotid_R", "GTV_primary", "PTV_7000", "CTV_N_60", "Couch"),
        positive_fraction=0.6, patient_id_format="{n:08d}", institution="ZZSYNTH Beta Cancer Centre",
        manufacturer="OtherVendor", kvp=100.0, kernel="STANDARD",
    ),
    SiteProfile(
        name="hospital-c", rows=128, cols=128, pixel_spacing=(1.75, 1.75), slice_thickness=2.0,
        z_extent_mm=112.0, noise_hu=22.0, pixel_representation=1, rescale_intercept=-1000.0, rescale_slope=1.0,
        instance_number_head_first=True, file_naming="slice_shuffled",
        nodal_roi_names=("GTVnode_1", "LN_gtv2", "GTV-N3"),
        distractor_rois=("Skin", "spinal cord", "Lt Parotid", "GTV", "PTV70_eval", "CTVn", "zOpt_ring"),
        positive_fraction=0.3, patient_id_format="C-{n:05d}", institution="ZZSYNTH Gamma Regional Clinic",
        manufacturer="ThirdVendor", kvp=120.0, kernel="FC08",
    ),
    SiteProfile(
        name="hospital-d", rows=144, cols=128, pixel_spacing=(1.3, 1.5), slice_thickness=3.0,
        z_extent_mm=108.0, noise_hu=10.0, pixel_representation=0, rescale_intercept=-1024.0, rescale_slope=2.0,
        instance_number_head_first=False, file_naming="sop_uid",
        nodal_roi_names=("GTV_N1", "GTVn_L", "GTV_LN"),
        distractor_rois=("BODY", "SpinalCord_PRV", "Parotid_L", "GTVp", "PTV_56", "LN_Neck_II_L", ""),
        positive_fraction=0.5, patient_id_format="D{n:04d}", institution="ZZSYNTH Delta Hospital",
        manufacturer="SynthScan", kvp=140.0, kernel="B40f",
    ),
)


def site_profile(index: int) -> SiteProfile:
    """Profile of the index-th site; beyond the catalogue, a renamed copy with jittered pixel spacing."""
    base = PROFILES[index % len(PROFILES)]
    if index < len(PROFILES):
        return base
    bump = 1.0 + 0.04 * (index // len(PROFILES))
    return replace(base, name=f"hospital-{index + 1}",
                   pixel_spacing=(base.pixel_spacing[0] * bump, base.pixel_spacing[1] * bump))
