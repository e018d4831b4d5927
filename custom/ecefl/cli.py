"""`ecefl`: one command, one sub-command per pipeline stage (each writes the artifact the next one reads)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ecefl.job_kinds import FINETUNE, JOB_KINDS
from ecefl.plan import PRESETS

_PRESET_NAMES = sorted(PRESETS)


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


def _exit_codes(fn):
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


_learning_errors = _exit_codes


def _training_parser(sub, name: str, help_text: str, epochs: int):
    """Arguments shared by the centralised training stages."""
    p = sub.add_parser(name, help=help_text)
    p.add_argument("--datalist", action="append", required=True, help="a site's datalist.json (repeatable)")
    p.add_argument("--preset", default="cpu-small", choices=_PRESET_NAMES)
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
    p = sub.add_parser("fl", help="federated jobs on NVIDIA FLARE: the simulator, and a running federation "
                                   "from the admin's startup kit (submit, status, wait, abort, download)")
    fl_sub = p.add_subparsers(dest="fl_command", metavar="FL_COMMAND")
    s = fl_sub.add_parser("simulate", help="run mae_pretrain / ece_finetune / all in the NVFlare simulator")
    s.add_argument("--site", action="append", required=True, metavar="NAME=DATALIST",
                   help="a site and its datalist.json (repeatable); site-local, never part of the job")
    s.add_argument("--job", choices=[*JOB_KINDS, "all"], default="all")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--local-epochs", type=int, default=1)
    s.add_argument("--preset", default="cpu-small", choices=_PRESET_NAMES)
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

    @_exit_codes
    def run(args) -> int:
        from ecefl.fl.simulate import parse_sites, simulate
        sites = parse_sites(args.site)
        simulate(sites, args.job, args.rounds, args.local_epochs, args.preset, args.workspace,
                 min_sites=args.min_sites, seed=args.seed, init=args.init, val_fraction=args.val_fraction,
                 min_count=args.min_count, quiet=args.quiet, progress=not args.no_progress,
                 resume=args.resume, privacy=args.privacy, privacy_scope=args.privacy_scope,
                 cross_site=args.cross_site_eval, task_timeout=args.task_timeout,
                 **_overrides(args), **({"validate_every": args.validate_every} if args.validate_every else {}))
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
    _fl_admin(fl_sub)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _fl_admin(fl_sub) -> None:
    """A running federation (provisioned, TLS) from the coordinating centre's admin startup kit."""
    kit = argparse.ArgumentParser(add_help=False)
    kit.add_argument("--admin-kit", required=True, metavar="KIT_DIR",
                     help="the admin's startup kit from provisioning (its folder is named after the admin user)")
    su = fl_sub.add_parser("submit", parents=[kit], help="export and submit a job; prints its id")
    _job_arguments(su)
    su.add_argument("--workdir", default="workspace/fl-admin", help="where the exported job folder is written")
    st = fl_sub.add_parser("status", parents=[kit], help="list the jobs (newest first), or one job with its errors")
    st.add_argument("job_id", nargs="?", default=None)
    wa = fl_sub.add_parser("wait", parents=[kit], help="follow a job until it ends; non-zero exit unless completed")
    wa.add_argument("job_id")
    wa.add_argument("--timeout", type=float, default=24 * 3600)
    ab = fl_sub.add_parser("abort", parents=[kit], help="abort a running job")
    ab.add_argument("job_id")
    do = fl_sub.add_parser("download", parents=[kit], help="download a job's results (pooled metrics, models)")
    do.add_argument("job_id")
    do.add_argument("--out", required=True)

    @_exit_codes
    def run(args) -> int:
        from ecefl.fl import admin
        if args.fl_command == "submit":
            n_sites = args.min_sites
            if n_sites is None:
                with admin.session(args.admin_kit) as s:
                    n_sites = len(s.get_connected_client_list())
                if not n_sites:
                    print("error: no site is connected to the server; start the sites first", file=sys.stderr)
                    return 1
            job_id = admin.submit(args.admin_kit, _export_job(args, n_sites=n_sites, workdir=args.workdir))
            print(job_id)
        elif args.fl_command == "status":
            for meta in admin.status(args.admin_kit, args.job_id):
                print(f"{meta.get('job_id')}  {meta.get('name', ''):14} {meta.get('status', ''):22} "
                      f"submitted {meta.get('submit_time_iso', '')}")
            if args.job_id:
                for where, errs in admin.errors(args.admin_kit, args.job_id).items():
                    print(f"errors at {where}: {errs or 'none'}")
        elif args.fl_command == "wait":
            meta = admin.wait(args.admin_kit, args.job_id, timeout=args.timeout)
            print(f"job {args.job_id}: {meta.get('status')}")
        elif args.fl_command == "abort":
            admin.abort(args.admin_kit, args.job_id)
            print(f"job {args.job_id}: abort requested")
        else:
            out = admin.download(args.admin_kit, args.job_id, args.out)
            print(f"results in {out}")
            if (out / "pooled_metrics.json").is_file():
                print(describe_events(json.loads((out / "pooled_metrics.json").read_text())))
        return 0
    for sp in (su, st, wa, ab, do):
        sp.set_defaults(func=run)


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


def _job_arguments(p) -> None:
    """The options of a job submitted to running sites (POC or a provisioned federation), declared once."""
    p.add_argument("job", choices=JOB_KINDS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--preset", default="cpu-small", choices=_PRESET_NAMES)
    p.add_argument("--min-sites", type=int, default=None)
    p.add_argument("--init", default=None, help="ece_finetune: MAE global_model.pt to start from")
    p.add_argument("--heartbeat-timeout", type=int, default=None,
                   help="job-level heart_beat_timeout (NVFlare job config); a dead node is detected with the "
                        "server's own setting: `poc prepare --heartbeat-timeout`")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT_OR_RUN_DIR",
                   help="continue an interrupted job from the server's last global_model.pt (or its run folder)")
    _cross_site_arguments(p)
    p.add_argument("--privacy-scope", default=None, metavar="SCOPE",
                   help="run only at sites whose local/privacy.json defines SCOPE, through its result filters")
    p.add_argument("--seed", type=int, default=0)


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
    _job_arguments(su)
    su.add_argument("--resume-job", default=None, metavar="JOB_ID",
                    help="POC: continue the interrupted job JOB_ID from what the server persisted")
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

    @_exit_codes
    def run(args) -> int:
        from ecefl.fl import poc
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
        return 0
    for sp in (pr, st, su, wa, do, so, ki):
        sp.set_defaults(func=run)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def _export_job(args, n_sites: int | None = None, workdir=None):
    """Export the job folder the admin submits (the same recipe as jobs/<job>/job.py builds). n_sites: the
    default of --min-sites (every site); workdir: where the job folder and its start model are written."""
    import time as _time
    from ecefl.fl.jobs import build_recipe, resume_point
    from ecefl.plan import get_plan
    workdir = Path(workdir or args.workspace).resolve()
    plan = get_plan(args.preset, seed=args.seed)
    initial, resume = None, None
    stamp = int(_time.time())
    if args.resume:
        if args.init:
            raise ValueError("--resume and --init exclude each other: a resumed job starts from its checkpoint")
        plan, initial, resume = resume_point(args.resume, args.job, workdir / f"resume_model-{stamp}.pt")
        print(f"resuming {args.job} at round {resume['start_round']} of {args.rounds}")
    elif args.job == FINETUNE and args.init:
        from ecefl.fl.simulate import finetune_start
        plan, initial = finetune_start(args.init, plan, workdir / "initial_model.pt", print)
    if n_sites is None:
        from ecefl.fl import poc
        n_sites = len(poc.load_state(args.workspace)["sites"])
    recipe = build_recipe(args.job, plan, rounds=args.rounds, local_epochs=args.local_epochs,
                          min_sites=args.min_sites or n_sites, seed=args.seed, initial_ckpt=initial,
                          heartbeat_timeout=args.heartbeat_timeout, resume=resume, privacy_scope=args.privacy_scope,
                          cross_site=args.cross_site_eval, task_timeout=args.task_timeout)
    out = workdir / "submitted" / f"{args.job}-{stamp}"
    recipe.export(str(out))
    return out / args.job


def _print_pooled(workspace) -> None:
    from pathlib import Path
    import json
    path = Path(workspace) / FINETUNE / "pooled_metrics.json"
    if not path.is_file():
        return
    report = json.loads(path.read_text())
    final = report.get("final") or {}
    from ecefl.report import format_metrics_table
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


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on synthetic hospitals, ending in a visual report")
    p.add_argument("--out", default="workspace/demo")
    p.add_argument("--preset", default="cpu-small", choices=_PRESET_NAMES)
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

    @_exit_codes
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

    @_learning_errors
    def run(args) -> int:
        from ecefl.bundle import export_bundle
        out = export_bundle(args.model, args.out)
        print(f"MONAI bundle in {out}; run: python -m monai.bundle run --config_file {out}/configs/inference.json "
              f"--bundle_root {out} --dataset_dir NIFTI_DIR")
        return 0
    p.set_defaults(func=run)


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
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_synth, _preprocess, _pretrain, _train, _evaluate, _calibrate, _fl, _poc, _demo, _infer, _export_bundle):
        add(sub)
    _explain(parser)
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
