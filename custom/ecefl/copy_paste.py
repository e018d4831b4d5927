"""Node copy-paste: a copy of one of the case's own contoured nodes, with the fat around it, pasted elsewhere in the
neck (Ghiasi et al., CVPR 2021; CarveMix, Zhang et al. 2021, for lesions).

Trained on one generator's necks, where every node sits in the same place, a network learns where nodes lie as much
as what they look like: at a hospital drawn by another generator it took vessels at the expected place for nodes
and missed nodes elsewhere (docs/BENCHMARKS.md, session 39). A pasted copy shows the node's own appearance where the
training anatomy never had one. The copy is the case's own node, so the case's ECE label stays true: an ECE-positive
case stays positive, an ECE-negative one gains one more negative node.
"""
from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapTransform, RandomizableTransform
from scipy import ndimage


class RandNodeCopyPasted(RandomizableTransform, MapTransform):
    """With probability prob, one connected component of the label (a node with its perinodal rim), its CT within
    context_voxels around it, is blended into another place of the same volume (label and image channel 0).

    The place: at most 2 % of the voxels the copy covers lie outside the body (CT at or below body_min, in window
    units: air, the airway) and at most 2 % in bone (at or above bone_max), and the copy keeps context_voxels + 1
    off every labelled voxel. The blend weight is 1 on the node and
    falls off smoothly over its context (a Gaussian of sigma 1 voxel), so no seam outlines the copy. Mirrored on
    each axis at random. Nothing is pasted when the volume holds no node or no such place is found in `tries`."""

    def __init__(self, keys=("image", "label"), prob: float = 0.5, context_voxels: int = 2,
                 body_min: float = 0.1, bone_max: float = 0.75, tries: int = 50):
        RandomizableTransform.__init__(self, prob)
        MapTransform.__init__(self, keys)
        self.context_voxels, self.body_min, self.bone_max, self.tries = context_voxels, body_min, bone_max, tries

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        image_key, label_key = self.keys
        image, label = d[image_key], d[label_key]
        img = np.asarray(image[0].detach().cpu() if isinstance(image, torch.Tensor) else image[0], np.float32)
        lab = np.asarray(label[0].detach().cpu() if isinstance(label, torch.Tensor) else label[0]) > 0.5
        pasted = self.paste(img, lab)
        if pasted is None:
            return d
        new_img, new_lab = pasted
        d[image_key] = _like(image, new_img)
        d[label_key] = _like(label, new_lab.astype(np.float32))
        return d

    def paste(self, img: np.ndarray, lab: np.ndarray):
        components, n = ndimage.label(lab)
        if n == 0:
            return None
        pick = int(self.R.randint(1, n + 1))
        node = components == pick
        c = self.context_voxels
        lo = np.maximum(np.argwhere(node).min(0) - c - 2, 0)
        hi = np.minimum(np.argwhere(node).max(0) + c + 3, lab.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        src_img, src_node = img[box].copy(), node[box]
        region = ndimage.binary_dilation(src_node, iterations=c)
        weight = np.maximum(ndimage.gaussian_filter(region.astype(np.float32), 1.0), src_node.astype(np.float32))
        weight[~ndimage.binary_dilation(region, iterations=2)] = 0.0
        for axis in range(3):
            if self.R.random() < 0.5:
                src_img, src_node, weight = (np.flip(a, axis) for a in (src_img, src_node, weight))
        size = np.array(src_img.shape)
        near_nodes = ndimage.binary_dilation(lab, iterations=c + 1)
        if np.any(size >= lab.shape):
            return None
        # centres drawn among the voxels of soft tissue and fat off the nodes: most of the volume is air
        candidates = np.argwhere((img > self.body_min) & (img < self.bone_max) & ~near_nodes)
        if len(candidates) == 0:
            return None
        for _ in range(self.tries):
            centre = candidates[int(self.R.randint(0, len(candidates)))]
            start = np.clip(centre - size // 2, 0, np.array(lab.shape) - size)
            dst = tuple(slice(a, a + k) for a, k in zip(start, size))
            target = img[dst]
            covered = weight > 0
            if near_nodes[dst][covered].any() or np.mean(target[covered] <= self.body_min) > 0.02 or np.mean(
                    target[covered] >= self.bone_max) > 0.02:
                continue
            out_img, out_lab = img.copy(), lab.copy()
            out_img[dst] = weight * src_img + (1.0 - weight) * target
            out_lab[dst] |= src_node
            return out_img, out_lab
        return None


def _like(reference, array: np.ndarray):
    """array shaped as reference's first channel, back in reference's type (tensor or ndarray) with one channel."""
    if isinstance(reference, torch.Tensor):
        out = reference.clone()
        out[0] = torch.as_tensor(array, dtype=reference.dtype)
        return out
    return array[None].astype(reference.dtype)
