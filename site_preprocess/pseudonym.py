"""Keyed pseudonyms: case_id = HMAC-SHA256(site secret, PatientID), stable across re-runs, useless off-site.

The secret lives outside the output folder (default ~/.config/ecefl/site_secret.key, mode 0600) and is created
on first use. Without it nobody, including the server, can link a case_id back to a patient.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from .errors import UsageError


def load_or_create_secret(path: Path, out_dir: Path) -> bytes:
    path = Path(path).expanduser().resolve()
    out_dir = Path(out_dir).resolve()
    if out_dir == path or out_dir in path.parents:
        raise UsageError(f"the site secret {path} must live outside the output folder {out_dir} (outputs are "
                         "shared within the site; the key must not be); set secret_file in site.json")
    if path.exists():
        key = path.read_bytes().strip()
        if len(key) < 32:
            raise UsageError(f"the site secret {path} is shorter than 32 bytes; delete it to create a new one "
                             "(existing case_ids will change) or restore the original")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key + b"\n")
    return key


def case_id(secret: bytes, patient_key: str) -> str:
    return "case-" + hmac.new(secret, patient_key.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
