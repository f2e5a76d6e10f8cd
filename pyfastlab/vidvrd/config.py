"""Configuration of the Temporal Span Proposal Network (vidvrd.md 4.2; defaults = its VidVRD-scale
column, `TSPNConfig.demo()` = its demo column)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Tuple

from .synthetic import CATEGORIES, PREDICATES

PAIR_SCORERS = ("mlp", "bilinear_logits")
REL_LOSSES = ("sampled_logits", "dense_sigmoid")
SCHEDULES = ("cosine", "repo")


@dataclass(frozen=True)
class TSPNConfig:
    """Every size and threshold of the model, its losses and its inference (spec symbol in brackets).

    Interpretation switches (vidvrd.md 4.2, default first, then the official-code-faithful one):
    - pair_scorer: "mlp" (factorised pair MLP on context features, `ops.pairwise_mlp_scores`) |
      "bilinear_logits" (u = MLP_s(ℓ_i), v = MLP_o(ℓ_j) on class logits C_obj→64→C_obj, z = u·v;
      with tracks that carry no detector logits, ℓ = one_hot(label)·label_score).
    - rel_loss: "sampled_logits" (BCE-with-logits over S sampled valid pairs) | "dense_sigmoid"
      (σ then BCE over all N×N entries of real objects, diagonal included).
    - rel_pos_fraction: 0.25 (baseline.yaml) | 0.5 (defaults.py).
    - schedule: "cosine" (AdamW 2e-3, wd 1e-4, cosine decay) | "repo" (Adam 1e-2, 500-iteration
      warm-up, ×0.1 at 1000 and 1500, 2000 iterations); used by `make_optimizer`.
    - inject_gt_pairs: training adds the GT pairs to the top-K (as Faster R-CNN adds GT boxes).
    """
    object_categories: Tuple[str, ...] = CATEGORIES
    predicates: Tuple[str, ...] = PREDICATES
    feature_dim: int = 8                 # D (box_geometry_features)
    d: int = 256                         # d, object context width
    pair_hidden: int = 256               # H, hidden width of the pair MLP
    temporal_channels: int = 256         # C, width of the pair sequence
    temporal_dilations: Tuple[int, ...] = (1, 1)   # one Conv1d(C, C, 3) per entry, with that dilation
    context_layers: int = 1              # self-attention layers over a video's objects
    context_heads: int = 4
    pairs_kept: int = 256                # K
    pair_loss_samples: int = 256         # S (≤ 0: all valid pairs)
    rel_pos_fraction: float = 0.25
    stride: int = 1                      # σ, frames per step of the pair sequence
    anchor_widths: Tuple[float, ...] = (15, 30, 45, 60)
    fg_iou: float = 0.7
    bg_iou: float = 0.3
    span_samples: int = 64               # anchors sampled per pair for the span loss (≤ 0: all labelled)
    span_pos_fraction: float = 0.5
    nms_iou: float = 0.5
    spans_per_pair: int = 64             # kept by span_nms per pair
    pre_nms_top: int = 200               # M_pre
    roi_bins: int = 16
    pred_spans_per_pair: int = 16        # training candidates per pair for the predicate loss
    pred_iou: float = 0.5                # tIoU for a candidate to take a merged span's predicate
    predicates_per_span: int = 20
    relations_per_video: int = 200
    pair_scorer: str = "mlp"
    rel_loss: str = "sampled_logits"
    schedule: str = "cosine"
    inject_gt_pairs: bool = True
    loss_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0)   # L_rel, L_span, L_pred (official: unit)

    def __post_init__(self):
        for name, value, allowed in (("pair_scorer", self.pair_scorer, PAIR_SCORERS),
                                     ("rel_loss", self.rel_loss, REL_LOSSES),
                                     ("schedule", self.schedule, SCHEDULES)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("d", "pair_hidden", "temporal_channels", "pairs_kept", "stride", "roi_bins", "spans_per_pair",
                     "pre_nms_top", "predicates_per_span", "relations_per_video", "pred_spans_per_pair"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not self.temporal_dilations or min(self.temporal_dilations) < 1:
            raise ValueError(f"temporal_dilations must be ≥ 1, got {self.temporal_dilations}")
        if not self.anchor_widths or min(self.anchor_widths) <= 0:
            raise ValueError(f"anchor_widths must be positive, got {self.anchor_widths}")
        if not 0 <= self.bg_iou <= self.fg_iou <= 1:
            raise ValueError(f"need 0 ≤ bg_iou ≤ fg_iou ≤ 1, got {self.bg_iou}, {self.fg_iou}")

    @classmethod
    def demo(cls, **overrides) -> "TSPNConfig":
        """The demo column of vidvrd.md 4.2 (S = all valid pairs)."""
        base = dict(d=64, pair_hidden=64, temporal_channels=64, pairs_kept=16, pair_loss_samples=0, stride=4,
                    anchor_widths=(30, 60, 120, 240), spans_per_pair=8, pre_nms_top=50, roi_bins=8,
                    predicates_per_span=5, relations_per_video=200)
        base.update(overrides)
        return cls(**base)

    def replace(self, **changes) -> "TSPNConfig":
        return replace(self, **changes)
