"""`ecefl`: one command, one sub-command per pipeline stage (each writes the artifact the next one reads)."""
from __future__ import annotations

import argparse

from ecefl.logs import LEVELS, configure as configure_logging

from . import federated, poc, stages


# One help text per option name, for the options that several commands share (and the few whose meaning is plain
# from their command's description); options specific to one command carry their own help where they are declared.
ARG_HELP = {
    "out": "output folder (created; nothing outside it is written)",
    "sites": "number of synthetic hospitals",
    "cases_per_site": "labelled patients per hospital",
    "unlabeled_per_site": "CT-only patients per hospital (MAE pretraining)",
    "seed": "random seed: data splits, initialisation, augmentation",
    "no_progress": "no progress bars (logs and CI)",
    "preset": "configuration preset (custom/ecefl/plan.py)",
    "epochs": "training epochs",
    "feature_size": "SwinUNETR feature size (multiple of 12)",
    "patch_size": "training patch in voxels (each a multiple of 32, at least 64)",
    "spacing": "resampling grid in mm",
    "batch_size": "patches per optimiser step",
    "learning_rate": "peak learning rate of the SwinUNETR body",
    "cls_loss": "case-level loss of the ECE head",
    "balanced_sampling": "draw ECE+ and ECE- cases equally often",
    "label_fraction": "share of the labelled training cases used (label-efficiency runs)",
    "val_fraction": "share of each site's labelled cases held out for validation (stratified)",
    "model": "model file (.pt) written by ecefl train, fl simulate or a downloaded job",
    "datalist": "datalist.json written by `ecefl preprocess` (repeat for several sites)",
    "job": "which federated job",
    "rounds": "federated rounds",
    "local_epochs": "local epochs per round at each site",
    "workspace": "NVFlare workspace folder (job folders, logs, results)",
    "port": "the server's port on this machine",
    "min_sites": "a round goes on with this many sites answering (default: all)",
    "job_id": "the job id printed by submit",
    "timeout": "seconds to wait before giving up",
    "mae_rounds": "federated MAE pretraining rounds",
}


def _explain(parser: argparse.ArgumentParser) -> None:
    """Defaults shown in every help, every option explained, every (sub)command described by its help line."""
    parser.formatter_class = argparse.ArgumentDefaultsHelpFormatter
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                sub.description = sub.description or helps.get(name)
                _explain(sub)
        elif action.help is None:
            action.help = ARG_HELP.get(action.dest, " ")  # a blank still shows the default (the test lists gaps)


def build_parser() -> argparse.ArgumentParser:
    from ecefl import __version__
    parser = argparse.ArgumentParser(prog="ecefl", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ecefl {__version__}")
    add_log_level(parser, "INFO")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (*stages.COMMANDS[:6], *federated.COMMANDS, *poc.COMMANDS, *stages.COMMANDS[6:]):
        add(sub)  # the order of `ecefl --help`
    _leaf_log_levels(parser)
    _explain(parser)
    return parser


def add_log_level(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument("--log-level", default=default, choices=LEVELS, type=str.upper,
                        help="what goes to stderr: timestamped progress and warnings (results go to stdout)")


def _leaf_log_levels(parser: argparse.ArgumentParser) -> None:
    """--log-level also after the (sub)command; given there, it wins over the one before it."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subs:
        for child in action.choices.values():
            _leaf_log_levels(child)
    if not subs and not any("--log-level" in a.option_strings for a in parser._actions):
        add_log_level(parser, argparse.SUPPRESS)


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
    configure_logging(args.log_level)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)
