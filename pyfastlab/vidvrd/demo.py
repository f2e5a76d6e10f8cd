"""The TSPN demo on synthetic VidVRD-format videos (vidvrd.md section 8): `pyfastlab demo vidvrd`.

56 generated videos (40 train with chunked labels, 16 test), a TSPN on box-geometry features
trained with single-video steps, then the official VidVRD metrics of four prediction sets: TSPN
(relationness top-K), the same heads on all pairs (ρ ≡ 1), random scores on the all-pairs pool, and
the ground truth itself (the ceiling and an evaluator check).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from .config import TSPNConfig
from .evaluate import evaluate
from .inference import relations_from_output
from .synthetic import CATEGORIES, PREDICATES, groundtruth_from_annotations, make_vidvrd_like
from .training import make_batch, make_optimizer, prepare_videos
from .tspn import TemporalSpanProposalNetwork

N_VIDEOS, N_TRAIN, N_CATEGORIES, FRAME_RANGE = 56, 40, 6, (150, 450)
# Deviations from the spec's demo column (vidvrd.md 4.2/8), measured on this data: with two
# undilated convolutions (a receptive field of ±2 steps = ±8 frames) the span head cannot see the
# ends of spans of 30-240 frames, and on chunked train labels 12 or 24 epochs leave the model
# under-trained (test mAP 0.09 at 24 epochs, 0.17 at 48, in about 50 s).
EPOCHS = 48
DEMO_OVERRIDES = dict(temporal_dilations=(1, 2, 4, 8))
METRICS = ("mAP", "R@50", "R@100", "P@1", "P@5", "P@10")


def generate(seed: int) -> dict:
    """The demo's annotations: chunked train labels (as VidVRD's), unchunked test labels."""
    return make_vidvrd_like(N_VIDEOS, seed=seed, style="vidvrd", n_categories=N_CATEGORIES, chunk_train=True,
                            n_train=N_TRAIN, frame_range=FRAME_RANGE)


def train(model, videos, epochs: int, seed: int, console: Console):
    """Single-video steps, shuffled each epoch; returns (seconds, mean losses of the last epoch)."""
    gen = torch.Generator().manual_seed(seed)
    batches = [make_batch([v]) for v in videos]
    opt, sched = make_optimizer(model, epochs * len(batches))
    model.train()
    start = time.perf_counter()
    for epoch in range(epochs):
        totals = {"L_rel": 0.0, "L_span": 0.0, "L_pred": 0.0}
        for k in torch.randperm(len(batches), generator=gen).tolist():
            losses = model.loss(*batches[k], generator=gen)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            opt.step()
            sched.step()
            for key in totals:
                totals[key] += float(losses[key].detach()) / len(batches)
        console.print(f"  epoch {epoch + 1:2d}/{epochs}: " + ", ".join(f"{k} {v:.3f}" for k, v in totals.items())
                      + f"  ({time.perf_counter() - start:.0f} s)")
    return time.perf_counter() - start, totals


def random_scores(model, batch, seed: int) -> dict:
    """The all-pairs candidate pool with i.i.d. U(0, 1) scores, top relations_per_video per video."""
    cap = model.config.relations_per_video
    pool = relations_from_output(model(batch, all_pairs=True), batch, model.config.replace(relations_per_video=10 ** 9),
                                 use_relationness=False)
    rng = np.random.default_rng(seed)
    out = {}
    for vid, rels in pool.items():
        rescored = [dict(r, score=float(s)) for r, s in zip(rels, rng.uniform(0, 1, len(rels)))]
        out[vid] = sorted(rescored, key=lambda r: r["score"], reverse=True)[:cap]
    return out


def gt_as_prediction(gt: dict) -> dict:
    return {vid: [dict(r, score=1.0 - k / max(len(rels), 1)) for k, r in enumerate(rels)] for vid, rels in gt.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="pyfastlab demo vidvrd", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs (CI smoke test)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: single-video steps are too small to split, "
                             "and a second thread only adds contention on a shared machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    epochs = 2 if args.quick else args.epochs
    console = Console(width=110) if not Console().is_terminal else Console()
    wall = time.perf_counter()
    torch.manual_seed(args.seed)

    t0 = time.perf_counter()
    annos = generate(args.seed)
    ids = list(annos)
    train_annos, test_annos = [annos[v] for v in ids[:N_TRAIN]], [annos[v] for v in ids[N_TRAIN:]]
    config = TSPNConfig.demo(object_categories=CATEGORIES[:N_CATEGORIES], predicates=PREDICATES, **DEMO_OVERRIDES)
    train_videos, test_videos = prepare_videos(train_annos, config), prepare_videos(test_annos, config)
    gt = groundtruth_from_annotations(test_annos)
    frames = [a["frame_count"] for a in annos.values()]
    objects = [len(a["subject/objects"]) for a in annos.values()]
    console.print(f"[bold]data[/]: {len(train_annos)} train / {len(test_annos)} test videos, T {min(frames)}..{max(frames)}, "
                  f"N {min(objects)}..{max(objects)}, {N_CATEGORIES} categories, {len(PREDICATES)} predicates; "
                  f"{sum(len(a['relation_instances']) for a in train_annos)} train label instances, "
                  f"{sum(map(len, gt.values()))} test relations; generated in {time.perf_counter() - t0:.1f} s")

    model = TemporalSpanProposalNetwork(config)
    console.print(f"[bold]training[/] TSPN ({sum(p.numel() for p in model.parameters()):,} parameters), "
                  f"{epochs} epochs of {len(train_videos)} single-video steps")
    seconds, losses = train(model, train_videos, epochs, args.seed, console)
    console.print(f"trained in {seconds:.1f} s; final " + ", ".join(f"{k} {v:.3f}" for k, v in losses.items()))

    model.eval()
    batch, targets = make_batch(test_videos)
    with torch.no_grad():
        out = model(batch)
        valid = out.valid.reshape(len(test_videos), -1).sum(1)
        scored, kept = int(valid.sum()), int(valid.clamp(max=config.pairs_kept).sum())
        gt_pairs = targets.pair_labels > 0
        recall = float(model.top_pairs(out.z, out.valid, config.pairs_kept)[gt_pairs].float().mean())

        rows = []
        for name, make, n_kept in (
                ("TSPN top-K", lambda: model.predict(batch), kept),
                ("all pairs ρ≡1", lambda: model.predict(batch, all_pairs=True), scored),
                ("random scores", lambda: random_scores(model, batch, args.seed), scored),
                ("GT as pred.", lambda: gt_as_prediction(gt), None)):
            t = time.perf_counter()
            metrics = evaluate(gt, make())
            rows.append((name, metrics, n_kept, time.perf_counter() - t))

    table = Table(title="VidVRD metrics on the 16 synthetic test videos (pairs scored / kept, wall s)")
    table.add_column("method")
    for col in METRICS + ("scored", "kept", "s"):
        table.add_column(col, justify="right")
    for name, m, n_kept, sec in rows:
        table.add_row(name, *(f"{m[k]:.3f}" for k in METRICS), "—" if n_kept is None else str(scored),
                      "—" if n_kept is None else str(n_kept), f"{sec:.1f}")
    console.print(table)
    tspn, allp, rand, gtrow = (r[1] for r in rows)
    console.print(f"pairs scored {scored} (ordered co-occurring pairs), kept {kept} = {kept / max(scored, 1):.0%} "
                  f"(K = {config.pairs_kept}); relationness recall of GT pairs in the top-K: {recall:.3f}")
    console.print(f"checks: TSPN mAP / random {tspn['mAP'] / max(rand['mAP'], 1e-12):.1f}x (target ≥ 3), "
                  f"TSPN / all pairs {tspn['mAP'] / max(allp['mAP'], 1e-12):.2f}x (≥ 0.9), kept {kept / max(scored, 1):.0%} "
                  f"(≤ 40 %), recall@K {recall:.3f} (≥ 0.9), GT row all 1.0: {all(v == 1.0 for v in gtrow.values())}")
    console.print(f"total wall time {time.perf_counter() - wall:.1f} s")
    return 0 if all(v == 1.0 for v in gtrow.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
