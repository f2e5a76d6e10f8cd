"""TSPN training plumbing: annotations to (tracks, targets) and the optimiser schedules of
vidvrd.md 4.2 (`schedule="cosine"` default, `"repo"` the official code's)."""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .config import TSPNConfig
from .features import VideoTracks, collate, tracks_from_annotation
from .targets import VideoTargets, collate_targets, targets_from_annotation

REPO_STEPS = (500, 1000, 1500, 2000)   # warm-up end, ×0.1, ×0.1, total iterations of the official code


def prepare_videos(annos, config: TSPNConfig) -> list:
    """[(VideoTracks, VideoTargets)] of annotations ({video_id: anno} or a list) in the VidVRD layout."""
    items = annos.values() if isinstance(annos, dict) else annos
    out = []
    for anno in items:
        tracks = tracks_from_annotation(anno, config.object_categories)
        out.append((tracks, targets_from_annotation(anno, tracks.tids, config.predicates)))
    return out


def make_batch(videos: Sequence[tuple]):
    """(VideoBatch, BatchTargets) of a list of (VideoTracks, VideoTargets)."""
    batch = collate([v for v, _ in videos])
    return batch, collate_targets([t for _, t in videos], batch)


def make_optimizer(model: torch.nn.Module, total_steps: int):
    """(optimizer, LR scheduler stepped once per iteration) for model.config.schedule:
    "cosine": AdamW(2e-3, weight decay 1e-4) with cosine decay to 0 over total_steps;
    "repo": Adam(1e-2), linear warm-up over 500 iterations, ×0.1 at 1000 and 1500 (the official
    code runs 2000 iterations; total_steps is not used)."""
    if model.config.schedule == "cosine":
        opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
        steps = max(int(total_steps), 1)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    warm, first, second, _ = REPO_STEPS

    def factor(k):
        return min(1.0, (k + 1) / warm) * (0.1 if k >= first else 1.0) * (0.1 if k >= second else 1.0)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


__all__ = ["prepare_videos", "make_batch", "make_optimizer", "VideoTracks", "VideoTargets"]
