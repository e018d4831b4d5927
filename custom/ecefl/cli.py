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


def _plan_overrides(p) -> None:
    g = p.add_argument_group("plan overrides (default: the preset's values)")
    g.add_argument("--feature-size", type=int, default=None)
    g.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"))
    g.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"))
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--learning-rate", type=float, default=None)
    g.add_argument("--cls-loss", choices=["weighted_bce", "focal"], default=None)
    g.add_argument("--balanced-sampling", action="store_true", default=None)


def _overrides(args) -> dict:
    out = {"feature_size": args.feature_size, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
           "cls_loss": args.cls_loss, "balanced_sampling": args.balanced_sampling,
           "patch_size": tuple(args.patch_size) if args.patch_size else None,
           "spacing": tuple(args.spacing) if args.spacing else None}
    return {k: v for k, v in out.items() if v is not None}


def _learning_errors(fn):
    """Turn user-caused failures (bad datalist, bad model file, bad preset) into a message and exit 2."""
    def run(args) -> int:
        from ecefl.checkpoint import CheckpointError
        from ecefl.data import DataError
        try:
            return fn(args)
        except (DataError, CheckpointError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run


def _pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="MAE (masked-image) pretraining of the SwinUNETR encoder")
    p.add_argument("--datalist", action="append", required=True, help="a site's datalist.json (repeatable)")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    _plan_overrides(p)

    @_learning_errors
    def run(args) -> int:
        from ecefl.stages import pretrain
        pretrain(args.datalist, args.preset, args.epochs, args.out, seed=args.seed,
                 progress=not args.no_progress, **_overrides(args))
        print(f"wrote {args.out}/checkpoint.pt and {args.out}/metrics.json")
        return 0
    p.set_defaults(func=run)


def _train(sub) -> None:
    p = sub.add_parser("train", help="fine-tune the dual-output SwinUNETR (nodal segmentation + ECE)")
    p.add_argument("--datalist", action="append", required=True, help="a site's datalist.json (repeatable)")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--init", default=None, help="MAE checkpoint.pt to initialise the encoder from")
    p.add_argument("--label-fraction", type=float, default=1.0)
    p.add_argument("--val-fraction", type=float, default=0.25)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    _plan_overrides(p)

    @_learning_errors
    def run(args) -> int:
        from ecefl.stages import train
        result = train(args.datalist, args.preset, args.epochs, args.out, init=args.init,
                       label_fraction=args.label_fraction, val_fraction=args.val_fraction, seed=args.seed,
                       progress=not args.no_progress, **_overrides(args))
        val = result["val"] or {}
        print(f"wrote {args.out}/model.pt; validation AUC {val.get('auc')}, Dice {val.get('dice')}, "
              f"threshold {result['threshold']:.3f}")
        return 0
    p.set_defaults(func=run)


def _evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on datalists (metrics.json, predictions.csv)")
    p.add_argument("--model", required=True)
    p.add_argument("--datalist", action="append", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")

    @_learning_errors
    def run(args) -> int:
        from ecefl.stages import evaluate
        evaluate(args.model, args.datalist, args.out, progress=not args.no_progress)
        print(f"wrote {args.out}/metrics.json and {args.out}/predictions.csv (site-local)")
        return 0
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecefl", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_synth, _preprocess, _pretrain, _train, _evaluate):
        add(sub)
    return parser


def quiet_library_warnings() -> None:
    import warnings
    warnings.filterwarnings("ignore", message=".*nvImageCodec.*")
    warnings.filterwarnings("ignore", message=".*NvImgCodec.*")
    warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    quiet_library_warnings()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
