"""Dual-output SwinUNETR (MONAI) with mask-guided pooling, and its SimMIM-style masked-image pretrainer.

DualOutputSwinUNETR: MONAI's SwinUNETR segments the nodal region; a per-voxel evidence head on the last decoder
features (and the windowed CT value) scores each voxel, and the case logit is the evidence averaged over the pooling region
    a(v) = p_nodes(v) + shell_weight * shell(v),    logit = sum_v a(v) e(v) / sum_v a(v) + bias,
so the decision is grounded in the predicted nodes (and their perinodal border, where ECE lives). With plan
readout_fat_hu the CT value's part of e is averaged apart, over the fat voxels of the found nodes (fat stranding:
how dense the perinodal fat is), and added to the logit with a bias of its own. Only voxels predicted
as node with p >= 0.5 enter p_nodes; a case with no such voxel is pooled over the soft probability instead. The evidence map a(v) e(v) / sum a is each voxel's exact contribution to the logit. Both sums are additive, so sliding-window
inference over a whole neck gives the same pooling as one big patch.

MaskedPretrainer: the same SwinUNETR (same parameter names, so the encoder transfers key by key), random 3D
cubes masked: the masked voxels are blanked in the input and their patch tokens replaced by a learned mask token,
a light head reconstructs the voxels from the two deepest encoder stages (plan mae_reconstruct "deep") or the whole
SwinUNETR decoder does ("unet", transferred with the encoder), loss on masked voxels only.
"""
from __future__ import annotations

import contextlib
import logging
import math

import torch
import torch.nn.functional as F
from einops import rearrange
from monai.networks.nets import SwinUNETR
from torch import nn

from .plan import Plan

_log = logging.getLogger(__name__)

ENCODER_PREFIX = "net.swinViT."
NODE_GATE_MARGIN = 20.0  # logits: p(node) ~ 2e-9 where the HU gate closes


def _swin(plan: Plan) -> SwinUNETR:
    return SwinUNETR(in_channels=1, out_channels=2, feature_size=plan.feature_size, depths=tuple(plan.depths),
                     num_heads=tuple(plan.num_heads), use_v2=plan.use_v2, window_size=plan.window_size,
                     spatial_dims=3)


def _as_plan(plan: Plan | dict) -> Plan:
    """Job configs (NVFlare persistor) pass the plan as a JSON dict; Python callers pass a Plan."""
    return plan if isinstance(plan, Plan) else Plan.from_dict(plan)


@contextlib.contextmanager
def seeded_init(seed: int):
    """A model's initial weights drawn from the plan's seed, whoever builds it (a site, the centralised CLI, or
    NVFlare's persistor in the server process, which has no seed of its own), and the caller's random stream left
    as it was: so one seed gives one federated run (docs/BENCHMARKS.md)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def compute_layout(model: nn.Module, plan: Plan):
    """The model's 5D weights in channels-last-3d memory inside the block when plan.channels_last, and back in the
    standard layout after it, so state dicts, checkpoints and federated messages never carry the compute layout.
    Parameters keep their identity (an optimiser built on them stays valid)."""
    if not plan.channels_last:
        yield model
        return
    model.to(memory_format=torch.channels_last_3d)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def _scale_grad(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity forward; the gradient flowing back is multiplied by `scale` (0: none, as detach)."""
    if scale == 1.0:
        return x
    if scale == 0.0:
        return x.detach()
    return _GradScale.apply(x, scale)


class DualOutputSwinUNETR(nn.Module):
    def __init__(self, plan: Plan | dict):
        super().__init__()
        plan = _as_plan(plan)
        with seeded_init(plan.seed):
            self.plan = plan
            fs = plan.feature_size
            self.net = _swin(plan)
            # Prior for a rare foreground (nodes are ~1 % of a patch), as in RetinaNet: an untrained network predicts
            # "no node" instead of p = 0.5 everywhere, where the p >= 0.5 pooling gate would flip on float noise.
            with torch.no_grad():
                self.net.out.conv.conv.bias.copy_(torch.tensor([0.0, math.log(plan.node_prior / (1 - plan.node_prior))]))
            # per-voxel evidence from the last decoder features plus the CT value itself, as the windowed value and as
            # soft HU bins (fat, stranded fat, soft tissue, necrosis): instance norm in the decoder blunts absolute HU,
            # while perinodal fat stranding and a lost fat plane are absolute HU changes that a radiologist reads off
            # the window; a 3x3x3 first layer sees the voxel's neighbourhood (stranding is a texture, a margin an edge)
            self.register_buffer("hu_bin_centres", torch.tensor(plan.evidence_hu_bins, dtype=torch.float32).view(1, -1, 1, 1, 1),
                                 persistent=False)
            n_in = fs + 1 + len(plan.evidence_hu_bins)
            self.evidence_head = nn.Sequential(nn.Conv3d(n_in, fs, 3, padding=1), nn.GELU(), nn.Conv3d(fs, 1, 1))
            if plan.readout_hu_features:  # the read-out's direct weights on the CT inputs: set by the refit only
                # (pooled over the perinodal fat with readout_fat_hu, which then has a bias of its own)
                self.readout_hu = nn.Conv3d(1 + len(plan.evidence_hu_bins), 1, 1, bias=bool(plan.readout_fat_hu))
                for t in self.readout_hu.parameters():
                    nn.init.zeros_(t)
                    t.requires_grad_(False)
            self.cls_bias = nn.Parameter(torch.zeros(1))
            # the average training case's read-out features and 1 (the design row [features, 1]), set by the
            # refit (ecefl.readout.average_case); all 0 until then. Travels with the weights
            self.register_buffer("readout_baseline", torch.zeros(self.readout_parameters().numel()))
            radius = max(1, round(plan.shell_mm / min(plan.spacing)))
            self.shell_kernel = 2 * radius + 1
            self._decoder_features = None
            # The last decoder block's output is the feature map the evidence head reads; a hook keeps MONAI's
            # forward untouched.
            self.net.decoder1.register_forward_hook(self._keep_features)

    def _keep_features(self, module, inputs, output):
        self._decoder_features = output

    def pooling_region(self, node_prob: torch.Tensor) -> torch.Tensor:
        shell = F.max_pool3d(node_prob, self.shell_kernel, stride=1, padding=self.shell_kernel // 2) - node_prob
        return node_prob + self.plan.shell_weight * shell.clamp_min(0)

    def _window_to_hu(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = self.plan.hu_window
        return x * (hi - lo) + lo

    def gate_nodes_by_hu(self, seg: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits with every voxel outside plan.node_hu_range read as certain background (its node
        logit NODE_GATE_MARGIN below the background logit). Depends on the voxel alone, so the sliding window's
        and the flip's averages keep the gate."""
        hu = self._window_to_hu(x)
        low, high = self.plan.node_hu_range
        return self.close_node_gate(seg, (hu < low) | (hu > high))

    @staticmethod
    def close_node_gate(seg: torch.Tensor, closed: torch.Tensor) -> torch.Tensor:
        """Segmentation logits with every voxel where `closed` holds read as certain background: its node logit
        NODE_GATE_MARGIN below the background logit (the HU gate, the neck gate)."""
        node = torch.where(closed, seg[:, :1] - NODE_GATE_MARGIN, seg[:, 1:2])
        return torch.cat([seg[:, :1], node], dim=1)

    def _hu_inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """HU of x (window units -> HU) and the evidence's CT inputs: the windowed value and its soft HU bins."""
        hu = self._window_to_hu(x)
        k = self.plan.evidence_hu_smoothing
        if k > 1:  # read HU as a radiologist's ROI mean: the local mean, so scanner noise does not blur the bins
            hu = F.avg_pool3d(hu, k, stride=1, padding=k // 2, count_include_pad=False)
        hu_bins = torch.sigmoid((hu - self.hu_bin_centres.to(x.dtype)) / self.plan.evidence_hu_bin_width)
        return hu, torch.cat([x, hu_bins], dim=1)

    @property
    def n_output_channels(self) -> int:
        """voxel_outputs' channels: 6, + 2 with evidence_reference, + 2 with readout_fat_hu."""
        return 6 + 2 * bool(self.plan.evidence_reference) + 2 * bool(self.plan.readout_fat_hu)

    def perinodal_fat(self, x: torch.Tensor, node: torch.Tensor) -> torch.Tensor:
        """Weight of each voxel in the fat average (readout_fat_hu): the node weight where the CT value is fat."""
        hu = self._window_to_hu(x)
        low, high = self.plan.readout_fat_hu
        return node * ((hu >= low) & (hu <= high)).to(node.dtype)

    def voxel_outputs(self, x: torch.Tensor, region_mask: torch.Tensor | None = None,
                      body_grad: bool = True, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Channels (all but the first two additive over windows): 2 segmentation logits, pooling weight a,
        weighted evidence a*e, and the same two over the ungated soft region (used when no voxel is a node);
        with evidence_reference also the reference tissue r and r*e; with readout_fat_hu, last, the perinodal fat
        f (fat voxels of the confident nodes, no shell) and f*d, d the CT inputs' term (then not part of e).
        body_grad False: the SwinUNETR runs without autograd (classifier re-training: only the head learns).
        allowed (B1..., bool; engine.neck_region): where a node may lie; elsewhere the node gate closes as the HU
        gate's does (the neck beside the body's midline, plan.node_max_lateral_mm)."""
        with contextlib.nullcontext() if body_grad else torch.no_grad():
            seg = self.net(x)
            if self.plan.node_hu_range and not self.training:
                seg = self.gate_nodes_by_hu(seg, x)
            if allowed is not None:
                seg = self.close_node_gate(seg, ~allowed)
        features = _scale_grad(self._decoder_features, self.plan.cls_feature_grad)
        hu, hu_inputs = self._hu_inputs(x)
        hidden = self.evidence_head[1](self.evidence_head[0](torch.cat([features, hu_inputs.to(features.dtype)], 1)))
        # the read-out (the head's last layer, linear in its hidden features and the CT inputs) in fp32 under bf16
        # autocast (cpu_bf16, AMP): the case logit then is exactly the linear function the read-out refit fits
        # (ecefl.readout), to float rounding. Its 1x1 convolutions cost nothing beside the rest
        with torch.autocast(x.device.type, enabled=False):
            evidence = self.evidence_head[2](hidden.float())
            direct = self.readout_hu(hu_inputs.float()) if self.plan.readout_hu_features else None
            if direct is not None and not self.plan.readout_fat_hu:
                evidence = evidence + direct
        if region_mask is None:  # the predicted nodes; detached so the class loss does not bend the contours
            soft = torch.softmax(seg, dim=1)[:, 1:2].detach()
            # only confident node voxels: a faint probability over ~10^5 background voxels would otherwise
            # outweigh the few thousand nodal voxels in the pooled average
            node = soft * (soft >= 0.5)
            weight = self.pooling_region(node)
            soft_weight = self.pooling_region(soft)
        else:  # teacher forcing with the reference ROI early in training
            node = region_mask.float()
            weight = soft_weight = self.pooling_region(node)
        channels = [seg, weight, weight * evidence, soft_weight, soft_weight * evidence]
        if self.plan.evidence_reference:  # fat and soft tissue outside the pooled region: the case's own reference
            tissue = ((hu >= -200.0) & (hu <= 150.0) & (weight < 1e-3)).to(evidence.dtype)
            channels += [tissue, tissue * evidence]
        if self.plan.readout_fat_hu:  # fat stranding: the CT inputs averaged over the nodes' fat, apart
            fat = self.perinodal_fat(x, node).float()
            channels += [fat, fat * direct]
        return torch.cat(channels, dim=1)

    @staticmethod
    def _pooling_channels(voxel_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight, weighted evidence) channels that decide the case: the gated region where at least one voxel's
        worth of node was found, else the soft region (a case without a confident node is not scored by the
        bias alone)."""
        found = voxel_out[:, 2:3].flatten(1).sum(1) >= 1.0
        pick = found.view(-1, 1, 1, 1, 1)
        return torch.where(pick, voxel_out[:, 2:3], voxel_out[:, 4:5]), torch.where(pick, voxel_out[:, 3:4],
                                                                                    voxel_out[:, 5:6])

    def pool(self, voxel_out: torch.Tensor) -> torch.Tensor:
        """Case logit (B,) from voxel outputs over any extent (a patch or a stitched whole volume)."""
        return self.evidence_map(voxel_out).flatten(1).sum(1) + self.cls_bias

    @staticmethod
    def node_mask(voxel_out: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
        """(B, ...) voxels whose node probability (softmax of the two segmentation logits) exceeds threshold;
        at 0.5 exactly the argmax."""
        return voxel_out[:, 1] - voxel_out[:, 0] > math.log(threshold / (1.0 - threshold))

    def evidence_map(self, voxel_out: torch.Tensor) -> torch.Tensor:
        """Each voxel's contribution to the logit (sums to logit - bias): the region's weighted evidence over its
        weight, minus (evidence_reference) the reference tissue's evidence over its size, plus (readout_fat_hu) the
        perinodal fat's CT term over its size."""
        def mean_over(weight, weighted):
            return weighted / (weight.flatten(1).sum(1).view(-1, 1, 1, 1, 1) + 1e-3)
        contribution = mean_over(*self._pooling_channels(voxel_out))
        if self.plan.evidence_reference:
            contribution = contribution - mean_over(voxel_out[:, 6:7], voxel_out[:, 7:8])
        if self.plan.readout_fat_hu:
            contribution = contribution + mean_over(voxel_out[:, -2:-1], voxel_out[:, -1:])
        return contribution

    @torch.no_grad()
    def attribution(self, voxel_out: torch.Tensor) -> torch.Tensor:
        """Each voxel's evidence against the average training case (what the report and `ecefl infer` show): as
        evidence_map, but each region's voxels carry the difference between their evidence and the evidence the
        average case's features give, so a stranded perinodal fat shows red and a clean one blue instead of every
        region voxel carrying its share of constant terms. Sums to the logit minus the average case's logit for the
        same regions (reference_logit). Before a refit has set the average case: evidence_map itself."""
        base = self.readout_baseline.to(voxel_out.dtype)
        if float(base[-1]) < 0.5:  # 1 once set
            return self.evidence_map(voxel_out)
        share = self.readout_parameters().to(base) * base  # theta_j * mean feature_j; the bias last
        fat = share[self.plan.feature_size:-2].sum() if self.plan.readout_fat_hu else share.new_zeros(())
        region = share[:-1].sum() - fat

        def per_voxel(weight):  # weight / (its sum + eps): how each region spreads a case-level term
            return weight / (weight.flatten(1).sum(1).view(-1, 1, 1, 1, 1) + 1e-3)
        out = self.evidence_map(voxel_out) - per_voxel(self._pooling_channels(voxel_out)[0]) * region
        if self.plan.readout_fat_hu:
            out = out - per_voxel(voxel_out[:, -2:-1]) * fat
        return out

    @torch.no_grad()
    def reference_logit(self, voxel_out: torch.Tensor) -> torch.Tensor:
        """(B,) the logit minus the attribution's sum: the average training case's logit over these regions."""
        return self.pool(voxel_out) - self.attribution(voxel_out).flatten(1).sum(1)

    # ---------------------------------------------------------------- the case read-out as a linear model
    # The case logit is linear in the pooled hidden features of the evidence head: with e(v) = w . h(v) + b0,
    #     logit = sum_v a(v) e(v) / (sum_v a + eps) + bias = w . z + b0 * s + bias,
    #     z = sum_v a(v) h(v) / (sum_v a + eps),   s = sum_v a / (sum_v a + eps).
    # So the read-out (w, b0, bias) can be refitted exactly as a logistic regression on (z, s) with the body fixed
    # (ecefl.readout: a federated Newton refit from the sites' summed gradients and Hessians). With
    # readout_hu_features, h(v) also holds the voxel's CT inputs c(v) and w their weights u (e = w.h + u.c + b0).
    @torch.no_grad()
    def readout_channels(self, x: torch.Tensor, allowed: torch.Tensor | None = None) -> torch.Tensor:
        """Channels additive over windows: gated weight a, a*h, soft weight, soft*h; with evidence_reference also
        the reference tissue r, r*h (h: the head's fs hidden features, + the 7 CT inputs with readout_hu_features)."""
        hidden = {}
        handle = self.evidence_head[1].register_forward_hook(lambda m, i, o: hidden.__setitem__("h", o))
        try:
            out = self.voxel_outputs(x, None, body_grad=False, allowed=allowed)
        finally:
            handle.remove()
        h = hidden["h"].float()
        ct = self._hu_inputs(x)[1].float() if self.plan.readout_hu_features else None
        if ct is not None and not self.plan.readout_fat_hu:  # the CT inputs are read-out features too
            h = torch.cat([h, ct], dim=1)
        channels = [out[:, 2:3], out[:, 2:3] * h, out[:, 4:5], out[:, 4:5] * h]
        if self.plan.evidence_reference:
            channels += [out[:, 6:7], out[:, 6:7] * h]
        if self.plan.readout_fat_hu:  # the perinodal fat and its CT inputs, last
            channels += [out[:, -2:-1], out[:, -2:-1] * ct]
        return torch.cat(channels, dim=1)

    def readout_features(self, channels: torch.Tensor) -> torch.Tensor:
        """(B, k + 1): z (k features per voxel: the head's fs hidden ones, + 7 CT inputs with readout_hu_features)
        and s of the region the case is pooled over (the gated one when a node was found); with the reference
        tissue (evidence_reference), minus its z and s: the logit subtracts its evidence. With readout_fat_hu the 7
        CT inputs are the perinodal fat's, followed by its s: (z, c_fat, s_fat, s), theta's order."""
        def mean_and_size(group):  # a group's channels: weight, then weight * feature
            return torch.cat([group[:, 1:], group[:, :1]], dim=1) / (group[:, :1] + 1e-3)
        sums = channels.flatten(2).sum(2)
        fat = None
        if self.plan.readout_fat_hu:
            n_fat = 2 + len(self.plan.evidence_hu_bins)  # weight, windowed CT value, HU bins
            sums, fat = sums[:, :-n_fat], mean_and_size(sums[:, -n_fat:])
        groups = 3 if self.plan.evidence_reference else 2
        n = sums.shape[1] // groups  # k + 1 channels per group
        region, soft = sums[:, :n], sums[:, n:2 * n]
        found = (region[:, :1] >= 1.0)
        features = mean_and_size(torch.where(found, region, soft))
        if self.plan.evidence_reference:
            features = features - mean_and_size(sums[:, 2 * n:3 * n])
        if fat is not None:
            features = torch.cat([features[:, :-1], fat, features[:, -1:]], dim=1)
        return features

    def _readout_tensors(self) -> list[torch.Tensor]:
        """The read-out's tensors in theta's order (ecefl.readout.READOUT_KEYS): w, [u, [b_fat,]] b0, bias."""
        last = self.evidence_head[2]
        direct = list(self.readout_hu.parameters()) if self.plan.readout_hu_features else []  # weight[, bias]
        return [last.weight, *direct, last.bias, self.cls_bias]

    def readout_parameters(self) -> torch.Tensor:
        """theta = (w, [u, [b_fat,]] b0, bias) with logit = [z, s] . [w, u, b0] + bias; bias last."""
        return torch.cat([t.detach().flatten() for t in self._readout_tensors()])

    @torch.no_grad()
    def set_readout_parameters(self, theta: torch.Tensor) -> None:
        i = 0
        for t in self._readout_tensors():
            t.copy_(theta[i:i + t.numel()].view_as(t).to(t.dtype))
            i += t.numel()

    def forward(self, x: torch.Tensor, region_mask: torch.Tensor | None = None):
        out = self.voxel_outputs(x, region_mask)
        return out[:, :2], self.pool(out), self.evidence_map(out)


class MaskedPretrainer(nn.Module):
    def __init__(self, plan: Plan | dict):
        super().__init__()
        plan = _as_plan(plan)
        with seeded_init(plan.seed):
            self.plan = plan
            fs = plan.feature_size
            full = _swin(plan)
            if plan.mae_reconstruct == "unet":
                # The whole SwinUNETR under the same names, its segmentation output replaced by a 1-channel
                # reconstruction head: encoder, skip blocks and decoder all learn from the masked voxels.
                self.net = full
                self.net.out = nn.Identity()
                self.stride = 1
                self.head = nn.Conv3d(fs, 1, kernel_size=1)
            else:
                # Only the Swin encoder of a SwinUNETR, under the same attribute path, so its keys match the
                # fine-tuning model's "net.swinViT.*" and no unused decoder weights are sent around in FL rounds.
                self.net = nn.Module()
                self.net.swinViT = full.swinViT
                self.stride = 16  # reconstruct from stage 3 (1/16) and the upsampled stage 4 (1/32)
                self.head = nn.Conv3d(8 * fs + 16 * fs, self.stride ** 3, kernel_size=1)
            self.normalize = full.normalize
            self.mask_token = nn.Parameter(torch.zeros(1, fs, 1, 1, 1))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
            self._token_mask = None
            self.net.swinViT.patch_embed.register_forward_hook(self._mask_tokens)

    def _mask_tokens(self, module, inputs, output):
        if self._token_mask is None:
            return output
        m = self._token_mask.to(output.dtype)
        return output * (1 - m) + self.mask_token.to(output.dtype) * m

    def random_mask(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B,1,D,H,W) 0/1 voxel mask made of mae_cube^3 cubes, mae_mask_ratio of them masked per sample."""
        b = x.shape[0]
        cube = self.plan.mae_cube
        grid = [s // cube for s in x.shape[2:]]
        n = grid[0] * grid[1] * grid[2]
        k = int(round(self.plan.mae_mask_ratio * n))
        scores = torch.rand(b, n, generator=generator, device="cpu")
        idx = scores.argsort(dim=1)[:, :k]
        flat = torch.zeros(b, n)
        flat.scatter_(1, idx, 1.0)
        m = flat.view(b, 1, *grid)
        for axis in (2, 3, 4):
            m = m.repeat_interleave(cube, dim=axis)
        return m.to(x.device)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None):
        mask = self.random_mask(x) if mask is None else mask
        x_blank = x * (1 - mask)  # the raw input path never sees a masked voxel
        patch = self.net.swinViT.patch_embed.patch_size[0]
        self._token_mask = mask[:, :, ::patch, ::patch, ::patch]
        try:
            if self.plan.mae_reconstruct == "unet":  # the skip blocks read x_blank too: nothing masked leaks
                pred = self.head(self.net(x_blank))
            else:
                hidden = self.net.swinViT(x_blank, self.normalize)
                deep = F.interpolate(hidden[4], scale_factor=2, mode="nearest")
                pred = self.head(torch.cat([hidden[3], deep], dim=1))
        finally:
            self._token_mask = None
        s = self.stride
        recon = rearrange(pred, "b (p1 p2 p3) d h w -> b 1 (d p1) (h p2) (w p3)", p1=s, p2=s, p3=s)
        loss = ((recon - x).abs() * mask).sum() / mask.sum().clamp_min(1.0)
        return loss, recon, mask


def encoder_keys(state: dict) -> list[str]:
    return [k for k in state if k.startswith(ENCODER_PREFIX)]


def pretrained_keys(target: dict, source_state: dict) -> list[str]:
    """The fine-tuning model's tensors a pretraining provides: the Swin encoder, and with a whole-U-Net
    pretraining (mae_reconstruct "unet") every SwinUNETR tensor but the segmentation output as well."""
    if not any(k.startswith("net.") and not k.startswith(ENCODER_PREFIX) for k in source_state):
        return encoder_keys(target)
    return [k for k in target if k.startswith("net.") and not k.startswith("net.out.")]


def load_encoder(model: nn.Module, source_state: dict, source_name: str, log=_log.info) -> int:
    """Copy every pretrained tensor key by key; fail naming what is missing or mis-shaped (never strict=False)."""
    target = model.state_dict()
    keys = pretrained_keys(target, source_state)
    missing = [k for k in keys if k not in source_state]
    mismatched = [k for k in keys if k in source_state and tuple(source_state[k].shape) != tuple(target[k].shape)]
    if missing or mismatched:
        raise ValueError(f"cannot initialise the model from {source_name}: {len(missing)} expected pretrained "
                         f"tensors missing (e.g. {missing[:3]}), {len(mismatched)} with another shape "
                         f"(e.g. {mismatched[:3]}); was it pretrained with another preset/feature_size?")
    for k in keys:
        target[k] = source_state[k].detach().clone().to(target[k].dtype)
    model.load_state_dict(target, strict=True)
    after = model.state_dict()
    loaded = sum(1 for k in keys if torch.equal(after[k], source_state[k].to(after[k].dtype)))
    if loaded != len(keys):
        raise RuntimeError(f"only {loaded}/{len(keys)} pretrained tensors took the pretrained values")
    what = "encoder" if len(keys) == len(encoder_keys(target)) else "encoder and decoder"
    log(f"initialized {loaded}/{len(keys)} {what} tensors from {source_name}")
    return loaded
