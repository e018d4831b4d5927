"""What a job sends off a site: the global model is evaluated by default (no site's local model leaves it unless
cross-site evaluation is asked for), and a job's result filters act on every task's result, not only training."""
from __future__ import annotations

import json
from pathlib import Path

from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy

from ecefl.fl.jobs import build_recipe
from ecefl.plan import get_plan

ALL_TASKS = {"train", "validate", "submit_model"}


def _export(tmp_path: Path, **kw) -> tuple[dict, dict]:
    recipe = build_recipe("ece_finetune", get_plan("test-tiny"), rounds=1, tracking=False, **kw)
    recipe.export(str(tmp_path))
    job = tmp_path / "ece_finetune"
    server = json.loads(next(job.rglob("config_fed_server.json")).read_text())
    client = json.loads(next(job.rglob("config_fed_client.json")).read_text())
    return server, client


def _workflow_paths(server: dict) -> list[str]:
    return [w.get("path", "") for w in server.get("workflows", [])]


def test_default_job_has_no_cross_site_evaluation(tmp_path):
    server, client = _export(tmp_path)
    paths = _workflow_paths(server)
    assert paths == ["ecefl.fl.server.PooledFedAvg"], paths  # only the global model's validation by the sites
    assert not any("CrossSite" in p for p in paths)


def test_cross_site_evaluation_only_when_asked(tmp_path):
    server, _ = _export(tmp_path, cross_site=True)
    assert any(p.endswith("CrossSiteModelEval") for p in _workflow_paths(server))


def test_result_filters_cover_every_task(tmp_path):
    _, client = _export(tmp_path, result_filters=[PercentilePrivacy(percentile=90, gamma=0.01)])
    filtered = set()
    for entry in client.get("task_result_filters", []):
        if any(f.get("path", "").endswith("PercentilePrivacy") for f in entry.get("filters", [])):
            filtered |= set(entry["tasks"])
    assert filtered >= ALL_TASKS, filtered
