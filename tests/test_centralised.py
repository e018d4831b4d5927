"""Centralised CLI contract: pretrain -> train --init -> evaluate on preprocessed synthetic sites."""
from __future__ import annotations

import csv
import re
import json

import pytest
import torch

from ecefl.cli import main as ecefl_main

KEYS = ("dice", "auc", "accuracy", "sensitivity", "specificity", "f1", "threshold", "n_cases", "ci")


@pytest.fixture(scope="module")
def runs(preprocessed, tmp_path_factory):
    root = tmp_path_factory.mktemp("central")
    datalists = []
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        datalists += ["--datalist", str(preprocessed[site] / "datalist.json")]
    assert ecefl_main(["pretrain", *datalists, "--preset", "test-tiny", "--epochs", "1", "--out",
                       str(root / "mae"), "--no-progress"]) == 0
    assert ecefl_main(["train", *datalists, "--preset", "test-tiny", "--epochs", "1", "--init",
                       str(root / "mae" / "checkpoint.pt"), "--val-fraction", "0.34", "--out", str(root / "ft"),
                       "--no-progress", "--set", "readout_refit_iterations=4"]) == 0
    assert ecefl_main(["evaluate", "--model", str(root / "ft" / "model.pt"), *datalists, "--out",
                       str(root / "eval"), "--no-progress"]) == 0
    return root


def test_pretrain_outputs(runs):
    metrics = json.loads((runs / "mae" / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1]
    assert 0 < metrics["epochs"][0]["loss"] < 1
    ckpt = torch.load(runs / "mae" / "checkpoint.pt", weights_only=True)
    assert ckpt["kind"] == "mae" and ckpt["plan"]["feature_size"] == 12


def test_a_pretraining_budget_stops_after_the_epoch_that_passes_it(preprocessed, tmp_path):
    """The time budget (benchmarks/mae.py sizes its GPU pretraining by it) ends the run after the first epoch
    past it, and the checkpoint and history are those of the epochs run; without it every epoch runs."""
    from ecefl.stages import pretrain
    lists = [preprocessed["hospital-a"] / "datalist.json"]
    kwargs = dict(progress=False, iterations_per_epoch=1)
    short = pretrain(lists, "test-tiny", 3, tmp_path / "short", budget_seconds=0.0, **kwargs)
    assert [e["epoch"] for e in short["epochs"]] == [1]
    assert torch.load(tmp_path / "short" / "checkpoint.pt", weights_only=True)["kind"] == "mae"
    full = pretrain(lists, "test-tiny", 2, tmp_path / "full", budget_seconds=1e6, **kwargs)
    assert [e["epoch"] for e in full["epochs"]] == [1, 2]
    # the same seed and data: the first epoch is the same whichever way the run ends
    assert full["epochs"][0]["loss"] == pytest.approx(short["epochs"][0]["loss"], rel=1e-5)


def test_a_stopped_pretraining_resumes_exactly_and_refuses_another_plan(preprocessed, tmp_path, capsys):
    """`ecefl pretrain --resume` after a run stopped at epoch 1 of 3 gives the uninterrupted run's losses and
    weights: every epoch saved its weights and AdamW's moments, and draws from its own (seed, epoch) stream. A
    resume with another plan is refused, naming the field, and leaves the folder as it was."""
    from ecefl.stages import PRETRAIN_STATE, pretrain
    lists = [preprocessed["hospital-a"] / "datalist.json"]
    kwargs = dict(progress=False, iterations_per_epoch=2)
    full = pretrain(lists, "test-tiny", 3, tmp_path / "full", **kwargs)
    pretrain(lists, "test-tiny", 3, tmp_path / "stopped", budget_seconds=0.0, **kwargs)  # stops after epoch 1
    state = torch.load(tmp_path / "stopped" / PRETRAIN_STATE, weights_only=True)
    assert state["epochs"] == 1 and state["optimizer"]["state"]  # AdamW's moments, kept beside the checkpoint
    assert "optimizer" not in torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)
    before = (tmp_path / "stopped" / "checkpoint.pt").read_bytes()
    args = ["pretrain", "--datalist", str(lists[0]), "--preset", "test-tiny", "--epochs", "3", "--out",
            str(tmp_path / "stopped"), "--no-progress", "--resume", "--set", "iterations_per_epoch=2"]
    assert ecefl_main([*args, "--set", "mae_mask_ratio=0.4"]) == 2
    err = capsys.readouterr().err
    assert "another plan" in err and "mae_mask_ratio: 0.6 there, 0.4 now" in err
    assert (tmp_path / "stopped" / "checkpoint.pt").read_bytes() == before
    assert ecefl_main(args) == 0
    resumed = json.loads((tmp_path / "stopped" / "metrics.json").read_text())
    assert [e["epoch"] for e in resumed["epochs"]] == [1, 2, 3]
    assert [e["loss"] for e in resumed["epochs"]] == pytest.approx([e["loss"] for e in full["epochs"]], rel=1e-6)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    # the later epochs differ from the first: each epoch has its own stream, not epoch 1's replayed
    assert len({round(e["loss"], 8) for e in resumed["epochs"]}) == 3


def test_train_outputs_in_range(runs):
    metrics = json.loads((runs / "ft" / "metrics.json").read_text())
    val = metrics["val"]
    assert set(KEYS) <= set(val)
    assert 0 <= val["dice"] <= 1 and 0 <= val["auc"] <= 1 and 0 <= val["threshold"] <= 1
    assert val["n_cases"] == metrics["split"]["val"] >= 3
    ckpt = torch.load(runs / "ft" / "model.pt", weights_only=True)
    assert ckpt["threshold"] == pytest.approx(metrics["threshold"])
    assert metrics["init"].endswith("checkpoint.pt")
    # the output mask's node threshold: the candidate with the best mean validation Dice, stored with the model
    by_threshold = val["dice_at_node_threshold"]
    assert by_threshold["0.5"] == pytest.approx(val["dice"])
    assert by_threshold[f"{ckpt['node_threshold']:g}"] == pytest.approx(max(by_threshold.values()))
    assert ckpt["node_threshold"] == val["node_threshold"]


def test_train_refits_the_readout_on_its_training_cases(runs):
    """ecefl.readout after the last epoch: Newton iterations lower the class-weighted training loss, and the
    saved model carries the refitted read-out (the validation metrics are those of the refitted model)."""
    import numpy as np
    from ecefl.checkpoint import load_model
    refit = json.loads((runs / "ft" / "metrics.json").read_text())["readout_refit"]
    assert refit["iterations"] == 4 and len(refit["loss"]) == 4
    assert refit["loss"][-1] < refit["loss"][0] and all(np.isfinite(refit["loss"]))
    model, _ = load_model(runs / "ft" / "model.pt")
    np.testing.assert_allclose(model.readout_parameters().double().numpy(), refit["theta"], atol=1e-6)
    assert np.abs(np.array(refit["theta"]) - np.array(refit["theta_joint"])).max() > 1e-3


def test_evaluate_outputs(runs, preprocessed):
    metrics = json.loads((runs / "eval" / "metrics.json").read_text())
    assert set(KEYS) <= set(metrics) and metrics["n_cases"] == 9
    assert len(metrics["per_site"]) == 3  # one entry per datalist (named by its folder)
    # evaluate masks at the model file's node threshold and says which
    assert metrics["node_threshold"] == torch.load(runs / "ft" / "model.pt", weights_only=True)["node_threshold"]
    rows = list(csv.DictReader(open(runs / "eval" / "predictions.csv")))
    assert len(rows) == 9 and all(0 <= float(r["probability"]) <= 1 for r in rows)
    assert all(r["case_id"].startswith("case-") for r in rows)
    # each case's reference volume is its label's on the CT grid; the found nodes' volume bounds its Dice
    import nibabel as nib
    import numpy as np
    labels = {}
    for site in ("hospital-a", "hospital-b", "hospital-c"):
        root = preprocessed[site]
        labels.update({it["case_id"]: root / it["label"]
                       for it in json.loads((root / "datalist.json").read_text())["training"]})
    for r in rows:
        label = nib.load(labels[r["case_id"]])
        ml = float((np.asarray(label.dataobj) > 0.5).sum() * np.prod(label.header.get_zooms()[:3]) / 1000)
        assert float(r["reference_ml"]) == pytest.approx(ml, abs=2e-3) and ml > 0.1
        found, ref = float(r["predicted_ml"]), float(r["reference_ml"])
        assert found >= 0 and float(r["dice"]) <= 2 * min(found, ref) / (found + ref) + 1e-3


def test_init_message_counts_every_encoder_tensor(preprocessed, tmp_path, capsys, runs):
    ecefl_main(["train", "--datalist", str(preprocessed["hospital-a"] / "datalist.json"), "--preset", "test-tiny",
                "--epochs", "1", "--init", str(runs / "mae" / "checkpoint.pt"), "--val-fraction", "0",
                "--out", str(tmp_path / "r"), "--no-progress"])
    err = capsys.readouterr().err  # progress is logged (timestamped) on stderr
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d INFO +ecefl\.\w+: initialized 70/70 encoder tensors from", err, re.M)


def test_clear_errors(tmp_path, capsys, runs):
    assert ecefl_main(["train", "--datalist", str(tmp_path / "none.json"), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty.json").write_text('{"training": [], "unlabeled": []}')
    assert ecefl_main(["pretrain", "--datalist", str(tmp_path / "empty.json"), "--out", str(tmp_path / "x")]) == 2
    assert "is empty" in capsys.readouterr().err
    (tmp_path / "missing.json").write_text(json.dumps({"training": [
        {"image": "images/a.nii.gz", "label": "labels/a.nii.gz", "nodes": "nodes/a.nii.gz", "ece": 1,
         "case_id": "a"}]}))
    assert ecefl_main(["train", "--datalist", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]) == 2
    assert "missing file" in capsys.readouterr().err
    old = torch.load(runs / "ft" / "model.pt", weights_only=True)
    old["version"] = 0
    torch.save(old, tmp_path / "old.pt")
    assert ecefl_main(["evaluate", "--model", str(tmp_path / "old.pt"), "--datalist",
                       str(tmp_path / "missing.json"), "--out", str(tmp_path / "e")]) == 2
    assert "another ecefl version" in capsys.readouterr().err
