"""evaluate: known answers of vidvrd.md section 5, equality with the self-contained Python port of
the helper (pyfastlab.reference.vidvrd_eval), and clear errors for malformed input."""
import copy

import pytest

from pyfastlab.reference import vidvrd_eval as port
from pyfastlab.vidvrd import degrade_predictions, evaluate, groundtruth_from_annotations, make_vidvrd_like

KEYS = ["mAP", "R@50", "R@100", "P@1", "P@5", "P@10"]


@pytest.fixture(scope="module")
def gt():
    return groundtruth_from_annotations(make_vidvrd_like(8, seed=3, n_categories=6))


def rel(triplet, begin, end, box=(0, 0, 9, 9), score=None, obj_box=None):
    r = {"triplet": list(triplet), "duration": [begin, end], "sub_traj": [list(box)] * (end - begin),
         "obj_traj": [list(obj_box or box)] * (end - begin)}
    if score is not None:
        r["score"] = score
    return r


def as_prediction(gt):
    n = sum(len(v) for v in gt.values())
    return {vid: [dict(r, score=1 - k / n) for k, r in enumerate(rels)] for vid, rels in gt.items()}


def test_groundtruth_as_prediction_is_perfect(gt):
    assert sum(len(v) for v in gt.values()) > 0
    assert evaluate(gt, as_prediction(gt)) == {k: 1.0 for k in KEYS}


@pytest.mark.parametrize("backend", ["cpu", "reference"])
@pytest.mark.parametrize("opts", [dict(), dict(box_sigma=4.0, shift=6, flip_p=0.2, drop_p=0.2, extra=5),
                                  dict(box_sigma=8.0, shift=12, flip_p=0.4, drop_p=0.1, extra=30, float_boxes=True)])
def test_equals_python_port(gt, backend, opts):
    pred = degrade_predictions(gt, seed=1, **opts)
    got = evaluate(gt, pred, backend=backend)
    want = port.evaluate(gt, pred["results"])
    assert got == want  # the hit flags come from bit-identical vIoU: metrics are ==
    assert all(type(v) is float for v in got.values())
    assert 0 < got["mAP"] < 1 or not opts


def test_padded_tagging_and_nreturns_follow_the_port(gt):
    pred = degrade_predictions(gt, seed=2, flip_p=0.5, extra=10)["results"]
    kwargs = dict(det_nreturns=(5,), tag_nreturns=(2, 3), tagging="padded", viou_threshold=0.3)
    got = evaluate(gt, pred, **kwargs)
    assert list(got) == ["mAP", "R@5", "P@2", "P@3"]
    assert got == port.evaluate(gt, pred, **kwargs)


def test_spec_example_ap_and_tagging():
    """G = 2, hits [1, 0, 1]: AP with float32 precision 2/3 (not 5/6); tagging with the middle
    of 3 triplets wrong."""
    gts = {"v": [rel(("a", "p", "b"), 0, 10), rel(("c", "p", "d"), 0, 10)]}
    preds = {"v": [rel(("a", "p", "b"), 0, 10, score=0.9), rel(("x", "p", "y"), 0, 10, score=0.8),
                   rel(("c", "p", "d"), 0, 10, score=0.7)]}
    out = evaluate(gts, preds)
    assert out["mAP"] == 0.8333333432674408 and out["R@50"] == 1.0 and out["P@1"] == 1.0
    assert out["P@5"] == out["P@10"] == pytest.approx(0.6666667, abs=1e-7)
    padded = evaluate(gts, preds, tagging="padded")
    assert padded["P@5"] == pytest.approx(0.4) and padded["P@10"] == pytest.approx(0.2)


@pytest.mark.parametrize("shift,hit", [(10, True), (11, False)])
def test_shifted_copy_around_the_threshold(shift, hit):
    """A copy shifted by d over L = 30 frames has vIoU (L - d) / (L + d): 0.5 is a hit, 0.463 not."""
    gts = {"v": [rel(("a", "p", "b"), 20, 50)]}
    preds = {"v": [rel(("a", "p", "b"), 20 + shift, 50 + shift, score=1.0)]}
    assert evaluate(gts, preds)["R@50"] == (1.0 if hit else 0.0)


def test_swap_duplicate_junk_and_missing_video():
    gts = {"v": [rel(("a", "p", "b"), 0, 10, box=(0, 0, 9, 9), obj_box=(50, 50, 90, 90))],
           "w": [rel(("a", "p", "b"), 0, 10)]}
    swapped = {"v": [rel(("b", "p", "a"), 0, 10, box=(50, 50, 90, 90), obj_box=(0, 0, 9, 9), score=1.0)]}
    assert evaluate(gts, swapped)["R@50"] == 0.0
    perfect = {vid: [dict(r, score=1.0) for r in rels] for vid, rels in gts.items()}
    dup = copy.deepcopy(perfect)
    dup["v"].append(dict(dup["v"][0], score=0.5))
    assert evaluate(gts, dup)["mAP"] == 1.0 and evaluate(gts, dup)["P@5"] == 1.0  # FP below the hit
    junk_below = copy.deepcopy(perfect)
    junk_below["v"].append(rel(("z", "p", "z"), 0, 10, score=0.1))
    junk_above = copy.deepcopy(perfect)
    junk_above["v"].append(rel(("z", "p", "z"), 0, 10, score=2.0))
    assert evaluate(gts, junk_below)["mAP"] == 1.0
    assert evaluate(gts, junk_above)["mAP"] < 1.0
    assert evaluate(gts, {"v": perfect["v"]})["mAP"] == 0.5  # "w" missing: AP 0
    assert evaluate(gts, {})["R@50"] == 0.0  # no predictions anywhere
    full_json = {"version": "VERSION 1.0", "results": perfect}
    assert evaluate(gts, full_json)["mAP"] == 1.0


@pytest.mark.parametrize("mutate,match", [
    (lambda g, p: p["v"][0].update(score=float("nan")), "prediction video v, relation 0: 'score' must be finite"),
    (lambda g, p: p["v"][0].pop("score"), "prediction video v, relation 0: missing field 'score'"),
    (lambda g, p: g["v"][0]["sub_traj"].pop(), r"groundtruth video v, relation 0: 'sub_traj' has 9 boxes"),
    (lambda g, p: p["v"][0].update(obj_traj=[[0, 0, 1]] * 10), "'obj_traj' must hold"),
    (lambda g, p: g["v"][0].update(triplet=["a", "b"]), "'triplet' must be"),
    (lambda g, p: g.update(v=[]), "no relation in any video"),
])
def test_malformed_input_names_video_and_field(mutate, match):
    gts = {"v": [rel(("a", "p", "b"), 0, 10)]}
    preds = {"v": [rel(("a", "p", "b"), 0, 10, score=1.0)]}
    mutate(gts, preds)
    with pytest.raises(ValueError, match=match):
        evaluate(gts, preds)


def test_bad_options():
    gts = {"v": [rel(("a", "p", "b"), 0, 10)]}
    for kwargs, match in ((dict(viou_threshold=1.5), "viou_threshold"), (dict(tagging="x"), "tagging"),
                          (dict(det_nreturns=(0,)), "det_nreturns")):
        with pytest.raises(ValueError, match=match):
            evaluate(gts, {}, **kwargs)


# ---- the generator's edge cases (vidvrd.md 4.1 step 6) ---------------------------------------------

@pytest.fixture(scope="module")
def edge_gt():
    annos = make_vidvrd_like(8, seed=4, n_categories=6, edge_cases=True, chunk_train=True, n_train=4)
    return groundtruth_from_annotations(annos)


def _test_split(edge_gt):
    return {vid: rels for k, (vid, rels) in enumerate(edge_gt.items()) if k >= 4}


def test_edge_case_groundtruth_as_prediction_is_perfect(edge_gt):
    """Duplicate triplets under other tids, relations on the first and last frame, overlapping
    train chunks, short trajectories: each GT copy matches its own GT. On the test split
    (<= 50 GT per video) every metric is 1; the chunked train videos hold more than 100 GT, so
    there only mAP and tagging are 1 and R@K is the share of GT within the first K."""
    test = _test_split(edge_gt)
    assert any(not rels for rels in test.values()) and all(len(r) <= 50 for r in test.values())
    assert evaluate(test, as_prediction(test)) == port.evaluate(test, as_prediction(test)) == {k: 1.0 for k in KEYS}
    pred = as_prediction(edge_gt)
    out = evaluate(edge_gt, pred)
    assert out == port.evaluate(edge_gt, pred)
    assert max(len(r) for r in edge_gt.values()) > 100 and out["mAP"] == out["P@10"] == 1.0
    n_gt = sum(len(r) for r in edge_gt.values())
    assert out["R@100"] == pytest.approx(sum(min(100, len(r)) for r in edge_gt.values()) / n_gt, rel=1e-6)


@pytest.mark.parametrize("opts", [dict(box_sigma=4.0, shift=6, flip_p=0.2, drop_p=0.2, extra=5),
                                  dict(box_sigma=8.0, shift=12, flip_p=0.4, drop_p=0.1, extra=30, float_boxes=True)])
def test_edge_cases_equal_python_port(edge_gt, opts):
    pred = degrade_predictions(edge_gt, seed=1, **opts)
    assert evaluate(edge_gt, pred) == port.evaluate(edge_gt, pred["results"])


def test_relation_free_videos_are_skipped_as_the_helper_does(edge_gt):
    """The helper loops over GT videos with relations: predictions on a relation-free video count
    for nothing (not as false positives, not in tagging), and the video adds no AP term."""
    test = _test_split(edge_gt)
    free = [vid for vid, rels in test.items() if not rels]
    busy = next(vid for vid, rels in test.items() if rels)
    pred = as_prediction(test)
    for vid in free:
        pred[vid] = [dict(r, score=2.0) for r in test[busy]]  # junk above everything
    assert free and evaluate(test, pred) == port.evaluate(test, pred) == {k: 1.0 for k in KEYS}
    only_free = {vid: [] for vid in free}
    with pytest.raises(ValueError, match="no relation in any video"):
        evaluate(only_free, {})


def test_single_frame_and_boundary_relations():
    """A one-frame relation and relations on the first and last frame of a video match exactly
    and miss by one frame (1-frame vIoU: 1 or 0; a 2-frame copy shifted by 1: 1/3)."""
    gts = {"v": [rel(("a", "p", "b"), 0, 1), rel(("a", "q", "b"), 0, 2), rel(("a", "r", "b"), 98, 100)]}
    exact = {"v": [dict(r, score=1.0 - 0.1 * k) for k, r in enumerate(gts["v"])]}
    assert evaluate(gts, exact) == port.evaluate(gts, exact) == {k: 1.0 for k in KEYS}
    off = {"v": [rel(("a", "p", "b"), 1, 2, score=1.0), rel(("a", "q", "b"), 1, 3, score=0.9),
                 rel(("a", "r", "b"), 97, 99, score=0.8)]}
    out = evaluate(gts, off)
    assert out == port.evaluate(gts, off) and out["R@50"] == 0.0 and out["P@1"] == 1.0
    half = evaluate(gts, off, viou_threshold=1 / 3)
    assert half == port.evaluate(gts, off, viou_threshold=1 / 3) and half["R@50"] == pytest.approx(2 / 3)


def _hit_shift(L):
    """The largest shift d with (L - d) / (L + d) >= 0.5: d <= L / 3."""
    return L // 3


@pytest.mark.parametrize("L", [30, 31, 32, 45, 100])
@pytest.mark.parametrize("sign", [1, -1])
def test_shifted_relations_hit_only_within_the_closed_form_bound(L, sign):
    """A GT relation of L frames with constant boxes (area A per frame, subject and object) and
    its copy shifted by d frames share L - d frames of equal boxes: I = (L - d) A and the union is
    2 L A - I = (L + d) A, so vIoU = (L - d) / (L + d) for both trajectories, and the copy is a
    hit iff d <= L / 3. Checked on both sides of the bound, shifted later and earlier."""
    b0 = 200
    gts = {"v": [rel(("a", "p", "b"), b0, b0 + L, box=(10, 20, 59, 79), obj_box=(100, 0, 140, 30))]}
    for d, hit in ((_hit_shift(L), True), (_hit_shift(L) + 1, False)):
        shifted = rel(("a", "p", "b"), b0 + sign * d, b0 + L + sign * d, box=(10, 20, 59, 79),
                      obj_box=(100, 0, 140, 30), score=1.0)
        viou = (L - d) / (L + d)
        assert (viou >= 0.5) == hit
        preds = {"v": [shifted]}
        got = evaluate(gts, preds)
        assert got == port.evaluate(gts, preds)
        assert got["R@50"] == (1.0 if hit else 0.0) and got["mAP"] == (1.0 if hit else 0.0)
        # the threshold at the closed form itself: a hit at viou, a miss just above it
        assert evaluate(gts, preds, viou_threshold=viou)["R@50"] == 1.0
        assert evaluate(gts, preds, viou_threshold=min(1.0, viou + 1e-9))["R@50"] == 0.0


# ---- input forms and scores ----------------------------------------------------------------------

@pytest.mark.parametrize("score,match", [
    ("0.9", r"prediction video v, relation 1: 'score' must be a real number .*'0.9' \(str\)"),
    (None, r"prediction video v, relation 1: 'score' must be a real number .*None"),
    (True, r"prediction video v, relation 1: 'score' must be a real number .*bool"),
    (float("inf"), r"prediction video v, relation 1: 'score' must be finite"),
    (10 ** 400, r"prediction video v, relation 1: 'score' must be finite"),
], ids=["str", "none", "bool", "inf", "huge-int"])
def test_non_numeric_scores_are_rejected_naming_video_and_relation(score, match):
    gts = {"v": [rel(("a", "p", "b"), 0, 10)]}
    preds = {"v": [rel(("a", "p", "b"), 0, 10, score=0.5), dict(rel(("a", "p", "b"), 0, 10), score=score)]}
    with pytest.raises(ValueError, match=match):
        evaluate(gts, preds)


def test_int_and_float_scores_mix():
    gts = {"v": [rel(("a", "p", "b"), 0, 10)]}
    preds = {"v": [rel(("z", "p", "z"), 0, 10, score=0.5), rel(("a", "p", "b"), 0, 10, score=1)]}
    assert evaluate(gts, preds)["mAP"] == 1.0


def test_both_prediction_forms_are_accepted_and_others_raise():
    gts = {"v": [rel(("a", "p", "b"), 0, 10)]}
    results = {"v": [rel(("a", "p", "b"), 0, 10, score=1.0)]}
    for form in (results, {"version": "VERSION 1.0", "results": results}, {"results": results},
                 {"version": "VERSION 1.0", "results": results, "external_data": {"used": False}}):
        assert evaluate(gts, form)["mAP"] == 1.0
    with pytest.raises(ValueError, match="prediction video predictions: expected a list of relations, got dict"):
        evaluate(gts, {"predictions": results})
    for wrapped in ({"version": "VERSION 1.0", "predictions": results},
                    {"version": "VERSION 1.0", "results": [results]}):
        with pytest.raises(ValueError, match="'results' must be a dict"):
            evaluate(gts, wrapped)
    with pytest.raises(ValueError, match="prediction video v: expected a list"):
        evaluate(gts, {"v": results["v"][0]})


@pytest.mark.parametrize("kwargs,expected", [
    (dict(det_nreturns=50), ["R@50"]), (dict(det_nreturns=[5, 50]), ["R@5", "R@50"]),
])
def test_one_int_nreturns_is_a_one_element_tuple(kwargs, expected):
    gts = {"v": [rel(("a", "p", "b"), 0, 10)]}
    preds = {"v": [rel(("a", "p", "b"), 0, 10, score=1.0)]}
    out = evaluate(gts, preds, tag_nreturns=5, **kwargs)
    assert [k for k in out if k.startswith("R@")] == expected and list(out)[-1] == "P@5"
    ks = kwargs["det_nreturns"]
    assert out == evaluate(gts, preds, tag_nreturns=(5,), det_nreturns=tuple(ks) if isinstance(ks, list) else (ks,))


@pytest.mark.parametrize("name", ["det_nreturns", "tag_nreturns"])
@pytest.mark.parametrize("value", [0, -5, True, 2.5, (10, 0), (True,), (5.0,), None, "50", (5, 5)])
def test_bad_nreturns_are_named(name, value):
    gts = {"v": [rel(("a", "p", "b"), 0, 10)]}
    with pytest.raises(ValueError, match=name):
        evaluate(gts, {}, **{name: value})


def _random_case(seed):
    """A small random case built to stress the greedy matching: few triplets (many same-triplet
    candidates per prediction), scores from a coarse grid (ties), predictions that are exact copies
    of a GT shifted by L / 3 frames (vIoU exactly 0.5 over identical boxes), near copies, junk."""
    import random

    rng = random.Random(seed)
    triplets = [("a", "p", "b"), ("a", "q", "b"), ("c", "p", "a")]

    def track(n, x, y, w):
        return [[x + t // 3, y, x + t // 3 + w, y + w] for t in range(n)]

    gt, pred = {}, {}
    for v in range(rng.randint(3, 6)):
        gts = []
        for _ in range(rng.randint(0 if v == 0 else 1, 6)):
            b = rng.randint(0, 40)
            L = rng.choice([3, 6, 9, 30, 60])
            x, y, w = rng.randint(0, 40), rng.randint(0, 40), rng.randint(2, 30)
            gts.append({"triplet": list(rng.choice(triplets)), "duration": [b, b + L],
                        "sub_traj": track(L, x, y, w), "obj_traj": track(L, y, x, w)})
        preds = []
        for _ in range(rng.randint(0, 25)):
            score = rng.choice([0.1, 0.5, 0.5, 0.9, 1, 1])  # ties, and int scores
            kind = rng.random()
            if gts and kind < 0.4:  # a copy shifted by L / 3: vIoU (L - d) / (L + d) = 0.5 exactly
                g = rng.choice(gts)
                b, e = g["duration"]
                d = (e - b) // 3 * rng.choice([0, 1, -1])
                keep = slice(max(0, -d), (e - b) - max(0, d))
                preds.append(dict(g, duration=[b + max(0, d), e + min(0, d)], sub_traj=g["sub_traj"][keep],
                                  obj_traj=g["obj_traj"][keep], score=score))
            elif gts and kind < 0.8:  # a jittered copy, possibly under another triplet
                g = rng.choice(gts)
                j = rng.choice([0, 1, 3])
                preds.append(dict(g, triplet=list(rng.choice(triplets)), score=score,
                                  sub_traj=[[c + rng.randint(-j, j) for c in box] for box in g["sub_traj"]],
                                  obj_traj=[[c + 0.5 * rng.randint(-j, j) for c in box] for box in g["obj_traj"]]))
            else:
                b, L = rng.randint(0, 60), rng.randint(1, 40)
                x, y, w = rng.randint(0, 40), rng.randint(0, 40), rng.randint(2, 30)
                preds.append({"triplet": list(rng.choice(triplets)), "duration": [b, b + L], "score": score,
                              "sub_traj": track(L, x, y, w), "obj_traj": track(L, x, y, w)})
        gt[f"v{v}"] = gts
        pred[f"v{v}"] = preds
    return gt, pred


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("threshold", [0.5, 0.3, 0.0, 1.0])
def test_random_cases_equal_the_port_exactly(seed, threshold):
    """The lazy greedy matching (only the vIoU it reads) gives exactly the port's metrics: ties in
    score and vIoU exactly at the threshold included."""
    gt, pred = _random_case(seed)
    if not any(gt.values()):
        gt["v0"] = [rel(("a", "p", "b"), 0, 10)]
    want = port.evaluate(gt, pred, viou_threshold=threshold)
    for backend in ("cpu", "reference"):
        assert evaluate(gt, pred, viou_threshold=threshold, backend=backend) == want


def test_random_cases_reach_the_threshold_exactly():
    """The random cases do contain pairs at vIoU == 0.5 exactly, scored as hits."""
    from pyfastlab.reference.vidvrd_viou import viou_pair_loop

    at = 0
    for seed in range(12):
        gt, pred = _random_case(seed)
        for vid, preds in pred.items():
            for p in preds:
                for g in gt[vid]:
                    if p["triplet"] == g["triplet"]:
                        ov = min(viou_pair_loop(p["sub_traj"], p["duration"], g["sub_traj"], g["duration"]),
                                 viou_pair_loop(p["obj_traj"], p["duration"], g["obj_traj"], g["duration"]))
                        at += ov == 0.5
    assert at > 0
