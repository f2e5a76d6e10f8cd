"""1-D span geometry of the TSPN span head (vidvrd.md 4.2 steps 4-5; an interpretation): anchors on
a strided timeline, delta decoding and RoIAlign over a pair's temporal features."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

# exp(δ_w) is capped as in Faster R-CNN's box decoding, so a wild width logit cannot overflow.
MAX_LOG_SCALE = math.log(1000.0 / 16)


def make_anchors(num_steps: int, stride: int, widths: Sequence[float], device=None) -> Tensor:
    """[T' * A, 2] anchor spans (frames), step-major: centre (t' + ½)·stride, each width in turn."""
    centres = (torch.arange(num_steps, dtype=torch.float32, device=device) + 0.5) * stride
    w = torch.tensor([float(x) for x in widths], dtype=torch.float32, device=device)
    c = centres[:, None].expand(-1, len(w))
    return torch.stack([c - w / 2, c + w / 2], -1).reshape(-1, 2)


def decode_spans(anchors: Tensor, deltas: Tensor) -> Tensor:
    """Spans [..., 2] from anchors [..., 2] and deltas [..., 2] = (δ_c, δ_w):
    ĉ = c + δ_c·w, ŵ = w·exp(min(δ_w, log(1000/16)))."""
    c = (anchors[..., 0] + anchors[..., 1]) / 2
    w = anchors[..., 1] - anchors[..., 0]
    cc = c + deltas[..., 0] * w
    ww = w * torch.exp(deltas[..., 1].clamp(max=MAX_LOG_SCALE))
    return torch.stack([cc - ww / 2, cc + ww / 2], -1)


def encode_spans(anchors: Tensor, spans: Tensor) -> Tensor:
    """The inverse of decode_spans: (t_c, t_w) = ((c_g − c_a)/w_a, log(w_g/w_a))."""
    ca, wa = (anchors[..., 0] + anchors[..., 1]) / 2, anchors[..., 1] - anchors[..., 0]
    cg, wg = (spans[..., 0] + spans[..., 1]) / 2, spans[..., 1] - spans[..., 0]
    return torch.stack([(cg - ca) / wa, torch.log(wg / wa)], -1)


def roi_align_1d(features: Tensor, rois: Tensor, roi_index: Tensor, lengths: Tensor, bins: int,
                 samples: int = 2) -> Tensor:
    """[R, bins, C] RoIAlign of features [P, T, C] over rois [R, 2] (continuous step coordinates,
    a sample at x reads the linear interpolation between steps ⌊x⌋ and ⌊x⌋ + 1) of rows
    roi_index [R]; each bin averages `samples` evenly spaced samples; positions are clamped to
    [0, lengths[roi_index] − 1]."""
    r = rois.shape[0]
    p, t, c = features.shape
    if r == 0:
        return features.new_zeros(0, bins, c)
    start, end = rois[:, 0:1], rois[:, 1:2]
    size = (end - start).clamp_min(1e-6) / bins
    offs = (torch.arange(bins * samples, device=rois.device, dtype=rois.dtype) // samples
            + ((torch.arange(bins * samples, device=rois.device) % samples).to(rois.dtype) + 0.5) / samples)
    x = start + offs[None] * size                                  # [R, bins * samples]
    hi = (lengths[roi_index] - 1).clamp_min(0).to(x.dtype)[:, None]
    x = torch.minimum(x.clamp_min(0.0), hi)
    x0 = x.floor()
    frac = (x - x0).to(features.dtype)
    i0 = x0.long()
    i1 = torch.minimum(i0 + 1, hi.long())
    base = (roi_index * t)[:, None]
    flat = features.reshape(p * t, c)
    v = flat[base + i0] * (1 - frac)[..., None] + flat[base + i1] * frac[..., None]
    return v.reshape(r, bins, samples, c).mean(2)
