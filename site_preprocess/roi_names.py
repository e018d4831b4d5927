"""Which RTSTRUCT ROIs are gross nodal disease: explicit site names first, then synonym patterns."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .config import SiteConfig

# Interpreted types that contradict "gross nodal target": a GTVn-named PTV is a naming accident.
CONTRADICTING_TYPES = {"PTV", "CTV", "EXTERNAL", "AVOIDANCE", "ORGAN", "CONTROL", "SUPPORT", "FIXATION",
                       "CAVITY", "MARKER", "REGISTRATION", "ISOCENTER", "DOSE_REGION", "BOLUS", "BRACHY_CHANNEL"}


def normalise(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name or "").lower()


@dataclass
class RoiDecision:
    name: str
    nodal: bool
    why: str


def classify_roi(name: str, interpreted_type: str | None, cfg: SiteConfig) -> RoiDecision:
    norm = normalise(name)
    explicit = {normalise(n) for n in cfg.nodal_roi_names}
    if norm in explicit:
        return RoiDecision(name, True, "site list")
    for pat in cfg.exclude_roi_patterns:
        if re.search(pat, norm):
            return RoiDecision(name, False, f"excluded by /{pat}/")
    if norm == "gtv" and cfg.allow_bare_gtv:
        return RoiDecision(name, True, "bare GTV allowed by site config")
    for pat in cfg.nodal_roi_patterns:
        if re.search(pat, norm):
            itype = (interpreted_type or "").strip().upper()
            if itype in CONTRADICTING_TYPES:
                return RoiDecision(name, False, f"name looks nodal but RTROIInterpretedType is {itype}")
            return RoiDecision(name, True, f"pattern /{pat}/")
    return RoiDecision(name, False, "no nodal pattern")
