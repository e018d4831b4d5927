"""Synthetic hospitals: realistic neck CT + RTSTRUCT DICOM with ECE labels (our built-in default data)."""
from .generate import synthesize

__all__ = ["synthesize"]
