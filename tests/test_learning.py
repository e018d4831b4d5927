"""The learning settings of the engine: step schedule, fixed iterations per epoch, off-centre node crops, and
pooling for a case without a confident node (real MONAI transforms on preprocessed synthetic DICOM)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from ecefl.data import cached_loader, load_datalist, train_transforms
from ecefl.engine import lr_factor
from ecefl.model import DualOutputSwinUNETR
from ecefl.plan import get_plan


def test_warmup_then_cosine_to_zero_and_constant():
    plan = get_plan("test-tiny", lr_schedule="cosine", warmup_fraction=0.1)
    f = [lr_factor(plan, s, 100) for s in range(100)]
    assert f[0] < f[5] < f[9] <= 1.0  # linear warm-up over the first 10 steps
    assert f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # then only decays
    assert f[55] == pytest.approx(0.5, abs=0.02) and f[-1] < 0.001
    const = get_plan("test-tiny")
    assert {lr_factor(const, s, 100) for s in range(100)} == {1.0}


def test_fixed_iterations_per_epoch(preprocessed):
    items, _ = load_datalist(preprocessed["hospital-a"] / "datalist.json")
    plan = get_plan("test-tiny", iterations_per_epoch=5, batch_size=2)
    loader = cached_loader(items, train_transforms(plan), plan.batch_size, shuffle=True, seed=0, iterations=5)
    batches = list(loader)
    assert len(items) < 10 and len(batches) == 5  # more steps than one pass over the 3 cases
    assert all(b["image"].shape == (2, 1, *plan.patch_size) for b in batches)


def test_encoder_learning_rate_multiplier_slows_only_the_pretrained_encoder(preprocessed):
    """plan.encoder_lr_multiplier: the Swin encoder (the part MAE pretrains, model.ENCODER_PREFIX) in its own
    parameter group at that multiple of the body's rate through the whole schedule; the decoder keeps the body's
    rate and the evidence head its own; every trainable parameter is in exactly one group."""
    from ecefl.engine import FineTuner
    from ecefl.model import ENCODER_PREFIX
    items, _ = load_datalist(preprocessed["hospital-a"] / "datalist.json")
    plan = get_plan("test-tiny", encoder_lr_multiplier=0.25, head_lr_multiplier=2.0, lr_schedule="cosine")
    model = DualOutputSwinUNETR(plan)
    tuner = FineTuner(plan, model, items, progress=False)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = tuner.optimizer.param_groups
    grouped = [id(p) for g in groups for p in g["params"]]
    assert sorted(grouped) == sorted(names) and len(grouped) == len(set(grouped))
    encoder = [g for g in groups if g["params"] and all(names[id(p)].startswith(ENCODER_PREFIX) for p in g["params"])]
    n_encoder = sum(1 for n in names.values() if n.startswith(ENCODER_PREFIX))
    assert len(encoder) == 1 and len(encoder[0]["params"]) == n_encoder > 0
    for step in (0, 7, 15):
        tuner.schedule.set(step, 20)
        body, head, enc = groups[0]["lr"], groups[1]["lr"], encoder[0]["lr"]
        if body > 0:
            assert enc == pytest.approx(0.25 * body) and head == pytest.approx(2.0 * body)
    assert not any(names[id(p)].startswith(ENCODER_PREFIX) for p in groups[0]["params"])


def _distance_to_node(items, plan, n: int) -> np.ndarray:
    """For each crop that holds nodal voxels: the distance (voxels) from the crop centre to the nearest one."""
    loader = cached_loader(items, train_transforms(plan), 1, shuffle=True, seed=3, iterations=n)
    centre = (np.array(plan.patch_size) - 1) / 2
    distances = []
    for batch in loader:
        label = batch["label"][0, 0].numpy() > 0
        if label.any():
            distances.append(np.linalg.norm(np.argwhere(label) - centre, axis=1).min())
    return np.array(distances)


def test_jittered_crops_move_the_node_off_centre(tmp_path):
    """A wide volume (no crop pushed back at a border) with one small node in its middle."""
    import nibabel as nib
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = np.full((140, 140, 120), -50.0, np.float32)
    label = np.zeros(image.shape, np.uint8)
    label[66:74, 66:74, 56:64] = 1
    image[label > 0] = 40.0
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), tmp_path / "nodes.nii.gz")
    items = [{"image": str(tmp_path / "ct.nii.gz"), "label": str(tmp_path / "nodes.nii.gz"), "ece": 0}]
    plan = get_plan("cpu-small", augmentation="ct", neg_crop_fraction=0.0)  # every crop a node crop
    centred = _distance_to_node(items, plan.with_overrides(crop_jitter=0), 16)
    jittered = _distance_to_node(items, plan.with_overrides(crop_jitter=16), 16)
    # node-centred crops: the crop centre lies on the node (up to the rotation of the random affine)
    assert len(centred) == 16 and np.median(centred) < 1.0
    # jittered: the node is in every crop, but anywhere within +-16 voxels per axis of the centre
    assert len(jittered) == 16
    assert np.median(jittered) > 4 and jittered.max() > 8


def test_ct_sharpen_steepens_edges_as_a_sharper_kernel_and_keeps_flat_hu():
    """plan.ct_sharpen: an unsharp mask on that share of the crops (only with the "ct" augmentation). A soft edge
    between fat (-100 HU) and node (40 HU), blurred like a soft kernel: the sharpened edge is steeper and overshoots
    a little, and noise rises, as a sharper kernel renders them; flat tissue far from the edge keeps its HU (the
    read-out reads absolute HU)."""
    from monai.transforms import RandGaussianSharpend
    from scipy import ndimage

    from ecefl.data import _intensity_augmentation
    assert get_plan("cpu-small").ct_sharpen == get_plan("gpu").ct_sharpen == 0.25  # the presets' share
    assert not any(isinstance(t, RandGaussianSharpend)
                   for t in _intensity_augmentation(get_plan("cpu-small", ct_sharpen=0.0)))
    with pytest.raises(ValueError, match="ct_sharpen"):
        get_plan("cpu-small", augmentation="intensity", ct_sharpen=0.5)
    plan = get_plan("cpu-small", ct_sharpen=1.0)
    sharpen = [t for t in _intensity_augmentation(plan) if isinstance(t, RandGaussianSharpend)]
    assert len(sharpen) == 1
    window = plan.hu_window
    width = window[1] - window[0]  # HU per window unit
    hu = np.full((32, 32, 32), -100.0, np.float32)
    hu[:, :, 16:] = 40.0
    soft = ndimage.gaussian_filter(hu, 1.0)
    x = torch.as_tensor((soft - window[0]) / width)[None]
    steps, overshoot = [], []
    for seed in range(8):
        sharpen[0].set_random_state(seed)
        y = sharpen[0]({"image": x.clone()})["image"][0].numpy() * width + window[0]
        profile = y[16, 16]
        steps.append(np.abs(np.diff(profile)).max() / np.abs(np.diff(soft[16, 16])).max())
        overshoot.append(profile[16:22].max() - 40.0)
        np.testing.assert_allclose(y[8:24, 8:24, 4:8], -100.0, atol=0.5)  # flat fat: unchanged
        np.testing.assert_allclose(y[8:24, 8:24, 24:28], 40.0, atol=0.5)  # flat node: unchanged
    # an edge already soft is steepened a little (up to about a fifth); white noise is raised more, as a sharper
    # kernel raises it
    assert 1.03 < min(steps) and max(steps) < 1.5
    assert min(overshoot) >= 0.0 and 0.5 < max(overshoot) < 10.0
    noise = torch.as_tensor(np.random.default_rng(0).normal(0.0, 15.0, (1, 32, 32, 32)).astype(np.float32))
    for seed in range(3):
        sharpen[0].set_random_state(seed)
        sd = float(sharpen[0]({"image": noise / width})["image"][0, 8:24, 8:24, 8:24].std() * width)
        assert 1.2 * 15.0 < sd < 2.2 * 15.0


def test_case_without_confident_node_is_pooled_over_the_soft_region():
    plan = get_plan("test-tiny")
    torch.manual_seed(0)
    model = DualOutputSwinUNETR(plan).eval()
    with torch.no_grad():
        model.net.out.conv.conv.bias.copy_(torch.tensor([0.0, -6.0]))  # a network that finds no node
    x = torch.rand(1, 1, *plan.patch_size)
    with torch.no_grad():
        out = model.voxel_outputs(x)
        logit = model.pool(out)
    assert out[:, 2].sum() == 0 and out[:, 4].sum() > 1  # nowhere confident, but a soft region exists
    soft = out[:, 5].sum() / (out[:, 4].sum() + 1e-3)
    assert soft.abs() > 0 and logit.item() == pytest.approx((soft + model.cls_bias).item(), rel=1e-5)
    # a confident region takes over: the logit is then the evidence averaged over it alone
    gated = out.clone()
    gated[:, 2] = 0
    gated[:, 2, 10:20, 10:20, 10:20] = 1.0
    gated[:, 3] = gated[:, 2] * 0.7
    assert model.pool(gated).item() == pytest.approx(0.7 + model.cls_bias.item(), abs=1e-3)


def test_rounds_validated_and_best_model_chosen_by_auc_and_dice_late_in_training():
    """Sites validate every validate_every rounds; the best model is the highest mean of pooled AUC and Dice
    among models trained for at least half of the rounds, so the untrained round-0 model cannot win on AUC."""
    from ecefl.fl.server import PooledFedAvg
    ctl = PooledFedAvg(num_clients=2, num_rounds=6, plan={"validate_every": 2})
    assert [ctl._validates(r) for r in range(6)] == [False, False, True, False, True, False]
    assert all(PooledFedAvg(num_clients=2, num_rounds=6, plan={})._validates(r) for r in range(6))
    final_only = PooledFedAvg(num_clients=2, num_rounds=6, plan={"validate_every": 0})
    assert not any(final_only._validates(r) for r in range(6))
    written = []
    ctl._write_checkpoint = lambda name, params: written.append((name, params))
    for round_id, auc, dice in ((0, 0.95, 0.0), (2, 0.70, 0.30), (3, 0.80, 0.60), (4, 0.85, 0.70),
                                ("final", 0.83, 0.70)):
        ctl._maybe_best({"round": round_id, "pooled": {"auc": auc, "dice": dice}}, type("M", (), {"params": round_id}))
    assert ctl.best["round"] == 4 and [p for _, p in written] == [3, 4]


def test_server_step_is_fedavg_by_default_and_sgd_with_momentum_on_the_averaged_update():
    """plan server_lr / server_momentum (FedOpt's server SGD): global += lr * m, m = momentum * m + (avg - global);
    integer buffers pass through as averaged."""
    import numpy as np
    from ecefl.fl.server import PooledFedAvg
    ctl = PooledFedAvg(num_clients=2, num_rounds=3, plan={"server_lr": 2.0, "server_momentum": 0.5})
    w0 = {"w": np.array([1.0, -1.0], np.float32), "index": np.array([3, 4])}
    avg1 = {"w": np.array([1.5, -2.0], np.float32), "index": np.array([3, 4])}
    w1 = ctl.server_step(w0, avg1, 2.0, 0.5)
    np.testing.assert_allclose(w1["w"], [2.0, -3.0])  # 1 + 2 * 0.5, -1 + 2 * -1
    assert w1["w"].dtype == np.float32 and (w1["index"] == [3, 4]).all()
    avg2 = {"w": w1["w"] + np.array([0.1, 0.0], np.float32), "index": np.array([3, 4])}
    w2 = ctl.server_step(w1, avg2, 2.0, 0.5)
    # m = 0.5 * (0.5, -1) + (0.1, 0) = (0.35, -0.5)
    np.testing.assert_allclose(w2["w"], [2.0 + 0.7, -3.0 - 1.0], rtol=1e-6)
    from ecefl.plan import get_plan
    assert (get_plan("cpu-small").server_lr, get_plan("cpu-small").server_momentum) == (1.0, 0.0)
    with pytest.raises(ValueError, match="server_momentum"):
        get_plan("cpu-small", server_momentum=1.0)


def test_standardised_readout_refit_does_not_depend_on_the_scale_of_a_feature():
    """plan.readout_standardise: the ridge acts on standardised features (variances read off the refit's summed
    Hessian, ecefl.readout.feature_variances), so a hidden feature with a 100x smaller spread gets a 100x larger
    weight and the same case logits; the plain ridge instead shrinks it, and the logits change. The variances
    equal the class-weight x p(1-p)-weighted variances of the features."""
    import numpy as np
    from ecefl import readout as R
    rng = np.random.default_rng(0)
    n, k = 80, 4
    y = (rng.random(n) < 0.4).astype(int)
    X = np.concatenate([rng.normal(0, 1, (n, k)) + 0.8 * y[:, None] * np.array([1, 0.5, 0, 0]), np.ones((n, 1))], 1)
    small = X.copy()
    small[:, 0] *= 0.01  # the same information on a 100x smaller scale
    theta0 = np.zeros(k + 2)
    logits = {}
    for standardise in (False, True):
        for name, feats in (("x", X), ("small", small)):
            sites = [(feats[:40], y[:40], 1.5), (feats[40:], y[40:], 1.5)]
            theta, _ = R.refit_centralised(theta0, sites, ridge=0.05, iterations=12, standardise=standardise)
            logits[standardise, name] = R.design(feats) @ theta
    np.testing.assert_allclose(logits[True, "small"], logits[True, "x"], rtol=1e-4, atol=1e-4)
    assert np.abs(logits[False, "small"] - logits[False, "x"]).max() > 0.1
    terms = R.local_terms(theta0, X, y, 1.5)
    w = np.where(y > 0, 1.5, 1.0) * 0.25
    mean = (w[:, None] * X).sum(0) / w.sum()
    expected = (w[:, None] * (X - mean) ** 2).sum(0) / w.sum()
    np.testing.assert_allclose(R.feature_variances(terms["hess"])[:k], expected[:k], rtol=1e-9)



def test_channels_last_layout_computes_what_the_standard_one_does_and_never_leaves_the_loop(preprocessed):
    """plan.channels_last (the CPU presets: a ~0.8x step, docs/BENCHMARKS.md) is a compute layout only: the same
    loss and gradients as the standard layout up to float rounding, the same whole-volume outputs, and every tensor
    of the state dict (what checkpoints and federated messages carry) in the standard layout after training and
    predicting."""
    import copy

    from ecefl.engine import FineTuner, predict_volume
    from ecefl.model import compute_layout
    plan = get_plan("test-tiny", channels_last=True, iterations_per_epoch=2)
    torch.manual_seed(0)
    standard = DualOutputSwinUNETR(plan.with_overrides(channels_last=False))
    fast = copy.deepcopy(standard)
    x = torch.rand(2, 1, *plan.patch_size)
    y = torch.zeros_like(x)
    y[..., 20:40, 20:40, 20:40] = 1

    def loss_of(model):
        seg, logit, _ = model(x, region_mask=y > 0)
        loss = torch.nn.functional.cross_entropy(seg, y[:, 0].long()) + logit.sum()
        loss.backward()
        return float(loss)

    loss_a = loss_of(standard)
    with compute_layout(fast, plan):
        assert fast.net.decoder1.conv_block.conv1.conv.weight.is_contiguous(memory_format=torch.channels_last_3d)
        loss_b = loss_of(fast)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for (name, p), q in zip(standard.named_parameters(), fast.parameters()):
        if p.grad is not None:  # float rounding only (summation order): measured <= 7e-4 relative per tensor
            assert float((p.grad - q.grad).norm()) <= 3e-3 * float(p.grad.norm()) + 1e-12, name
    image = torch.rand(1, 1, 70, 64, 64)
    out_a, p_a = predict_volume(standard, image, plan.with_overrides(channels_last=False))
    out_b, p_b = predict_volume(fast, image, plan)
    assert torch.allclose(out_a, out_b, atol=1e-3) and p_b == pytest.approx(p_a, abs=1e-4)
    items, _ = load_datalist(preprocessed["hospital-a"] / "datalist.json")
    FineTuner(plan, fast, items, progress=False).run_epochs(0, 1, 1)
    assert all(v.is_contiguous() for v in fast.state_dict().values())
    assert not all(torch.equal(v, standard.state_dict()[k]) for k, v in fast.state_dict().items())  # it trained


def _logistic_sites(rng, n_per_site: int, truth, sites: int = 2):
    """Sites of cases whose labels follow a logistic model with coefficients truth over k noisy features (+ s = 1)."""
    import numpy as np
    out = []
    for _ in range(sites):
        z = rng.normal(0, 1, (n_per_site, len(truth)))
        y = (rng.random(n_per_site) < 1 / (1 + np.exp(-(z @ truth - 0.3)))).astype(int)
        out.append((np.concatenate([z, np.ones((n_per_site, 1))], 1), y, 1.2))
    return out


def test_cross_validated_ridge_is_exact_and_keeps_a_good_prior_at_few_cases_but_not_a_poor_one():
    """plan.readout_ridge_cv_folds (ecefl.readout.solve): each ridge's held-out loss is what refitting with each
    fold left out and scoring that fold gives, summed over folds and sites; the ridge with the least of it is the
    one kept. With 24 training cases and a jointly trained read-out that is already right, it keeps close to it
    (a strong ridge) and beats the weakest ridge on new cases; with 400 cases and a read-out that learned nothing,
    it lets the data speak (a weak ridge)."""
    import numpy as np
    from ecefl import readout as R
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(3)
    truth = np.array([1.2, -0.8, 0.6, 0, 0, 0, 0, 0, 0, 0])
    grid, folds, iterations = [0.001, 0.1, 10.0], 3, 8
    sites = _logistic_sites(rng, 30, truth)
    theta0 = np.zeros(len(truth) + 2)
    theta, record = R.solve(theta0, R.centralised_sum(sites, folds, 7, ["a", "b"]), grid, folds, iterations, False)
    fold_of = [R.fold_ids(y, folds, 7, name) for (_, y, _), name in zip(sites, ["a", "b"])]
    assert all(np.bincount(f, minlength=folds).min() >= 9 for f in fold_of)  # stratified: 10 cases per fold
    for ridge, held in zip(grid, record["ridge_cv"]["held_out_loss"]):
        expected = 0.0
        for j in range(folds):
            fit, _ = R.refit_centralised(theta0, [(f[fo != j], y[fo != j], pw) for (f, y, pw), fo in
                                                  zip(sites, fold_of)], ridge, iterations)
            expected += sum(R.local_terms(fit, f[fo == j], y[fo == j], pw)["loss"] for (f, y, pw), fo in
                            zip(sites, fold_of))
        assert held == pytest.approx(expected, rel=1e-9)
    best = grid[int(np.argmin(record["ridge_cv"]["held_out_loss"]))]
    assert record["ridge"] == best
    np.testing.assert_allclose(theta, R.refit_centralised(theta0, sites, best, iterations)[0], atol=1e-12)
    # terms packed for another number of paths or weights (a site on another version) are refused, not misread
    vector = R.path_terms([(R.ALL, theta0)], sites[0][0], sites[0][1], 1.2, fold_of[0])
    assert len(R.unpack_paths(vector, 1, len(theta0))) == 1
    with pytest.raises(ValueError, match="another version of ecefl"):
        R.unpack_paths(np.concatenate([vector, vector[:5]]), 1, len(theta0))

    def chosen(n_per_site: int, anchor):
        data = _logistic_sites(np.random.default_rng(11), n_per_site, truth)
        fitted = {}
        for ridge in (None, 0.001):  # None: cross-validated over the presets' grid
            g, k = (R.ridge_settings(get_plan("cpu-small", readout_ridge_cv_folds=5)) if ridge is None
                    else ([ridge], 0))
            fitted[ridge] = R.solve(anchor, R.centralised_sum(data, k, 0, ["a", "b"]), g, k, iterations, True)
        test = _logistic_sites(np.random.default_rng(12), 2000, truth, sites=1)[0]
        loss = {r: R.local_terms(th, *test)["loss"] for r, (th, _) in fitted.items()}
        auc = {r: roc_auc_score(test[1], R.design(test[0]) @ th) for r, (th, _) in fitted.items()}
        return fitted[None][1]["ridge"], loss, auc

    good = np.concatenate([truth, [0.0, -0.3]])
    ridge, loss, auc = chosen(12, good)
    assert ridge >= 1.0 and loss[None] < loss[0.001] and auc[None] > auc[0.001]
    ridge, loss, auc = chosen(200, theta0)
    assert ridge <= 0.03 and auc[None] > 0.75


def test_a_refit_without_the_hidden_features_is_the_refit_of_the_other_columns_alone():
    """plan.readout_hidden off (ecefl.readout.hidden_frozen): the refit keeps the weights of the evidence head's
    feature_size hidden features at 0, whatever the jointly trained read-out held there, and fits the others
    exactly as a refit whose cases had only those columns would: the same Newton steps, standardisation and CV."""
    import numpy as np
    from ecefl import readout as R
    fs = 12
    plan = get_plan("cpu-small", readout_hidden=False, readout_ridge_cv_folds=3)
    assert plan.feature_size == fs
    # 12 "hidden" features, 4 of which carry most of the training signal, then 3 CT inputs that carry some
    truth = np.array([2.0, -1.5, 1.0, 1.0] + [0.0] * 8 + [0.8, -0.5, 0.0])
    sites = _logistic_sites(np.random.default_rng(5), 40, truth)
    frozen = R.hidden_frozen(plan, len(truth) + 2)
    assert frozen.tolist() == [True] * fs + [False] * 5
    assert R.hidden_frozen(get_plan("cpu-small", readout_hidden=True), 9) is None
    theta0 = np.random.default_rng(6).normal(0, 0.5, len(truth) + 2)
    theta, record = R.refit_features(theta0, sites, ["a", "b"], plan)
    assert np.all(theta[:fs] == 0) and record["frozen"] == fs and record["theta_joint"] == theta0.tolist()
    reduced = [(f[:, fs:], y, pw) for f, y, pw in sites]
    expected, reduced_record = R.refit_features(theta0[fs:], reduced, ["a", "b"], plan.with_overrides(
        readout_hidden=True))
    assert record["ridge"] == reduced_record["ridge"]
    np.testing.assert_allclose(theta[fs:], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(record["loss"], reduced_record["loss"], rtol=1e-9)
    assert abs(theta[fs]) > 0.1  # the CT inputs' weights did move
    with pytest.raises(ValueError, match="readout_hidden=false .* needs readout_hu_features"):
        get_plan("cpu-small", readout_hidden=False, readout_hu_features=False, readout_fat_hu=None)


def test_evidence_is_shown_against_the_average_training_case(tmp_path):
    """model.attribution (the report's and `ecefl infer`'s evidence): each voxel's evidence against the average
    training case, whose read-out features the refit keeps in the model (readout_baseline). A case whose features
    are the average ones shows no evidence in sum; reference_logit is then its logit. With the presets' read-out on
    the perinodal fat's CT signs alone, only fat voxels carry evidence, each its CT term's difference from the
    average fat's. Before a refit the raw decomposition is shown; a model file from before still loads."""
    import numpy as np
    from ecefl import readout as R
    from ecefl.checkpoint import load_model, save_checkpoint
    plan = get_plan("test-tiny", readout_hu_features=True, readout_fat_hu=(-190.0, -30.0), readout_hidden=False)
    torch.manual_seed(0)
    model = DualOutputSwinUNETR(plan).eval()
    k = model.readout_parameters().numel()
    theta = torch.as_tensor(np.random.default_rng(1).normal(0, 1.0, k))
    theta[:plan.feature_size] = 0  # readout_hidden off
    model.set_readout_parameters(theta)
    with torch.no_grad():
        model.net.out.conv.conv.bias.copy_(torch.tensor([0.0, 6.0]))  # nodes everywhere: fat and soft tissue in
        x = torch.rand(1, 1, *plan.patch_size)
        out = model.voxel_outputs(x)
        assert torch.equal(model.attribution(out), model.evidence_map(out))  # no average case yet
        features = model.readout_features(model.readout_channels(x))[0].double()
        logit = float(model.pool(out))
        assert float(theta @ torch.cat([features, features.new_ones(1)])) == pytest.approx(logit, abs=1e-3)
        # this very case as the average one: nothing in sum, its own logit as the reference
        model.readout_baseline.copy_(torch.cat([features, features.new_ones(1)]))
        evidence = model.attribution(out)
        fat = out[:, -2:-1] > 0
        assert 0.2 < float(fat.float().mean()) < 0.6  # the patch's fat is the nodes' fat here
        assert abs(float(evidence.sum())) < 1e-3 * float(evidence.abs().sum())
        assert float(model.reference_logit(out)) == pytest.approx(logit, abs=1e-3)
        assert float(evidence[~fat].abs().max()) < 1e-6 * float(evidence[fat].abs().max())
        # a fat voxel: its CT term minus the average fat's, spread over the fat
        u_fat = theta[plan.feature_size:-2]
        direct = out[:, -1:] / out[:, -2:-1].clamp_min(1e-12)
        expected = (direct - float(u_fat @ features[plan.feature_size:-1])) * out[:, -2:-1] / (out[:, -2].sum() + 1e-3)
        torch.testing.assert_close(evidence[fat], expected[fat].float(), rtol=1e-4, atol=1e-6)
    # the refit's average case is the class-weighted mean of the training cases' design rows, and travels
    sites = _logistic_sites(np.random.default_rng(2), 30, np.ones(k - 2))
    _, record = R.refit_features(np.zeros(k), sites, ["a", "b"], plan.with_overrides(readout_refit_iterations=2))
    rows = np.concatenate([np.concatenate([f, np.ones((len(f), 1))], 1) for f, _, _ in sites])
    weights = np.concatenate([np.where(y > 0, pw, 1.0) for _, y, pw in sites])
    np.testing.assert_allclose(record["average_case"], weights @ rows / weights.sum(), rtol=1e-9)
    state = R.state_with_average_case(model.state_dict(), record["average_case"])
    assert torch.equal(state["readout_baseline"], torch.as_tensor(record["average_case"], dtype=torch.float32))
    # a file of checkpoint version 1, written before the average case was kept, loads with none (the old map)
    old = {key: v for key, v in model.state_dict().items() if key != "readout_baseline"}
    save_checkpoint(tmp_path / "old.pt", "dual", plan, old, threshold=0.5)
    payload = torch.load(tmp_path / "old.pt", weights_only=True)
    assert payload["version"] == 2
    torch.save({**payload, "version": 1}, tmp_path / "old.pt")
    assert not load_model(tmp_path / "old.pt")[0].readout_baseline.any()


def test_the_evidence_overlay_shows_its_strongest_slice_opaque_red_and_blue_zoomed_to_the_nodes():
    """The report's and infer's evidence figure: the slice with the most evidence; each sign in its own colour,
    opaque by magnitude (a diverging map fades to white, invisible on CT), nothing under 5 % of a scale that a few
    extreme voxels cannot set; zoomed around the nodes and the evidence."""
    import numpy as np
    from ecefl.report import around, evidence_heat, evidence_limit, evidence_slice
    evidence = np.zeros((64, 64, 40))
    evidence[20:40, 20:40, 12] = 0.5  # the most evidence lies on slice 12
    evidence[5:7, 5:7, 25] = -0.2
    evidence[31, 31, 30] = 50.0  # one extreme voxel
    nodes = np.zeros_like(evidence, bool)
    nodes[28:36, 28:36, 20:28] = True
    assert evidence_slice(np.where(evidence > 10, 0, evidence), nodes) == 12
    assert evidence_slice(np.zeros_like(evidence), nodes) == 20 and evidence_slice(0 * evidence, 0 * nodes) == 20
    lim = evidence_limit(evidence)
    assert lim == pytest.approx(0.5)  # the 99th percentile of the 405 voxels with evidence, not the extreme one
    rgba = evidence_heat(evidence[:, :, 12] + evidence[:, :, 25] - 0.01 * (evidence[:, :, 12] > 0), lim)
    assert rgba[31, 31, 3] == pytest.approx(0.35 + 0.65 * 0.98) and rgba[31, 31, 0] > 0.8 > rgba[31, 31, 2]
    assert rgba[5, 5, 2] > 0.9 > 0.1 > rgba[5, 5, 0] and rgba[5, 5, 3] == pytest.approx(0.35 + 0.65 * 0.4)
    assert rgba[0, 0, 3] == 0.0 and evidence_heat(np.full((2, 2), 0.02), lim)[..., 3].max() == 0.0
    x, y = around(nodes[:, :, 24], evidence[:, :, 24] != 0)
    assert (x.start, x.stop, y.start, y.stop) == (12, 52, 12, 52)  # 8 voxels of nodes + 16 each side, 40 at least
    x, y = around(np.pad(np.ones((2, 2), bool), ((0, 62), (0, 62))))  # at the edge: shifted inside, 40 wide
    assert (x.start, x.stop) == (0, 40)


def test_plan_overrides_refuse_unknown_fields_and_switches_that_are_not_true_or_false():
    """--set FIELD=VALUE (plan.parse_assignments): JSON values, lists as tuples; an unknown field and a switch given
    `False` or `0` are refused by name (a string "False" would otherwise read as on)."""
    from ecefl.plan import parse_assignments
    assert parse_assignments(["readout_hidden=false", "readout_fat_hu=[-190,-30]", "readout_ridge=0.3"]) == {
        "readout_hidden": False, "readout_fat_hu": (-190, -30), "readout_ridge": 0.3}
    for bad in ("readout_hidden=False", "readout_hidden=0", "tta_flip=no"):
        with pytest.raises(ValueError, match=r"is a switch, give \w+=true or \w+=false"):
            parse_assignments([bad])
    with pytest.raises(ValueError, match="expected FIELD=VALUE with FIELD one of the plan's fields"):
        parse_assignments(["readout_hiden=false"])


def test_a_site_sends_cross_validation_terms_only_when_every_fold_is_large_enough():
    """plan.readout_ridge_cv_min_cases: a fold's terms are sums over about 1/k of a site's training cases, so a site
    sends them only when each fold holds that many cases or none (and, under its --min-count rule, that many of
    each class); the reason names the fold and its counts for the site's own log."""
    import numpy as np
    from ecefl import readout as R
    labels = np.array([1] * 6 + [0] * 9)  # 15 training cases: 3 folds of 5 (2 ECE+, 3 ECE-)
    folds = R.fold_ids(labels, 3, 0, "hospital-a")
    assert np.bincount(folds).tolist() == [5, 5, 5]
    assert R.small_fold(labels, folds, 3, 5) is None
    assert R.small_fold(labels, folds, 3, 5, min_count=2) is None
    assert "under readout_ridge_cv_min_cases=6" in R.small_fold(labels, folds, 3, 6)
    reason = R.small_fold(labels, folds, 3, 5, min_count=3)
    assert reason.startswith("CV fold 0 holds 5 of this site's training cases (2 ECE+, 3 ECE-)")
    assert "min-count 3" in reason
    five = R.fold_ids(labels, 5, 0, "hospital-a")  # 5 folds of 3: under the default minimum
    assert R.small_fold(labels, five, 5, get_plan("cpu-small").readout_ridge_cv_min_cases) is not None
    three = R.fold_ids(labels[:3], 4, 0, "x")  # 3 cases in 4 folds: one fold empty, which adds to no sum
    assert sorted(np.bincount(three, minlength=4)) == [0, 1, 1, 1]
    assert R.small_fold(labels[:3], three, 4, 1) is None and R.small_fold(labels[:3], three, 4, 2) is not None


def test_per_crop_dice_weighs_a_small_missed_node_like_a_large_found_one_and_ignores_crops_without_node():
    """plan.dice_per_crop: over a batch of a large node segmented perfectly and a small node missed, the batch
    Dice barely sees the miss; the per-crop loss counts it as half the batch. A crop without node adds only CE."""
    from monai.losses import DiceCELoss
    from ecefl.engine import PerCropNodeDiceCE
    target = torch.zeros(3, 1, 16, 16, 16)
    target[0, 0, 2:14, 2:14, 2:14] = 1  # large node: 1728 voxels
    target[1, 0, 7:9, 7:9, 7:9] = 1  # small node: 8 voxels
    logits = torch.zeros(3, 2, 16, 16, 16)
    logits[0, 1] = torch.where(target[0, 0] > 0, 20.0, -20.0)  # found exactly
    logits[1, 1], logits[2, 1] = -20.0, -20.0  # small node missed; crop 2 (no node) correctly empty
    logits[0, 0] = logits[1, 0] = logits[2, 0] = 0.0
    ce = torch.nn.functional.cross_entropy(logits, target[:, 0].long()).item()
    per_crop = PerCropNodeDiceCE()(logits, target).item() - ce
    batch = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)(logits, target).item() - ce
    assert per_crop == pytest.approx(0.5, abs=0.01)  # (0 for the large node + 1 for the missed one) / 2 crops
    assert batch < 0.01  # 8 of 1736 nodal voxels missed
    # without the node-free crop only the CE changes
    two = PerCropNodeDiceCE()(logits[:2], target[:2]).item()
    two_ce = torch.nn.functional.cross_entropy(logits[:2], target[:2, 0].long()).item()
    assert two - two_ce == pytest.approx(per_crop, abs=1e-5)


def test_a_training_step_with_per_crop_dice_learns_from_real_crops(preprocessed):
    """The engine's fine-tuning step with plan.dice_per_crop (the presets' setting) on real node crops: finite
    loss and gradients, and a few steps on one batch lower its segmentation loss."""
    from ecefl.engine import FineTuner, PerCropNodeDiceCE
    items, _ = load_datalist(preprocessed["hospital-a"] / "datalist.json")
    plan = get_plan("test-tiny", dice_per_crop=True, batch_size=2, neg_crop_fraction=0.0)
    torch.manual_seed(0)
    tuner = FineTuner(plan, DualOutputSwinUNETR(plan), items, progress=False)
    assert isinstance(tuner.seg_loss, PerCropNodeDiceCE)
    batch = next(iter(tuner.loader))
    assert (batch["label"].flatten(1).sum(1) > 0).all()  # node crops
    state = tuner.epoch_start(0, 2)
    losses = []
    for step in range(6):
        tuner.optimizer.zero_grad()
        loss, logged = tuner.train_step(batch, 0, 2, step, state)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p.grad).all() for p in tuner.model.parameters() if p.grad is not None)
        tuner.optimizer.step()
        losses.append(logged["seg_loss"].item())
    assert losses[-1] < losses[0]
