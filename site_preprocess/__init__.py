"""Site-local preprocessing: a hospital's DICOM CT + RTSTRUCT -> NIfTI training data, without PHI leaving."""
