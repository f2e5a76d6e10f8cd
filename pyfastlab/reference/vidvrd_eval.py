"""A self-contained Python port of the VidVRD-helper evaluator (evaluation/visual_relation_detection.py),
with the behaviours vidvrd.md 4.3 defines where the helper crashes: the oracle of evaluate's tests
and the baseline of its benchmark. Per-frame Python loops, as the helper runs them."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .vidvrd_viou import viou_pair_loop

_EPS32 = np.finfo(np.float32).eps


def _voc_ap(rec, prec):
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = np.maximum(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _prec_rec(hit_scores, n_gt):
    tp = np.isfinite(hit_scores)
    cum_tp = np.cumsum(tp).astype(np.float32)
    cum_fp = np.cumsum(~tp).astype(np.float32)
    return cum_tp / np.maximum(cum_tp + cum_fp, _EPS32), cum_tp / np.maximum(n_gt, _EPS32)


def _detection(gt_relations, pred_relations, viou_threshold, pixel_inclusive):
    pred_relations = sorted(pred_relations, key=lambda x: x["score"], reverse=True)
    gt_detected = np.zeros((len(gt_relations),), dtype=bool)
    hit_scores = np.ones(len(pred_relations)) * -np.inf
    for pred_idx, pred in enumerate(pred_relations):
        ov_max, k_max = -float("inf"), -1
        for gt_idx, gt in enumerate(gt_relations):
            if not gt_detected[gt_idx] and tuple(pred["triplet"]) == tuple(gt["triplet"]):
                s_iou = viou_pair_loop(pred["sub_traj"], pred["duration"], gt["sub_traj"], gt["duration"],
                                       pixel_inclusive)
                o_iou = viou_pair_loop(pred["obj_traj"], pred["duration"], gt["obj_traj"], gt["duration"],
                                       pixel_inclusive)
                ov = min(s_iou, o_iou)
                if ov >= viou_threshold and ov > ov_max:
                    ov_max, k_max = ov, gt_idx
        if k_max >= 0:
            hit_scores[pred_idx] = pred["score"]
            gt_detected[k_max] = True
    prec, rec = _prec_rec(hit_scores, len(gt_relations))
    return prec, rec, hit_scores


def _tagging(gt_relations, pred_relations):
    pred_relations = sorted(pred_relations, key=lambda x: x["score"], reverse=True)
    gt_triplets = set(tuple(r["triplet"]) for r in gt_relations)
    pred_triplets, hit_scores = [], []
    for r in pred_relations:
        triplet = tuple(r["triplet"])
        if triplet not in pred_triplets:
            pred_triplets.append(triplet)
            hit_scores.append(r["score"] if triplet in gt_triplets else -np.inf)
    hit_scores = np.asarray(hit_scores)
    prec, _ = _prec_rec(hit_scores, len(gt_triplets))
    return prec, np.isfinite(hit_scores)


def evaluate(groundtruth, prediction, viou_threshold=0.5, det_nreturns=(50, 100), tag_nreturns=(1, 5, 10),
             pixel_inclusive=True, tagging="helper"):
    """The helper's metrics dict {"mAP", "R@K"..., "P@K"...} as Python floats."""
    video_ap, tot_scores, tot_tp, prec_at_n = {}, defaultdict(list), defaultdict(list), defaultdict(list)
    tot_gt = 0
    for vid, gt_relations in groundtruth.items():
        if len(gt_relations) == 0:
            continue
        tot_gt += len(gt_relations)
        preds = prediction.get(vid, [])
        prec, rec, det_scores = _detection(gt_relations, preds, viou_threshold, pixel_inclusive)
        video_ap[vid] = _voc_ap(rec, prec)
        tp = np.isfinite(det_scores)
        for nre in det_nreturns:
            cut_off = min(nre, det_scores.size)
            tot_scores[nre].append(det_scores[:cut_off])
            tot_tp[nre].append(tp[:cut_off])
        tag_prec, tag_hits = _tagging(gt_relations, preds)
        for nre in tag_nreturns:
            cut_off = min(nre, tag_prec.size)
            if tagging == "padded":  # VidVRD-II: hits / K, as if the list were padded with misses
                prec_at_n[nre].append(float(tag_hits[:cut_off].sum()) / nre)
            else:
                prec_at_n[nre].append(tag_prec[cut_off - 1] if cut_off > 0 else 0.0)
    if tot_gt == 0:
        raise ValueError("groundtruth has no relation in any video")
    out = {"mAP": float(np.mean(list(video_ap.values())))}
    for nre in det_nreturns:
        tps = np.concatenate(tot_tp[nre])
        scores = np.concatenate(tot_scores[nre])
        if tps.size == 0:
            out[f"R@{nre}"] = 0.0
            continue
        tps = tps[np.argsort(scores)[::-1]]
        out[f"R@{nre}"] = float((np.cumsum(tps).astype(np.float32) / np.maximum(tot_gt, _EPS32))[-1])
    for nre in tag_nreturns:
        out[f"P@{nre}"] = float(np.mean(prec_at_n[nre]))
    return out
