"""The options of a federated job, declared once: `ecefl fl simulate`, `ecefl poc submit`, `ecefl fl submit` and
jobs/<job>/job.py all take these (no NVFlare import here: importing nvflare.recipe consumes --export flags)."""
from __future__ import annotations

from ecefl.plan import PRESETS

DEFAULT_TASK_TIMEOUT = 3600  # once min_sites answered a round, how long the others may still take (DEPLOY)


def add_job_options(p, heartbeat: bool = True, min_sites_default: int | None = None) -> None:
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--local-epochs", type=int, default=1)
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS))
    p.add_argument("--min-sites", type=int, default=min_sites_default,
                   help="fewest sites a round accepts (default: every site)")
    p.add_argument("--init", "--initial-ckpt", dest="init", default=None, metavar="MAE_GLOBAL_MODEL",
                   help="ece_finetune: the MAE global_model.pt to start from (its plan's geometry is inherited, its "
                        "encoder copied key by key)")
    p.add_argument("--resume", default=None, metavar="CHECKPOINT_OR_RUN_DIR",
                   help="continue an interrupted job from the server's last global_model.pt (or its run folder)")
    if heartbeat:
        p.add_argument("--heartbeat-timeout", type=int, default=None,
                       help="job-level heart_beat_timeout (NVFlare job config); a dead node is detected with the "
                            "server's own setting: `poc prepare --heartbeat-timeout`")
    p.add_argument("--task-timeout", type=int, default=DEFAULT_TASK_TIMEOUT, metavar="SECONDS",
                   help="once --min-sites sites have answered a round, wait at most this long for the others, then "
                        "go on without them (named in the events); 0 waits for every site (default %(default)s)")
    p.add_argument("--cross-site-eval", action="store_true",
                   help="ece_finetune: also run NVFlare's cross-site evaluation after training; it sends each "
                        "site's un-aggregated local model to every other site (off by default: the sites validate "
                        "the global model only)")
    p.add_argument("--no-cross-site", action="store_true", help="the default; kept for old scripts")
    p.add_argument("--privacy-scope", default=None, metavar="SCOPE",
                   help="run only at sites whose local/privacy.json defines SCOPE, through its result filters")
    p.add_argument("--seed", type=int, default=0)
