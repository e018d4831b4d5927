"""What the command groups share: plan overrides (--set and the named ones), the one error -> exit-code map,
the arguments of the centralised training stages."""
from __future__ import annotations

import sys

from ecefl.plan import PRESETS

PRESET_NAMES = sorted(PRESETS)


def add_plan_overrides(p) -> None:
    g = p.add_argument_group("plan overrides (default: the preset's values)")
    g.add_argument("--feature-size", type=int, default=None)
    g.add_argument("--patch-size", type=int, nargs=3, default=None, metavar=("X", "Y", "Z"))
    g.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("X", "Y", "Z"))
    g.add_argument("--batch-size", type=int, default=None)
    g.add_argument("--learning-rate", type=float, default=None)
    g.add_argument("--cls-loss", choices=["weighted_bce", "focal"], default=None)
    g.add_argument("--balanced-sampling", action="store_true", default=None)
    add_set_argument(g)


def add_set_argument(p) -> None:
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="plan_set",
                   help="any plan field (custom/ecefl/plan.py), e.g. --set cls_retrain_fraction=0.25; repeatable")


def overrides_from(args) -> dict:
    out = {"feature_size": args.feature_size, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
           "cls_loss": args.cls_loss, "balanced_sampling": args.balanced_sampling,
           "patch_size": tuple(args.patch_size) if args.patch_size else None,
           "spacing": tuple(args.spacing) if args.spacing else None}
    from ecefl.plan import parse_assignments
    return {**{k: v for k, v in out.items() if v is not None}, **parse_assignments(getattr(args, "plan_set", []))}


def exit_codes(fn):
    """The one place where errors become exit codes (README): a federated job, POC or federation operation that
    failed -> 1; a user's error (bad datalist, model file, path, argument, DICOM) -> 2; a message, no traceback."""
    def run(args) -> int:
        from ecefl.checkpoint import CheckpointError
        from ecefl.data import DataError
        from ecefl.fl.admin import AdminError
        from ecefl.fl.poc import PocError
        from ecefl.fl.simulate import FederatedRunError
        from ecefl.infer import InferenceError
        from site_preprocess.errors import UsageError
        try:
            return int(fn(args) or 0)
        except (FederatedRunError, PocError, AdminError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except (DataError, CheckpointError, InferenceError, UsageError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return run


def training_parser(sub, name: str, help_text: str, epochs: int):
    """Arguments shared by the centralised training stages."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--datalist", action="append", required=True, help="a site's datalist.json (repeatable)")
    p.add_argument("--preset", default="cpu-small", choices=PRESET_NAMES)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    add_plan_overrides(p)
    return p
