"""Shared command line of jobs/<job>/job.py: build the recipe, then export it or run it in SimEnv/PocEnv/ProdEnv.

`--export --export-dir DIR` is handled by NVFlare's recipe machinery (recipe.execute exports instead of running).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from nvflare.recipe import PocEnv, ProdEnv, SimEnv  # importing nvflare.recipe consumes --export/--export-dir

from ecefl.plan import get_plan

from .jobs import DEFAULT_TASK_TIMEOUT, build_recipe


def main(kind: str, argv=None) -> None:
    p = argparse.ArgumentParser(description=f"ecefl {kind} job")
    p.add_argument("--env", choices=["sim", "poc", "prod"], default="sim")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--preset", default="cpu-small")
    p.add_argument("--min-sites", type=int, default=2)
    p.add_argument("--sites", type=int, default=3, help="sim/poc: number of sites (site-1..N)")
    p.add_argument("--site-config", default=None, help="sim: JSON {\"sites\": {name: {\"datalist\": path}}}")
    p.add_argument("--workspace", default="workspace/jobs", help="sim: simulator workspace root")
    p.add_argument("--startup-kit", default=None, help="prod: the admin's startup kit folder")
    p.add_argument("--username", default="admin@nvidia.com", help="prod: admin user of the startup kit")
    p.add_argument("--initial-ckpt", default=None, help="ece_finetune: full model checkpoint to start from")
    p.add_argument("--heartbeat-timeout", type=int, default=None)
    p.add_argument("--privacy-scope", default=None, help="run only at sites defining this privacy scope")
    p.add_argument("--resume", default=None, help="continue from an interrupted job's per-round global_model.pt")
    p.add_argument("--cross-site-eval", action="store_true",
                   help="ece_finetune: NVFlare's cross-site evaluation after training (sends each site's local "
                        "model to the others; off by default)")
    p.add_argument("--task-timeout", type=int, default=DEFAULT_TASK_TIMEOUT, metavar="SECONDS",
                   help="once --min-sites sites answered a round, wait at most this long for the others (0: for ever)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    plan, initial, resume = get_plan(args.preset, seed=args.seed), args.initial_ckpt, None
    if args.resume:
        from .jobs import resume_point
        plan, initial, resume = resume_point(args.resume, kind, Path(args.workspace).resolve() / "resume_model.pt")
    recipe = build_recipe(kind, plan, rounds=args.rounds, local_epochs=args.local_epochs, min_sites=args.min_sites,
                          seed=args.seed, initial_ckpt=initial, heartbeat_timeout=args.heartbeat_timeout,
                          resume=resume, privacy_scope=args.privacy_scope, cross_site=args.cross_site_eval,
                          task_timeout=args.task_timeout)
    if args.env == "sim":
        clients = [f"site-{i + 1}" for i in range(args.sites)]
        if args.site_config:
            os.environ["ECEFL_SITE_CONFIG"] = str(Path(args.site_config).resolve())
            clients = sorted(json.loads(Path(args.site_config).read_text())["sites"])
        env = SimEnv(clients=clients, num_threads=len(clients), workspace_root=args.workspace)
    elif args.env == "poc":
        env = PocEnv(num_clients=args.sites)
    else:
        if not args.startup_kit:
            p.error("--env prod needs --startup-kit")
        env = ProdEnv(startup_kit_location=args.startup_kit, username=args.username)
    run = recipe.execute(env)
    print(f"job {kind}: {run.get_job_id() if hasattr(run, 'get_job_id') else run}")
