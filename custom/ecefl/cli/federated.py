"""`ecefl fl`: the NVFlare simulator, and a running federation from the admin's startup kit (submit, status, wait,
abort, download); the job export shared with `ecefl poc`."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ecefl.fl.job_options import add_job_options
from ecefl.job_kinds import FINETUNE, JOB_KINDS

from .common import add_plan_overrides, exit_codes, overrides_from

_log = logging.getLogger(__name__)


def _fl(sub) -> None:
    p = sub.add_parser("fl", help="federated jobs on NVIDIA FLARE: the simulator, and a running federation "
                                   "from the admin's startup kit (submit, status, wait, abort, download)")
    fl_sub = p.add_subparsers(dest="fl_command", metavar="FL_COMMAND")
    s = fl_sub.add_parser("simulate", help="run mae_pretrain / ece_finetune / all in the NVFlare simulator")
    s.add_argument("--site", action="append", required=True, metavar="NAME=DATALIST",
                   help="a site and its datalist.json (repeatable); site-local, never part of the job")
    s.add_argument("--job", choices=[*JOB_KINDS, "all"], default="all")
    s.add_argument("--workspace", required=True)
    add_job_options(s, heartbeat=False)
    s.add_argument("--val-fraction", type=float, default=0.25)
    s.add_argument("--min-count", type=int, default=0, help="suppress site statistics below this class count")
    s.add_argument("--privacy", default=None, metavar="PRIVACY_JSON",
                   help="a site privacy policy (e.g. poc/privacy.json) whose --privacy-scope every site applies")
    s.add_argument("--validate-every", type=int, default=None, metavar="K",
                   help="ece_finetune: sites validate the global model every K rounds and the final one (default 1; "
                        "0: the final one only)")
    s.add_argument("--quiet", action="store_true", help="NVFlare logs at WARNING level")
    s.add_argument("--no-progress", action="store_true")
    add_plan_overrides(s)

    @exit_codes
    def run(args) -> int:
        from ecefl.fl.simulate import parse_sites, simulate
        sites = parse_sites(args.site)
        simulate(sites, args.job, args.rounds, args.local_epochs, args.preset, args.workspace,
                 min_sites=args.min_sites, seed=args.seed, init=args.init, val_fraction=args.val_fraction,
                 min_count=args.min_count, quiet=args.quiet, progress=not args.no_progress,
                 resume=args.resume, privacy=args.privacy, privacy_scope=args.privacy_scope,
                 cross_site=args.cross_site_eval, task_timeout=args.task_timeout, quantization=args.quantize,
                 **overrides_from(args),
                 **({"validate_every": args.validate_every} if args.validate_every is not None else {}))
        print_pooled(args.workspace)
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
    add_job_arguments(su)
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

    @exit_codes
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
            job_id = admin.submit(args.admin_kit, export_job(args, n_sites=n_sites, workdir=args.workdir))
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


def add_job_arguments(p) -> None:
    """The options of a job submitted to running sites (POC or a provisioned federation)."""
    p.add_argument("job", choices=JOB_KINDS)
    add_job_options(p)


def export_job(args, n_sites: int | None = None, workdir=None):
    """Export the job folder the admin submits (the same recipe as jobs/<job>/job.py builds). n_sites: the
    default of --min-sites (every site); workdir: where the job folder and its start model are written."""
    import time as _time
    from ecefl.fl.jobs import build_recipe, job_start
    from ecefl.plan import get_plan
    workdir = Path(workdir or args.workspace).resolve()
    plan, initial, resume = job_start(args.job, get_plan(args.preset, seed=args.seed), args.init, args.resume,
                                      workdir, args.rounds, _log.info)
    stamp = int(_time.time())
    if n_sites is None:
        from ecefl.fl import poc
        n_sites = len(poc.load_state(args.workspace)["sites"])
    recipe = build_recipe(args.job, plan, rounds=args.rounds, local_epochs=args.local_epochs,
                          min_sites=args.min_sites or n_sites, seed=args.seed, initial_ckpt=initial,
                          heartbeat_timeout=args.heartbeat_timeout, resume=resume, privacy_scope=args.privacy_scope,
                          cross_site=args.cross_site_eval, task_timeout=args.task_timeout,
                          quantization=args.quantize)
    out = workdir / "submitted" / f"{args.job}-{stamp}"
    recipe.export(str(out))
    return out / args.job


def print_pooled(workspace) -> None:
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


COMMANDS = (_fl,)
