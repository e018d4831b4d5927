"""Site configuration (`--config site.json`): nodal ROI synonyms, dilation, geometry tolerances, secret file.

Every key is optional; unknown keys are an error so a typo does not silently fall back to a default.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .errors import UsageError

# Matched against the normalised ROI name (lowercase; spaces, '_', '-', '.' removed). Anchored, so free text
# around a name (initials, dates) does not match and goes to the site's review instead.
_SIDE = r"(l|r|lt|rt|left|right|bilat)?"
_LEVEL = r"(i|ia|ib|ii|iia|iib|iii|iv|iva|ivb|v|va|vb|vi|vii)?"
DEFAULT_NODAL_PATTERNS = [
    rf"^gtvn(ode|odes|odal)?{_SIDE}{_LEVEL}\d*{_SIDE}$",  # GTVn, GTVn1, GTVn_L, GTV-N3, GTV_N2, GTVnode_1
    rf"^gtvln{_SIDE}{_LEVEL}\d*{_SIDE}$",  # GTV_LN, GTV_LN_R_II, GTV_LN1
    r"^gtvlymph(node)?s?\d*$",
    r"^(ln|node|nodal)gtv\d*$",  # LN_gtv1, Nodal_GTV
    r"^gtvnodes?\d*$",
]
# Never nodal gross disease, even when a synonym pattern would match.
DEFAULT_EXCLUDE_PATTERNS = [r"ptv", r"ctv", r"itv", r"prv", r"ring", r"\d+mm", r"^z", r"^_", r"opt", r"avoid",
                            r"eval", r"minus", r"plus", r"\+", r"expand", r"dose"]


@dataclass
class SiteConfig:
    nodal_roi_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_NODAL_PATTERNS))
    nodal_roi_names: list[str] = field(default_factory=list)  # exact local names, checked first
    exclude_roi_patterns: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDE_PATTERNS))
    allow_bare_gtv: bool = False  # a site where a bare "GTV" holds the nodes only
    dilation_margin_mm: float = 3.0
    soft_tissue_hu: tuple[float, float] = (-150.0, 200.0)
    slice_position_tolerance: float = 0.10  # max deviation from a uniform grid, as a fraction of the spacing
    contour_plane_tolerance: float = 0.25  # max contour distance from its slice, as a fraction of the spacing
    secret_file: str | None = None  # the site's pseudonym key; default ~/.config/ecefl/site_secret.key

    @classmethod
    def load(cls, path: str | Path | None) -> "SiteConfig":
        if path is None:
            return cls()
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"site config {path} does not exist; pass an existing JSON file or omit --config")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UsageError(f"site config {path} is not valid JSON ({exc}); fix the file") from exc
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise UsageError(f"site config {path}: unknown keys {unknown}; known keys are {sorted(known)}")
        cfg = cls(**raw)
        cfg.soft_tissue_hu = tuple(float(v) for v in cfg.soft_tissue_hu)
        return cfg

    def secret_path(self) -> Path:
        if self.secret_file:
            return Path(self.secret_file).expanduser()
        env = os.environ.get("ECEFL_SITE_SECRET_FILE")
        if env:
            return Path(env).expanduser()
        return Path.home() / ".config" / "ecefl" / "site_secret.key"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["secret_file"] = "(site-local, not recorded)"
        return d
