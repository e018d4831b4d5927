"""Federated ECE fine-tuning job: the dual-output SwinUNETR (nodal segmentation + ECE) on NVFlare 2.9's PyTorch
FedAvg recipe, with the ecefl server workflow (screened updates, securely summed pooled metrics, best model) and
the Client API script custom/ecefl/fl/client.py (the centralised engine plus flare.receive()/flare.send()).

    python jobs/ece_finetune/job.py --export --export-dir jobs/ece_finetune      # job folder for `nvflare job submit`
    python jobs/ece_finetune/job.py --env sim --site-config sites.json           # simulator on this machine
    python jobs/ece_finetune/job.py --env poc --sites 3                          # POC (stops/wipes a running POC)
    python jobs/ece_finetune/job.py --env prod --startup-kit ADMIN_KIT_DIR       # provisioned production
    add --init MAE_GLOBAL_MODEL.pt to start from the federated MAE encoder (verified N/N)

Sites find their data through site-local configuration (docs/DEPLOY.md), never through the job.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "custom"))  # run from a source checkout

from ecefl.fl.job_cli import execution_env, job_arguments  # noqa: E402  (first: consumes --export)
from ecefl.fl.jobs import build_recipe, job_start  # noqa: E402
from ecefl.plan import get_plan  # noqa: E402


def main(argv=None) -> None:
    args, parser = job_arguments(__doc__, argv)
    # where training starts: the MAE encoder (--init: the plan inherits its geometry, the encoder is copied key by
    # key), an interrupted job's last global model (--resume), or a fresh network
    plan, initial_ckpt, resume = job_start("ece_finetune", get_plan(args.preset, seed=args.seed), args.init,
                                           args.resume, Path(args.workspace).resolve(), args.rounds)
    # NVFlare's FedAvgRecipe (nvflare.app_opt.pt.recipes) with PooledFedAvg as its controller, client.py and its
    # arguments, TensorBoard tracking, custom/ shipped with the job: custom/ecefl/fl/jobs.py
    recipe = build_recipe("ece_finetune", plan, rounds=args.rounds, local_epochs=args.local_epochs,
                          min_sites=args.min_sites, seed=args.seed, initial_ckpt=initial_ckpt, resume=resume,
                          heartbeat_timeout=args.heartbeat_timeout, privacy_scope=args.privacy_scope,
                          cross_site=args.cross_site_eval, task_timeout=args.task_timeout,
                          quantization=args.quantize)
    run = recipe.execute(execution_env(args, parser))  # SimEnv / PocEnv / ProdEnv, or the export
    print(f"job ece_finetune: {run.get_job_id() if hasattr(run, 'get_job_id') else run}")


if __name__ == "__main__":
    main()
