"""Per-case failures that a hospital engineer can act on.

`reason` goes into the site's qc_report.json and stdout, so it never names files, folders, ROI free text or
DICOM identifiers; `detail` may (file paths, raw values) and is written only under OUT/private/.
"""
from __future__ import annotations


class CaseError(Exception):
    def __init__(self, reason: str, detail: str = "", status: str = "failed"):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail
        self.status = status  # "failed", or "unlabeled" where the CT is still usable for pretraining


class UsageError(Exception):
    """Wrong paths, unreadable labels file, bad config: nothing can be processed (exit code 2)."""
