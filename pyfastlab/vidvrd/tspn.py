"""Temporal Span Proposal Network (TSPN, Woo et al., arXiv 2107.07154; vidvrd.md 4.2, an
interpretation of the abstract and the authors' unfinished code).

What to look at: every ordered pair of a video's objects gets a relationness logit z (all pairs at
once through `ops.pairwise_mlp_scores`); only the top-K pairs go on. When to look: each kept pair's
whole-video sequence feeds an anchor-based 1-D span head (decode, one grouped `ops.span_nms` call
for all pairs) and a multi-label predicate classifier on RoIAligned span features.

A batch is padded videos (`VideoBatch`); kept pairs are a flat list (video, subject, object), so
videos of different N and T share every tensor op and no step loops over videos or pairs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn

from .. import ops
from .config import TSPNConfig
from .features import VideoBatch
from .heads import ObjectContextEncoder, PairScorer, PairSequenceEncoder, PredicateHead, SpanHead, pool_steps, \
    presence_bounds
from .spans import decode_spans, make_anchors, roi_align_1d
from .targets import BatchTargets, pair_key, rank_in_group


@dataclass
class TSPNOutput:
    """Everything one forward pass computes (P kept pairs, R predicate candidates)."""
    z_raw: Tensor          # [B, N, N] relationness logits before masking
    valid: Tensor          # [B, N, N] real, distinct, co-occurring pairs
    z: Tensor              # [B, N, N] z_raw with −inf where not valid
    pair_video: Tensor     # [P]
    pair_sub: Tensor       # [P]
    pair_obj: Tensor       # [P]
    pair_in_topk: Tensor   # [P] bool (False: a GT pair injected for training)
    cooc_lo: Tensor        # [P] first co-occurring frame
    cooc_hi: Tensor        # [P] last co-occurring frame + 1
    anchors: Tensor        # [T' A, 2] frames
    anchor_ok: Tensor      # [P, T' A] anchor's step has both objects
    objectness: Tensor     # [P, T' A] q
    deltas: Tensor         # [P, T' A, 2] δ
    cand_pair: Tensor      # [R] row into the pair list
    cand_span: Tensor      # [R, 2] frames, detached
    cand_objectness: Tensor  # [R] q of the proposal (+inf for injected GT spans)
    pred_logits: Tensor    # [R, C_pred] π


class TemporalSpanProposalNetwork(nn.Module):
    """TSPN on box tracks (vidvrd.md 4.2). `forward(batch, targets)` returns a `TSPNOutput`,
    `loss(batch, targets)` the training losses, `predict(batch)` the VidVRD "results" mapping."""

    def __init__(self, config: TSPNConfig):
        super().__init__()
        if not isinstance(config, TSPNConfig):
            raise ValueError(f"config must be a TSPNConfig, got {type(config).__name__}")
        self.config = c = config
        n_cls, n_pred = len(c.object_categories), len(c.predicates)
        self.encoder = ObjectContextEncoder(c.feature_dim, c.d, n_cls, c.context_layers, c.context_heads)
        self.scorer = PairScorer(c.pair_scorer, c.d, c.pair_hidden, n_cls)
        self.sequence = PairSequenceEncoder(c.d, c.temporal_channels, c.temporal_dilations)
        self.span_head = SpanHead(c.temporal_channels, len(c.anchor_widths))
        self.predicate_head = PredicateHead(c.temporal_channels, c.roi_bins, c.d, n_pred)

    # -- step 2: relationness and pair selection -------------------------------------------------
    def relationness(self, batch: VideoBatch, h: Tensor):
        """z_raw, valid, z (vidvrd.md 4.2 step 2)."""
        n_cls = len(self.config.object_categories)
        logits = nn.functional.one_hot(batch.labels, n_cls).to(h.dtype) * batch.label_scores.unsqueeze(-1)
        z_raw = self.scorer(h, logits)
        present = batch.mask.to(h.dtype)
        cooc = torch.bmm(present, present.transpose(1, 2)) >= 1      # co-occurring frames ≥ 1
        obj = batch.object_mask
        n = obj.shape[1]
        valid = cooc & obj[:, :, None] & obj[:, None, :] & ~torch.eye(n, dtype=torch.bool, device=h.device)
        return z_raw, valid, torch.where(valid, z_raw, torch.full_like(z_raw, float("-inf")))

    @staticmethod
    def top_pairs(z: Tensor, valid: Tensor, k: int) -> Tensor:
        """[B, N, N] bool: the top min(k, #valid) pairs of each video by z (ties: lower flat index)."""
        b, n, _ = z.shape
        flat = z.detach().reshape(b, n * n)
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices
        limit = valid.reshape(b, -1).sum(1).clamp(max=k)
        chosen = torch.arange(n * n, device=z.device)[None] < limit[:, None]
        keep = torch.zeros_like(chosen)
        keep.scatter_(1, order, chosen)
        return keep.reshape(b, n, n)

    # -- the forward pass ------------------------------------------------------------------------
    def forward(self, batch: VideoBatch, targets: Optional[BatchTargets] = None, *, all_pairs: bool = False,
                generator: Optional[torch.Generator] = None) -> TSPNOutput:
        """One pass over a padded batch. With `targets` (training), GT pairs join the top-K
        (`inject_gt_pairs`) and the predicate candidates are each pair's GT spans, then its
        detached proposals, ≤ pred_spans_per_pair. all_pairs=True keeps every valid pair
        (extension; the demo's "all pairs" baseline)."""
        c = self.config
        e, h = self.encoder(batch.features, batch.mask, batch.labels, batch.object_mask, batch.num_frames)
        z_raw, valid, z = self.relationness(batch, h)
        in_topk = valid if all_pairs else self.top_pairs(z, valid, c.pairs_kept)
        keep = in_topk
        if targets is not None and c.inject_gt_pairs:
            keep = keep | ((targets.pair_labels > 0) & valid)
        video, sub, obj = keep.nonzero(as_tuple=True)
        n_anchor = len(c.anchor_widths)

        e_steps, m_steps = pool_steps(e, batch.mask, c.stride)
        box_steps, _ = pool_steps(batch.boxes, batch.mask, c.stride)
        y, g, both = self.sequence(e_steps, m_steps, box_steps, video, sub, obj)
        q, delta = self.span_head(y)
        p, steps = both.shape
        anchors = make_anchors(steps, c.stride, c.anchor_widths, device=z.device)
        anchor_ok = both.repeat_interleave(n_anchor, dim=1)
        q, delta = q.reshape(p, steps * n_anchor), delta.reshape(p, steps * n_anchor, 2)

        co = batch.mask[video, sub] & batch.mask[video, obj]
        lo, hi = presence_bounds(co)
        cand_pair, cand_span, cand_q = self._proposals(anchors, anchor_ok, q.detach(), delta.detach(), lo, hi)
        if targets is not None:
            cand_pair, cand_span, cand_q = self._with_gt_spans(targets, pair_key(video, sub, obj, keep.shape[1]),
                                                               cand_pair, cand_span, cand_q)
        pred_logits = self._predicates(batch, y, g, video, sub, obj, cand_pair, cand_span)
        return TSPNOutput(z_raw=z_raw, valid=valid, z=z, pair_video=video, pair_sub=sub, pair_obj=obj,
                          pair_in_topk=in_topk[video, sub, obj], cooc_lo=lo, cooc_hi=hi, anchors=anchors,
                          anchor_ok=anchor_ok, objectness=q, deltas=delta, cand_pair=cand_pair,
                          cand_span=cand_span, cand_objectness=cand_q, pred_logits=pred_logits)

    def _proposals(self, anchors, anchor_ok, q, delta, lo, hi):
        """Step 4: decode, clip to each pair's co-occurrence, top M_pre per pair, drop spans < 1
        frame, one grouped span_nms for all pairs. Returns (pair row, span [R, 2], q) by pair."""
        c = self.config
        p, a = q.shape
        spans = decode_spans(anchors[None].expand(p, a, 2), delta)
        lo, hi = lo.to(spans.dtype), hi.to(spans.dtype)
        spans = torch.stack([torch.maximum(torch.minimum(spans[..., 0], hi[:, None]), lo[:, None]),
                             torch.maximum(torch.minimum(spans[..., 1], hi[:, None]), lo[:, None])], -1)
        scores = torch.where(anchor_ok, q, torch.full_like(q, float("-inf")))
        top = min(c.pre_nms_top, a)
        top_q, top_i = scores.topk(top, dim=1) if a else (scores, scores.long())
        top_spans = spans.gather(1, top_i.unsqueeze(-1).expand(-1, -1, 2))
        ok = torch.isfinite(top_q) & (top_spans[..., 1] - top_spans[..., 0] >= 1)
        rows = torch.arange(p, device=q.device)[:, None].expand(-1, top)[ok]
        cand, cand_q = top_spans[ok], top_q[ok]
        kept = ops.span_nms(cand, cand_q, c.nms_iou, groups=rows, max_keep=c.spans_per_pair)
        kept = kept[torch.sort(rows[kept], stable=True).indices]   # by pair, then by score
        return rows[kept], cand[kept], cand_q[kept]

    def _with_gt_spans(self, targets, keys, cand_pair, cand_span, cand_q):
        """Training candidates: each kept pair's GT class-agnostic spans first, then its
        proposals, at most pred_spans_per_pair per pair."""
        match = keys[:, None] == targets.span_key[None]             # [P, G]
        gp, gg = match.nonzero(as_tuple=True)
        pairs = torch.cat([gp, cand_pair])
        spans = torch.cat([targets.span[gg].to(cand_span.dtype), cand_span])
        qs = torch.cat([torch.full((gp.numel(),), float("inf"), dtype=cand_q.dtype), cand_q])
        order = torch.sort(pairs, stable=True).indices
        pairs, spans, qs = pairs[order], spans[order], qs[order]
        rank = rank_in_group(pairs, torch.arange(pairs.numel(), dtype=torch.float64),
                             torch.ones_like(pairs, dtype=torch.bool))
        keep = rank < self.config.pred_spans_per_pair
        return pairs[keep], spans[keep], qs[keep]

    def _predicates(self, batch, y, g, video, sub, obj, cand_pair, cand_span):
        """Step 5: RoIAlign of Y over [ŝ/σ − ½, ê/σ − ½] and the predicate MLP."""
        c = self.config
        sigma = float(c.stride)
        steps = -(-batch.num_frames // c.stride)                    # [B] T'_v
        rois = cand_span / sigma - 0.5
        pooled = roi_align_1d(y, rois, cand_pair, steps[video], c.roi_bins)
        emb = self.encoder.class_embedding
        v = video[cand_pair]
        t = batch.num_frames[v].to(cand_span.dtype)[:, None]
        return self.predicate_head(pooled, g[cand_pair], emb(batch.labels[v, sub[cand_pair]]),
                                   emb(batch.labels[v, obj[cand_pair]]), cand_span / t)

    # -- training and inference ------------------------------------------------------------------
    def loss(self, batch: VideoBatch, targets: BatchTargets, *, generator: Optional[torch.Generator] = None) -> dict:
        """{"loss", "L_rel", "L_span", "L_pred"} (vidvrd.md 4.2 "Losses"; each a mean over the
        batch's videos of per-video means, so a padded batch equals the mean of per-video losses
        whenever sampling takes everything)."""
        from .losses import tspn_losses
        out = self(batch, targets, generator=generator)
        return tspn_losses(out, batch, targets, self.config, generator=generator)

    @torch.no_grad()
    def predict(self, batch: VideoBatch, *, all_pairs: bool = False) -> dict:
        """The VidVRD "results" mapping {video_id: [relation]} of a batch (step 6). all_pairs=True
        (extension) keeps every valid pair with ρ ≡ 1."""
        from .inference import relations_from_output
        return relations_from_output(self(batch, all_pairs=all_pairs), batch, self.config,
                                     use_relationness=not all_pairs)
