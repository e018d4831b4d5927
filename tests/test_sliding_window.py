"""Whole-volume inference skips windows that hold only air, with the outputs inside the body unchanged."""
from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference

from ecefl.engine import predict_volume
from ecefl.model import DualOutputSwinUNETR
from ecefl.plan import get_plan


def test_air_windows_are_skipped_and_body_outputs_are_those_of_the_full_sliding_window():
    torch.manual_seed(0)
    plan = get_plan("test-tiny", sw_overlap=0.25)
    model = DualOutputSwinUNETR(plan).eval()
    # a wide field of view: a 60-voxel "neck" (soft tissue with noise) in a 200 x 200 x 80 volume of air
    image = torch.zeros(1, 1, 200, 200, 80)
    body = torch.zeros_like(image, dtype=torch.bool)
    body[..., 70:130, 70:130, 10:70] = True
    image[body] = (0.45 + 0.1 * torch.rand(int(body.sum()))).clamp(0, 1)
    calls = []
    real = model.voxel_outputs
    model.voxel_outputs = lambda x, r=None: (calls.append(x.shape[0]), real(x, r))[1]
    out, prob = predict_volume(model, image, plan)
    model.voxel_outputs = real
    with torch.no_grad():
        full = sliding_window_inference(image, roi_size=plan.patch_size, sw_batch_size=1,
                                        predictor=lambda x: model.voxel_outputs(x).float(),
                                        overlap=plan.sw_overlap, mode="constant")
    n_windows = 5 * 5 * 2  # MONAI's grid for 200 x 200 x 80 at 64^3 and overlap 0.25
    assert 0 < sum(calls) < n_windows / 2, calls
    inside = body[0, 0]
    for c in range(6):
        torch.testing.assert_close(out[0, c][inside], full[0, c][inside], rtol=0, atol=1e-5)
