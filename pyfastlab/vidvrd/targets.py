"""Training targets of the TSPN (vidvrd.md 4.2, "Losses"; an interpretation).

Ground truth per video becomes merged relation spans: instances of one (subject, object,
predicate) that overlap or touch are merged into their union (VidVRD's 30/15-frame training chunks
become whole runs again). The class-agnostic spans of a pair are its distinct merged spans. Every
assignment below works on flat tensors for the whole batch (pairs are keyed by
(video * N + subject) * N + object), without a Python loop over videos or pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import ops
from .features import VideoBatch


def merge_relation_spans(instances):
    """Merge (subject, object, predicate, begin, end) instances of one key that overlap or touch
    into their union; returns the sorted list of merged tuples."""
    by_key = {}
    for s, o, p, b, e in instances:
        by_key.setdefault((s, o, p), []).append((int(b), int(e)))
    out = []
    for key in sorted(by_key):
        spans = sorted(by_key[key])
        cur_b, cur_e = spans[0]
        for b, e in spans[1:]:
            if b <= cur_e:  # overlapping or touching: the union's end is the larger end
                cur_e = max(cur_e, e)
            else:
                out.append((*key, cur_b, cur_e))
                cur_b, cur_e = b, e
        out.append((*key, cur_b, cur_e))
    return out


@dataclass
class VideoTargets:
    """Merged ground-truth relations of one video, in rows of its `VideoTracks`."""
    subject: Tensor    # [R] int64 row of the subject
    object: Tensor     # [R] int64
    predicate: Tensor  # [R] int64
    span: Tensor       # [R, 2] int64 [begin, end)


def targets_from_annotation(anno: dict, tids: Sequence[int], predicates: Sequence[str]) -> VideoTargets:
    """`VideoTargets` of an annotation in the VidVRD JSON layout; `tids` are the rows' track ids
    (VideoTracks.tids) and `predicates` fixes the predicate ids."""
    row = {tid: k for k, tid in enumerate(tids)}
    pred_id = {p: k for k, p in enumerate(predicates)}
    instances = []
    for r in anno["relation_instances"]:
        if r["predicate"] not in pred_id:
            raise ValueError(f"video {anno['video_id']}: predicate {r['predicate']!r} is not in `predicates`")
        instances.append((row[r["subject_tid"]], row[r["object_tid"]], pred_id[r["predicate"]], r["begin_fid"],
                          r["end_fid"]))
    merged = merge_relation_spans(instances)
    t = torch.tensor(merged, dtype=torch.int64).reshape(-1, 5)
    return VideoTargets(subject=t[:, 0], object=t[:, 1], predicate=t[:, 2], span=t[:, 3:5].contiguous())


@dataclass
class BatchTargets:
    """The batch's merged relations (flat) and its class-agnostic spans, each with its pair key."""
    rel_key: Tensor        # [R] pair key of each merged relation
    rel_predicate: Tensor  # [R]
    rel_span: Tensor       # [R, 2]
    span_key: Tensor       # [G] pair key of each distinct class-agnostic span
    span: Tensor           # [G, 2]
    pair_labels: Tensor    # [B, N, N] float 1 iff a GT relation has subject i and object j

    def to(self, device) -> "BatchTargets":
        return BatchTargets(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def pair_key(video: Tensor, subject: Tensor, obj: Tensor, n: int) -> Tensor:
    return (video * n + subject) * n + obj


def collate_targets(targets: Sequence[VideoTargets], batch: VideoBatch) -> BatchTargets:
    """Flatten per-video targets for `batch` (same video order)."""
    if len(targets) != len(batch.video_ids):
        raise ValueError(f"targets must have one entry per video ({len(batch.video_ids)}), got {len(targets)}")
    b, n = batch.labels.shape
    video = torch.cat([torch.full_like(t.subject, v) for v, t in enumerate(targets)])
    subject = torch.cat([t.subject for t in targets])
    obj = torch.cat([t.object for t in targets])
    rel_key = pair_key(video, subject, obj, n)
    rel_span = torch.cat([t.span for t in targets]).reshape(-1, 2)
    labels = torch.zeros(b * n * n)
    labels[rel_key] = 1.0
    # distinct (key, begin, end): the class-agnostic spans
    distinct = torch.unique(torch.cat([rel_key[:, None], rel_span], 1), dim=0) if rel_key.numel() else \
        torch.zeros(0, 3, dtype=torch.int64)
    return BatchTargets(rel_key=rel_key, rel_predicate=torch.cat([t.predicate for t in targets]), rel_span=rel_span,
                        span_key=distinct[:, 0].contiguous(), span=distinct[:, 1:].contiguous(),
                        pair_labels=labels.reshape(b, n, n))


def rank_in_group(groups: Tensor, keys: Tensor, eligible: Tensor) -> Tensor:
    """Rank of each eligible element by ascending key (ties: lower index) within its group;
    ineligible elements rank after all eligible ones."""
    if groups.numel() == 0:
        return torch.zeros_like(groups)
    keys = torch.where(eligible, keys.double(), torch.full_like(keys, float("inf"), dtype=torch.float64))
    order = torch.sort(keys, stable=True).indices
    order = order[torch.sort(groups[order], stable=True).indices]
    sorted_groups = groups[order]
    counts = torch.bincount(sorted_groups)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(groups)
    rank[order] = torch.arange(groups.numel(), device=groups.device) - starts[sorted_groups]
    return rank


def sample_per_group(labels: Tensor, groups: Tensor, num: int, pos_fraction: float, *, all_if_fits: bool = False,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Bool mask of sampled elements: labels 1 (positive), 0 (negative), -1 (ignored). Per group,
    up to ⌊pos_fraction·num⌋ random positives, then random negatives up to `num` in all. num ≤ 0
    takes every labelled element; all_if_fits takes all of a group whose labelled count ≤ num."""
    labelled = labels >= 0
    if num <= 0 or labels.numel() == 0:
        return labelled
    pos, neg = labels == 1, labels == 0
    size = int(groups.max()) + 1
    n_pos = torch.bincount(groups[pos], minlength=size)
    n_neg = torch.bincount(groups[neg], minlength=size)
    take_pos = n_pos.clamp(max=int(pos_fraction * num))
    take_neg = torch.minimum(n_neg, num - take_pos)
    if all_if_fits:
        fits = n_pos + n_neg <= num
        take_pos = torch.where(fits, n_pos, take_pos)
        take_neg = torch.where(fits, n_neg, take_neg)
    keys = torch.rand(labels.shape, generator=generator, device=labels.device)
    pos_rank = rank_in_group(groups, keys, pos)
    neg_rank = rank_in_group(groups, keys, neg)
    return (pos & (pos_rank < take_pos[groups])) | (neg & (neg_rank < take_neg[groups]))


def _table(keys: Tensor, query: Tensor):
    """For each query key, the indices of `keys` equal to it: [Q, G_max] (padded with 0) and a mask."""
    order = torch.argsort(keys, stable=True)
    sorted_keys = keys[order]
    start = torch.searchsorted(sorted_keys, query)
    count = torch.searchsorted(sorted_keys, query, right=True) - start
    width = int(count.max()) if count.numel() else 0
    slot = torch.arange(width, device=keys.device)
    valid = slot[None] < count[:, None]
    idx = torch.where(valid, start[:, None] + slot[None], torch.zeros_like(valid, dtype=torch.int64))
    return order[idx] if order.numel() else idx, valid


@dataclass
class AnchorTargets:
    labels: Tensor   # [P, A] 1 fg, 0 bg, -1 ignored
    deltas: Tensor   # [P, A, 2] (t_c, t_w), meaningful where labels == 1


def assign_anchor_targets(anchors: Tensor, anchor_ok: Tensor, keys: Tensor, targets: BatchTargets,
                          fg_iou: float, bg_iou: float) -> AnchorTargets:
    """Anchor labels and regression targets of each kept pair (keys [P]) against its
    class-agnostic GT spans: fg if IoU ≥ fg_iou, bg if < bg_iou, else ignored; each GT span's best
    valid anchor (IoU > 0) is forced fg and regresses to that span. anchors: [A, 2] frame spans
    shared by all pairs; anchor_ok: [P, A] False where an anchor does not count (ignored)."""
    p, a = anchor_ok.shape
    idx, valid = _table(targets.span_key, keys)                        # [P, G]
    gt = targets.span.to(anchors.dtype)
    iou = ops.temporal_iou(anchors, gt) if gt.numel() else anchors.new_zeros(a, 0)
    iou_pg = iou[:, idx].permute(1, 0, 2) if idx.numel() else anchors.new_zeros(p, a, 0)  # [P, A, G]
    iou_pg = torch.where(valid[:, None, :] & anchor_ok[:, :, None], iou_pg, torch.full_like(iou_pg, -1.0))
    if iou_pg.shape[2]:
        best, match = iou_pg.max(2)
    else:
        best, match = anchors.new_full((p, a), -1.0), torch.zeros(p, a, dtype=torch.int64)
    labels = torch.full((p, a), -1, dtype=torch.int64)
    labels[best < bg_iou] = 0
    labels[best >= fg_iou] = 1
    if iou_pg.shape[2]:  # force each GT span's best anchor
        gbest, ganchor = iou_pg.max(1)                                 # [P, G]
        force = valid & (gbest > 0)
        pp, gg = force.nonzero(as_tuple=True)
        labels[pp, ganchor[pp, gg]] = 1
        match[pp, ganchor[pp, gg]] = gg
    labels[~anchor_ok] = -1
    matched = gt[idx.gather(1, match)] if idx.numel() else anchors.new_zeros(p, a, 2)   # [P, A, 2]
    ca, wa = (anchors[:, 0] + anchors[:, 1]) / 2, anchors[:, 1] - anchors[:, 0]
    cg, wg = (matched[..., 0] + matched[..., 1]) / 2, (matched[..., 1] - matched[..., 0]).clamp_min(1.0)
    deltas = torch.stack([(cg - ca) / wa, torch.log(wg / wa)], -1)
    return AnchorTargets(labels=labels, deltas=torch.where(labels[..., None] == 1, deltas, torch.zeros_like(deltas)))


def predicate_targets(spans: Tensor, keys: Tensor, targets: BatchTargets, num_predicates: int,
                      iou_threshold: float) -> Tensor:
    """[R, C] multi-label targets of candidate spans [R, 2] of pairs `keys` [R]: predicate c is 1
    iff the pair has a merged c span with tIoU ≥ iou_threshold."""
    out = spans.new_zeros(spans.shape[0], num_predicates, dtype=torch.float32)
    if spans.shape[0] == 0 or targets.rel_key.numel() == 0:
        return out
    iou = ops.temporal_iou(spans.double(), targets.rel_span.double())
    hit = (iou >= iou_threshold) & (keys[:, None] == targets.rel_key[None])
    onehot = torch.nn.functional.one_hot(targets.rel_predicate, num_predicates).float()
    return (hit.float() @ onehot).clamp_max(1.0)
