"""Appearance randomisation against a network that reads the neck around a node as the node's cue.

GIN-IPA (Ouyang et al., "Causality-inspired single-source domain generalization for medical image segmentation",
IEEE TMI 2022): a shallow convolutional network with random weights remaps the crop's intensities while keeping its
structures (GIN); two such remappings blended by a smooth random mask give different parts of the crop different
appearances (IPA), so the look of the tissue around a node no longer predicts whether it is one. Applied to the
network's training input only: the HU gate, the read-out refit and inference read the CT as it is.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import convert_to_dst_type


class RandGinIpad(RandomizableTransform, MapTransform):
    """With probability prob, the image (C, D, H, W) becomes a mask-blended pair of random-convolution remappings,
    renormalised to the crop's own mean and spread of values and clipped to the window [0, 1]."""

    def __init__(self, keys, prob: float, layers: int = 4, channels: int = 2, mask_grid: int = 4):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.layers, self.channels, self.mask_grid = layers, channels, mask_grid

    def _remap(self, x: torch.Tensor) -> torch.Tensor:
        """One GIN draw on x (1, C, D, H, W): random 1- or 3-voxel convolutions with leaky ReLUs between, mixed with
        the input by a random share (Ouyang et al.'s GIN)."""
        y, c_in = x, x.shape[1]
        for i in range(self.layers):
            c_out = x.shape[1] if i == self.layers - 1 else self.channels
            k = int(self.R.choice([1, 3]))
            w = torch.from_numpy(self.R.normal(size=(c_out, c_in, k, k, k)).astype(np.float32))
            b = torch.from_numpy(self.R.normal(size=c_out).astype(np.float32))
            y = F.conv3d(F.pad(y, [k // 2] * 6, mode="replicate"), w, b)  # replicate: no edges at the crop border
            if i < self.layers - 1:
                y = F.leaky_relu(y, 0.2)
            c_in = c_out
        alpha = float(self.R.uniform())
        y = alpha * y + (1 - alpha) * x
        return (y - y.mean()) / (y.std() + 1e-6)

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            img = d[key]
            x = torch.as_tensor(img, dtype=torch.float32).unsqueeze(0)
            mask = torch.from_numpy(self.R.uniform(size=(1, 1, *[self.mask_grid] * 3)).astype(np.float32))
            mask = F.interpolate(mask, size=x.shape[2:], mode="trilinear", align_corners=False)
            y = mask * self._remap(x) + (1 - mask) * self._remap(x)
            y = (y - y.mean()) / (y.std() + 1e-6) * x.std() + x.mean()
            d[key] = convert_to_dst_type(y.clamp(0.0, 1.0)[0], img)[0]
        return d
