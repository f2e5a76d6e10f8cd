"""FSD's global inter-feature loss with teacher and student feature memories (distill.md 4.2,
paper eqs. 8-10).

A batch alone sees a sliver of all pairwise sample relations; the memory stands in for the whole
training set: C k-means centroids of the teacher's flattened features (see `kmeans`) and a learnable
student memory of the same size. The loss matches each sample's relations to the memory (Euclidean
distances and cosines, one GEMM each side) and the CKA between the two memories.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..ops._checks import check_choice, check_tensor
from ..reference.cka import _safe_ratio, centred_gram, project
from .cka_loss import check_eps, neg_log_abs
from .structure import flat_samples

DISTANCE_NORMS = ("none", "mean")


def centroid_relations(h: Tensor, m: Tensor, dist_eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """(Euclidean, cosine) relations [B, C] of rows h [B, F] to memory slots m [C, F], from one GEMM
    plus row norms: sqrt(max(||h||^2 + ||m||^2 - 2 h.m, 0) + dist_eps) and h.m / max(||h|| ||m||, 1e-8).
    dist_eps keeps the square root differentiable at distance 0."""
    dots = h @ m.t()
    h2, m2 = (h * h).sum(1, keepdim=True), (m * m).sum(1)[None, :]
    euclid = torch.sqrt((h2 + m2 - 2.0 * dots).clamp_min(0.0) + dist_eps)
    cosine = dots / (h2.sqrt() * m2.sqrt()).clamp_min(1e-8)
    return euclid, cosine


def _normalised_gram(memory: Tensor, debiased: bool) -> Tensor:
    """C(K) / ||C(K)||_F of a memory (computed in fp64): the constant side of the memory CKA."""
    u = project(centred_gram(memory.double()), debiased)
    return u / torch.linalg.matrix_norm(u)


class GlobalInterFeatureLoss(nn.Module):
    """L_G = gamma_m F^E + (1 - gamma_m) F^C + F_MM.

    F^E, F^C: mean squared differences between the teacher's relations psi(ht, M_T) (no grad) and
    the student's psi(hs, M_S) [paper eq. 9]; F_MM = -log(|CKA(M_T, M_S)| + eps) over the C memory
    slots [eq. 8]. The student memory M_S [C, student_dim] is a parameter ~ N(0, 1) (the official
    code's nn.Embedding init): add this module's parameters to the optimiser. The teacher memory is
    a buffer and its normalised projected Gram is cached (F_MM's teacher side is constant).
    distance_norm="mean" (interpretation, RKD-style): each side's Euclidean relations are divided by
    their own mean, so teacher and student of different widths or scales are comparable.
    debiased (extension, default off as in FSD): the memory CKA with the unbiased estimator (C >= 4).
    """

    def __init__(self, teacher_memory: Tensor, student_dim: int, *, gamma_m: float = 0.5, eps: float = 1e-8,
                 dist_eps: float = 1e-8, distance_norm: str = "none", debiased: bool = False):
        super().__init__()
        check_tensor("teacher_memory", teacher_memory, floating=True, dim=2)
        n_slots = teacher_memory.shape[0]
        if n_slots < (4 if debiased else 2) or teacher_memory.shape[1] == 0:
            raise ValueError(f"teacher_memory must be [C, F_t] with C >= {4 if debiased else 2} centroids and "
                             f"F_t > 0, got shape {tuple(teacher_memory.shape)}")
        if not isinstance(student_dim, int) or isinstance(student_dim, bool) or student_dim < 1:
            raise ValueError(f"student_dim must be a positive int (width of the flattened student features), "
                             f"got {student_dim!r}")
        gamma_m = float(gamma_m)
        if not 0.0 <= gamma_m <= 1.0:
            raise ValueError(f"gamma_m must lie in [0, 1] (it mixes the Euclidean and cosine terms), got {gamma_m}")
        check_choice("distance_norm", distance_norm, DISTANCE_NORMS)
        self.gamma_m, self.eps, self.dist_eps = gamma_m, check_eps(eps), check_eps(dist_eps)
        self.distance_norm, self.debiased = distance_norm, bool(debiased)
        memory = teacher_memory.detach().clone()
        gram = _normalised_gram(memory, self.debiased)
        if not bool(torch.isfinite(gram).all()):  # once, at construction: not a per-step sync
            raise ValueError("teacher_memory has no usable spread: its centroids are all equal (or non-finite), "
                             "so the memory CKA is undefined")
        self.register_buffer("teacher_memory", memory)
        self.register_buffer("teacher_gram", gram.to(memory.dtype))
        self.student_memory = nn.Parameter(torch.randn(n_slots, student_dim, dtype=memory.dtype,
                                                       device=memory.device))
        self.components: dict[str, Tensor] = {}

    def _relations(self, h: Tensor, memory: Tensor) -> tuple[Tensor, Tensor]:
        euclid, cosine = centroid_relations(h, memory, self.dist_eps)
        if self.distance_norm == "mean":
            euclid = euclid / euclid.mean()
        return euclid, cosine

    def memory_cka(self) -> Tensor:
        """CKA(M_T, M_S) against the cached teacher side (= ops.linear_cka(M_T, M_S))."""
        v = project(centred_gram(self.student_memory), self.debiased)
        u = self.teacher_gram.to(v.dtype)
        return _safe_ratio((u * v).sum(), torch.ones((), dtype=v.dtype, device=v.device), (v * v).sum())

    def forward(self, hs: Tensor, ht: Tensor) -> Tensor:
        hs, ht = flat_samples("hs", hs), flat_samples("ht", ht).detach()
        if hs.shape[0] != ht.shape[0]:
            raise ValueError(f"ht must have the batch size B = {hs.shape[0]} of hs, got {ht.shape[0]}")
        if ht.shape[1] != self.teacher_memory.shape[1]:
            raise ValueError(f"teacher memory width {self.teacher_memory.shape[1]} differs from the flattened "
                             f"teacher features' width {ht.shape[1]} (ht {tuple(ht.shape)})")
        if hs.shape[1] != self.student_memory.shape[1]:
            raise ValueError(f"student memory width {self.student_memory.shape[1]} (student_dim) differs from the "
                             f"flattened student features' width {hs.shape[1]} (hs {tuple(hs.shape)})")
        with torch.no_grad():
            euclid_t, cosine_t = self._relations(ht.to(self.teacher_memory.dtype), self.teacher_memory)
        euclid_s, cosine_s = self._relations(hs, self.student_memory)
        f_euclid = (euclid_t.to(euclid_s.dtype) - euclid_s).square().mean()
        f_cosine = (cosine_t.to(cosine_s.dtype) - cosine_s).square().mean()
        f_memory = neg_log_abs(self.memory_cka(), self.eps)
        # detached tensors, not floats: reading them is the caller's (host-syncing) choice
        self.components = {"euclid": f_euclid.detach(), "cosine": f_cosine.detach(), "memory_cka": f_memory.detach()}
        return self.gamma_m * f_euclid + (1.0 - self.gamma_m) * f_cosine + f_memory.to(f_euclid.dtype)

    def extra_repr(self) -> str:
        c, f_t = self.teacher_memory.shape
        return (f"slots={c}, teacher_dim={f_t}, student_dim={self.student_memory.shape[1]}, gamma_m={self.gamma_m}, "
                f"distance_norm={self.distance_norm!r}, eps={self.eps}")
