"""`ecefl demo` at a tiny setting: report files exist and summary.json repeats pooled_metrics.json exactly; the
read-out benchmark re-runs the demo's federated refit on its body and reproduces it, and the ridge benchmark's
scores are those `ecefl evaluate` gives; the unseen-hospital benchmark finds each patient's ECE rendering; the
node-context benchmark moves whole nodes; the node-recall benchmark scores every node; the ECE-signs benchmark
gives the decision with the nodes given."""
from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from conftest import REPO
from ecefl.checkpoint import load_checkpoint
from ecefl.cli import main as ecefl_main

sys.path.insert(0, str(REPO / "benchmarks"))
import ece_signs as ece_signs_benchmark  # noqa: E402
import node_context as node_context_benchmark  # noqa: E402
import node_recall as node_recall_benchmark  # noqa: E402
import readout as readout_benchmark  # noqa: E402
import ridge as ridge_benchmark  # noqa: E402
import unseen as unseen_benchmark  # noqa: E402


def test_tiny_demo_report_matches_pooled_metrics(tmp_path, capsys, monkeypatch):
    out = tmp_path / "demo"
    assert ecefl_main(["demo", "--out", str(out), "--preset", "test-tiny", "--sites", "2", "--cases-per-site", "4",
                       "--unlabeled-per-site", "1", "--mae-rounds", "1", "--rounds", "1", "--no-progress",
                       # the presets' read-out refit, for the benchmark below
                       "--set", "readout_refit_iterations=3", "--set", "readout_hu_features=true",
                       "--set", "readout_fat_hu=[-190,-30]", "--set", "readout_standardise=true",
                       "--set", "readout_hidden=false"]) == 0
    printed = capsys.readouterr().out
    report = out / "report"
    for name in ("index.html", "summary.json", "roc.png", "learning_curves.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 1000, name
    summary = json.loads((report / "summary.json").read_text())
    pooled = json.loads((out / "fl" / "ece_finetune" / "pooled_metrics.json").read_text())
    assert summary["final"]["pooled"] == pooled["final"]["pooled"]
    assert summary["final"]["sites"] == pooled["final"]["sites"]
    assert summary["best_round"] == pooled["best_round"]
    assert set(summary["data"]) == {"hospital-a", "hospital-b"}
    assert summary["data"]["hospital-a"]["ok"] == 4 and summary["data"]["hospital-a"]["unlabeled"] == 1
    html = (report / "index.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html  # self-contained
    assert f"{pooled['final']['pooled']['auc']:.3f}" in html
    # the demo's workflow (DEMO_DEFAULTS), in the plan it records and in the report's words
    assert summary["config"]["plan"]["fl_workflow"] == "cyclic" and "by cyclic weight transfer" in html
    assert load_checkpoint(out / "fl" / "ece_finetune" / "global_model.pt")["plan"].fl_workflow == "cyclic"
    mae_loss = json.loads((out / "fl" / "mae_pretrain" / "pooled_metrics.json").read_text())["rounds"][0]["train_loss"]
    assert f"MAE pretraining, 1 federated round(s): pooled masked-voxel L1 {mae_loss:.3f}" in html
    assert summary["evidence_cases"] and all(c["site"] in ("hospital-a", "hospital-b")
                                             for c in summary["evidence_cases"])
    for case in summary["evidence_cases"]:
        assert (report / f"evidence_{case['category']}.png").is_file()
    # each site kept the final model's per-case validation results beside its datalist (the evidence cases' scores)
    from ecefl.engine import FINAL_PREDICTIONS, read_predictions
    for site, metrics in pooled["final"]["sites"].items():
        kept = read_predictions(out / "sites" / site / FINAL_PREDICTIONS)
        assert len(kept) == metrics["n_cases"] and sum(c["ece"] for c in kept.values()) == metrics["n_pos"]
        assert abs(np.mean([c["dice"] for c in kept.values()]) - metrics["dice"]) < 1e-5
    assert "report:" in printed and "pooled" in printed

    # benchmarks/readout.py without overrides: the centralised refit from the same jointly trained read-out on the
    # same training split is the demo's federated refit, and its validation split is the demo's
    refitted = tmp_path / "refit.pt"
    assert readout_benchmark.main(["--demo", str(out), "--out", str(refitted)]) == 0
    record = json.loads((tmp_path / "refit.pt.json").read_text())
    # the same cases' features at the same start: the same first loss; then the same Newton path up to float
    # rounding (features from other processes, the secure sum's fixed point), which 4 cases and 21 weights (some in
    # the hundreds) amplify to ~0.5 % here
    assert record["refit"]["loss"][0] == pytest.approx(pooled["readout_refit"]["loss"][0], rel=1e-6)
    np.testing.assert_allclose(record["refit"]["loss"], pooled["readout_refit"]["loss"], rtol=1e-3)
    np.testing.assert_allclose(record["refit"]["theta"], pooled["readout_refit"]["theta"], rtol=2e-2, atol=1e-2)
    final = pooled["final"]["pooled"]
    assert record["pooled_validation"]["n_cases"] == final["n_cases"]
    at = final.get("dice_at_node_threshold") or {"0.5": final["dice"]}  # the mean Dice at the model's threshold
    assert abs(record["pooled_validation"]["dice"] - at[f"{record['node_threshold']:g}"]) < 1e-6
    ckpt = load_checkpoint(refitted, "dual")
    assert ckpt["threshold"] == record["threshold"] and 0.0 <= record["threshold"] <= 1.0
    assert ckpt["node_threshold"] == record["node_threshold"]

    # benchmarks/ridge.py on the same body (every ridge of the grid, and the CV's choice): its refit at the demo's
    # own ridge is the model readout.py wrote, so its AUC on a list of patients is the one `ecefl evaluate` gives
    from ecefl.stages import evaluate
    patients = out / "sites" / "hospital-b" / "datalist.json"
    assert ridge_benchmark.main(["--demo", str(out), "--test", str(patients), "--out", str(tmp_path / "ridge.json"),
                                 "--folds", "2", "--threads", "1"]) == 0
    res = json.loads((tmp_path / "ridge.json").read_text())
    train, _ = readout_benchmark.demo_splits(out, 0, 0.25)
    assert res["n_test"] == 4 and res["n_train"] == len(train) and res["fixed_ridge"] == ckpt["plan"].readout_ridge
    assert res["chosen_ridge"] in [r["ridge"] for r in res["ridges"]]
    held = evaluate(refitted, [patients], tmp_path / "eval", progress=False, log=lambda *_: None)
    fixed = next(r for r in res["ridges"] if r["ridge"] == res["fixed_ridge"])
    assert fixed["unseen_auc"] == pytest.approx(held["auc"], abs=1e-9)
    assert res["unseen_auc"]["fixed"] == fixed["unseen_auc"]

    # benchmarks/unseen.py's AUC by ECE rendering: the site's pseudonyms joined to the generator's truth through the
    # site's key; every ECE-positive patient is found as subtle or overt (another key would find none)
    rendering = unseen_benchmark.auc_by_rendering(out / "site_keys" / "hospital-b.key",
                                                  out / "hospitals" / "hospital-b" / "synth_manifest.json",
                                                  tmp_path / "eval" / "predictions.csv")
    assert rendering["n_subtle"] + rendering["n_overt"] == held["n_pos"] > 0
    wrong_key = tmp_path / "other.key"
    wrong_key.write_text("0" * 64)
    assert unseen_benchmark.auc_by_rendering(wrong_key, out / "hospitals" / "hospital-b" / "synth_manifest.json",
                                             tmp_path / "eval" / "predictions.csv") == {
        "subtle_vs_negative": None, "n_subtle": 0, "overt_vs_negative": None, "n_overt": 0}

    # benchmarks/unseen.py's found nodes: precision and recall of the marked volume from each case's Dice and volumes
    found = unseen_benchmark.found_nodes(tmp_path / "eval" / "predictions.csv")
    assert 0 <= found["pooled_precision"] <= 1 + 1e-3 and 0 <= found["pooled_recall"] <= 1 + 1e-3
    assert found["median_contoured_ml"] > 0
    made = tmp_path / "made.csv"  # by hand: 1 ml marked, all node, of 3 ml; 4 ml marked, 1 node, of 1 ml
    made.write_text("case_id,probability,ece,dice,predicted_ml,reference_ml\n"
                    "a,0.5,1,0.5,1.0,3.0\nb,0.5,0,0.4,4.0,1.0\n")
    assert unseen_benchmark.found_nodes(made) == pytest.approx(
        {"pooled_precision": 2 / 5, "pooled_recall": 2 / 4, "median_precision": (1 + 0.25) / 2,
         "median_recall": (1 / 3 + 1) / 2, "median_marked_ml": 2.5, "median_contoured_ml": 2.0,
         "median_volume_ratio": (1 / 3 + 4) / 2, "share_under_half": 0.5, "share_over_twice": 0.5})

    # benchmarks/node_context.py: one node of each site at home, moved into the other site's neck and its own, and
    # with its neck made fat; a moved node is the node's own voxels and CT values, elsewhere
    sites = out / "sites"
    monkeypatch.setattr(sys, "argv", [
        "node_context.py", "--model", str(out / "fl" / "ece_finetune" / "best_global_model.pt"),
        "--site-a", str(sites / "hospital-a"), "--datalist-a", "datalist.json", "--site-b", str(sites / "hospital-b"),
        "--cases", "1", "--fat-beyond-mm", "16", "--out", str(tmp_path / "nc")])
    node_context_benchmark.main()
    moved = json.loads((tmp_path / "nc" / "node_context.json").read_text())
    row = moved["patients"][0]
    assert set(moved["median"]) == {"a_home", "b_home", "a_in_b", "b_in_a", "a_in_a", "b_in_b", "a_fat_beyond_16"}
    assert all(v is None or 0.0 <= v <= 1.0 for k, v in row.items() if not k.startswith("case"))
    assert row["case_a"].startswith("case-") and moved["n"]["a_home"] == 1
    rng = np.random.default_rng(0)
    img = np.full((40, 40, 40), (-95 + 250) / 600, np.float32)  # fat
    img[:, :, :4] = 0.0  # air below
    nodes = np.zeros(img.shape, bool)
    nodes[5:10, 5:10, 8:13] = True
    img[nodes] = (40 + 250) / 600
    piece = node_context_benchmark.cut_out(img, nodes)
    out_img, mask = node_context_benchmark.paste_into_fat(img, nodes, piece, (-250.0, 350.0), rng)
    assert mask.sum() == nodes.sum() and not (mask & nodes).any()
    assert np.allclose(out_img[mask], (40 + 250) / 600) and np.array_equal(out_img[nodes], img[nodes])

    # benchmarks/node_recall.py: every contoured node of a patient scored where it lies, with its shape and ring
    monkeypatch.setattr(sys, "argv", [
        "node_recall.py", "--model", str(out / "fl" / "ece_finetune" / "best_global_model.pt"),
        "--site", str(sites / "hospital-a"), "--datalist", "datalist.json", "--cases", "2", "--out",
        str(tmp_path / "nr"), "--against", str(tmp_path / "nr")])  # itself: no difference
    (tmp_path / "nr").mkdir()
    (tmp_path / "nr" / "node_recall.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a node_recall.json"):  # a file without nodes is no run to compare with
        node_recall_benchmark.main()
    monkeypatch.setattr(sys, "argv", sys.argv[:-2])
    node_recall_benchmark.main()
    recall = json.loads((tmp_path / "nr" / "node_recall.json").read_text())
    assert recall["summary"]["n_patients"] == 2 and recall["summary"]["n_nodes"] == len(recall["nodes"]) >= 2
    assert all(0 <= r["probability"] <= 1 and 0 <= r["recall"] <= 1 and r["case_id"].startswith("case-")
               for r in recall["nodes"])
    assert node_recall_benchmark.paired_against(recall["nodes"], recall["nodes"])["mean_difference"] == 0.0
    # by hand: a node 4 x 4 voxels across and 8 long along z in fat, half of it above the threshold, 1 ml marked off it
    img = np.full((30, 30, 30), (-95 + 250) / 600, np.float32)
    nodes = np.zeros(img.shape, bool)
    nodes[10:14, 10:14, 8:16] = True
    img[nodes] = (40 + 250) / 600
    prob = np.zeros(img.shape, np.float32)
    prob[10:14, 10:14, 8:12] = 0.9
    prob[20:25, 20:25, 20:25] = 0.8  # 125 voxels of 2 mm: 1 ml
    rows, fp = node_recall_benchmark.node_rows(prob, img, nodes, (-250.0, 350.0), (2.0, 2.0, 2.0), 0.5, "case-x")
    assert len(rows) == 1 and fp == pytest.approx(1.0)
    assert rows[0]["recall"] == pytest.approx(0.5) and rows[0]["probability"] == pytest.approx(0.45)
    assert rows[0]["z_over_axial"] == pytest.approx(2.0) and rows[0]["long_axis_cos_z"] == pytest.approx(1.0)
    assert rows[0]["ring_fat"] == 1.0 and rows[0]["ml"] == pytest.approx(128 * 8 / 1e3)
    other = [{**rows[0], "probability": 0.25}]
    assert node_recall_benchmark.paired_against(rows, other)["mean_difference"] == pytest.approx(0.2)

    # benchmarks/ece_signs.py: the read-out pooled over the reference region, and the HU signs of the nodes
    monkeypatch.setattr(sys, "argv", [
        "ece_signs.py", "--model", str(out / "fl" / "ece_finetune" / "best_global_model.pt"),
        "--site", str(sites / "hospital-a"), "--datalist", "datalist.json", "--cases", "4", "--out",
        str(tmp_path / "signs")])
    ece_signs_benchmark.main()
    signs = json.loads((tmp_path / "signs" / "ece_signs.json").read_text())
    table = list(csv.DictReader(open(tmp_path / "signs" / "predictions.csv")))
    assert signs["n_cases"] == len(table) >= 2 and 1 <= signs["n_positive"] < len(table)
    assert all(0 <= float(r["probability"]) <= 1 and float(r["ml"]) > 0 for r in table)
    assert set(signs["auc"]) == {"probability", *ece_signs_benchmark.SIGNS}
    # by hand: a 4-voxel cube of node (40 HU) in fat (-95 HU), then with its fat stranded (-45 HU) and one side of
    # its shell soft tissue (fat plane lost)
    hu = np.full((20, 20, 20), -95.0, np.float32)
    nodes = np.zeros(hu.shape, bool)
    nodes[8:12, 8:12, 8:12] = True
    hu[nodes] = 40.0
    clean = ece_signs_benchmark.signs(hu, nodes, 0.008)
    assert clean["node_hu"] == 40.0 and clean["ml"] == pytest.approx(64 * 0.008)
    assert clean["shell_soft_share"] == 0.0 and -95.0 <= clean["shell_fat_hu"] < -60.0
    assert clean["surface_per_volume"] == pytest.approx(56 / 16)  # 56 of 64 voxels at the border
    from scipy import ndimage
    stranded = hu.copy()
    stranded[ndimage.binary_dilation(nodes, iterations=4) & ~nodes] = -45.0
    stranded[8:12, 8:12, 12:14] = 40.0
    ece = ece_signs_benchmark.signs(stranded, nodes, 0.008)
    assert ece["shell_fat_hu"] > clean["shell_fat_hu"] + 30 and ece["shell_soft_share"] > 0.05
    assert ece["shell_hu"] > clean["shell_hu"]
