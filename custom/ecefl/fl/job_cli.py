"""Where jobs/<job>/job.py runs its recipe: the simulator, POC or a provisioned federation (NVFlare's SimEnv,
PocEnv, ProdEnv), or `--export --export-dir DIR`, which NVFlare's recipe machinery handles (recipe.execute then
exports instead of running; importing nvflare.recipe consumes those two flags, so job.py imports this module first).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nvflare.recipe import PocEnv, ProdEnv, SimEnv  # importing nvflare.recipe consumes --export/--export-dir


def job_arguments(doc: str, argv=None):
    """(args, parser) of a jobs/<job>/job.py: the job options (ecefl.fl.job_options) and where to run it."""
    import argparse

    from .job_options import add_job_options
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_job_options(parser, min_sites_default=2)
    add_environment_options(parser)
    return parser.parse_args(argv), parser


def add_environment_options(p) -> None:
    p.add_argument("--env", choices=["sim", "poc", "prod"], default="sim")
    p.add_argument("--sites", type=int, default=3, help="sim/poc: number of sites (site-1..N)")
    p.add_argument("--site-config", default=None, help="sim: JSON {\"sites\": {name: {\"datalist\": path}}}")
    p.add_argument("--workspace", default="workspace/jobs", help="sim: simulator workspace root (and start models)")
    p.add_argument("--startup-kit", default=None, help="prod: the admin's startup kit folder")
    p.add_argument("--username", default="admin@nvidia.com", help="prod: admin user of the startup kit")


def execution_env(args, parser):
    if args.env == "sim":
        clients = [f"site-{i + 1}" for i in range(args.sites)]
        if args.site_config:
            os.environ["ECEFL_SITE_CONFIG"] = str(Path(args.site_config).resolve())
            clients = sorted(json.loads(Path(args.site_config).read_text())["sites"])
        return SimEnv(clients=clients, num_threads=len(clients), workspace_root=args.workspace)
    if args.env == "poc":
        return PocEnv(num_clients=args.sites)
    if not args.startup_kit:
        parser.error("--env prod needs --startup-kit")
    return ProdEnv(startup_kit_location=args.startup_kit, username=args.username)
