"""Dual-output SwinUNETR and the MAE pretrainer (real MONAI networks)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ecefl.model import DualOutputSwinUNETR, MaskedPretrainer, encoder_keys, load_encoder
from ecefl.plan import get_plan


@pytest.fixture(scope="module")
def plan():
    torch.manual_seed(0)
    return get_plan("cpu-small")


def test_initial_weights_come_from_the_plans_seed_and_leave_the_callers_stream_alone():
    """NVFlare's persistor builds the first global model in the server process, which seeds nothing itself."""
    def weights(model):
        return torch.cat([v.flatten().float() for v in model.state_dict().values()])
    for cls in (DualOutputSwinUNETR, MaskedPretrainer):
        torch.manual_seed(1)
        a = weights(cls(get_plan("test-tiny", seed=3)))
        after = torch.rand(3)
        torch.manual_seed(2)
        b = weights(cls(get_plan("test-tiny", seed=3).to_dict()))  # as the persistor passes it
        assert torch.equal(a, b)
        assert not torch.equal(a, weights(cls(get_plan("test-tiny", seed=4))))
        torch.manual_seed(1)
        assert torch.equal(torch.rand(3), after)  # building the model drew nothing from the caller's stream


def test_forward_backward_shapes_and_finite_gradients(plan):
    model = DualOutputSwinUNETR(plan)
    x = torch.rand(2, 1, *plan.patch_size)
    seg, logit, evidence = model(x)
    assert seg.shape == (2, 2, *plan.patch_size)
    assert logit.shape == (2,) and evidence.shape == (2, 1, *plan.patch_size)
    (seg.mean() + logit.sum()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the read-out's weights on the CT inputs (readout_hu_features, on in the presets) are set by the refit only
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == (["readout_hu.weight"] + ["readout_hu.bias"] * bool(plan.readout_fat_hu)
                      if plan.readout_hu_features else [])


def test_evidence_map_is_each_voxels_share_of_the_logit(plan):
    model = DualOutputSwinUNETR(plan).eval()
    x = torch.rand(1, 1, *plan.patch_size)
    with torch.no_grad():
        _, logit, evidence = model(x)
    assert evidence.sum().item() == pytest.approx((logit - model.cls_bias).item(), rel=1e-4, abs=1e-5)


def test_classification_is_grounded_in_the_pooling_region(plan):
    """With a reference region (teacher forcing), evidence outside region+shell is exactly zero."""
    model = DualOutputSwinUNETR(plan).eval()
    x = torch.rand(1, 1, *plan.patch_size)
    region = torch.zeros(1, 1, *plan.patch_size, dtype=torch.bool)
    region[..., 28:36, 28:36, 28:36] = True
    with torch.no_grad():
        _, _, evidence = model(x, region_mask=region)
    outside = torch.ones_like(region)
    r = model.shell_kernel // 2
    outside[..., 28 - r:36 + r, 28 - r:36 + r, 28 - r:36 + r] = False
    assert evidence[outside].abs().max().item() == 0.0
    assert evidence[region].abs().sum().item() > 0


@pytest.mark.parametrize("reconstruct", ["deep", "unet"])
def test_mae_masked_voxels_reach_no_path(plan, reconstruct):
    """Neither reconstruction (the deep stages' head, or the whole U-Net with its full-resolution skip blocks) sees
    a masked voxel."""
    plan = plan.with_overrides(mae_reconstruct=reconstruct)
    mae = MaskedPretrainer(plan).eval()
    x = torch.rand(1, 1, *plan.patch_size)
    mask = mae.random_mask(x, generator=torch.Generator().manual_seed(0))
    assert 0.55 <= mask.mean().item() <= 0.65
    changed = x.clone()
    changed[mask.bool()] = torch.rand(int(mask.sum().item()))  # only masked voxels differ
    with torch.no_grad():
        loss_a, rec_a, _ = mae(x, mask)
        loss_b, rec_b, _ = mae(changed, mask)
    assert torch.equal(rec_a, rec_b), "the reconstruction never sees a masked voxel"
    assert loss_a.item() != loss_b.item(), "but the loss is computed on the masked voxels"
    unmasked_change = x.clone()
    unmasked_change[~mask.bool()] = 0.0
    with torch.no_grad():
        _, rec_c, _ = mae(unmasked_change, mask)
    assert not torch.equal(rec_a, rec_c)


def test_encoder_transfer_is_verified_key_by_key(plan):
    mae = MaskedPretrainer(plan)
    dual = DualOutputSwinUNETR(plan)
    said = []
    n = load_encoder(dual, mae.state_dict(), "mae.pt", log=said.append)
    keys = encoder_keys(dual.state_dict())
    assert n == len(keys) > 50
    assert said == [f"initialized {n}/{n} encoder tensors from mae.pt"]
    assert all(torch.equal(dual.state_dict()[k], mae.state_dict()[k]) for k in keys)
    broken = {k: v for k, v in mae.state_dict().items() if "mlp" not in k}
    with pytest.raises(ValueError, match="missing"):
        load_encoder(DualOutputSwinUNETR(plan), broken, "broken.pt")
    other = MaskedPretrainer(plan.with_overrides(feature_size=24))
    with pytest.raises(ValueError, match="another shape"):
        load_encoder(DualOutputSwinUNETR(plan), other.state_dict(), "fs24.pt")


def test_a_whole_unet_pretraining_transfers_encoder_and_decoder_but_not_the_segmentation_output(plan):
    mae = MaskedPretrainer(plan.with_overrides(mae_reconstruct="unet"))
    fresh = DualOutputSwinUNETR(plan).state_dict()
    dual = DualOutputSwinUNETR(plan)
    said = []
    n = load_encoder(dual, mae.state_dict(), "mae_unet.pt", log=said.append)
    after, source = dual.state_dict(), mae.state_dict()
    decoder = [k for k in after if k.startswith("net.decoder1.")]
    assert n > len(encoder_keys(after)) and decoder
    assert said == [f"initialized {n}/{n} encoder and decoder tensors from mae_unet.pt"]
    assert all(torch.equal(after[k], source[k]) for k in encoder_keys(after) + decoder)
    assert not any(k.startswith("net.out.") for k in source)  # its output is the reconstruction head
    assert all(torch.equal(after[k], fresh[k]) for k in after if k.startswith("net.out."))  # node prior kept
    broken = {k: v for k, v in source.items() if not k.startswith("net.decoder2.")}
    with pytest.raises(ValueError, match="missing"):
        load_encoder(DualOutputSwinUNETR(plan), broken, "broken.pt")


def test_evidence_reference_cancels_what_shifts_every_voxels_evidence():
    """With evidence_reference the logit is the region's evidence minus the case's own reference tissue's: a shift
    of every voxel's evidence (what a scanner does everywhere) leaves it unchanged; without, it moves the logit."""
    import torch
    from ecefl.model import DualOutputSwinUNETR
    from ecefl.plan import get_plan
    torch.manual_seed(0)
    x = torch.rand(1, 1, 64, 64, 64)  # HU -250..350: fat, soft tissue and the rest
    region = torch.zeros_like(x, dtype=torch.bool)
    region[..., 24:36, 24:36, 24:36] = True
    for reference, moves in ((True, False), (False, True)):
        model = DualOutputSwinUNETR(get_plan("test-tiny", evidence_reference=reference)).eval()
        with torch.no_grad():
            before = model.pool(model.voxel_outputs(x, region))
            model.evidence_head[-1].bias += 0.7
            out = model.voxel_outputs(x, region)
            after = model.pool(out)
        assert out.shape[1] == (8 if reference else 6)
        if reference:
            assert float(out[:, 6].sum()) > 1000  # the reference holds tissue voxels
        assert (abs(float(after - before) - 0.7) < 1e-3) == moves and (abs(float(after - before)) < 1e-3) != moves
        assert float(model.evidence_map(out).sum() + model.cls_bias) == pytest.approx(float(after), abs=1e-4)


@pytest.mark.parametrize("reference,hu_features,fat", [(False, False, False), (True, False, False),
                                                       (False, True, False), (False, True, True), (True, True, True)])
def test_case_logit_is_linear_in_the_readout_features(plan, reference, hu_features, fat):
    """ecefl.readout's premise: logit = [z, s, 1] . theta exactly, for cases pooled over confident node voxels
    (gated region) and without any (soft region), so refitting theta is a logistic regression on fixed features;
    also when the logit subtracts the case's reference tissue (evidence_reference), and with the CT inputs as
    read-out features (readout_hu_features: 7 more, the pooled CT value and soft HU bins, their weights in theta),
    also pooled over the perinodal fat alone (readout_fat_hu: 8 more, the fat's 7 and its size, and a bias)."""
    import numpy as np
    from ecefl import readout as R
    plan = plan.with_overrides(evidence_reference=reference, readout_hu_features=hu_features,
                               readout_fat_hu=(-190.0, -30.0) if fat else ())
    x = torch.rand(2, 1, *plan.patch_size)
    for node_bias in (-12.0, 12.0):  # no voxel with p >= 0.5 / every voxel
        model = DualOutputSwinUNETR(plan).eval()
        with torch.no_grad():
            model.net.out.conv.conv.bias.copy_(torch.tensor([0.0, node_bias]))
            out = model.voxel_outputs(x)
            assert bool((out[:, 2].flatten(1).sum(1) >= 1).all()) == (node_bias > 0)
            logit = model.pool(out).double().numpy()
            features = model.readout_features(model.readout_channels(x)).double().numpy()
        assert features.shape[1] == plan.feature_size + 1 + 7 * hu_features + fat
        assert out.shape[1] == model.n_output_channels == 6 + 2 * reference + 2 * fat
        theta = model.readout_parameters().double().numpy()
        np.testing.assert_allclose(R.design(features) @ theta, logit, rtol=1e-4, atol=1e-5)
        # the server's view (state dicts, ecefl.readout.READOUT_KEYS) orders theta as the model does
        np.testing.assert_allclose(R.theta_from_state(model.state_dict()), theta, rtol=1e-6)
        theta2 = theta + np.random.default_rng(0).normal(0, 0.3, theta.shape)
        model.load_state_dict(R.state_with_theta(model.state_dict(), theta2))
        np.testing.assert_allclose(model.readout_parameters().double().numpy(), theta2, rtol=1e-6)
        model.set_readout_parameters(torch.as_tensor(theta))
        np.testing.assert_allclose(model.readout_parameters().double().numpy(), theta, rtol=1e-6)
        model.set_readout_parameters(torch.as_tensor(theta2))
        with torch.no_grad():
            logit2 = model.pool(model.voxel_outputs(x)).double().numpy()
        np.testing.assert_allclose(R.design(features) @ theta2, logit2, rtol=1e-4, atol=1e-5)
        assert np.abs(logit2 - logit).max() > 1e-3


def test_the_fat_readout_averages_the_ct_over_the_fat_inside_the_nodal_region_alone():
    """readout_fat_hu: the CT inputs' term of the logit is their mean over the fat voxels (HU in the plan's range)
    of the nodal region, plus its own bias; nothing outside the region and no soft-tissue voxel of it enters that
    mean; so the same node's fat term is higher with stranded (-60 HU) than with clean (-90 HU) perinodal fat, by
    exactly u * 30 HU in window units, and the evidence map still sums to the logit."""
    plan = get_plan("test-tiny", readout_hu_features=True, readout_fat_hu=(-190.0, -30.0))
    lo, hi = plan.hu_window
    torch.manual_seed(6)
    model = DualOutputSwinUNETR(plan).eval()
    with torch.no_grad():
        model.readout_hu.weight.zero_()
        model.readout_hu.weight[0, 0] = 2.0  # the windowed CT value only
        model.readout_hu.bias.fill_(-0.5)
    region = torch.zeros(1, 1, 64, 64, 64, dtype=torch.bool)
    region[..., 20:44, 20:44, 20:44] = True
    logits, fat_terms = [], []
    for fat_hu in (-90.0, -60.0):
        hu = torch.full((1, 1, 64, 64, 64), 40.0)  # soft tissue
        hu[..., 20:44, 20:44, 20:28] = fat_hu  # a slab of the region: its perinodal fat
        hu[..., :10, :, :] = -100.0  # fat outside the region: never part of the mean
        x = (hu - lo) / (hi - lo)
        with torch.no_grad():
            out = model.voxel_outputs(x, region)
            logit = model.pool(out)
        fat = out[:, -2]
        assert float(fat.sum()) == 24 * 24 * 8 and float(fat[~region[:, 0]].abs().sum()) == 0.0
        fat_terms.append(float((out[:, -1].sum() / (fat.sum() + 1e-3))))
        assert fat_terms[-1] == pytest.approx(2.0 * (fat_hu - lo) / (hi - lo) - 0.5, abs=1e-4)
        assert float(model.evidence_map(out).sum() + model.cls_bias) == pytest.approx(float(logit), abs=1e-4)
        logits.append(float(logit))
    assert fat_terms[1] - fat_terms[0] == pytest.approx(2.0 * 30.0 / (hi - lo), abs=1e-4)
    assert logits[1] > logits[0]
    for bad in ("ab", ("a", "b"), (-30.0, -190.0), (-190.0,)):  # a model file's plan is checked before any use
        with pytest.raises(ValueError, match="readout_fat_hu"):
            get_plan("test-tiny", readout_hu_features=True, readout_fat_hu=bad)
    with pytest.raises(ValueError, match="readout_fat_hu"):
        get_plan("test-tiny", readout_hu_features=False, readout_fat_hu=(-190.0, -30.0))


def test_flip_averaging_treats_a_mirrored_neck_as_its_mirror_and_keeps_the_readout_exact(tmp_path):
    """plan.tta_flip: the whole-volume outputs of a left-right mirrored CT are the mirror of the CT's outputs (left
    and right nodes are read alike: same probability, mirrored mask); without it they are not; and the read-out
    refit's features of the case under the same averaging still give its logit exactly (ecefl.readout), or, with
    readout_tta_flip off, the logit of the single pass."""
    from ecefl.engine import predict_volume
    torch.manual_seed(2)
    plan = get_plan("test-tiny")
    items, image = _random_ct(tmp_path, plan, (64, 64, 64), seed=2)
    mirror = torch.flip(image, dims=[2])
    for tta in (False, True):
        model = DualOutputSwinUNETR(plan.with_overrides(tta_flip=tta)).eval()
        out, prob = predict_volume(model, image, model.plan)
        out_m, prob_m = predict_volume(model, mirror, model.plan)
        equivariant = torch.allclose(torch.flip(out_m, dims=[2]), out, atol=1e-5)
        assert equivariant == tta and (abs(prob - prob_m) < 1e-6) == tta
    _assert_readout_gives_the_logit(model, items, prob)
    # readout_tta_flip off (cpu-small): the refit reads single passes, i.e. exactly the outputs without the mirror
    single_pass = DualOutputSwinUNETR(plan).eval()
    single_pass.load_state_dict(model.state_dict())
    _, prob_single = predict_volume(single_pass, image, plan)
    assert abs(prob_single - prob) > 1e-6  # the mirror changes this case's probability
    refit_on_single = DualOutputSwinUNETR(plan.with_overrides(tta_flip=True, readout_tta_flip=False)).eval()
    refit_on_single.load_state_dict(model.state_dict())
    _assert_readout_gives_the_logit(refit_on_single, items, prob_single)


def _random_ct(tmp_path, plan, shape, seed):
    """A CT of uniform random HU on the plan's grid: its datalist items and its preprocessed image (1, 1, ...)."""
    import nibabel as nib
    import numpy as np
    from ecefl.data import eval_transforms, plain_dataset
    hu = np.random.default_rng(seed).uniform(-200, 250, shape).astype(np.float32)
    nib.save(nib.Nifti1Image(hu, np.diag([*plan.spacing, 1.0])), tmp_path / "ct.nii.gz")
    items = [{"image": str(tmp_path / "ct.nii.gz")}]
    return items, plain_dataset(items, eval_transforms(plan, with_label=False))[0]["image"].unsqueeze(0)


def _assert_readout_gives_the_logit(model, items, prob):
    """The read-out refit's features of the case (ecefl.readout) give its logit exactly, under the model's plan."""
    import numpy as np
    from ecefl import readout as R
    features = R.case_features(model, items, model.plan)
    theta = model.readout_parameters().double().numpy()
    assert float((R.design(features) @ theta)[0]) == pytest.approx(float(np.log(prob / (1 - prob))), abs=1e-4)


def test_the_cpu_probe_for_bf16_matrix_units_reads_the_cpus_own_flags():
    from ecefl.engine import cpu_has_bf16_matrix_units
    flags = Path("/proc/cpuinfo")
    if flags.is_file():  # Linux: the kernel's list of the CPU's features
        assert cpu_has_bf16_matrix_units() == (" amx_tile" in flags.read_text())


def test_bf16_runs_only_on_cpus_with_bf16_matrix_units_and_the_readout_stays_exact(tmp_path, monkeypatch):
    """cpu_bf16 (cpu-small): bf16 autocast only where the CPU has bf16 matrix units (AMX; a CPU without them was
    measured > 25x slower in bf16). In bf16 the evidence head and the read-out stay in fp32, so the refit's features
    still give exactly the logit inference computes, and the probability stays close to fp32's."""
    from ecefl import engine
    cpu = torch.device("cpu")
    plan = get_plan("test-tiny", cpu_bf16=True, readout_hu_features=True)
    monkeypatch.setattr(engine, "cpu_has_bf16_matrix_units", lambda: False)
    assert not engine.uses_bf16(plan, cpu)
    monkeypatch.setattr(engine, "cpu_has_bf16_matrix_units", lambda: True)
    assert engine.uses_bf16(plan, cpu) and not engine.uses_bf16(plan.with_overrides(cpu_bf16=False), cpu)
    items, image = _random_ct(tmp_path, plan, (64, 64, 64), seed=4)
    torch.manual_seed(4)
    model = DualOutputSwinUNETR(plan).eval()
    with torch.no_grad():
        model.readout_hu.weight.normal_(0, 0.3)  # as after a refit: the CT inputs weigh in the logit
    out_bf16, prob_bf16 = engine.predict_volume(model, image, plan)
    _assert_readout_gives_the_logit(model, items, prob_bf16)
    monkeypatch.setattr(engine, "cpu_has_bf16_matrix_units", lambda: False)
    out_fp32, prob_fp32 = engine.predict_volume(model, image, plan)
    _assert_readout_gives_the_logit(model, items, prob_fp32)
    assert not torch.equal(out_bf16, out_fp32)  # the network did run in bf16
    assert abs(prob_bf16 - prob_fp32) < 0.02
    assert torch.allclose(out_bf16[:, :2], out_fp32[:, :2], atol=0.1)  # segmentation logits


def test_inference_skips_air_windows_without_changing_any_output_inside_the_body():
    """`ecefl infer` leaves out windows of pure air (a planning CT's wide field of view); every output at a voxel
    of the body (above the HU window's floor) equals the full sliding window's, bit for bit."""
    from ecefl.engine import predict_volume
    # one window per forward pass: bit for bit (a batch of another size may round differently)
    plan = get_plan("test-tiny").with_overrides(sw_batch_size=1)
    torch.manual_seed(1)
    model = DualOutputSwinUNETR(plan)
    image = torch.zeros(1, 1, 64, 64, 200)  # [0, 1] window units: 0 = air at or below -250 HU
    image[..., :70] = torch.rand(1, 1, 64, 64, 70) * 0.8 + 0.05  # the "patient", then 130 slices of air
    full, _ = predict_volume(model, image, plan)
    calls = []
    original = model.voxel_outputs
    model.voxel_outputs = lambda x, r=None, **k: (calls.append(x.shape[0]), original(x, r, **k))[1]
    skipped, _ = predict_volume(model, image, plan, skip_air=True)
    body = image[0, 0] > 0
    assert torch.equal(skipped[0][:, body], full[0][:, body])
    # test-tiny windows along z (overlap 0) start at 0, 64, 128, 136: the last two hold air only and were not run
    assert calls == [1, 1]
    # windows in batches of 4 (the presets): the air windows of a batch are left out of it
    calls.clear()
    batched, _ = predict_volume(model, image, plan.with_overrides(sw_batch_size=4), skip_air=True)
    assert calls == [2]
    assert torch.allclose(batched[0][:, body], full[0][:, body], atol=1e-4)


def test_windows_in_batches_give_the_outputs_of_one_window_at_a_time():
    """plan.sw_batch_size only groups the sliding window's forward passes (every layer normalises per sample): the
    whole-volume outputs and the case probability are those of one window at a time."""
    from ecefl.engine import predict_volume
    torch.manual_seed(3)
    plan = get_plan("test-tiny").with_overrides(readout_hu_features=True)
    model = DualOutputSwinUNETR(plan).eval()
    image = torch.rand(1, 1, 100, 90, 70)  # 2 x 2 x 2 windows of 64^3 at overlap 0
    one, p_one = predict_volume(model, image, plan.with_overrides(sw_batch_size=1))
    four, p_four = predict_volume(model, image, plan.with_overrides(sw_batch_size=4))
    assert torch.allclose(one, four, atol=1e-4) and p_one == pytest.approx(p_four, abs=1e-5)
    assert one[:, :2].std() > 0.01 and one[:, 4:].abs().sum() > 0  # non-trivial logits and soft-region evidence


def test_gaussian_blending_changes_only_where_windows_overlap_and_keeps_the_readout_exact(tmp_path):
    """plan.sw_blend: "gaussian" weights each window's centre over its border where windows overlap; a voxel that
    one window alone covers keeps that window's output; the read-out refit's features under the same blending give
    the case logit exactly (ecefl.readout); an unknown blending is refused."""
    from ecefl.engine import predict_volume
    torch.manual_seed(5)
    plan = get_plan("test-tiny")
    # 64 x 64 x 100 voxels at overlap 0: windows at z 0-63 and 36-99, so z 36-63 is covered twice
    items, image = _random_ct(tmp_path, plan, (64, 64, 100), seed=5)
    assert image.shape[-1] == 100
    reference = DualOutputSwinUNETR(plan).eval()
    plain, _ = predict_volume(reference, image, plan)
    model = DualOutputSwinUNETR(plan.with_overrides(sw_blend="gaussian")).eval()
    model.load_state_dict(reference.state_dict())  # the same weights; only the blending differs
    blended, prob = predict_volume(model, image, model.plan)
    once = torch.ones(100, dtype=torch.bool)
    once[36:64] = False
    assert torch.allclose(blended[..., once], plain[..., once], atol=1e-5)
    assert (blended[..., ~once] - plain[..., ~once]).abs().max() > 1e-3
    _assert_readout_gives_the_logit(model, items, prob)
    with pytest.raises(ValueError, match="sw_blend"):
        plan.with_overrides(sw_blend="median").validate()


def test_node_mask_is_the_argmax_at_one_half_and_the_softmax_above_any_threshold():
    torch.manual_seed(0)
    out = torch.randn(2, 6, 5, 6, 7)
    assert torch.equal(DualOutputSwinUNETR.node_mask(out, 0.5), out[:, 1] > out[:, 0])
    p_node = torch.softmax(out[:, :2], dim=1)[:, 1]
    for t in (0.6, 0.8, 0.9):
        mask = DualOutputSwinUNETR.node_mask(out, t)
        assert torch.equal(mask, p_node > t) and mask.sum() < (p_node > 0.5).sum()


def test_hu_gate_keeps_found_nodes_in_soft_tissue_and_changes_nothing_inside_it():
    """plan.node_hu_range: a voxel of bone or of fat/air outside the range is never node (whole-volume sliding
    window with the flip, as `ecefl infer` runs it); in soft tissue the outputs are the ungated model's; training
    is not gated."""
    from ecefl.engine import predict_volume
    torch.manual_seed(4)
    open_plan = get_plan("test-tiny", node_prior=0.9, tta_flip=True)  # an untrained net then calls most voxels node
    gated_plan = open_plan.with_overrides(node_hu_range=(-150.0, 200.0))
    open_model = DualOutputSwinUNETR(open_plan).eval()
    gated_model = DualOutputSwinUNETR(gated_plan).eval()
    gated_model.load_state_dict(open_model.state_dict())
    hu = 40.0 + 15.0 * torch.randn(1, 1, 64, 64, 96)  # soft tissue ...
    hu[..., :24] += 400.0  # ... bone (~440 HU) ...
    hu[..., 24:40] -= 160.0  # ... fat (~-120 HU, inside the gate) ...
    hu[:, :, :16, :, 40:] = -900.0  # ... and air
    lo, hi = open_plan.hu_window
    image = ((hu - lo) / (hi - lo)).clamp(0.0, 1.0)
    opened, _ = predict_volume(open_model, image, open_plan)
    gated, _ = predict_volume(gated_model, image, gated_plan)
    soft = ((hu >= -150.0) & (hu <= 200.0))[0, 0]
    assert DualOutputSwinUNETR.node_mask(opened)[0][~soft].float().mean() > 0.5  # ungated: bone and air "nodes"
    assert not DualOutputSwinUNETR.node_mask(gated)[0][~soft].any()
    assert torch.allclose(gated[0, :2][:, soft], opened[0, :2][:, soft], atol=1e-5)
    assert DualOutputSwinUNETR.node_mask(gated)[0][soft].float().mean() > 0.5
    # training learns from the contours ungated (the preprocessing confines them to soft tissue)
    gated_model.train()
    open_model.train()
    patch = image[..., :64]
    with torch.no_grad():
        assert torch.equal(gated_model.voxel_outputs(patch)[:, :2], open_model.voxel_outputs(patch)[:, :2])
    with pytest.raises(ValueError, match="node_hu_range"):
        get_plan("test-tiny", node_hu_range=(200.0, -150.0))
    assert get_plan("test-tiny", node_hu_range=()).node_hu_range == ()  # [] turns a preset's gate off


def test_found_nodes_are_kept_to_the_neck_beside_the_bodys_midline_and_not_the_shoulders(tmp_path):
    """plan.node_max_lateral_mm: farther to the left or right of the body's midline on its slice (the shoulders) no
    voxel is node and none carries pooling weight; nearer, the segmentation is the ungated model's. The midline
    follows a body shifted on the table; a table apart from the body does not move it. The read-out refit's features
    (ecefl.readout.case_features) see the same gate: the logit `ecefl infer` pools is their linear function."""
    import nibabel as nib
    import numpy as np
    from ecefl import readout as R
    from ecefl.engine import neck_region, predict_volume
    plan = get_plan("test-tiny", node_prior=0.9, node_max_lateral_mm=60.0, tta_flip=True)
    spacing = plan.spacing[0]
    x_mm = (torch.arange(96) * spacing).view(-1, 1, 1)
    z = torch.arange(64).view(1, 1, -1)
    midline = torch.where(z < 32, 110.0, 125.0)  # the body lies 15 mm further left on the upper slices
    half_width = torch.where(z < 32, 105.0, 45.0)  # shoulders (105 mm each side) below, the neck (45 mm) above
    body = ((x_mm - midline).abs() <= half_width) & (torch.arange(64).view(1, -1, 1) >= 8)
    torch.manual_seed(5)
    image = torch.where(body, 0.4 + 0.1 * torch.rand(96, 64, 64), torch.tensor(0.0))
    image[:, :3, :] = 0.5  # the table: wide, below the body, not touching it
    image = image[None, None]
    lateral = ((x_mm - midline).abs() > 60.0).expand(96, 64, 64)
    assert torch.equal(neck_region(image, plan)[0, 0], ~lateral)
    assert neck_region(image, plan.with_overrides(node_max_lateral_mm=0.0)) is None  # 0: off
    model = DualOutputSwinUNETR(plan).eval()  # node_prior 0.9: untrained, it calls most voxels node
    ungated = DualOutputSwinUNETR(plan.with_overrides(node_max_lateral_mm=0.0)).eval()
    ungated.load_state_dict(model.state_dict())
    out, prob = predict_volume(model, image, plan)
    ref, _ = predict_volume(ungated, image, plan)
    nodes, ref_nodes = DualOutputSwinUNETR.node_mask(out)[0], DualOutputSwinUNETR.node_mask(ref)[0]
    assert ref_nodes[lateral & body].float().mean() > 0.5 and not nodes[lateral].any()
    # no pooling weight in the shoulders beyond the perinodal shell of the nodes just inside the limit (3D: not
    # within the shell's reach of the slices where the midline jumps)
    beyond_shell = (((x_mm - midline).abs() > 60.0 + plan.shell_mm + spacing) & ((z - 31.5).abs() > 4)).expand(96, 64, 64)
    assert out[0, 2][beyond_shell].abs().max() < 1e-6 < ref[0, 2][beyond_shell & body].abs().max()
    assert torch.allclose(out[0, :2][:, ~lateral], ref[0, :2][:, ~lateral], atol=1e-5)  # the neck as it was
    # the read-out refit reads the CT file through the same gate: logit = [z, s, 1] . theta
    lo, hi = plan.hu_window
    hu = (image[0, 0] * (hi - lo) + lo).numpy().astype(np.float32)
    nib.save(nib.Nifti1Image(hu, np.diag([spacing] * 3 + [1.0])), tmp_path / "ct.nii.gz")
    features = R.case_features(model, [{"image": str(tmp_path / "ct.nii.gz")}], plan)
    logit = float((R.design(features) @ model.readout_parameters().double().numpy())[0])
    assert logit == pytest.approx(float(torch.logit(torch.tensor(prob, dtype=torch.float64))), abs=1e-3)
    ref_features = R.case_features(ungated, [{"image": str(tmp_path / "ct.nii.gz")}], plan)
    assert np.abs(ref_features - features).max() > 1e-3
    with pytest.raises(ValueError, match="node_max_lateral_mm"):
        get_plan("test-tiny", node_max_lateral_mm=-1.0)
