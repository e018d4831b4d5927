"""`ecefl poc`: a real NVFlare server and hospital clients on this machine (POC mode)."""
from __future__ import annotations

import argparse
import json
import sys

from .common import exit_codes
from .federated import add_job_arguments, describe_events, export_job


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
    add_job_arguments(su)
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

    @exit_codes
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
            job_dir = export_job(args)
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


COMMANDS = (_poc,)
