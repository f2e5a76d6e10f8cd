"""TSPN inference: the output is a valid VidVRD prediction for `evaluate`, durations lie in each
pair's co-occurrence with one box per frame, and a tiny model overfits one video to high mAP."""
import json

import pytest
import torch

from pyfastlab.vidvrd import (TemporalSpanProposalNetwork, TSPNConfig, evaluate, groundtruth_from_annotations,
                              make_batch, make_optimizer, make_vidvrd_like, prediction_json, prepare_videos)
from pyfastlab.vidvrd.features import tracks_from_annotation

CATS = ("airplane", "antelope", "ball", "bear", "bicycle", "bird")
CFG = TSPNConfig.demo(d=32, pair_hidden=32, temporal_channels=32, object_categories=CATS, span_samples=0)


@pytest.fixture(scope="module")
def annos():
    return make_vidvrd_like(3, seed=5, n_categories=6)


def test_prediction_is_valid_for_the_evaluator(annos):
    torch.manual_seed(0)
    model = TemporalSpanProposalNetwork(CFG.replace(relations_per_video=30)).eval()
    videos = prepare_videos(annos, model.config)
    batch, _ = make_batch(videos)
    results = model.predict(batch)
    assert set(results) == set(annos)
    for vid, rels in results.items():
        assert 0 < len(rels) <= 30
        scores = [r["score"] for r in rels]
        assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
        anno = annos[vid]
        present = {}
        for t, frame in enumerate(anno["trajectories"]):
            for box in frame:
                present.setdefault(box["tid"], set()).add(t)
        for r in rels:
            b, e = r["duration"]
            assert isinstance(b, int) and isinstance(e, int) and 0 <= b < e <= anno["frame_count"]
            assert len(r["sub_traj"]) == len(r["obj_traj"]) == e - b
            assert r["triplet"][0] in CATS and r["triplet"][1] in CFG.predicates and r["triplet"][2] in CATS
    gt = groundtruth_from_annotations(annos)
    payload = json.loads(json.dumps(prediction_json(results)))          # the official file round trip
    metrics = evaluate(gt, payload)
    assert set(metrics) == {"mAP", "R@50", "R@100", "P@1", "P@5", "P@10"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())


def test_durations_stay_inside_the_pairs_co_occurrence(annos):
    torch.manual_seed(1)
    model = TemporalSpanProposalNetwork(CFG).eval()
    videos = prepare_videos(annos, model.config)
    batch, _ = make_batch(videos)
    out = model(batch)
    assert (out.cand_span[:, 1] - out.cand_span[:, 0] >= 1).all()
    assert (out.cand_span[:, 0] >= out.cooc_lo[out.cand_pair]).all()
    assert (out.cand_span[:, 1] <= out.cooc_hi[out.cand_pair]).all()
    # at most spans_per_pair per pair after NMS, and no kept pair outside the top-K at inference
    assert torch.bincount(out.cand_pair).max() <= CFG.spans_per_pair and out.pair_in_topk.all()
    assert torch.bincount(out.pair_video).max() <= CFG.pairs_kept


def test_tracklet_gaps_are_interpolated():
    anno = make_vidvrd_like(1, seed=2, n_categories=6)["synthetic_00000"]
    tid = anno["trajectories"][50][0]["tid"]
    kept = anno["trajectories"][49][0]["bbox"], anno["trajectories"][51][0]["bbox"]
    anno = json.loads(json.dumps(anno))
    anno["trajectories"][50] = [b for b in anno["trajectories"][50] if b["tid"] != tid]
    tracks = tracks_from_annotation(anno, CATS)
    row = tracks.tids.index(tid)
    assert not tracks.mask[row, 50]
    mid = [(kept[0][k] + kept[1][k]) / 2 for k in ("xmin", "ymin", "xmax", "ymax")]
    assert tracks.boxes[row, 50].tolist() == pytest.approx(mid)


@pytest.fixture
def one_thread():
    """Single-video steps are too small to split; a second thread only adds contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_model_overfits_one_video(one_thread):
    torch.manual_seed(0)
    annos = make_vidvrd_like(1, seed=27, n_categories=6)   # T = 121, 7 objects, 2 related pairs, 4 relations
    anno = next(iter(annos.values()))
    assert len(anno["relation_instances"]) == 4
    config = TSPNConfig.demo(d=32, pair_hidden=32, temporal_channels=32, object_categories=CATS,
                             temporal_dilations=(1, 2, 4, 8))
    model = TemporalSpanProposalNetwork(config)
    batch, targets = make_batch(prepare_videos(annos, config))
    steps = 100
    opt, sched = make_optimizer(model, steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        losses = model.loss(batch, targets, generator=gen)
        opt.zero_grad()
        losses["loss"].backward()
        opt.step()
        sched.step()
    model.eval()
    metrics = evaluate(groundtruth_from_annotations(annos), model.predict(batch))
    assert metrics["mAP"] >= 0.8, metrics
    assert metrics["R@100"] == 1.0 and metrics["P@1"] == 1.0, metrics
