"""Job construction (admin side) with NVFlare 2.9's PyTorch FedAvg recipe and our pooled-metrics controller.

The recipe gives us the standard pieces (PyTorch persistor with an initial checkpoint, ScriptRunner with the
Client API, TensorBoard tracking, cross-site evaluation, export, SimEnv/PocEnv/ProdEnv); `_create_controller`
swaps FedAvg for PooledFedAvg, which screens updates, pools site statistics, keeps the best model by pooled
AUC and tolerates dropped sites down to `min_sites`. The job carries no site paths: data locations are
site-local configuration (ecefl/fl/site_config.py).
"""
from __future__ import annotations

from pathlib import Path

from nvflare.app_opt.pt.recipes import FedAvgRecipe

from ecefl.plan import Plan

from .server import PooledFedAvg

# custom/ (holding the ecefl package) is copied into each app's custom folder: the code travels with the job
PACKAGE_PARENT = Path(__file__).resolve().parents[2]
CLIENT_SCRIPT = Path(__file__).resolve().parent / "client.py"
JOB_KINDS = ("mae_pretrain", "ece_finetune")
MODEL_CLASS = {"mae_pretrain": "ecefl.model.MaskedPretrainer", "ece_finetune": "ecefl.model.DualOutputSwinUNETR"}


class EceFedAvgRecipe(FedAvgRecipe):
    def __init__(self, *, kind: str, plan: Plan, min_sites: int, **kwargs):
        # set before super().__init__, which builds the controller
        self._kind, self._plan_dict, self._min_sites = kind, plan.to_dict(), min_sites
        super().__init__(**kwargs)

    def _create_controller(self, persistor_id: str, model_params, model_aggregator):
        return PooledFedAvg(num_clients=self.min_clients, num_rounds=self.num_rounds, persistor_id=persistor_id,
                            job_kind=self._kind, plan=self._plan_dict, min_sites=self._min_sites)


def build_recipe(kind: str, plan: Plan, rounds: int, local_epochs: int = 1, min_sites: int = 1,
                 val_fraction: float = 0.25, seed: int = 0, min_count: int = 0, initial_ckpt: str | None = None,
                 heartbeat_timeout: int | None = None, cross_site: bool = True, tracking: bool = True,
                 name: str | None = None, site_scripts: dict[str, str | None] | None = None) -> EceFedAvgRecipe:
    """site_scripts: {site: client script or None for the standard one}; when given it must name every site
    (NVFlare then builds one client app per listed site)."""
    if kind not in JOB_KINDS:
        raise ValueError(f"unknown job {kind!r}; choose one of {JOB_KINDS}")
    if rounds < 1 or local_epochs < 1 or min_sites < 1:
        raise ValueError("rounds, local epochs and min_sites must be >= 1")
    args = f"--job {kind} --local-epochs {local_epochs} --val-fraction {val_fraction} --seed {seed} " \
           f"--min-count {min_count}"
    recipe = EceFedAvgRecipe(
        kind=kind, plan=plan, min_sites=min_sites, name=name or kind,
        model={"path": MODEL_CLASS[kind], "args": {"plan": plan.to_dict()}},
        initial_ckpt=str(Path(initial_ckpt).resolve()) if initial_ckpt else None,
        min_clients=min_sites, num_rounds=rounds, train_script=str(CLIENT_SCRIPT), train_args=args,
        key_metric="auc")
    if site_scripts:  # per-site client scripts (e.g. a site's own wrapper); the others run the standard client
        from nvflare.recipe.utils import set_per_site_config
        set_per_site_config(recipe, {site: {"train_script": script or str(CLIENT_SCRIPT)}
                                     for site, script in site_scripts.items()})
    recipe.add_client_file(str(PACKAGE_PARENT))
    recipe.add_server_file(str(PACKAGE_PARENT))
    if heartbeat_timeout:
        recipe.add_server_config({"heart_beat_timeout": int(heartbeat_timeout)})
    if tracking:
        from nvflare.recipe.utils import add_experiment_tracking
        add_experiment_tracking(recipe, tracking_type="tensorboard")
    if cross_site and kind == "ece_finetune":
        from nvflare.recipe.utils import add_cross_site_evaluation
        add_cross_site_evaluation(recipe)
    return recipe
