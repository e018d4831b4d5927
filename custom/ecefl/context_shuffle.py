"""Context shuffle: the neck around a training crop's nodes rearranged, the nodes and their surroundings kept.

A network trained on one generator's necks finds nodes only in a neck arranged like those: nodes of a hospital drawn
by another generator scored a median node probability of 0.19 in their own necks and 0.79 when moved into ours, and
ours fell from 1.00 to 0.60 when moved into theirs (docs/BENCHMARKS.md, session 39). Here the crop is cut into
blocks; the blocks away from every node trade places at random, so the anatomy around a node differs each time while
each block's tissue stays real CT. A context-free feature (a soft-tissue nodule in fat) then has to carry the
decision. Blocks of crops without a node are shuffled all the same.
"""
from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage


class RandContextShuffled(RandomizableTransform, MapTransform):
    """With probability prob, the blocks (block voxels per axis) of the image (channel 0) that hold no voxel within
    keep_voxels of the label are permuted among themselves; the label and every block near a node stay as they
    were. The crop's size must be a multiple of block on each axis (the presets' 64^3 crops and 16)."""

    def __init__(self, keys=("image", "label"), prob: float = 0.5, block: int = 16, keep_voxels: int = 4):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.block, self.keep_voxels = block, keep_voxels

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        image_key, label_key = self.keys
        image = d[image_key]
        img = np.asarray(image[0].detach().cpu() if isinstance(image, torch.Tensor) else image[0])
        lab = np.asarray(d[label_key][0].detach().cpu() if isinstance(d[label_key], torch.Tensor)
                         else d[label_key][0]) > 0.5
        shuffled = self.shuffle(img, lab)
        if isinstance(image, torch.Tensor):
            out = image.clone()
            out[0] = torch.as_tensor(shuffled, dtype=image.dtype)
        else:
            out = shuffled[None].astype(image.dtype)
        d[image_key] = out
        return d

    def shuffle(self, img: np.ndarray, lab: np.ndarray) -> np.ndarray:
        b = self.block
        if any(s % b for s in img.shape):
            raise ValueError(f"context shuffle needs a crop whose size {img.shape} is a multiple of {b} per axis")
        near = ndimage.binary_dilation(lab, iterations=self.keep_voxels) if lab.any() else lab
        grid = [s // b for s in img.shape]
        blocks = [(i, j, k) for i in range(grid[0]) for j in range(grid[1]) for k in range(grid[2])
                  if not near[i * b:(i + 1) * b, j * b:(j + 1) * b, k * b:(k + 1) * b].any()]
        order = self.R.permutation(len(blocks))
        out = img.copy()
        for (i, j, k), src in zip(blocks, order):
            si, sj, sk = blocks[src]
            out[i * b:(i + 1) * b, j * b:(j + 1) * b, k * b:(k + 1) * b] = \
                img[si * b:(si + 1) * b, sj * b:(sj + 1) * b, sk * b:(sk + 1) * b]
        return out
