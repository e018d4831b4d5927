"""`ecefl`: one command, one sub-command per pipeline stage (each writes the artifact the next one reads)."""
from __future__ import annotations

import argparse
import sys


def _synth(sub) -> None:
    p = sub.add_parser("synth", help="write synthetic hospitals (CT + RTSTRUCT DICOM, labels.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--cases-per-site", type=int, default=16)
    p.add_argument("--unlabeled-per-site", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")

    def run(args) -> int:
        from site_preprocess.synth import synthesize
        if args.sites < 1 or args.cases_per_site < 0 or args.unlabeled_per_site < 0:
            print("error: --sites must be >= 1 and case counts >= 0", file=sys.stderr)
            return 2
        dirs = synthesize(args.out, args.sites, args.cases_per_site, args.unlabeled_per_site, args.seed,
                          progress=not args.no_progress)
        for d in dirs:
            print(f"{d.name}: {d}/dicom, {d}/labels.csv")
        return 0
    p.set_defaults(func=run)


def _preprocess(sub) -> None:
    from site_preprocess import cli as pre
    p = sub.add_parser("preprocess", help="site-local: DICOM CT + RTSTRUCT -> NIfTI, datalist.json, qc_report.json")
    pre.add_arguments(p)
    p.set_defaults(func=pre.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecefl", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_synth, _preprocess):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
