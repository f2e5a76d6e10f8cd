"""The synthetic VidVRD-format generator: layout, determinism, consistency of relations with boxes
and with the predicate rules, and the round trip through per-video JSON files."""
import numpy as np
import pytest

from pyfastlab.vidvrd import degrade_predictions, groundtruth_from_annotations, make_vidvrd_like, write_dataset
from pyfastlab.vidvrd import synthetic


@pytest.fixture(scope="module")
def annos():
    return make_vidvrd_like(6, seed=11)


def test_layout_and_determinism(annos):
    assert annos == make_vidvrd_like(6, seed=11)
    assert annos != make_vidvrd_like(6, seed=12)
    for vid, a in annos.items():
        assert a["video_id"] == vid and (a["fps"], a["width"], a["height"]) == (30, 1280, 720)
        assert 120 <= a["frame_count"] <= 600 and len(a["trajectories"]) <= a["frame_count"]
        assert 3 <= len(a["subject/objects"]) <= 8
        assert all(so["category"] in synthetic.CATEGORIES for so in a["subject/objects"])
        for frame in a["trajectories"]:
            for box in frame:
                b = box["bbox"]
                assert all(isinstance(v, int) for v in b.values()) and b["xmax"] >= b["xmin"] + 2
    assert sum(len(a["relation_instances"]) for a in annos.values()) > 0
    vidor = make_vidvrd_like(1, style="vidor")
    anno = next(iter(vidor.values()))
    assert {"version", "video_hash", "video_path"} <= set(anno)


def test_relations_follow_the_rules(annos):
    for a in annos.values():
        n = len(a["subject/objects"])
        T = a["frame_count"]
        boxes = np.zeros((n, T, 4))
        present = np.zeros((n, T), bool)
        for t, frame in enumerate(a["trajectories"]):
            for box in frame:
                b = box["bbox"]
                boxes[box["tid"], t] = [b["xmin"], b["ymin"], b["xmax"], b["ymax"]]
                present[box["tid"], t] = True
        objects = [r["object_tid"] for r in a["relation_instances"]]
        for r in a["relation_instances"]:
            b, e = r["begin_fid"], r["end_fid"]
            assert r["predicate"] in synthetic.PREDICATES and e - b >= synthetic.MIN_RUN
            both = np.flatnonzero(present[r["subject_tid"]] & present[r["object_tid"]])
            lo, hi = both[0], both[-1] + 1
            assert len(both) == hi - lo and lo <= b and e <= hi  # tids present on every relation frame
            flags = synthetic._rules(boxes[r["subject_tid"], lo:hi], boxes[r["object_tid"], lo:hi])[r["predicate"]]
            assert flags[b - lo:e - lo].all()
            assert len({(r["subject_tid"], o) for o in objects if o == r["object_tid"]}) == 1  # one subject each


def test_groundtruth_round_trip(tmp_path, annos):
    gt = groundtruth_from_annotations(annos)
    paths = write_dataset(tmp_path, annos, "test")
    assert groundtruth_from_annotations(paths) == gt
    for vid, rels in gt.items():
        assert len(rels) == len(annos[vid]["relation_instances"])
        for r in rels:
            b, e = r["duration"]
            assert len(r["sub_traj"]) == len(r["obj_traj"]) == e - b


def test_missing_box_names_video_relation_and_frame(annos):
    vid, anno = next((v, a) for v, a in annos.items() if a["relation_instances"])
    r = anno["relation_instances"][0]
    broken = dict(anno, trajectories=[list(f) for f in anno["trajectories"]])
    t = r["begin_fid"]
    broken["trajectories"][t] = [box for box in broken["trajectories"][t] if box["tid"] != r["subject_tid"]]
    with pytest.raises(ValueError, match=f"video {vid}: relation 0 has no subject box .* at frame {t}"):
        groundtruth_from_annotations([broken])


def test_degrade_predictions(annos):
    gt = groundtruth_from_annotations(annos)
    pred = degrade_predictions(gt, seed=0, box_sigma=3.0, shift=5, drop_p=0.3, extra=4, cap=20)
    assert pred["version"] == "VERSION 1.0" and set(pred["results"]) == set(gt)
    for vid, rels in pred["results"].items():
        assert len(rels) <= 20
        scores = [r["score"] for r in rels]
        assert scores == sorted(scores, reverse=True)
        for r in rels:
            b, e = r["duration"]
            assert len(r["sub_traj"]) == e - b and all(isinstance(v, int) for v in r["sub_traj"][0])
    assert degrade_predictions(gt, seed=0) == degrade_predictions(gt, seed=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="style"):
        make_vidvrd_like(1, style="coco")
    with pytest.raises(ValueError, match="n_categories"):
        make_vidvrd_like(1, n_categories=0)
