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


# ---- options: chunked training labels and the edge cases (vidvrd.md 4.1 steps 5 and 6) ----------

def _presence(anno):
    present = {}
    for t, frame in enumerate(anno["trajectories"]):
        for box in frame:
            present.setdefault(box["tid"], []).append(t)
    return present


def test_chunk_train_emits_aligned_chunks_inside_runs():
    plain = make_vidvrd_like(7, seed=5, n_train=4)
    chunked = make_vidvrd_like(7, seed=5, n_train=4, chunk_train=True)
    for k, (vid, anno) in enumerate(chunked.items()):
        base = plain[vid]
        assert {key: v for key, v in anno.items() if key != "relation_instances"} == \
            {key: v for key, v in base.items() if key != "relation_instances"}
        if k >= 4:  # the test split stays unchunked
            assert anno["relation_instances"] == base["relation_instances"]
            continue
        present = _presence(anno)
        keys = set()
        runs = {}
        for r in base["relation_instances"]:
            runs.setdefault((r["subject_tid"], r["object_tid"], r["predicate"]), []).append((r["begin_fid"], r["end_fid"]))
        for r in anno["relation_instances"]:
            b, e = r["begin_fid"], r["end_fid"]
            key = (r["subject_tid"], r["object_tid"], r["predicate"])
            assert b % 15 == 0 and e - b == 30 and (key, b) not in keys
            keys.add((key, b))
            both = set(present[key[0]]) & set(present[key[1]])
            assert set(range(b, e)) <= both  # tids present on every relation frame
            assert any(min(e, re) - max(b, rb) >= 15 for rb, re in runs[key])  # overlaps a run by >= 15 frames
        # every run long enough for an inside chunk gets one (chunks cover the runs)
        for key, spans in runs.items():
            both = set(present[key[0]]) & set(present[key[1]])
            for rb, re in spans:
                if any(s % 15 == 0 and set(range(s, s + 30)) <= both and min(re, s + 30) - max(rb, s) >= 15
                       for s in range(rb - 15, re)):
                    assert any(k2 == key and min(re, s + 30) - max(rb, s) >= 15 for k2, s in keys)
    assert sum(len(a["relation_instances"]) for a in list(chunked.values())[:4]) > 0


def test_default_train_split_is_the_demo_40_16():
    annos = make_vidvrd_like(56, seed=0, chunk_train=True, frame_range=(150, 450))
    chunked = [all(r["begin_fid"] % 15 == 0 and r["end_fid"] - r["begin_fid"] == 30 for r in a["relation_instances"])
               for a in annos.values()]
    assert all(chunked[:40])
    assert not all(chunked[40:])  # maximal runs in the test split
    for a in list(annos.values())[40:]:
        assert len(a["relation_instances"]) <= 50


@pytest.fixture(scope="module")
def edge():
    return make_vidvrd_like(8, seed=7, edge_cases=True)


def test_edge_cases_are_present(edge):
    plain = make_vidvrd_like(8, seed=7)
    duplicates = 0
    for k, (vid, anno) in enumerate(edge.items()):
        T = len(anno["trajectories"])
        assert T == plain[vid]["frame_count"] < anno["frame_count"] <= T + 30  # short trajectories
        # the original objects are unchanged: edge cases only add
        assert anno["subject/objects"][:len(plain[vid]["subject/objects"])] == plain[vid]["subject/objects"]
        present = _presence(anno)
        assert any(len(ts) == 1 for ts in present.values())  # a single-frame object
        relations = anno["relation_instances"]
        if k % 4 == 3:
            assert relations == [] and len(anno["subject/objects"]) > 0  # relation-free video
            continue
        assert any(r["begin_fid"] == 0 for r in relations) and any(r["end_fid"] == T for r in relations)
        category = {so["tid"]: so["category"] for so in anno["subject/objects"]}
        tids_of = {}
        for r in relations:
            triplet = (category[r["subject_tid"]], r["predicate"], category[r["object_tid"]])
            tids_of.setdefault(triplet, set()).add((r["subject_tid"], r["object_tid"]))
        duplicates += any(len(pairs) > 1 for pairs in tids_of.values())
    assert duplicates >= 3  # the same triplet under other tids


def test_edge_cases_keep_the_rules_and_layout(edge):
    test_relations_follow_the_rules(edge)
    gt = groundtruth_from_annotations(edge)
    assert [len(v) for v in gt.values()] == [len(a["relation_instances"]) for a in edge.values()]
    one = make_vidvrd_like(8, seed=7, edge_cases=["relation_free"])
    assert [bool(a["relation_instances"]) for a in one.values()] == [k % 4 != 3 for k in range(8)]
    assert make_vidvrd_like(8, seed=7, edge_cases=list(reversed(synthetic.EDGE_CASES))) == edge


def test_bad_options():
    with pytest.raises(ValueError, match="edge_cases: unknown"):
        make_vidvrd_like(1, edge_cases=["nope"])
    with pytest.raises(ValueError, match="n_train"):
        make_vidvrd_like(2, n_train=3)
    with pytest.raises(ValueError, match="frame_range"):
        make_vidvrd_like(1, frame_range=(10, 5))


def test_frame_range():
    annos = make_vidvrd_like(4, seed=1, style="vidor", frame_range=(300, 1800))
    assert all(300 <= a["frame_count"] <= 1800 for a in annos.values())
