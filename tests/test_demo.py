"""`ecefl demo` at a tiny setting: report files exist and summary.json repeats pooled_metrics.json exactly."""
from __future__ import annotations

import json

from ecefl.cli import main as ecefl_main


def test_tiny_demo_report_matches_pooled_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert ecefl_main(["demo", "--out", str(out), "--preset", "test-tiny", "--sites", "2", "--cases-per-site", "4",
                       "--unlabeled-per-site", "1", "--mae-rounds", "1", "--rounds", "1", "--no-progress"]) == 0
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
    mae_loss = json.loads((out / "fl" / "mae_pretrain" / "pooled_metrics.json").read_text())["rounds"][0]["train_loss"]
    assert f"MAE pretraining, 1 federated round(s): pooled masked-voxel L1 {mae_loss:.3f}" in html
    assert summary["evidence_cases"] and all(c["site"] in ("hospital-a", "hospital-b")
                                             for c in summary["evidence_cases"])
    for case in summary["evidence_cases"]:
        assert (report / f"evidence_{case['category']}.png").is_file()
    assert "report:" in printed and "pooled" in printed
