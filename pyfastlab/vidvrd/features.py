"""Per-video object tracks (`VideoTracks`), their box-geometry features and padded batches
(vidvrd.md 4.2, "Input per video"; an interpretation).

A video's objects are tracks on its frame timeline: boxes [N, T, 4] (x1, y1, x2, y2), a presence
mask [N, T], category ids [N] and label scores [N] (1 for ground-truth tracks). Interior gaps of a
track are filled by linear interpolation (the mask still marks them absent), so every frame of a
relation between a track's first and last frame has a box. Videos of different N and T batch by
padding; padded objects and frames have mask False and never contribute.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor

GEOMETRY_DIM = 8


@dataclass
class VideoTracks:
    """One video's object tracks. `tids` are the annotation's track ids (row k is tid tids[k])."""
    video_id: str
    boxes: Tensor                      # [N, T, 4] float32, interior gaps interpolated
    mask: Tensor                       # [N, T] bool, True where the track is observed
    labels: Tensor                     # [N] int64 category ids
    label_scores: Tensor               # [N] float32 (1 for GT tracks)
    width: int = 1280
    height: int = 720
    features: Optional[Tensor] = None  # [N, T, D]; None -> box_geometry_features
    tids: list = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.boxes.shape[1])


def box_geometry_features(boxes: Tensor, mask: Tensor, width: float, height: float) -> Tensor:
    """[N, T, 8] per-frame features of boxes [N, T, 4] with presence mask [N, T]: cx/W, cy/H,
    log w/W, log h/H, 30Δcx/W, 30Δcy/H (one-frame differences, 0 where the previous frame is
    absent), presence, t/T. Absent frames are all zero except t/T."""
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be [N, T, 4], got shape {tuple(boxes.shape)}")
    if mask.shape != boxes.shape[:2]:
        raise ValueError(f"mask must be [N, T] = {tuple(boxes.shape[:2])}, got shape {tuple(mask.shape)}")
    n, t = boxes.shape[:2]
    b = boxes.float()
    m = mask.to(torch.bool)
    cx = (b[..., 0] + b[..., 2]) / (2 * width)
    cy = (b[..., 1] + b[..., 3]) / (2 * height)
    w = ((b[..., 2] - b[..., 0]).clamp_min(1.0) / width).log()
    h = ((b[..., 3] - b[..., 1]).clamp_min(1.0) / height).log()
    both = m.clone()
    both[:, 1:] &= m[:, :-1]
    both[:, 0] = False
    dcx = torch.zeros_like(cx)
    dcy = torch.zeros_like(cy)
    dcx[:, 1:] = 30 * (cx[:, 1:] - cx[:, :-1])
    dcy[:, 1:] = 30 * (cy[:, 1:] - cy[:, :-1])
    time = (torch.arange(t, dtype=torch.float32) / max(t, 1)).expand(n, t)
    mf = m.float()
    feats = torch.stack([cx * mf, cy * mf, w * mf, h * mf, dcx * both, dcy * both, mf, time], -1)
    return feats


def _interpolate_gaps(boxes: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Linear interpolation of each track's boxes over frames between its first and last presence."""
    out = boxes.copy()
    frames = np.arange(boxes.shape[1])
    for k in range(boxes.shape[0]):
        seen = np.flatnonzero(present[k])
        if seen.size < 2 or seen[-1] - seen[0] + 1 == seen.size:
            continue
        inside = frames[seen[0]:seen[-1] + 1]
        for c in range(4):
            out[k, seen[0]:seen[-1] + 1, c] = np.interp(inside, seen, boxes[k, seen, c])
    return out


def tracks_from_annotation(anno: dict, categories: Sequence[str]) -> VideoTracks:
    """`VideoTracks` of an annotation in the VidVRD JSON layout, with the ground-truth tracks
    (label score 1). `categories` fixes the category ids. Frames past len(trajectories) are absent."""
    cat_id = {c: k for k, c in enumerate(categories)}
    objects = anno["subject/objects"]
    tids = [o["tid"] for o in objects]
    row = {tid: k for k, tid in enumerate(tids)}
    n, t = len(objects), int(anno["frame_count"])
    boxes = np.zeros((n, t, 4), dtype=np.float32)
    present = np.zeros((n, t), dtype=bool)
    for f, frame in enumerate(anno["trajectories"][:t]):
        for box in frame:
            k = row[box["tid"]]
            bb = box["bbox"]
            boxes[k, f] = (bb["xmin"], bb["ymin"], bb["xmax"], bb["ymax"])
            present[k, f] = True
    for o in objects:
        if o["category"] not in cat_id:
            raise ValueError(f"video {anno['video_id']}: category {o['category']!r} is not in `categories`")
    labels = torch.tensor([cat_id[o["category"]] for o in objects], dtype=torch.int64)
    return VideoTracks(video_id=anno["video_id"], boxes=torch.from_numpy(_interpolate_gaps(boxes, present)),
                       mask=torch.from_numpy(present), labels=labels, label_scores=torch.ones(n),
                       width=int(anno.get("width", 1280)), height=int(anno.get("height", 720)), tids=tids)


@dataclass
class VideoBatch:
    """Padded batch of B videos: objects to N = max N_v, frames to T = max T_v."""
    video_ids: list
    boxes: Tensor          # [B, N, T, 4]
    mask: Tensor           # [B, N, T] bool
    labels: Tensor         # [B, N] int64 (0 on padding)
    label_scores: Tensor   # [B, N] (0 on padding)
    features: Tensor       # [B, N, T, D]
    num_objects: Tensor    # [B] int64
    num_frames: Tensor     # [B] int64
    tids: list             # per video, the annotation tids of its rows

    @property
    def object_mask(self) -> Tensor:
        """[B, N] True for real objects."""
        n = self.boxes.shape[1]
        return torch.arange(n, device=self.boxes.device)[None] < self.num_objects[:, None]

    def to(self, device) -> "VideoBatch":
        return VideoBatch(self.video_ids, self.boxes.to(device), self.mask.to(device), self.labels.to(device),
                          self.label_scores.to(device), self.features.to(device), self.num_objects.to(device),
                          self.num_frames.to(device), self.tids)


def collate(videos: Sequence[VideoTracks]) -> VideoBatch:
    """Pad a list of `VideoTracks` into one `VideoBatch` (features default to box geometry)."""
    if len(videos) == 0:
        raise ValueError("collate needs at least one video")
    feats = [v.features if v.features is not None else box_geometry_features(v.boxes, v.mask, v.width, v.height)
             for v in videos]
    dims = {f.shape[-1] for f in feats}
    if len(dims) != 1:
        raise ValueError(f"all videos must have the same feature dimension D, got {sorted(dims)}")
    b = len(videos)
    n = max(int(v.boxes.shape[0]) for v in videos)
    t = max(v.num_frames for v in videos)
    d = dims.pop()
    boxes = torch.zeros(b, n, t, 4)
    mask = torch.zeros(b, n, t, dtype=torch.bool)
    labels = torch.zeros(b, n, dtype=torch.int64)
    scores = torch.zeros(b, n)
    features = torch.zeros(b, n, t, d)
    for k, (v, f) in enumerate(zip(videos, feats)):
        nv, tv = v.boxes.shape[:2]
        boxes[k, :nv, :tv] = v.boxes
        mask[k, :nv, :tv] = v.mask
        labels[k, :nv] = v.labels
        scores[k, :nv] = v.label_scores
        features[k, :nv, :tv] = f
    return VideoBatch(video_ids=[v.video_id for v in videos], boxes=boxes, mask=mask, labels=labels,
                      label_scores=scores, features=features,
                      num_objects=torch.tensor([int(v.boxes.shape[0]) for v in videos]),
                      num_frames=torch.tensor([v.num_frames for v in videos]), tids=[list(v.tids) for v in videos])
