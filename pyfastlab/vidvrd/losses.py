"""TSPN training losses (vidvrd.md 4.2 "Losses"): L = w_rel L_rel + w_span L_span + w_pred L_pred.

Each term is a mean over the batch's videos of a per-video mean, so the loss of a padded batch
equals the mean of the per-video losses (whenever the sampling takes everything)."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor
from torch.nn import functional as F

from .config import TSPNConfig
from .features import VideoBatch
from .targets import BatchTargets, assign_anchor_targets, pair_key, predicate_targets, sample_per_group

SMOOTH_L1_BETA = 1.0 / 9


def per_video_mean(values: Tensor, video: Tensor, num_videos: int):
    """([B] mean of `values` [M] per `video` [M], 0 where a video has none; [B] bool has any)."""
    sums = torch.zeros(num_videos, dtype=values.dtype, device=values.device).index_add(0, video, values)
    counts = torch.bincount(video, minlength=num_videos)
    return sums / counts.clamp_min(1).to(values.dtype), counts > 0


def video_mean(values: Tensor, video: Tensor, num_videos: int) -> Tensor:
    """Mean over videos (with ≥ 1 element) of the mean of `values` [M] per `video` [M]; an exact 0
    that keeps the graph when there is no element at all."""
    if values.numel() == 0:
        return values.sum()
    means, has = per_video_mean(values, video, num_videos)
    return means[has].mean()


def relationness_loss(z_raw: Tensor, valid: Tensor, pair_labels: Tensor, object_mask: Tensor, config: TSPNConfig,
                      generator: Optional[torch.Generator] = None) -> Tensor:
    """L_rel. "sampled_logits": BCE-with-logits over S sampled valid pairs per video (all if they
    number ≤ S, else positives up to ⌊fraction·S⌋ filled with random negatives). "dense_sigmoid":
    σ then BCE over all N_v × N_v entries of real objects, diagonal included (official code)."""
    b, n, _ = z_raw.shape
    video = torch.arange(b, device=z_raw.device)[:, None, None].expand(b, n, n)
    if config.rel_loss == "dense_sigmoid":
        real = object_mask[:, :, None] & object_mask[:, None, :]
        prob = torch.sigmoid(z_raw[real])
        return video_mean(F.binary_cross_entropy(prob, pair_labels[real], reduction="none"), video[real], b)
    labels = torch.where(valid, pair_labels.long(), torch.full_like(pair_labels, -1, dtype=torch.long))
    chosen = sample_per_group(labels.flatten(), video.flatten(), config.pair_loss_samples, config.rel_pos_fraction,
                              all_if_fits=True, generator=generator).reshape(b, n, n)
    bce = F.binary_cross_entropy_with_logits(z_raw[chosen], pair_labels[chosen], reduction="none")
    return video_mean(bce, video[chosen], b)


def span_loss(out, targets: BatchTargets, n: int, num_videos: int, config: TSPNConfig,
              generator: Optional[torch.Generator] = None) -> Tensor:
    """L_span: BCE-with-logits on sampled anchors (span_samples per pair, ≤ span_pos_fraction
    positive) plus the mean over positives of SmoothL1(β = 1/9) on (t_c, t_w)."""
    keys = pair_key(out.pair_video, out.pair_sub, out.pair_obj, n)
    assigned = assign_anchor_targets(out.anchors, out.anchor_ok, keys, targets, config.fg_iou, config.bg_iou)
    p, a = assigned.labels.shape
    pair_row = torch.arange(p, device=keys.device)[:, None].expand(p, a)
    chosen = sample_per_group(assigned.labels.flatten(), pair_row.flatten(), config.span_samples,
                              config.span_pos_fraction, generator=generator).reshape(p, a)
    video = out.pair_video[:, None].expand(p, a)
    cls = F.binary_cross_entropy_with_logits(out.objectness[chosen], assigned.labels[chosen].to(out.objectness.dtype),
                                             reduction="none")
    pos = chosen & (assigned.labels == 1)
    reg = F.smooth_l1_loss(out.deltas[pos], assigned.deltas[pos].to(out.deltas.dtype), beta=SMOOTH_L1_BETA,
                           reduction="none").sum(-1)
    if cls.numel() == 0:
        return cls.sum() + reg.sum()
    # per video: its classification mean plus its regression mean (0 without positives)
    cls_v, has = per_video_mean(cls, video[chosen], num_videos)
    reg_v, _ = per_video_mean(reg, video[pos], num_videos)
    return (cls_v + reg_v)[has].mean()


def predicate_loss(out, targets: BatchTargets, n: int, num_videos: int, config: TSPNConfig) -> Tensor:
    """L_pred: BCE-with-logits of every candidate span's predicates (1 iff the pair has a merged
    span of that predicate with tIoU ≥ pred_iou), averaged over predicates, spans, then videos."""
    keys = pair_key(out.pair_video, out.pair_sub, out.pair_obj, n)[out.cand_pair]
    y = predicate_targets(out.cand_span, keys, targets, len(config.predicates), config.pred_iou)
    bce = F.binary_cross_entropy_with_logits(out.pred_logits, y.to(out.pred_logits.dtype), reduction="none").mean(-1)
    return video_mean(bce, out.pair_video[out.cand_pair], num_videos)


def tspn_losses(out, batch: VideoBatch, targets: BatchTargets, config: TSPNConfig,
                generator: Optional[torch.Generator] = None) -> dict:
    """{"loss", "L_rel", "L_span", "L_pred"} of a forward output (`TSPNOutput`)."""
    b, n = batch.labels.shape
    l_rel = relationness_loss(out.z_raw, out.valid, targets.pair_labels.to(out.z_raw.dtype), batch.object_mask,
                              config, generator)
    l_span = span_loss(out, targets, n, b, config, generator)
    l_pred = predicate_loss(out, targets, n, b, config)
    w_rel, w_span, w_pred = config.loss_weights
    return {"loss": w_rel * l_rel + w_span * l_span + w_pred * l_pred, "L_rel": l_rel, "L_span": l_span,
            "L_pred": l_pred}
