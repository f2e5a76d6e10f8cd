"""Benchmark cases of trajectory_viou in the vidvrd family (vidvrd.md section 7); evaluate's are in
vidvrd_evaluate_cases.py."""
from __future__ import annotations

import torch

from .. import ops
from ..ops import _backends
from ..reference import vidvrd_viou as reference
from .registry import BenchCase, Implementation, register


def _viou_inputs(P, Q, T, device):
    """Seeded spans (begin ~ U[0, T - 30], length ~ U[30, T - begin]) and random-walk boxes."""
    def make(scale: float) -> dict:
        p, q = max(4, int(P * scale)), max(4, int(Q * scale))
        gen = torch.Generator().manual_seed(0)

        def tracks(n):
            walk = torch.cumsum(3 * torch.randn(n, T, 2, generator=gen), 1) + 300 * torch.rand(n, 1, 2, generator=gen)
            boxes = torch.cat([walk, walk + 60 + 180 * torch.rand(n, 1, 2, generator=gen)], 2).round()
            begin = torch.randint(0, T - 30, (n,), generator=gen)
            length = 30 + (torch.rand(n, generator=gen) * (T - 30 - begin)).long()
            return boxes.to(device), torch.stack([begin, begin + length], 1).to(device)
        (a, sa), (b, sb) = tracks(p), tracks(q)
        return dict(a=a, sa=sa, b=b, sb=sb)
    return make


def _viou_impls(device):
    def eager(inp):
        return (reference.trajectory_viou(inp["a"], inp["sa"], inp["b"], inp["sb"]),)

    def build() -> list[Implementation]:
        impls = [Implementation("eager", eager, "baseline"), Implementation("compiled", torch.compile(eager), "baseline")]
        for backend in ("cpu", "cuda", "triton"):
            if _backends.unavailable_reason(backend, torch.device(device)) is None and not (
                    backend == "triton" and device == "cpu"):  # the interpreter is not the kernel
                impls.append(Implementation(backend, lambda inp, b=backend: (ops.trajectory_viou(
                    inp["a"], inp["sa"], inp["b"], inp["sb"], backend=b),)))
        return impls
    return build


def _register_viou(P, Q, T, device, target):
    register(BenchCase(
        family="vidvrd", op="trajectory_viou", label=f"P={P} Q={Q} T={T}", device=device, dtype=torch.float32,
        make_inputs=_viou_inputs(P, Q, T, device), implementations=_viou_impls(device),
        bytes_moved=lambda inp: (inp["a"].numel() + inp["b"].numel()) * 4 + inp["a"].shape[0] * inp["b"].shape[0] * 4,
        unit_bytes=lambda inp: inp["a"].shape[0] * inp["b"].shape[0] * 4,
        flops=lambda inp: 12 * inp["a"].shape[0] * inp["b"].shape[0] * inp["a"].shape[1],
        tolerance=dict(atol=1e-6, rtol=1e-6), target=target))


# ---- the helper's per-frame loop as the baseline ---------------------------------------------------

def _loop_inputs(P, Q, T):
    """_viou_inputs plus every trajectory as the helper holds it: a list of boxes over its own span."""
    tensors = _viou_inputs(P, Q, T, "cpu")

    def make(scale: float) -> dict:
        inp = tensors(scale)
        for side, span in (("a", "sa"), ("b", "sb")):
            inp[f"{side}_lists"] = [(inp[side][i, b:e].tolist(), [b, e]) for i, (b, e) in enumerate(inp[span].tolist())]
        return inp
    return make


def _loop_impls():
    def loop(inp):
        rows = [[reference.viou_pair_loop(ta, da, tb, db) for tb, db in inp["b_lists"]] for ta, da in inp["a_lists"]]
        return (torch.tensor(rows, dtype=torch.float32),)

    def build() -> list[Implementation]:
        return [Implementation("eager", loop, "baseline"),  # compiled: n/a (a Python loop)
                Implementation("cpu", lambda inp: (ops.trajectory_viou(inp["a"], inp["sa"], inp["b"], inp["sb"],
                                                                       backend="cpu"),))]
    return build


def _register_viou_loop(P, Q, T):
    """P * Q ~ 2,000 pairs: the loop runs on every pair (nothing extrapolated) in about a second."""
    register(BenchCase(
        family="vidvrd", op="trajectory_viou", label=f"P={P} Q={Q} T={T} (eager = the helper's per-frame Python loop)",
        device="cpu", dtype=torch.float32, make_inputs=_loop_inputs(P, Q, T), implementations=_loop_impls(),
        bytes_moved=lambda inp: (inp["a"].numel() + inp["b"].numel()) * 4 + inp["a"].shape[0] * inp["b"].shape[0] * 4,
        unit_bytes=lambda inp: inp["a"].shape[0] * inp["b"].shape[0] * 4,
        flops=lambda inp: 12 * inp["a"].shape[0] * inp["b"].shape[0] * inp["a"].shape[1],
        tolerance=dict(atol=0.0, rtol=0.0), target=">= 50x per-frame loop", measure_memory=False))


_register_viou(200, 50, 450, "cpu", ">= 50x per-frame loop; >= 2x eager")
_register_viou(1000, 100, 900, "cpu", ">= 50x per-frame loop; >= 2x eager")
_register_viou(4096, 512, 1000, "cuda", "ratio vs eager and compiled")
_register_viou_loop(64, 32, 450)
