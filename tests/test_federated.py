"""Federated jobs on the real NVFlare simulator: artifacts, pooled metrics = scikit-learn on local predictions."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix, roc_auc_score

from conftest import preprocessed_sites
from ecefl import metrics as M
from ecefl.checkpoint import load_checkpoint
from ecefl.cli import main as ecefl_main
from ecefl.data import load_datalist, stratified_split
from ecefl.engine import positive_weight, predict_cases
from ecefl.model import DualOutputSwinUNETR, encoder_keys

VAL_FRACTION = 0.5
SITES = ("hospital-a", "hospital-b")
REFIT_ITERATIONS = 3
REFIT_FOLDS, REFIT_GRID = 2, (0.001, 1.0, 100.0)


@pytest.fixture(scope="module")
def fl_root(fl_sites) -> Path:
    return next(iter(fl_sites.values())).parents[2]


@pytest.fixture(scope="module")
def fl_sites(tmp_path_factory) -> dict[str, Path]:
    """Two tiny hospitals: 4 labelled (2 ECE+, 2 ECE-) + 1 unlabelled each, preprocessed."""
    return preprocessed_sites(tmp_path_factory.mktemp("fl"), 2, 4, 1, seed=5)


@pytest.fixture(scope="module")
def simulated(fl_sites, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    args = ["fl", "simulate", "--job", "all", "--rounds", "1", "--local-epochs", "1", "--preset", "test-tiny",
            "--workspace", str(ws), "--val-fraction", str(VAL_FRACTION), "--quiet", "--no-progress",
            "--cross-site-eval", "--set", f"readout_refit_iterations={REFIT_ITERATIONS}",
            # the presets' read-out: the CT inputs as features (over the perinodal fat), the ridge on standardised
            # features, the hidden features left out
            "--set", "readout_hu_features=true", "--set", "readout_fat_hu=[-190,-30]",
            "--set", "readout_standardise=true", "--set", "readout_hidden=false",
            # and its ridge chosen by cross-validation over the sites' training cases
            "--set", f"readout_ridge_cv_folds={REFIT_FOLDS}", "--set", f"readout_ridge_grid={list(REFIT_GRID)}",
            "--set", "readout_ridge_cv_min_cases=1"]  # 1 training case a fold at these tiny sites
    for site, datalist in fl_sites.items():
        args += ["--site", f"{site}={datalist}"]
    assert ecefl_main(args) == 0
    return ws


def test_contract_artifacts_exist_and_load(simulated):
    for rel in ("mae_pretrain/global_model.pt", "ece_finetune/global_model.pt",
                "ece_finetune/best_global_model.pt", "ece_finetune/pooled_metrics.json",
                "ece_finetune/cross_site.json"):
        assert (simulated / rel).is_file(), rel
    assert load_checkpoint(simulated / "mae_pretrain" / "global_model.pt")["kind"] == "mae"
    final = load_checkpoint(simulated / "ece_finetune" / "global_model.pt", kind="dual")
    DualOutputSwinUNETR(final["plan"]).load_state_dict(final["model"], strict=True)
    assert 0.0 <= final["threshold"] <= 1.0


def test_global_models_trained_and_encoder_came_from_mae(simulated):
    initial = torch.load(simulated / "ece_finetune" / "initial_model.pt")["model"]
    mae = load_checkpoint(simulated / "mae_pretrain" / "global_model.pt")["model"]
    final = load_checkpoint(simulated / "ece_finetune" / "global_model.pt")["model"]
    keys = encoder_keys(initial)
    assert len(keys) > 50 and all(torch.equal(initial[k], mae[k]) for k in keys)
    changed = [k for k in final if not torch.equal(final[k], initial[k])]
    assert len(changed) > len(final) // 2, "one round of FedAvg changes most tensors"
    assert all(torch.isfinite(v).all() for v in final.values())


def test_one_seed_gives_one_federated_run(simulated, fl_sites, tmp_path):
    """The simulator again, MAE only, same sites and seed: the same global model to the last bit (the initial
    weights come from the plan's seed, and the server averages the sites' updates in a fixed order)."""
    args = ["fl", "simulate", "--job", "mae_pretrain", "--rounds", "1", "--preset", "test-tiny", "--workspace",
            str(tmp_path), "--val-fraction", str(VAL_FRACTION), "--quiet", "--no-progress"]
    for site, datalist in fl_sites.items():
        args += ["--site", f"{site}={datalist}"]
    assert ecefl_main(args) == 0
    first = load_checkpoint(simulated / "mae_pretrain" / "global_model.pt")["model"]
    again = load_checkpoint(tmp_path / "mae_pretrain" / "global_model.pt")["model"]
    assert first.keys() == again.keys() and all(torch.equal(first[k], again[k]) for k in first)


def test_fedavg_is_the_same_whichever_site_answers_first():
    from nvflare.app_common.abstract.fl_model import FLModel

    from ecefl.fl.protocol import NUM_STEPS
    from ecefl.fl.server import PooledFedAvg
    rng = np.random.default_rng(0)
    results = [FLModel(params={"w": torch.as_tensor(rng.normal(size=1000).astype(np.float32))}, metrics={},
                       meta={"client_name": f"hospital-{c}", NUM_STEPS: n})
               for c, n in zip("abcd", (3, 7, 5, 11))]
    averages = [torch.as_tensor(PooledFedAvg.aggregate_fn([results[i] for i in order]).params["w"])
                for order in ((0, 1, 2, 3), (3, 1, 0, 2), (2, 3, 1, 0))]
    assert all(torch.equal(averages[0], a) for a in averages[1:])
    weights = np.array([3, 7, 5, 11], dtype=np.float64)
    expected = sum(w * r.params["w"].double() for w, r in zip(weights, results)) / weights.sum()
    assert torch.allclose(averages[0].double(), expected, atol=1e-6)


def test_pooled_metrics_layout(simulated):
    report = json.loads((simulated / "ece_finetune" / "pooled_metrics.json").read_text())
    keys = {"dice", "dice_global", "auc", "accuracy", "sensitivity", "specificity", "f1", "n_cases"}
    assert len(report["rounds"]) == 1 and report["rounds"][0]["round"] == 0
    for record in report["rounds"] + [report["final"]]:
        assert keys <= set(record["pooled"])
        assert set(record["sites"]) == set(SITES)
        for site_metrics in record["sites"].values():
            assert keys <= set(site_metrics)
            # a site's own histograms never reach the server readable (secure sum): only its scalar metrics
            assert not {"score_hist_pos", "score_hist_neg", "dice_hist", "voxel_tp"} & set(site_metrics)
        assert "site_roc" not in record
        assert record["pooled"]["n_cases"] == sum(s["n_cases"] for s in record["sites"].values()) == 4
    assert report["best_round"] in (0, "final")
    # best_global_model.pt is the model of the best round (here the final one: round 0's model is untrained)
    best = load_checkpoint(simulated / "ece_finetune" / "best_global_model.pt")
    final = load_checkpoint(simulated / "ece_finetune" / "global_model.pt")
    assert report["best_round"] == "final" and best["federated"]["round"] == final["federated"]["round"] == 0
    assert all(torch.equal(best["model"][k], v) for k, v in final["model"].items())
    assert report["finished"] is True and report["events"] == []


def test_server_pooled_auc_and_confusion_equal_sklearn_on_local_predictions(simulated, fl_sites):
    """The test computes each site's local predictions itself (never sent) and pools them with sklearn."""
    report = json.loads((simulated / "ece_finetune" / "pooled_metrics.json").read_text())
    final = report["final"]
    ckpt = load_checkpoint(simulated / "ece_finetune" / "global_model.pt")
    model = DualOutputSwinUNETR(ckpt["plan"])
    model.load_state_dict(ckpt["model"], strict=True)
    probs, labels, dices, dices_at = [], [], [], []
    threads = torch.get_num_threads()
    # as the simulated sites ran (ECEFL_TORCH_THREADS = cores // sites): same float reduction order
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // len(SITES)))
    for site, datalist in fl_sites.items():
        labelled, _ = load_datalist(datalist, site=site)
        _, val = stratified_split(labelled, VAL_FRACTION, 0)
        pred = predict_cases(model, val, ckpt["plan"], progress=False)
        probs += list(pred["probs"])
        labels += list(pred["labels"])
        dices += list(pred["dices"])
        dices_at.append(pred["dices_at"])
    torch.set_num_threads(threads)
    probs, labels = np.array(probs), np.array(labels)
    # exact up to ties within one score bin: a positive-negative pair closer than a bin may be split evenly by the
    # histogram (and this process's float rounding may order two near-equal scores differently from the site's)
    width = 1.0 / ckpt["plan"].score_bins
    pos, neg = probs[labels == 1], probs[labels == 0]
    near_ties = int((np.abs(pos[:, None] - neg[None, :]) < 2 * width).sum())
    assert final["pooled"]["auc"] == pytest.approx(roc_auc_score(labels, probs),
                                                   abs=0.5 * near_ties / (len(pos) * len(neg)) + 1e-9)
    # the pooled histograms (the secure sum's output) hold exactly these cases' scores, bin by bin (+-1 bin for
    # float rounding at a bin edge)
    bins = ckpt["plan"].score_bins
    for key, scores in (("score_hist_pos", pos), ("score_hist_neg", neg)):
        served = np.repeat(np.arange(bins), final["roc"][key])
        local = np.sort(np.minimum((scores * bins).astype(int), bins - 1))
        assert len(served) == len(local) and np.abs(served - local).max() <= 1
    tn, fp, fn, tp = confusion_matrix(labels, probs >= final["threshold"], labels=[0, 1]).ravel()
    assert final["pooled"]["accuracy"] == pytest.approx((tp + tn) / len(labels))
    assert final["pooled"]["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert final["pooled"]["specificity"] == pytest.approx(tn / (tn + fp))
    assert final["pooled"]["dice"] == pytest.approx(float(np.mean(dices)), abs=1e-4)
    # the output mask's node threshold: the candidate with the best pooled mean Dice of these cases (secure-summed
    # per-threshold Dice sums), stored in the model file that infer and evaluate read
    dices_at = np.concatenate(dices_at)
    served = final["pooled"]["dice_at_node_threshold"]
    assert [served[f"{t:g}"] for t in M.NODE_THRESHOLDS] == pytest.approx(dices_at.mean(0).tolist(), abs=1e-4)
    assert served["0.5"] == pytest.approx(final["pooled"]["dice"], abs=1e-6)
    best = dices_at.mean(0)
    assert best[M.NODE_THRESHOLDS.index(ckpt["node_threshold"])] == pytest.approx(best.max(), abs=1e-4)
    assert final["node_threshold"] == ckpt["node_threshold"] == report["node_threshold"]


def test_cross_site_evaluation_covers_every_model_and_site(simulated):
    cse = json.loads((simulated / "ece_finetune" / "cross_site.json").read_text())
    assert set(cse) == set(SITES)
    for site, by_model in cse.items():
        assert set(SITES) <= set(by_model) and any(m.startswith("SRV_") for m in by_model)
        for metrics in by_model.values():
            assert 0.0 <= metrics["dice"] <= 1.0 and metrics["n_cases"] == 2


def test_nothing_case_level_reaches_the_server(simulated, fl_sites):
    case_ids = set()
    for datalist in fl_sites.values():
        labelled, unlabelled = load_datalist(datalist)
        case_ids |= {it["case_id"] for it in labelled + unlabelled}
    server = simulated / "ece_finetune" / "nvflare" / "ece_finetune" / "server"
    for path in list(server.rglob("*")) + [simulated / "ece_finetune" / "pooled_metrics.json"]:
        if path.is_file() and path.suffix in (".json", ".txt", ".log", ""):
            text = path.read_text(errors="replace")
            assert not any(cid in text for cid in case_ids), path


def test_job_at_a_site_without_data_fails_naming_site_and_setting(fl_sites, tmp_path, capsys, monkeypatch):
    from ecefl.fl.simulate import FederatedRunError, _run_job
    from ecefl.plan import get_plan
    cfg = tmp_path / "site_config.json"
    cfg.write_text(json.dumps({"sites": {"hospital-a": {"datalist": str(fl_sites["hospital-a"])}}}))
    monkeypatch.setenv("ECEFL_SITE_CONFIG", str(cfg))
    monkeypatch.setenv("ECEFL_TORCH_THREADS", "1")
    with pytest.raises(FederatedRunError) as err:
        _run_job("mae_pretrain", get_plan("test-tiny"), {"hospital-a": fl_sites["hospital-a"],
                                                          "hospital-z": fl_sites["hospital-b"]},
                 tmp_path / "ws", rounds=1, local_epochs=1, min_sites=2, seed=0, val_fraction=0.5, min_count=0,
                 quiet=True, progress=False, log=lambda *_: None)
    message = str(err.value)
    assert "hospital-z" in message and "ECEFL_SITE_CONFIG" in message and "datalist" in message


def test_phi_audit_of_everything_the_federated_run_left(simulated, fl_root):
    """Fake names, IDs, birth dates, accession numbers and UIDs of the DICOM headers appear nowhere: not in the
    server workspace, logs, TensorBoard events, pooled metrics, models, nor in site artifacts outside private/."""
    from phi import leaks, phi_strings
    secrets = set()
    for site in SITES:
        secrets |= phi_strings(fl_root / "dicom" / site / "dicom")
    assert len(secrets) > 100 and any(s.startswith("ZZSYN") for s in secrets)
    scanned = []
    assert leaks(simulated, secrets, scanned=scanned) == []
    assert leaks(fl_root / "pre", secrets) == []
    # the audit read the model files and TensorBoard event files too (not only text)
    assert sum(p.suffix == ".pt" for p in scanned) >= 4
    assert any("tfevents" in p.name for p in scanned)


def _training_features(model, fl_sites, plan) -> list:
    """The refit's data in one place: per site, its training cases' read-out features, labels and class weight."""
    from ecefl import readout as R
    data = []
    for site in SITES:
        labelled, _ = load_datalist(fl_sites[site], site=site)
        train, _ = stratified_split(labelled, VAL_FRACTION, 0)
        data.append((R.case_features(model, train, plan), np.array([it["ece"] for it in train]),
                     positive_weight(train)))
    return data


def test_federated_readout_refit_is_the_centralised_solution(simulated, fl_sites):
    """The server's Newton iterations on securely summed site terms give the read-out that the same iterations
    give on all sites' training-case features in one place (ecefl.readout), and lower the pooled loss; with the
    presets' read-out (CT inputs as features, ridge on standardised features, variances from the summed Hessian,
    the hidden features' weights held at 0) and the ridge cross-validated: the same held-out losses per ridge, the
    same ridge chosen."""
    from ecefl import readout as R
    report = json.loads((simulated / "ece_finetune" / "pooled_metrics.json").read_text())
    refit = report["readout_refit"]
    assert refit["iterations"] == REFIT_ITERATIONS and sorted(refit["sites"]) == list(SITES)
    assert len(refit["loss"]) == REFIT_ITERATIONS and refit["loss"][-1] < refit["loss"][0]
    ckpt = load_checkpoint(simulated / "ece_finetune" / "global_model.pt", kind="dual")
    model = DualOutputSwinUNETR(ckpt["plan"])
    model.load_state_dict(ckpt["model"], strict=True)
    final_theta = model.readout_parameters().double().numpy()
    baseline = model.readout_baseline.double().numpy()
    np.testing.assert_allclose(final_theta, refit["theta"], atol=1e-6)
    theta0 = np.array(refit["theta_joint"])
    model.set_readout_parameters(torch.as_tensor(theta0))  # the jointly trained model the sites refitted
    data = _training_features(model, fl_sites, ckpt["plan"])
    assert refit["standardised"] and ckpt["plan"].readout_hu_features and ckpt["plan"].readout_fat_hu
    # (w, u, the fat's bias, b0, bias): the CT weights and the fat's bias are 0 before the refit
    assert len(theta0) == ckpt["plan"].feature_size + 7 + 1 + 2 and not theta0[-10:-2].any()
    assert ckpt["plan"].readout_ridge_cv_folds == REFIT_FOLDS
    expected, record = R.solve(theta0, R.centralised_sum(data, REFIT_FOLDS, ckpt["plan"].seed, list(SITES)),
                               REFIT_GRID, REFIT_FOLDS, REFIT_ITERATIONS, standardise=True,
                               frozen=R.hidden_frozen(ckpt["plan"], len(theta0)))
    fs = ckpt["plan"].feature_size  # readout_hidden off: the hidden features' weights stay at 0
    assert refit["frozen"] == fs and not final_theta[:fs].any() and np.abs(theta0[:fs]).max() > 0
    losses = record["loss"]
    assert refit["ridge"] == record["ridge"] and refit["ridge_cv"]["grid"] == list(REFIT_GRID)
    np.testing.assert_allclose(refit["ridge_cv"]["held_out_loss"], record["ridge_cv"]["held_out_loss"], rtol=1e-4)
    # every training case is held out once: the held-out weight is the pooled class-weighted case count
    assert refit["ridge_cv"]["held_out_weight"] == pytest.approx(sum((np.where(y > 0, pw, 1.0)).sum()
                                                                     for _, y, pw in data))
    # the report names the ridge and how it was chosen, with each ridge's held-out loss per case weight
    from ecefl.report import _refit_html
    html = _refit_html(refit)
    assert f"read-out {refit['ridge']:g}, chosen by {REFIT_FOLDS}-fold cross-validation" in html
    assert f"the evidence head's {fs} hidden features left at 0 (readout_hidden off)" in html
    per_weight = np.array(refit["ridge_cv"]["held_out_loss"]) / refit["ridge_cv"]["held_out_weight"]
    assert all(f"{r:g}: {v:.3f}" in html for r, v in zip(REFIT_GRID, per_weight))
    # equal up to float rounding (the sites' features come from other processes and thread counts; the secure
    # sum's fixed point), which a nearly singular Newton system (weights up to ~100 here) amplifies
    np.testing.assert_allclose(final_theta, expected, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(refit["loss"], losses, rtol=1e-4)  # 1.2e-5 apart in one suite run
    assert np.abs(expected - theta0).max() > 1e-3, "the refit moved the read-out"
    # the average training case the evidence is shown against (the class-weighted mean of the design rows), from
    # the same secure sums, travels in the global model
    rows = [np.concatenate([f, np.ones((len(f), 1))], 1) for f, _, _ in data]
    weights = [np.where(y > 0, pw, 1.0) for _, y, pw in data]
    average = sum(w @ r for w, r in zip(weights, rows)) / sum(w.sum() for w in weights)
    np.testing.assert_allclose(record["average_case"], average, rtol=1e-9)
    np.testing.assert_allclose(refit["average_case"], average, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(baseline, average, rtol=1e-4, atol=1e-6)


def test_cross_validation_refused_by_sites_with_small_folds_falls_back_to_the_fixed_ridge(fl_sites, tmp_path):
    """Sites whose CV folds hold fewer training cases than readout_ridge_cv_min_cases (here 1 a fold, the default
    minimum 5) send no fold terms; the server drops the call unread and refits at the plan's fixed ridge from the
    features the sites already hold: the centralised refit at that ridge. The event and the report say so."""
    from ecefl import readout as R
    from ecefl.report import _refit_html
    args = ["fl", "simulate", "--job", "ece_finetune", "--rounds", "1", "--local-epochs", "1", "--preset", "test-tiny",
            "--workspace", str(tmp_path), "--val-fraction", str(VAL_FRACTION), "--quiet", "--no-progress",
            "--set", "iterations_per_epoch=2", "--set", f"readout_refit_iterations={REFIT_ITERATIONS}",
            "--set", f"readout_ridge_cv_folds={REFIT_FOLDS}", "--set", "readout_ridge=0.3"]
    for site, datalist in fl_sites.items():
        args += ["--site", f"{site}={datalist}"]
    assert ecefl_main(args) == 0
    report = json.loads((tmp_path / "ece_finetune" / "pooled_metrics.json").read_text())
    refit = report["readout_refit"]
    assert refit["ridge"] == 0.3 and refit["ridge_cv"] is None and refit["ridge_cv_refused_by"] == list(SITES)
    assert sorted(refit["sites"]) == list(SITES) and len(refit["loss"]) == REFIT_ITERATIONS
    (event,) = [e for e in report["events"] if e["event"] == "readout_refit"]
    assert "hospital-a, hospital-b: cross-validation folds under readout_ridge_cv_min_cases" in event["reason"]
    assert "ECE+" not in json.dumps(report)  # the fold counts stay in the sites' logs
    site_log = next((tmp_path / "ece_finetune" / "nvflare").rglob("hospital-a/log.txt")).read_text()
    assert re.search(r"CV fold \d holds \d of this site's training cases \(\d ECE\+, \d ECE-\)", site_log)
    assert "refused by hospital-a, hospital-b" in _refit_html(refit)
    ckpt = load_checkpoint(tmp_path / "ece_finetune" / "global_model.pt", kind="dual")
    model = DualOutputSwinUNETR(ckpt["plan"])
    model.load_state_dict(ckpt["model"], strict=True)
    model.set_readout_parameters(torch.as_tensor(np.array(refit["theta_joint"])))
    data = _training_features(model, fl_sites, ckpt["plan"])
    expected, _ = R.refit_centralised(np.array(refit["theta_joint"]), data, 0.3, REFIT_ITERATIONS)
    np.testing.assert_allclose(refit["theta"], expected, rtol=1e-3, atol=1e-5)


def test_cyclic_workflow_passes_the_model_from_site_to_site(fl_sites, tmp_path):
    """plan.fl_workflow "cyclic": the round's model visits the sites one after another (each trains alone, with
    the machine's cores in the simulator), so the round lasts the sum of the sites' training times, not their
    maximum as in FedAvg; the round's result is one trained model, validated at every site as usual."""
    args = ["fl", "simulate", "--job", "ece_finetune", "--rounds", "1", "--local-epochs", "1", "--preset", "test-tiny",
            "--workspace", str(tmp_path), "--val-fraction", str(VAL_FRACTION), "--quiet", "--no-progress",
            "--set", "fl_workflow=cyclic", "--set", "iterations_per_epoch=3"]
    for site, datalist in fl_sites.items():
        args += ["--site", f"{site}={datalist}"]
    assert ecefl_main(args) == 0
    report = json.loads((tmp_path / "ece_finetune" / "pooled_metrics.json").read_text())
    (record,) = report["rounds"]
    seconds = record["site_train_seconds"]
    assert set(seconds) == set(SITES) and record["n_sites"] == 2
    assert record["seconds"] >= sum(seconds.values())  # one site after the other
    # the round's model itself (validate_every 1) was validated at every site before the pass, pooled as in FedAvg
    assert record["pooled"]["n_cases"] == 4 and set(record["sites"]) == set(SITES)
    assert report["final"]["pooled"]["n_cases"] == 4 and set(report["final"]["sites"]) == set(SITES)
    final = load_checkpoint(tmp_path / "ece_finetune" / "global_model.pt")
    initial = DualOutputSwinUNETR(final["plan"]).state_dict()  # the plan's seed draws the initial weights
    assert final["plan"].fl_workflow == "cyclic"
    assert sum(not torch.equal(final["model"][k], initial[k]) for k in initial) > len(initial) // 2


def test_quantized_messages_carry_fp16_weights_and_hand_the_index_buffers_through(fl_sites, tmp_path):
    """--quantize float16: NVFlare's ModelQuantizer / ModelDequantizer on every model message. The plain filters
    reject SwinUNETR's int64 relative_position_index buffers; ours hand them through. In the cyclic workflow the
    final global model is the last site's upload as the server received it, so every float weight it holds went
    through fp16 (equal to its own fp16 rounding) while the index buffers arrive bit for bit."""
    args = ["fl", "simulate", "--job", "ece_finetune", "--rounds", "1", "--local-epochs", "1", "--preset", "test-tiny",
            "--workspace", str(tmp_path), "--val-fraction", str(VAL_FRACTION), "--quiet", "--no-progress",
            "--set", "fl_workflow=cyclic", "--set", "iterations_per_epoch=2", "--quantize", "float16"]
    for site, datalist in fl_sites.items():
        args += ["--site", f"{site}={datalist}"]
    assert ecefl_main(args) == 0
    final = load_checkpoint(tmp_path / "ece_finetune" / "global_model.pt")
    initial = DualOutputSwinUNETR(final["plan"]).state_dict()
    floats = [k for k, v in initial.items() if v.is_floating_point()]
    indices = [k for k, v in initial.items() if not v.is_floating_point()]
    assert len(indices) == 4 and all(torch.equal(final["model"][k], initial[k]) for k in indices)
    assert all(torch.equal(final["model"][k], final["model"][k].half().float()) for k in floats)
    assert sum(not torch.equal(final["model"][k], initial[k]) for k in floats) > len(floats) // 2  # trained
    # the initial weights themselves are not fp16 values: the rounding happened on the way
    assert not all(torch.equal(initial[k], initial[k].half().float()) for k in floats)
    report = json.loads((tmp_path / "ece_finetune" / "pooled_metrics.json").read_text())
    assert report["final"]["pooled"]["n_cases"] == 4


def test_quantization_that_needs_cuda_is_refused_before_the_simulator_starts(fl_sites, tmp_path, capsys):
    args = ["fl", "simulate", "--job", "ece_finetune", "--rounds", "1", "--preset", "test-tiny", "--workspace",
            str(tmp_path), "--quiet", "--no-progress", "--quantize", "blockwise8"]
    for site, datalist in fl_sites.items():
        args += ["--site", f"{site}={datalist}"]
    assert ecefl_main(args) != 0
    message = capsys.readouterr().err
    assert "blockwise8" in message and "CUDA" in message and "float16" in message
    assert not (tmp_path / "ece_finetune").exists()
