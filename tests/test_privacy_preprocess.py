"""No identifier of the synthetic headers appears in any preprocessing output outside OUT/private/."""
from __future__ import annotations

from phi import leaks, phi_strings


def test_no_phi_outside_private(preprocessed, synth_root):
    total = 0
    for site, out in preprocessed.items():
        secrets = phi_strings(synth_root / site / "dicom")
        assert any(s.startswith("ZZSYN") for s in secrets) and len(secrets) > 50
        assert leaks(out, secrets) == [], site
        # ...while the private link does hold them (so the scan would see a leak)
        assert leaks(out / "private", secrets, skip_dir="__none__")
        total += len(secrets)
    assert total > 200
