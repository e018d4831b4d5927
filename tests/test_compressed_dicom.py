"""Compressed CT (the `dicom-compressed` extra): a JPEG-lossless series gives exactly the uncompressed HU volume;
without a decoder the case is refused with a message that names the fix."""
from __future__ import annotations

import shutil
from pathlib import Path

import gdcm
import nibabel as nib
import numpy as np
import pydicom
import pytest

from site_preprocess.config import SiteConfig
from site_preprocess.pipeline import run_preprocess

JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"  # JPEG Lossless, Non-Hierarchical, First-Order Prediction


def _to_jpeg_lossless(src: Path, dst: Path) -> None:
    """Transcode one CT slice with GDCM (pydicom has no JPEG-lossless encoder)."""
    reader = gdcm.ImageReader()
    reader.SetFileName(str(src))
    assert reader.Read(), src
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    assert change.Change(), src
    writer = gdcm.ImageWriter()
    writer.SetFileName(str(dst))
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    assert writer.Write(), dst


@pytest.fixture(scope="module")
def compressed_site(synth_root, tmp_path_factory) -> Path:
    """hospital-b (unsigned pixels with a -1024 intercept): every CT slice JPEG-lossless, the RTSTRUCT as is."""
    src = synth_root / "hospital-b"
    dst = tmp_path_factory.mktemp("jpeg") / "hospital-b"
    shutil.copytree(src, dst)
    n = 0
    for path in sorted((dst / "dicom").rglob("*")):
        if path.is_file() and pydicom.dcmread(path, stop_before_pixels=True).Modality == "CT":
            _to_jpeg_lossless(src / path.relative_to(dst), path)
            n += 1
    assert n > 100
    return dst


def test_jpeg_lossless_ct_gives_the_uncompressed_volume(compressed_site, preprocessed, tmp_path):
    sample = next(p for p in (compressed_site / "dicom").rglob("*") if p.is_file()
                  and pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT")
    assert pydicom.dcmread(sample, stop_before_pixels=True).file_meta.TransferSyntaxUID == JPEG_LOSSLESS_SV1
    out = tmp_path / "out"
    assert run_preprocess(compressed_site / "dicom", compressed_site / "labels.csv", out, SiteConfig(),
                          progress=False) == 0
    reference = preprocessed["hospital-b"]
    images = sorted((out / "images").glob("*.nii.gz"))
    assert len(images) == 4  # 3 labelled + 1 CT-only
    for image in images:
        ours = nib.load(image)
        ref = nib.load(reference / "images" / image.name)  # same site key: same pseudonym for the same patient
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(ref.dataobj))
        np.testing.assert_allclose(ours.affine, ref.affine)
    for label in sorted((out / "labels").glob("*.nii.gz")):
        np.testing.assert_array_equal(np.asarray(nib.load(label).dataobj),
                                      np.asarray(nib.load(reference / "labels" / label.name).dataobj))


def test_without_a_decoder_the_case_is_refused_with_the_fix(compressed_site, tmp_path, monkeypatch):
    from pydicom.pixels.decoders.base import Decoder
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    out = tmp_path / "out"
    code = run_preprocess(compressed_site / "dicom", compressed_site / "labels.csv", out, SiteConfig(),
                          progress=False)
    assert code != 0
    report = (out / "qc_report.json").read_text()
    assert "JPEG Lossless" in report and "dicom-compressed" in report
