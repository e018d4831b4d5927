"""The pipeline stages that run at one place (nnU-Net-style: each writes the artifact the next one reads): synth,
preprocess, pretrain, train, evaluate, calibrate, infer, export-bundle, and the demo that chains them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from .common import PRESET_NAMES, add_set_argument, exit_codes, overrides_from, training_parser


def _synth(sub) -> None:
    p = sub.add_parser("synth", help="write synthetic hospitals (CT + RTSTRUCT DICOM, labels.csv)")
    p.add_argument("--out", required=True)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--cases-per-site", type=int, default=16)
    p.add_argument("--unlabeled-per-site", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="processes writing patients (the files do not depend on it; default: the CPU count)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--varied", action="store_true",
                   help="the varied generator: oral cavity, couch and mask, normal nodes, nodes at levels Ib-V with "
                        "varied ECE renderings, a scan per patient (docs/BENCHMARKS.md, session 36)")
    p.add_argument("--plain-ece-signs", action="store_true",
                   help="with --varied: its neck and scans, but the nodes sized and ECE rendered as the plain "
                        "generator does (docs/BENCHMARKS.md, session 37)")
    p.add_argument("--node-axes", choices=["random", "longitudinal"], default="random",
                   help="how the contoured nodes lie: ellipsoids turned at random (default), or ovoid along the neck "
                        "(craniocaudal long axis) as cervical nodes do (docs/BENCHMARKS.md, session 41)")

    def run(args) -> int:
        from site_preprocess.synth import synthesize
        if args.sites < 1 or args.cases_per_site < 0 or args.unlabeled_per_site < 0:
            print("error: --sites must be >= 1 and case counts >= 0", file=sys.stderr)
            return 2
        if args.plain_ece_signs and not args.varied:
            print("error: --plain-ece-signs goes with --varied (the plain generator always renders ECE so)",
                  file=sys.stderr)
            return 2
        dirs = synthesize(args.out, args.sites, args.cases_per_site, args.unlabeled_per_site, args.seed,
                          progress=not args.no_progress, workers=max(1, args.workers), varied=args.varied,
                          plain_signs=args.plain_ece_signs, node_axes=args.node_axes)
        for d in dirs:
            print(f"{d.name}: {d}/dicom, {d}/labels.csv")
        return 0
    p.set_defaults(func=run)


def _preprocess(sub) -> None:
    from site_preprocess import cli as pre
    p = sub.add_parser("preprocess", help="site-local: DICOM CT + RTSTRUCT -> NIfTI, datalist.json, qc_report.json")
    pre.add_arguments(p)
    p.set_defaults(func=pre.run)


def _pretrain(sub) -> None:
    p = training_parser(sub, "pretrain", "MAE (masked-image) pretraining of the SwinUNETR encoder", 10)
    p.add_argument("--resume", action="store_true",
                   help="continue the pretraining in --out (stopped, or asked for fewer epochs) up to --epochs; the "
                        "same --preset, --seed and plan values are required. Every epoch is saved, so a stopped run "
                        "loses at most the epoch in progress")

    @exit_codes
    def run(args) -> int:
        from ecefl.stages import pretrain
        pretrain(args.datalist, args.preset, args.epochs, args.out, seed=args.seed,
                 progress=not args.no_progress, resume=args.resume, **overrides_from(args))
        print(f"wrote {args.out}/checkpoint.pt and {args.out}/metrics.json")
        return 0
    p.set_defaults(func=run)


def _train(sub) -> None:
    p = training_parser(sub, "train", "fine-tune the dual-output SwinUNETR (nodal segmentation + ECE)", 20)
    p.add_argument("--init", default=None, help="MAE checkpoint.pt to initialise the encoder from")
    p.add_argument("--label-fraction", type=float, default=1.0)
    p.add_argument("--val-fraction", type=float, default=0.25)

    @exit_codes
    def run(args) -> int:
        from ecefl.stages import train
        result = train(args.datalist, args.preset, args.epochs, args.out, init=args.init,
                       label_fraction=args.label_fraction, val_fraction=args.val_fraction, seed=args.seed,
                       progress=not args.no_progress, **overrides_from(args))
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

    @exit_codes
    def run(args) -> int:
        from ecefl.stages import evaluate
        evaluate(args.model, args.datalist, args.out, progress=not args.no_progress)
        print(f"wrote {args.out}/metrics.json and {args.out}/predictions.csv (site-local)")
        return 0
    p.set_defaults(func=run)


def _calibrate(sub) -> None:
    from ecefl.stages import CALIBRATION_MIN_PER_CLASS
    p = sub.add_parser("calibrate", help="set this site's own operating threshold from its labelled cases",
                       description="Scores the site's labelled cases with the model and writes a copy of the model "
                                   "file whose threshold is chosen on them (Youden's J, bagged over bootstrap "
                                   "resamples of the cases, or the highest threshold "
                                   "keeping --sensitivity); with --node-threshold also the output mask's node "
                                   "threshold, the one with the best mean Dice against the site's contours. Needs "
                                   f">= {CALIBRATION_MIN_PER_CLASS} cases of each class. Only counts and rates are "
                                   "stored with it, no case id or score.")
    p.add_argument("--model", required=True, help="the dual-output model file (e.g. best_global_model.pt)")
    p.add_argument("--datalist", action="append", required=True, help="this site's datalist.json (repeatable)")
    p.add_argument("--out", required=True, help="the calibrated model file to write")
    p.add_argument("--sensitivity", type=float, default=None,
                   help="choose the highest threshold with at least this sensitivity (default: Youden's J, bagged)")
    p.add_argument("--node-threshold", action="store_true",
                   help="also choose the output mask's node threshold on this site's contours (default: keep the "
                        "model's)")
    p.add_argument("--no-progress", action="store_true")

    @exit_codes
    def run(args) -> int:
        from ecefl.stages import calibrate
        calibrate(args.model, args.datalist, args.out, sensitivity=args.sensitivity,
                  node_threshold=args.node_threshold, progress=not args.no_progress)
        print(f"wrote {args.out}")
        return 0
    p.set_defaults(func=run)


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on synthetic hospitals, ending in a visual report")
    p.add_argument("--out", default="workspace/demo")
    p.add_argument("--preset", default="cpu-small", choices=PRESET_NAMES)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--cases-per-site", type=int, default=40)
    p.add_argument("--unlabeled-per-site", type=int, default=10)
    p.add_argument("--mae-rounds", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--varied-synth", action="store_true", help="hospitals from `ecefl synth --varied`")
    p.add_argument("--plain-ece-signs", action="store_true",
                   help="with --varied-synth: hospitals from `ecefl synth --varied --plain-ece-signs`")
    p.add_argument("--node-axes", choices=["random", "longitudinal"], default="random",
                   help="the hospitals' nodes as `ecefl synth --node-axes` draws them (default: turned at random)")
    add_set_argument(p)

    def run(args) -> int:
        from ecefl.demo import run_demo
        from ecefl.plan import parse_assignments
        try:
            overrides = parse_assignments(args.plan_set)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.plain_ece_signs and not args.varied_synth:
            print("error: --plain-ece-signs goes with --varied-synth", file=sys.stderr)
            return 2
        run_demo(args.out, args.preset, args.sites, args.cases_per_site, args.unlabeled_per_site, args.mae_rounds,
                 args.rounds, args.local_epochs, args.seed, progress=not args.no_progress,
                 varied_synth=args.varied_synth, plain_ece_signs=args.plain_ece_signs,
                 node_axes=args.node_axes, **overrides)
        return 0
    p.set_defaults(func=run)


def _infer(sub) -> None:
    p = sub.add_parser("infer", help="one patient: ECE probability, nodal RTSTRUCT and DICOM SEG, evidence image and volume")
    p.add_argument("--model", required=True)
    p.add_argument("--dicom", required=True, help="one patient's folder (CT series, RTSTRUCT optional), or a folder "
                   "of patient folders (the layout `preprocess` reads): then OUT/<patient>/ each and OUT/summary.csv")
    p.add_argument("--batch", action="store_true", help="treat --dicom as a folder of patients (else detected: "
                   "CT series of more than one patient in more than one sub-folder)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", required=True)
    p.add_argument("--use-rtstruct", action="store_true", help="pool over the patient's own nodal contours")
    p.add_argument("--config", default=None, help="site.json (nodal ROI synonyms, tolerances)")
    p.add_argument("--roi-name", default="ECEFL_nodes_pred", help="name of the predicted ROI in RTSTRUCT and SEG")
    p.add_argument("--roi-color", default="255,0,0", help="R,G,B of the predicted ROI in the RTSTRUCT")

    @exit_codes
    def run(args) -> int:
        from ecefl.infer import infer, infer_batch, patient_folders
        from site_preprocess.config import SiteConfig
        try:
            color = [int(c) for c in args.roi_color.split(",")]
        except ValueError:
            color = []
        if len(color) != 3 or not all(0 <= c <= 255 for c in color):
            raise ValueError(f"--roi-color {args.roi_color!r}: give R,G,B with values 0-255, e.g. 255,0,0")
        folders = patient_folders(args.dicom)
        if args.batch or folders:
            folders = folders or sorted(d for d in Path(args.dicom).iterdir() if d.is_dir() and not d.name.startswith("."))
            rows = infer_batch(args.model, args.dicom, args.out, args.use_rtstruct, SiteConfig.load(args.config),
                               progress=not args.no_progress, roi_name=args.roi_name, roi_color=color,
                               folders=folders)
            return 0 if all(r["status"] == "ok" for r in rows) else 3
        infer(args.model, args.dicom, args.out, args.use_rtstruct, SiteConfig.load(args.config),
              roi_name=args.roi_name, roi_color=color, progress=not args.no_progress)
        return 0
    p.set_defaults(func=run)


def _export_bundle(sub) -> None:
    p = sub.add_parser("export-bundle", help="export a model as a MONAI bundle (runs with MONAI alone)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)

    @exit_codes
    def run(args) -> int:
        from ecefl.bundle import export_bundle
        out = export_bundle(args.model, args.out)
        print(f"MONAI bundle in {out}; run: python -m monai.bundle run --config_file {out}/configs/inference.json "
              f"--bundle_root {out} --dataset_dir NIFTI_DIR")
        return 0
    p.set_defaults(func=run)


COMMANDS = (_synth, _preprocess, _pretrain, _train, _evaluate, _calibrate, _demo, _infer, _export_bundle)
