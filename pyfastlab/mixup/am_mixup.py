"""Asymptotic Midpoint Mixup (AM-mixup, Kim, Lee & Kim 2024) over penultimate features, as read in
mixup.md 2 and 4.1: inter-class pairs are mixed with weight lam(q) >= 1/2 on the anchor, lam
decays toward the midpoint 1/2 over training without reaching it, the mixed point carries the
anchor's hard label, and the loss is the clean CE plus the mixed CE. No official code exists:
every choice below is a parameter, so the paper's values are a change of defaults only.

For an nn.Linear head the mixed CE is computed from the clean logits with
ops.mixed_logits_cross_entropy (the linear-head identity: no head GEMM on mixed features);
otherwise the features are mixed with ops.pair_mix and run through the head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import ops
from .pairing import PAIRINGS, sample_partner
from .schedule import check_schedule, gap_at


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


class AsymptoticMidpointMixup(nn.Module):
    def __init__(self, num_classes, *, schedule="exp", lam_start=1.0, final_gap=0.02, lam_mode="fixed", alpha=1.0,
                 pairing="matching", same_class="mask", aug_weight=1.0, keep_clean=True, target="anchor",
                 mix_space="auto", total_steps=None):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        check_schedule(schedule, lam_start, final_gap)
        _choice("lam_mode", lam_mode, ("fixed", "beta"))
        _choice("pairing", pairing, PAIRINGS)
        _choice("same_class", same_class, ("mask", "keep"))
        _choice("target", target, ("anchor", "soft"))
        _choice("mix_space", mix_space, ("auto", "logits", "features"))
        if not (math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"alpha must be finite and > 0, got {alpha}")
        if not (math.isfinite(aug_weight) and aug_weight >= 0):
            raise ValueError(f"aug_weight must be finite and >= 0, got {aug_weight}")
        if total_steps is not None and (not isinstance(total_steps, int) or total_steps < 1):
            raise ValueError(f"total_steps must be a positive int or None, got {total_steps!r}")
        self.num_classes, self.schedule = num_classes, schedule
        self.lam_start, self.final_gap = float(lam_start), float(final_gap)
        self.lam_mode, self.alpha, self.pairing, self.same_class = lam_mode, float(alpha), pairing, same_class
        self.aug_weight, self.keep_clean, self.target = float(aug_weight), bool(keep_clean), target
        self.mix_space, self.total_steps = mix_space, total_steps
        self.step = 0  # the internal counter behind progress = step / total_steps
        self.last: dict[str, Tensor] = {}

    def lam_at(self, progress: float) -> float:
        """lam(q) = 1/2 + g(q) (host arithmetic)."""
        return 0.5 + gap_at(progress, self.schedule, self.lam_start - 0.5, self.final_gap)

    def sample_pairs(self, labels: Tensor) -> tuple[Tensor, Tensor]:
        """(partner int64 [B], valid float [B]): valid_i = [y_i != y_{p_i}] for same_class='mask'."""
        partner = sample_partner(self.pairing, labels, self.num_classes)
        if self.same_class == "mask":
            valid = (labels != labels[partner]).to(torch.float32)
        else:
            valid = torch.ones(labels.shape[0], dtype=torch.float32, device=labels.device)
        return partner, valid

    def _lam(self, progress: float, n: int, device, dtype) -> Tensor | float:
        gap = self.lam_at(progress) - 0.5
        if self.lam_mode == "fixed":
            return 0.5 + gap
        u = torch.distributions.Beta(self.alpha, self.alpha).sample((n,)).to(device=device, dtype=dtype)
        return 0.5 + 2 * gap * (u - 0.5).abs()

    def _progress(self, progress) -> float:
        if progress is None:
            if self.total_steps is None:
                raise ValueError("pass progress= (in [0, 1]) or construct with total_steps=")
            return self.step / self.total_steps
        q = float(progress)
        if not math.isfinite(q):
            raise ValueError(f"progress must be finite, got {progress}")
        return q

    def forward(self, features: Tensor, labels: Tensor, head, *, progress=None) -> Tensor:
        if features.dim() != 2:
            raise ValueError(f"features must be [B, D], got shape {tuple(features.shape)}")
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must be [B={features.shape[0]}], got shape {tuple(labels.shape)}")
        if labels.dtype != torch.int64:
            raise ValueError(f"labels must be int64, got {labels.dtype}")
        if not torch.compiler.is_compiling() and labels.numel() > 0:
            if bool(((labels < 0) | (labels >= self.num_classes)).any()):
                raise ValueError(f"labels must lie in [0, num_classes={self.num_classes})")
        space = self.mix_space
        if space == "auto":
            space = "logits" if isinstance(head, nn.Linear) else "features"
        if space == "logits" and not isinstance(head, nn.Linear):
            raise ValueError("mix_space='logits' needs an nn.Linear head (the linear-head identity)")
        logits = head(features)
        clean = F.cross_entropy(logits, labels) if labels.numel() > 0 else logits.sum() * 0
        if not self.training:
            return clean
        q = self._progress(progress)
        partner, valid = self.sample_pairs(labels)
        lam = self._lam(q, labels.shape[0], features.device, features.dtype)
        targets = [(labels, lam)] if self.target == "anchor" else [(labels, lam), (labels[partner], None)]
        rows = 0
        for y, weight in targets:
            if space == "logits":
                r = ops.mixed_logits_cross_entropy(logits, partner, lam, y, reduction="none")
            else:
                r = F.cross_entropy(head(ops.pair_mix(features, partner, lam)), y, reduction="none")
            if self.target == "soft":
                w = lam if weight is not None else 1 - lam  # exact soft-label CE as two hard CEs
                r = w * r
            rows = rows + r
        valid = valid.to(features.dtype)
        aug = (valid * rows).sum() / valid.sum().clamp_min(1)
        loss = self.aug_weight * aug + (clean if self.keep_clean else 0)
        lam_t = lam.detach() if isinstance(lam, Tensor) else torch.tensor(lam, device=features.device)
        self.last = {"lam": lam_t, "valid_fraction": valid.mean().detach() if valid.numel() else valid.sum(),
                     "clean": clean.detach(), "aug": aug.detach()}
        if progress is None:
            self.step += 1
        return loss
