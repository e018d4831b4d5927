"""`ecefl fl simulate`: the federated jobs in NVFlare's simulator (one process per site on this machine).

NVFlare 2.9's simulator reports success even when a site's script crashed, so a run is judged by its artifacts
(the controller's pooled_metrics.json marked finished) and the sites' error logs; any failure exits non-zero
with the failing site and its error text.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path

from ecefl.job_kinds import FINETUNE, MAE
from ecefl.plan import Plan, get_plan

from .job_options import check_quantization
from .jobs import DEFAULT_TASK_TIMEOUT, build_recipe, job_start

_log = logging.getLogger(__name__)


class FederatedRunError(RuntimeError):
    pass


def parse_sites(values: list[str]) -> dict[str, Path]:
    sites = {}
    for value in values:
        if "=" not in value:
            raise ValueError(f"--site {value!r}: expected NAME=PATH/datalist.json")
        name, path = value.split("=", 1)
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            raise ValueError(f"--site {value!r}: site names may hold letters, digits, '-', '_' and '.' only")
        if name in sites:
            raise ValueError(f"--site {name} given twice")
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"--site {name}: datalist {path} does not exist; run `ecefl preprocess` for it")
        sites[name] = path
    if not sites:
        raise ValueError("at least one --site NAME=PATH is needed")
    return sites


def simulate(sites: dict[str, Path], job: str, rounds: int, local_epochs: int, preset: str, workspace,
             min_sites: int | None = None, seed: int = 0, init: str | None = None, val_fraction: float = 0.25,
             min_count: int = 0, quiet: bool = False, progress: bool = True, log=_log.info, resume: str | None = None,
             cross_site: bool = False, privacy: str | None = None, privacy_scope: str | None = None,
             task_timeout: int = DEFAULT_TASK_TIMEOUT, quantization: str | None = None, **overrides) -> dict:
    """privacy/privacy_scope: every simulated site applies that scope of a site privacy policy (privacy.json)
    to its fine-tuning and pretraining updates, as a hospital with that policy would."""
    check_quantization(quantization, here_too=True)
    result_filters = None
    if privacy or privacy_scope:
        if not (privacy and privacy_scope):
            raise ValueError("--privacy PRIVACY_JSON and --privacy-scope SCOPE go together")
        from .jobs import privacy_filters
        result_filters = privacy_filters(privacy, privacy_scope)
    ws = Path(workspace).resolve()
    ws.mkdir(parents=True, exist_ok=True)
    site_config = ws / "site_config.json"
    site_config.write_text(json.dumps({"sites": {n: {"datalist": str(p)} for n, p in sites.items()}}, indent=1))
    # Simulated sites share this machine: each reads its own entry of this site-local file. The variables are
    # inherited by the simulator's site processes and restored afterwards.
    saved = {k: os.environ.get(k) for k in ("ECEFL_SITE_CONFIG", "ECEFL_TORCH_THREADS", "ECEFL_TORCH_THREADS_ALONE")}
    os.environ["ECEFL_SITE_CONFIG"] = str(site_config)
    os.environ.setdefault("ECEFL_TORCH_THREADS", str(max(1, (os.cpu_count() or 2) // len(sites))))
    # a task that one site runs while the others wait (cyclic training) may use every core
    os.environ.setdefault("ECEFL_TORCH_THREADS_ALONE", str(os.cpu_count() or 2))
    try:
        return _simulate_jobs(sites, job, rounds, local_epochs, preset, ws, min_sites, seed, init, val_fraction,
                              min_count, quiet, progress, log, overrides, resume, cross_site, result_filters,
                              task_timeout, quantization)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _simulate_jobs(sites, job, rounds, local_epochs, preset, ws, min_sites, seed, init, val_fraction, min_count,
                   quiet, progress, log, overrides, resume=None, cross_site=False, result_filters=None,
                   task_timeout=DEFAULT_TASK_TIMEOUT, quantization=None) -> dict:
    plan = get_plan(preset, seed=seed, **overrides)
    min_sites = min_sites or len(sites)
    outputs = {}
    common = dict(rounds=rounds, local_epochs=local_epochs, min_sites=min_sites, seed=seed,
                  val_fraction=val_fraction, min_count=min_count, quiet=quiet, progress=progress, log=log,
                  cross_site=cross_site, result_filters=result_filters, task_timeout=task_timeout,
                  quantization=quantization)
    if resume and (job == "all" or init):
        raise ValueError("--resume continues one job (--job mae_pretrain or ece_finetune) and excludes --init")
    if job in (MAE, "all"):
        mae_plan, initial, record = job_start(MAE, plan, None, resume, ws / MAE, rounds, log)
        outputs[MAE] = _run_job(MAE, mae_plan, sites, ws, initial_ckpt=initial, resume=record, **common)
        init = str(outputs[MAE]["global_model"])
    if job in (FINETUNE, "all"):
        ft_plan, initial, record = job_start(FINETUNE, plan, init, resume, ws / FINETUNE, rounds, log)
        outputs[FINETUNE] = _run_job(FINETUNE, ft_plan, sites, ws, initial_ckpt=initial, resume=record, **common)
    return outputs


def _run_job(kind: str, plan: Plan, sites: dict[str, Path], ws: Path, rounds: int, local_epochs: int,
             min_sites: int, seed: int, val_fraction: float, min_count: int, quiet: bool, progress: bool, log,
             initial_ckpt: str | None = None, resume: dict | None = None, cross_site: bool = False,
             result_filters: list | None = None, task_timeout: int = DEFAULT_TASK_TIMEOUT,
             quantization: str | None = None) -> dict:
    from nvflare.recipe import SimEnv
    job_dir = ws / kind
    sim_root = job_dir / "nvflare"
    if sim_root.exists():
        shutil.rmtree(sim_root)  # a previous run's logs must not be judged as this run's
    recipe = build_recipe(kind, plan, rounds=rounds, local_epochs=local_epochs, min_sites=min_sites,
                          val_fraction=val_fraction, seed=seed, min_count=min_count, initial_ckpt=initial_ckpt,
                          resume=resume, cross_site=cross_site, result_filters=result_filters,
                          task_timeout=task_timeout, quantization=quantization)
    env = SimEnv(clients=list(sites), num_threads=len(sites), workspace_root=str(sim_root),
                 log_config="WARNING" if quiet else None)
    server_dir = sim_root / kind / "server" / "simulate_job"
    log(f"== {kind}: {len(sites)} sites, {rounds} round(s) x {local_epochs} local epoch(s), preset {plan.preset}")
    t0 = time.time()
    watcher = _RoundWatcher(server_dir / "ecefl" / "pooled_metrics.json", rounds - (resume or {}).get("start_round", 0),
                            kind, progress)
    watcher.start()
    crash = None
    try:
        recipe.execute(env)
    except Exception as exc:  # the simulator raises on a non-zero exit of its own process
        crash = f"{type(exc).__name__}: {exc}"
    finally:
        watcher.stop()
    seconds = time.time() - t0
    report_path = server_dir / "ecefl" / "pooled_metrics.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else None
    site_errors = _site_errors(sim_root / kind, list(sites))
    if crash or report is None or not report.get("finished") or site_errors:
        raise FederatedRunError(_failure_message(kind, crash, report, site_errors, sim_root / kind))
    job_dir.mkdir(parents=True, exist_ok=True)
    out = {"seconds": round(seconds, 1), "nvflare_workspace": str(sim_root / kind)}
    for name in ("global_model.pt", "best_global_model.pt"):
        src = server_dir / "ecefl" / name
        if src.is_file():
            shutil.copy2(src, job_dir / name)
            out[name.replace(".pt", "")] = job_dir / name
    shutil.copy2(report_path, job_dir / "pooled_metrics.json")
    cse = server_dir / "cross_site_val" / "cross_val_results.json"
    if kind == FINETUNE and cse.is_file():
        shutil.copy2(cse, job_dir / "cross_site.json")
    elif kind == FINETUNE:
        (job_dir / "cross_site.json").write_text("{}")
    log(f"== {kind} finished in {seconds:.0f}s; artifacts in {job_dir}")
    return out


class _RoundWatcher:
    """A progress bar over rounds, fed by the controller's report file while the simulator runs."""

    def __init__(self, path: Path, rounds: int, kind: str, enabled: bool):
        self.path, self.rounds, self.kind, self.enabled = path, rounds, kind, enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        if self.enabled:
            self._thread.start()

    def stop(self):
        self._stop.set()
        if self.enabled:
            self._thread.join(timeout=5)

    def _loop(self):
        from tqdm import tqdm
        bar = tqdm(total=self.rounds, desc=f"{self.kind} rounds", unit="round")
        done = 0
        while not self._stop.wait(2.0):
            try:
                n = len(json.loads(self.path.read_text()).get("rounds", []))
            except (OSError, ValueError):
                continue
            if n > done:
                bar.update(n - done)
                done = n
        bar.close()


def _site_errors(job_root: Path, sites: list[str]) -> dict[str, str]:
    errors = {}
    for site in sites:
        for err in (job_root / site).glob("**/error_log.txt"):
            text = err.read_text(errors="replace").strip()
            if text:
                errors[site] = text[-3000:]
                break
    return errors


def _failure_message(kind: str, crash, report, site_errors: dict, job_root: Path) -> str:
    lines = [f"federated job {kind} did not complete"]
    if crash:
        lines.append(f"  simulator: {crash}")
    if report is None:
        lines.append("  the server wrote no pooled_metrics.json (the workflow never ran a round)")
    elif not report.get("finished"):
        lines.append("  the workflow stopped early: " + "; ".join(
            f"round {e['round']}: {e['site']} {e['event']} ({e['reason']})" for e in report.get("events", [])))
    for site, text in site_errors.items():
        tail = [line for line in text.splitlines() if line.strip()][-6:]
        lines.append(f"  site {site} failed:\n    " + "\n    ".join(tail))
    server_err = job_root / "server" / "simulate_job" / "error_log.txt"
    if not site_errors and server_err.is_file() and server_err.read_text().strip():
        lines.append("  server: " + server_err.read_text().strip().splitlines()[-1])
    lines.append(f"  logs: {job_root}/<site>/log.txt and {job_root}/server/")
    return "\n".join(lines)
