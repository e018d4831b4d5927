"""POC end to end on loopback: real NVFlare server and hospital clients, driven through the FLARE API."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ecefl.cli import main as ecefl_main
from conftest import preprocessed_sites
from ecefl.checkpoint import load_checkpoint
from ecefl.fl import poc

PORT = 8142
ROOT = Path(__file__).resolve().parents[1]


def test_poc_prepare_start_submit_wait_download_stop(fl_poc_sites, tmp_path, capsys):
    ws = tmp_path / "poc"
    args = ["--workspace", str(ws)]
    datalists = [a for site, dl in fl_poc_sites.items() for a in ("--datalist", f"{site}={dl}")]
    privacy = ROOT / "poc" / "privacy.json"
    assert ecefl_main(["poc", "prepare", *args, *datalists, "--port", str(PORT), "--privacy", str(privacy),
                       "--large-updates"]) == 0
    local = json.loads((poc.prod_dir(ws) / "hospital-a" / "local" / "ecefl_site.json").read_text())
    assert local["datalist"] == str(fl_poc_sites["hospital-a"])
    # the streaming timeouts for large updates are what NVFlare's own configuration lookup finds in each kit
    # (and the POC below runs with them)
    for participant in ("server", "hospital-a", "hospital-b"):
        assert nvflare_streaming_settings(poc.prod_dir(ws) / participant) == [900, 600.0, 120.0]
    assert ecefl_main(["poc", "start", *args]) == 0
    try:
        assert poc.port_in_use(PORT)
        # a second POC on the same port is reported, not silently reused
        assert ecefl_main(["poc", "prepare", "--workspace", str(tmp_path / "other"), *datalists,
                           "--port", str(PORT)]) == 1
        assert "in use" in capsys.readouterr().err
        capsys.readouterr()
        assert ecefl_main(["poc", "submit", "mae_pretrain", *args, "--rounds", "1", "--preset", "test-tiny"]) == 0
        job_id = capsys.readouterr().out.strip().splitlines()[-1]
        assert ecefl_main(["poc", "wait", job_id, *args, "--timeout", "600"]) == 0
        assert ecefl_main(["poc", "download", job_id, *args, "--out", str(tmp_path / "dl")]) == 0
        report = json.loads((tmp_path / "dl" / "pooled_metrics.json").read_text())
        assert report["finished"] and report["rounds"][0]["n_sites"] == 2
        assert (tmp_path / "dl" / "global_model.pt").is_file()

        # a job in the sites' "ecefl_strict" privacy scope: each site's update passes its PercentilePrivacy
        # filter (only the largest 10 % of weight changes leave the site)
        capsys.readouterr()
        assert ecefl_main(["poc", "submit", "ece_finetune", *args, "--rounds", "1", "--preset", "test-tiny",
                           "--init", str(tmp_path / "dl" / "global_model.pt"),
                           "--privacy-scope", "ecefl_strict"]) == 0
        private_job = capsys.readouterr().out.strip().splitlines()[-1]
        assert ecefl_main(["poc", "wait", private_job, *args, "--timeout", "600"]) == 0
        assert ecefl_main(["poc", "download", private_job, *args, "--out", str(tmp_path / "dl2")]) == 0
        start = torch.load(ws / "initial_model.pt", weights_only=True)["model"]
        after = load_checkpoint(tmp_path / "dl2" / "global_model.pt")["model"]
        changed = sum(int((after[k] != v).sum()) for k, v in start.items() if v.is_floating_point())
        total = sum(v.numel() for v in start.values() if v.is_floating_point())
        # two sites, each sharing at most 10 % of its changes: at most ~20 % of the weights can move
        assert 0 < changed / total <= 0.22, changed / total
        site_log = (poc.prod_dir(ws) / "hospital-a" / private_job / "log.txt").read_text()
        assert "PercentilePrivacy" in site_log and "cutoff" in site_log
    finally:
        assert ecefl_main(["poc", "stop", *args]) == 0
    assert not poc.port_in_use(PORT)


def nvflare_streaming_settings(kit: Path) -> list:
    """Read through NVFlare's ConfigService as a participant process started in `kit` does (fresh process)."""
    import subprocess
    import sys
    code = ("import json, sys; from nvflare.fuel.utils.config_service import ConfigService; "
            "ConfigService.initialize(section_files={}, config_path=[sys.argv[1]]); "
            "from nvflare.fuel.f3.comm_config import CommConfigurator as C; c = C(); "
            "print(json.dumps([c.get_streaming_read_timeout(300), c.get_streaming_ack_progress_timeout(60.0), "
            "c.get_streaming_send_timeout(30.0)]))")
    out = subprocess.run([sys.executable, "-c", code, str(kit)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fl_poc_sites(tmp_path_factory):
    return preprocessed_sites(tmp_path_factory.mktemp("pocdata"), 2, 2, 0, seed=9)
