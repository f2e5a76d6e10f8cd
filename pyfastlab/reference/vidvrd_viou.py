"""Pure-PyTorch reference of trajectory_viou, written from vidvrd.md section 3.4: the oracle of the
tests (float64) and the eager baseline of the benchmarks (vectorised over [T, p, Q], chunked over p).

Frames outside a span are selected away with where(), never multiplied by a 0/1 mask, so NaN or inf
boxes outside a span never reach a sum. Sums over frames run in frame order (a cumulative sum along
the frames, its last entry; adding the 0 of a frame outside a span changes nothing): the compiled
kernels' and the VidVRD helper's loop order, so a vIoU of exactly 0.5 stays 0.5 (a tree-ordered
.sum() can round it below). Frames are the leading dim of the summed tensors: torch's CUDA cumsum
scans a leading dim sequentially too (given more than one column).
"""
from __future__ import annotations

import torch


def clamp_spans(span: torch.Tensor, n_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(begin, end) clamped to 0 <= begin <= end <= T (an inverted span becomes empty)."""
    begin = span[:, 0].clamp(0, n_frames)
    end = torch.maximum(span[:, 1].clamp(max=n_frames), begin)
    return begin, end


def _in_span(begin, end, n_frames, device):
    t = torch.arange(n_frames, device=device)
    return (t >= begin[:, None]) & (t < end[:, None])


def _frame_order_sum(x):
    """Sum over dim 0 (frames) in frame order: ((x[0] + x[1]) + x[2]) + ..."""
    if x.shape[0] == 0:
        return x.sum(0)
    return x.cumsum(0)[-1]


def _volumes(boxes, begin, end, delta):
    boxes = boxes.transpose(0, 1)  # [T, n, 4]: frames first
    area = (boxes[..., 2] - boxes[..., 0] + delta) * (boxes[..., 3] - boxes[..., 1] + delta)
    inside = _in_span(begin, end, boxes.shape[0], boxes.device).T
    return _frame_order_sum(torch.where(inside, area, torch.zeros((), dtype=area.dtype, device=area.device)))


def trajectory_viou(boxes_a, span_a, boxes_b, span_b, *, pixel_inclusive=True, chunk=64):
    """[P, Q] voluminal IoU in float64 (float32 output unless a box tensor is float64)."""
    out_dtype = torch.float64 if torch.float64 in (boxes_a.dtype, boxes_b.dtype) else torch.float32
    delta = 1.0 if pixel_inclusive else 0.0
    n_frames = boxes_a.shape[1]
    a, b = boxes_a.double(), boxes_b.double()
    a0, a1 = clamp_spans(span_a, n_frames)
    b0, b1 = clamp_spans(span_b, n_frames)
    vol_a, vol_b = _volumes(a, a0, a1, delta), _volumes(b, b0, b1, delta)
    bt = b.transpose(0, 1)[:, None]                                    # [T, 1, Q, 4]
    in_b = _in_span(b0, b1, n_frames, a.device).T[:, None]             # [T, 1, Q]
    zero = torch.zeros((), dtype=torch.float64, device=a.device)
    rows = []
    for p in range(0, a.shape[0], chunk):  # chunks of p bound the [T, p, Q] temporaries
        ac = a[p:p + chunk].transpose(0, 1)[:, :, None]                # [T, p, 1, 4]
        w = torch.clamp(torch.minimum(ac[..., 2], bt[..., 2]) - torch.maximum(ac[..., 0], bt[..., 0]) + delta, min=0)
        h = torch.clamp(torch.minimum(ac[..., 3], bt[..., 3]) - torch.maximum(ac[..., 1], bt[..., 1]) + delta, min=0)
        both = _in_span(a0[p:p + chunk], a1[p:p + chunk], n_frames, a.device).T[:, :, None] & in_b
        inter = _frame_order_sum(torch.where(both, w * h, zero))
        union = (vol_a[p:p + chunk, None] + vol_b[None]) - inter
        rows.append(torch.where(union > 0, inter / union, torch.where(union.isnan(), union, zero)))
    if not rows:
        return torch.zeros(0, b.shape[0], dtype=out_dtype, device=a.device)
    return torch.cat(rows).to(out_dtype)


def viou_pair_loop(traj_1, duration_1, traj_2, duration_2, pixel_inclusive=True):
    """The VidVRD-helper's per-frame Python loop for one pair (a trajectory is a list of boxes over
    its own duration [begin, end)): the per-frame baseline of the benchmarks and the evaluate port."""
    delta = 1 if pixel_inclusive else 0
    lo, hi = max(duration_1[0], duration_2[0]), min(duration_1[1], duration_2[1])
    inter = 0
    for t in range(lo, hi):
        r1, r2 = traj_1[t - duration_1[0]], traj_2[t - duration_2[0]]
        w = max(0, min(r1[2], r2[2]) - max(r1[0], r2[0]) + delta)
        h = max(0, min(r1[3], r2[3]) - max(r1[1], r2[1]) + delta)
        inter += w * h
    vol_1 = 0
    for r in traj_1:
        vol_1 += (r[2] - r[0] + delta) * (r[3] - r[1] + delta)
    vol_2 = 0
    for r in traj_2:
        vol_2 += (r[2] - r[0] + delta) * (r[3] - r[1] + delta)
    union = (vol_1 + vol_2) - inter
    return float(inter) / union if union > 0 else 0.0
