"""labels.csv (patient_id,ece): PatientIDs are read as strings (real IDs carry leading zeros)."""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError

POSITIVE = {"1", "yes", "y", "true", "pos", "positive", "ece+", "present"}
NEGATIVE = {"0", "no", "n", "false", "neg", "negative", "ece-", "absent"}


@dataclass
class Labels:
    ece: dict[str, int] = field(default_factory=dict)
    rejected_rows: list[dict] = field(default_factory=list)  # {"row": n, "reason": ...} — no row content


def read_labels(path: Path) -> Labels:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"labels file {path} does not exist; pass --labels with a CSV of patient_id,ece")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    if not text.strip():
        raise UsageError(f"labels file {path} is empty; it needs a header patient_id,ece and one row per patient")
    try:
        dialect = csv.Sniffer().sniff(text.splitlines()[0], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.reader(text.splitlines(), dialect)
    header = [h.strip().lower() for h in next(reader)]
    if "patient_id" not in header or "ece" not in header:
        raise UsageError(f"labels file {path} needs the columns patient_id and ece (found {header})")
    pid_col, ece_col = header.index("patient_id"), header.index("ece")
    labels = Labels()
    conflicts = set()
    for row_number, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(pid_col, ece_col):
            labels.rejected_rows.append({"row": row_number, "reason": "too few columns"})
            continue
        pid, value = row[pid_col].strip(), row[ece_col].strip().lower()
        if not pid:
            labels.rejected_rows.append({"row": row_number, "reason": "empty patient_id"})
            continue
        if value in POSITIVE:
            ece = 1
        elif value in NEGATIVE:
            ece = 0
        else:
            labels.rejected_rows.append({"row": row_number, "reason": "ece is not 0/1 (or yes/no)"})
            continue
        if pid in labels.ece and labels.ece[pid] != ece:
            conflicts.add(pid)
            labels.rejected_rows.append({"row": row_number, "reason": "patient listed twice with different ece"})
        labels.ece[pid] = ece
    for pid in conflicts:  # a contradictory label is no label
        del labels.ece[pid]
    return labels
