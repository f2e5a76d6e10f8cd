"""VidVRD relation detection and tagging metrics with exactly the official protocol (VidVRD-helper,
vidvrd.md 4.3), with the trajectory vIoU of matching candidates computed by compiled code.

Only the hit flags are accelerated, and only the vIoU the greedy matching reads is computed
(_lazy_hits): predictions of a triplet are visited in score order in doubling chunks against the
GT candidates still unmatched; pairs without common frames are 0.0 (the helper's early return);
the object vIoU is computed only where the subject's reaches the threshold; a trajectory's JSON
boxes are converted to float64 the first time a pair needs them, and the C++ routine
trajectory_viou_pairs (frame-ordered fp64, so every value equals the helper's Python loop) scores
each batch. Other backends ("reference", or without the compiled ops) compute one
ops.trajectory_viou matrix per triplet instead. The greedy matching and the metrics (steps 2 to 5)
are replayed with the helper's comparisons and NumPy operations, so the numbers equal the helper's.
Box contents are checked when converted; the structure of every relation is checked up front.
"""
from __future__ import annotations

import itertools
import math
import numbers
import sys
from collections import defaultdict

import numpy as np
import torch

from .. import ops
from ..ops._checks import check_float

_EPS32 = np.finfo(np.float32).eps
_PROGRESS_MIN_VIDEOS = 50  # below this, a progress bar is noise


def _validated(vid, relations, what, need_score):
    """The relations of one video, checked: a clear error names the video, index and field. A
    well-formed relation passes one cheap test; any other goes through _check_relation, which
    raises the error that names it."""
    if not isinstance(relations, (list, tuple)):
        raise ValueError(f"{what} video {vid}: expected a list of relations, got {type(relations).__name__}")
    isfinite = math.isfinite
    for k, r in enumerate(relations):
        try:
            begin, end = r["duration"]
            n = end - begin
            ok = (type(r) is dict and len(r["triplet"]) == 3 and len(r["sub_traj"]) == n
                  and len(r["obj_traj"]) == n)
            if ok and need_score:
                score = r["score"]
                ok = type(score) is float and isfinite(score)
        except Exception:  # noqa: BLE001 - the slow path raises the precise error
            ok = False
        if not ok:
            _check_relation(vid, k, r, what, need_score)
    return relations


def _check_relation(vid, k, r, what, need_score):
    where = f"{what} video {vid}, relation {k}"
    if not isinstance(r, dict):
        raise ValueError(f"{where}: expected a dict, got {type(r).__name__}")
    for field in ("triplet", "duration", "sub_traj", "obj_traj") + (("score",) if need_score else ()):
        if field not in r:
            raise ValueError(f"{where}: missing field {field!r}")
    if len(r["triplet"]) != 3:
        raise ValueError(f"{where}: 'triplet' must be [subject, predicate, object], got {r['triplet']!r}")
    if len(r["duration"]) != 2:
        raise ValueError(f"{where}: 'duration' must be [begin, end), got {r['duration']!r}")
    begin, end = r["duration"]
    for field in ("sub_traj", "obj_traj"):
        if len(r[field]) != end - begin:
            raise ValueError(f"{where}: '{field}' has {len(r[field])} boxes but 'duration' [{begin}, {end}) "
                             f"covers {end - begin} frames")
    if need_score:
        _check_score(r["score"], where)


def _check_score(score, where):
    """A real number: a str such as "0.9" would sort as text, None or a mix would not sort at all."""
    if isinstance(score, bool) or not isinstance(score, numbers.Real):
        raise ValueError(f"{where}: 'score' must be a real number (int or float), got {score!r} "
                         f"({type(score).__name__})")
    try:
        finite = math.isfinite(score)
    except OverflowError:  # an int beyond the float range
        finite = False
    if not finite:
        raise ValueError(f"{where}: 'score' must be finite, got {score!r}")


def _results(prediction):
    """{video_id: relations} from either form of a prediction: the bare mapping, or the helper's
    prediction file {"version": ..., "results": {video_id: relations}, ...} ("version" optional)."""
    if not isinstance(prediction, dict):
        raise ValueError(f"prediction must be a dict video_id -> relations, got {type(prediction).__name__}")
    results = prediction.get("results")
    if isinstance(results, dict) or "version" in prediction:
        if not isinstance(results, dict):
            raise ValueError(f"prediction has 'version', so it is a prediction file: its 'results' must be a dict "
                             f"video_id -> relations, got {type(results).__name__}")
        prediction = results
    for vid, relations in prediction.items():
        if not isinstance(relations, (list, tuple)):
            raise ValueError(f"prediction video {vid}: expected a list of relations, got {type(relations).__name__} "
                             f"(a prediction is {{video_id: [relations]}} or {{'version': ..., 'results': "
                             f"{{video_id: [relations]}}}})")
    return prediction


def _nreturns(name, values):
    """A tuple of distinct positive ints; a bare int k is (k,)."""
    if isinstance(values, numbers.Integral) and not isinstance(values, bool):
        values = (values,)
    try:
        ks = tuple(values)
    except TypeError:
        ks = None
    if ks is None or not all(isinstance(k, numbers.Integral) and not isinstance(k, bool) and k > 0 for k in ks):
        raise ValueError(f"{name} must be a positive int or a tuple of positive ints, got {values!r}")
    if len(set(ks)) != len(ks):  # a repeated K would count its hits twice
        raise ValueError(f"{name} must not repeat a value, got {values!r}")
    return tuple(int(k) for k in ks)


def _tracks(relations, field, origin, length, where):
    """float64 boxes [n, length, 4] on the frame timeline that starts at `origin`, and spans [n, 2]."""
    boxes = np.zeros((len(relations), length, 4))
    spans = np.empty((len(relations), 2), dtype=np.int64)
    for i, r in enumerate(relations):
        begin, end = r["duration"]
        try:
            boxes[i, begin - origin:end - origin] = np.asarray(r[field], dtype=np.float64).reshape(end - begin, 4)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where(r)}: '{field}' must hold [x1, y1, x2, y2] numbers per frame ({exc})") from None
        spans[i] = (begin - origin, end - origin)
    return torch.from_numpy(boxes), torch.from_numpy(spans)


def _overlaps(preds, gts, pixel_inclusive, backend, where):
    """ov = min(vIoU_sub, vIoU_obj) [len(preds), len(gts)], each trajectory on its own duration."""
    durations = [r["duration"] for r in preds + gts]
    origin = min(d[0] for d in durations)
    length = max(d[1] for d in durations) - origin
    ov = None
    for field in ("sub_traj", "obj_traj"):
        a, sa = _tracks(preds, field, origin, length, where)
        b, sb = _tracks(gts, field, origin, length, where)
        v = ops.trajectory_viou(a, sa, b, sb, pixel_inclusive=pixel_inclusive, backend=backend).numpy()
        ov = v if ov is None else np.where(v < ov, v, ov)  # Python's min(s, o), as the helper
    return ov


def _convert(trajectories, where):
    """One float64 [N, 4] array of the boxes of `trajectories` (relation, field), each over its own
    duration, in order: one conversion of the JSON lists (fromiter over the chained rows, about twice
    as fast as np.array on the nested lists)."""
    rows = []
    for r, field in trajectories:
        rows += r[field]
    try:
        if set(map(len, rows)) - {4}:
            raise ValueError("a box without 4 numbers")
        boxes = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=4 * len(rows))
    except (TypeError, ValueError):
        for r, field in trajectories:  # find the culprit for a clear message
            _tracks([r], field, r["duration"][0], r["duration"][1] - r["duration"][0], where)
        raise
    return boxes.reshape(len(rows), 4)


class _LazyViou:
    """vIoU of (prediction, GT) pairs of one video for one field, with the boxes of a trajectory
    converted the first time a pair needs it (and kept), and one call of the C++ routine
    trajectory_viou_pairs per batch of pairs (frame-ordered fp64: every value equals the helper's
    Python loop)."""

    def __init__(self, preds, gts, field, pixel_inclusive, where):
        self.rels = (preds, gts)
        self.field, self.pixel_inclusive, self.where = field, pixel_inclusive, where
        self.boxes = ({}, {})  # side (0: prediction, 1: GT) -> {index: float64 [n, 4]}

    def __call__(self, pairs):
        """[vIoU] of the (prediction index, GT index) pairs, as Python floats."""
        if not pairs:
            return []
        slots, order = ({}, {}), []
        pa, pb = [], []
        for i, g in pairs:
            for side, idx, out in ((0, i, pa), (1, g, pb)):
                k = slots[side].get(idx)
                if k is None:
                    k = slots[side][idx] = len(order)
                    order.append((side, idx))
                out.append(k)
        missing = [(side, idx) for side, idx in order if idx not in self.boxes[side]]
        if missing:
            flat = _convert([(self.rels[side][idx], self.field) for side, idx in missing], self.where)
            start = 0
            for side, idx in missing:
                n = len(self.rels[side][idx][self.field])
                self.boxes[side][idx] = flat[start:start + n]
                start += n
        arrays = [self.boxes[side][idx] for side, idx in order]
        offsets = np.zeros(len(arrays) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in arrays], out=offsets[1:])
        begins = torch.tensor([self.rels[side][idx]["duration"][0] for side, idx in order], dtype=torch.int64)
        boxes = torch.from_numpy(np.concatenate(arrays) if len(arrays) > 1 else arrays[0])
        return torch.ops.pyfastlab.trajectory_viou_pairs(boxes, torch.from_numpy(offsets), begins, torch.tensor(pa),
                                                         torch.tensor(pb), self.pixel_inclusive).tolist()


def _lazy_hits(groups, by_triplet, preds, gts, threshold, pixel_inclusive, where, hits):
    """Step 2 on the flat path, computing only the vIoU the greedy matching reads. The predictions
    of each triplet are visited in score order in chunks (doubling in size); a chunk computes the
    pairs with the GT candidates still unmatched when it starts (a superset of what the helper
    scores for it). A pair without common frames has vIoU 0.0 (the helper's early return), and its
    boxes are never read; the object vIoU is computed only where the subject's reaches the
    threshold (min(s, o) >= t needs s >= t), so ov is exact wherever it can be a hit."""
    sub = _LazyViou(preds, gts, "sub_traj", pixel_inclusive, where)
    obj = _LazyViou(preds, gts, "obj_traj", pixel_inclusive, where)
    detected = [False] * len(gts)
    spans = [r["duration"] for r in preds], [r["duration"] for r in gts]
    active = [[members, by_triplet[t], 0, len(by_triplet[t])] for t, members in groups.items()]
    while active:
        pairs, chunks = [], []
        for state in active:
            members, cands, pos, size = state
            chunk = members[pos:pos + size]
            open_gts = [g for g in cands if not detected[g]]
            for i in chunk:
                b0, e0 = spans[0][i]
                for g in open_gts:
                    b1, e1 = spans[1][g]
                    if b0 < e1 and b1 < e0:  # common frames
                        pairs.append((i, g))
            chunks.append(chunk)
        ov = dict(zip(pairs, sub(pairs)))
        both = [pair for pair in pairs if ov[pair] >= threshold]
        for pair, o in zip(both, obj(both)):
            if o < ov[pair]:  # Python's min(s, o), as the helper (NaN included)
                ov[pair] = o
        still = []
        for state, chunk in zip(active, chunks):
            cands = state[1]
            for i in chunk:
                ov_max, k_max = -math.inf, -1
                for g in cands:
                    if not detected[g]:
                        value = ov.get((i, g), 0.0)
                        if value >= threshold and value > ov_max:
                            ov_max, k_max = value, g
                if k_max >= 0:
                    hits[i] = True
                    detected[k_max] = True
            state[2] += len(chunk)
            state[3] *= 2
            if state[2] < len(state[0]) and not all(detected[g] for g in cands):
                still.append(state)
        active = still
    return hits


def _flat_path(backend):
    """The flat C++ routine runs for backend "cpu" (what "auto" picks for CPU tensors)."""
    from .._loader import has_compiled_ops
    from ..ops import _backends

    return _backends.resolve(backend, torch.device("cpu")) == "cpu" and has_compiled_ops() and hasattr(
        torch.ops.pyfastlab, "trajectory_viou_pairs")


def _detection_hits(vid, gts, preds, threshold, pixel_inclusive, backend, flat):
    """Step 2: hit flags of the score-sorted predictions (greedy, GT ties to the first)."""
    by_triplet = defaultdict(list)
    for g, r in enumerate(gts):
        by_triplet[tuple(r["triplet"])].append(g)
    groups = defaultdict(list)
    for i, r in enumerate(preds):
        triplet = tuple(r["triplet"])
        if triplet in by_triplet:
            groups[triplet].append(i)
    hits = np.zeros(len(preds), dtype=bool)
    if not groups:
        return hits
    where = lambda r: f"video {vid}, relation with triplet {r['triplet']}"  # noqa: E731
    if flat:
        return _lazy_hits(groups, by_triplet, preds, gts, threshold, pixel_inclusive, where, hits)
    overlaps = {t: _overlaps([preds[i] for i in members], [gts[g] for g in by_triplet[t]], pixel_inclusive,
                             backend, where) for t, members in groups.items()}
    for triplet, members in groups.items():
        ov = overlaps[triplet].tolist()  # Python floats: the helper's comparisons, and fast
        detected = [False] * len(by_triplet[triplet])
        for row, i in zip(ov, members):  # members are in score order
            ov_max, k_max = -math.inf, -1
            for k, value in enumerate(row):
                if not detected[k] and value >= threshold and value > ov_max:
                    ov_max, k_max = value, k
            if k_max >= 0:
                hits[i] = True
                detected[k_max] = True
    return hits


def _prec_rec(tp, n_gt):
    cum_tp = np.cumsum(tp).astype(np.float32)
    cum_fp = np.cumsum(~tp).astype(np.float32)
    return cum_tp / np.maximum(cum_tp + cum_fp, _EPS32), cum_tp / np.maximum(n_gt, _EPS32)


def _voc_ap(rec, prec):
    """Step 3: VOC all-point AP with float64 sentinels over float32 precision and recall."""
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1])


def _tagging_hits(gts, preds):
    """Step 5: the first occurrence of each triplet in score order; a hit if it is a GT triplet."""
    gt_triplets = {tuple(r["triplet"]) for r in gts}
    seen, hits = set(), []
    for r in preds:
        triplet = tuple(r["triplet"])
        if triplet not in seen:
            seen.add(triplet)
            hits.append(triplet in gt_triplets)
    return np.asarray(hits, dtype=bool), len(gt_triplets)


def _progress(n_videos, progress):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    show = progress if progress is not None else (n_videos >= _PROGRESS_MIN_VIDEOS and sys.stderr.isatty())
    return Progress(TextColumn("evaluate"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    disable=not show, transient=True)


def evaluate(groundtruth, prediction, *, viou_threshold=0.5, det_nreturns=(50, 100), tag_nreturns=(1, 5, 10),
             pixel_inclusive=True, tagging="helper", backend="auto", progress=None):
    """{"mAP", "R@50", "R@100", "P@1", "P@5", "P@10"} (keys follow the nreturns) as Python floats,
    with the official VidVRD protocol: relation detection mAP and Recall@K over the GT videos that
    have relations, relation tagging Precision@K.

    groundtruth: {video_id: [{"triplet", "duration", "sub_traj", "obj_traj"}]}; prediction: the same
    plus a real "score" (the "results" mapping; a full prediction JSON {"version": ..., "results": ...}
    is unwrapped, with or without "version"). det_nreturns, tag_nreturns: distinct positive ints, or
    one int. tagging="padded" is VidVRD-II's hits / K. progress: show a rich bar (None: on large
    inputs in a terminal).
    """
    if not isinstance(groundtruth, dict):
        raise ValueError(f"groundtruth must be a dict video_id -> relations, got {type(groundtruth).__name__}")
    prediction = _results(prediction)
    threshold = check_float("viou_threshold", viou_threshold)
    if not 0 <= threshold <= 1:
        raise ValueError(f"viou_threshold must be in [0, 1], got {viou_threshold}")
    if tagging not in ("helper", "padded"):
        raise ValueError(f"tagging must be 'helper' or 'padded', got {tagging!r}")
    det_nreturns, tag_nreturns = _nreturns("det_nreturns", det_nreturns), _nreturns("tag_nreturns", tag_nreturns)
    videos = [vid for vid, rels in groundtruth.items() if len(_validated(vid, rels, "groundtruth", False)) > 0]
    if not videos:
        raise ValueError("groundtruth has no relation in any video: the metrics are undefined")

    flat = _flat_path(backend)
    aps, det_hits, det_scores, tag_prec = [], defaultdict(list), defaultdict(list), defaultdict(list)
    n_gt = 0
    with _progress(len(videos), progress) as bar:
        task = bar.add_task("videos", total=len(videos))
        for vid in videos:
            gts = groundtruth[vid]
            preds = sorted(_validated(vid, prediction.get(vid, []), "prediction", True),
                           key=lambda r: r["score"], reverse=True)  # stable, as the helper
            n_gt += len(gts)
            hits = _detection_hits(vid, gts, preds, threshold, pixel_inclusive, backend, flat)
            prec, rec = _prec_rec(hits, len(gts))
            aps.append(_voc_ap(rec, prec))
            scores = np.array([r["score"] for r in preds], dtype=np.float64)
            for k in det_nreturns:
                det_hits[k].append(hits[:k])
                det_scores[k].append(scores[:k])
            t_hits, n_triplets = _tagging_hits(gts, preds)
            t_prec, _ = _prec_rec(t_hits, n_triplets)
            for k in tag_nreturns:
                cut = min(k, t_prec.size)
                if tagging == "padded":
                    tag_prec[k].append(float(t_hits[:cut].sum()) / k)
                else:
                    tag_prec[k].append(t_prec[cut - 1] if cut > 0 else 0.0)
            bar.advance(task)

    out = {"mAP": float(np.mean(aps))}
    for k in det_nreturns:
        hits = np.concatenate(det_hits[k])
        if hits.size == 0:  # no prediction anywhere (the helper crashes)
            out[f"R@{k}"] = 0.0
            continue
        hits = hits[np.argsort(np.concatenate(det_scores[k]))[::-1]]
        out[f"R@{k}"] = float((np.cumsum(hits).astype(np.float32) / np.maximum(n_gt, _EPS32))[-1])
    for k in tag_nreturns:
        out[f"P@{k}"] = float(np.mean(tag_prec[k]))
    return out
