"""The independent test hospital's patient model, split by what each part does (benchmarks/independent_hospital.py
is the entry point that writes the DICOM files, labels and truth):

- canvas: tissue codes, geometry helpers and the HU/tissue Canvas every layer is painted on;
- neck: one patient's anatomy as smooth functions of height (Neck);
- anatomy: painting that anatomy onto the canvas, and dental metal streaks;
- nodes: jugular-chain nodes with their ECE, as implicit surfaces: placement, rendering, volume;
- scanner: the per-patient acquisition draw and the CT reconstruction model (blur, MTF, noise);
- contours: RTSTRUCT contours (nodes, ellipses, body outline) in patient mm;
- patient: one whole patient (HU volume, ROIs, truth) from its seed.

No module here is meant to be run; the random draw order across them is fixed by patient.make_patient.
"""
