"""`ecefl`: one command, one sub-command per pipeline stage (each writes the artifact the next one reads)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


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

    def run(args) -> int:
        from site_preprocess.synth import synthesize
        if args.sites < 1 or args.cases_per_site < 0 or args.unlabeled_per_site < 0:
            print("error: --sites must be >= 1 and case counts >= 0", file=sys.stderr)
            return 2
        dirs = synthesize(args.out, args.sites, args.cases_per_site, args.unlabeled_per_site, args.seed,
                          progress=not args.no_progress, workers=max(1, args.workers))
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
    _set_argument(g)


def _set_argument(p) -> None:
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", dest="plan_set",
                   help="any plan field (custom/ecefl/plan.py), e.g. --set cls_retrain_fraction=0.25; repeatable")


def _overrides(args) -> dict:
    out = {"feature_size": args.feature_size, "batch_size": args.batch_size, "learning_rate": args.learning_rate,
           "cls_loss": args.cls_loss, "balanced_sampling": args.balanced_sampling,
           "patch_size": tuple(args.patch_size) if args.patch_size else None,
           "spacing": tuple(args.spacing) if args.spacing else None}
    from ecefl.plan import parse_assignments
    return {**{k: v for k, v in out.items() if v is not None}, **parse_assignments(getattr(args, "plan_set", []))}


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


def _training_parser(sub, name: str, help_text: str, epochs: int):
    """Arguments shared by the centralised training stages."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--datalist", action="append", required=True, help="a site's datalist.json (repeatable)")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")
    _plan_overrides(p)
    return p


def _pretrain(sub) -> None:
    p = _training_parser(sub, "pretrain", "MAE (masked-image) pretraining of the SwinUNETR encoder", 10)

    @_learning_errors
    def run(args) -> int:
        from ecefl.stages import pretrain
        pretrain(args.datalist, args.preset, args.epochs, args.out, seed=args.seed,
                 progress=not args.no_progress, **_overrides(args))
        print(f"wrote {args.out}/checkpoint.pt and {args.out}/metrics.json")
        return 0
    p.set_defaults(func=run)


def _train(sub) -> None:
    p = _training_parser(sub, "train", "fine-tune the dual-output SwinUNETR (nodal segmentation + ECE)", 20)
    p.add_argument("--init", default=None, help="MAE checkpoint.pt to initialise the encoder from")
    p.add_argument("--label-fraction", type=float, default=1.0)
    p.add_argument("--val-fraction", type=float, default=0.25)

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


def _calibrate(sub) -> None:
    from ecefl.stages import CALIBRATION_MIN_PER_CLASS
    p = sub.add_parser("calibrate", help="set this site's own operating threshold from its labelled cases",
                       description="Scores the site's labelled cases with the model and writes a copy of the model "
                                   "file whose threshold is chosen on them (Youden's J, or the highest threshold "
                                   f"keeping --sensitivity). Needs >= {CALIBRATION_MIN_PER_CLASS} cases of each "
                                   "class. Only counts and rates are stored with it, no case id or score.")
    p.add_argument("--model", required=True, help="the dual-output model file (e.g. best_global_model.pt)")
    p.add_argument("--datalist", action="append", required=True, help="this site's datalist.json (repeatable)")
    p.add_argument("--out", required=True, help="the calibrated model file to write")
    p.add_argument("--sensitivity", type=float, default=None,
                   help="choose the highest threshold with at least this sensitivity (default: Youden's J)")
    p.add_argument("--no-progress", action="store_true")

    @_learning_errors
    def run(args) -> int:
        from ecefl.stages import calibrate
        calibrate(args.model, args.datalist, args.out, sensitivity=args.sensitivity, progress=not args.no_progress)
        print(f"wrote {args.out}")
        return 0
    p.set_defaults(func=run)


def _fl(sub) -> None:
    p = sub.add_parser("fl", help="federated jobs on NVIDIA FLARE (simulator)")
    fl_sub = p.add_subparsers(dest="fl_command", metavar="FL_COMMAND")
    s = fl_sub.add_parser("simulate", help="run mae_pretrain / ece_finetune / all in the NVFlare simulator")
    s.add_argument("--site", action="append", required=True, metavar="NAME=DATALIST",
                   help="a site and its datalist.json (repeatable); site-local, never part of the job")
    s.add_argument("--job", choices=["mae_pretrain", "ece_finetune", "all"], default="all")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--local-epochs", type=int, default=1)
    s.add_argument("--preset", default="cpu-small")
    s.add_argument("--workspace", required=True)
    s.add_argument("--min-sites", type=int, default=None, help="fewest live sites a round accepts (default all)")
    s.add_argument("--init", default=None, help="MAE checkpoint for --job ece_finetune (default: none)")
    s.add_argument("--val-fraction", type=float, default=0.25)
    s.add_argument("--min-count", type=int, default=0, help="suppress site statistics below this class count")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--resume", default=None, metavar="CHECKPOINT_OR_RUN_DIR",
                   help="continue an interrupted job from its last per-round global_model.pt")
    s.add_argument("--privacy", default=None, metavar="PRIVACY_JSON",
                   help="a site privacy policy (e.g. poc/privacy.json) whose --privacy-scope every site applies")
    s.add_argument("--privacy-scope", default=None, metavar="SCOPE",
                   help="the scope of --privacy whose result filters every simulated site applies to its updates")
    s.add_argument("--validate-every", type=int, default=None, metavar="K",
                   help="ece_finetune: sites validate the global model every K rounds and the final one (default 1)")
    _cross_site_arguments(s)
    s.add_argument("--quiet", action="store_true", help="NVFlare logs at WARNING level")
    s.add_argument("--no-progress", action="store_true")
    _plan_overrides(s)

    def run(args) -> int:
        from ecefl.fl.simulate import FederatedRunError, parse_sites, simulate
        try:
            sites = parse_sites(args.site)
            simulate(sites, args.job, args.rounds, args.local_epochs, args.preset, args.workspace,
                     min_sites=args.min_sites, seed=args.seed, init=args.init, val_fraction=args.val_fraction,
                     min_count=args.min_count, quiet=args.quiet, progress=not args.no_progress,
                     resume=args.resume, privacy=args.privacy, privacy_scope=args.privacy_scope,
                     cross_site=args.cross_site_eval, task_timeout=args.task_timeout,
                     **_overrides(args), **({"validate_every": args.validate_every} if args.validate_every else {}))
        except FederatedRunError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        _print_pooled(args.workspace)
        return 0
    s.set_defaults(func=run)

    lu = fl_sub.add_parser("large-updates", help="set the streaming timeouts for gpu-preset updates (278 MiB) "
                                                 "in startup kits' local/comm_config.json (DEPLOY §8)")
    lu.add_argument("kits", nargs="+", metavar="KIT_DIR", help="a participant's startup kit (server or site)")

    def run_large_updates(args) -> int:
        from ecefl.fl.poc import LARGE_UPDATE_STREAMING, PocError, set_streaming_timeouts
        try:
            for kit in args.kits:
                print(f"{set_streaming_timeouts(Path(kit))}: {json.dumps(LARGE_UPDATE_STREAMING)}")
        except PocError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print("restart each participant for the settings to take effect (they are read at process start)")
        return 0
    lu.set_defaults(func=run_large_updates)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _cross_site_arguments(p) -> None:
    from ecefl.fl.jobs import DEFAULT_TASK_TIMEOUT
    p.add_argument("--task-timeout", type=int, default=DEFAULT_TASK_TIMEOUT, metavar="SECONDS",
                   help="once --min-sites sites have answered a round, wait at most this long for the others, then "
                        "go on without them (named in the events); 0 waits for every site (default %(default)s)")
    p.add_argument("--cross-site-eval", action="store_true",
                   help="ece_finetune: also run NVFlare's cross-site evaluation after training; it sends each "
                        "site's un-aggregated local model to every other site (off by default: the sites validate "
                        "the global model only)")
    p.add_argument("--no-cross-site", action="store_true", help="the default; kept for old scripts")


def _poc(sub) -> None:
    p = sub.add_parser("poc", help="real NVFlare server + hospital clients on this machine (POC mode)")
    poc_sub = p.add_subparsers(dest="poc_command", metavar="POC_COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--workspace", default="workspace/poc", help="POC workspace folder")

    pr = poc_sub.add_parser("prepare", parents=[common], help="POC workspace, one client per hospital")
    pr.add_argument("--sites", type=int, default=None, help="number of hospitals (site-1..N) if no --datalist")
    pr.add_argument("--datalist", action="append", default=[], metavar="NAME=DATALIST",
                    help="a hospital and its datalist.json, written to its local/ecefl_site.json")
    pr.add_argument("--port", type=int, default=8002)
    pr.add_argument("--heartbeat-timeout", type=int, default=None,
                    help="seconds without heartbeats before the server declares a site dead (NVFlare default 600)")
    pr.add_argument("--privacy", default=None, metavar="PRIVACY_JSON",
                    help="site privacy policy (scopes with result filters) for every site, e.g. poc/privacy.json")
    pr.add_argument("--large-updates", action="store_true",
                    help="streaming timeouts for gpu-preset updates (278 MiB) over slow links in every "
                         "participant's local/comm_config.json (docs/DEPLOY.md §8)")
    st = poc_sub.add_parser("start", parents=[common], help="start server and clients, wait until connected")
    st.add_argument("--service", action="append", default=[],
                    help="start only this participant (server or a site; repeatable), e.g. after `poc kill`")
    su = poc_sub.add_parser("submit", parents=[common], help="submit a job through the FLARE API")
    su.add_argument("job", choices=["mae_pretrain", "ece_finetune"])
    su.add_argument("--rounds", type=int, default=5)
    su.add_argument("--local-epochs", type=int, default=1)
    su.add_argument("--preset", default="cpu-small")
    su.add_argument("--min-sites", type=int, default=None)
    su.add_argument("--init", default=None, help="ece_finetune: MAE global_model.pt to start from")
    su.add_argument("--heartbeat-timeout", type=int, default=None,
                    help="job-level heart_beat_timeout (NVFlare job config); a dead node is detected with the "
                         "server's own setting: `poc prepare --heartbeat-timeout`")
    su.add_argument("--resume", default=None, metavar="CHECKPOINT_OR_RUN_DIR",
                    help="continue an interrupted job from the server's last global_model.pt (or its run folder)")
    su.add_argument("--resume-job", default=None, metavar="JOB_ID",
                    help="POC: continue the interrupted job JOB_ID from what the server persisted")
    _cross_site_arguments(su)
    su.add_argument("--privacy-scope", default=None, metavar="SCOPE",
                    help="run only at sites whose local/privacy.json defines SCOPE, through its result filters")
    su.add_argument("--seed", type=int, default=0)
    wa = poc_sub.add_parser("wait", parents=[common], help="wait for a job; non-zero exit unless completed")
    wa.add_argument("job_id")
    wa.add_argument("--timeout", type=float, default=3600)
    do = poc_sub.add_parser("download", parents=[common], help="download a job's server-side results")
    do.add_argument("job_id")
    do.add_argument("--out", required=True)
    so = poc_sub.add_parser("stop", parents=[common], help="stop the POC and wait until its port is free")
    ki = poc_sub.add_parser("kill", parents=[common],
                            help="fault drill: kill the server or one site as if its machine went down")
    ki.add_argument("service", help="server or a site name")

    def run(args) -> int:
        from ecefl.fl import poc
        try:
            if args.poc_command == "prepare":
                datalists = dict(item.split("=", 1) for item in args.datalist)
                if not datalists:
                    if not args.sites:
                        print("error: give --datalist NAME=PATH per hospital, or --sites N", file=sys.stderr)
                        return 2
                    datalists = {f"site-{i + 1}": "" for i in range(args.sites)}
                state = poc.prepare(args.workspace, {k: v for k, v in datalists.items()}, port=args.port,
                                    privacy=args.privacy, heartbeat_timeout=args.heartbeat_timeout,
                                    large_updates=args.large_updates)
                print(f"POC prepared in {state['workspace']} for {', '.join(state['sites'])} (port {state['port']})")
            elif args.poc_command == "start":
                state = poc.start(args.workspace, services=args.service)
                print(f"POC running; connected: {', '.join(state['connected'])}")
            elif args.poc_command == "submit":
                if args.resume_job:
                    args.resume = str(poc.server_run_dir(args.workspace, args.resume_job))
                job_dir = _export_job(args)
                job_id = poc.submit(args.workspace, job_dir)
                print(job_id)
            elif args.poc_command == "wait":
                meta = poc.wait(args.workspace, args.job_id, timeout=args.timeout)
                print(f"job {args.job_id}: {meta.get('status')}")
            elif args.poc_command == "download":
                out = poc.download(args.workspace, args.job_id, args.out)
                print(f"results in {out}")
                if (out / "pooled_metrics.json").is_file():
                    print(describe_events(json.loads((out / "pooled_metrics.json").read_text())))
            elif args.poc_command == "stop":
                poc.stop(args.workspace)
                print("POC stopped")
            elif args.poc_command == "kill":
                pids = poc.kill(args.workspace, args.service)
                print(f"killed {args.service} (pids {', '.join(map(str, pids))}); `ecefl poc start` restarts it")
            else:
                p.print_help()
                return 2
        except poc.PocError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    for sp in (pr, st, su, wa, do, so, ki):
        sp.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _export_job(args):
    """Export the job folder the admin submits (the same recipe as jobs/<job>/job.py builds)."""
    import time as _time
    from ecefl.fl.jobs import build_recipe, resume_point
    from ecefl.plan import get_plan
    plan = get_plan(args.preset, seed=args.seed)
    initial, resume = None, None
    stamp = int(_time.time())
    if args.resume:
        if args.init:
            raise ValueError("--resume and --init exclude each other: a resumed job starts from its checkpoint")
        plan, initial, resume = resume_point(args.resume, args.job,
                                             Path(args.workspace).resolve() / f"resume_model-{stamp}.pt")
        print(f"resuming {args.job} at round {resume['start_round']} of {args.rounds}")
    elif args.job == "ece_finetune" and args.init:
        from ecefl.fl.simulate import finetune_start
        plan, initial = finetune_start(args.init, plan, Path(args.workspace).resolve() / "initial_model.pt", print)
    from ecefl.fl import poc
    n_sites = len(poc.load_state(args.workspace)["sites"])
    recipe = build_recipe(args.job, plan, rounds=args.rounds, local_epochs=args.local_epochs,
                          min_sites=args.min_sites or n_sites, seed=args.seed, initial_ckpt=initial,
                          heartbeat_timeout=args.heartbeat_timeout, resume=resume, privacy_scope=args.privacy_scope,
                          cross_site=args.cross_site_eval, task_timeout=args.task_timeout)
    out = Path(args.workspace).resolve() / "submitted" / f"{args.job}-{stamp}"
    recipe.export(str(out))
    return out / args.job


def _print_pooled(workspace) -> None:
    from pathlib import Path
    import json
    path = Path(workspace) / "ece_finetune" / "pooled_metrics.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text())
    final = report.get("final") or {}
    print(format_metrics_table(final.get("pooled"), final.get("sites", {})))
    print(describe_events(report))
    print(f"best round by pooled AUC: {report.get('best_round')}; artifacts in {Path(workspace).resolve()}")


def describe_events(report: dict) -> str:
    """Dropped/rejected sites and failures, one line each (what a coordinator must see after a run)."""
    lines = [f"{e['site']} {e['event']} in round {e['round']}: {e['reason']}" for e in report.get("events", [])]
    if report.get("resumed_from"):
        lines.insert(0, f"resumed at round {report.get('start_round')} from the global model of round "
                        f"{report['resumed_from'].get('checkpoint_round')}")
    return "\n".join(lines) if lines else "every site answered every round"


def format_metrics_table(pooled: dict | None, sites: dict) -> str:
    keys = ("dice", "dice_global", "auc", "accuracy", "sensitivity", "specificity", "f1", "n_cases")
    rows = [("pooled", pooled or {})] + sorted(sites.items())
    head = f"{'':14}" + "".join(f"{k:>12}" for k in keys)
    lines = [head]
    for name, m in rows:
        if m.get("suppressed"):
            lines.append(f"{name:14}" + f"{'(suppressed: too few cases)':>40}")
            continue
        cells = []
        for k in keys:
            v = m.get(k)
            cells.append(f"{'-':>12}" if v is None else (f"{v:>12d}" if isinstance(v, int) else f"{v:>12.3f}"))
        lines.append(f"{name:14}" + "".join(cells))
    return "\n".join(lines)


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on synthetic hospitals, ending in a visual report")
    p.add_argument("--out", default="workspace/demo")
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--cases-per-site", type=int, default=40)
    p.add_argument("--unlabeled-per-site", type=int, default=10)
    p.add_argument("--mae-rounds", type=int, default=2)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    _set_argument(p)

    def run(args) -> int:
        from ecefl.demo import run_demo
        from ecefl.plan import parse_assignments
        try:
            overrides = parse_assignments(args.plan_set)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        run_demo(args.out, args.preset, args.sites, args.cases_per_site, args.unlabeled_per_site, args.mae_rounds,
                 args.rounds, args.local_epochs, args.seed, progress=not args.no_progress, **overrides)
        return 0
    p.set_defaults(func=run)


def _infer(sub) -> None:
    p = sub.add_parser("infer", help="one patient: ECE probability, nodal RTSTRUCT, evidence image")
    p.add_argument("--model", required=True)
    p.add_argument("--dicom", required=True, help="the patient's folder (CT series, RTSTRUCT optional)")
    p.add_argument("--out", required=True)
    p.add_argument("--use-rtstruct", action="store_true", help="pool over the patient's own nodal contours")
    p.add_argument("--config", default=None, help="site.json (nodal ROI synonyms, tolerances)")

    def run(args) -> int:
        from ecefl.checkpoint import CheckpointError
        from ecefl.infer import InferenceError, infer
        from site_preprocess.config import SiteConfig
        from site_preprocess.errors import UsageError
        try:
            infer(args.model, args.dicom, args.out, args.use_rtstruct, SiteConfig.load(args.config))
        except (InferenceError, CheckpointError, UsageError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return 0
    p.set_defaults(func=run)


def _export_bundle(sub) -> None:
    p = sub.add_parser("export-bundle", help="export a model as a MONAI bundle (runs with MONAI alone)")
    p.add_argument("--model", required=True)
    p.add_argument("--out", required=True)

    @_learning_errors
    def run(args) -> int:
        from ecefl.bundle import export_bundle
        out = export_bundle(args.model, args.out)
        print(f"MONAI bundle in {out}; run: python -m monai.bundle run --config_file {out}/configs/inference.json "
              f"--bundle_root {out} --dataset_dir NIFTI_DIR")
        return 0
    p.set_defaults(func=run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecefl", description=__doc__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_synth, _preprocess, _pretrain, _train, _evaluate, _calibrate, _fl, _poc, _demo, _infer, _export_bundle):
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
