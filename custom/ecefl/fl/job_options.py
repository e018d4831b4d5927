"""The options of a federated job, declared once: `ecefl fl simulate`, `ecefl poc submit`, `ecefl fl submit` and
jobs/<job>/job.py all take these (no NVFlare import here: importing nvflare.recipe consumes --export flags)."""
from __future__ import annotations

from ecefl.plan import PRESETS

DEFAULT_TASK_TIMEOUT = 3600  # once min_sites answered a round, how long the others may still take (DEPLOY)
# NVFlare's message quantization (ecefl/fl/quantization.py); the last three run only where CUDA is: NVFlare's
# filter moves those tensors to the GPU
QUANTIZATION_TYPES = ("float16", "adaquant", "blockwise8", "float4", "normfloat4")
CUDA_ONLY_QUANTIZATION = ("blockwise8", "float4", "normfloat4")


def check_quantization(quantization: str | None, here_too: bool = False) -> None:
    """Fail before a job is built, saying what to do, where NVFlare's quantization filters cannot run.
    here_too: the filters also run on this machine (the simulator), so CUDA is checked here."""
    if quantization is None:
        return
    if quantization not in QUANTIZATION_TYPES:
        raise ValueError(f"--quantize {quantization!r}: choose one of {', '.join(QUANTIZATION_TYPES)}")
    try:
        import bitsandbytes  # noqa: F401  (NVFlare's quantization module imports it)
    except ImportError as exc:
        raise ValueError(f"--quantize {quantization} needs bitsandbytes, which NVFlare's quantization filters "
                         f"import: pip install 'ecefl[gpu]' here, on the server and at every site ({exc})") from exc
    if here_too and quantization in CUDA_ONLY_QUANTIZATION:
        import torch
        if not torch.cuda.is_available():
            raise ValueError(f"--quantize {quantization}: NVFlare's filter runs it on CUDA only and this machine "
                             f"has no GPU; use float16 or adaquant here")


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
    p.add_argument("--quantize", default=None, choices=QUANTIZATION_TYPES, metavar="TYPE",
                   help="quantize every model message in both directions with NVFlare's ModelQuantizer ("
                        + ", ".join(QUANTIZATION_TYPES) + "; the last three need CUDA at the server and every site); "
                        "needs bitsandbytes: pip install 'ecefl[gpu]'. Default: fp32 messages")
    p.add_argument("--seed", type=int, default=0)
