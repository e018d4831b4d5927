"""`ecefl export-bundle`: the global model as a MONAI bundle that MONAI's bundle runner loads without ecefl.

The bundle's network is MONAI's own SwinUNETR (the segmentation part of the dual-output model, same weights),
with the plan's preprocessing (RAS, spacing, HU window), the same sliding-window inference, and the mask
inverted back to the input image's grid. The ECE head needs ecefl's pooling code, so the full dual-output
checkpoint travels beside it (models/ecefl_dual.pt) for `ecefl infer`.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import monai
import torch

from .checkpoint import load_checkpoint, node_threshold_of
from .data import preprocessing_spec
from .engine import LEFT_RIGHT


def inference_config(plan, node_threshold: float = 0.5) -> dict:
    # node probability (softmax; 0 outside the model's HU gate, in window units of the image), resampled linearly
    # to the input's grid and thresholded there at the model file's node_threshold, as `ecefl infer` masks
    prob = "torch.softmax(d['pred'], dim=0)[1:2]"
    if plan.node_hu_range:
        lo, hi = plan.hu_window
        low, high = ((v - lo) / (hi - lo) for v in plan.node_hu_range)
        prob += f" * ((d['image'] >= {low!r}) & (d['image'] <= {high!r}))"
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "datalist": "$list(sorted(glob.glob(@dataset_dir + '/*.nii.gz')))",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "SwinUNETR", "in_channels": 1, "out_channels": 2,
                        "feature_size": plan.feature_size, "depths": list(plan.depths),
                        "num_heads": list(plan.num_heads), "use_v2": plan.use_v2,
                        "window_size": plan.window_size, "spatial_dims": 3},
        "network": "$@network_def.to(@device)",
        # the training preprocessing itself (ecefl.data.preprocessing_spec), so the bundle cannot drift from it
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing_spec(plan, ["image"])},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]",
                    "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                       "num_workers": 0},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": list(plan.patch_size),
                    "sw_batch_size": plan.sw_batch_size, "overlap": plan.sw_overlap, "mode": plan.sw_blend},
        "postprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "Lambda", "func": f"$lambda d: {{**d, 'pred': {prob}}}"},
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "Lambda", "func": f"$lambda d: {{**d, 'pred': (d['pred'] > {node_threshold!r}).float()}}"},
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "nodes",
             "output_dtype": "$numpy.uint8", "resample": False, "separate_folder": False},
        ]},
        # plan.tta_flip: the outputs averaged with the mirror of the left-right mirrored CT's, as `ecefl infer`
        "predict": (f"$lambda x: (@inferer(x, @network) + torch.flip(@inferer(torch.flip(x, dims=[{LEFT_RIGHT}]), "
                    f"@network), dims=[{LEFT_RIGHT}])) / 2") if plan.tta_flip else "$lambda x: @inferer(x, @network)",
        "initialize": ["$torch.set_grad_enabled(False)",
                       "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', "
                       "map_location=@device, weights_only=True))", "$@network.eval()"],
        # plain expressions (no ignite engine): predict each image, invert to its grid and save
        "run": ["$[@postprocessing({**d, 'pred': @predict(d['image'][None].to(@device))[0].cpu()}) "
                "for d in @dataset]"],
    }


def export_bundle(model_path, out) -> Path:
    out = Path(out)
    ckpt = load_checkpoint(model_path, kind="dual")
    plan = ckpt["plan"]
    for sub in ("configs", "models", "docs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    seg_state = {k[len("net."):]: v for k, v in ckpt["model"].items() if k.startswith("net.")}
    torch.save(seg_state, out / "models" / "model.pt")
    shutil.copy2(model_path, out / "models" / "ecefl_dual.pt")
    config = inference_config(plan, node_threshold_of(ckpt))
    (out / "configs" / "inference.json").write_text(json.dumps(config, indent=1))
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0", "changelog": {"0.1.0": "exported by ecefl"},
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": __import__("numpy").__version__, "required_packages_version": {},
        "name": "ECE-FL nodal region segmentation (SwinUNETR)",
        "task": "Segmentation of the gross nodal region on head-and-neck CT",
        "description": "Segmentation part of the federated dual-output SwinUNETR of ECE-FL; the ECE classification "
                       "(mask-guided pooling) runs with `ecefl infer --model models/ecefl_dual.pt`.",
        "authors": "ECE-FL contributors", "copyright": "Apache-2.0",
        "intended_use": "Research only; trained on the federation's data, not a medical device.",
        "ecefl": {"plan": plan.to_dict(), "threshold": ckpt.get("threshold"),
                  "node_threshold": node_threshold_of(ckpt)},
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": 1,
                                 "spatial_shape": list(plan.patch_size), "dtype": "float32",
                                 "value_range": list(plan.hu_window), "is_patch_data": True,
                                 "channel_def": {"0": "CT"}}},
            "outputs": {"pred": {"type": "image", "format": "segmentation", "num_channels": 2,
                                 "spatial_shape": list(plan.patch_size), "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {"0": "background", "1": "nodal region"}}},
        },
    }
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
    gate_text = (f", only at CT values within {list(plan.node_hu_range)} HU: soft tissue" if plan.node_hu_range
                 else "")
    flip_text = " averaged with those of the left-right mirrored CT" if plan.tta_flip else ""
    neck_text = (f"\n`ecefl infer` also keeps found nodes within {plan.node_max_lateral_mm:g} mm of the body's midline "
                 "(no cervical node lies in the shoulders); this bundle does not, so on a planning CT with the "
                 "shoulders in view it may mark nodes there." if plan.node_max_lateral_mm else "")
    (out / "docs" / "README.md").write_text(f"""# ECE-FL nodal region segmentation bundle

MONAI SwinUNETR (feature_size {plan.feature_size}, depths {list(plan.depths)}) from an ECE-FL global model.
Input: CT NIfTI in HU (any orientation/spacing); it is reoriented to RAS, resampled to {list(plan.spacing)} mm,
windowed {list(plan.hu_window)} HU -> [0, 1], segmented with {list(plan.patch_size)} sliding windows{flip_text} (nodes: node
probability{gate_text}, resampled linearly back to the input's grid and thresholded there at
{node_threshold_of(ckpt):g}), and the mask is written as `<name>_nodes.nii.gz`.{neck_text}

    python -m monai.bundle run --config_file configs/inference.json --bundle_root . --dataset_dir /path/to/niftis

The ECE decision (mask-guided pooling over the predicted nodes) needs ECE-FL:
`ecefl infer --model models/ecefl_dual.pt --dicom PATIENT_DIR --out OUT`. Research use only.
""")
    return out
