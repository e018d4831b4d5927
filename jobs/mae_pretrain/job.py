"""Federated MAE pretraining job: the SwinUNETR encoder learns to fill in masked 3D cubes of every site's CTs
(labelled or not), on NVFlare 2.9's PyTorch FedAvg recipe with the ecefl server workflow and the Client API script
custom/ecefl/fl/client.py (the centralised engine plus flare.receive()/flare.send()).

    python jobs/mae_pretrain/job.py --export --export-dir jobs/mae_pretrain      # job folder for `nvflare job submit`
    python jobs/mae_pretrain/job.py --env sim --site-config sites.json           # simulator on this machine
    python jobs/mae_pretrain/job.py --env poc --sites 3                          # POC (stops/wipes a running POC)
    python jobs/mae_pretrain/job.py --env prod --startup-kit ADMIN_KIT_DIR       # provisioned production

Its global_model.pt starts ece_finetune (`--init`). Sites find their data through site-local configuration
(docs/DEPLOY.md), never through the job.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "custom"))  # run from a source checkout

from ecefl.fl.job_cli import execution_env, job_arguments  # noqa: E402  (first: consumes --export)
from ecefl.fl.jobs import build_recipe, job_start  # noqa: E402
from ecefl.plan import get_plan  # noqa: E402


def main(argv=None) -> None:
    args, parser = job_arguments(__doc__, argv)
    # a fresh encoder, or an interrupted job's last global model (--resume); --init does not apply here
    plan, initial_ckpt, resume = job_start("mae_pretrain", get_plan(args.preset, seed=args.seed), args.init,
                                           args.resume, Path(args.workspace).resolve(), args.rounds)
    # the same recipe as ece_finetune, with the MaskedPretrainer model (custom/ecefl/fl/jobs.py); sites train on
    # all their CTs, labelled or not
    recipe = build_recipe("mae_pretrain", plan, rounds=args.rounds, local_epochs=args.local_epochs,
                          min_sites=args.min_sites, seed=args.seed, initial_ckpt=initial_ckpt, resume=resume,
                          heartbeat_timeout=args.heartbeat_timeout, privacy_scope=args.privacy_scope,
                          task_timeout=args.task_timeout, quantization=args.quantize)
    run = recipe.execute(execution_env(args, parser))  # SimEnv / PocEnv / ProdEnv, or the export
    print(f"job mae_pretrain: {run.get_job_id() if hasattr(run, 'get_job_id') else run}")


if __name__ == "__main__":
    main()
