"""Job construction (admin side) with NVFlare 2.9's PyTorch FedAvg recipe and our pooled-metrics controller.

The recipe gives us the standard pieces (PyTorch persistor with an initial checkpoint, ScriptRunner with the
Client API, TensorBoard tracking, cross-site evaluation, export, SimEnv/PocEnv/ProdEnv); `_create_controller`
swaps FedAvg for PooledFedAvg, which screens updates, pools site statistics, keeps the best model by pooled
AUC and tolerates dropped sites down to `min_sites`. The job carries no site paths: data locations are
site-local configuration (ecefl/fl/site_config.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from nvflare.app_opt.pt.recipes import FedAvgRecipe
from nvflare.client.config import TransferType

from ecefl.plan import Plan
from ecefl.job_kinds import CHECKPOINT_KIND, FINETUNE, JOB_KINDS, MODEL_CLASS

from .server import PooledFedAvg

# custom/ (holding the ecefl package) is copied into each app's custom folder: the code travels with the job
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
CLIENT_SCRIPT = Path(__file__).resolve().parent / "client.py"
# DEFAULT_TASK_TIMEOUT: a CPU round takes minutes, a gpu one on a slow link tens of minutes
from .job_options import DEFAULT_TASK_TIMEOUT, check_quantization

_log = logging.getLogger(__name__)
# what a site answers: training (update + statistics of the received global model), validation of the global
# model, and (cross-site evaluation only) its own locally trained model
SITE_TASKS = ("train", "validate", "submit_model")


class EceFedAvgRecipe(FedAvgRecipe):
    def __init__(self, *, kind: str, plan: Plan, min_sites: int, resume: dict | None = None, task_timeout: int = 0,
                 **kwargs):
        # set before super().__init__, which builds the controller
        self._kind, self._plan_dict, self._min_sites, self._resume = kind, plan.to_dict(), min_sites, resume
        self._task_timeout = task_timeout
        super().__init__(**kwargs)

    def _create_controller(self, persistor_id: str, model_params, model_aggregator):
        resume = self._resume or {}
        return PooledFedAvg(num_clients=self.min_clients, num_rounds=self.num_rounds, persistor_id=persistor_id,
                            start_round=resume.get("start_round", 0), job_kind=self._kind, plan=self._plan_dict,
                            min_sites=self._min_sites, threshold=resume.get("threshold", 0.5),
                            node_threshold=resume.get("node_threshold", 0.5),
                            resumed_from=resume or None, memory_gc_rounds=self.server_memory_gc_rounds,
                            task_timeout=self._task_timeout)


def build_recipe(kind: str, plan: Plan, rounds: int, local_epochs: int = 1, min_sites: int = 1,
                 val_fraction: float = 0.25, seed: int = 0, min_count: int = 0, initial_ckpt: str | None = None,
                 heartbeat_timeout: int | None = None, cross_site: bool = False, tracking: bool = True,
                 name: str | None = None, site_scripts: dict[str, str | None] | None = None,
                 resume: dict | None = None, privacy_scope: str | None = None,
                 result_filters: list | None = None, task_timeout: int = DEFAULT_TASK_TIMEOUT,
                 quantization: str | None = None) -> EceFedAvgRecipe:
    """site_scripts: {site: client script or None for the standard one}; when given it must name every site
    (NVFlare then builds one client app per listed site).
    rounds: the job's total rounds; with resume ({"start_round", "threshold", ...} from resume_point) the job
    runs only the rounds from start_round on, starting from initial_ckpt.
    privacy_scope: the job runs only at sites whose local/privacy.json defines that scope, and each applies the
    scope's result filters (e.g. PercentilePrivacy, SVTPrivacy) to its update; updates travel as weight
    differences, which is what NVFlare's privacy filters act on.
    result_filters: filter objects every site applies to each result it sends, built into the job (the simulator
    has no site privacy.json; see privacy_filters); updates then travel as weight differences too.
    task_timeout: once min_sites have answered a round, seconds to wait for the other sites before the round
    goes on without them (named in the events); 0 waits for every site.
    quantization: NVFlare's message quantization (ecefl/fl/quantization.py) of every model that travels, server to
    site and site to server, applied after the result filters; None sends fp32.
    cross_site: NVFlare's cross-site evaluation after training, off by default: it ships each site's
    un-aggregated local model to every other site (a model-inversion risk); the sites always validate the
    global model every validate_every rounds and at the end."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job {kind!r}; choose one of {JOB_KINDS}")
    if cross_site and (privacy_scope or result_filters):
        raise ValueError("cross-site evaluation sends each site's full local model, which the weight-difference "
                         "privacy filters of a privacy scope do not act on; run it without --privacy-scope, or "
                         "evaluate the global model only (the default)")
    check_quantization(quantization)
    if rounds < 1 or local_epochs < 1 or min_sites < 1:
        raise ValueError("rounds, local epochs and min_sites must be >= 1")
    args = f"--job {kind} --local-epochs {local_epochs} --val-fraction {val_fraction} --seed {seed} " \
           f"--min-count {min_count}"
    remaining = rounds - (resume or {}).get("start_round", 0)
    if remaining < 1:
        raise ValueError(f"nothing to resume: the checkpoint is from round {resume['start_round'] - 1} and the job "
                         f"has {rounds} round(s); raise --rounds to train further")
    recipe = EceFedAvgRecipe(
        kind=kind, plan=plan, min_sites=min_sites, resume=resume, task_timeout=task_timeout, name=name or kind,
        model={"path": MODEL_CLASS[kind], "args": {"plan": plan.to_dict()}},
        initial_ckpt=str(Path(initial_ckpt).resolve()) if initial_ckpt else None,
        min_clients=min_sites, num_rounds=remaining, train_script=str(CLIENT_SCRIPT), train_args=args,
        # no NVFlare IntimeModelSelector: sites send no per-site "auc" metric (only additive statistics), so it
        # warned every round and never selected; PooledFedAvg keeps the best model from the pooled statistics
        key_metric="",
        # gc.collect + malloc_trim after every round on the server and at the sites: without it the server's job
        # process grew by a quarter over 20 rounds (docs/BENCHMARKS.md, "Speed and bytes")
        server_memory_gc_rounds=1, client_memory_gc_rounds=1,
        **({"params_transfer_type": TransferType.DIFF} if privacy_scope or result_filters else {}))
    for result_filter in result_filters or []:  # every result a site sends, not only its training update
        recipe.add_client_output_filter(result_filter, tasks=list(SITE_TASKS))
    if quantization:  # NVFlare's filters: the sender quantizes, the receiver restores fp32
        from .quantization import StateDictDequantizer, StateDictQuantizer
        from .protocol import REFIT_TASK
        every = [*SITE_TASKS, REFIT_TASK]  # every task that carries a model (NVFlare matches task names exactly)
        recipe.add_server_output_filter(StateDictQuantizer(quantization_type=quantization), tasks=every)
        recipe.add_client_input_filter(StateDictDequantizer(), tasks=every)
        recipe.add_client_output_filter(StateDictQuantizer(quantization_type=quantization), tasks=every)
        recipe.add_server_input_filter(StateDictDequantizer(), tasks=every)
    if privacy_scope:
        from nvflare.apis.job_def import JobMetaKey
        from nvflare.recipe.utils import set_recipe_meta
        set_recipe_meta(recipe, JobMetaKey.SCOPE, privacy_scope)
    if site_scripts:  # per-site client scripts (e.g. a site's own wrapper); the others run the standard client
        from nvflare.recipe.utils import set_per_site_config
        set_per_site_config(recipe, {site: {"train_script": script or str(CLIENT_SCRIPT)}
                                     for site, script in site_scripts.items()})
    recipe.add_client_file(str(PACKAGE_PARENT))
    recipe.add_server_file(str(PACKAGE_PARENT))
    if heartbeat_timeout:
        # the job's own "server.heart_beat_timeout"; measured: a killed hospital was still declared dead only
        # after the server's system value (local/resources.json, `ecefl poc prepare --heartbeat-timeout`)
        recipe.add_server_config({"server": {"heart_beat_timeout": int(heartbeat_timeout)}})
    if tracking:
        from nvflare.recipe.utils import add_experiment_tracking
        add_experiment_tracking(recipe, tracking_type="tensorboard")
    if cross_site and kind == FINETUNE:
        from nvflare.recipe.utils import add_cross_site_evaluation
        # NVFlare's cross-site evaluation waits for every site, dead ones included (measured: a hospital killed
        # during training held the finished job in CSE for submit_model_timeout, then validation_timeout, defaults
        # 600 s and 6000 s); a cpu-small model is submitted and validated in seconds, a gpu-preset one (278 MiB)
        # may need minutes on a slow link
        gpu = plan.preset == "gpu"
        add_cross_site_evaluation(recipe, submit_model_timeout=600 if gpu else 120,
                                  validation_timeout=3600 if gpu else 300)
    return recipe


def job_start(kind: str, plan: Plan, init: str | None, resume: str | None, workdir: Path, rounds: int,
              log=_log.info) -> tuple[Plan, str | None, dict | None]:
    """Where a federated job starts, decided once for the simulator, POC, a provisioned federation and
    jobs/<job>/job.py: (plan, initial checkpoint for the persistor, resume record).
    resume: an interrupted job's per-round global_model.pt (or run folder): its plan and weights, next round on.
    init (ece_finetune): an MAE global model: the plan inherits its geometry/architecture and the encoder is
    copied key by key (verified N/N) into a full dual-output start model. Neither: the preset's fresh model."""
    if resume:
        if init:
            raise ValueError("--resume and --init exclude each other: a resumed job starts from its checkpoint")
        plan, initial, record = resume_point(resume, kind, Path(workdir) / f"resume_model-{int(time.time())}.pt")
        log(f"resuming {kind} at round {record['start_round']} of {rounds}")
        return plan, initial, record
    if init and kind != FINETUNE:
        raise ValueError(f"--init (an MAE encoder to start from) applies to {FINETUNE}, not {kind}")
    if init:
        plan, initial = finetune_start(init, plan, Path(workdir) / "initial_model.pt", log)
        return plan, initial, None
    return plan, None, None


def finetune_start(mae_path: str, plan: Plan, out: Path, log) -> tuple[Plan, str]:
    """The fine-tuning plan (geometry/architecture of the MAE plan) and a full dual-output state dict whose
    encoder is the MAE global model's (verified N/N key by key), saved at `out` for the job's persistor."""
    import torch

    from ecefl.checkpoint import load_checkpoint
    from ecefl.model import DualOutputSwinUNETR, load_encoder
    from ecefl.plan import plan_from_pretraining
    mae = load_checkpoint(mae_path)
    plan = plan_from_pretraining(plan, mae["plan"], log)
    model = DualOutputSwinUNETR(plan)
    load_encoder(model, mae["model"], str(mae_path), log=log)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, out)
    return plan, str(out)


def privacy_filters(privacy_json: str | Path, scope: str) -> list:
    """The result filters of `scope` in a site privacy policy (NVFlare's local/privacy.json format), instantiated,
    so a simulation can apply exactly the filters a hospital's policy would."""
    import importlib

    from .site_config import load_privacy_policy
    scopes = {s.get("name"): s for s in load_privacy_policy(privacy_json)["scopes"]}
    if scope not in scopes:
        raise ValueError(f"site privacy policy {privacy_json} defines no scope {scope!r} "
                         f"(it has: {', '.join(map(str, scopes))})")
    filters = []
    for spec in scopes[scope].get("task_result_filters", []):
        module, _, name = spec["path"].rpartition(".")
        filters.append(getattr(importlib.import_module(module), name)(**spec.get("args", {})))
    return filters


def resume_point(checkpoint: str | Path, kind: str, out: Path) -> tuple[Plan, str, dict]:
    """From a server's persisted global model (ecefl/global_model.pt, written after every round): the plan, a
    full state dict for the job's persistor at `out`, and the resume record (next round, threshold, origin).
    `checkpoint` may also be the server's run folder of the interrupted job."""
    import torch

    from ecefl.checkpoint import load_checkpoint, node_threshold_of
    path = Path(checkpoint)
    if path.is_dir():
        found = sorted(path.rglob("ecefl/global_model.pt"))
        if not found:
            raise ValueError(f"no ecefl/global_model.pt under {path}: the interrupted job finished no round "
                             "there; start it again from the beginning")
        path = found[0]
    ckpt = load_checkpoint(path, kind=CHECKPOINT_KIND[kind])
    federated = ckpt.get("federated") or {}
    if federated.get("job") != kind or not isinstance(federated.get("round"), int):
        raise ValueError(f"{path} is not a per-round global model of a federated {kind} job")
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": ckpt["model"]}, out)
    resume = {"start_round": federated["round"] + 1, "threshold": float(ckpt.get("threshold", 0.5)),
              "node_threshold": node_threshold_of(ckpt), "checkpoint_round": federated["round"]}
    return ckpt["plan"], str(out), resume
