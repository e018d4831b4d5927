"""`ecefl calibrate`: a site sets its own operating threshold from its labelled cases; `infer` and `evaluate` use it."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import preprocessed_sites
from ecefl import metrics as M
from ecefl.checkpoint import load_checkpoint, save_checkpoint
from ecefl.cli import main as ecefl_main
from ecefl.data import load_datalist
from ecefl.engine import predict_cases
from ecefl.model import DualOutputSwinUNETR
from ecefl.plan import get_plan
from ecefl.stages import CALIBRATION_MIN_PER_CLASS


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("calib")
    datalist = preprocessed_sites(root, sites=1, cases_per_site=22, unlabeled_per_site=0, seed=5)["hospital-a"]
    plan = get_plan("test-tiny")
    model = DualOutputSwinUNETR(plan)
    # a random evidence head, so the untrained model's scores differ between cases
    model.cls_bias.data.fill_(0.3)
    save_checkpoint(root / "model.pt", "dual", plan, model.state_dict(), threshold=0.999)
    return {"root": root, "datalist": datalist, "model": root / "model.pt"}


def test_youden_threshold_stored_and_rates_recorded(site):
    out = site["root"] / "calibrated.pt"
    assert ecefl_main(["calibrate", "--model", str(site["model"]), "--datalist", str(site["datalist"]), "--out",
                       str(out), "--node-threshold", "--no-progress"]) == 0
    ckpt = load_checkpoint(out, kind="dual")
    record = ckpt["calibration"]
    labelled, _ = load_datalist(site["datalist"])
    pred = predict_cases(_model(ckpt), labelled, ckpt["plan"], progress=False)
    # the stored threshold is Youden's J on the site's own scores, bagged over resamples, and the recorded rates
    # are those at it
    def youden(t):
        return np.mean(pred["probs"][pred["labels"] == 1] >= t) - np.mean(pred["probs"][pred["labels"] == 0] >= t)
    assert ckpt["threshold"] == M.bagged_youden_threshold(pred["probs"], pred["labels"], seed=ckpt["plan"].seed)
    assert record["method"] == "youden-bagged"
    assert youden(ckpt["threshold"]) > youden(0.999)
    assert record["threshold_before"] == pytest.approx(0.999)
    assert record["n_pos"] + record["n_neg"] == 22 and min(record["n_pos"], record["n_neg"]) >= 10
    sens = np.mean(pred["probs"][pred["labels"] == 1] >= ckpt["threshold"])
    assert record["after"]["sensitivity"] == pytest.approx(sens)
    assert record["before"]["sensitivity"] == pytest.approx(np.mean(pred["probs"][pred["labels"] == 1] >= 0.999))
    # the node threshold: the candidate with the best mean Dice against the site's contours, with its Dice recorded
    mean_dice = pred["dices_at"].mean(0)
    assert ckpt["node_threshold"] == record["node_threshold"] == M.node_threshold_from(pred["dices_at"].sum(0))
    assert record["node_threshold_before"] == 0.5 and record["dice_before"] == pytest.approx(mean_dice[0])
    assert record["dice_after"] == pytest.approx(mean_dice.max())
    # nothing per case is stored with the model
    assert not any(cid in json.dumps(record) for cid in pred["case_ids"])


def test_sensitivity_target_keeps_the_node_threshold_without_the_flag(site):
    """--sensitivity: a threshold that reaches it on the site's cases; without --node-threshold the model file's own
    node threshold stays (one calibration run checks both: each run predicts all 22 necks)."""
    payload = load_checkpoint(site["model"], kind="dual")
    kept = site["root"] / "node07.pt"
    save_checkpoint(kept, "dual", payload["plan"], payload["model"], threshold=0.999, node_threshold=0.7)
    out = site["root"] / "sens.pt"
    assert ecefl_main(["calibrate", "--model", str(kept), "--datalist", str(site["datalist"]), "--out", str(out),
                       "--sensitivity", "0.9", "--no-progress"]) == 0
    ckpt = load_checkpoint(out, kind="dual")
    assert ckpt["node_threshold"] == 0.7 and "node_threshold" not in ckpt["calibration"]
    assert ckpt["threshold"] == ckpt["calibration"]["threshold"] != 0.999
    assert ckpt["calibration"]["after"]["sensitivity"] >= 0.9
    assert ckpt["calibration"]["method"] == "sensitivity>=0.9"


def test_too_few_cases_refused(site, preprocessed, capsys):
    out = site["root"] / "few.pt"
    assert ecefl_main(["calibrate", "--model", str(site["model"]), "--datalist",
                       str(preprocessed["hospital-a"] / "datalist.json"), "--out", str(out), "--no-progress"]) == 2
    assert f"at least {CALIBRATION_MIN_PER_CLASS} labelled cases of each class" in capsys.readouterr().err
    assert not out.exists()


def _model(ckpt):
    model = DualOutputSwinUNETR(ckpt["plan"])
    model.load_state_dict(ckpt["model"], strict=True)
    return model
