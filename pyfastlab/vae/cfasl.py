"""CFASL (vae.md 4.3): a codebook of Lie-algebra generators with four regularisers, a two-step
attention that weighs the generators into one composite symmetry per pair of samples, and the
encoder / decoder equivariance losses that plug CFASL into beta-VAE or beta-TCVAE training.

Switches: commutator "pairs" (paper: mean squared commutator norm over generator pairs) or
"reference" (closed form of the official code's accumulating block swaps); perp_index "slot" (the
perpendicular loss draws one slot per section from range(section_size)) or "reference"
(range(latent_dim) as coded; forced to "slot" when latent_dim > section_size); reference_bugs
(True: sigma2 = exp(mu2 / 2) in the attention input and the switch cross-entropy applied to
probabilities, as coded; False: the corrected forms). Cosines always use the floor
max(|u||v|, 1e-12) (the code has none and gives NaN for zero displacements).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .. import ops
from ..ops._checks import check_choice, check_finite
from .backbones import _positive, check_latent
from .losses import DISTRIBUTIONS, BetaVAELoss, VAELossTerms, check_posterior, reconstruction_loss
from .tcvae import BetaTCVAELoss

COMMUTATORS = ("pairs", "reference")
PERP_INDICES = ("slot", "reference")
_COS_FLOOR, _LOG_FLOOR = 1e-12, 1e-9


def _cosines(rows: Tensor, cols: Tensor, row_norms: Tensor, col_norms: Tensor) -> Tensor:
    """cos(u, v) = <u, v> / max(|u| |v|, 1e-12) for batched row / column sets [..., r, n], [..., c, n]."""
    dots = rows @ cols.transpose(-1, -2)
    return dots / torch.clamp(row_norms.unsqueeze(-1) * col_norms.unsqueeze(-2), min=_COS_FLOOR)


class _ParallelLogCosSum(torch.autograd.Function):
    """sum over blocks of -log(cos^2 + 1e-9) between each block's rows and all vectors of the same
    sections. v `[S, M, n]`, norms `[S, M]`; blocks are (s0, s1, r0, r1): sections s0:s1, rows
    r0:r1. The backward recomputes each block's cosines and forms its gradient by hand, so no pass
    holds more than one block of cosines (and no autograd graph of the elementwise chain)."""

    @staticmethod
    def _block(v, norms, blk):
        s0, s1, r0, r1 = blk
        rows, cols = v[s0:s1, r0:r1], v[s0:s1]
        prod = norms[s0:s1, r0:r1].unsqueeze(-1) * norms[s0:s1].unsqueeze(-2)
        q = torch.clamp(prod, min=_COS_FLOOR)
        return rows, cols, prod, q, (rows @ cols.transpose(-1, -2)) / q

    @staticmethod
    def forward(ctx, v, norms, blocks):
        ctx.save_for_backward(v, norms)
        ctx.blocks = blocks
        total = v.new_zeros(())
        for blk in blocks:
            cos = _ParallelLogCosSum._block(v, norms, blk)[-1]
            total -= cos.square_().add_(_LOG_FLOOR).log_().sum()        # in place: one tile buffer
        return total

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        v, norms = ctx.saved_tensors
        grad_v, grad_n = torch.zeros_like(v), torch.zeros_like(norms)
        for s0, s1, r0, r1 in ctx.blocks:
            rows, cols, prod, q, cos = _ParallelLogCosSum._block(v, norms, (s0, s1, r0, r1))
            g_dot = cos.square().add_(_LOG_FLOOR).reciprocal_().mul_(cos).mul_(-2 * grad).div_(q)
            g_q = (g_dot * cos).neg_().masked_fill_(prod <= _COS_FLOOR, 0)  # the floor has no gradient
            grad_v[s0:s1, r0:r1] += g_dot @ cols
            grad_v[s0:s1] += g_dot.transpose(-1, -2) @ rows
            grad_n[s0:s1, r0:r1] += (g_q * norms[s0:s1].unsqueeze(-2)).sum(-1)
            grad_n[s0:s1] += (g_q * norms[s0:s1, r0:r1].unsqueeze(-1)).sum(-2)
        return grad_v, grad_n, None


def _perpendicular_block(rows: Tensor, cols: Tensor, row_norms: Tensor, col_norms: Tensor, row_sec: Tensor,
                         col_sec: Tensor) -> Tensor:
    cos2 = _cosines(rows, cols, row_norms, col_norms).square()
    return (cos2 * (row_sec.unsqueeze(1) != col_sec.unsqueeze(0)).to(cos2.dtype)).sum()


def _run_blocks(fn, blocks: list[tuple]) -> Tensor:
    """Sum fn over blocks; with several blocks each one is recomputed in the backward instead of
    saved, so neither pass holds more than one block's cosine tile."""
    several = len(blocks) > 1 and torch.is_grad_enabled()
    total = 0
    for args in blocks:
        total = total + (checkpoint(fn, *args, use_reentrant=False) if several else fn(*args))
    return total


class SymmetryCodebook(nn.Module):
    """K = latent_dim * section_size generators G `[K, n, n]`; element k belongs to section
    k // section_size (one section per latent coordinate), slot k % section_size. Truncated-normal
    init on [-2, 2] times init_std (keyword-only; the code uses 1)."""

    def __init__(self, latent_dim: int, section_size: int = 16, *, init_std: float = 1.0):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.section_size = _positive("section_size", section_size)
        check_finite("init_std", init_std)
        self.num_elements = latent_dim * section_size
        g = torch.empty(self.num_elements, latent_dim, latent_dim)
        self.generators = nn.Parameter(nn.init.trunc_normal_(g, 0.0, 1.0, -2.0, 2.0) * init_std)

    def displacements(self, z: Tensor) -> Tensor:
        """D_kb = z_b - z_b expm(G_k), `[K, B, n]`."""
        check_latent("z", z, self.latent_dim)
        g = ops.expm(self.generators.to(z.dtype))
        return z.unsqueeze(0) - torch.matmul(z.unsqueeze(0), g)

    def compose(self, weights: Tensor, z1: Tensor, z2: Tensor) -> tuple[Tensor, Tensor]:
        """(z1 expm(A_p), z2 expm(-A_p)), A_p = sum_k weights[p, k] G_k (ops.composite_symmetry)."""
        return ops.composite_symmetry(self.generators.to(z1.dtype), weights, z1, z2)

    def _check_d(self, d: Tensor) -> None:
        if d.dim() != 3 or d.shape[0] != self.num_elements or d.shape[2] != self.latent_dim:
            raise ValueError(f"d must be displacements [K, B, n] = [{self.num_elements}, B, {self.latent_dim}], "
                             f"got shape {tuple(d.shape)}")

    def sparsity_loss(self, d: Tensor) -> Tensor:
        """L_s = mean_{k,b} (sum_d D^2 - max_d D^2)^2: each exp(G_k) should move one coordinate."""
        self._check_d(d)
        sq = d.square()
        return (sq.sum(dim=2) - sq.amax(dim=2)).square().mean()

    def parallel_loss(self, d: Tensor, *, tile_rows: Optional[int] = 256) -> Tensor:
        """L_pl = mean over sections and all ordered pairs (self-pairs included) of the section's
        SS*B displacement vectors of -log(cos^2 + 1e-9). The [SS*B, SS*B] cosine matrices are formed
        in tiles of at most tile_rows rows (several sections per tile when they fit) and reduced at
        once; tile_rows=None forms them all in one go."""
        self._check_d(d)
        n, ss = self.latent_dim, self.section_size
        v = d.reshape(n, ss * d.shape[1], n)                       # [sections, M, n]
        m = v.shape[1]
        if m == 0:
            return d.sum() * 0
        blocks = []
        if tile_rows is None:
            blocks.append((0, n, 0, m))
        else:
            if not isinstance(tile_rows, int) or tile_rows < 1:
                raise ValueError(f"tile_rows must be a positive int or None, got {tile_rows!r}")
            if m <= tile_rows:
                per = tile_rows // m
                blocks += [(s0, min(s0 + per, n), 0, m) for s0 in range(0, n, per)]
            else:
                blocks += [(s, s + 1, r0, min(r0 + tile_rows, m)) for s in range(n) for r0 in range(0, m, tile_rows)]
        return _ParallelLogCosSum.apply(v, v.norm(dim=2), blocks) / (n * m * m)

    def perpendicular_loss(self, d: Tensor, *, perp_index: str = "slot", generator: Optional[torch.Generator] = None,
                           tile_rows: Optional[int] = 256) -> Tensor:
        """L_pd = (1 / (nB)^2) * sum over pairs from different sections of cos^2, over the n*B vectors
        D_{(i, j_i), b} with one random slot j_i per section (drawn independently: from
        range(section_size) for "slot", range(latent_dim) for "reference" when it fits)."""
        self._check_d(d)
        check_choice("perp_index", perp_index, PERP_INDICES)
        n, ss, b = self.latent_dim, self.section_size, d.shape[1]
        high = n if perp_index == "reference" and n <= ss else ss
        slots = torch.randint(high, (n,), generator=generator).to(d.device)
        v = d[torch.arange(n, device=d.device) * ss + slots].reshape(n * b, n)
        if b == 0:
            return d.sum() * 0
        sec = torch.arange(n, device=d.device).repeat_interleave(b)
        norms = v.norm(dim=1)
        step = v.shape[0] if tile_rows is None else tile_rows
        blocks = [(v[r0:r0 + step], v, norms[r0:r0 + step], norms, sec[r0:r0 + step], sec)
                  for r0 in range(0, v.shape[0], step)]
        return _run_blocks(_perpendicular_block, blocks) / (n * b) ** 2

    def commutativity_loss(self, *, commutator: str = "pairs", chunk: int = 64) -> Tensor:
        """"pairs": (2 / (K(K-1))) sum_{a<b} |G_a G_b - G_b G_a|_F^2 (chunks of `chunk` generators
        against all, recomputed in the backward). "reference": the official code's closed form
        (2 / (nK)^2) sum_{0<=i<j<SS} (P + 1 - r_ij) |G_i C_j - G_j C_i|_F^2, C_j = G viewed as
        [n, K, n] at [:, j, :], P = SS(SS-1)/2, r_ij the 1-based lexicographic rank of (i, j)."""
        check_choice("commutator", commutator, COMMUTATORS)
        g = self.generators
        k, n, ss = self.num_elements, self.latent_dim, self.section_size
        if commutator == "reference":
            c = g.reshape(n, k, n)[:, :ss].transpose(0, 1)                        # C_j, [SS, n, n]
            i, j = torch.triu_indices(ss, ss, offset=1, device=g.device)          # lexicographic order
            pairs = i.numel()
            weight = (pairs - torch.arange(pairs, device=g.device)).to(g.dtype)   # P + 1 - rank
            diff = g[i] @ c[j] - g[j] @ c[i]
            return 2.0 * (weight * diff.square().sum(dim=(1, 2))).sum() / (n * k) ** 2
        if k < 2:
            return g.sum() * 0
        blocks = [(g[a0:a0 + chunk], g) for a0 in range(0, k, chunk)]
        total = _run_blocks(_commutator_block, blocks)              # ordered pairs: twice sum_{a<b}
        return total / (k * (k - 1))

    def regularizers(self, z: Tensor, *, commutator: str = "pairs", perp_index: str = "slot",
                     generator: Optional[torch.Generator] = None, tile_rows: Optional[int] = 256) -> dict:
        """{"sparsity", "parallel", "perpendicular", "commutativity"} on the sampled batch z."""
        d = self.displacements(z)
        return {"sparsity": self.sparsity_loss(d), "parallel": self.parallel_loss(d, tile_rows=tile_rows),
                "perpendicular": self.perpendicular_loss(d, perp_index=perp_index, generator=generator,
                                                         tile_rows=tile_rows),
                "commutativity": self.commutativity_loss(commutator=commutator)}

    def extra_repr(self) -> str:
        return f"latent_dim={self.latent_dim}, section_size={self.section_size}"


def _commutator_block(ga: Tensor, g: Tensor) -> Tensor:
    ab = torch.matmul(ga.unsqueeze(1), g.unsqueeze(0))
    ba = torch.matmul(g.unsqueeze(0), ga.unsqueeze(1))
    return (ab - ba).square().sum()


def gumbel_softmax(logits: Tensor, tau: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """softmax((logits + Gumbel noise) / tau) over the last dim (soft), with a seedable generator."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype).to(logits.device)
    noise = -torch.log(-torch.log(u.clamp_min(torch.finfo(logits.dtype).tiny)))
    return torch.softmax((logits + noise) / tau, dim=-1)


class CompositeAttention(nn.Module):
    """The two-step attention over a batch split into pairs (first half, second half): a per-section
    on/off Gumbel switch supervised by "this coordinate changed by more than threshold", times a
    softmax over the section's slots. forward(mu, logvar, z) → (weights [P, K], L_p)."""

    def __init__(self, latent_dim: int, section_size: int = 16, *, threshold: float = 0.2, tau: float = 1e-4,
                 reference_bugs: bool = False):
        super().__init__()
        self.latent_dim = _positive("latent_dim", latent_dim)
        self.section_size = _positive("section_size", section_size)
        check_finite("threshold", threshold)
        check_finite("tau", tau)
        if tau <= 0:
            raise ValueError(f"tau must be positive, got {tau}")
        self.threshold, self.tau, self.reference_bugs = float(threshold), float(tau), bool(reference_bugs)
        self.linear = nn.Linear(4 * latent_dim, (section_size + 2) * latent_dim)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.uniform_(self.linear.bias, 0.0, 1.0)               # U[0, 1) for 1-D parameters, as coded

    def forward(self, mu: Tensor, logvar: Tensor, z: Tensor,
                generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
        check_posterior(mu, logvar, z)
        n, ss = self.latent_dim, self.section_size
        if mu.shape[1] != n:
            raise ValueError(f"mu must be [B, {n}] (latent_dim {n}), got shape {tuple(mu.shape)}")
        if mu.shape[0] % 2:
            raise ValueError(f"the batch is split into pairs (first half, second half): its size must be even, "
                             f"got {mu.shape[0]}")
        p = mu.shape[0] // 2
        sigma = torch.exp(0.5 * logvar)
        sigma2 = torch.exp(0.5 * mu[p:]) if self.reference_bugs else sigma[p:]
        out = self.linear(torch.cat([mu[:p], sigma[:p], mu[p:], sigma2], dim=1))
        switch_logits = out[:, :2 * n].reshape(p, n, 2)
        slots = torch.softmax(out[:, 2 * n:].reshape(p, n, ss), dim=-1)
        labels = ((z[:p] - z[p:]).abs() > self.threshold).long().detach()
        ce_input = torch.softmax(switch_logits, dim=-1) if self.reference_bugs else switch_logits
        switch_loss = F.cross_entropy(ce_input.reshape(p * n, 2), labels.reshape(p * n), reduction="sum") / max(p, 1)
        on = gumbel_softmax(switch_logits, self.tau, generator)[..., 1]
        return (on.unsqueeze(-1) * slots).reshape(p, n * ss), switch_loss

    def extra_repr(self) -> str:
        return f"threshold={self.threshold}, tau={self.tau}, reference_bugs={self.reference_bugs}"


@dataclass
class CFASLLossTerms(VAELossTerms):
    """VAELossTerms plus CFASL's parts (each a scalar)."""
    sparsity: Optional[Tensor] = None
    parallel: Optional[Tensor] = None
    perpendicular: Optional[Tensor] = None
    commutativity: Optional[Tensor] = None
    switch: Optional[Tensor] = None
    encoder_equivariance: Optional[Tensor] = None
    decoder_equivariance: Optional[Tensor] = None


class CFASL(nn.Module):
    """Codebook + attention + equivariance losses.

    forward(decoder, x, mu, logvar, z, base, generator=None) → CFASLLossTerms, base a BetaVAELoss
    or BetaTCVAELoss applied to the decoded z (first B rows of one decoder call on [z; y2; y1]):
    L = base + alpha (L_pd + L_pl + L_c + L_s) + gamma L_p + lam L_ee + epsilon L_de with
    L_ee = MSE(y2, z1) + MSE(y1, z2) and L_de = R(Dec([y2; y1]), [x1; x2]).
    attention_lr_scale (0.2 as coded: 2e-5 vs 1e-4) is for the caller's optimizer (param_groups)."""

    attention_lr_scale = 0.2

    def __init__(self, latent_dim: int, section_size: int = 16, *, alpha: float = 1.0, gamma: float = 1.0,
                 lam: float = 1.0, epsilon: float = 0.1, threshold: float = 0.2, tau: float = 1e-4,
                 init_std: float = 1.0, commutator: str = "pairs", perp_index: str = "slot",
                 reference_bugs: bool = False, tile_rows: Optional[int] = 256, distribution: str = "bernoulli"):
        super().__init__()
        for name, value in (("alpha", alpha), ("gamma", gamma), ("lam", lam), ("epsilon", epsilon)):
            check_finite(name, value)
        check_choice("commutator", commutator, COMMUTATORS)
        check_choice("perp_index", perp_index, PERP_INDICES)
        check_choice("distribution", distribution, DISTRIBUTIONS)
        self.codebook = SymmetryCodebook(latent_dim, section_size, init_std=init_std)
        self.attention = CompositeAttention(latent_dim, section_size, threshold=threshold, tau=tau,
                                            reference_bugs=reference_bugs)
        self.latent_dim = latent_dim
        self.alpha, self.gamma, self.lam, self.epsilon = float(alpha), float(gamma), float(lam), float(epsilon)
        self.commutator, self.perp_index, self.tile_rows = commutator, perp_index, tile_rows
        self.distribution = distribution

    def param_groups(self, lr: float) -> list[dict]:
        return [{"params": list(self.codebook.parameters()), "lr": lr},
                {"params": list(self.attention.parameters()), "lr": lr * self.attention_lr_scale}]

    def forward(self, decoder: nn.Module, x: Tensor, mu: Tensor, logvar: Tensor, z: Tensor, base: nn.Module,
                generator: Optional[torch.Generator] = None) -> CFASLLossTerms:
        if not isinstance(base, (BetaVAELoss, BetaTCVAELoss)):
            raise TypeError(f"base must be a BetaVAELoss or BetaTCVAELoss, got {type(base).__name__}")
        check_posterior(mu, logvar, z)
        if mu.shape[0] != x.shape[0]:
            raise ValueError(f"mu has {mu.shape[0]} rows but x has {x.shape[0]}: one posterior per image")
        weights, switch = self.attention(mu, logvar, z, generator)
        p = weights.shape[0]
        z1, z2 = z[:p], z[p:]
        y1, y2 = self.codebook.compose(weights, z1, z2)
        enc_eq = F.mse_loss(y2, z1) + F.mse_loss(y1, z2)
        logits = decoder(torch.cat([z, y2, y1]))
        batch = z.shape[0]
        logits, moved = logits[:batch], logits[batch:]
        if isinstance(base, BetaTCVAELoss):
            terms = base(logits, x, mu, logvar, z)
        else:
            terms = base(logits, x, mu, logvar)
        dec_eq = reconstruction_loss(moved, x, self.distribution)           # [x1; x2] = x (even batch)
        regs = self.codebook.regularizers(z, commutator=self.commutator, perp_index=self.perp_index,
                                          generator=generator, tile_rows=self.tile_rows)
        loss = (terms.loss + self.alpha * sum(regs.values()) + self.gamma * switch + self.lam * enc_eq
                + self.epsilon * dec_eq)
        return CFASLLossTerms(loss=loss, recon=terms.recon, kl=terms.kl, mi=terms.mi, tc=terms.tc,
                              dim_kl=terms.dim_kl, switch=switch, encoder_equivariance=enc_eq,
                              decoder_equivariance=dec_eq, **regs)

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, gamma={self.gamma}, lam={self.lam}, epsilon={self.epsilon}, "
                f"commutator={self.commutator!r}, perp_index={self.perp_index!r}, tile_rows={self.tile_rows}")
