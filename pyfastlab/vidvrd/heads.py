"""The TSPN's heads (vidvrd.md 4.2 steps 1-5; an interpretation): object context, relationness,
pair sequence, span head and predicate head. Each works on a padded batch or on a flat list of
kept pairs, so ragged videos need no Python loop."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .. import ops

PSI_DIM = 8


def masked_mean_max(x: Tensor, mask: Tensor, dim: int):
    """Mean and max of x over `dim` where mask (x's shape without the last axis) is True; 0 where
    nothing is present."""
    m = mask.unsqueeze(-1).to(x.dtype)
    count = m.sum(dim).clamp_min(1.0)
    mean = (x * m).sum(dim) / count
    neg = torch.finfo(x.dtype).min
    mx = torch.where(mask.unsqueeze(-1), x, torch.full_like(x, neg)).amax(dim)
    any_ = mask.any(dim).unsqueeze(-1)
    return mean, torch.where(any_, mx, torch.zeros_like(mx))


def presence_bounds(mask: Tensor):
    """First present index and last present index + 1 along the last axis (0, 0 if never present)."""
    t = mask.shape[-1]
    idx = torch.arange(t, device=mask.device)
    first = torch.where(mask, idx, torch.full_like(idx, t)).amin(-1)
    last = torch.where(mask, idx + 1, torch.zeros_like(idx)).amax(-1)
    return torch.where(last > 0, first, torch.zeros_like(first)), last


class ObjectContextEncoder(nn.Module):
    """e_i(t) = MLP(X_i(t)); h_i = LayerNorm(W_h[mean_t e_i; max_t e_i; E_obj[y_i]; a_i/T; b_i/T;
    (b_i − a_i)/T]), then `context_layers` self-attention layers over the video's objects."""

    def __init__(self, feature_dim: int, d: int, num_classes: int, context_layers: int = 1, heads: int = 4):
        super().__init__()
        self.frame_mlp = nn.Sequential(nn.Linear(feature_dim, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU())
        self.class_embedding = nn.Embedding(num_classes, d)
        self.summary = nn.Linear(3 * d + 3, d)
        self.norm = nn.LayerNorm(d)
        self.context = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, batch_first=True)
            for _ in range(context_layers))

    def forward(self, features: Tensor, mask: Tensor, labels: Tensor, object_mask: Tensor, num_frames: Tensor):
        """features [B, N, T, D], mask [B, N, T], labels [B, N], object_mask [B, N], num_frames [B]
        -> e [B, N, T, d] (0 on absent frames), h [B, N, d] (0 on padding)."""
        e = self.frame_mlp(features) * mask.unsqueeze(-1).to(features.dtype)
        mean, mx = masked_mean_max(e, mask, 2)
        first, last = presence_bounds(mask)
        t = num_frames.clamp_min(1).to(e.dtype)[:, None]
        a, b = first.to(e.dtype) / t, last.to(e.dtype) / t
        h = self.norm(self.summary(torch.cat([mean, mx, self.class_embedding(labels), a[..., None], b[..., None],
                                              (b - a)[..., None]], -1)))
        # a video without real objects attends to its padding (then zeroed), never to nothing (NaN)
        pad = ~object_mask & object_mask.any(1, keepdim=True)
        for layer in self.context:
            h = layer(h, src_key_padding_mask=pad)
        return e, h * object_mask.unsqueeze(-1).to(h.dtype)


class PairScorer(nn.Module):
    """Relationness logits z [B, N, N] of every ordered pair.

    "mlp": u = W_s h + c, v = W_o h, z = Σ_h w_h relu(u_i + v_j) + b_r (`ops.pairwise_mlp_scores`,
    no [B, N, N, H] tensor). "bilinear_logits": z = MLP_s(ℓ_i) · MLP_o(ℓ_j) on class logits ℓ."""

    def __init__(self, kind: str, d: int, hidden: int, num_classes: int):
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.subject = nn.Linear(d, hidden)
            self.object = nn.Linear(d, hidden, bias=False)
            self.weight = nn.Parameter(torch.randn(hidden) / hidden ** 0.5)
            self.bias = nn.Parameter(torch.zeros(()))
        else:
            self.subject = nn.Sequential(nn.Linear(num_classes, 64), nn.ReLU(), nn.Linear(64, num_classes))
            self.object = nn.Sequential(nn.Linear(num_classes, 64), nn.ReLU(), nn.Linear(64, num_classes))

    def forward(self, h: Tensor, class_logits: Tensor) -> Tensor:
        if self.kind == "mlp":
            u, v = self.subject(h), self.object(h)
            return ops.pairwise_mlp_scores(u, v, self.weight.to(u.dtype)) + self.bias
        return torch.bmm(self.subject(class_logits), self.object(class_logits).transpose(1, 2))


def pool_steps(x: Tensor, mask: Tensor, stride: int):
    """Average x [B, N, T, F] over the present frames of each `stride`-frame step: [B, N, T', F]
    and the step mask [B, N, T'] (any frame present), T' = ⌈T / stride⌉."""
    b, n, t, f = x.shape
    steps = -(-t // stride)
    pad = steps * stride - t
    if pad:
        x = nn.functional.pad(x, (0, 0, 0, pad))
        mask = nn.functional.pad(mask, (0, pad))
    m = mask.reshape(b, n, steps, stride)
    w = m.unsqueeze(-1).to(x.dtype)
    total = (x.reshape(b, n, steps, stride, f) * w).sum(3)
    return total / w.sum(3).clamp_min(1.0), m.any(-1)


def pair_geometry(box_s: Tensor, box_o: Tensor, both: Tensor) -> Tensor:
    """ψ [P, T', 8] of subject/object boxes [P, T', 4]: Δcx/w_s, Δcy/h_s, log w_o/w_s, log h_o/h_s,
    IoU, the step differences of the first two, log area ratio; zero where `both` [P, T'] is False."""
    ws = (box_s[..., 2] - box_s[..., 0]).clamp_min(1.0)
    hs = (box_s[..., 3] - box_s[..., 1]).clamp_min(1.0)
    wo = (box_o[..., 2] - box_o[..., 0]).clamp_min(1.0)
    ho = (box_o[..., 3] - box_o[..., 1]).clamp_min(1.0)
    dx = ((box_o[..., 0] + box_o[..., 2]) - (box_s[..., 0] + box_s[..., 2])) / (2 * ws)
    dy = ((box_o[..., 1] + box_o[..., 3]) - (box_s[..., 1] + box_s[..., 3])) / (2 * hs)
    iw = (torch.minimum(box_s[..., 2], box_o[..., 2]) - torch.maximum(box_s[..., 0], box_o[..., 0])).clamp_min(0)
    ih = (torch.minimum(box_s[..., 3], box_o[..., 3]) - torch.maximum(box_s[..., 1], box_o[..., 1])).clamp_min(0)
    inter = iw * ih
    iou = inter / (ws * hs + wo * ho - inter).clamp_min(1.0)
    step = both.clone()
    step[:, 1:] &= both[:, :-1]
    step[:, 0] = False
    ddx, ddy = torch.zeros_like(dx), torch.zeros_like(dy)
    ddx[:, 1:], ddy[:, 1:] = dx[:, 1:] - dx[:, :-1], dy[:, 1:] - dy[:, :-1]
    psi = torch.stack([dx, dy, (wo / ws).log(), (ho / hs).log(), iou, ddx * step, ddy * step,
                       (wo * ho / (ws * hs)).log()], -1)
    return psi * both.unsqueeze(-1).to(psi.dtype)


class PairSequenceEncoder(nn.Module):
    """Y_k [P, T', C] of kept pairs: F = Linear([P_s e_i + P_o e_j; ψ; m_i; m_j]), masked
    Conv1d(C, C, 3, dilation δ) + ReLU for each δ in `dilations` (the spec: two, δ = 1), g_k =
    masked max over steps, Y_k += Linear(g_k)."""

    def __init__(self, d: int, channels: int, dilations=(1, 1)):
        super().__init__()
        self.subject = nn.Linear(d, d)
        self.object = nn.Linear(d, d, bias=False)
        self.inp = nn.Linear(d + PSI_DIM + 2, channels)
        self.convs = nn.ModuleList(nn.Conv1d(channels, channels, 3, padding=int(k), dilation=int(k))
                                   for k in dilations)
        self.globals = nn.Linear(channels, channels)

    def forward(self, e_steps: Tensor, m_steps: Tensor, box_steps: Tensor, video: Tensor, sub: Tensor, obj: Tensor):
        """e_steps [B, N, T', d], m_steps [B, N, T'], box_steps [B, N, T', 4]; pairs (video, sub, obj)
        [P] -> Y [P, T', C], g [P, C], both [P, T'] (steps where both objects are present)."""
        m_s, m_o = m_steps[video, sub], m_steps[video, obj]
        both = m_s & m_o
        psi = pair_geometry(box_steps[video, sub], box_steps[video, obj], both)
        x = self.subject(e_steps)[video, sub] + self.object(e_steps)[video, obj]
        x = self.inp(torch.cat([x, psi, m_s.unsqueeze(-1).to(x.dtype), m_o.unsqueeze(-1).to(x.dtype)], -1))
        keep = both.unsqueeze(1).to(x.dtype)
        y = x.transpose(1, 2) * keep                                 # [P, C, T']
        for conv in self.convs:
            y = torch.relu(conv(y)) * keep
        y = y.transpose(1, 2)                                        # [P, T', C]
        _, g = masked_mean_max(y, both, 1)
        return y + self.globals(g).unsqueeze(1), g, both


class SpanHead(nn.Module):
    """Objectness q [P, T', A] and deltas δ [P, T', A, 2] of A anchors per step."""

    def __init__(self, channels: int, num_anchors: int):
        super().__init__()
        self.num_anchors = num_anchors
        self.objectness = nn.Linear(channels, num_anchors)
        self.deltas = nn.Linear(channels, 2 * num_anchors)
        for layer in (self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(self, y: Tensor):
        p, t, _ = y.shape
        return self.objectness(y), self.deltas(y).reshape(p, t, self.num_anchors, 2)


class PredicateHead(nn.Module):
    """π_r = MLP([RoIAlign(Y_k); g_k; E_obj[y_i]; E_obj[y_j]; ŝ/T; ê/T]) ∈ R^{C_pred}."""

    def __init__(self, channels: int, bins: int, d: int, num_predicates: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(bins * channels + channels + 2 * d + 2, 2 * channels), nn.ReLU(),
                                 nn.Linear(2 * channels, num_predicates))

    def forward(self, pooled: Tensor, g: Tensor, emb_s: Tensor, emb_o: Tensor, rel_span: Tensor) -> Tensor:
        """pooled [R, bins, C], g [R, C], emb_s/emb_o [R, d], rel_span [R, 2] (ŝ/T, ê/T) -> [R, C_pred]."""
        return self.mlp(torch.cat([pooled.flatten(1), g, emb_s, emb_o, rel_span], -1))
