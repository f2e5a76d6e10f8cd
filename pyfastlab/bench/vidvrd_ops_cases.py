"""Benchmark cases of pairwise_mlp_scores, temporal_iou and span_nms in the vidvrd family
(vidvrd.md section 7: three CPU cases and the GPU pairwise case)."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _backends
from ..reference import vidvrd_ops as reference
from .registry import BenchCase, Implementation, register

T_FRAMES = 900  # the timeline of the seeded spans


def _backends_for(device: str) -> list[str]:
    # Triton under the CPU interpreter measures the interpreter, not the kernel.
    return [b for b in ("cpu", "cuda", "triton") if _backends.unavailable_reason(b, torch.device(device)) is None
            and not (b == "triton" and device == "cpu")]


def _spans(n: int, gen: torch.Generator) -> torch.Tensor:
    """begin ~ U[0, T - 30], length ~ U[30, T - begin] (spec 7)."""
    begin = torch.randint(0, T_FRAMES - 30 + 1, (n,), generator=gen).float()
    length = 30 + torch.rand(n, generator=gen) * (T_FRAMES - begin - 30)
    return torch.stack([begin, begin + length], 1)


# ---- pairwise_mlp_scores fwd+bwd -----------------------------------------------------------------

def _pairwise_inputs(B, N, M, H, dtype, device):
    def make(scale: float) -> dict:
        n, m = max(8, int(N * scale)), max(8, int(M * scale))
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(B, n, H, generator=gen), torch.randn(B, m, H, generator=gen)
        w = torch.randn(H, generator=gen) / H**0.5
        return {k: v.to(dtype).to(device) for k, v in dict(a=a, b=b, w=w).items()}
    return make


def _pairwise_fwd_bwd(fn):
    def run(inputs: dict) -> tuple:
        a, b, w = (inputs[k].detach().requires_grad_(True) for k in ("a", "b", "w"))
        s = fn(a, b, w)
        s.backward(torch.ones_like(s))
        return s.detach(), a.grad, b.grad, w.grad
    return run


def _pairwise_implementations(device: str):
    def build() -> list[Implementation]:
        eager = lambda a, b, w: reference.pairwise_mlp_scores(a, b, w, 0.1)
        impls = [Implementation("eager", _pairwise_fwd_bwd(eager), "baseline"),
                 Implementation("compiled", _pairwise_fwd_bwd(torch.compile(eager)), "baseline")]
        for backend in _backends_for(device):
            fn = lambda a, b, w, be=backend: ops.pairwise_mlp_scores(a, b, w, 0.1, backend=be)
            impls.append(Implementation(backend, _pairwise_fwd_bwd(fn)))
        return impls
    return build


def _bnmh(inp) -> int:
    (B, N, H), M = inp["a"].shape, inp["b"].shape[1]
    return B * N * M * H


def _register_pairwise(B, N, M, H, device, target):
    register(BenchCase(
        family="vidvrd", op="pairwise_mlp_scores", label=f"B={B} N={N} M={M} H={H} fwd+bwd", device=device,
        dtype=torch.float32, make_inputs=_pairwise_inputs(B, N, M, H, torch.float32, device),
        implementations=_pairwise_implementations(device),
        # fused: read a, b, w, write s; the backward reads them and g again and writes the gradients
        bytes_moved=lambda inp: 4 * (3 * (inp["a"].numel() + inp["b"].numel()) + 2 * inp["a"].shape[0]
                                     * inp["a"].shape[1] * inp["b"].shape[1]),
        unit_bytes=lambda inp: 4 * _bnmh(inp),  # one eager [B, N, M, H] fp32 intermediate
        flops=lambda inp: 10 * _bnmh(inp),  # forward ~3 and backward ~7 per (v, i, j, h) (spec 6)
        tolerance=dict(atol=1e-3, rtol=1e-4), target=target))


# ---- temporal_iou --------------------------------------------------------------------------------

def _tiou_inputs(P, Q, device):
    def make(scale: float) -> dict:
        gen = torch.Generator().manual_seed(0)
        p, q = max(16, int(P * scale)), max(16, int(Q * scale))
        return dict(a=_spans(p, gen).to(device), b=_spans(q, gen).to(device))
    return make


def _tiou_implementations(device: str):
    def build() -> list[Implementation]:
        eager = lambda inp: (reference.temporal_iou(inp["a"], inp["b"]),)
        compiled_ref = torch.compile(reference.temporal_iou)
        impls = [Implementation("eager", eager, "baseline"),
                 Implementation("compiled", lambda inp: (compiled_ref(inp["a"], inp["b"]),), "baseline")]
        for backend in _backends_for(device):
            impls.append(Implementation(backend, lambda inp, be=backend: (ops.temporal_iou(inp["a"], inp["b"],
                                                                                             backend=be),)))
        return impls
    return build


def _register_tiou(P, Q, device, target):
    out_bytes = lambda inp: 4 * inp["a"].shape[0] * inp["b"].shape[0]
    register(BenchCase(
        family="vidvrd", op="temporal_iou", label=f"P={P} Q={Q}", device=device, dtype=torch.float32,
        make_inputs=_tiou_inputs(P, Q, device), implementations=_tiou_implementations(device),
        bytes_moved=out_bytes, unit_bytes=out_bytes,
        flops=lambda inp: 7 * inp["a"].shape[0] * inp["b"].shape[0], tolerance=dict(atol=0, rtol=0), target=target))


# ---- span_nms ------------------------------------------------------------------------------------

def _nms_inputs(n_groups, per_group, device):
    def make(scale: float) -> dict:
        gen = torch.Generator().manual_seed(0)
        g = max(4, int(n_groups * scale))
        spans = _spans(g * per_group, gen)
        scores = torch.rand(g * per_group, generator=gen)
        groups = torch.arange(g).repeat_interleave(per_group)
        perm = torch.randperm(g * per_group, generator=gen)  # groups interleaved, as a model emits them
        return dict(spans=spans[perm].to(device), scores=scores[perm].to(device), groups=groups[perm].to(device))
    return make


def nms_loop(spans, scores, groups, thr, max_keep):
    """The usual eager baseline: per group, per step take the best remaining span and drop the
    remaining ones above thr (torch-vectorised per step); then all kept spans by score order."""
    kept = []
    for label in torch.unique(groups).tolist():
        idx = torch.nonzero(groups == label).flatten()
        idx = idx[torch.sort(scores[idx], descending=True, stable=True).indices]
        count = 0
        while idx.numel() > 0 and (max_keep <= 0 or count < max_keep):
            best, idx = idx[0], idx[1:]
            kept.append(best)
            count += 1
            iou = reference.temporal_iou(spans[best][None], spans[idx])[0]
            idx = idx[iou <= thr]
    kept = torch.sort(torch.stack(kept)).values  # index order first, so score ties go to the lower index
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def _nms_implementations(device: str, max_keep: int):
    def build() -> list[Implementation]:
        # compiled is n/a: a data-dependent Python loop
        impls = [Implementation("eager", lambda inp: (nms_loop(inp["spans"], inp["scores"], inp["groups"], 0.5,
                                                               max_keep),), "baseline")]
        for backend in _backends_for(device):
            impls.append(Implementation(backend, lambda inp, be=backend: (ops.span_nms(
                inp["spans"], inp["scores"], 0.5, groups=inp["groups"], max_keep=max_keep, backend=be),)))
        return impls
    return build


def _register_nms(n_groups, per_group, max_keep, device, target):
    span_bytes = lambda inp: inp["spans"].numel() * 4 + inp["scores"].numel() * 4 + inp["groups"].numel() * 8
    register(BenchCase(
        family="vidvrd", op="span_nms", label=f"{n_groups} groups x {per_group} thr 0.5 max_keep {max_keep}",
        device=device, dtype=torch.float32, make_inputs=_nms_inputs(n_groups, per_group, device),
        implementations=_nms_implementations(device, max_keep), bytes_moved=span_bytes, unit_bytes=span_bytes,
        tolerance=dict(atol=0, rtol=0), target=target))


_register_pairwise(1, 200, 200, 256, "cpu", ">= 3x eager; >= 10x less peak extra memory")
_register_pairwise(8, 50, 50, 256, "cpu", ">= 3x eager; >= 10x less peak extra memory")
_register_tiou(4096, 4096, "cpu", ">= 2x eager")
_register_nms(256, 1000, -1, "cpu", ">= 10x the per-group loop")
_register_nms(256, 1000, 64, "cpu", ">= 10x the per-group loop")
_register_pairwise(16, 256, 256, 512, "cuda", "ratio vs eager and compiled, absolute time")
