"""The federated-vs-centralised benchmark's verdicts (benchmarks/fedcentral.py): ratios, paired differences and
the best single hospital, computed from site-local predictions.csv files as `ecefl evaluate` writes them."""
from __future__ import annotations

import csv
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import fedcentral  # noqa: E402


def _arm(tmp_path, name, probs, labels, dices, epochs=13):
    path = tmp_path / f"{name}.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "probability", "ece", "dice"])
        for i, (p, y, d) in enumerate(zip(probs, labels, dices)):
            w.writerow([f"case-{i}", f"{p:.6f}", int(y), f"{d:.6f}"])
    return {"auc": roc_auc_score(labels, probs), "dice": float(np.mean(dices)), "ci": None, "predictions": str(path),
            "train_seconds": None if name == fedcentral.FEDERATED else 800.0,
            "epochs": None if name == fedcentral.FEDERATED else epochs}


def test_verdicts_follow_the_ratios_and_the_best_single_hospital(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 50)
    noise = rng.uniform(0, 1, (4, 100))
    arms = {
        "federated": _arm(tmp_path, "federated", labels * 0.50 + noise[0], labels, np.full(100, 0.66)),
        "central": _arm(tmp_path, "central", labels * 0.55 + noise[1], labels, np.full(100, 0.68)),
        "single-a": _arm(tmp_path, "single-a", labels * 0.20 + noise[2], labels, np.full(100, 0.70)),
        "single-b": _arm(tmp_path, "single-b", labels * 0.30 + noise[3], labels, np.full(100, 0.50)),
    }
    s = fedcentral.summarise(arms, 860.0)
    c = s["against"]["central"]
    assert c["auc_ratio"] == pytest.approx(arms["federated"]["auc"] / arms["central"]["auc"])
    assert c["dice_ratio"] == pytest.approx(0.66 / 0.68)
    assert c["delta_auc"] == pytest.approx(arms["federated"]["auc"] - arms["central"]["auc"], abs=1e-6)
    assert c["delta_dice_ci"] == pytest.approx([-0.02, -0.02])  # constant per-case Dice: no spread
    assert s["target_met"] == (c["auc_ratio"] >= 0.95 and c["dice_ratio"] >= 0.95)
    # single-a has the best Dice (0.70 > federated 0.66), so the federated model is not at least as good
    assert s["best_single"]["by_dice"] == "single-a"
    assert s["best_single"]["by_auc"] == max(("single-a", "single-b"), key=lambda a: arms[a]["auc"])
    assert s["best_single"]["federated_at_least_as_good"] is False
    table = fedcentral.markdown(arms, s)
    assert "| central | 13 | 800.0 |" in table and "| federated | demo | 860.0 |" in table
    assert "federated >= the best single hospital" in table and "**no**" in table.splitlines()[-1]


def test_a_folder_that_is_not_a_finished_demo_is_refused_by_name(tmp_path):
    with pytest.raises(SystemExit, match="not a finished `ecefl demo` folder: missing .*best_global_model.pt"):
        fedcentral.demo_inputs(tmp_path)
