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
