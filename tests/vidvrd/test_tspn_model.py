"""TSPN heads and model: shapes and gradients of every head, the box-geometry features, RoIAlign,
padded batches against a per-video loop, masked objects, and the interpretation switches."""
import pytest
import torch

from pyfastlab import ops
from pyfastlab.vidvrd import (TemporalSpanProposalNetwork, TSPNConfig, box_geometry_features, make_batch,
                              make_optimizer, make_vidvrd_like, prepare_videos)
from pyfastlab.vidvrd.heads import (ObjectContextEncoder, PairScorer, PairSequenceEncoder, PredicateHead, SpanHead,
                                    pool_steps)
from pyfastlab.vidvrd.spans import roi_align_1d
from pyfastlab.vidvrd.synthetic import CATEGORIES

CFG = TSPNConfig.demo(d=16, pair_hidden=16, temporal_channels=16, pair_loss_samples=0, span_samples=0,
                      object_categories=CATEGORIES[:6])


@pytest.fixture(scope="module")
def videos():
    return prepare_videos(make_vidvrd_like(3, seed=3, n_categories=6), CFG)


def _grads_flow(module, loss):
    loss.backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_box_geometry_features():
    boxes = torch.tensor([[[0.0, 0, 128, 72], [12.8, 0, 140.8, 72], [0, 0, 0, 0]]])
    mask = torch.tensor([[True, True, False]])
    f = box_geometry_features(boxes, mask, 1280, 720)
    assert f.shape == (1, 3, 8)
    torch.testing.assert_close(f[0, 0, :4], torch.tensor([0.05, 0.05, torch.log(torch.tensor(0.1)),
                                                          torch.log(torch.tensor(0.1))]))
    torch.testing.assert_close(f[0, 1, 4], torch.tensor(30 * 0.01))    # 30 Δcx / W
    assert f[0, 0, 4] == 0 and f[0, 2, :7].abs().sum() == 0 and f[0, 2, 7] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="mask"):
        box_geometry_features(boxes, mask[:, :2], 1280, 720)


def test_encoder_shapes_gradients_and_padding():
    enc = ObjectContextEncoder(8, 16, 6, context_layers=1)
    x = torch.randn(2, 4, 10, 8)
    mask = torch.rand(2, 4, 10) > 0.3
    obj = torch.tensor([[True, True, True, False], [True, True, False, False]])
    mask &= obj[..., None]
    e, h = enc(x, mask, torch.randint(0, 6, (2, 4)), obj, torch.tensor([10, 7]))
    assert e.shape == (2, 4, 10, 16) and h.shape == (2, 4, 16)
    assert h[~obj].abs().sum() == 0 and e[~mask].abs().sum() == 0
    _grads_flow(enc, (e.sum() + h.pow(2).sum()))


@pytest.mark.parametrize("kind", ["mlp", "bilinear_logits"])
def test_pair_scorer_shapes_and_gradients(kind):
    torch.manual_seed(0)
    scorer = PairScorer(kind, 16, 12, 6)
    h = torch.randn(2, 5, 16, requires_grad=True)
    logits = torch.randn(2, 5, 6)
    z = scorer(h, logits)
    assert z.shape == (2, 5, 5)
    _grads_flow(scorer, z.pow(2).sum())
    if kind == "mlp":  # the factorised pair MLP equals the MLP on [h_i; h_j]
        u, v = scorer.subject(h), scorer.object(h)
        eager = (scorer.weight * torch.relu(u[:, :, None] + v[:, None])).sum(-1) + scorer.bias
        torch.testing.assert_close(z, eager, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(z - scorer.bias, ops.pairwise_mlp_scores(u, v, scorer.weight))


def test_pool_steps_average_present_frames():
    x = torch.arange(10.0).reshape(1, 1, 10, 1)
    mask = torch.tensor([[[True] * 3 + [False] + [True] * 4 + [False] * 2]])
    pooled, m = pool_steps(x, mask, 4)
    assert pooled.flatten().tolist() == [1.0, 5.5, 0.0] and m.flatten().tolist() == [True, True, False]


def test_pair_sequence_span_and_predicate_heads():
    torch.manual_seed(0)
    seq, span, pred = PairSequenceEncoder(16, 12), SpanHead(12, 3), PredicateHead(12, 4, 16, 5)
    e = torch.randn(2, 3, 7, 16)
    m = torch.ones(2, 3, 7, dtype=torch.bool)
    m[1, 2, 4:] = False
    boxes = torch.tensor([10.0, 20, 60, 90]) + 5 * torch.rand(2, 3, 7, 4)
    video, sub, obj = torch.tensor([0, 1, 1]), torch.tensor([0, 2, 0]), torch.tensor([1, 0, 1])
    y, g, both = seq(e, m, boxes, video, sub, obj)
    assert y.shape == (3, 7, 12) and g.shape == (3, 12) and both[1].tolist() == [True] * 4 + [False] * 3
    q, d = span(y)
    assert q.shape == (3, 7, 3) and d.shape == (3, 7, 3, 2)
    pooled = roi_align_1d(y, torch.tensor([[0.0, 3.0], [1.5, 6.0]]), torch.tensor([0, 1]), torch.tensor([7, 4]), 4)
    logits = pred(pooled, g[[0, 1]], torch.randn(2, 16), torch.randn(2, 16), torch.rand(2, 2))
    assert logits.shape == (2, 5)
    loss = y.sum() + q.sum() + d.pow(2).sum() + logits.sum()
    loss.backward()
    for module in (seq, span, pred):
        for name, p in module.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_roi_align_1d_matches_a_direct_loop():
    torch.manual_seed(0)
    feats = torch.randn(2, 6, 3, dtype=torch.float64)
    rois = torch.tensor([[0.5, 3.0], [-1.0, 9.0], [2.0, 2.0]], dtype=torch.float64)
    index, lengths = torch.tensor([0, 1, 1]), torch.tensor([6, 4])
    out = roi_align_1d(feats, rois, index, lengths, bins=3, samples=2)
    for r in range(3):
        s, e = rois[r].tolist()
        size = max(e - s, 1e-6) / 3
        for b in range(3):
            acc = 0
            for k in range(2):
                x = min(max(s + (b + (k + 0.5) / 2) * size, 0.0), lengths[index[r]].item() - 1)
                x0 = int(x)
                x1 = min(x0 + 1, lengths[index[r]].item() - 1)
                acc = acc + feats[index[r], x0] * (1 - (x - x0)) + feats[index[r], x1] * (x - x0)
            torch.testing.assert_close(out[r, b], acc / 2)


def test_model_forward_shapes_and_all_losses_have_gradients(videos):
    torch.manual_seed(0)
    model = TemporalSpanProposalNetwork(CFG)
    batch, tg = make_batch(videos)
    out = model(batch, tg)
    p, a = out.objectness.shape
    assert out.deltas.shape == (p, a, 2) and out.anchors.shape == (a, 2) and out.anchor_ok.shape == (p, a)
    assert out.pred_logits.shape == (out.cand_span.shape[0], len(CFG.predicates))
    # every GT pair is among the kept pairs (inject_gt_pairs), at most K per video come from the top-K
    gt_pairs = set(map(tuple, tg.pair_labels.nonzero().tolist()))
    kept = set(zip(out.pair_video.tolist(), out.pair_sub.tolist(), out.pair_obj.tolist()))
    assert gt_pairs <= kept
    assert torch.bincount(out.pair_video[out.pair_in_topk]).max() <= CFG.pairs_kept
    losses = model.loss(batch, tg)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    missing = [n for n, prm in model.named_parameters() if prm.grad is None or prm.grad.abs().sum() == 0]
    assert not missing


def test_padded_batch_equals_a_per_video_loop(videos):
    torch.manual_seed(0)
    model = TemporalSpanProposalNetwork(CFG).eval()
    batch, tg = make_batch(videos)
    together = model.loss(batch, tg)
    out = model(batch)
    singles = []
    for k, v in enumerate(videos):
        b1, t1 = make_batch([v])
        singles.append(model.loss(b1, t1))
        o1 = model(b1)
        n = b1.labels.shape[1]
        torch.testing.assert_close(out.z[k, :n, :n], o1.z[0], atol=1e-5, rtol=1e-5)
        rows = out.pair_video == k
        torch.testing.assert_close(out.objectness[rows][:, :o1.objectness.shape[1]], o1.objectness, atol=1e-5,
                                   rtol=1e-5)
    for key in ("L_rel", "L_span", "L_pred"):
        torch.testing.assert_close(together[key], torch.stack([s[key] for s in singles]).mean(), atol=1e-5,
                                   rtol=1e-5)


def test_losses_stay_finite_with_all_masked_objects(videos):
    torch.manual_seed(0)
    model = TemporalSpanProposalNetwork(CFG)
    batch, tg = make_batch(videos[:2])
    batch.mask[1] = False                       # every object of video 1 absent on every frame
    batch.features[1] = 0
    losses = model.loss(batch, tg)
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    res = model.predict(batch)
    assert res[batch.video_ids[1]] == []


@pytest.mark.parametrize("changes", [dict(pair_scorer="bilinear_logits"), dict(rel_loss="dense_sigmoid"),
                                     dict(rel_pos_fraction=0.5, pair_loss_samples=4, span_samples=8),
                                     dict(inject_gt_pairs=False, context_layers=0)])
def test_switches_train(videos, changes):
    torch.manual_seed(0)
    model = TemporalSpanProposalNetwork(CFG.replace(**changes))
    batch, tg = make_batch(videos)
    losses = model.loss(batch, tg, generator=torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())
    losses["loss"].backward()


def test_config_validation_and_schedules():
    with pytest.raises(ValueError, match="pair_scorer"):
        TSPNConfig(pair_scorer="dot")
    with pytest.raises(ValueError, match="rel_loss"):
        TSPNConfig(rel_loss="focal")
    with pytest.raises(ValueError, match="config"):
        TemporalSpanProposalNetwork({"d": 4})
    model = TemporalSpanProposalNetwork(CFG)
    opt, sched = make_optimizer(model, 10)
    assert isinstance(opt, torch.optim.AdamW) and opt.param_groups[0]["lr"] == pytest.approx(2e-3)
    for _ in range(10):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    model = TemporalSpanProposalNetwork(CFG.replace(schedule="repo"))
    opt, sched = make_optimizer(model, 10)
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == pytest.approx(1e-2 / 500)
