"""TSPN target assignment on hand-made cases: span merging, pair labels, anchor labels and
deltas, sampling, predicate labels, and the oracle checks of vidvrd.md 5."""
import math

import pytest
import torch

from pyfastlab.vidvrd import TemporalSpanProposalNetwork, TSPNConfig, VideoTargets, collate, collate_targets
from pyfastlab.vidvrd.features import VideoTracks
from pyfastlab.vidvrd.spans import decode_spans, encode_spans, make_anchors
from pyfastlab.vidvrd.targets import (assign_anchor_targets, merge_relation_spans, pair_key, predicate_targets,
                                      rank_in_group, sample_per_group, targets_from_annotation)


def test_merge_joins_overlapping_and_touching_chunks_with_the_union_end():
    chunks = [(0, 1, 2, 0, 30), (0, 1, 2, 15, 45), (0, 1, 2, 45, 60), (0, 1, 2, 70, 80), (0, 1, 3, 10, 20),
              (0, 1, 2, 20, 40)]  # [20, 40) lies inside [0, 45): the union keeps 45, not the last end 40
    assert merge_relation_spans(chunks) == [(0, 1, 2, 0, 60), (0, 1, 2, 70, 80), (0, 1, 3, 10, 20)]


def test_targets_from_annotation_maps_tids_to_rows_and_predicates_to_ids():
    anno = {"video_id": "v", "relation_instances": [
        {"subject_tid": 7, "object_tid": 3, "predicate": "away", "begin_fid": 0, "end_fid": 30},
        {"subject_tid": 7, "object_tid": 3, "predicate": "away", "begin_fid": 15, "end_fid": 45}]}
    t = targets_from_annotation(anno, tids=[3, 7], predicates=("left", "away"))
    assert t.subject.tolist() == [1] and t.object.tolist() == [0] and t.predicate.tolist() == [1]
    assert t.span.tolist() == [[0, 45]]
    with pytest.raises(ValueError, match="predicate 'away'"):
        targets_from_annotation(anno, tids=[3, 7], predicates=("left",))


def _batch(n_objects=(3, 2), frames=(40, 20)):
    videos = []
    for k, (n, t) in enumerate(zip(n_objects, frames)):
        boxes = torch.tensor([10.0, 10.0, 50.0, 50.0]).expand(n, t, 4).clone()
        videos.append(VideoTracks(f"v{k}", boxes, torch.ones(n, t, dtype=torch.bool), torch.zeros(n, dtype=torch.long),
                                  torch.ones(n), tids=list(range(n))))
    return collate(videos)


def _targets(rows, batch):
    """rows per video: (subject, object, predicate, begin, end)."""
    out = []
    for r in rows:
        t = torch.tensor(r, dtype=torch.long).reshape(-1, 5)
        out.append(VideoTargets(t[:, 0], t[:, 1], t[:, 2], t[:, 3:5]))
    return collate_targets(out, batch)


def test_collate_targets_pair_labels_and_distinct_agnostic_spans():
    batch = _batch()
    tg = _targets([[(0, 1, 0, 0, 10), (0, 1, 1, 0, 10), (0, 1, 1, 20, 30)], [(1, 0, 2, 5, 9)]], batch)
    assert batch.labels.shape == (2, 3)
    assert tg.pair_labels.nonzero().tolist() == [[0, 0, 1], [1, 1, 0]]
    # (0,1) has two distinct spans ([0,10) shared by two predicates); video 1's pair one
    assert sorted(zip(tg.span_key.tolist(), map(tuple, tg.span.tolist()))) == \
        [(1, (0, 10)), (1, (20, 30)), (12, (5, 9))]


def test_anchor_labels_thresholds_forced_best_and_deltas():
    batch = _batch()
    tg = _targets([[(0, 1, 0, 0, 19), (0, 1, 0, 95, 130)], []], batch)
    anchors = torch.tensor([[0.0, 10], [0, 20], [30, 40], [100, 110], [0, 19]])
    keys = torch.tensor([pair_key(0, 0, 1, 3), pair_key(0, 1, 0, 3)])
    ok = torch.ones(2, 5, dtype=torch.bool)
    ok[0, 4] = False   # the exact anchor does not count: it must not win
    a = assign_anchor_targets(anchors, ok, keys, tg, fg_iou=0.7, bg_iou=0.3)
    # [0,10): IoU 10/19 ignored; [0,20): 19/20 fg; [30,40): bg; [100,110): 10/35 < 0.3 but forced
    assert a.labels.tolist() == [[-1, 1, 0, 1, -1], [0, 0, 0, 0, 0]]
    expected = encode_spans(anchors[[1, 3]], torch.tensor([[0.0, 19], [95, 130]]))
    torch.testing.assert_close(a.deltas[0, [1, 3]], expected)
    torch.testing.assert_close(decode_spans(anchors[[1, 3]], expected), torch.tensor([[0.0, 19], [95, 130]]))
    assert a.deltas[1].abs().sum() == 0


def test_anchor_targets_without_any_ground_truth():
    batch = _batch()
    tg = _targets([[], []], batch)
    anchors = make_anchors(4, 4, (8, 16))
    a = assign_anchor_targets(anchors, torch.ones(3, 8, dtype=torch.bool), torch.tensor([1, 2, 5]), tg, 0.7, 0.3)
    assert a.labels.eq(0).all() and a.deltas.shape == (3, 8, 2)


def test_rank_in_group_and_sampling_caps():
    groups = torch.tensor([0, 0, 0, 1, 1, 0])
    keys = torch.tensor([0.5, 0.1, 0.5, 0.3, 0.2, 0.0])
    eligible = torch.tensor([True, True, True, True, True, False])
    assert rank_in_group(groups, keys, eligible).tolist() == [1, 0, 2, 1, 0, 3]

    gen = torch.Generator().manual_seed(0)
    labels = torch.tensor([1] * 10 + [0] * 30 + [-1] * 5 + [1] * 2 + [0] * 3)
    groups = torch.tensor([0] * 45 + [1] * 5)
    chosen = sample_per_group(labels, groups, 8, 0.25, generator=gen)
    g0 = chosen & (groups == 0)
    assert int((g0 & (labels == 1)).sum()) == 2 and int(g0.sum()) == 8
    g1 = chosen & (groups == 1)
    assert int((g1 & (labels == 1)).sum()) == 2 and int(g1.sum()) == 5     # 2 pos + all 3 negatives
    assert not (chosen & (labels == -1)).any()
    fits = sample_per_group(labels, groups, 8, 0.25, all_if_fits=True, generator=gen)
    assert fits[45:].all() and int(fits[:45].sum()) == 8
    assert sample_per_group(labels, groups, 0, 0.25).equal(labels >= 0)


def test_predicate_targets_need_same_pair_and_tiou():
    batch = _batch()
    tg = _targets([[(0, 1, 0, 0, 20), (0, 1, 2, 10, 30)], [(1, 0, 1, 0, 10)]], batch)
    spans = torch.tensor([[0.0, 20], [5.0, 25], [0, 10], [0, 10]])
    keys = torch.tensor([1, 1, 1, 12])
    y = predicate_targets(spans, keys, tg, 3, 0.5)
    # [5,25): 15/25 = .6 with [0,20), 15/25 with [10,30); [0,10) vs [0,20) = .5 (hit), other pair: its own
    assert y.tolist() == [[1, 0, 0], [1, 0, 1], [1, 0, 0], [0, 1, 0]]


def _oracle_model():
    torch.manual_seed(0)
    return TemporalSpanProposalNetwork(TSPNConfig.demo(anchor_widths=(8, 16, 32)))


def test_oracle_scorer_keeps_every_gt_pair():
    model = _oracle_model()
    batch = _batch(n_objects=(6, 3), frames=(30, 30))
    labels = torch.zeros(2, 6, 6)
    labels[0, 0, 5] = labels[0, 4, 1] = labels[1, 2, 0] = 1
    _, valid, _ = model.relationness(batch, torch.zeros(2, 6, model.config.d))
    z = torch.where(valid, torch.where(labels > 0, 10.0, torch.rand(2, 6, 6)), torch.tensor(float("-inf")))
    keep = model.top_pairs(z, valid, 3)
    assert keep[labels > 0].all() and keep.sum().item() == 3 + 3


def test_top_pairs_ties_go_to_the_lower_flat_index():
    model = _oracle_model()
    z = torch.zeros(1, 3, 3)
    valid = ~torch.eye(3, dtype=torch.bool)[None]
    keep = model.top_pairs(torch.where(valid, z, torch.tensor(float("-inf"))), valid, 2)
    assert keep[0].nonzero().tolist() == [[0, 1], [0, 2]]


def test_oracle_deltas_and_nms_recover_gt_spans():
    model = _oracle_model()
    c = model.config
    steps = 40
    anchors = make_anchors(steps, c.stride, c.anchor_widths)
    gt = [torch.tensor([[12.0, 40], [90, 120]]), torch.tensor([[3.0, 35]])]
    q = torch.full((2, anchors.shape[0]), -10.0)
    deltas = torch.zeros(2, anchors.shape[0], 2)
    for p, spans in enumerate(gt):
        iou = torch.stack([((torch.minimum(anchors[:, 1], s[1]) - torch.maximum(anchors[:, 0], s[0])).clamp_min(0))
                           / (anchors[:, 1] - anchors[:, 0] + s[1] - s[0]
                              - (torch.minimum(anchors[:, 1], s[1]) - torch.maximum(anchors[:, 0], s[0])).clamp_min(0))
                           for s in spans])                          # [G, A]
        near = iou > 0.3
        for g, s in enumerate(spans):  # every near anchor regresses exactly; the best scores highest
            q[p, near[g]] = 5 + iou[g, near[g]]
            deltas[p, near[g]] = encode_spans(anchors[near[g]], s.expand(int(near[g].sum()), 2))
    ok = torch.ones_like(q, dtype=torch.bool)
    lo, hi = torch.tensor([0, 0]), torch.tensor([160, 160])
    rows, spans, scores = model._proposals(anchors, ok, q, deltas, lo, hi)
    for p, expected in enumerate(gt):  # the confident proposals are exactly the GT spans, once each
        got = sorted(map(tuple, spans[(rows == p) & (scores > 0)].tolist()))
        assert (rows == p).sum() <= model.config.spans_per_pair
        assert len(got) == len(expected)
        for a, b in zip(got, sorted(map(tuple, expected.tolist()))):
            assert a == pytest.approx(b, abs=1e-3)


def test_decode_caps_the_width_scale():
    anchors = torch.tensor([[0.0, 16]])
    out = decode_spans(anchors, torch.tensor([[0.0, 100.0]]))
    assert out[0, 1] - out[0, 0] == pytest.approx(16 * 1000 / 16)
    assert math.isfinite(float(out.sum()))
