"""Federated MAE pretraining job (NVFlare 2.9 recipe around the ecefl engine).

    python jobs/mae_pretrain/job.py --export --export-dir jobs/mae_pretrain      # job folder for `nvflare job submit`
    python jobs/mae_pretrain/job.py --env sim --site-config sites.json           # simulator on this machine
    python jobs/mae_pretrain/job.py --env poc --sites 3                          # POC (stops/wipes a running POC)
    python jobs/mae_pretrain/job.py --env prod --startup-kit ADMIN_KIT_DIR       # provisioned production

Sites find their data through site-local configuration (docs/DEPLOY.md), never through the job.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "custom"))  # run from a source checkout

from ecefl.fl.job_cli import main  # noqa: E402

if __name__ == "__main__":
    main("mae_pretrain")
