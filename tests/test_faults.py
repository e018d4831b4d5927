"""Faults caused for real on the NVFlare simulator: a site that sends NaN weights is rejected by name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import preprocessed_sites
from ecefl.checkpoint import load_checkpoint
from ecefl.cli import main as ecefl_main
from ecefl.fl.simulate import _run_job
from ecefl.plan import get_plan

POISON = str(Path(__file__).with_name("fl_poisoned_client.py"))


def test_nan_update_is_rejected_naming_site_and_round(fl_sites_small, tmp_path, monkeypatch):
    _poison_hospital_b(fl_sites_small, tmp_path, monkeypatch)
    out = _run_job("mae_pretrain", get_plan("test-tiny"), fl_sites_small, tmp_path / "ws", rounds=2,
                   local_epochs=1, min_sites=1, seed=0, val_fraction=0.5, min_count=0, quiet=True,
                   progress=False, log=lambda *_: None)
    report = json.loads((tmp_path / "ws" / "mae_pretrain" / "pooled_metrics.json").read_text())
    rejected = [e for e in report["events"] if e["event"] == "rejected"]
    assert [(e["site"], e["round"]) for e in rejected] == [("hospital-b", 0), ("hospital-b", 1)]
    assert all("non-finite" in e["reason"] for e in rejected)
    assert report["finished"] and all(r["n_sites"] == 1 for r in report["rounds"])
    state = load_checkpoint(out["global_model"])["model"]
    assert all(torch.isfinite(v).all() for v in state.values())
    server_log = (tmp_path / "ws" / "mae_pretrain" / "nvflare" / "mae_pretrain" / "server" / "log.txt")
    assert "rejected the update of hospital-b" in server_log.read_text()


def test_too_few_usable_sites_ends_the_job_with_a_clear_message(fl_sites_small, tmp_path, monkeypatch):
    from ecefl.fl.simulate import FederatedRunError
    _poison_hospital_b(fl_sites_small, tmp_path, monkeypatch)
    with pytest.raises(FederatedRunError) as err:
        _run_job("mae_pretrain", get_plan("test-tiny"), fl_sites_small, tmp_path / "ws", rounds=1,
                 local_epochs=1, min_sites=2, seed=0, val_fraction=0.5, min_count=0, quiet=True, progress=False,
                 log=lambda *_: None)
    assert "fewer than min_sites=2" in str(err.value) and "hospital-b" in str(err.value)


@pytest.fixture(scope="module")
def fl_sites_small(tmp_path_factory):
    return preprocessed_sites(tmp_path_factory.mktemp("faults"), 2, 2, 0, seed=21)


def _poison_hospital_b(fl_sites_small, tmp_path, monkeypatch) -> None:
    """Site config for both sites; hospital-b runs the NaN-sending client script."""
    import ecefl.fl.simulate as sim
    cfg = tmp_path / "site_config.json"
    cfg.write_text(json.dumps({"sites": {n: {"datalist": str(p)} for n, p in fl_sites_small.items()}}))
    monkeypatch.setenv("ECEFL_SITE_CONFIG", str(cfg))
    monkeypatch.setenv("ECEFL_TORCH_THREADS", "1")
    real_build = sim.build_recipe
    monkeypatch.setattr(sim, "build_recipe", lambda *a, **k: real_build(
        *a, site_scripts={"hospital-a": None, "hospital-b": POISON}, **k))


def test_min_count_suppresses_small_site_statistics_and_simulate_resumes(tmp_path, capsys, fl_sites_four):
    """Validation splits with fewer than --min-count cases of a class send no statistics (reported as
    suppressed); a finished round's global model is resumed by `ecefl fl simulate --resume` at the next round,
    here with every site applying the ecefl_strict scope of poc/privacy.json to its update."""
    sites = [a for site, dl in fl_sites_four.items() for a in ("--site", f"{site}={dl}")]
    common = ["fl", "simulate", "--job", "ece_finetune", "--local-epochs", "1", "--preset", "test-tiny",
              "--val-fraction", "0.5", "--quiet", "--no-progress", *sites]
    ws = tmp_path / "ws"
    assert ecefl_main([*common, "--rounds", "1", "--min-count", "2", "--workspace", str(ws)]) == 0
    assert "suppressed" in capsys.readouterr().out
    report = json.loads((ws / "ece_finetune" / "pooled_metrics.json").read_text())
    final = report["final"]
    assert final["pooled"] is None
    assert final["sites"] == {"hospital-a": {"suppressed": True}, "hospital-b": {"suppressed": True}}
    first = load_checkpoint(ws / "ece_finetune" / "global_model.pt")
    assert first["federated"]["round"] == 0

    ws2 = tmp_path / "ws2"
    privacy = ["--privacy", str(Path(__file__).parents[1] / "poc" / "privacy.json"), "--privacy-scope"]
    assert ecefl_main([*common, "--rounds", "2", "--workspace", str(ws2), *privacy, "ecefl_strict",
                       "--resume", str(ws / "ece_finetune" / "global_model.pt")]) == 0
    resumed = json.loads((ws2 / "ece_finetune" / "pooled_metrics.json").read_text())
    assert [r["round"] for r in resumed["rounds"]] == [1] and resumed["resumed_from"]["checkpoint_round"] == 0
    assert resumed["final"]["pooled"]["n_cases"] >= 2  # without --min-count the statistics are pooled
    start = torch.load(next((ws2 / "ece_finetune").glob("resume_model-*.pt")), weights_only=True)["model"]
    assert all(torch.equal(start[k], v) for k, v in first["model"].items())
    after = load_checkpoint(ws2 / "ece_finetune" / "global_model.pt")
    assert after["federated"]["round"] == 1
    # PercentilePrivacy (percentile 90): each of the 2 sites shares at most 10 % of its weight changes
    changed = sum(int((after["model"][k] != v).sum()) for k, v in start.items() if v.is_floating_point())
    total = sum(v.numel() for k, v in start.items() if v.is_floating_point())
    assert 0 < changed / total <= 0.22, changed / total
    assert ecefl_main([*common, "--rounds", "1", "--workspace", str(tmp_path / "ws4"), *privacy, "nope"]) == 2
    assert "defines no scope 'nope'" in capsys.readouterr().err
    # a checkpoint of the last round has nothing left to resume
    assert ecefl_main([*common, "--rounds", "2", "--workspace", str(tmp_path / "ws3"),
                       "--resume", str(ws2 / "ece_finetune" / "global_model.pt")]) == 2
    assert "nothing to resume" in capsys.readouterr().err


@pytest.fixture(scope="module")
def fl_sites_four(tmp_path_factory):
    return preprocessed_sites(tmp_path_factory.mktemp("faults4"), 2, 4, 0, seed=23)


@pytest.fixture(scope="module")
def fl_sites_three(tmp_path_factory):
    """Three sites of 4 labelled cases (validation splits of 2 at 50 %); hospital-c's data damaged after
    preprocessing: one CT with NaN voxels (left out when the site loads it) and every other label with an
    impossible class value (its training fails)."""
    import nibabel as nib
    import numpy as np
    sites = preprocessed_sites(tmp_path_factory.mktemp("bad-data"), 3, 4, 0, seed=23)
    datalist = json.loads(sites["hospital-c"].read_text())
    base = sites["hospital-c"].parent
    nan_case, *bad_label_cases = datalist["training"]
    img = nib.load(base / nan_case["image"])
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[10:14, 10:14, 5:8] = np.nan
    nib.save(nib.Nifti1Image(data, img.affine), base / nan_case["image"])
    for case in bad_label_cases:
        lab = nib.load(base / case["label"])
        labels = np.asarray(lab.dataobj).astype(np.uint8)
        labels[labels > 0] = 7
        nib.save(nib.Nifti1Image(labels, lab.affine), base / case["label"])
    return sites, nan_case["case_id"]


def test_one_sites_bad_data_does_not_end_the_job(fl_sites_three, tmp_path, monkeypatch):
    """A NaN CT is left out by name at its site; a site whose round then fails is left out of that round
    under min_sites (named in the events) and the job finishes with a finite global model."""
    sites, nan_case = fl_sites_three
    _configure_sites(sites, tmp_path, monkeypatch)
    ws = tmp_path / "ws"
    out = _run_job("ece_finetune", get_plan("test-tiny"), sites, ws, rounds=2, local_epochs=1, min_sites=2, seed=0,
                   val_fraction=0.5, min_count=0, quiet=True, progress=False, log=lambda *_: None)
    report = json.loads((ws / "ece_finetune" / "pooled_metrics.json").read_text())
    assert report["finished"]
    failed = [(e["round"], e["site"]) for e in report["events"] if "round failed" in e.get("reason", "")]
    assert failed == [(0, "hospital-c"), (1, "hospital-c")], report["events"]
    assert all("RuntimeError" in e["reason"] for e in report["events"] if e["site"] == "hospital-c")
    assert [r["n_sites"] for r in report["rounds"] if r["round"] != "final"] == [2, 2]
    # hospital-c sent no statistics in its failed rounds: the others removed their masks with it (secure sum),
    # and the pool is exactly theirs
    for record in report["rounds"]:
        assert set(record["sites"]) == {"hospital-a", "hospital-b"}
        assert record["pooled"]["n_cases"] == sum(s["n_cases"] for s in record["sites"].values()) > 0
    state = load_checkpoint(out["global_model"])["model"]
    assert all(torch.isfinite(v).all() for v in state.values())
    site_log = next((ws / "ece_finetune" / "nvflare").rglob("hospital-c/log.txt")).read_text()
    assert f"case {nan_case} left out: its image has 48 non-finite voxel(s)" in site_log


def _configure_sites(sites: dict, tmp_path, monkeypatch) -> None:
    """The simulated sites' data locations (site config) and one torch thread per site."""
    cfg = tmp_path / "site_config.json"
    cfg.write_text(json.dumps({"sites": {n: {"datalist": str(p)} for n, p in sites.items()}}))
    monkeypatch.setenv("ECEFL_SITE_CONFIG", str(cfg))
    monkeypatch.setenv("ECEFL_TORCH_THREADS", "1")


@pytest.fixture(scope="module")
def fl_sites_bad_validation(tmp_path_factory):
    """Three sites of 4 labelled cases; one of hospital-c's validation cases (split at 50 %, seed 0) has a label
    that no longer matches its CT (cropped after preprocessing): its validation fails, its training does not."""
    import nibabel as nib
    import numpy as np
    from ecefl.data import load_datalist, stratified_split
    sites = preprocessed_sites(tmp_path_factory.mktemp("bad-val"), 3, 4, 0, seed=29)
    labelled, _ = load_datalist(sites["hospital-c"], site="hospital-c")
    _, val = stratified_split(labelled, 0.5, 0)
    lab = nib.load(val[0]["label"])
    nib.save(nib.Nifti1Image(np.asarray(lab.dataobj)[:, :, :-6], lab.affine), val[0]["label"])
    return sites, val[0]["case_id"]


def test_a_site_whose_validation_fails_is_named_and_still_trains(fl_sites_bad_validation, tmp_path, monkeypatch):
    """Cyclic rounds validate in their own task: a site whose validation fails reports it instead of ending its
    script; the server names it, pools the other sites' statistics (the secure sum decodes without it), and the
    site trains in the pass and takes part in the final validation as well."""
    sites, bad_case = fl_sites_bad_validation
    _configure_sites(sites, tmp_path, monkeypatch)
    ws = tmp_path / "ws"
    plan = get_plan("test-tiny", fl_workflow="cyclic", iterations_per_epoch=2)
    _run_job("ece_finetune", plan, sites, ws, rounds=1, local_epochs=1, min_sites=2, seed=0, val_fraction=0.5,
             min_count=0, quiet=True, progress=False, log=lambda *_: None)
    report = json.loads((ws / "ece_finetune" / "pooled_metrics.json").read_text())
    assert report["finished"], report["events"]
    failed = [e for e in report["events"] if e["event"] == "failed"]
    assert [e["site"] for e in failed] == ["hospital-c", "hospital-c"], report["events"]  # round 0, final
    assert all("validation failed: ValueError" in e["reason"] and bad_case not in e["reason"] for e in failed)
    (record,) = [r for r in report["rounds"] if r["round"] != "final"]
    assert set(record["site_train_seconds"]) == set(sites) and record["n_sites"] == 3  # it still trained
    for pooled in (record, report["final"]):
        assert set(pooled["sites"]) == {"hospital-a", "hospital-b"}
        assert pooled["pooled"]["n_cases"] == 4  # the two others' validation cases, through the secure sum
    site_log = next((ws / "ece_finetune" / "nvflare").rglob("hospital-c/log.txt")).read_text()
    assert f"case {bad_case}: its label" in site_log and "re-run `ecefl preprocess`" in site_log
