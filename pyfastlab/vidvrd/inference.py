"""TSPN inference (vidvrd.md 4.2 step 6): relation instances in the VidVRD prediction format.

score(r, c) = ρ_k · σ(q_r) · σ(π_rc) · label_score_i · label_score_j; the top predicates of each
span, then the top relations of each video, are ranked on flat tensors for the whole batch. Only
writing the JSON-ready lists walks the kept relations in Python.
"""
from __future__ import annotations

import torch

from .config import TSPNConfig
from .features import VideoBatch
from .targets import rank_in_group

PREDICTION_VERSION = "VERSION 1.0"


def relation_scores(out, batch: VideoBatch, use_relationness: bool = True) -> torch.Tensor:
    """[R, C_pred] scores of every candidate span and predicate."""
    v, s, o = (t[out.cand_pair] for t in (out.pair_video, out.pair_sub, out.pair_obj))
    rho = torch.sigmoid(out.z[v, s, o]) if use_relationness else torch.ones_like(out.cand_objectness)
    tracks = batch.label_scores[v, s] * batch.label_scores[v, o]
    return (rho * torch.sigmoid(out.cand_objectness) * tracks)[:, None] * torch.sigmoid(out.pred_logits)


def relations_from_output(out, batch: VideoBatch, config: TSPNConfig, *, use_relationness: bool = True) -> dict:
    """{video_id: [{"triplet", "score", "duration", "sub_traj", "obj_traj"}]} by descending score,
    ≤ relations_per_video per video; every batch video has an entry (maybe empty)."""
    results = {vid: [] for vid in batch.video_ids}
    if out.cand_pair.numel() == 0:
        return results
    scores = relation_scores(out, batch, use_relationness)
    top = min(config.predicates_per_span, scores.shape[1])
    top_scores, top_pred = scores.topk(top, dim=1)
    cand = torch.arange(scores.shape[0], device=scores.device)[:, None].expand(-1, top).flatten()
    top_scores, top_pred = top_scores.flatten(), top_pred.flatten()
    video = out.pair_video[out.cand_pair[cand]]
    rank = rank_in_group(video, -top_scores.double(), torch.ones_like(video, dtype=torch.bool))
    keep = (rank < config.relations_per_video).nonzero().squeeze(1)
    keep = keep[torch.argsort(video[keep] * (keep.numel() + 1) + rank[keep])]   # by video, then rank

    pair = out.cand_pair[cand[keep]]
    span = out.cand_span[cand[keep]]
    lo, hi = out.cooc_lo[pair], out.cooc_hi[pair]
    begin = torch.maximum(lo, span[:, 0].floor().long())
    end = torch.minimum(hi, torch.maximum(begin + 1, span[:, 1].ceil().long()))
    rows = zip(out.pair_video[pair].tolist(), out.pair_sub[pair].tolist(), out.pair_obj[pair].tolist(),
               top_pred[keep].tolist(), top_scores[keep].tolist(), begin.tolist(), end.tolist())
    categories, predicates = config.object_categories, config.predicates
    labels = batch.labels.tolist()
    boxes = batch.boxes
    for v, s, o, p, score, b, e in rows:
        results[batch.video_ids[v]].append({
            "triplet": [categories[labels[v][s]], predicates[p], categories[labels[v][o]]],
            "score": float(score), "duration": [b, e],
            "sub_traj": boxes[v, s, b:e].tolist(), "obj_traj": boxes[v, o, b:e].tolist()})
    return results


def prediction_json(results: dict) -> dict:
    """The official prediction file layout {"version", "results"} around a results mapping."""
    return {"version": PREDICTION_VERSION, "results": results}
