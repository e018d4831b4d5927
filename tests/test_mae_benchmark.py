"""The MAE benchmark (benchmarks/mae.py): paired differences against scikit-learn and numpy, the convergence step
count, the flattening criterion of the pretraining loss, and the refit arms."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import mae  # noqa: E402


def _arm(probs, labels, dices):
    return {"cases": {"case_id": [f"case-{i}" for i in range(len(labels))], "probability": list(map(float, probs)),
                      "ece": list(map(int, labels)), "dice": list(map(float, dices))}}


def test_paired_differences_are_the_auc_and_mean_dice_differences_with_intervals_around_them():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1], 60)
    better = labels * 0.4 + rng.uniform(0, 0.6, 120)
    worse = labels * 0.1 + rng.uniform(0, 0.6, 120)
    d_good, d_bad = rng.uniform(0.6, 0.8, 120), rng.uniform(0.5, 0.7, 120)
    diff = mae.paired_differences(_arm(better, labels, d_good), _arm(worse, labels, d_bad))
    expected_auc = roc_auc_score(labels, better) - roc_auc_score(labels, worse)
    assert diff["auc"] == pytest.approx(expected_auc, abs=1e-12)
    assert diff["dice"] == pytest.approx((d_good - d_bad).mean(), abs=1e-12)
    assert diff["auc_ci"][0] < diff["auc"] < diff["auc_ci"][1] and diff["auc_ci"][0] > 0
    assert diff["dice_ci"][0] < diff["dice"] < diff["dice_ci"][1] and diff["dice_ci"][0] > 0.05
    assert diff["n_cases"] == 120
    same = mae.paired_differences(_arm(better, labels, d_good), _arm(better, labels, d_good))
    assert same["auc"] == 0 and same["auc_ci"] == [0.0, 0.0] and same["dice_ci"] == [0.0, 0.0]
    with pytest.raises(AssertionError, match="different patients"):
        other = _arm(worse, labels, d_bad)
        other["cases"]["case_id"][0] = "case-x"
        mae.paired_differences(_arm(better, labels, d_good), other)


def test_the_pooled_difference_averages_the_seeds_over_one_resample_of_the_patients():
    rng = np.random.default_rng(4)
    labels = np.repeat([0, 1], 50)
    arms = [_arm(labels * w + rng.uniform(0, 0.6, 100), labels, rng.uniform(lo, lo + 0.2, 100))
            for w, lo in ((0.4, 0.6), (0.1, 0.5), (0.3, 0.6), (0.0, 0.4))]
    pooled = mae.pooled_differences([(arms[0], arms[1]), (arms[2], arms[3])])
    auc = [roc_auc_score(labels, a["cases"]["probability"]) for a in arms]
    dice = [np.mean(a["cases"]["dice"]) for a in arms]
    assert pooled["auc"] == pytest.approx(((auc[0] - auc[1]) + (auc[2] - auc[3])) / 2, abs=1e-12)
    assert pooled["dice"] == pytest.approx(((dice[0] - dice[1]) + (dice[2] - dice[3])) / 2, abs=1e-12)
    assert pooled["auc_ci"][0] < pooled["auc"] < pooled["auc_ci"][1] and pooled["n_pairs"] == 2
    # the same pair twice is that pair: one resample of the patients serves every seed's pair
    twice = mae.pooled_differences([(arms[0], arms[1])] * 2)
    once = mae.paired_differences(arms[0], arms[1])
    assert twice["auc_ci"] == pytest.approx(once["auc_ci"], abs=1e-12)
    assert twice["dice_ci"] == pytest.approx(once["dice_ci"], abs=1e-12)


def test_against_pairs_the_pretrained_arms_of_two_runs_and_leaves_the_shared_scratch_arm_out():
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 40)
    arm = (lambda w, lo: {**_arm(labels * w + rng.uniform(0, 0.6, 80), labels, rng.uniform(lo, lo + 0.2, 80)),
                          "auc": 0.0, "dice": 0.0})
    scratch = arm(0.1, 0.4)
    runs = []
    for steps, w, lo in ((39, 0.4, 0.6), (16, 0.2, 0.5)):
        arms = {"0/scratch_25": scratch, "0/maeunet_25": arm(w, lo), "1/scratch_25": scratch,
                "1/maeunet_25": arm(w, lo)}
        runs.append({"config": {"seeds": [0, 1], "fractions": [25]}, "arms": arms, "command": f"run {steps}",
                     "maeunet": {"losses": [0.1] * (steps - 1) + [0.01 * steps], "steps_per_epoch": 60,
                                 "n_images": 240, "seconds": 60.0}})
    block = mae.against(*runs)
    assert list(block["per_start"]) == ["maeunet_25"] and block["other"] == "run 16"
    r = block["per_start"]["maeunet_25"]
    expected = mae.pooled_differences([(runs[0]["arms"][f"{s}/maeunet_25"], runs[1]["arms"][f"{s}/maeunet_25"])
                                       for s in (0, 1)])
    assert r["pooled"] == expected and r["seeds"] == 2 and r["pooled"]["auc"] > 0.1
    assert r["pretraining_steps"] == [39 * 60, 16 * 60] and r["pretraining_final_loss"] == [0.39, 0.16]
    md = mae.markdown(
        {**runs[0], "against": block, "date": "d", "machine": "m", "wall_seconds": 600, "call_seconds": 60,
         "unseen_cases": 80, "config": {**runs[0]["config"], "preset": "p", "epochs": 1}},
        {**{name: {} for name in mae.COMPARISONS}, "unet_pretraining": mae.flattening(runs[0]["maeunet"]["losses"])})
    assert "| maeunet_25 | 2 | 2340 / 960 |" in md
    assert "wall 10.0 min over this folder (1.0 min this call)." in md.splitlines()[0]
    # arms scored on other patients cannot be paired
    runs[1]["arms"]["0/maeunet_25"] = {**runs[1]["arms"]["0/maeunet_25"],
                                       "cases": {**scratch["cases"], "case_id": list(range(80))[::-1]}}
    with pytest.raises(SystemExit, match="other patients"):
        mae.against(*runs)


def test_steps_to_reach_counts_whole_epochs_until_the_loss_first_gets_there():
    losses = [1.0, 0.8, 0.85, 0.6]
    assert mae.steps_to_reach(losses, 0.8, 15) == 30
    assert mae.steps_to_reach(losses, 0.6, 15) == 60
    assert mae.steps_to_reach(losses, 0.5, 15) is None


def test_flattening_tells_a_plateau_from_a_loss_still_falling():
    epochs = np.arange(100)
    plateau = mae.flattening(list(0.2 + 0.3 * np.exp(-epochs / 8)))
    falling = mae.flattening(list(0.5 - 0.003 * epochs))
    assert plateau["flattened"] and plateau["last_quarter_drop"] < 0.01
    assert not falling["flattened"] and falling["last_quarter_drop"] == pytest.approx(0.072 / 0.281, abs=0.002)
    assert plateau["first"] == pytest.approx(0.5) and plateau["last"] == pytest.approx(0.2, abs=0.002)
    assert mae.flattening([0.5, 0.4, 0.39])["flattened"] is None  # too short to tell


def test_the_federated_pretraining_takes_the_centralised_step_count_in_few_rounds():
    # 36 epochs over 3 sites: 12 rounds of a whole epoch per site = 2,160 steps, the centralised count
    assert mae.federated_schedule(36, 60, 3) == (12, 60)
    # 100 epochs: 33 whole-epoch rounds miss 6,000 by 1 %, within 5 %: the fewest messages win
    assert mae.federated_schedule(100, 60, 3) == (33, 60)
    # 7 epochs: 2 rounds would take 360 of 420 steps; one round per epoch with a third of its steps takes 420
    rounds, steps = mae.federated_schedule(7, 60, 3)
    assert (rounds, steps) == (7, 20) and rounds * steps * 3 == 7 * 60
    assert mae.federated_schedule(2, 2, 3) == (1, 2)  # tiny: fewer steps than sites, one round


def test_a_refit_arm_waits_for_its_arm_and_equals_training_with_the_refit_on(preprocessed, tmp_path):
    """`--inits scratch scratchrefit`: the refit arm runs after the arm it refits, and its model is the one that
    fine-tuning with the read-out refit on gives (the refit follows the training and does not change it); both are
    scored on the same unseen patients."""
    from ecefl.checkpoint import load_model
    from ecefl.plan import get_plan
    from ecefl.readout import BASELINE_KEY, READOUT_KEYS
    from ecefl.stages import train
    lists = [preprocessed[s] / "datalist.json" for s in ("hospital-a", "hospital-b", "hospital-c")]
    test = preprocessed["hospital-d"] / "datalist.json"
    cfg = dict(mae.MODES["tiny"], mode="tiny", fractions=[100])
    logged = []
    # listed refit first: the order of --inits must not matter
    results = mae.run_all(cfg, lists, test, tmp_path / "bench", 1, None, inits=("scratchrefit", "scratch"),
                          log=logged.append)
    assert not results["failed"] and sorted(results["arms"]) == ["0/scratch_100", "0/scratchrefit_100"]
    assert [m.split(":")[0] for m in logged] == ["0/scratch_100", "0/scratchrefit_100"]
    arm, refit = results["arms"]["0/scratch_100"], results["arms"]["0/scratchrefit_100"]
    assert refit["cases"]["case_id"] == arm["cases"]["case_id"] and refit["n_train"] == arm["n_train"] == 9
    assert refit["seg_loss"] == arm["seg_loss"] and refit["refit_loss"][1] < refit["refit_loss"][0]
    # one fine-tuning on both sides: its steps are listed, a speed-up is not claimed
    row = mae.compare(results, cfg, "scratchrefit", "scratch")["100"]["per_seed"][0]
    assert row["speedup"] is None
    assert row["steps_to_baseline_final_seg_loss"][1] == len(arm["seg_loss"]) * arm["steps_per_epoch"]

    iterations = get_plan("cpu-small").readout_refit_iterations
    train([str(p) for p in lists], "test-tiny", cfg["epochs"], tmp_path / "direct", label_fraction=1.0,
          val_fraction=0.0, seed=0, progress=False,
          **{**mae.COMMON, **cfg["overrides"], "readout_refit_iterations": iterations})
    direct, _ = load_model(tmp_path / "direct" / "model.pt")
    refitted, payload = load_model(tmp_path / "bench" / "seed0" / "scratchrefit_100" / "model.pt")
    plain, _ = load_model(tmp_path / "bench" / "seed0" / "scratch_100" / "model.pt")
    assert payload["plan"].readout_refit_iterations == iterations > 0
    theta = refitted.readout_parameters()
    # two trainings of one plan and seed, in other thread layouts: equal up to float kernels (AVX-512, one thread:
    # 5e-4 relative), while the refit moves theta by ~0.1
    assert torch.allclose(theta, direct.readout_parameters(), rtol=2e-3, atol=1e-5)
    assert not torch.allclose(theta, plain.readout_parameters())
    body = [k for k in plain.state_dict() if k not in READOUT_KEYS + (BASELINE_KEY,)]
    assert all(torch.equal(refitted.state_dict()[k], plain.state_dict()[k]) for k in body)
    # the refit also keeps the average training case the evidence is shown against
    assert refitted.readout_baseline[-1] == 1.0 and not plain.readout_baseline.any()


def test_a_pretraining_short_of_its_epochs_runs_on_only_when_asked_and_not_under_finished_arms(preprocessed, tmp_path):
    """--resume-pretraining: a pretraining its budget stopped at epoch 1 of 3 runs on to 3 and equals the
    uninterrupted pretraining; without the flag it is read back as it is; once an arm was fine-tuned from it (here a
    refit arm of that start) running it on is refused, naming the arm, and nothing changes."""
    from ecefl.stages import pretrain
    lists = [preprocessed[s] / "datalist.json" for s in ("hospital-a", "hospital-b", "hospital-c")]
    test = preprocessed["hospital-d"] / "datalist.json"
    cfg = dict(mae.MODES["tiny"], mode="tiny", fractions=[], mae_epochs=3, pretrain_seconds=0.0)
    out = tmp_path / "bench"
    short = mae.run_all(cfg, lists, test, out, 1, None, inits=("mae",), log=lambda *_: None)["mae"]
    assert len(short["losses"]) == 1 and short["resumed_after"] == []
    cfg["pretrain_seconds"] = None
    assert mae.run_all(cfg, lists, test, out, 1, None, inits=("mae",), log=lambda *_: None)["mae"] == short
    logged = []
    full = mae.run_all(cfg, lists, test, out, 1, None, inits=("mae",), log=logged.append, resume_pretraining=True)
    assert "mae pretraining: resuming after epoch 1" in logged
    assert full["mae"]["resumed_after"] == [1] and full["mae"]["losses"][0] == short["losses"][0]
    direct = pretrain([str(p) for p in lists], "test-tiny", 3, tmp_path / "direct", seed=0, progress=False,
                      **{**mae.COMMON, **cfg["overrides"], "iterations_per_epoch": cfg["mae_iterations"]})
    assert full["mae"]["losses"] == pytest.approx([e["loss"] for e in direct["epochs"]], rel=1e-5)

    (out / "seed0" / "maerefit_50").mkdir(parents=True)
    (out / "seed0" / "maerefit_50" / "result.json").write_text("{}")
    cfg["mae_epochs"] = 4
    before = (out / "mae" / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match="seed0/maerefit_50 were fine-tuned from it"):
        mae.run_all(cfg, lists, test, out, 1, None, inits=("maerefit",), log=lambda *_: None, resume_pretraining=True)
    assert (out / "mae" / "checkpoint.pt").read_bytes() == before


def test_the_mean_speed_up_counts_the_seeds_that_never_reached_the_baselines_loss():
    rng = np.random.default_rng(6)
    labels = np.repeat([0, 1], 30)

    def arm(seg_loss):
        return {**_arm(labels * 0.3 + rng.uniform(0, 0.6, 60), labels, rng.uniform(0.5, 0.7, 60)), "auc": 0.8,
                "dice": 0.6, "n_train": 12, "seg_loss": seg_loss, "steps_per_epoch": 18}

    arms = {"0/scratch_10": arm([0.9, 0.7, 0.5, 0.4]), "0/maeunet_10": arm([0.6, 0.4, 0.3, 0.3]),
            "1/scratch_10": arm([0.9, 0.7, 0.5, 0.4]), "1/maeunet_10": arm([0.8, 0.6, 0.5, 0.45])}
    results = {"arms": arms, "config": {"seeds": [0, 1], "fractions": [10], "preset": "p", "epochs": 4},
               "command": "c", "date": "d", "machine": "m", "wall_seconds": 60, "unseen_cases": 60}
    block = mae.compare(results, results["config"], "maeunet", "scratch")["10"]
    assert [r["steps_to_baseline_final_seg_loss"][0] for r in block["per_seed"]] == [36, None]
    assert block["mean_speedup"] == 72 / 36 and block["speedup_seeds"] == 1
    md = mae.markdown(results, mae.summarise(results, results["config"]))
    assert "| 2.00× (1 of 2 seeds did not reach it) |" in md
