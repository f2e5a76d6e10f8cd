"""Synthetic annotations in the VidVRD JSON layout (vidvrd.md 4.1, an interpretation), for tests,
benchmarks and demos without any download.

Objects move with piecewise-constant velocities; a few ordered pairs interact (the object follows
the subject) and only those carry relations, labelled by geometric rules on 9-frame-smoothed
boxes. `degrade_predictions` turns ground truth into a scored prediction file.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

# The 35 ImageNet-VidVRD object categories, in the dataset's order (ids follow this list).
CATEGORIES = ("airplane", "antelope", "ball", "bear", "bicycle", "bird", "bus", "car", "cattle", "dog",
              "domestic_cat", "elephant", "fox", "frisbee", "giant_panda", "hamster", "horse", "lion", "lizard",
              "monkey", "motorcycle", "person", "rabbit", "red_panda", "sheep", "skateboard", "snake", "sofa",
              "squirrel", "tiger", "train", "turtle", "watercraft", "whale", "zebra")
PREDICATES = ("left", "right", "above", "beneath", "toward", "away", "faster", "larger")
WIDTH, HEIGHT, FPS = 1280, 720, 30
MIN_RUN = 15


def _smooth(x: np.ndarray, k: int = 9) -> np.ndarray:
    """Centred k-frame mean along axis 0, edges replicated."""
    pad = np.pad(x, [(k // 2, k // 2)] + [(0, 0)] * (x.ndim - 1), mode="edge")
    return np.stack([pad[i:i + len(x)] for i in range(k)]).mean(0)


def _track(rng, T, begin, end, centre=None):
    """Integer boxes [T, 4] (only [begin, end) meaningful) with piecewise-constant velocity."""
    w, h = rng.uniform(60, 240, 2)
    c = np.array(centre if centre is not None else [rng.uniform(w, WIDTH - w), rng.uniform(h, HEIGHT - h)])
    centres = np.zeros((T, 2))
    v = rng.normal(0, 3, 2)
    next_change = begin
    for t in range(begin, end):
        if t >= next_change:
            v, next_change = rng.normal(0, 3, 2), t + int(rng.integers(30, 91))
        c = c + v
        for k, hi in ((0, WIDTH), (1, HEIGHT)):  # reflect at the borders
            if c[k] < 0 or c[k] > hi:
                v[k], c[k] = -v[k], min(max(c[k], 0), hi)
        centres[t] = c
    sizes = np.array([w, h]) * np.cumprod(1 + rng.uniform(-0.01, 0.01, (T, 2)), axis=0)
    return centres, sizes


def _boxes(centres, sizes):
    x1 = np.clip(np.round(centres - sizes / 2), 0, [WIDTH - 3, HEIGHT - 3])
    x2 = np.maximum(np.clip(np.round(centres + sizes / 2), 0, [WIDTH - 1, HEIGHT - 1]), x1 + 2)
    return np.concatenate([x1, x2], 1).astype(np.int64)


def _rules(bs, bo):
    """Per-frame booleans of each predicate rule, on boxes smoothed over 9 frames."""
    bs, bo = _smooth(bs.astype(float)), _smooth(bo.astype(float))
    cs, co = (bs[:, :2] + bs[:, 2:]) / 2, (bo[:, :2] + bo[:, 2:]) / 2
    ws, hs = bs[:, 2] - bs[:, 0], bs[:, 3] - bs[:, 1]
    wo, ho = bo[:, 2] - bo[:, 0], bo[:, 3] - bo[:, 1]
    dx, dy = co[:, 0] - cs[:, 0], co[:, 1] - cs[:, 1]
    d = np.hypot(dx, dy)

    def diff4(f):  # f(t + 4) - f(t - 4), edges replicated
        pad = np.pad(f, [(4, 4)] + [(0, 0)] * (f.ndim - 1), mode="edge")
        return pad[8:] - pad[:-8]

    speed_s = np.linalg.norm(diff4(cs), axis=1) / 8
    speed_o = np.linalg.norm(diff4(co), axis=1) / 8
    horizontal = np.abs(dx) >= np.abs(dy)
    return {"left": (dx > 0.5 * ws) & horizontal, "right": (dx < -0.5 * ws) & horizontal,
            "above": (dy > 0.5 * hs) & ~horizontal, "beneath": (dy < -0.5 * hs) & ~horizontal,
            "toward": diff4(d) < -8, "away": diff4(d) > 8, "faster": speed_s > 1.5 * speed_o + 0.5,
            "larger": ws * hs > 1.5 * wo * ho}


def _runs(flags, lo, hi):
    """Maximal runs [b, e) of True within [lo, hi) that last at least MIN_RUN frames."""
    out, start = [], None
    for t in range(lo, hi + 1):
        on = t < hi and bool(flags[t])
        if on and start is None:
            start = t
        elif not on and start is not None:
            if t - start >= MIN_RUN:
                out.append((start, t))
            start = None
    return out


def _pair_relations(i, j, spans, boxes):
    """Relation instances of the ordered pair (i, j): maximal rule runs within its co-occurrence."""
    lo, hi = max(spans[i][0], spans[j][0]), min(spans[i][1], spans[j][1])
    out = []
    if hi <= lo:
        return out
    # rules on the co-occurrence only: the smoothing never sees a box outside it
    for predicate, flags in _rules(boxes[i][lo:hi], boxes[j][lo:hi]).items():
        for b, e in _runs(np.concatenate([np.zeros(lo, bool), flags]), lo, hi):
            out.append({"subject_tid": i, "object_tid": j, "predicate": predicate, "begin_fid": b, "end_fid": e})
    return out


def _scene(rng, frame_range, n_categories):
    """Steps 1 to 4 of vidvrd.md 4.1: objects, their integer boxes, the interacting pairs and
    their relations (before the edge cases and the cap)."""
    T = int(rng.integers(frame_range[0], frame_range[1] + 1))
    n = int(rng.integers(3, 9))
    cats = [CATEGORIES[int(c)] for c in rng.integers(0, n_categories, n)]
    min_len = max(30, T // 3)
    spans, centres, sizes = [], [], []
    for _ in range(n):
        length = int(rng.integers(min_len, T + 1))
        begin = int(rng.integers(0, T - length + 1))
        spans.append((begin, begin + length))
        c, s = _track(rng, T, begin, begin + length)
        centres.append(c)
        sizes.append(s)
    # Interacting pairs: the object follows the subject at a slowly varying offset.
    pairs, used_objects = [], set()
    for _ in range(min(3, n // 2)):
        i, j = (int(x) for x in rng.choice(n, 2, replace=False))
        lo, hi = max(spans[i][0], spans[j][0]), min(spans[i][1], spans[j][1])
        if j in used_objects or (i, j) in pairs or hi - lo < 60:
            continue
        scale = math.sqrt(sizes[i][lo, 0] * sizes[i][lo, 1])
        r = rng.uniform(0.5, 4) * scale * np.array([math.cos(a := rng.uniform(0, 2 * math.pi)), math.sin(a)])
        for t in range(spans[j][0], spans[j][1]):
            if lo <= t < hi:
                r = r + rng.normal(0, 2, 2)
                norm = np.linalg.norm(r)
                r = r * np.clip(norm, 0.5 * scale, 4 * scale) / max(norm, 1e-9)
                centres[j][t] = centres[i][t] + r
        pairs.append((i, j))
        used_objects.add(j)
    boxes = [_boxes(c, s) for c, s in zip(centres, sizes)]
    relations = [r for i, j in pairs for r in _pair_relations(i, j, spans, boxes)]
    return dict(T=T, frame_count=T, cats=cats, spans=spans, boxes=boxes, pairs=pairs, relations=relations)


def _annotation(vid, style, scene):
    T, spans, boxes = scene["T"], scene["spans"], scene["boxes"]
    trajectories = []
    for t in range(T):
        frame = []
        for tid in range(len(spans)):
            if spans[tid][0] <= t < spans[tid][1]:
                x1, y1, x2, y2 = (int(v) for v in boxes[tid][t])
                box = {"tid": tid, "bbox": {"xmin": x1, "ymin": y1, "xmax": x2, "ymax": y2},
                       "generated": int(t % 10 == 0)}
                if style == "vidor":
                    box["tracker"] = "synthetic"
                frame.append(box)
        trajectories.append(frame)
    anno = {"video_id": vid, "frame_count": scene["frame_count"], "fps": FPS, "width": WIDTH, "height": HEIGHT,
            "subject/objects": [{"tid": tid, "category": c} for tid, c in enumerate(scene["cats"])],
            "trajectories": trajectories, "relation_instances": scene["relations"]}
    if style == "vidor":
        anno.update(version="VERSION 1.0", video_hash=vid, video_path=f"synthetic/{vid}.mp4")
    return anno


def make_vidvrd_like(n_videos, *, seed=0, style="vidvrd", n_categories=len(CATEGORIES), max_relations=50,
                     chunk_train=False, n_train=None, edge_cases=(), frame_range=(120, 600)):
    """{video_id: annotation} of `n_videos` synthetic videos in the VidVRD (or, style="vidor",
    VidOR) per-video JSON layout (vidvrd.md 4.1); the same seed and options give the same data.

    Options (the spec's **opts):
    - n_categories: objects draw their category from the first n_categories VidVRD names.
    - max_relations: at most this many relation instances per video (before chunking).
    - chunk_train: the first n_train videos (the train split) carry their relations as 30-frame
      chunks at stride 15, begin a multiple of 15, as VidVRD's training labels; the test videos
      (the rest) keep the maximal runs. n_train: default round(5/7 n_videos) (the demo's 40/16).
    - edge_cases: names from EDGE_CASES, or True for all: "duplicate_triplets" (a translated copy
      of an interacting pair under new tids), "boundary_relations" (a relation from frame 0 to the
      last frame), "single_frame_objects", "short_trajectories" (len(trajectories) < frame_count),
      "relation_free" (every fourth video has none). They add to the data and never change the
      rest of it: their random draws come from a separate stream.
    - frame_range: (lo, hi), frame counts T ~ U{lo..hi} (the benchmark's VidOR-like videos use
      (300, 1800)).
    """
    if style not in ("vidvrd", "vidor"):
        raise ValueError(f"style must be 'vidvrd' or 'vidor', got {style!r}")
    if not 1 <= n_categories <= len(CATEGORIES):
        raise ValueError(f"n_categories must be in [1, {len(CATEGORIES)}], got {n_categories}")
    edge_cases = _edge_case_names(edge_cases)
    lo, hi = (int(v) for v in frame_range)
    if not 60 <= lo <= hi:
        raise ValueError(f"frame_range must be (lo, hi) with 60 <= lo <= hi, got {frame_range!r}")
    n_videos = int(n_videos)
    n_train = round(n_videos * 5 / 7) if n_train is None else int(n_train)
    if not 0 <= n_train <= n_videos:
        raise ValueError(f"n_train must be in [0, n_videos={n_videos}], got {n_train}")
    rng = np.random.default_rng(seed)
    edge_rng = np.random.default_rng([seed, 0xED6E])  # the edge cases never shift the main stream
    out = {}
    for k in range(n_videos):
        vid = f"synthetic_{k:05d}"
        scene = _scene(rng, (lo, hi), n_categories)
        for name in edge_cases:
            _EDGE_CASES[name](edge_rng, scene, k, n_categories)
        scene["relations"] = scene["relations"][:max_relations]
        if chunk_train and k < n_train:
            scene["relations"] = _chunked(scene["relations"], scene["spans"])
        out[vid] = _annotation(vid, style, scene)
    return out


# ---- chunked training labels (step 5) ---------------------------------------------------------

CHUNK, STRIDE = 30, 15


def _chunked(relations, spans):
    """Each run re-emitted as the aligned 30-frame chunks (begin a multiple of 15) that lie inside
    the pair's co-occurrence and overlap the run by at least 15 frames; no chunk twice."""
    out, seen = [], set()
    for r in relations:
        i, j, b, e = r["subject_tid"], r["object_tid"], r["begin_fid"], r["end_fid"]
        lo, hi = max(spans[i][0], spans[j][0]), min(spans[i][1], spans[j][1])
        first = -(-max(lo, b - CHUNK + STRIDE) // STRIDE) * STRIDE
        for start in range(first, min(hi - CHUNK, e - STRIDE) + 1, STRIDE):
            key = (i, j, r["predicate"], start)
            if key not in seen:
                seen.add(key)
                out.append(dict(r, begin_fid=start, end_fid=start + CHUNK))
    return out


# ---- edge cases (step 6) ------------------------------------------------------------------------

def _short_trajectories(rng, scene, k, n_categories):
    """The video runs on for 1..30 frames after its last annotated one: len(trajectories) < frame_count."""
    scene["frame_count"] = scene["T"] + int(rng.integers(1, 31))


def _relation_free(rng, scene, k, n_categories):
    """Every fourth video (index 3, 7, ...) has objects but no relation instance."""
    if k % 4 == 3:
        scene["relations"] = []
        scene["pairs"] = []


def _duplicate_triplets(rng, scene, k, n_categories):
    """A copy of the first interacting pair under new tids, translated (and clipped to the frame);
    its relations are recomputed by the rules, so the same triplets appear with other tids,
    overlapping in time."""
    if not scene["pairs"]:
        return
    i, j = scene["pairs"][0]
    # an integer shift: the copy is the same geometry translated, unless the frame border clips it
    shift = rng.choice([-1, 1], 2) * rng.integers(40, 201, 2)
    for tid in (i, j):
        b = scene["boxes"][tid].astype(float)
        centres, sizes = (b[:, :2] + b[:, 2:]) / 2 + shift, b[:, 2:] - b[:, :2]
        scene["boxes"].append(_boxes(centres, sizes))
        scene["spans"].append(scene["spans"][tid])
        scene["cats"].append(scene["cats"][tid])
    i2, j2 = len(scene["spans"]) - 2, len(scene["spans"]) - 1
    scene["pairs"].append((i2, j2))
    scene["relations"] += _pair_relations(i2, j2, scene["spans"], scene["boxes"])


def _single_frame_objects(rng, scene, k, n_categories):
    """An object present on one frame only (it can carry no relation: runs last >= 15 frames)."""
    T = scene["T"]
    t = int(rng.integers(0, T))
    centres, sizes = _track(rng, T, t, t + 1)
    scene["boxes"].append(_boxes(centres, sizes))
    scene["spans"].append((t, t + 1))
    scene["cats"].append(CATEGORIES[int(rng.integers(0, n_categories))])


def _boundary_relations(rng, scene, k, n_categories):
    """A big subject and a small object present on the whole video at constant sizes: `larger`
    holds on every frame, so a relation starts at frame 0 and ends at the last frame; its
    relations come first (the cap never drops them)."""
    T = scene["T"]
    tids = []
    for lo_size, hi_size in ((200, 240), (50, 70)):
        w = h = rng.uniform(lo_size, hi_size)
        centres, _ = _track(rng, T, 0, T)
        scene["boxes"].append(_boxes(centres, np.tile([w, h], (T, 1))))
        scene["spans"].append((0, T))
        scene["cats"].append(CATEGORIES[int(rng.integers(0, n_categories))])
        tids.append(len(scene["spans"]) - 1)
    scene["pairs"].insert(0, tuple(tids))
    scene["relations"] = _pair_relations(*tids, scene["spans"], scene["boxes"]) + scene["relations"]


# Applied in this order: the pairs are copied before the boundary pair exists, relation-free last.
_EDGE_CASES = {"duplicate_triplets": _duplicate_triplets, "boundary_relations": _boundary_relations,
               "single_frame_objects": _single_frame_objects, "short_trajectories": _short_trajectories,
               "relation_free": _relation_free}
EDGE_CASES = tuple(_EDGE_CASES)


def _edge_case_names(edge_cases):
    if edge_cases is True:
        return EDGE_CASES
    if edge_cases is False or edge_cases is None:
        return ()
    names = (edge_cases,) if isinstance(edge_cases, str) else tuple(edge_cases)
    unknown = [n for n in names if n not in _EDGE_CASES]
    if unknown:
        raise ValueError(f"edge_cases: unknown names {unknown}; expected a subset of {list(EDGE_CASES)} or True")
    return tuple(n for n in EDGE_CASES if n in names)  # a fixed order: the same data whatever the order given


def write_dataset(root, annos, split):
    """One JSON file per video under root/split/; returns the paths."""
    folder = os.path.join(root, split)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for vid, anno in annos.items():
        paths.append(os.path.join(folder, f"{vid}.json"))
        with open(paths[-1], "w") as f:
            json.dump(anno, f)
    return paths


def _load(item):
    if isinstance(item, (str, os.PathLike)):
        with open(item) as f:
            return json.load(f)
    return item


def groundtruth_from_annotations(annos_or_paths):
    """The contract's `groundtruth` ({video_id: [relation]}) from annotation dicts (a mapping or a
    list) or per-video JSON paths; relations keep their subject_tid/object_tid."""
    items = annos_or_paths.values() if isinstance(annos_or_paths, dict) else annos_or_paths
    gt = {}
    for anno in map(_load, items):
        vid = anno["video_id"]
        category = {so["tid"]: so["category"] for so in anno["subject/objects"]}
        frames = [{box["tid"]: box["bbox"] for box in frame} for frame in anno["trajectories"]]
        relations = []
        for k, r in enumerate(anno["relation_instances"]):
            trajs = {}
            for side in ("subject", "object"):
                tid, traj = r[f"{side}_tid"], []
                for t in range(r["begin_fid"], r["end_fid"]):
                    box = frames[t].get(tid) if t < len(frames) else None
                    if box is None:
                        raise ValueError(f"video {vid}: relation {k} has no {side} box (tid {tid}) at frame {t}")
                    traj.append([box["xmin"], box["ymin"], box["xmax"], box["ymax"]])
                trajs[side] = traj
            relations.append({"triplet": [category[r["subject_tid"]], r["predicate"], category[r["object_tid"]]],
                              "subject_tid": r["subject_tid"], "object_tid": r["object_tid"],
                              "duration": [r["begin_fid"], r["end_fid"]],
                              "sub_traj": trajs["subject"], "obj_traj": trajs["object"]})
        gt[vid] = relations
    return gt


def degrade_predictions(gt, *, seed=0, box_sigma=0.0, shift=0, flip_p=0.0, drop_p=0.0, extra=0, cap=200,
                        float_boxes=False):
    """A prediction JSON {"version", "results"} from ground truth: each relation dropped with
    drop_p, its predicate flipped with flip_p, its span shifted by up to `shift` frames and boxes
    jittered by N(0, box_sigma); `extra` junk relations per video; at most `cap` per video.
    Scores: 1 - rank/n + U(0, 1e-3)."""
    rng = np.random.default_rng(seed)
    results = {}
    for vid, relations in gt.items():
        out = []
        for r in relations:
            if rng.random() < drop_p:
                continue
            triplet = list(r["triplet"])
            if rng.random() < flip_p:
                triplet[1] = PREDICATES[int(rng.integers(len(PREDICATES)))]
            b, e = r["duration"]
            d = int(rng.integers(-shift, shift + 1)) if shift else 0
            keep = slice(max(0, -d), (e - b) - max(0, d))  # the shifted span stays inside the original
            out.append(_relation(rng, triplet, [b + max(0, d), e + min(0, d)], r["sub_traj"][keep],
                                 r["obj_traj"][keep], box_sigma, float_boxes))
        for _ in range(extra if relations else 0):
            src = relations[int(rng.integers(len(relations)))]
            triplet = [src["triplet"][2], PREDICATES[int(rng.integers(len(PREDICATES)))], src["triplet"][0]]
            out.append(_relation(rng, triplet, src["duration"], src["obj_traj"], src["sub_traj"], 20.0, float_boxes))
        order = rng.permutation(len(out))
        n = len(out)
        results[vid] = [dict(out[k], score=1 - rank / n + float(rng.uniform(0, 1e-3)))
                        for rank, k in enumerate(order)][:cap]
    return {"version": "VERSION 1.0", "results": results}


def _relation(rng, triplet, duration, sub, obj, sigma, float_boxes):
    def jitter(traj):
        a = np.asarray(traj, dtype=float)
        if sigma:
            a = a + rng.normal(0, sigma, a.shape)
            a[:, 2:] = np.maximum(a[:, 2:], a[:, :2] + 1)
        return a.tolist() if float_boxes else np.round(a).astype(int).tolist()
    return {"triplet": triplet, "duration": list(duration), "sub_traj": jitter(sub), "obj_traj": jitter(obj)}
