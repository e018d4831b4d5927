"""Command line of the site preprocessing stage (`ecefl preprocess` = `python -m site_preprocess`)."""
from __future__ import annotations

import argparse
import sys

from .config import SiteConfig
from .errors import UsageError
from .pipeline import EXIT_USAGE, run_preprocess


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dicom", required=True, help="folder with one sub-folder per patient (files anywhere below)")
    p.add_argument("--labels", required=True, help="CSV with columns patient_id,ece (PatientID as in DICOM)")
    p.add_argument("--out", required=True, help="output folder (images/, nodes/, labels/, datalist.json, ...)")
    p.add_argument("--config", default=None, help="site.json: ROI synonyms, dilation, tolerances, secret file")
    p.add_argument("--force", action="store_true", help="redo cases already processed")
    p.add_argument("--strict", action="store_true", help="exit 1 (not 3) when any case failed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    try:
        cfg = SiteConfig.load(args.config)
        return run_preprocess(args.dicom, args.labels, args.out, cfg, force=args.force, strict=args.strict,
                              progress=not args.no_progress)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m site_preprocess", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
